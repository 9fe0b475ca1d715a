"""The IR: what is tuned and for which CPU, and a schedule's loop nest. Imports nothing of
tuner/ above it; the operators' compute definitions (templates/) are at this level too.

    task.py        Task: operator, shape, attributes, canonical key; task.dag() once per process
    dag.py         ComputeDAG: one contraction with its epilogue (bias, residual, activation)
    schedule.py    steps (JSON) -> LoopNest, with legality checks (ScheduleError)
    lowered.py     a stored schedule on its task: its nest once, or "no longer applies"
    layout.py      layout facts: padding, packed layouts, access classes, code size
    target.py      Target: CPU name, features, threads, canonical key
    machine.py     Machine: lanes, registers, FMA rate, caches (the hardware facts)
    cpu_probe.py   which vector ISA LLVM generates for a named CPU (--cpu), in a subprocess
    llvm_init.py   LLVM's one-time initialisation
"""
