"""Benchmarks: our kernels next to the machine's peak and the libraries they compete with.

Not part of the installed package; run from the repository root (`python -m bench.peak`,
`python bench/kernels.py`). Being a package lets the scripts and tests import `bench.*` once the
repository root is on sys.path.

    bench/peak.py          FP32 FMA peak of a target (sized from its machine model), via llvmlite
    bench/comparators.py   numpy (OpenBLAS) and onnxruntime (MLAS), timed with
                           tuner/measure/timing.py, each in a process of its own (child.py)
    bench/kernels.py       hand register tiles against the comparators, 1 and 2 threads
    bench/tune.py          search strategies on every benchmark shape against the comparators
    bench/report.py        the full report: tuned vs best peer vs peak, Markdown + JSON + PNG
    bench/models.py        ResNet-50, MobileNetV2, a BERT-base layer as ONNX, random weights
    bench/model_timing.py  a whole model (our package, onnxruntime) and its layers, timed in a child
    bench/model.py         the model report: tuned packages vs onnxruntime, end to end and per layer
    bench/tune_rounds.py   `tune model`'s own overhead per round, apart from compile and timing
    bench/ir_hashes.py     hashes of the IR emitted for random kernels, compared across two trees
    bench/distributed.py   tune model's trials per second on local:1, local:2 against local

Benchmarks print numbers; nothing here asserts on time (tests/ only checks that they run).
"""
