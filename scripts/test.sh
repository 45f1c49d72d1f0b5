#!/usr/bin/env bash
# Runs every test of the workspace against real servers.
#
# For each backend crate present (backend-dynamodb, backend-cassandra, backend-sql) it installs
# and starts the server with scripts/servers/<name>.sh, exports its address, runs
#   cargo test --workspace --all-features
# and stops what it started, also on failure or Ctrl-C. Extra arguments go to cargo test.
# Then it runs every fuzz target for FUZZ_SECONDS each (default 20; 0 skips them; see
# scripts/fuzz.sh, which needs the nightly toolchain and installs cargo-fuzz if missing).
#
# --long (first argument) runs the same tests with the longer reliability campaigns of a
# release instead of the bounded ones CI runs: 50 server kill cycles and 10 client kill
# cycles per backend, 50 projection crash cycles, 2,000-operation linearizability histories, the
# CLI's copy test with 1,000 ids (100,000 events; 250 in CI), the DynamoDB kit with 30 %
# of attempts throttled and 10 % answered 500, and 300 s per fuzz target, the backends'
# row/item decoder targets included. Each variable can still be set by hand (the values
# below are defaults).
set -euo pipefail

if [ "${1:-}" = "--long" ]; then
  shift
  export PERSISTENCE_CRASH_CYCLES="${PERSISTENCE_CRASH_CYCLES:-50}"
  export PERSISTENCE_CLIENT_CRASH_CYCLES="${PERSISTENCE_CLIENT_CRASH_CYCLES:-10}"
  export PROJECTION_CRASH_CYCLES="${PROJECTION_CRASH_CYCLES:-50}"
  export PERSISTENCE_LINEARIZABILITY_OPS="${PERSISTENCE_LINEARIZABILITY_OPS:-2000}"
  export PERSISTENCE_COPY_IDS="${PERSISTENCE_COPY_IDS:-1000}"
  export PERSISTENCE_CHAOS_THROTTLED="${PERSISTENCE_CHAOS_THROTTLED:-0.30}"
  export PERSISTENCE_CHAOS_SERVER_ERRORS="${PERSISTENCE_CHAOS_SERVER_ERRORS:-0.10}"
  export FUZZ_SECONDS="${FUZZ_SECONDS:-300}"
  export FUZZ_BACKENDS="${FUZZ_BACKENDS:-1}"
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

servers=()
[ -d backend-dynamodb ] && servers+=(dynamodb)
[ -d backend-sql ] && servers+=(postgres)
[ -d backend-cassandra ] && servers+=(cassandra)

started=()
# The secure Cassandra node (TLS + password authentication; tests/tck_secure.rs, tests/tls.rs):
# started in the background beside the others (a Cassandra start takes a minute on 2 cores),
# waited for before the tests, stopped with them.
secure_cassandra_pid=""
secure_cassandra_started=0
cluster_started=0
stop_servers() {
  local s
  if [ -n "$secure_cassandra_pid" ]; then
    wait "$secure_cassandra_pid" 2>/dev/null || true
  fi
  for s in "${started[@]}"; do
    bash "scripts/servers/$s.sh" stop || echo "warning: stopping $s failed" >&2
  done
  if [ "$secure_cassandra_started" = 1 ]; then
    bash scripts/servers/cassandra.sh secure-stop || echo "warning: stopping cassandra-secure failed" >&2
  fi
  if [ "$cluster_started" = 1 ]; then
    bash scripts/servers/cassandra.sh cluster-stop || echo "warning: stopping cassandra-cluster failed" >&2
  fi
}
trap stop_servers EXIT

if [ -d backend-cassandra ]; then
  echo "==> starting cassandra-secure (background; log .servers/cassandra-secure.start.log)" >&2
  mkdir -p .servers
  secure_cassandra_started=1
  bash scripts/servers/cassandra.sh secure-start >.servers/cassandra-secure.start.log 2>&1 &
  secure_cassandra_pid=$!
fi

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

if [ -n "$secure_cassandra_pid" ]; then
  if ! wait "$secure_cassandra_pid"; then
    secure_cassandra_pid=""
    cat .servers/cassandra-secure.start.log >&2
    echo "error: could not start the secure cassandra server (see .servers/cassandra-secure/)" >&2
    exit 1
  fi
  secure_cassandra_pid=""
  # shellcheck disable=SC1091
  source .servers/cassandra-secure/env
fi

# The cluster test runs on its own below, once the cluster is up: filtered out here (its
# name is unique in the workspace).
cluster_test=a_cluster_that_loses_a_node
if [[ " $* " == *" -- "* ]]; then
  filter=(--skip "$cluster_test")
else
  filter=(-- --skip "$cluster_test")
fi
echo "==> cargo test --workspace --all-features $* ${filter[*]}" >&2
cargo test --workspace --all-features "$@" "${filter[@]}"

# The three-node Cassandra cluster (backend-cassandra/tests/cluster.rs, filtered out of the
# run above): started after it, with the single and secure nodes stopped first, so that three
# more JVMs do not slow every other suite (an idle node costs about 17 % of a core). About
# 45 s to start, 140 s of test.
if [ "${PERSISTENCE_SKIP_CLUSTER:-0}" = "1" ]; then
  echo "==> PERSISTENCE_SKIP_CLUSTER=1: the three-node Cassandra cluster test did NOT run" >&2
elif [ -d backend-cassandra ]; then
  bash scripts/servers/cassandra.sh stop || true
  bash scripts/servers/cassandra.sh secure-stop || true
  echo "==> starting cassandra-cluster" >&2
  cluster_started=1
  if ! bash scripts/servers/cassandra.sh cluster-start >.servers/cassandra-cluster.start.log 2>&1; then
    cat .servers/cassandra-cluster.start.log >&2
    echo "error: could not start the cassandra cluster (see .servers/cassandra-cluster/)" >&2
    exit 1
  fi
  # shellcheck disable=SC1091
  source .servers/cassandra-cluster/env
  echo "==> cargo test -p persistence-cassandra --test cluster" >&2
  cargo test -p persistence-cassandra --all-features --test cluster -- --nocapture
  bash scripts/servers/cassandra.sh cluster-stop || echo "warning: stopping cassandra-cluster failed" >&2
  cluster_started=0
fi

if [ "${FUZZ_SECONDS:-20}" != "0" ]; then
  echo "==> scripts/fuzz.sh ${FUZZ_SECONDS:-20}" >&2
  bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
fi
