#!/usr/bin/env bash
# A private PostgreSQL instance (Debian's binaries, own data dir, never the system cluster) for the tests.
# Usage: scripts/servers/postgres.sh install|start|stop|status|reset
#        scripts/servers/postgres.sh durable-start|kill|durable-stop DIR
#   start  prints (and writes to .servers/postgres/env) PERSISTENCE_POSTGRES_URL; every real start
#          drops and recreates the database persistence_test, so a test run begins empty.
#          TLS is on (ssl = on, certificates of scripts/servers/certs.sh in .servers/tls: the server's
#          is for DNS:localhost only), beside the plain role above (unchanged; a client with the default
#          sslmode prefer now gets TLS without checks, one with sslmode=disable plain TCP). Two more roles,
#          owners of their own databases (re-created empty on every real start, like persistence_test):
#            persistence_tls   password (scram-sha-256), only over TLS (hostssl)
#            persistence_cert  client certificate (CN=persistence_cert, `cert`), only over TLS
#          env also gets PERSISTENCE_TEST_POSTGRES_TLS_URL (no password in it),
#          PERSISTENCE_TEST_POSTGRES_TLS_PASSWORD, PERSISTENCE_TEST_POSTGRES_CERT_URL and
#          PERSISTENCE_TEST_TLS_DIR (ca.pem, client.pem/.key, expired.pem/.key, other-ca.pem).
#   reset  drops and recreates persistence_test on the running server.
# Runs as root: initdb/pg_ctl run as the OS user postgres. Data lives in .servers/postgres/data, or in
# /tmp/persistence-postgres-<hash> when postgres cannot reach .servers (recorded in .servers/postgres/pghome).
#
# Durable mode (crash tests; a SEPARATE instance, never the test server above):
#   durable-start DIR  starts (or restarts on the same data) an instance with its data in DIR/pgdata,
#                      fsync = on, synchronous_commit = on, full_page_writes = on, on a free port (the same
#                      one again if still free); writes DIR/env (PERSISTENCE_POSTGRES_URL) and prints it.
#   kill DIR           SIGKILLs that instance's postmaster, nothing else (its orphaned backends exit by
#                      themselves; durable-start waits for them).
#   durable-stop DIR   stops it (fast, then immediate).
set -euo pipefail

SERVER_NAME=postgres # log prefix, read by common.sh
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

STATE="$SERVERS_REPO_ROOT/.servers/postgres"
PIDFILE="$STATE/server.pid"
PORTFILE="$STATE/port"
ENVFILE="$STATE/env"
LOG="$STATE/server.log"
START_TIMEOUT=${SERVERS_START_TIMEOUT:-120} # seconds
PG_USER=postgres
DB_ROLE=persistence
DB_PASSWORD=persistence
DB_NAME=persistence_test
TLS_ROLE=persistence_tls
TLS_PASSWORD=persistence-tls-secret
TLS_DB=persistence_tls_test
CERT_ROLE=persistence_cert # must equal the CN of certs.sh's client.pem
CERT_DB=persistence_cert_test
TLS_DIR=$SERVERS_REPO_ROOT/.servers/tls

# Newest /usr/lib/postgresql/<v>/bin with every binary we use (empty if none).
pg_bin() {
    local d
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV); do
        [[ -x $d/postgres && -x $d/initdb && -x $d/pg_ctl && -x $d/pg_isready && -x $d/psql ]] && { echo "$d"; return 0; }
    done
    return 1
}

# Run a command as the postgres OS user, from / (its cwd must be readable by postgres).
as_pg() {
    if command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u "$PG_USER" -- "$@")
    else
        # shellcheck disable=SC2016 # $0/$@ expand in the inner sh
        (cd / && su "$PG_USER" -s /bin/sh -c '"$0" "$@"' -- "$@")
    fi
}

cmd_install() {
    mkdir -p "$STATE"
    if ! pg_bin >/dev/null; then
        [[ $(id -u) -eq 0 ]] || die "PostgreSQL binaries missing and not root: run apt-get install -y postgresql"
        require_cmd apt-get "not Debian? install PostgreSQL server binaries under /usr/lib/postgresql/<v>/bin"
        log "installing postgresql (apt-get)"
        { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; } >"$STATE/install.log" 2>&1 ||
            { print_log_tail "$STATE/install.log"; die "apt-get install postgresql failed"; }
        pg_bin >/dev/null || die "postgresql installed but no /usr/lib/postgresql/*/bin/{postgres,initdb,pg_ctl,pg_isready,psql}"
    fi
    id "$PG_USER" >/dev/null 2>&1 || die "OS user $PG_USER not found (it comes with the postgresql package)"
}

