"""How fast this machine's memory is right now: a probe that benchmarks record beside their figures.

These machines are shared and their speed changes between days (the same scale-run stage has taken
1.75x as long on one day as on another), so a result measured on another day is read beside the
probe taken with it. NumPy only: cheap to import in a benchmark's parent process.
"""
from __future__ import annotations

import time

import numpy as np

ROW_FLOATS = 16  # a 16-wide float32 table row: 64 bytes, one cache line


def memory_bandwidth(repeats: int = 5) -> dict:
    """GB/s (1e9 bytes/s, bytes read + bytes written), best of `repeats`, measured with NumPy:

    stream: np.copyto of a 512 MiB float64 array (sequential read + write);
    random_rows: np.take of 2**20 random 64-byte rows (= one table row of 16 float32, one cache line)
      from a 256 MiB table into a contiguous buffer: what a gather/scatter of table rows can hope for.
    """
    src = np.ones(64 * 2**20)  # 512 MiB
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    stream = 2 * src.nbytes / best / 1e9
    del src, dst
    table = np.ones((2**22, ROW_FLOATS), np.float32)  # 256 MiB, far larger than the caches
    ids = np.random.RandomState(0).randint(0, len(table), 2**20)
    out = np.empty((len(ids), ROW_FLOATS), np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.take(table, ids, axis=0, out=out)
        best = min(best, time.perf_counter() - start)
    random_rows = 2 * out.nbytes / best / 1e9
    return {"stream_gb_per_s": stream, "random_64b_rows_gb_per_s": random_rows}
