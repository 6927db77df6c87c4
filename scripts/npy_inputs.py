"""Random Q, K, V inputs for `wgattn run`: DIR/{q,k,v}D.npy at B1 H8 N256 for each head dim D.

Usage: python3 scripts/npy_inputs.py DIR D [D ...]   (scripts/first_run.sh, scripts/warm_runs.sh)
"""
import sys

import numpy as np

work, dims = sys.argv[1], sys.argv[2:]
rng = np.random.default_rng(0)
for d in dims:
    for name in "qkv":
        np.save(f"{work}/{name}{d}.npy", rng.standard_normal((1, 8, 256, int(d))).astype(np.float32))
