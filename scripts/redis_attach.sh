#!/usr/bin/env bash
# Attach on a busy service: redis-server under redis-benchmark, requests/s before, while
# `heaptape record --pid` is attached, and after the detach (issue 15's attach benchmark;
# figures in docs/PERFORMANCE.md).
#   scripts/redis_attach.sh [HEAPTAPE] [REQUESTS]
# Env: STATS=--stats for the recorder's per-call figures (it times every unwind, which
# costs the recording a few percent: leave it off for the requests/s figures),
# RECORD_OPTS for other record options, PERF as a prefix command (e.g. perf record).
set -euo pipefail
HT=${1:-target/release/heaptape}
N=${2:-60000}
command -v redis-server >/dev/null || { echo "redis_attach: redis-server is not installed (apt-get install redis-server)" >&2; exit 2; }
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
redis-server --port "$port" --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
bench() { redis-benchmark -p "$port" -q -c 4 -n "$N" -t set,get 2>/dev/null | tr '\r' '\n' | grep -E '^(SET|GET): [0-9.]+ requests' | sed -E 's/ requests per second.*//'; }
echo "before:"; bench
${PERF:-} "$HT" record ${STATS:-} ${RECORD_OPTS:-} --pid "$pid" --duration 15s -o "$dir/redis.trace" 2>"$dir/record.log" &
rec=$!
sleep 1
echo "attached:"; bench
wait $rec || { cat "$dir/record.log"; exit 1; }
echo "after:"; bench
redis-cli -p "$port" ping
sed 's/^/  /' "$dir/record.log"
