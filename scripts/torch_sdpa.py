#!/usr/bin/env python3
"""PyTorch's CPU scaled_dot_product_attention timed on `wgattn bench`'s shapes.

Writes rows in the bench's JSON format (backend `torch-cpu`), so that

    python3 scripts/torch_sdpa.py --seq 1024,4096 --json torch.json
    wgattn bench --seq 1024,4096 --merge-json torch.json --plot bench.svg

shows PyTorch beside the crate's backends in one table and plot. Inputs are float32 in BHSD
(uniform in [-1, 1)), rotated among 3 random sets; one untimed warm-up call per row, then --reps
timed calls; the median wall time is reported. Modes: dense (no mask), causal (bottom-right
aligned like the bench: `is_causal=True` when Nq = Nk, an explicit boolean mask otherwise) and
decode (one query against Nk keys, which bottom-right causal leaves unmasked). GFLOP/s and GB/s use
the bench's formulas (density = fraction of 64×64 blocks visited). Needs only `torch`.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

BLOCK = 64


def int_list(text):
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def mode_list(text):
    modes = [x.strip() for x in text.split(",") if x.strip()]
    bad = [m for m in modes if m not in ("dense", "causal", "decode")]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"modes are dense, causal, decode; got {text!r}")
    return modes


def causal_density(q_len, kv_len):
    """Fraction of (query block, key block) pairs of BLOCK with a visible key (bottom-right)."""
    qb, kb = math.ceil(q_len / BLOCK), math.ceil(kv_len / BLOCK)
    visited = 0
    for i in range(qb):
        last = min((i + 1) * BLOCK, q_len) - 1
        pos = last + kv_len - q_len  # the last row's aligned key position
        if pos >= 0:
            visited += min(kb, pos // BLOCK + 1)
    return visited / (qb * kb)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int_list, default=[512, 1024, 2048], help="query (and key) lengths")
    ap.add_argument("--kv-seq", type=int_list, default=None, help="key lengths, crossed with --seq")
    ap.add_argument("--head-dim", type=int_list, default=[64])
    ap.add_argument("--heads", type=int_list, default=[8])
    ap.add_argument("--kv-heads", type=int_list, default=None, help="K/V heads (GQA, enable_gqa); default: --heads")
    ap.add_argument("--q-len", type=int_list, default=[1], help="query lengths of the decode mode")
    ap.add_argument("--batch", type=int_list, default=[1])
    ap.add_argument("--mode", type=mode_list, default=["dense", "causal"], help="dense,causal,decode")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per row")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default="-", help="output path (default: stdout)")
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        sys.exit("error: PyTorch is not installed (pip install torch)")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cpu = f"torch {torch.__version__} cpu, {torch.get_num_threads()} threads"
    rows = []
    seen = set()
    pairs = [(n, n) for n in args.seq] if args.kv_seq is None else [(n, m) for n in args.seq for m in args.kv_seq]
    for b in args.batch:
        for h in args.heads:
          for hkv in args.kv_heads or [h]:
            if h % hkv:
                continue
            for d in args.head_dim:
                for nq, nk in pairs:
                    for mode in args.mode:
                      for q_len in (args.q_len if mode == "decode" else [nq]):
                        key = (b, h, hkv, d, q_len, nk, mode)
                        if key in seen:
                            continue
                        seen.add(key)
                        rows.append(run(torch, F, b, (h, hkv), d, q_len, nk, mode, args.reps, cpu))
                        r = rows[-1]
                        print(
                            f"torch-cpu {mode:6} B{b} H{h}/{hkv} {q_len}x{nk} D{d}: {r['median_ms']:.3f} ms, "
                            f"{r['gflops']:.2f} GFLOP/s, {r['gbps']:.2f} GB/s",
                            file=sys.stderr,
                        )
    text = json.dumps(rows, indent=2) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        with open(args.json, "w") as f:
            f.write(text)


def run(torch, F, b, heads, d, q_len, kv_len, mode, reps, device):
    h, hkv = heads
    sets = [
        tuple(torch.rand(b, hh, n, d, dtype=torch.float32) * 2 - 1 for hh, n in ((h, q_len), (hkv, kv_len), (hkv, kv_len)))
        for _ in range(3)
    ]
    mask, is_causal, density = None, False, 1.0
    if mode == "causal":
        density = causal_density(q_len, kv_len)
        if q_len == kv_len:
            is_causal = True
        else:
            i = torch.arange(q_len).unsqueeze(1)
            j = torch.arange(kv_len).unsqueeze(0)
            mask = j <= i + kv_len - q_len
    elif mode == "decode":
        density = causal_density(q_len, kv_len)
        if q_len > 1:
            i = torch.arange(q_len).unsqueeze(1)
            j = torch.arange(kv_len).unsqueeze(0)
            mask = j <= i + kv_len - q_len

    def call(s):
        q, k, v = sets[s % len(sets)]
        gqa = {"enable_gqa": True} if hkv != h else {}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **gqa)

    times = []
    with torch.inference_mode():
        call(0)  # warm-up
        for r in range(reps):
            t = time.perf_counter()
            call(r + 1)
            times.append((time.perf_counter() - t) * 1e3)
    ms = statistics.median(times)
    flops = 4.0 * b * h * q_len * kv_len * d * density
    bytes_ = 4.0 * (2 * b * h * q_len * d + 2 * b * hkv * kv_len * d + b * h * q_len)
    return {
        "backend": "torch-cpu",
        "mode": mode,
        "dtype": "f32",
        "batch": b,
        "q_heads": h,
        "kv_heads": hkv,
        "q_len": q_len,
        "kv_len": kv_len,
        "head_dim": d,
        "requested_density": None,
        "density": density,
        "median_ms": ms,
        "wall_ms": ms,
        "gflops": flops / (ms * 1e6),
        "gbps": bytes_ / (ms * 1e6),
        "peak_device_bytes": 0,
        "timer": "wall",
        "reps": reps,
        "kernel": "torch sdpa" + (" is_causal" if is_causal else " mask" if mask is not None else ""),
        "device": device,
        "speedup_fused_vs_naive": None,
        "speedup_gpu_vs_cpu": None,
        "speedup_vs_dense": None,
        "note": "",
        "detail": "",
    }


if __name__ == "__main__":
    main()
