"""Whole models: an ONNX file read into our own graph, run with numpy, and split into tasks.

    graph.py     load_model: ONNX -> Graph (plain dataclasses), static shapes, constant folding,
                 duplicate nodes merged
    ops.py       OPS: op_type -> numpy function (elementwise and tensor ops), run_node
    ops_nn.py    the layers in numpy: convolution, pooling, normalisation, softmax, Gemm, MatMul
    quant_ops.py the quantization operators in numpy: Q/DQ, QLinearConv, MatMulInteger, ...
    runtime.py   run_graph and the unsupported-operator check made before any tuning
    patterns.py  GELU, LayerNorm and Softmax written as several nodes, recognised as one
    attention.py attention's scale folded into a projection; Q/K/V and context head views;
                 a (dynamically quantized) key projection written as K^T
    quantized.py QDQ layers (quantize_static's), QLinearConv / QLinearMatMul, MatMulInteger and
                 ConvInteger (quantize_dynamic's) -> int8 tasks, int8 activations as uint8
    tasks.py     extract_tasks: Conv / MatMul / Gemm (+ BatchNorm, bias, ReLU, GELU) -> Task,
                 products of two activations -> batch_matmul, fused nodes
    fused.py     numpy implementations of the fused task nodes (the reference a kernel replaces)
    compiled.py  compile_model: the model's package, built and loaded in this process
    task_scheduler.py  the task scheduler (Ansor §6): one trial budget, rounds to the largest gain
    tuning.py    tune_model: the task scheduler's rounds, each task's run by one TaskTuner
    package.py   write_package: a model -> kernels' shared library + graph.json + weights.npz
    pool_codegen.py  a package's MaxPool and GlobalAveragePool as generated functions
    row_codegen.py   a package's LayerNormalization and Softmax as generated functions
    quantized_codegen.py a package's quantized residual Add (DQ, DQ, Add, Q), dequantized
                 products, DynamicQuantizeLinear and run-time zero points as generated functions
    segments.py  a package's runs of consecutive kernel nodes, each run one call into the library
    deploy.py    load_package: run such a package with numpy and ctypes alone (no LLVM, no db)
    plot.py      model_curves: estimated model latency against trials and time, a panel per task
"""
