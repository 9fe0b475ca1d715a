"""The onnx package's conformance cases for the transformer operators (Gelu, Erf,
LayerNormalization, Softmax, and their `_expanded` forms: the operator written out as its ONNX
function body, which patterns.py recognises) through `tuner.compile_model`, the package that
generates LayerNormalization and Softmax. Inputs after the first become initializers (a model's
scale and bias are weights: that is when a LayerNorm is generated), and each case must match
its expected outputs at the case's own tolerance. The LayerNormalization cases ask for Mean
and InvStdDev too, which numpy makes; each is run again asking for Y alone, which a generated
function then serves. Cases whose tensors are not float32 are skipped with that reason (the
kernels are float32), as are operators the runtime lacks."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

import tuner  # noqa: E402
from tuner.network.graph import load_model  # noqa: E402
from tuner.network.runtime import unsupported_ops  # noqa: E402
from tuner.replay.source import NoRecordWarning  # noqa: E402

PATTERN = re.compile(r"test_(gelu|erf|layer_normalization|softmax)")
# Cases a generated function must serve: a Softmax over the last axis, a LayerNormalization
# asked for Y alone ("/y": the case's node with its other outputs dropped).
GENERATED = re.compile(r"test_softmax_(example|large_number|axis_2|negative_axis|default_axis)"
                       r"|test_layer_normalization_[^/]*(?<!expanded)(?<!ver18)/y$")


def _cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators' own overflow warnings
        from onnx.backend.test.case.node import collect_testcases

        return [case for case in collect_testcases() if PATTERN.match(case.name)]


def _y_alone(case):
    """A LayerNormalization case asking for its first output only."""
    model = onnx.ModelProto.FromString(case.model.SerializeToString())
    node, = model.graph.node
    del node.output[1:]
    del model.graph.output[1:]
    data_sets = [(inputs, expected[:1]) for inputs, expected in case.data_sets]
    return type(case)(**{**vars(case), "name": case.name + "/y", "model": model,
                         "data_sets": data_sets})


CASES = _cases()
CASES += [_y_alone(case) for case in CASES if case.name.startswith("test_layer_normalization")
          and len(case.model.graph.node) == 1]


def _with_constants(model, values):
    """The model with its inputs after the first turned into initializers of `values`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for info, value in zip(list(graph.input[1:]), values[1:]):
        graph.initializer.append(numpy_helper.from_array(value, info.name))
        graph.input.remove(info)
    return model


def test_the_conformance_cases_are_all_there():
    names = {case.name for case in CASES}
    assert len(CASES) >= 80
    assert {"test_gelu_default_1", "test_gelu_tanh_2", "test_erf",
            "test_layer_normalization_default_axis_expanded",
            "test_softmax_large_number_expanded"} <= names


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_conformance_case_through_compile_model(case, empty_db):
    for inputs, expected in case.data_sets:
        if any(np.asarray(a).dtype != np.float32 for a in list(inputs) + list(expected)):
            pytest.skip("not float32: the kernels and generated functions are float32")
        graph = load_model(_with_constants(case.model, inputs))
        missing = unsupported_ops(graph)
        if missing:
            pytest.skip(f"unsupported operator {missing[0].op_type}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoRecordWarning)
            compiled = tuner.compile_model(graph, db=empty_db, threads=2)
        if GENERATED.match(case.name):
            assert any(node.op_type.startswith("TunerSegment")
                       for node in compiled.graph.nodes), "no generated function served it"
        outputs = compiled(inputs[0])
        assert len(outputs) == len(expected)
        for out, want in zip(outputs, expected):
            assert out.shape == want.shape
            np.testing.assert_allclose(out, want, rtol=max(case.rtol, 1e-5),
                                       atol=max(case.atol, 1e-6))
