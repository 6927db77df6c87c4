#!/usr/bin/env python3
"""The machine's read bandwidth, the yardstick of the decode kernel (docs/PERFORMANCE.md): a
2-thread read of a 512 MiB float32 array (NumPy `sum` of each half on its own thread; NumPy
releases the GIL in reductions), best of 5, GB/s = 1e9 bytes per second."""
import threading
import time

import numpy as np

a = np.ones(512 * 1024 * 1024 // 4, dtype=np.float32)
halves = np.array_split(a, 2)
for name, threads in [("1 thread", 1), ("2 threads", 2)]:
    best = 0.0
    for _ in range(5):
        parts = np.array_split(a, threads)
        ts = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        t = time.perf_counter()
        for x in ts:
            x.start()
        for x in ts:
            x.join()
        best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
    print(f"read bandwidth, {name}: {best:.2f} GB/s (512 MiB float32, NumPy sum, best of 5)")
