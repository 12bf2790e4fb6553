# Shared helpers for tidepool's shell scripts. Source it; do not execute it.
# shellcheck shell=bash

# The user that runs PostgreSQL servers when a script is invoked as root
# (the server refuses to run as root).
TIDEPOOL_PG_USER="${TIDEPOOL_PG_USER:-tidepool-pg}"

# Repository root: the parent of scripts/.
tp_repo_root() {
    (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
}

tp_prog="$(basename "$0")"

# Chatter goes to stderr so that stdout stays machine-readable.
tp_log() { printf '%s: %s\n' "$tp_prog" "$*" >&2; }
tp_warn() { printf '%s: warning: %s\n' "$tp_prog" "$*" >&2; }
tp_die() { printf '%s: error: %s\n' "$tp_prog" "$*" >&2; exit 1; }

tp_is_root() { [ "$(id -u)" -eq 0 ]; }

# Run a command with root privileges: directly when root, else through sudo.
tp_as_root() {
    if tp_is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        tp_die "need root privileges for: $* (run as root or install sudo)"
    fi
}

# Create the unprivileged system user that runs PostgreSQL servers.
# Only meaningful when running as root; prints whether it did something.
tp_ensure_pg_user() {
    if id -u "$TIDEPOOL_PG_USER" >/dev/null 2>&1; then
        return 0
    fi
    local nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/bin/false
    tp_as_root useradd --system --user-group --no-create-home \
        --home-dir /nonexistent --shell "$nologin" \
        --comment "tidepool test PostgreSQL servers" "$TIDEPOOL_PG_USER"
    tp_log "created system user $TIDEPOOL_PG_USER"
}

# Directory of the PostgreSQL server binaries. Honors PG_BIN, then
# PG_VERSION, then picks the newest installed major version (default 15).
tp_pg_bindir() {
    if [ -n "${PG_BIN:-}" ]; then
        [ -x "$PG_BIN/pg_ctl" ] || tp_die "PG_BIN=$PG_BIN has no pg_ctl"
        printf '%s\n' "$PG_BIN"
        return
    fi
    local v="${PG_VERSION:-}"
    if [ -z "$v" ]; then
        if [ -x /usr/lib/postgresql/15/bin/pg_ctl ]; then
            v=15
        else
            v="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null \
                | sort -n | tail -n 1)"
        fi
    fi
    [ -n "$v" ] && [ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ] \
        || tp_die "no PostgreSQL server binaries in /usr/lib/postgresql/${v:-<ver>}/bin (run scripts/setup)"
    printf '%s\n' "/usr/lib/postgresql/$v/bin"
}

# True when something accepts TCP connections on host:port.
tp_tcp_open() {
    local host="$1" port="$2"
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# Poll until host:port accepts TCP connections or the timeout (seconds,
# may be fractional) expires. Optional third argument: a pid that must stay
# alive while waiting. Returns 0 on success, 1 on timeout, 2 if the pid died.
tp_wait_tcp() {
    local host="$1" port="$2" timeout="$3" pid="${4:-}"
    local deadline
    deadline=$(( $(date +%s%N) + ${timeout%.*} * 1000000000 ))
    while :; do
        if tp_tcp_open "$host" "$port"; then
            return 0
        fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            return 2
        fi
        if [ "$(date +%s%N)" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.05
    done
}

# Path to the cargo binary, or nothing.
tp_find_cargo() {
    if command -v cargo >/dev/null 2>&1; then
        command -v cargo
    elif [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
        printf '%s\n' "${CARGO_HOME:-$HOME/.cargo}/bin/cargo"
    fi
}
