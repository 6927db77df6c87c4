#!/usr/bin/env python3
"""Check `wgattn run` on shapes too large for the in-process oracle (the peers' failing sizes).

    python3 scripts/check_large.py --seq 4096,16384 --heads 8 --head-dim 64 [--wgattn target/release/wgattn]
    python3 scripts/check_large.py --seq 70000 --q-len 16 --layout bshd   # K over a 128 MiB binding

For each length N: Q (N rows, or --q-len), K, V uniform in [-1, 1) (B = 1, float32, files in
--layout), O and LSE from `wgattn run` (dense and bottom-right causal), then `--rows` sampled query
rows of every head recomputed in float64 with NumPy. Prints the relative error ||o - ref|| / ||ref|| and the max abs errors of O and LSE over the
sampled rows; exits 1 if any relative error reaches 1e-5 or any value is not finite. Needs numpy.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np


def reference_rows(q, k, v, rows, causal):
    """O and LSE of the sampled (head, query) rows in float64 (BHSD arrays; causal is bottom-right)."""
    d = q.shape[-1]
    shift = k.shape[2] - q.shape[2]
    o, lse = [], []
    for h, i in rows:
        s = (k[0, h].astype(np.float64) @ q[0, h, i].astype(np.float64)) / np.sqrt(d)
        if causal:
            s[i + shift + 1:] = -np.inf
        m = s.max()
        p = np.exp(s - m)
        o.append(p @ v[0, h].astype(np.float64) / p.sum())
        lse.append(m + np.log(p.sum()))
    return np.array(o), np.array(lse)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="4096,16384")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rows", type=int, default=32, help="sampled query rows per head")
    ap.add_argument("--q-len", type=int, default=0, help="query rows (default: N)")
    ap.add_argument("--layout", choices=["bhsd", "bshd"], default="bhsd")
    ap.add_argument("--wgattn", default="target/release/wgattn")
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.seq.split(",")]:
            nq = args.q_len or n
            q = rng.uniform(-1, 1, (1, args.heads, nq, args.head_dim)).astype(np.float32)
            k, v = (rng.uniform(-1, 1, (1, args.heads, n, args.head_dim)).astype(np.float32) for _ in range(2))
            # BHSD <-> BSHD is one transpose of the middle axes
            to_file = (lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3))) if args.layout == "bshd" else (lambda x: x)
            paths = {name: os.path.join(tmp, f"{name}.npy") for name in ["q", "k", "v", "o", "lse"]}
            for name, x in [("q", q), ("k", k), ("v", v)]:
                np.save(paths[name], to_file(x))
            rows = [(h, int(i)) for h in range(args.heads) for i in rng.integers(0, nq, args.rows)]
            for causal in [False, True]:
                cmd = [args.wgattn, "run", "--q", paths["q"], "--k", paths["k"], "--v", paths["v"],
                       "--out", paths["o"], "--lse", paths["lse"], "--layout", args.layout]
                cmd += ["--causal"] if causal else []
                subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
                o, lse = to_file(np.load(paths["o"])), np.load(paths["lse"])
                want_o, want_lse = reference_rows(q, k, v, rows, causal)
                got_o = np.array([o[0, h, i] for h, i in rows], dtype=np.float64)
                got_lse = np.array([lse[0, h, i] for h, i in rows], dtype=np.float64)
                rel = np.linalg.norm(got_o - want_o) / np.linalg.norm(want_o)
                finite = np.isfinite(o).all() and np.isfinite(lse).all()
                good = finite and rel < 1e-5
                ok &= good
                print(f"Nq={nq} Nk={n} H={args.heads} D={args.head_dim} {args.layout} "
                      f"{'causal' if causal else 'dense '}: "
                      f"rel {rel:.2e}, max abs {np.abs(got_o - want_o).max():.2e}, "
                      f"LSE max abs {np.abs(got_lse - want_lse).max():.2e}, all finite: {finite} "
                      f"({len(rows)} rows) {'ok' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
