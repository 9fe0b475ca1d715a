"""The search space: sketch rules, and annotations that are valid by construction."""

import json

import numpy as np
import pytest

from conftest import assert_matches_reference, assert_sampled_schedule_matches_reference
from schedule_gen import random_task
from tuner.search.annotate import crossover, mutate, sample, to_steps
from tuner.codegen.jit import CompiledKernel
from tuner.ir.schedule import Split, apply_steps
from tuner.search.sketch import Sketch, generate_sketches
from tuner.ir.task import Task



def test_sketch_counts_and_rules_for_fixed_shapes():
    conv = Task.create("conv2d", (1, 64, 56, 56, 64, 3, 3), pad=1, relu=True).dag()
    sketches = generate_sketches(conv)
    assert len(sketches) == 12  # cache_write {S1, S0, none} x pad {inline, root} x pack {y, n}
    assert sketches[0].rules == ("multi_level_tiling", "cache_write_S1", "fuse_epilogue",
                                 "inline_padding", "layout_rewrite")
    assert all(s.rules[0] == "multi_level_tiling" for s in sketches)
    assert len(generate_sketches(Task.create("conv2d", (1, 8, 8, 8, 8, 1, 1)).dag())) == 6
    assert len(generate_sketches(Task.create("matmul", (8, 8, 8)).dag())) == 6
    bmm = generate_sketches(Task.create("batch_matmul", (2, 8, 8, 8)).dag())
    assert [s.cache_write for s in bmm] == ["S1", "S0", None]
    for s in sketches:
        assert Sketch.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_thousands_of_samples_are_valid(target1, target2):
    rng = np.random.default_rng(11)
    count = 0
    while count < 3000:
        task = random_task(rng)
        dag = task.dag()
        target = target2 if count % 2 else target1
        for sketch in generate_sketches(dag):
            a = sample(rng, dag, sketch, target)
            b = mutate(rng, dag, sketch, a, target)
            c = crossover(rng, dag, sketch, a, b, target.machine)
            for ann in (a, b, c):
                apply_steps(dag, to_steps(dag, sketch, ann, target))  # raises if invalid
                count += 1


@pytest.mark.parametrize("seed", range(30))
def test_sampled_schedules_compute_the_right_thing(seed, target1, target2):
    rng = np.random.default_rng(500 + seed)
    assert_sampled_schedule_matches_reference(rng, target2 if seed % 3 == 0 else target1)


def test_benchmark_shapes_sample_validly(target2):
    rng = np.random.default_rng(5)
    for task in (Task.create("conv2d", (1, 3, 224, 224, 64, 7, 7), stride=2, pad=3),
                 Task.create("conv2d", (1, 32, 112, 112, 32, 3, 3), pad=1, groups=32),
                 Task.create("matmul", (1024, 1024, 1024)),
                 Task.create("batch_matmul", (12, 128, 128, 64))):
        dag = task.dag()
        for sketch in generate_sketches(dag):
            for _ in range(20):
                apply_steps(dag, to_steps(dag, sketch, sample(rng, dag, sketch, target2),
                                          target2))


def test_stored_schedules_map_back_to_their_genomes(target1, target2):
    from tuner.search.annotate import genome_from_steps
    rng = np.random.default_rng(21)
    for i in range(150):
        task = random_task(rng)
        dag = task.dag()
        target = target2 if i % 2 else target1
        sketches = generate_sketches(dag)
        for sketch in sketches:
            steps = to_steps(dag, sketch, sample(rng, dag, sketch, target), target)
            genome = genome_from_steps(dag, steps, target, sketches)
            assert genome is not None and to_steps(dag, *genome, target) == steps
    dag = Task.create("matmul", (64, 64, 64)).dag()
    from tuner.search.default import default_schedule
    assert genome_from_steps(dag, default_schedule(dag, target1), target1,
                             generate_sketches(dag)) is None  # not in SSRSRS form
    # a batch-1 dense layer: the default splits every axis, in the genome's order, into two
    # levels (a resumed model tuning run crashed lowering it as a genome)
    dag = Task.create("matmul", (1, 1000, 2048), bias=True).dag()
    for target in (target1, target2):
        steps = default_schedule(dag, target)
        assert [s.axis for s in steps if isinstance(s, Split)] == ["j", "k"]
        assert genome_from_steps(dag, steps, target, generate_sketches(dag)) is None


def test_expert_seed_is_in_the_space_and_correct(target1):
    from tuner.search.annotate import expert_seeds
    task = Task.create("conv2d", (1, 8, 10, 10, 32, 3, 3), pad=1, bias=True, relu=True)
    dag = task.dag()
    seeds = expert_seeds(dag, generate_sketches(dag), target1)
    for sketch, ann in seeds:
        kernel = CompiledKernel(apply_steps(dag, to_steps(dag, sketch, ann, target1)), target1)
        inputs = dag.random_inputs(np.random.default_rng(0))
        assert_matches_reference(dag, kernel(*inputs), inputs)
    assert len(seeds) >= 4
