#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time each, from the seed corpus in
# fuzz/corpus/<target>/ (new inputs go to a scratch folder, so the repository stays clean).
#
#   scripts/fuzz.sh            30 s per target (scripts/test.sh runs 20 s each in CI)
#   scripts/fuzz.sh 600        10 minutes per target (before a release)
#   FUZZ_TARGETS="codec" scripts/fuzz.sh 3600
#   FUZZ_BACKENDS=1 scripts/fuzz.sh 300   also the backends' row/item decoders (sql_rows,
#                              dynamodb_items, cassandra_rows; what scripts/test.sh --long runs)
#
# The backend targets need the fuzz crate's `backends` feature, whose instrumented build of
# the three drivers takes about 20 minutes of CPU: CI leaves them out and runs the same
# decoder checks on stable in each backend's tests instead.
#
# Needs the nightly toolchain and cargo-fuzz; installs cargo-fuzz when it is missing.
# A crash stops the run with the input saved under fuzz/artifacts/<target>/: add it to
# a regular test (persistence-api's tests) and to the seed corpus, then fix the cause.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"
seconds="${1:-${FUZZ_SECONDS:-30}}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
backend_targets="sql_rows dynamodb_items cassandra_rows"
features=()
if [ "${FUZZ_BACKENDS:-0}" = "1" ]; then
  features=(--features backends)
  targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
else
  targets="${FUZZ_TARGETS:-$(cargo fuzz list | grep -vxF -f <(tr ' ' '\n' <<<"$backend_targets"))}"
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for t in $targets; do
  echo "==> fuzz $t for ${seconds}s" >&2
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  if ! cargo +nightly fuzz run "${features[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "error: fuzz target $t failed; the input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$log" | sed "s/^/  $t /" >&2 || true
done
