"""Quantized versions of bench/models.py's models, as onnxruntime.quantization writes them.

`quant_pre_process` (onnxruntime's recommended first step: shape inference and BatchNormalization
folded into the convolutions), then `quantize_static` (QDQ format, its default: int8
activations and weights, per tensor unless `--per-channel`), calibrated on `--calibration`
random inputs of the model's shape (uniform in [-1, 1]: the weights are random too, so no real
data would calibrate them better), for the convnets; `quantize_dynamic` (MatMulInteger with
DynamicQuantizeLinear) for the BERT layer, as onnxruntime's guide recommends for transformers
(`--static` quantizes it with `quantize_static` too: its attention products become int8
batch_matmul tasks, its other Q/DQ nodes run in numpy).
`--reduce-range` quantizes weights to 7 bits ([-64, 64]), as onnxruntime advises for CPUs
without VNNI: our kernels then sum them with vpmaddubsw, exactly. `--dynamic` quantizes the
convnets with `quantize_dynamic` too (ConvInteger after a DynamicQuantizeLinear per layer).
Each file goes to `--out/<name>.int8.onnx` (`.int8r` with `--reduce-range`, `.dyn` and `.dynr`
with `--dynamic`, `.qdq` and `.qdqr` with `--static`);
then `python bench/model.py --onnx FILE` tunes, packages and times it against onnxruntime on
the same file.

    python bench/quantized_models.py --out /tmp/qmodels [--models resnet50 mobilenetv2]
                                     [--per-channel] [--calibration 8] [--reduce-range]
                                     [--dynamic | --static]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.models import MODELS, write_models  # noqa: E402


def quantize(float_path: Path, out: Path, name: str, per_channel: bool,
             calibration: int, reduce_range: bool = False, dynamic: bool = False,
             static: bool = False) -> Path:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_suffix(".prepared.onnx")
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    if (name == "bert_layer" and not static) or dynamic:
        quantize_dynamic(str(prepared), str(out), reduce_range=reduce_range,
                         per_channel=per_channel)
        return out
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input}
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: rng.uniform(-1, 1, shape).astype(np.float32)
                                  for name, shape in shapes.items()}
                                 for _ in range(calibration)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(prepared), str(out), Reader(), per_channel=per_channel,
                    reduce_range=reduce_range)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        default=["resnet50", "mobilenetv2"])
    parser.add_argument("--per-channel", action="store_true")
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--reduce-range", action="store_true",
                        help="7-bit weights (onnxruntime's advice for CPUs without VNNI), "
                        "written to <name>.int8r.onnx")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--dynamic", action="store_true",
                      help="quantize_dynamic for every model, written to <name>.dyn.onnx")
    kind.add_argument("--static", action="store_true",
                      help="quantize_static for every model, the BERT layer too, written to "
                      "<name>.qdq.onnx")
    args = parser.parse_args(argv)
    suffix = (".dyn" if args.dynamic else ".qdq" if args.static else ".int8") + \
        ("r" if args.reduce_range else "") + ".onnx"
    for name, path in write_models(args.out, args.models).items():
        quantized = quantize(path, args.out / f"{name}{suffix}", name, args.per_channel,
                             args.calibration, args.reduce_range, args.dynamic, args.static)
        print(f"{name}: {quantized}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
