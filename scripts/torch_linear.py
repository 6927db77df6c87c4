#!/usr/bin/env python3
"""PyTorch's CPU `F.linear` (Y = X·Wᵀ + b) timed on `wgattn bench --mode gemm`'s shapes.

`wgattn bench --mode gemm --torch` runs this script right after its own rows, on the same
machine in the same run, and prints PyTorch beside the crate's GEMM; it can also be run alone:

    python3 scripts/torch_linear.py --shapes 4096x1024x1024 --reps 5

Shapes are MxNxK (X [M, K], W [N, K], Y [M, N]); inputs float32 (or --dtype) uniform in
[-1, 1), with bias. One untimed warm-up call, then --reps timed calls; the median wall time is
reported as JSON lines {"m", "n", "k", "dtype", "median_ms", "threads"} on stdout. Needs only
`torch`.
"""

import argparse
import json
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", required=True, help="comma-separated MxNxK")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bias", type=int, default=1)
    args = ap.parse_args()
    import torch

    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    for shape in args.shapes.split(","):
        m, n, k = (int(v) for v in shape.split("x"))
        g = torch.Generator().manual_seed(1)
        x = (torch.rand(m, k, generator=g) * 2 - 1).to(dtype)
        w = (torch.rand(n, k, generator=g) * 2 - 1).to(dtype)
        b = (torch.rand(n, generator=g) * 2 - 1).to(dtype) if args.bias else None
        with torch.inference_mode():
            torch.nn.functional.linear(x, w, b)
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                torch.nn.functional.linear(x, w, b)
                times.append((time.perf_counter() - t0) * 1e3)
        print(json.dumps({"m": m, "n": n, "k": k, "dtype": args.dtype, "median_ms": statistics.median(times),
                          "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
