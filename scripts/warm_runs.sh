#!/usr/bin/env bash
# A second process with every cache warm, with and without the parse cache (`wgsl-*.bin`): for
# each head dim, one cold `wgattn run` at B1 H8 N256 (Mesa's and the library's caches emptied),
# then three pairs of warm runs: all caches kept, then the parse cache's files moved away. Usage:
#   scripts/warm_runs.sh [WGATTN] [D ...]       (default: target/release/wgattn, D 64 128)
set -euo pipefail
bin=${1:-target/release/wgattn}
shift || true
dims=${*:-64 128}
inputs=$(mktemp -d)
python3 "$(dirname "$0")/npy_inputs.py" "$inputs" $dims
for d in $dims; do
    w=$(mktemp -d)
    export MESA_SHADER_CACHE_DIR=$w/mesa WGATTN_CACHE_DIR=$w/wgattn
    run() {
        /usr/bin/time -f "%e %M" -o "$w/time" "$bin" run --q "$inputs/q$d.npy" --k "$inputs/k$d.npy" \
            --v "$inputs/v$d.npy" --out "$w/o.npy" >/dev/null
        read -r secs kib <"$w/time"
        printf '%-5s %-9s %8.2f s %8.0f MiB\n' "$d" "$1" "$secs" "$((kib / 1024))"
    }
    run cold
    for _ in 1 2 3; do
        run warm
        mkdir -p "$w/hidden" && mv "$w"/wgattn/wgsl-* "$w/hidden/"
        run no-parse
        rm -f "$w"/wgattn/wgsl-* && mv "$w"/hidden/* "$w/wgattn/"
    done
    rm -rf "$w"
done
rm -rf "$inputs"
