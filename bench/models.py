"""Whole models to benchmark, written with `onnx.helper` and random weights: nothing downloaded.

    resnet50()      ResNet-50 v1 (stride on the first 1x1 of a bottleneck), 1x3x224x224
    mobilenet_v2()  MobileNetV2 (width 1.0), 1x3x224x224, Clip(0, 6) as ReLU6
    bert_layer()    one BERT-base encoder layer, 1x128x768 hidden states in, no mask

Why build them rather than download them: the benchmark must run offline and the same on every
machine, and what it measures (layer shapes, operator mix, how an exporter writes them) does not
depend on trained weights. The graphs are written as exporters write them (Conv without bias and
BatchNormalization after it, Gemm with transB, Reshape/Transpose to attention heads, GELU from
Erf), so task extraction meets what it meets in the wild. Weights are scaled as their
initialisers would be (He for convolutions, 0.02 for BERT), with a small scale on the last
BatchNorm of each residual branch, so that activations stay in float32's comfortable range
through 16 or 17 residual blocks and the outputs can be compared with onnxruntime's.

    python -m bench.models --out DIR        # DIR/resnet50.onnx, mobilenetv2.onnx, bert_layer.onnx
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

OPSET = 17          # LayerNormalization is an ONNX operator from 17 on
IR_VERSION = 8      # what the onnxruntime releases we support all read
SEED = 0
BERT_SEQUENCE, BERT_HIDDEN, BERT_HEADS, BERT_FFN = 128, 768, 12, 3072


@dataclass
class _GraphBuilder:
    """The nodes and initializers of a model being written, and the one RNG its weights come
    from (fixed seed: the same model on every run). Mutable, as a builder is: each helper
    appends its nodes and returns the name of its output."""

    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    weights: dict = field(default_factory=dict)

    def constant(self, name: str, value) -> str:
        self.weights[name] = np.asarray(value)
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv_bn(self, x: str, name: str, c: int, k: int, r: int, stride: int = 1,
                groups: int = 1, act: str | None = "relu", bn_scale: float = 1.0) -> str:
        """Conv (no bias) + BatchNormalization + activation ('relu', 'relu6' or None)."""
        fan_in = c // groups * r * r
        w = self.rng.standard_normal((k, c // groups, r, r)) * math.sqrt(2.0 / fan_in)
        y = self.node("Conv", [x, self.constant(f"{name}.w", w.astype(np.float32))],
                      f"{name}.conv", kernel_shape=[r, r], strides=[stride, stride],
                      pads=[r // 2] * 4, group=groups)
        bn = {p: self.constant(f"{name}.bn.{p}", v.astype(np.float32)) for p, v in (
            ("scale", bn_scale * self.rng.uniform(0.5, 1.0, k)),
            ("bias", 0.1 * self.rng.standard_normal(k)),
            ("mean", 0.1 * self.rng.standard_normal(k)),
            ("var", self.rng.uniform(0.5, 1.5, k)))}
        y = self.node("BatchNormalization", [y, bn["scale"], bn["bias"], bn["mean"], bn["var"]],
                      f"{name}.bn", epsilon=1e-5)
        if act == "relu":
            return self.node("Relu", [y], f"{name}.relu")
        if act == "relu6":
            return self.node("Clip", [y, self.constant("zero", np.float32(0)),
                                      self.constant("six", np.float32(6))], f"{name}.relu6")
        return y

    def dense(self, name: str, n_in: int, n_out: int, std: float) -> tuple[str, str]:
        """A weight (n_in x n_out) and a bias, as a MatMul then an Add would take them."""
        w = (std * self.rng.standard_normal((n_in, n_out))).astype(np.float32)
        b = (std * self.rng.standard_normal(n_out)).astype(np.float32)
        return self.constant(f"{name}.w", w), self.constant(f"{name}.b", b)

    def classifier(self, x: str, channels: int, classes: int = 1000) -> str:
        """GlobalAveragePool, Flatten, Gemm (weight classes x channels, transB as exporters)."""
        y = self.node("GlobalAveragePool", [x], "pool")
        y = self.node("Flatten", [y], "flatten", axis=1)
        w = self.rng.standard_normal((classes, channels)) * math.sqrt(1.0 / channels)
        return self.node("Gemm", [y, self.constant("fc.w", w.astype(np.float32)),
                                  self.constant("fc.b", np.zeros(classes, np.float32))],
                         "logits", transB=1)

    def model(self, name: str, inputs: dict[str, tuple[int, ...]],
              outputs: dict[str, tuple[int, ...]]) -> ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
             for n, s in inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
             for n, s in outputs.items()],
            [numpy_helper.from_array(v, k) for k, v in self.weights.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                 ir_version=IR_VERSION)


def resnet50(seed: int = SEED, size: int = 224) -> ModelProto:
    """ResNet-50 v1 (He et al. 2016): bottlenecks [3, 4, 6, 3], the stride of a stage on its
    first 1x1, projection shortcuts (1x1 conv + BN) where the shape changes."""
    g = _GraphBuilder(np.random.default_rng(seed))
    y = g.conv_bn("input", "conv1", 3, 64, 7, stride=2)
    y = g.node("MaxPool", [y], "pool1", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    c = 64
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=2):
        for b in range(blocks):
            name, stride = f"res{stage}.{b}", (2 if b == 0 and stage > 2 else 1)
            z = g.conv_bn(y, f"{name}.a", c, width, 1, stride)
            z = g.conv_bn(z, f"{name}.b", width, width, 3)
            z = g.conv_bn(z, f"{name}.c", width, 4 * width, 1, act=None, bn_scale=0.2)
            if b == 0:
                y = g.conv_bn(y, f"{name}.proj", c, 4 * width, 1, stride, act=None)
            y = g.node("Relu", [g.node("Add", [y, z], f"{name}.add")], f"{name}.relu")
            c = 4 * width
    return g.model("resnet50", {"input": (1, 3, size, size)}, {g.classifier(y, c): (1, 1000)})


# MobileNetV2's inverted residual stages (Sandler et al. 2018, table 2): expansion t, output
# channels c, repeats n, stride of the first s.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2(seed: int = SEED, size: int = 224) -> ModelProto:
    """MobileNetV2 1.0: 1x1 expansion + ReLU6, depthwise 3x3 + ReLU6, linear 1x1 projection,
    Add where a block keeps its shape; a final 1x1 conv to 1280 channels."""
    g = _GraphBuilder(np.random.default_rng(seed))
    y = g.conv_bn("input", "conv1", 3, 32, 3, stride=2, act="relu6")
    c = 32
    for stage, (t, out, n, s) in enumerate(MOBILENET_V2_STAGES, start=1):
        for b in range(n):
            name, stride, hidden = f"block{stage}.{b}", (s if b == 0 else 1), c * t
            z = g.conv_bn(y, f"{name}.expand", c, hidden, 1, act="relu6") if t != 1 else y
            z = g.conv_bn(z, f"{name}.dw", hidden, hidden, 3, stride, groups=hidden,
                          act="relu6")
            z = g.conv_bn(z, f"{name}.project", hidden, out, 1, act=None, bn_scale=0.3)
            y = g.node("Add", [y, z], f"{name}.add") if stride == 1 and c == out else z
            c = out
    y = g.conv_bn(y, "conv_last", c, 1280, 1, act="relu6")
    return g.model("mobilenetv2", {"input": (1, 3, size, size)},
                   {g.classifier(y, 1280): (1, 1000)})


def bert_layer(seed: int = SEED, sequence: int = BERT_SEQUENCE) -> ModelProto:
    """One BERT-base encoder layer (Devlin et al. 2019) as exporters write it: Q/K/V as
    MatMul + Add, heads by Reshape/Transpose, softmax(QK^T / sqrt(64)) V, output projection,
    residual + LayerNormalization, FFN with GELU from Erf, residual + LayerNormalization."""
    hidden, heads, ffn = BERT_HIDDEN, BERT_HEADS, BERT_FFN
    head = hidden // heads
    g = _GraphBuilder(np.random.default_rng(seed))

    def linear(x: str, name: str, n_in: int, n_out: int) -> str:
        w, b = g.dense(name, n_in, n_out, 0.02)
        return g.node("Add", [g.node("MatMul", [x, w], f"{name}.matmul"), b], name)

    def layer_norm(x: str, name: str) -> str:
        scale = g.constant(f"{name}.scale", g.rng.uniform(0.9, 1.1, hidden).astype(np.float32))
        bias = g.constant(f"{name}.bias", (0.02 * g.rng.standard_normal(hidden))
                          .astype(np.float32))
        return g.node("LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=1e-12)

    heads_shape = g.constant("heads_shape", np.array([1, sequence, heads, head], np.int64))
    merged_shape = g.constant("merged_shape", np.array([1, sequence, hidden], np.int64))

    def split_heads(x: str, name: str, perm: list[int]) -> str:
        return g.node("Transpose", [g.node("Reshape", [x, heads_shape], f"{name}.heads")],
                      f"{name}.t", perm=perm)

    x = "hidden"
    q = split_heads(linear(x, "q", hidden, hidden), "q", [0, 2, 1, 3])
    k = split_heads(linear(x, "k", hidden, hidden), "k", [0, 2, 3, 1])
    v = split_heads(linear(x, "v", hidden, hidden), "v", [0, 2, 1, 3])
    scores = g.node("Div", [g.node("MatMul", [q, k], "scores.matmul"),
                            g.constant("sqrt_head", np.float32(math.sqrt(head)))], "scores")
    probs = g.node("Softmax", [scores], "probs", axis=-1)
    context = g.node("Transpose", [g.node("MatMul", [probs, v], "context.matmul")],
                     "context.t", perm=[0, 2, 1, 3])
    context = g.node("Reshape", [context, merged_shape], "context")
    y = layer_norm(g.node("Add", [linear(context, "attn_out", hidden, hidden), x],
                          "attn.residual"), "attn.norm")
    h = linear(y, "ffn1", hidden, ffn)
    erf = g.node("Erf", [g.node("Div", [h, g.constant("sqrt2", np.float32(math.sqrt(2)))],
                                "gelu.div")], "gelu.erf")
    gelu = g.node("Mul", [g.node("Mul", [h, g.node("Add", [erf, g.constant(
        "one", np.float32(1))], "gelu.add")], "gelu.mul"), g.constant(
        "half", np.float32(0.5))], "gelu")
    out = g.node("Add", [linear(gelu, "ffn2", ffn, hidden), y], "ffn.residual")
    out = layer_norm(out, "output")
    return g.model("bert_layer", {x: (1, sequence, hidden)}, {out: (1, sequence, hidden)})


MODELS = {"resnet50": resnet50, "mobilenetv2": mobilenet_v2, "bert_layer": bert_layer}


def write_models(out: Path, names=tuple(MODELS)) -> dict[str, Path]:
    """Writes `out/<name>.onnx` for each named model and returns the paths by name."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        paths[name] = out / f"{name}.onnx"
        onnx.save(MODELS[name](), str(paths[name]))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the .onnx files")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)
    for name, path in write_models(args.out, args.models).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
