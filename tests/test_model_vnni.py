"""Quantized models packaged for VNNI CPUs, run on any host.

A package for a VNNI CPU (x86-64-v4 with AVX512-VNNI: 512-bit vectors; alderlake: AVX-VNNI,
256-bit) is built as `tune build --model --cpu` would build it; where this host has no VNNI,
every vpdpbusd in its kernels is modelled in plain IR (vnni_model.py), its code compiled for
this host, and its CPU check waived when it is loaded. The int8 sums are exact on every path
and the epilogues are the same float32 operations in the same order, so a package for a VNNI
CPU must give what this host's own package gives: bit for bit for a CNN quantized by
quantize_static (QDQ), and for a transformer block quantized by quantize_dynamic where the
vectors are as wide as this host's (its LayerNorms and Softmaxes sum their rows in as many
lanes as the vector has, which rounds differently with 16 lanes than with 8).
"""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")
import onnx  # noqa: E402

import tuner.codegen.jit as jit  # noqa: E402
import tuner.network.deploy as deploy  # noqa: E402
from test_int8_kernels import _vnni_target  # noqa: E402
from test_model_quantized import _inputs, _Reader, small_cnn  # noqa: E402
from test_model_transformer import BLOCKS, Block, feeds_for  # noqa: E402
from tuner.network.deploy import load_package  # noqa: E402
from tuner.network.graph import load_model  # noqa: E402
from tuner.network.package import write_package  # noqa: E402
from tuner.ir.target import host_target  # noqa: E402
from tuner.replay.source import open_schedules  # noqa: E402
from vnni_model import with_modelled_vpdpbusd  # noqa: E402


def _package(graph, folder, db, target, monkeypatch):
    """(the package for `target`, loaded; the VNNI intrinsics modelled in it): for a VNNI
    target this host lacks, with vpdpbusd and vpdpwssd modelled and all code compiled for
    this host."""
    have = set(host_target(1).features.split(","))
    modelled = not all(f in have for f in target.features.split(",") if f.startswith("+"))
    calls = []
    original, host = jit.compile_ir_object, host_target(target.threads)

    def compile_modelled(ir_text, _target):
        calls.append(ir_text.count('@"llvm.x86.avx512.vpdpbusd')
                     + ir_text.count('@"llvm.x86.avx512.vpdpwssd'))
        return original(with_modelled_vpdpbusd(ir_text), host)

    with monkeypatch.context() as patch:
        if modelled:
            patch.setattr(jit, "compile_ir_object", compile_modelled)
            patch.setattr(deploy, "check_cpu", lambda *args, **kwargs: None)
        with open_schedules(db) as schedules:
            write_package(graph, folder, schedules, target, allow_foreign_target=True)
        return load_package(folder), sum(calls)


@pytest.mark.parametrize("cpu", ["x86-64-v4", "alderlake"])
@pytest.mark.parametrize("form", ["per_channel", "per_channel_reduced"])
def test_a_statically_quantized_cnn_packaged_for_vnni_equals_the_hosts(cpu, form, tmp_path,
                                                                      empty_db, monkeypatch):
    rng = np.random.default_rng(11)
    onnx.save(small_cnn(rng), tmp_path / "model.onnx")
    quantization.quantize_static(str(tmp_path / "model.onnx"), str(tmp_path / "q.onnx"),
                                 _Reader(rng), per_channel=True,
                                 reduce_range=form.endswith("reduced"))
    graph = load_model(str(tmp_path / "q.onnx"))
    target = _vnni_target(cpu)
    assert target.machine.dot_instruction == "vpdpbusd"
    vnni, calls = _package(graph, tmp_path / "vnni", empty_db, target, monkeypatch)
    host, _ = _package(graph, tmp_path / "host", empty_db, host_target(1), monkeypatch)
    assert calls or host_target(1).machine.dot_instruction == "vpdpbusd"
    for x in _inputs():
        np.testing.assert_array_equal(vnni(x)[0], host(x)[0])


@pytest.mark.parametrize("cpu", ["x86-64-v4", "alderlake"])
def test_a_dynamically_quantized_block_packaged_for_vnni_equals_the_hosts(cpu, tmp_path,
                                                                         empty_db,
                                                                         monkeypatch):
    gelu, norm, softmax, mask, seq, heads, opset = BLOCKS[0]
    rng = np.random.default_rng(seq + heads)
    model = Block(rng, gelu, norm, softmax, mask, opset).build(seq, heads, 24)
    onnx.save(model, tmp_path / "block.onnx")
    quantization.quantize_dynamic(tmp_path / "block.onnx", tmp_path / "block.int8.onnx",
                                  extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    graph = load_model(str(tmp_path / "block.int8.onnx"))
    feeds = feeds_for(rng, model, seq, mask)
    target = _vnni_target(cpu)
    vnni, calls = _package(graph, tmp_path / "vnni", empty_db, target, monkeypatch)
    host, _ = _package(graph, tmp_path / "host", empty_db, host_target(1), monkeypatch)
    assert calls or host_target(1).machine.dot_instruction == "vpdpbusd"
    if target.machine.lanes == host_target(1).machine.lanes:
        np.testing.assert_array_equal(vnni(feeds)[0], host(feeds)[0])
    else:
        np.testing.assert_allclose(vnni(feeds)[0], host(feeds)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cpu", ["x86-64-v4", "alderlake"])
def test_a_statically_quantized_block_packaged_for_vnni_equals_the_hosts(cpu, tmp_path,
                                                                        empty_db,
                                                                        monkeypatch):
    """quantize_static's block: its attention products are int8 batch_matmul tasks, summed by
    vpdpwssd on VNNI CPUs (tests/test_model_transformer.py), exact like the host's."""
    from test_model_transformer import _Calibration

    gelu, norm, softmax, mask, seq, heads, opset = BLOCKS[1]
    rng = np.random.default_rng(seq + heads)
    model = Block(rng, gelu, norm, softmax, mask, opset).build(seq, heads, 24)
    onnx.save(model, tmp_path / "block.onnx")
    quantization.quantize_static(str(tmp_path / "block.onnx"), str(tmp_path / "block.q.onnx"),
                                 _Calibration(rng, model, seq, mask))
    graph = load_model(str(tmp_path / "block.q.onnx"))
    target = _vnni_target(cpu)
    vnni, calls = _package(graph, tmp_path / "vnni", empty_db, target, monkeypatch)
    host, _ = _package(graph, tmp_path / "host", empty_db, host_target(1), monkeypatch)
    assert calls or host_target(1).machine.dot_instruction == "vpdpbusd"
    for _ in range(2):
        feeds = feeds_for(rng, model, seq, mask)
        np.testing.assert_array_equal(vnni(feeds)[0], host(feeds)[0])
