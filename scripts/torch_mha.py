#!/usr/bin/env python3
"""PyTorch's CPU `nn.MultiheadAttention` (batch first, self-attention, need_weights=False) timed on
`wgattn bench --mode layer`'s shapes; run by `wgattn bench --mode layer --torch` in the same run.

    python3 scripts/torch_mha.py --shapes 1x1024x1024x16 --reps 3

Shapes are BxNxExH. One untimed warm-up call, then --reps timed calls; prints JSON lines
{"b", "n", "e", "heads", "median_ms", "threads"}. Needs only `torch`.
"""

import argparse
import json
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", required=True, help="comma-separated BxNxExH")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    import torch

    for shape in args.shapes.split(","):
        b, n, e, h = (int(v) for v in shape.split("x"))
        torch.manual_seed(1)
        m = torch.nn.MultiheadAttention(e, h, batch_first=True).eval()
        x = torch.rand(b, n, e) * 2 - 1
        with torch.inference_mode():
            m(x, x, x, need_weights=False)
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                m(x, x, x, need_weights=False)
                times.append((time.perf_counter() - t0) * 1e3)
        print(json.dumps({"b": b, "n": n, "e": e, "heads": h, "median_ms": statistics.median(times),
                          "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
