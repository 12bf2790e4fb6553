# Helpers shared by scripts/bench and scripts/bench-failover-pgpool: the
# peers (PgBouncer, Pgpool-II) installed from Debian, configured on ports of
# our own, run as the unprivileged server user, and stopped again.
# Source it after scripts/lib/common.sh; do not execute it.
# shellcheck shell=bash

BENCH_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Every process started through bench_spawn, for bench_stop_all, and the
# signal that stops each one quickly (default TERM).
BENCH_PIDS=()
declare -A BENCH_STOP_SIGNAL=()

bench_tool() { python3 "$BENCH_LIB/benchtool.py" "$@"; }

# Install the Debian packages named as arguments when missing, without
# starting their services (a policy-rc.d that says no, as scripts/setup
# does). Idempotent: does nothing when all are installed.
bench_install_packages() {
    local p status missing=()
    for p in "$@"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
        [ "$status" = installed ] || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    command -v apt-get >/dev/null 2>&1 || tp_die "apt-get not found: install ${missing[*]} by hand"
    tp_log "installing: ${missing[*]}"
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        tp_as_root sh -c "printf '#!/bin/sh\n# written by tidepool scripts/bench during package installation\nexit 101\n' > $policy && chmod 755 $policy"
        own_policy=1
    fi
    local rc=0
    tp_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
        || { tp_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 \
             && tp_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; } \
        || rc=$?
    [ "$own_policy" = 0 ] || tp_as_root rm -f "$policy"
    [ "$rc" = 0 ] || tp_die "could not install ${missing[*]}"
    # The packages' own services must not run (they would take the default
    # ports); the benchmark starts its own instances.
    local svc
    for svc in pgbouncer pgpool2; do
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
            tp_as_root systemctl stop "$svc" || true
        fi
    done
}

# The command prefix that runs a command as the server user when root
# (PgBouncer refuses root, and Pgpool-II should not run as root either):
# setpriv, not runuser: no PAM session, so the raised open-files limit
# survives, and it execs, so the pid we hold is the daemon's.
bench_as_pg_prefix() {
    if tp_is_root; then
        BENCH_AS_PG=(setpriv --reuid="$TIDEPOOL_PG_USER" --regid="$TIDEPOOL_PG_USER" --init-groups --)
    else
        BENCH_AS_PG=()
    fi
}
bench_as_pg() {
    bench_as_pg_prefix
    "${BENCH_AS_PG[@]}" "$@"
}

# A directory the server user owns (config, logs, sockets of a peer).
bench_pg_dir() {
    mkdir -p "$1"
    if tp_is_root; then
        chown "$TIDEPOOL_PG_USER:" "$1"
    fi
    chmod 700 "$1"
}

# Write stdin to FILE, readable by the server user only.
bench_pg_file() {
    cat > "$1"
    chmod 600 "$1"
    if tp_is_root; then
        chown "$TIDEPOOL_PG_USER:" "$1"
    fi
}

# bench_spawn LOG [--as-pg] CMD...: start the program CMD (not a shell
# function: the pid must be the program's) in the background, as the
# server user with --as-pg, stdout and stderr to LOG, with the open-files
# limit raised for thousands of clients; sets BENCH_LAST_PID.
bench_spawn() {
    local log="$1"
    shift
    local prefix=()
    if [ "${1:-}" = --as-pg ]; then
        shift
        bench_as_pg_prefix
        prefix=("${BENCH_AS_PG[@]}")
    fi
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    "${prefix[@]}" "$@" </dev/null >>"$log" 2>&1 &
    BENCH_LAST_PID=$!
    BENCH_PIDS+=("$BENCH_LAST_PID")
}

# bench_stop PID [SIGNAL]: stop one process we started and whatever it
# forked (Pgpool-II's children), bounded: SIGNAL (default TERM), then KILL
# after 10 s.
bench_stop() {
    local pid="$1" sig="${2:-TERM}" kids i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kids="$(bench_descendants "$pid")"
    kill -"$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for i in $kids; do
        [ "$i" = "$pid" ] && continue
        kill -KILL "$i" 2>/dev/null || true
    done
    local keep=() p
    for p in "${BENCH_PIDS[@]}"; do
        [ "$p" = "$pid" ] || keep+=("$p")
    done
    BENCH_PIDS=("${keep[@]}")
}

