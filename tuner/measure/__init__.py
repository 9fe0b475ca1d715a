"""Measurement: candidates compiled, checked against numpy and timed in worker processes
that a crash or a hang cannot take down.

    measurer.py    Measurer: MeasureInput -> MeasureResult, the workers' supervisor
    worker.py      the worker process: build (compile + check) and run (time)
    timing.py      the timing protocol shared by measurement and benchmarks
    result.py      MeasureResult and ErrorKind (what the records store)
    cluster.py     ClusterMeasurer: the same over Dask workers on other machines (--cluster);
                   answers checked where they land
    cluster_worker.py  the target machine's side: `tune worker`, measure_chunk
    tls.py         Dask's TLS for the cluster: certificates checked at the boundary
"""
