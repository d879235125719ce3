#!/usr/bin/env bash
# Builds the fuzz targets with coverage instrumentation on a *stable*
# toolchain (the same sanitizer-coverage passes cargo fuzz enables, minus
# AddressSanitizer, which needs nightly; the code under test forbids unsafe)
# and runs each one for a bounded time.
#
#   fuzz/run.sh [seconds-per-target]   (default 10)
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-10}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps the flags off build scripts and proc macros.
cargo build --release --locked --target "$triple" --target-dir target/cov
for t in frame beat segment copy heartbeat om swim rpc reliable records mcast commit commit_paxos; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${secs}s"
  rc=0
  out="$("target/cov/$triple/release/$t" -max_total_time="$secs" -print_final_stats=1 "corpus/$t" 2>&1)" || rc=$?
  grep -E '^stat::(number_of_executed_units|new_units_added)' <<<"$out" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 40 <<<"$out"
    echo "fuzz: $t failed (exit $rc); the crashing input is in fuzz/ as crash-*"
    exit 1
  fi
done
