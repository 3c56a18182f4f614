"""The pieces of ``bench_train.py`` (and ``bench_threads.py``): FLOP counts, machine measurements, step
records, the shared workload, the benchmarked variants, the grid view and the report."""
