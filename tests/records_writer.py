"""A separate process appending records one transaction at a time (for concurrency tests).

usage: python records_writer.py URL COUNT WRITER_ID
Prints the number of committed records after each commit.
"""

import sys
import time

from records import NewRecord, RecordStore
from tuner.result import ErrorKind, MeasureResult
from tuner.target import Target
from tuner.task import Task

url, count, writer = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
task = Task.create("matmul", (16, 16, 16 + writer % 2))
target = Target("x86_64-test", "testcpu", "+avx", 1)
with RecordStore(url) as store:
    for i in range(count):
        steps = f'[{{"kind":"split","axis":"i","factors":[{writer * 100000 + i + 1}]}}]'
        result = MeasureResult(ErrorKind.NONE, "", (1e-3 * (1 + i % 7),), 1, 0.01, time.time())
        store.add(task, target, NewRecord(steps, result, trial=writer * 100000 + i))
        print(i + 1, flush=True)
