#!/usr/bin/env bash
# Installs, starts and stops a real single-node Apache Cassandra 5.0 for the project's tests.
#
#   scripts/servers/cassandra.sh install   fetch cassandra-all and its runtime jars from Maven Central (once)
#   scripts/servers/cassandra.sh start     install, wipe the data, start on free 127.0.0.1 ports, wait until CQL answers,
#                                          write .servers/cassandra/env and print it
#   scripts/servers/cassandra.sh stop      stop the node this script started (TERM, KILL after 30 s)
#   scripts/servers/cassandra.sh status    exit 0 and print the env when the node runs and answers, else exit 1
#
# Durable mode (crash tests; a SEPARATE node, never the test node above; DIR absolute or relative):
#   scripts/servers/cassandra.sh durable-start DIR   start (or restart on the same data, never wiped) a node with its
#                                                    state in DIR/cassandra, commitlog_sync: batch (each write is
#                                                    fsynced to the commit log before it is acknowledged) and
#                                                    WITHOUT -Dcassandra.unsafesystem=true; writes DIR/env
#   scripts/servers/cassandra.sh kill DIR            SIGKILL that node's java process, nothing else
#   scripts/servers/cassandra.sh durable-stop DIR    stop it (TERM, KILL after CASSANDRA_STOP_TIMEOUT)
#
# Secure mode (TLS + password authentication; a SEPARATE node with its state in .servers/cassandra-secure/, own ports):
#   scripts/servers/cassandra.sh secure-start    make the test certificates (scripts/servers/certs.sh -> .servers/tls/),
#                                                wipe and start a node with client_encryption_options enabled and not
#                                                optional (PEM keystore .servers/tls/server-key.pem: a certificate for
#                                                DNS:localhost only; client certificates not required),
#                                                PasswordAuthenticator + CassandraAuthorizer, create the role
#                                                `persistence` (LOGIN, a random password, ALL PERMISSIONS ON ALL
#                                                KEYSPACES; not a superuser) through scripts/servers/cassandra/cql.py,
#                                                write .servers/cassandra-secure/env and print it
#                                                CASSANDRA_TLS_OPTIONAL=1: `optional: true` instead, the same port
#                                                taking TLS and plaintext clients (for the TLS cost benchmark: the
#                                                same node, with and without TLS; the tests expect TLS only). A node
#                                                running in the other mode is restarted, one in the same mode kept
#   scripts/servers/cassandra.sh secure-stop     stop it
#   scripts/servers/cassandra.sh secure-status   exit 0 and print its env when it runs and answers, else exit 1
#
# Cluster mode (node-loss tests, backend-cassandra/tests/cluster.rs; THREE SEPARATE nodes, state in .servers/cassandra-cluster/):
#   scripts/servers/cassandra.sh cluster-start       a fresh three-node ring on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (Linux
#                                                    loopback answers the whole 127.0.0.0/8), each node with its own data
#                                                    folder node1..node3/, CQL on 9142 and storage on 7100 of its own address
#                                                    (fixed ports: the single node and the secure node use free ports the
#                                                    kernel picks from the ephemeral range, never these), node1 the seed,
#                                                    one fixed token each, auto_bootstrap off (a fresh ring), hints on,
#                                                    commitlog_sync: periodic (upstream default), WITHOUT unsafesystem (a
#                                                    killed node must come back with its host id, tokens and schema).
#                                                    Waits until every node answers CQL and sees the other two UP; writes
#                                                    .servers/cassandra-cluster/env and prints it. A cluster whose three
#                                                    nodes all run is kept; any other state is stopped and wiped first
#   scripts/servers/cassandra.sh cluster-kill N      SIGKILL node N (1..3) only
#   scripts/servers/cassandra.sh cluster-restart N.. start the given nodes again on their data (never wiped), together, and
#                                                    wait until each answers CQL and it and the other running nodes see
#                                                    each other UP (a node that already runs is left alone)
#   scripts/servers/cassandra.sh cluster-stop        stop the three nodes (TERM together, KILL after CASSANDRA_STOP_TIMEOUT)
#   scripts/servers/cassandra.sh cluster-status      exit 0 and print the env when all three nodes run and answer, else 1
# Cluster settings: CASSANDRA_CLUSTER_HEAP (-Xmx, default 512M), CASSANDRA_CLUSTER_HEAP_MIN (-Xms, default 256M),
# CASSANDRA_CLUSTER_NATIVE_PORT (9142), CASSANDRA_CLUSTER_STORAGE_PORT (7100), CASSANDRA_CLUSTER_RING_DELAY_MS (5000).
#
# After `cluster-start`:  source .servers/cassandra-cluster/env   # PERSISTENCE_CASSANDRA_CLUSTER_CONTACT_POINTS
#   (the three nodes, comma-separated), PERSISTENCE_CASSANDRA_CLUSTER_LOCAL_DATACENTER
#
# After `secure-start`:  source .servers/cassandra-secure/env   # PERSISTENCE_TEST_CASSANDRA_SECURE_CONTACT_POINT
#   (127.0.0.1:PORT: connect with tls_server_name = "localhost"), ..._USERNAME, ..._PASSWORD, ..._PASSWORD_FILE,
#   PERSISTENCE_TEST_TLS_DIR (ca.pem, other-ca.pem, expired.pem, ...)
#
# Needs Java 17 (or 11) and Maven (apt-get install -y openjdk-17-jdk-headless maven); no Docker, no cqlsh.
# State lives under <repo>/.servers/cassandra/ (gitignored): lib/ (jars), conf/, data/ (wiped at each start),
# logs/ (system.log, stdout.log; the previous run's in logs.prev/), tmp/ (java.io.tmpdir and JNA), cassandra.pid, env.
#
# After `start`:  source .servers/cassandra/env   # PERSISTENCE_CASSANDRA_CONTACT_POINTS, PERSISTENCE_CASSANDRA_LOCAL_DATACENTER
#
# Settings (environment): CASSANDRA_VERSION (default 5.0.9), CASSANDRA_HEAP (default 512M), CASSANDRA_START_TIMEOUT
# (seconds, default 180), CASSANDRA_STOP_TIMEOUT (seconds before SIGKILL, default 30), JAVA_HOME.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
SRC_DIR=$SCRIPT_DIR/cassandra

