#!/usr/bin/env bash
# Leak classes on a busy service (issue 16): redis-server (Debian links it with
# jemalloc) filled with keys, then attached to while redis-benchmark runs and while N
# more keys are set; after the detach every key set during the attach is read back, and
# the report must have no block definitely or indirectly lost (memcheck would call the
# keys' strings possibly lost: a dict entry points past their sds header).
#   scripts/redis_leaks.sh [HEAPTAPE] [N]
# Exits 1 when a key is missing or a block is lost; 2 when redis is not installed.
# tests/allocators.rs (redis_attach_loses_nothing_it_keeps) is the quick version.
set -euo pipefail
HT=${1:-target/release/heaptape}
N=${2:-20000}
for tool in redis-server redis-cli redis-benchmark python3; do
    command -v "$tool" >/dev/null || { echo "redis_leaks: $tool is not installed (apt-get install redis-server redis-tools python3)" >&2; exit 2; }
done
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
redis-server --port "$port" --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
# Keys from before the attach: the dict and its entries exist already.
redis-benchmark -p "$port" -q -c 4 -n 20000 -r 5000 -t set >/dev/null 2>&1
before=$(redis-cli -p "$port" dbsize)
"$HT" record --pid "$pid" --duration "${DURATION:-12s}" -o "$dir/redis.trace" 2>"$dir/record.log" &
rec=$!
for _ in $(seq 500); do grep -q heaptape-probe "/proc/$pid/maps" && break; sleep 0.01; done
sleep 0.3
redis-benchmark -p "$port" -q -c 4 -n 60000 -r 100000 -t set,get,lpush,sadd >/dev/null 2>&1
# N keys of our own, in one pipeline.
python3 - "$N" <<'PY' | redis-cli -p "$port" --pipe >/dev/null
import sys
for i in range(int(sys.argv[1])):
    k, v = f"ht:key:{i}", f"value-{i}-" + "x" * (i % 50)
    sys.stdout.write(f"*3\r\n$3\r\nSET\r\n${len(k)}\r\n{k}\r\n${len(v)}\r\n{v}\r\n")
PY
wait $rec || { cat "$dir/record.log"; exit 1; }
after=$(redis-cli -p "$port" dbsize)
wrong=$(python3 - "$port" "$N" <<'PY'
import subprocess, sys
port, n = sys.argv[1], int(sys.argv[2])
cmds = "".join(f"GET ht:key:{i}\n" for i in range(n))
out = subprocess.run(["redis-cli", "-p", port], input=cmds, capture_output=True, text=True).stdout.split("\n")
print(sum(1 for i in range(n) if out[i] != f"value-{i}-" + "x" * (i % 50)))
PY
)
echo "keys: $before before the attach, $after after the detach; $wrong of the $N set during it missing or wrong"
"$HT" analyze --no-default-suppressions "$dir/redis.trace" | sed -n '/LEAK SUMMARY/,/suppressed/p'
lost=$("$HT" analyze --json --no-default-suppressions "$dir/redis.trace" | python3 -c '
import json, sys
p = json.load(sys.stdin)["processes"][0]["leaks"]
print(p["definitely_lost"]["blocks"] + p["indirectly_lost"]["blocks"])')
echo "blocks definitely or indirectly lost: $lost"
[[ $wrong == 0 && $lost == 0 ]]