# Directory holding data/ and run/ (the unix socket dir); chosen once, then read from $STATE/pghome.
pg_home() {
    local home
    if [[ -s $STATE/pghome ]]; then cat "$STATE/pghome"; return 0; fi
    home=$STATE
    # postgres must traverse to the data dir, and a unix socket path must stay below ~107 bytes.
    if ! as_pg test -x "$STATE" || ((${#STATE} > 80)); then
        home=/tmp/persistence-postgres-$(printf '%s' "$SERVERS_REPO_ROOT" | md5sum | cut -c1-12)
    fi
    echo "$home" >"$STATE/pghome"
    echo "$home"
}

# Make DIR exist, owned by postgres, mode 700 (refuse a DIR someone else owns).
pg_dir() {
    mkdir -p "$1"
    [[ $1 == "$STATE" ]] || [[ $(stat -c %U "$1") == "$PG_USER" || $(stat -c %U "$1") == root ]] ||
        die "$1 belongs to $(stat -c %U "$1"), refusing to use it"
    chown "$PG_USER:" "$1"
    chmod 700 "$1"
}

# Globals set by pg_paths: BIN HOME_DIR DATA SOCK.
pg_paths() {
    BIN=$(pg_bin) || die "PostgreSQL binaries not found (run: $0 install)"
    HOME_DIR=$(pg_home)
    DATA=$HOME_DIR/data
    SOCK=$HOME_DIR/run
}

url() { echo "postgres://$DB_ROLE:$DB_PASSWORD@127.0.0.1:$1/$DB_NAME"; }

# Admin psql over the unix socket as superuser postgres (trust auth, socket dir is mode 700).
admin_psql() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$1" -U "$PG_USER" -d postgres; }

answers() { "$BIN/psql" -X -qtA -c 'select 1' "$(url "$1")" 2>/dev/null | grep -qx 1; }

postmaster_running() { [[ -f $DATA/PG_VERSION ]] && as_pg "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

running() {
    local port
    [[ -x ${BIN:-} ]] || BIN=$(pg_bin) || return 1
    pid_alive "$PIDFILE" postgres && port=$(cat "$PORTFILE" 2>/dev/null) && answers "$port"
}

ensure_cluster() {
    local major
    major=$(basename "$(dirname "$BIN")")
    if [[ -f $DATA/PG_VERSION && $(cat "$DATA/PG_VERSION") != "$major" ]]; then
        log "data dir $DATA is from PostgreSQL $(cat "$DATA/PG_VERSION"), binaries are $major: re-creating it"
        rm -rf "$DATA"
    fi
    [[ $HOME_DIR == "$STATE" ]] || pg_dir "$HOME_DIR"
    pg_dir "$SOCK"
    if [[ ! -f $DATA/PG_VERSION ]]; then
        rm -rf "$DATA"
        pg_dir "$DATA"
        log "initdb $DATA (PostgreSQL $major)"
        as_pg "$BIN/initdb" -D "$DATA" -U "$PG_USER" --auth-local=trust --auth-host=scram-sha-256 \
            -E UTF8 --locale=C >"$STATE/initdb.log" 2>&1 ||
            { print_log_tail "$STATE/initdb.log"; die "initdb failed"; }
        echo "include_if_exists = 'persistence.conf'" >>"$DATA/postgresql.conf"
    fi
    tls_hba "$DATA"
}

# The TLS roles' pg_hba.conf lines, ahead of initdb's (the first matching line decides): each role
# only over TLS, never over plain TCP. Added once; initdb's lines (the plain role's) stay as they are.
tls_hba() {
    local hba=$1/pg_hba.conf tmp
    grep -q '^# persistence TLS roles' "$hba" && return 0
    tmp=$(mktemp)
    {
        echo "# persistence TLS roles (scripts/servers/postgres.sh)"
        echo "hostssl   all $TLS_ROLE  127.0.0.1/32 scram-sha-256"
        echo "hostssl   all $CERT_ROLE 127.0.0.1/32 cert"
        echo "hostnossl all $TLS_ROLE  all          reject"
        echo "hostnossl all $CERT_ROLE all          reject"
        cat "$hba"
    } >"$tmp"
    cat "$tmp" >"$hba"
    rm -f "$tmp"
}

# Copy the server certificate, its key and the CA into data dir $1 (postgres refuses a key others can read).
tls_files() {
    bash "$(dirname "${BASH_SOURCE[0]}")/certs.sh" "$TLS_DIR" >/dev/null || die "certs.sh failed"
    install -o "$PG_USER" -m 600 "$TLS_DIR/server.key" "$1/server.key"
    install -o "$PG_USER" -m 644 "$TLS_DIR/server.pem" "$1/server.pem"
    install -o "$PG_USER" -m 644 "$TLS_DIR/ca.pem" "$1/ca.pem"
}

recreate_db() {
    admin_psql "$1" <<EOF
SET client_min_messages = warning;
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$DB_ROLE') THEN CREATE ROLE $DB_ROLE; END IF;
END \$\$;
ALTER ROLE $DB_ROLE WITH LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE);
CREATE DATABASE $DB_NAME OWNER $DB_ROLE;
EOF
}

# The TLS roles and their databases (the test server only; the durable instance has none).
recreate_tls_dbs() {
    admin_psql "$1" <<EOF
SET client_min_messages = warning;
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$TLS_ROLE') THEN CREATE ROLE $TLS_ROLE; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$CERT_ROLE') THEN CREATE ROLE $CERT_ROLE; END IF;
END \$\$;
ALTER ROLE $TLS_ROLE WITH LOGIN PASSWORD '$TLS_PASSWORD';
ALTER ROLE $CERT_ROLE WITH LOGIN PASSWORD NULL;
DROP DATABASE IF EXISTS $TLS_DB WITH (FORCE);
CREATE DATABASE $TLS_DB OWNER $TLS_ROLE;
DROP DATABASE IF EXISTS $CERT_DB WITH (FORCE);
CREATE DATABASE $CERT_DB OWNER $CERT_ROLE;
EOF
}

tls_url() { echo "postgres://$TLS_ROLE@localhost:$1/$TLS_DB"; }
cert_url() { echo "postgres://$CERT_ROLE@localhost:$1/$CERT_DB"; }

write_env() {
    {
        echo "export PERSISTENCE_POSTGRES_URL=$(url "$1")"
        echo "export PERSISTENCE_TEST_POSTGRES_TLS_URL=$(tls_url "$1")"
        echo "export PERSISTENCE_TEST_POSTGRES_TLS_PASSWORD=$TLS_PASSWORD"
        echo "export PERSISTENCE_TEST_POSTGRES_CERT_URL=$(cert_url "$1")"
        echo "export PERSISTENCE_TEST_TLS_DIR=$TLS_DIR"
    } >"$ENVFILE"
}

# Both TLS roles answer over TLS, the CA and the host name checked (as the tests connect).
tls_answers() {
    PGPASSWORD=$TLS_PASSWORD PGSSLMODE=verify-full PGSSLROOTCERT=$TLS_DIR/ca.pem \
        "$BIN/psql" -X -qtA -c 'select 1' "$(tls_url "$1")" 2>/dev/null | grep -qx 1 &&
        PGSSLMODE=verify-full PGSSLROOTCERT=$TLS_DIR/ca.pem PGSSLCERT=$TLS_DIR/client.pem \
            PGSSLKEY=$TLS_DIR/client.key "$BIN/psql" -X -qtA -c 'select 1' "$(cert_url "$1")" 2>/dev/null |
        grep -qx 1
}

cmd_start() {
    cmd_install
    lock_dir "$STATE"
    pg_paths
    # Already running with TLS (a server started by an older version of this script, without
    # TLS, is restarted).
    if running && grep -q '^ssl = on' "$DATA/persistence.conf" 2>/dev/null &&
        grep -q PERSISTENCE_TEST_POSTGRES_TLS_URL "$ENVFILE" 2>/dev/null; then
        cat "$ENVFILE"; return 0
    fi
    rm -f "$ENVFILE"
    ensure_cluster
    tls_files "$DATA"
    if postmaster_running; then
        log "a postmaster for $DATA runs but does not answer (or has no TLS yet): stopping it"
        as_pg "$BIN/pg_ctl" stop -D "$DATA" -m immediate -w -s >>"$LOG" 2>&1 || true
    fi
    rm -f "$PIDFILE"

    local port
    port=$(free_port) || die "no free TCP port found on 127.0.0.1"
    cat >"$DATA/persistence.conf" <<EOF
# Written by scripts/servers/postgres.sh on every start.
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCK'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
ssl = on
ssl_cert_file = 'server.pem'
ssl_key_file = 'server.key'
ssl_ca_file = 'ca.pem'
EOF
    chown "$PG_USER:" "$DATA/persistence.conf"
    echo "$port" >"$PORTFILE"
    : >"$LOG"
    # No -l: the postmaster inherits this stderr, so the log can stay in $STATE even if postgres cannot write there.
    if ! as_pg "$BIN/pg_ctl" start -D "$DATA" -w -t "$START_TIMEOUT" -s >>"$LOG" 2>&1 </dev/null 9>&-; then
        print_log_tail "$LOG"
        # pg_ctl may give up before the postmaster wrote its pid file: give it a moment, then stop it.
        if wait_until 5 postmaster_running; then as_pg "$BIN/pg_ctl" stop -D "$DATA" -m immediate -w -s >/dev/null 2>&1 || true; fi
        die "pg_ctl start failed or PostgreSQL not ready within ${START_TIMEOUT}s (data dir $DATA)"
    fi
    head -n1 "$DATA/postmaster.pid" >"$PIDFILE"
    log "started PostgreSQL (pid $(cat "$PIDFILE")) on 127.0.0.1:$port, data $DATA, log $LOG"

    recreate_db "$port" || { print_log_tail "$LOG"; die "creating role $DB_ROLE / database $DB_NAME failed"; }
    recreate_tls_dbs "$port" || { print_log_tail "$LOG"; die "creating roles $TLS_ROLE / $CERT_ROLE failed"; }
    answers "$port" || { print_log_tail "$LOG"; die "psql $(url "$port") -c 'select 1' failed"; }
    tls_answers "$port" || { print_log_tail "$LOG"; die "roles $TLS_ROLE / $CERT_ROLE cannot connect over TLS"; }
    write_env "$port"
    cat "$ENVFILE"
}

cmd_stop() {
    mkdir -p "$STATE"
    lock_dir "$STATE"
    if [[ -s $STATE/pghome ]] && BIN=$(pg_bin); then
        pg_paths
        if postmaster_running; then
            as_pg "$BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 60 -s >>"$LOG" 2>&1 ||
                as_pg "$BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 30 -s >>"$LOG" 2>&1 ||
                die "pg_ctl stop failed (data dir $DATA)"
            log "stopped"
        fi
    fi
    rm -f "$PIDFILE" "$ENVFILE" "$PORTFILE"
}

cmd_status() {
    if running; then cat "$ENVFILE"; return 0; fi
    log "not running"
    return 1
}

cmd_reset() {
    [[ -d $STATE ]] || die "not running (run: $0 start)"
    lock_dir "$STATE"
    pg_paths
    running || die "not running (run: $0 start)"
    recreate_db "$(cat "$PORTFILE")" || die "re-creating database $DB_NAME failed"
    recreate_tls_dbs "$(cat "$PORTFILE")" || die "re-creating databases $TLS_DB / $CERT_DB failed"
    log "database $DB_NAME re-created"
}

# ---- durable mode ------------------------------------------------------------------------------------------

durable_paths() {
    [[ -n ${1:-} ]] || die "usage: $0 durable-start|kill|durable-stop DIR"
    mkdir -p "$1"
    D_DIR=$(cd "$1" && pwd)
    D_DATA=$D_DIR/pgdata
    D_SOCK=$D_DIR/pgrun
    D_LOG=$D_DIR/postgres.log
    ((${#D_SOCK} < 90)) || die "$D_SOCK is too long for a unix socket path"
    BIN=$(pg_bin) || die "PostgreSQL binaries not found (run: $0 install)"
    SOCK=$D_SOCK
}

durable_postmaster_pid() { [[ -f $D_DATA/postmaster.pid ]] && read_pid "$D_DATA/postmaster.pid"; }

cmd_durable_start() {
    cmd_install
    durable_paths "${1:-}"
    local pid port first=0 pids deadline alive p
    # postgres must traverse DIR (a mktemp -d dir is mode 700).
    chmod a+x "$D_DIR"
    if pid=$(durable_postmaster_pid) && kill -0 "$pid" 2>/dev/null &&
        port=$(cat "$D_DIR/port" 2>/dev/null) && answers "$port"; then
        cat "$D_DIR/env"; return 0
    fi
    # Backends orphaned by a killed postmaster hold its shared memory: wait for them to exit.
    if [[ -s $D_DIR/orphans ]]; then
        read -r -a pids <"$D_DIR/orphans" || true
        deadline=$((SECONDS + 60))
        while :; do
            alive=0
            for p in "${pids[@]}"; do if kill -0 "$p" 2>/dev/null; then alive=1; fi; done
            ((alive)) || break
            ((SECONDS < deadline)) || die "backends of the killed postmaster still alive after 60 s: ${pids[*]}"
            sleep 0.2
        done
        rm -f "$D_DIR/orphans"
    fi
    pg_dir "$D_SOCK"
    if [[ ! -f $D_DATA/PG_VERSION ]]; then
        first=1
        rm -rf "$D_DATA"
        pg_dir "$D_DATA"
        as_pg "$BIN/initdb" -D "$D_DATA" -U "$PG_USER" --auth-local=trust --auth-host=scram-sha-256 \
            -E UTF8 --locale=C >"$D_DIR/initdb.log" 2>&1 ||
            { print_log_tail "$D_DIR/initdb.log"; die "initdb failed"; }
        echo "include_if_exists = 'persistence.conf'" >>"$D_DATA/postgresql.conf"
    fi
    port=$(cat "$D_DIR/port" 2>/dev/null || true)
    if [[ ! $port =~ ^[0-9]+$ ]] || port_open "$port"; then
        port=$(free_port) || die "no free TCP port found on 127.0.0.1"
    fi
    {
        echo "# Written by scripts/servers/postgres.sh durable-start: a durable configuration (crash tests)."
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$D_SOCK'"
        echo "max_connections = 100"
        echo "shared_buffers = 32MB"
        echo "fsync = on"
        echo "synchronous_commit = on"
        echo "full_page_writes = on"
    } >"$D_DATA/persistence.conf"
    chown "$PG_USER:" "$D_DATA/persistence.conf"
    echo "$port" >"$D_DIR/port"
    if ! as_pg "$BIN/pg_ctl" start -D "$D_DATA" -w -t "$START_TIMEOUT" -s >>"$D_LOG" 2>&1 </dev/null 9>&-; then
        print_log_tail "$D_LOG"
        die "pg_ctl start failed (durable instance, data dir $D_DATA)"
    fi
    log "durable PostgreSQL (pid $(durable_postmaster_pid)) on 127.0.0.1:$port, data $D_DATA, log $D_LOG"
    if ((first)); then
        recreate_db "$port" || { print_log_tail "$D_LOG"; die "creating role $DB_ROLE / database $DB_NAME failed"; }
    fi
    answers "$port" || { print_log_tail "$D_LOG"; die "psql $(url "$port") -c 'select 1' failed"; }
    echo "export PERSISTENCE_POSTGRES_URL=$(url "$port")" >"$D_DIR/env"
    cat "$D_DIR/env"
}

cmd_kill() {
    durable_paths "${1:-}"
    local pid
    pid=$(durable_postmaster_pid) || die "no postmaster.pid in $D_DATA"
    kill -0 "$pid" 2>/dev/null || { log "postmaster $pid is not running"; return 0; }
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -F -- "$D_DATA" >/dev/null ||
        die "pid $pid is not the postmaster of $D_DATA: not killing it"
    { pgrep -P "$pid" || true; } | tr '\n' ' ' >"$D_DIR/orphans"
    kill -KILL "$pid"
    WAIT_PID='' wait_until 10 eval "! kill -0 $pid 2>/dev/null" || true
    log "SIGKILLed postmaster $pid"
}

cmd_durable_stop() {
    durable_paths "${1:-}"
    if [[ -f $D_DATA/PG_VERSION ]] && as_pg "$BIN/pg_ctl" status -D "$D_DATA" >/dev/null 2>&1; then
        as_pg "$BIN/pg_ctl" stop -D "$D_DATA" -m fast -w -t 60 -s >>"$D_LOG" 2>&1 ||
            as_pg "$BIN/pg_ctl" stop -D "$D_DATA" -m immediate -w -t 30 -s >>"$D_LOG" 2>&1 ||
            die "pg_ctl stop failed (data dir $D_DATA)"
        log "durable instance stopped"
    fi
    rm -f "$D_DIR/env"
}

case "${1:-}" in
install) cmd_install ;;
durable-start) cmd_durable_start "${2:-}" ;;
kill) cmd_kill "${2:-}" ;;
durable-stop) cmd_durable_stop "${2:-}" ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
reset) cmd_reset ;;
*) echo "usage: $0 install|start|stop|status|reset | durable-start|kill|durable-stop DIR" >&2; exit 2 ;;
esac
