#!/usr/bin/env bash
# The main job on a fresh machine: build heaptape, record a real program (g++ compiling
# a small C++ file: the driver, cc1plus and the assembler, one trace), show its report.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/demo.cc" <<'CC'
#include <map>
#include <string>
#include <vector>
int main() {
    std::map<std::string, std::vector<int>> m;
    for (int i = 0; i < 100; i++) m[std::to_string(i)].push_back(i);
    return m.size() == 100 ? 0 : 1;
}
CC
target/release/heaptape record -o "$dir/g++.trace" -- g++ -c "$dir/demo.cc" -o "$dir/demo.o"
target/release/heaptape analyze --top 3 "$dir/g++.trace"
