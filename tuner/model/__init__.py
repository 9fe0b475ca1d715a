"""Whole models: an ONNX file read into our own graph, run with numpy, and split into tasks.

    graph.py     load_model: ONNX -> Graph (plain dataclasses), static shapes, constant folding
    ops.py       OPS: op_type -> numpy function (elementwise and tensor ops), run_node
    ops_nn.py    the layers in numpy: convolution, pooling, normalisation, softmax, Gemm, MatMul
    runtime.py   run_graph and the unsupported-operator check made before any tuning
    tasks.py     extract_tasks: Conv / MatMul / Gemm (+ BatchNorm, bias, ReLU) -> Task, fused nodes
    fused.py     numpy implementations of the fused task nodes (the reference a kernel replaces)
"""