CASSANDRA_VERSION=${CASSANDRA_VERSION:-5.0.9}
CASSANDRA_HEAP=${CASSANDRA_HEAP:-512M}
START_TIMEOUT=${CASSANDRA_START_TIMEOUT:-180}
STOP_TIMEOUT=${CASSANDRA_STOP_TIMEOUT:-30}
# SimpleSnitch (set in cassandra.yaml.template) always names its data centre this way.
LOCAL_DC=datacenter1

STATE_DIR=$REPO_ROOT/.servers/cassandra
LIB_DIR=$STATE_DIR/lib
CONF_DIR=$STATE_DIR/conf
DATA_DIR=$STATE_DIR/data
LOG_DIR=$STATE_DIR/logs
TMP_DIR=$STATE_DIR/tmp
PID_FILE=$STATE_DIR/cassandra.pid
PORT_FILE=$STATE_DIR/native.port
ENV_FILE=$STATE_DIR/env
LOCK_FILE=$STATE_DIR/.lock
INSTALLED_MARKER=$LIB_DIR/.installed
# 1 for the durable node of `durable-start DIR` (set by durable_paths).
DURABLE=0
# 1 for the TLS + authentication node of `secure-start` (set by secure_paths).
SECURE=0
TLS_DIR=$REPO_ROOT/.servers/tls
# -Xms (empty: the same as -Xmx, CASSANDRA_HEAP); the cluster nodes start smaller than they may grow.
HEAP_MIN=""
# 1 for a node of the three-node cluster (set by cluster_paths), NODE its number, NODE_ADDR its address.
CLUSTER=0
NODE=0
NODE_ADDR=127.0.0.1
CLUSTER_DIR=$REPO_ROOT/.servers/cassandra-cluster
CLUSTER_NODES=(1 2 3)
CLUSTER_NATIVE_PORT=${CASSANDRA_CLUSTER_NATIVE_PORT:-9142}
CLUSTER_STORAGE_PORT=${CASSANDRA_CLUSTER_STORAGE_PORT:-7100}
CLUSTER_RING_DELAY_MS=${CASSANDRA_CLUSTER_RING_DELAY_MS:-5000}
CLUSTER_ENV_FILE=$CLUSTER_DIR/env

# Points the state (not the jars) at DIR/cassandra for the durable commands.
# Points every state path (not the jars) into STATE_DIR=$1: configuration, data, logs, pid,
# port, env file and lock; callers override what they keep elsewhere.
state_paths() {
    STATE_DIR=$1
    CONF_DIR=$STATE_DIR/conf
    DATA_DIR=$STATE_DIR/data
    LOG_DIR=$STATE_DIR/logs
    TMP_DIR=$STATE_DIR/tmp
    PID_FILE=$STATE_DIR/cassandra.pid
    PORT_FILE=$STATE_DIR/native.port
    ENV_FILE=$STATE_DIR/env
    LOCK_FILE=$STATE_DIR/.lock
}

durable_paths() {
    [[ -n "${1:-}" ]] || usage
    mkdir -p "$1/cassandra"
    local dir
    dir=$(cd "$1" && pwd)
    DURABLE=1
    D_DIR=$dir
    state_paths "$dir/cassandra"
    ENV_FILE=$dir/env
}

# Points the state (not the jars) at .servers/cassandra-secure for the secure commands.
secure_paths() {
    SECURE=1
    state_paths "$REPO_ROOT/.servers/cassandra-secure"
}

# Points the state (not the jars) at .servers/cassandra-cluster/nodeN for node N of the cluster.
cluster_paths() {
    [[ "${1:-}" =~ ^[123]$ ]] || die "a cluster node is 1, 2 or 3, not '${1:-}'"
    CLUSTER=1
    NODE=$1
    NODE_ADDR=127.0.0.$1
    state_paths "$CLUSTER_DIR/node$1"
    # One lock for the whole cluster (taken once per command, before the nodes' paths are set).
    LOCK_FILE=$CLUSTER_DIR/.lock
    CASSANDRA_HEAP=${CASSANDRA_CLUSTER_HEAP:-512M}
    HEAP_MIN=${CASSANDRA_CLUSTER_HEAP_MIN:-256M}
}

log() { echo "cassandra.sh: $*" >&2; }
die() { echo "cassandra.sh: error: $*" >&2; exit 1; }

usage() {
    echo "usage: $0 install|start|stop|status | secure-start|secure-stop|secure-status | durable-start|kill|durable-stop DIR" >&2
    echo "       $0 cluster-start|cluster-stop|cluster-status | cluster-kill N | cluster-restart N [N ...]   (N in 1..3)" >&2
    exit 2
}

# ---------------------------------------------------------------------------------------------------------------
# helpers

