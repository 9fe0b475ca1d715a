"""The search: a task's space of schedules, and the loop that explores it.

    sketch.py      Ansor's derivation rules: sketches of a ComputeDAG
    annotate.py    tile sizes, vector axis, unrolling, parallelism: sample, mutate, lower
    default.py     a register-blocked schedule for any contraction, before tuning
    strategies.py  evolutionary (cost model), random and Optuna TPE strategies
    lowering.py    a generation's genomes lowered and featurized on every core
    tune.py        TaskTuner: one task's search, cost model and records across runs; tune()

The cost model (costmodel/) and the records (records/) are passed in, never imported.
"""
