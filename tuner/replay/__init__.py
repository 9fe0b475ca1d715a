"""Replaying the log in builds: the chosen schedule of each task, as a callable, a library
with its C header (the network front end adds whole-model packages).

    source.py      ScheduleSource: a records database or a best-schedules JSON file, opened
                   once; choose(task, target) -> Choice, carrying the schedule's loop nest
    kernel.py      ReplayedKernel: a Choice compiled in this process (tuner.build)
    aot.py         object file + shared library + C header for C/C++ builds
"""
