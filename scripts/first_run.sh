#!/usr/bin/env bash
# Time to first result: `wgattn run` at B1 H8 N256 for each head dim, in one process each, with the
# Mesa shader cache and the wgpu-attention caches emptied first (cold) and then kept (warm). Prints
# one row per head dim: seconds until the output file is written (the first result), wall seconds of
# the process (which, with WGATTN_FIRST_CALL=quick, also waits for the background compile of the full
# kernel) and peak resident memory. Usage:
#   scripts/first_run.sh [WGATTN] [D ...]       (default: target/release/wgattn, D 40 64 111 128 256)
set -euo pipefail
bin=${1:-target/release/wgattn}
shift || true
dims=${*:-40 64 111 128 256}
work=$(mktemp -d)
export MESA_SHADER_CACHE_DIR=$work/mesa WGATTN_CACHE_DIR=$work/wgattn
python3 "$(dirname "$0")/npy_inputs.py" "$work" $dims
run() {
    local d=$1 label=$2
    rm -f "$work/o.npy"
    local start
    start=$(date +%s.%N)
    /usr/bin/time -f "%e %M" -o "$work/time" "$bin" run --q "$work/q$d.npy" --k "$work/k$d.npy" \
        --v "$work/v$d.npy" --out "$work/o.npy" >/dev/null
    read -r secs kib <"$work/time"
    local result
    result=$(echo "$(stat -c %.3Y "$work/o.npy") - $start" | bc)
    printf '%-5s %-6s %8.2f s %8.2f s %8.0f MiB\n' "$d" "$label" "$result" "$secs" "$((kib / 1024))"
}
printf '%-5s %-6s %10s %10s %12s\n' D cache result wall peak-rss
for d in $dims; do run "$d" first; run "$d" again; done
rm -rf "$work"