# Serialises start/stop/install of concurrent callers. fd 9 must be closed for the java child (see launch).
take_lock() {
    mkdir -p "$STATE_DIR"
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$LOCK_FILE"
    flock -w 600 9 || die "could not take the lock $LOCK_FILE within 600 s (another cassandra.sh still running?)"
}

java_bin() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        echo "$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then
        command -v java
    else
        die "java not found: install Java 17 (apt-get install -y openjdk-17-jdk-headless) or set JAVA_HOME"
    fi
}

# Accepts a TCP connection on ${2:-127.0.0.1}:$1 ?
port_answers() {
    local port=$1 host=${2:-127.0.0.1}
    # shellcheck disable=SC2016  # $1, $2 expand in the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$2/$1"' _ "$port" "$host" 2>/dev/null
}

# Prints two distinct free TCP ports on 127.0.0.1 ("STORAGE NATIVE").
free_ports() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - <<'PY'
import socket
socks = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
    else
        # Fallback without python3: random ports below the ephemeral range that nobody listens on.
        local a b
        while :; do
            a=$((20000 + RANDOM % 12000)); b=$((20000 + RANDOM % 12000))
            [[ $a != "$b" ]] || continue
            port_answers "$a" || port_answers "$b" || break
        done
        echo "$a $b"
    fi
}

# The pid from the pid file if that process is alive and is our CassandraDaemon, else nothing (exit 1).
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid: the process must be the daemon started with our data dir (the whole argument:
    # the state dir alone would also match the other nodes, whose paths start with it or contain the shared jars').
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    [[ "$cmdline" == *org.apache.cassandra.service.CassandraDaemon* \
        && "$cmdline" == *" -Dcassandra.storagedir=$DATA_DIR "* ]] || return 1
    echo "$pid"
}

# Running, and its native port accepts connections?
is_up() {
    running_pid >/dev/null || return 1
    [[ -f "$PORT_FILE" && -f "$ENV_FILE" ]] || return 1
    port_answers "$(cat "$PORT_FILE")"
}

print_env() { cat "$ENV_FILE"; }

# True unless this is the secure node and it runs in the other TLS mode than CASSANDRA_TLS_OPTIONAL asks for.
same_tls_mode() {
    [[ "$SECURE" == 1 ]] || return 0
    grep -q "^export PERSISTENCE_TEST_CASSANDRA_SECURE_TLS_OPTIONAL=${CASSANDRA_TLS_OPTIONAL:-0}\$" "$ENV_FILE"
}

show_logs() {
    local f
    for f in "$LOG_DIR/system.log" "$LOG_DIR/stdout.log"; do
        if [[ -s "$f" ]]; then
            echo "---- last 60 lines of $f ----" >&2
            tail -n 60 "$f" >&2
        fi
    done
}

# ---------------------------------------------------------------------------------------------------------------
# install

# The jars are shared by the test, secure and durable nodes: installs of concurrent callers (start and secure-start
# at once, as scripts/test.sh does) are serialised by their own lock (fd 8, closed again before java starts).
do_install() {
    mkdir -p "$REPO_ROOT/.servers"
    if command -v flock >/dev/null 2>&1; then
        exec 8>"$REPO_ROOT/.servers/cassandra-install.lock"
        flock -w 900 8 || die "could not take the install lock within 900 s"
    fi
    do_install_locked
    exec 8>&-
}

do_install_locked() {
    local want="cassandra-all $CASSANDRA_VERSION"
    if [[ -f "$INSTALLED_MARKER" && "$(cat "$INSTALLED_MARKER")" == "$want" ]] \
        && compgen -G "$LIB_DIR/cassandra-all-$CASSANDRA_VERSION.jar" >/dev/null; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven (apt-get install -y maven)"
    [[ -f "$SRC_DIR/pom.xml" ]] || die "missing $SRC_DIR/pom.xml"

    log "installing cassandra-all $CASSANDRA_VERSION and its runtime dependencies into $LIB_DIR (Maven Central) ..."
    local tmp_lib=$STATE_DIR/lib.partial mvn_out
    rm -rf "$tmp_lib"
    mkdir -p "$tmp_lib"
    mvn_out=$STATE_DIR/mvn-install.log
    if ! mvn -B -q -Dstyle.color=never -f "$SRC_DIR/pom.xml" \
            -Dcassandra.version="$CASSANDRA_VERSION" \
            dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp_lib" \
            >"$mvn_out" 2>&1; then
        tail -n 40 "$mvn_out" >&2
        rm -rf "$tmp_lib"
        die "mvn dependency:copy-dependencies failed for org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION (full output: $mvn_out)"
    fi
    compgen -G "$tmp_lib/cassandra-all-$CASSANDRA_VERSION.jar" >/dev/null \
        || die "mvn succeeded but $tmp_lib/cassandra-all-$CASSANDRA_VERSION.jar is missing"
    compgen -G "$tmp_lib/jamm-*.jar" >/dev/null || die "mvn succeeded but no jamm-*.jar (the required java agent) in $tmp_lib"
    echo "$want" >"$tmp_lib/.installed"
    rm -rf "$LIB_DIR"
    # The secure or a durable node may install first, before the test node's folder exists.
    mkdir -p "$(dirname "$LIB_DIR")"
    mv "$tmp_lib" "$LIB_DIR"
    log "installed $(find "$LIB_DIR" -name '*.jar' | wc -l) jars ($(du -sh "$LIB_DIR" | cut -f1))"
}

# ---------------------------------------------------------------------------------------------------------------
# start

jvm_args() {
    local java=$1 jamm modules
    jamm=$(compgen -G "$LIB_DIR/jamm-*.jar" | head -n 1)
    modules=$("$java" --list-modules 2>/dev/null || true)

    # Heap and GC (upstream jvm17-server.options, without AlwaysPreTouch and without GC logs).
    printf '%s\n' \
        "-Xms${HEAP_MIN:-$CASSANDRA_HEAP}" "-Xmx$CASSANDRA_HEAP" \
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m \
        -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70 \
        -XX:+ExitOnOutOfMemoryError \
        -ea -da:net.openhft... -XX:+UseThreadPriorities -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem \
        "-XX:ErrorFile=$LOG_DIR/hs_err_%p.log" \
        "-javaagent:$jamm"
    # JPMS: upstream conf/jvm17-server.options (Cassandra dies at start-up without them on Java 17).
    printf '%s\n' \
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
        --add-exports java.sql/java.sql=ALL-UNNAMED \
        --add-exports java.base/java.lang.ref=ALL-UNNAMED \
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \
        --add-opens java.base/java.lang.module=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED \
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
        --add-opens java.base/java.io=ALL-UNNAMED \
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED \
        --add-opens java.base/java.lang=ALL-UNNAMED \
        --add-opens java.base/java.util=ALL-UNNAMED \
        --add-opens java.base/java.nio=ALL-UNNAMED
    # Only a full JDK has these modules; a JRE would warn about unknown modules.
    if grep -q '^jdk.compiler@' <<<"$modules"; then
        printf '%s\n' \
            --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED \
            --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    fi
    if grep -q '^jdk.attach@' <<<"$modules"; then
        printf '%s\n' --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    fi
    # Fast start of the test node: system tables without fsync. Not for the durable node, nor for a cluster node: a
    # killed node must come back with its host id, tokens and schema (else it would try to join as a new node).
    if [[ "$DURABLE" != 1 && "$CLUSTER" != 1 ]]; then
        printf '%s\n' -Dcassandra.unsafesystem=true
    fi
    # A cluster node: a short ring delay (the pauses of joining and of schema waits), no wait for consistent range
    # movements (a fresh ring whose nodes start together).
    if [[ "$CLUSTER" == 1 ]]; then
        printf '%s\n' \
            "-Dcassandra.ring_delay_ms=$CLUSTER_RING_DELAY_MS" \
            -Dcassandra.consistent.rangemovement=false
    fi
    printf '%s\n' \
        -Djdk.attach.allowAttachSelf=true \
        -Dio.netty.tryReflectionSetAccessible=true \
        -Dio.netty.allocator.useCacheForAllThreads=true \
        -Dio.netty.allocator.maxOrder=11 \
        -Djava.net.preferIPv4Stack=true \
        "-Djava.io.tmpdir=$TMP_DIR" \
        "-Djna.tmpdir=$TMP_DIR" \
        -Dcassandra-foreground=yes \
        "-Dcassandra.config=file://$CONF_DIR/cassandra.yaml" \
        "-Dcassandra.storagedir=$DATA_DIR" \
        "-Dcassandra.logdir=$LOG_DIR" \
        "-Dcassandra.triggers_dir=$CONF_DIR/triggers" \
        "-Dlogback.configurationFile=file://$CONF_DIR/logback.xml" \
        -Dcassandra.skip_wait_for_gossip_to_settle=0 \
        -Dcassandra.shutdown_announce_in_ms=0 \
        -Dcassandra.superuser_setup_delay_ms=0 \
        -cp "$CONF_DIR:$LIB_DIR/*" \
        org.apache.cassandra.service.CassandraDaemon
}

# Starts java with jvm_args in the background for the paths set now; LAUNCHER is the pid of the launching subshell.
launch_daemon() {
    local java=$1
    local -a args prefix=()
    mapfile -t args < <(jvm_args "$java")
    # Cassandra always calls mlockall(MCL_CURRENT) at start-up. As root (CAP_IPC_LOCK) that succeeds and pins the whole
    # committed heap in RAM at once (measured RSS 1.44 GB right after start with a 1G heap, 0.45 GB without the lock). For tests, drop that one capability so the call fails
    # harmlessly ("Unable to lock JVM memory (ENOMEM)") and the JVM only uses the memory it touches.
    # CASSANDRA_LOCK_MEMORY=1 keeps upstream behaviour.
    if [[ "${CASSANDRA_LOCK_MEMORY:-0}" != 1 && $(id -u) == 0 ]] && command -v setpriv >/dev/null 2>&1 \
        && setpriv --bounding-set -ipc_lock --inh-caps -ipc_lock true 2>/dev/null; then
        prefix=(setpriv --bounding-set -ipc_lock --inh-caps -ipc_lock)
    fi
    # Own session (setsid) so a Ctrl-C in the caller's terminal does not reach it; every fd redirected or closed
    # (fd 9 holds the lock) so callers like $(cassandra.sh start) or CI pipes do not wait for the daemon.
    # The inner bash writes its own pid, then execs java: the pid file holds the java pid.
    (
        cd "$STATE_DIR"
        # shellcheck disable=SC2016  # $$, $0, $@ expand in the inner bash
        exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" "${prefix[@]}" "$java" "${args[@]}" \
            </dev/null >"$LOG_DIR/stdout.log" 2>&1 9>&-
    ) &
    LAUNCHER=$!
}

# Waits for `pid` (sent TERM) to exit; SIGKILLs it when it still runs after STOP_TIMEOUT.
wait_or_kill() {
    local pid="$1" waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= STOP_TIMEOUT * 10)); then
            log "pid $pid still alive after ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
            return 0
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

do_stop_locked() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$PID_FILE" "$ENV_FILE" "$PORT_FILE"
        return 0
    fi
    log "stopping Cassandra (pid $pid) ..."
    kill -TERM "$pid" 2>/dev/null || true
    wait_or_kill "$pid"
    rm -f "$PID_FILE" "$ENV_FILE" "$PORT_FILE"
    log "stopped"
}

do_start_locked() {
    do_install

    if is_up && same_tls_mode; then
        print_env
        return 0
    fi
    # A leftover process that does not answer (hung or half-started), or a secure node of the other TLS mode:
    # replace it.
    do_stop_locked

    local java
    java=$(java_bin)
    [[ -f "$SRC_DIR/cassandra.yaml.template" && -f "$SRC_DIR/logback.xml" ]] \
        || die "missing $SRC_DIR/cassandra.yaml.template or $SRC_DIR/logback.xml"

    if [[ "$DURABLE" == 1 ]]; then
        # Restart on the same data: keep data/ (and the ports, so the node's own address stays the same).
        rm -rf "$TMP_DIR" "$STATE_DIR/logs.prev"
        if [[ -d "$LOG_DIR" ]]; then mv "$LOG_DIR" "$STATE_DIR/logs.prev"; fi
    else
        rm -rf "$DATA_DIR" "$TMP_DIR" "$CONF_DIR" "$STATE_DIR/logs.prev"
        if [[ -d "$LOG_DIR" ]]; then mv "$LOG_DIR" "$STATE_DIR/logs.prev"; fi
    fi
    mkdir -p "$DATA_DIR" "$TMP_DIR" "$CONF_DIR/triggers" "$LOG_DIR"

    local ports storage_port native_port
    if [[ "$DURABLE" == 1 && -s "$STATE_DIR/ports" ]]; then
        ports=$(cat "$STATE_DIR/ports")
    else
        ports=$(free_ports) || die "could not find free ports on 127.0.0.1"
    fi
    read -r storage_port native_port <<<"$ports"
    if [[ "$DURABLE" == 1 ]]; then echo "$storage_port $native_port" >"$STATE_DIR/ports"; fi
    [[ "$storage_port" =~ ^[0-9]+$ && "$native_port" =~ ^[0-9]+$ ]] || die "bad free ports: '$ports'"

    sed -e "s|@STATE_DIR@|$STATE_DIR|g" \
        -e "s|@STORAGE_PORT@|$storage_port|g" \
        -e "s|@NATIVE_PORT@|$native_port|g" \
        "$SRC_DIR/cassandra.yaml.template" >"$CONF_DIR/cassandra.yaml"
    if [[ "$DURABLE" == 1 ]]; then
        # batch: a write is acknowledged only after the commit log is fsynced (no sync period allowed with it).
        sed -i -e 's|^commitlog_sync: periodic$|commitlog_sync: batch|' -e '/^commitlog_sync_period:/d' \
            "$CONF_DIR/cassandra.yaml"
        grep -q '^commitlog_sync: batch$' "$CONF_DIR/cassandra.yaml" || die "could not set commitlog_sync: batch"
    fi
    if [[ "$SECURE" == 1 ]]; then
        command -v python3 >/dev/null 2>&1 \
            || die "python3 not found (apt-get install -y python3): secure-start creates its role with $SRC_DIR/cql.py"
        bash "$SCRIPT_DIR/certs.sh" "$TLS_DIR" >/dev/null
        sed -i -e 's|^authenticator: AllowAllAuthenticator$|authenticator: PasswordAuthenticator|' \
            -e 's|^authorizer: AllowAllAuthorizer$|authorizer: CassandraAuthorizer|' "$CONF_DIR/cassandra.yaml"
        grep -q '^authenticator: PasswordAuthenticator$' "$CONF_DIR/cassandra.yaml" || die "could not set PasswordAuthenticator"
        # TLS only (optional: false: a plaintext client is refused), a PEM keystore (key, then certificate);
        # client certificates are not required, so no truststore.
        local tls_optional=false
        if [[ "${CASSANDRA_TLS_OPTIONAL:-0}" == 1 ]]; then tls_optional=true; fi
        cat >>"$CONF_DIR/cassandra.yaml" <<EOF

# secure-start: TLS only, password authentication.
client_encryption_options:
  enabled: true
  optional: $tls_optional
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  keystore: $TLS_DIR/server-key.pem
  require_client_auth: false
EOF
        # A fresh password per start (the data dir, and with it the role, is wiped at each start).
        (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(18))' >"$STATE_DIR/password")
        (umask 077 && printf 'cassandra\n' >"$STATE_DIR/superuser.password")
    fi
    cp "$SRC_DIR/logback.xml" "$CONF_DIR/logback.xml"
    echo "$native_port" >"$PORT_FILE"

    log "starting Cassandra $CASSANDRA_VERSION (heap $CASSANDRA_HEAP, CQL 127.0.0.1:$native_port, storage $storage_port; logs in $LOG_DIR) ..."
    launch_daemon "$java"
    local launcher=$LAUNCHER

    local deadline=$((SECONDS + START_TIMEOUT)) pid=""
    while :; do
        if [[ -z "$pid" && -s "$PID_FILE" ]]; then
            pid=$(cat "$PID_FILE")
        fi
        if [[ -z "$pid" ]] && ! kill -0 "$launcher" 2>/dev/null && [[ ! -s "$PID_FILE" ]]; then
            show_logs
            rm -f "$PID_FILE" "$PORT_FILE"
            die "could not launch java (see $LOG_DIR/stdout.log)"
        fi
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            show_logs
            rm -f "$PID_FILE" "$PORT_FILE"
            die "Cassandra exited during start-up (see $LOG_DIR)"
        fi
        if [[ -n "$pid" ]] && grep -q 'Starting listening for CQL clients' "$LOG_DIR/system.log" 2>/dev/null \
            && port_answers "$native_port"; then
            break
        fi
        if ((SECONDS >= deadline)); then
            show_logs
            do_stop_locked
            die "Cassandra did not answer CQL on 127.0.0.1:$native_port within ${START_TIMEOUT}s (see $LOG_DIR)"
        fi
        sleep 0.5
    done

    if [[ "$SECURE" == 1 ]]; then
        # The default superuser cassandra/cassandra appears a moment after the node listens (superuser_setup_delay_ms=0);
        # it creates the test role, which is not a superuser.
        local password
        password=$(cat "$STATE_DIR/password")
        if ! python3 "$SRC_DIR/cql.py" 127.0.0.1 "$native_port" "$TLS_DIR/ca.pem" localhost cassandra \
                "$STATE_DIR/superuser.password" "$START_TIMEOUT" \
                "CREATE ROLE IF NOT EXISTS persistence WITH PASSWORD = '$password' AND LOGIN = true AND SUPERUSER = false" \
                "GRANT ALL PERMISSIONS ON ALL KEYSPACES TO persistence"; then
            show_logs
            do_stop_locked
            die "could not create the role persistence on the secure node"
        fi
        cat >"$ENV_FILE.tmp" <<EOF
export PERSISTENCE_TEST_CASSANDRA_SECURE_CONTACT_POINT=127.0.0.1:$native_port
export PERSISTENCE_TEST_CASSANDRA_SECURE_SERVER_NAME=localhost
export PERSISTENCE_TEST_CASSANDRA_SECURE_USERNAME=persistence
export PERSISTENCE_TEST_CASSANDRA_SECURE_PASSWORD=$password
export PERSISTENCE_TEST_CASSANDRA_SECURE_PASSWORD_FILE=$STATE_DIR/password
export PERSISTENCE_TEST_TLS_DIR=$TLS_DIR
export PERSISTENCE_TEST_CASSANDRA_SECURE_TLS_OPTIONAL=${CASSANDRA_TLS_OPTIONAL:-0}
EOF
    else
        cat >"$ENV_FILE.tmp" <<EOF
export PERSISTENCE_CASSANDRA_CONTACT_POINTS=127.0.0.1:$native_port
export PERSISTENCE_CASSANDRA_LOCAL_DATACENTER=$LOCAL_DC
EOF
    fi
    mv "$ENV_FILE.tmp" "$ENV_FILE"
    log "Cassandra is up (pid $pid)"
    print_env
}

# ---------------------------------------------------------------------------------------------------------------
# the three-node cluster

# The token of node N: the ring split in three equal ranges (Murmur3), so no token allocation work at start.
cluster_token() {
    case $1 in
        1) echo -9223372036854775808 ;;
        2) echo -3074457345618258603 ;;
        3) echo 3074457345618258602 ;;
    esac
}

# cassandra.yaml of node $NODE: the test template with the node's address, the cluster's ports and seed (node1), hints
# on, its own token and no bootstrap (every node of a fresh ring starts empty; a restarted node has its data).
cluster_write_conf() {
    local yaml=$CONF_DIR/cassandra.yaml
    sed -e "s|@STATE_DIR@|$STATE_DIR|g" \
        -e "s|@STORAGE_PORT@|$CLUSTER_STORAGE_PORT|g" \
        -e "s|@NATIVE_PORT@|$CLUSTER_NATIVE_PORT|g" \
        -e "s|^cluster_name: .*|cluster_name: 'persistence-cluster'|" \
        -e "s|^listen_address: 127.0.0.1\$|listen_address: $NODE_ADDR|" \
        -e "s|^rpc_address: 127.0.0.1\$|rpc_address: $NODE_ADDR|" \
        -e "s|^hinted_handoff_enabled: false\$|hinted_handoff_enabled: true|" \
        "$SRC_DIR/cassandra.yaml.template" >"$yaml"
    cat >>"$yaml" <<YAML

# cluster-start: node $NODE of three (node1 is the seed).
initial_token: $(cluster_token "$NODE")
auto_bootstrap: false
# Server-side timeouts, longer than upstream's (write 2 s, read 5 s, cas contention 1.8 s): three nodes share two
# cores with everything else here, and a starved replica must not turn into a Timeout. Lightweight transactions racing
# on one partition (the kit's racing writers, four at once) retry their Paxos rounds until cas_contention_timeout.
write_request_timeout: ${CASSANDRA_CLUSTER_WRITE_TIMEOUT:-5000ms}
read_request_timeout: ${CASSANDRA_CLUSTER_READ_TIMEOUT:-10000ms}
range_request_timeout: ${CASSANDRA_CLUSTER_READ_TIMEOUT:-10000ms}
cas_contention_timeout: ${CASSANDRA_CLUSTER_CAS_CONTENTION_TIMEOUT:-5000ms}
# Paxos: upstream's default (v1). v2 was tried here and was worse: serial reads timing out (ReadTimeout at ONE, no
# response) and the kit's racing writers running past the case timeout.
paxos_variant: ${CASSANDRA_CLUSTER_PAXOS_VARIANT:-v1}
YAML
    grep -q "^listen_address: $NODE_ADDR\$" "$yaml" && grep -q "^rpc_address: $NODE_ADDR\$" "$yaml" \
        && grep -q "seeds: \"127.0.0.1:$CLUSTER_STORAGE_PORT\"" "$yaml" \
        && grep -q '^hinted_handoff_enabled: true$' "$yaml" \
        && grep -q "^cluster_name: 'persistence-cluster'\$" "$yaml" \
        || die "could not write the cluster configuration $yaml (has cassandra.yaml.template changed?)"
}

# Launches node $1 (not waiting for it): `fresh` wipes its data, `restart` keeps it. A running node is left alone.
cluster_launch() {
    local mode=$2 java
    cluster_paths "$1"
    if running_pid >/dev/null; then
        log "node $NODE ($NODE_ADDR) already runs"
        return 0
    fi
    java=$(java_bin)
    [[ -f "$SRC_DIR/cassandra.yaml.template" && -f "$SRC_DIR/logback.xml" ]] \
        || die "missing $SRC_DIR/cassandra.yaml.template or $SRC_DIR/logback.xml"
    if port_answers "$CLUSTER_NATIVE_PORT" "$NODE_ADDR"; then
        die "$NODE_ADDR:$CLUSTER_NATIVE_PORT is taken by another process (set CASSANDRA_CLUSTER_NATIVE_PORT)"
    fi
    if [[ "$mode" == fresh ]]; then
        rm -rf "$DATA_DIR" "$TMP_DIR" "$CONF_DIR" "$STATE_DIR/logs.prev"
    else
        [[ -d "$DATA_DIR/data" ]] || die "node $NODE has no data in $DATA_DIR: run cluster-start first"
        rm -rf "$TMP_DIR" "$STATE_DIR/logs.prev"
    fi
    if [[ -d "$LOG_DIR" ]]; then mv "$LOG_DIR" "$STATE_DIR/logs.prev"; fi
    mkdir -p "$DATA_DIR" "$TMP_DIR" "$CONF_DIR/triggers" "$LOG_DIR"
    cluster_write_conf
    cp "$SRC_DIR/logback.xml" "$CONF_DIR/logback.xml"
    echo "$CLUSTER_NATIVE_PORT" >"$PORT_FILE"
    rm -f "$PID_FILE"
    log "starting node $NODE ($mode; heap $HEAP_MIN..$CASSANDRA_HEAP, CQL $NODE_ADDR:$CLUSTER_NATIVE_PORT, storage $CLUSTER_STORAGE_PORT; logs in $LOG_DIR) ..."
    launch_daemon "$java"
    local waited=0
    until [[ -s "$PID_FILE" ]]; do
        if ! kill -0 "$LAUNCHER" 2>/dev/null && [[ ! -s "$PID_FILE" ]]; then
            show_logs
            die "could not launch java for node $NODE (see $LOG_DIR/stdout.log)"
        fi
        ((waited < 100)) || die "node $NODE: no pid file after 10 s"
        sleep 0.1
        waited=$((waited + 1))
    done
}

# Node $1 answers CQL (exit 0), not yet (exit 1); dies with its log if it exited.
cluster_node_ready() {
    cluster_paths "$1"
    if ! running_pid >/dev/null; then
        show_logs
        die "node $NODE exited during start-up (see $LOG_DIR)"
    fi
    grep -q 'Starting listening for CQL clients' "$LOG_DIR/system.log" 2>/dev/null \
        && port_answers "$CLUSTER_NATIVE_PORT" "$NODE_ADDR"
}

# The size of node $1's system.log now (0 if none): where `sees_up` starts reading.
log_offset() {
    stat -c %s "$CLUSTER_DIR/node$1/logs/system.log" 2>/dev/null || echo 0
}

# Node $1's log, after byte $3, says last of node $2 that it is UP (gossip: "InetAddress /127.0.0.2:7100 is now UP").
sees_up() {
    local f=$CLUSTER_DIR/node$1/logs/system.log
    [[ -f "$f" ]] || return 1
    tail -c "+$(($3 + 1))" "$f" | grep -E "InetAddress /127\.0\.0\.$2:$CLUSTER_STORAGE_PORT is now (UP|DOWN)" \
        | tail -n 1 | grep -q 'is now UP'
}

# Starts the nodes $2.. ($1: fresh|restart) together and waits until each answers CQL and it and every other running
# node see each other UP.
cluster_start_nodes() {
    local mode=$1 n m
    shift
    local -a nodes=("$@") others=()
    local -A offset=()
    do_install
    # Where the other running nodes' logs stand before the start: only UP lines after it count.
    for m in "${CLUSTER_NODES[@]}"; do
        cluster_paths "$m"
        if [[ " ${nodes[*]} " != *" $m "* ]] && running_pid >/dev/null; then
            others+=("$m")
            offset[$m]=$(log_offset "$m")
        fi
    done
    local started=$SECONDS
    for n in "${nodes[@]}"; do
        cluster_launch "$n" "$mode"
        offset[$n]=0
    done
    local deadline=$((SECONDS + START_TIMEOUT)) pending
    while :; do
        pending=""
        for n in "${nodes[@]}"; do
            cluster_node_ready "$n" || pending+=" node$n(CQL)"
        done
        if [[ -z "$pending" ]]; then
            for n in "${nodes[@]}"; do
                for m in "${nodes[@]}" "${others[@]}"; do
                    [[ "$n" != "$m" ]] || continue
                    sees_up "$n" "$m" "${offset[$n]}" || pending+=" node$n->node$m"
                    sees_up "$m" "$n" "${offset[$m]}" || pending+=" node$m->node$n"
                done
            done
        fi
        [[ -n "$pending" ]] || break
        if ((SECONDS >= deadline)); then
            for n in "${nodes[@]}"; do
                cluster_paths "$n"
                show_logs
            done
            die "the cluster did not come up within ${START_TIMEOUT}s; waiting for:$pending"
        fi
        sleep 0.5
    done
    log "node(s) ${nodes[*]} up and in the ring after $((SECONDS - started)) s"
}

cluster_write_env() {
    local points=() n
    for n in "${CLUSTER_NODES[@]}"; do points+=("127.0.0.$n:$CLUSTER_NATIVE_PORT"); done
    cat >"$CLUSTER_ENV_FILE.tmp" <<ENV
export PERSISTENCE_CASSANDRA_CLUSTER_CONTACT_POINTS=$(IFS=,; echo "${points[*]}")
export PERSISTENCE_CASSANDRA_CLUSTER_LOCAL_DATACENTER=$LOCAL_DC
ENV
    mv "$CLUSTER_ENV_FILE.tmp" "$CLUSTER_ENV_FILE"
}

# All three nodes run and answer CQL (and the env file is there)?
cluster_is_up() {
    local n
    for n in "${CLUSTER_NODES[@]}"; do
        cluster_paths "$n"
        running_pid >/dev/null || return 1
        port_answers "$CLUSTER_NATIVE_PORT" "$NODE_ADDR" || return 1
    done
    [[ -f "$CLUSTER_ENV_FILE" ]]
}

# Stops every running node: TERM to all, then wait; KILL what still runs after CASSANDRA_STOP_TIMEOUT.
cluster_stop() {
    local n pid
    local -a pids=()
    for n in "${CLUSTER_NODES[@]}"; do
        cluster_paths "$n"
        if pid=$(running_pid); then
            log "stopping node $n (pid $pid) ..."
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    for pid in "${pids[@]}"; do
        wait_or_kill "$pid"
    done
    for n in "${CLUSTER_NODES[@]}"; do
        cluster_paths "$n"
        rm -f "$PID_FILE" "$PORT_FILE"
    done
    rm -f "$CLUSTER_ENV_FILE"
    ((${#pids[@]} == 0)) || log "cluster stopped"
}

# The cluster-* commands ($1) with their arguments.
cluster_command() {
    local cmd=$1 n
    shift
    mkdir -p "$CLUSTER_DIR"
    cluster_paths 1
    case "$cmd" in
        cluster-start)
            [[ $# -eq 0 ]] || usage
            take_lock
            if cluster_is_up; then
                cat "$CLUSTER_ENV_FILE"
                return 0
            fi
            cluster_stop
            local t0=$SECONDS
            cluster_start_nodes fresh "${CLUSTER_NODES[@]}"
            cluster_write_env
            log "the three-node cluster is up ($((SECONDS - t0)) s)"
            cat "$CLUSTER_ENV_FILE"
            ;;
        cluster-restart)
            [[ $# -ge 1 ]] || usage
            # Each argument a node number (cluster_paths dies otherwise).
            for n in "$@"; do cluster_paths "$n"; done
            cluster_paths 1
            take_lock
            cluster_start_nodes restart "$@"
            ;;
        cluster-kill)
            [[ $# -eq 1 ]] || usage
            cluster_paths "$1"
            local pid
            if ! pid=$(running_pid); then
                log "node $NODE does not run"
                return 0
            fi
            kill -KILL "$pid"
            while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
            log "SIGKILLed node $NODE (pid $pid)"
            ;;
        cluster-stop)
            [[ $# -eq 0 ]] || usage
            take_lock
            cluster_stop
            ;;
        cluster-status)
            [[ $# -eq 0 ]] || usage
            if cluster_is_up; then
                cat "$CLUSTER_ENV_FILE"
            else
                echo "cassandra.sh: the Cassandra cluster is not (entirely) running" >&2
                return 1
            fi
            ;;
        *) usage ;;
    esac
}

# ---------------------------------------------------------------------------------------------------------------

do_kill_locked() {
    local pid
    if ! pid=$(running_pid); then
        log "no durable Cassandra runs for $STATE_DIR"
        return 0
    fi
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    log "SIGKILLed Cassandra $pid"
}

case "${1:-}" in
    cluster-*)
        cluster_command "$@"
        exit 0
        ;;
esac
if [[ $# -eq 2 ]]; then
    case "$1" in
        durable-start) durable_paths "$2"; take_lock; do_start_locked ;;
        kill) durable_paths "$2"; do_kill_locked ;;
        durable-stop) durable_paths "$2"; take_lock; do_stop_locked; rm -f "$ENV_FILE" ;;
        *) usage ;;
    esac
    exit 0
fi
[[ $# -eq 1 ]] || usage
case "$1" in
    install)
        take_lock
        do_install
        ;;
    start)
        take_lock
        do_start_locked
        ;;
    stop)
        take_lock
        do_stop_locked
        ;;
    secure-start)
        secure_paths
        take_lock
        do_start_locked
        ;;
    secure-stop)
        secure_paths
        take_lock
        do_stop_locked
        ;;
    secure-status)
        secure_paths
        if is_up; then
            print_env
        else
            echo "cassandra.sh: the secure Cassandra is not running" >&2
            exit 1
        fi
        ;;
    durable-start | kill | durable-stop)
        usage
        ;;
    status)
        if is_up; then
            print_env
        else
            echo "cassandra.sh: Cassandra is not running" >&2
            exit 1
        fi
        ;;
    *)
        usage
        ;;
esac
