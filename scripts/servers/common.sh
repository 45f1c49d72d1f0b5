# shellcheck shell=bash
# Shared helpers for scripts/servers/<name>.sh. Source it; it defines functions only
# (plus SERVERS_REPO_ROOT) and never changes shell options of the caller.
# Callers set SERVER_NAME (used as the log prefix) before calling log/die.

# Absolute path of the repository root (two levels above this file).
# shellcheck disable=SC2034 # used by the scripts that source this file
SERVERS_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# log MSG...: print "[servers/<SERVER_NAME>] MSG" to stderr.
log() { printf '[servers/%s] %s\n' "${SERVER_NAME:-?}" "$*" >&2; }

# die MSG...: log MSG as an error and exit 1.
die() { log "ERROR: $*"; exit 1; }

# require_cmd CMD HINT: die with "CMD not found (HINT)" unless CMD is on PATH.
require_cmd() { command -v "$1" >/dev/null 2>&1 || die "$1 not found${2:+ ($2)}"; }

# port_open PORT [HOST]: succeed if something accepts TCP connections on HOST (default 127.0.0.1):PORT.
port_open() {
    local port=$1 host=${2:-127.0.0.1}
    # shellcheck disable=SC2016 # $0/$1 expand in the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

# free_port: print a TCP port that is currently free on 127.0.0.1 (asks the kernel via python3,
# else probes random ports 20000-59999 with bash). Another process may still take it before use.
free_port() {
    local p
    if command -v python3 >/dev/null 2>&1 &&
        p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null) &&
        [[ $p =~ ^[0-9]+$ ]]; then
        echo "$p"; return 0
    fi
    for _ in $(seq 1 200); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        port_open "$p" || { echo "$p"; return 0; }
    done
    return 1
}

# wait_until SECONDS CMD [ARGS...]: run CMD every 0.5 s until it succeeds (return 0) or SECONDS
# have passed (return 1). If WAIT_PID is set and that process dies, give up early (return 2).
wait_until() {
    local deadline=$((SECONDS + $1)); shift
    while :; do
        "$@" && return 0
        if [[ -n ${WAIT_PID:-} ]] && ! kill -0 "$WAIT_PID" 2>/dev/null; then return 2; fi
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# wait_for_port PORT SECONDS [HOST]: wait until HOST:PORT accepts connections (see wait_until).
wait_for_port() { wait_until "$2" port_open "$1" "${3:-127.0.0.1}"; }

# read_pid PIDFILE: print the pid stored in PIDFILE; fail if missing or not a number.
read_pid() {
    local pid
    [[ -f $1 ]] && pid=$(head -n1 "$1" 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] && echo "$pid"
}

# pid_alive PIDFILE [PATTERN]: succeed if PIDFILE's process runs (and, if given, its command
# line contains PATTERN, which guards against a recycled pid).
pid_alive() {
    local pid
    pid=$(read_pid "$1") || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ -z ${2:-} ]] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F -- "$2" >/dev/null
}

# stop_pidfile PIDFILE [SECONDS] [PATTERN]: send TERM to PIDFILE's process (if alive and matching
# PATTERN), wait up to SECONDS (default 30) for it to exit, then KILL it; remove PIDFILE.
stop_pidfile() {
    local pidfile=$1 secs=${2:-30} pid
    if pid_alive "$pidfile" "${3:-}"; then
        pid=$(read_pid "$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
        if ! WAIT_PID='' wait_until "$secs" eval "! kill -0 $pid 2>/dev/null"; then
            log "pid $pid did not exit after ${secs}s; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            WAIT_PID='' wait_until 10 eval "! kill -0 $pid 2>/dev/null" || true
        fi
    fi
    rm -f "$pidfile"
}

# print_log_tail FILE [LINES]: copy the last LINES (default 40) lines of FILE to stderr.
print_log_tail() {
    [[ -f $1 ]] || { log "(no log at $1)"; return 0; }
    log "last ${2:-40} lines of $1:"
    tail -n "${2:-40}" "$1" >&2
}

# lock_dir DIR: take an exclusive lock on DIR/.lock for the rest of the calling process
# (fd 9; waits up to 300 s) so concurrent start/stop calls do not race. Needs flock (util-linux).
# Long-lived children (the servers) must be started with 9>&- or they keep holding the lock.
lock_dir() {
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$1/.lock"
    flock -w 300 9 || die "could not lock $1/.lock within 300 s"
}