# Pids of a process and its descendants, one per line.
bench_descendants() {
    local todo=("$1") p c
    while [ ${#todo[@]} -gt 0 ]; do
        p="${todo[0]}"
        todo=("${todo[@]:1}")
        echo "$p"
        for c in $(cat "/proc/$p/task/"*/children 2>/dev/null || true); do
            todo+=("$c")
        done
    done
}

bench_stop_all() {
    local p
    for p in "${BENCH_PIDS[@]}"; do
        bench_stop "$p" "${BENCH_STOP_SIGNAL[$p]:-TERM}"
    done
}

# bench_wait_port PORT SECONDS PID NAME LOG: until PORT accepts connections.
bench_wait_port() {
    local rc=0
    tp_wait_tcp 127.0.0.1 "$1" "$2" "$3" || rc=$?
    if [ "$rc" != 0 ]; then
        tail -n 20 "$5" >&2 || true
        tp_die "$4 did not start listening on 127.0.0.1:$1 (log: $5)"
    fi
}

# bench_wait_sql PORT SECONDS NAME: until a query as app succeeds.
bench_wait_sql() {
    local port="$1" deadline=$(( SECONDS + $2 )) name="$3"
    until PGPASSWORD=app PGCONNECT_TIMEOUT=2 psql -X -q -A -t -h 127.0.0.1 -p "$port" -U app -d app \
            -c 'SELECT 1' >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || tp_die "$name on port $port does not answer queries"
        sleep 0.2
    done
}

# --- PgBouncer -----------------------------------------------------------------
# bench_pgbouncer_start DIR PORT PRIMARY_PORT MODE MAX_CLIENTS POOL_SIZE AUTH [TLS_DIR]
# Transaction (or session) pooling towards the primary, as PgBouncer's docs
# set it up: clients authenticate with AUTH (scram-sha-256, or trust for the
# memory test; trustuser always with trust, through auth_hba_file) against auth_file, which holds the plaintext password so that
# PgBouncer can log in to the server with SCRAM itself.
# With TLS_DIR (scripts/dev-cluster --tls: tidepool.crt/tidepool.key),
# TLS on both sides: client_tls_sslmode = require with that certificate
# (a copy the server user can read) and server_tls_sslmode = require.
bench_pgbouncer_start() {
    local dir="$1" port="$2" pg_port="$3" mode="$4" max_clients="$5" pool="$6" auth="$7" tls="${8:-}"
    bench_pg_dir "$dir"
    local tls_conf=""
    if [ -n "$tls" ]; then
        bench_pg_file "$dir/server.crt" < "$tls/tidepool.crt"
        bench_pg_file "$dir/server.key" < "$tls/tidepool.key"
        tls_conf="client_tls_sslmode = require
client_tls_cert_file = $dir/server.crt
client_tls_key_file = $dir/server.key
server_tls_sslmode = require"
    fi
    printf '"app" "app"\n"trustuser" ""\n' | bench_pg_file "$dir/userlist.txt"
    # trustuser logs in with trust (as on the servers), everyone else with AUTH.
    bench_pg_file "$dir/pgbouncer_hba.conf" <<EOF
host all trustuser 127.0.0.1/32 trust
host all all 127.0.0.1/32 $auth
EOF
    {
        cat <<EOF
; written by tidepool scripts/bench
[databases]
app = host=127.0.0.1 port=$pg_port dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
auth_type = hba
auth_hba_file = $dir/pgbouncer_hba.conf
auth_file = $dir/userlist.txt
pool_mode = $mode
max_client_conn = $max_clients
default_pool_size = $pool
max_db_connections = 0
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
EOF
        [ -z "$tls_conf" ] || printf '%s\n' "$tls_conf"
    } | bench_pg_file "$dir/pgbouncer.ini"
    : > "$dir/stderr.log"
    bench_spawn "$dir/stderr.log" --as-pg pgbouncer "$dir/pgbouncer.ini"
    BENCH_STOP_SIGNAL[$BENCH_LAST_PID]=TERM
    bench_wait_port "$port" 20 "$BENCH_LAST_PID" PgBouncer "$dir/pgbouncer.log"
}

# --- Pgpool-II -----------------------------------------------------------------
# bench_pgpool_start DIR PORT PCP_PORT CHILDREN NODE_SPECS [EXTRA_CONF_FILE]
# NODE_SPECS: "port:data_dir:name ..." (the first is the primary).
# Streaming-replication mode with load balancing, as Pgpool-II's docs set it
# up: one cached connection per child (max_pool = 1: one user and one
# database), num_init_children sized for the clients, health checks and the
# streaming-replication check as postgres (PGPOOL_HEALTH_CHECK="period
# timeout max_retries connect_timeout_ms", default the documentation's
# example "5 30 3 10000"), SCRAM for clients through
# pool_hba.conf and pool_passwd (plaintext entries, "TEXT" prefix).
# Started with -D so it forgets nodes an earlier run marked down.
bench_pgpool_start() {
    local dir="$1" port="$2" pcp_port="$3" children="$4" specs="$5" extra="${6:-}" auth="${PGPOOL_CLIENT_AUTH:-scram-sha-256}"
    local hc_period hc_timeout hc_retries hc_connect_ms
    read -r hc_period hc_timeout hc_retries hc_connect_ms <<< "${PGPOOL_HEALTH_CHECK:-5 30 3 10000}"
    bench_pg_dir "$dir"
    printf 'app:TEXTapp\npostgres:TEXTpostgres\n' | bench_pg_file "$dir/pool_passwd"
    bench_pg_file "$dir/pool_hba.conf" <<EOF
# TYPE  DATABASE  USER  CIDR-ADDRESS   METHOD
local   all       all                  trust
host    all       trustuser 127.0.0.1/32 trust
host    all       all   127.0.0.1/32   $auth
EOF
    : | bench_pg_file "$dir/pcp.conf"
    {
        cat <<EOF
# written by tidepool scripts/bench (Pgpool-II 4.3 ignores unknown keys:
# every name below is checked against its documentation)
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $port
socket_dir = '$dir'
pcp_listen_addresses = '127.0.0.1'
pcp_port = $pcp_port
pcp_socket_dir = '$dir'
wd_ipc_socket_dir = '$dir'
pid_file_name = '$dir/pgpool.pid'
logdir = '$dir'
log_destination = 'stderr'
log_min_messages = warning
log_connections = off
use_watchdog = off
enable_pool_hba = on
pool_passwd = 'pool_passwd'
num_init_children = $children
max_pool = 1
reserved_connections = 0
child_life_time = 300
connection_cache = on
load_balance_mode = on
statement_level_load_balance = off
sr_check_period = 10
sr_check_user = 'postgres'
sr_check_password = 'postgres'
sr_check_database = 'postgres'
health_check_period = $hc_period
health_check_timeout = $hc_timeout
health_check_user = 'postgres'
health_check_password = 'postgres'
health_check_database = 'postgres'
health_check_max_retries = $hc_retries
health_check_retry_delay = 1
connect_timeout = $hc_connect_ms
memory_cache_enabled = off
EOF
        local i=0 spec p d n
        for spec in $specs; do
            IFS=: read -r p d n <<< "$spec"
            cat <<EOF
backend_hostname$i = '127.0.0.1'
backend_port$i = $p
backend_weight$i = 1
backend_data_directory$i = '$d'
backend_flag$i = 'ALLOW_TO_FAILOVER'
backend_application_name$i = '$n'
EOF
            i=$(( i + 1 ))
        done
        [ -z "$extra" ] || cat "$extra"
    } | bench_pg_file "$dir/pgpool.conf"
    : > "$dir/pgpool.log"
    bench_spawn "$dir/pgpool.log" --as-pg pgpool -n -D -f "$dir/pgpool.conf" -F "$dir/pcp.conf" -a "$dir/pool_hba.conf"
    # SIGINT: fast shutdown (SIGTERM waits for every client to leave).
    BENCH_STOP_SIGNAL[$BENCH_LAST_PID]=INT
    bench_wait_port "$port" 30 "$BENCH_LAST_PID" Pgpool-II "$dir/pgpool.log"
}
