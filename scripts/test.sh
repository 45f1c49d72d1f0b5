#!/usr/bin/env bash
# Runs every test of the workspace against real servers.
#
# For each backend crate present (backend-dynamodb, backend-cassandra, backend-sql) it installs
# and starts the server with scripts/servers/<name>.sh, exports its address, runs
#   cargo test --workspace --all-features
# and stops what it started, also on failure or Ctrl-C. Extra arguments go to cargo test.
# Then it runs every fuzz target for FUZZ_SECONDS each (default 30; 0 skips them; see
# scripts/fuzz.sh, which needs the nightly toolchain and installs cargo-fuzz if missing).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

servers=()
[ -d backend-dynamodb ] && servers+=(dynamodb)
[ -d backend-sql ] && servers+=(postgres)
[ -d backend-cassandra ] && servers+=(cassandra)

started=()
stop_servers() {
  local s
  for s in "${started[@]}"; do
    bash "scripts/servers/$s.sh" stop || echo "warning: stopping $s failed" >&2
  done
}
trap stop_servers EXIT

for s in "${servers[@]}"; do
  echo "==> starting $s" >&2
  started+=("$s")
  if ! bash "scripts/servers/$s.sh" start >/dev/null; then
    echo "error: could not start the $s server (see .servers/$s/)" >&2
    exit 1
  fi
  # shellcheck disable=SC1090
  source ".servers/$s/env"
done

echo "==> cargo test --workspace --all-features $*" >&2
cargo test --workspace --all-features "$@"

if [ "${FUZZ_SECONDS:-30}" != "0" ]; then
  echo "==> scripts/fuzz.sh ${FUZZ_SECONDS:-30}" >&2
  bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi
