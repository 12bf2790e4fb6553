#!/usr/bin/env python3
"""Helpers for scripts/bench and scripts/bench-failover-pgpool.

  benchtool.py ports N                      N free TCP ports on 127.0.0.1
  benchtool.py pgbench-stats OUT LOG...     tps and latency percentiles of one run
  benchtool.py mem PID                      RSS/PSS of a process and its descendants
  benchtool.py perf-cost [--round N] STAT OUT T W
                                            a proxy's CPU and system calls per transaction
  benchtool.py idle-clients [options]       open N connections, hold them
  benchtool.py writer [options]             a write every 100 ms; report the gaps

Every command prints one JSON object on stdout (pgbench-stats: one CSV
fragment). Standard library only.
"""

import argparse
import asyncio
import json
import os
import random
import re
import resource
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgwire  # noqa: E402


# --- ports ---------------------------------------------------------------------
def cmd_ports(args):
    """Free ports below the ephemeral range (so that the thousands of client
    connections of the memory test never take them), away from PostgreSQL's,
    PgBouncer's and Pgpool-II's defaults."""
    avoid = {5432, 6432, 9999, 9898, 9000, 9694}
    found = []
    start = random.randrange(20000, 30000)
    candidates = list(range(start, 32000)) + list(range(20000, start))
    for p in candidates:
        if p in avoid:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        found.append(p)
        if len(found) == args.n:
            break
    if len(found) < args.n:
        sys.exit("not enough free ports")
    print(" ".join(map(str, found)))


# --- pgbench -------------------------------------------------------------------
def percentile(sorted_values, q):
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


def cmd_pgbench_stats(args):
    """Prints `tps,count,mean_ms,p50_ms,p95_ms,p99_ms,failed` for one run:
    tps from pgbench's summary, latencies from its per-transaction logs
    (`-l`: the third field is the transaction's time in microseconds)."""
    text = open(args.out, errors="replace").read()
    m = re.search(r"^tps = ([0-9.]+)", text, re.M)
    tps = float(m.group(1)) if m else None
    m = re.search(r"^number of failed transactions: (\d+)", text, re.M)
    failed = int(m.group(1)) if m else 0
    lat = []
    for path in args.logs:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
    lat.sort()
    n = len(lat)
    mean = sum(lat) / n / 1000.0 if n else None

    def ms(v):
        return "" if v is None else "%.3f" % (v / 1000.0)

    print(
        ",".join(
            [
                "" if tps is None else "%.1f" % tps,
                str(n),
                "" if mean is None else "%.3f" % mean,
                ms(percentile(lat, 0.50)),
                ms(percentile(lat, 0.95)),
                ms(percentile(lat, 0.99)),
                str(failed),
            ]
        )
    )


# --- CPU cost ------------------------------------------------------------------
def cmd_perf_cost(args):
    """One JSON line from `perf stat -x,` output and pgbench's summary: CPU
    time, context switches and each counted system call per transaction."""
    counts = {}
    for line in open(args.stat, errors="replace"):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.strip().split(",")
        if len(parts) < 3:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue  # "<not counted>" / "<not supported>"
        event = parts[2]
        if event.startswith("syscalls:sys_enter_"):
            event = event[len("syscalls:sys_enter_") :]
        counts[event] = value
    text = open(args.out, errors="replace").read()
    m = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
    txns = int(m.group(1)) if m else 0
    m = re.search(r"^tps = ([0-9.]+)", text, re.M)
    if not txns or "task-clock" not in counts:
        sys.exit("no transactions or no task-clock in %s / %s" % (args.out, args.stat))
    result = {
        "target": args.target,
        "workload": args.workload,
        "round": args.round,
        "transactions": txns,
        "tps": float(m.group(1)) if m else None,
        # task-clock is in milliseconds.
        "cpu_us_per_txn": round(counts.pop("task-clock") * 1000.0 / txns, 2),
        "per_txn": {k: round(v / txns, 3) for k, v in counts.items()},
    }
    print(json.dumps(result))


# --- memory --------------------------------------------------------------------
def descendants(root):
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def proc_kb(pid, path, key):
    try:
        with open("/proc/%d/%s" % (pid, path)) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmd_mem(args):
    """RSS and PSS (proportional: shared pages split among their users) of a
    process and all its descendants, in KiB."""
    pids = descendants(args.pid)
    rss = sum(proc_kb(p, "status", "VmRSS") for p in pids)
    pss = sum(proc_kb(p, "smaps_rollup", "Pss") for p in pids)
    print(json.dumps({"pid": args.pid, "procs": len(pids), "rss_kb": rss, "pss_kb": pss}))


# --- idle clients --------------------------------------------------------------
async def open_one(host, port, user, db, password, timeout, source=None):
    local = (source, 0) if source else None
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=local), timeout)
    try:
        writer.write(pgwire.startup_message(user, db))
        hs = pgwire.Handshake(user, password)

        async def handshake():
            while not hs.ready:
                head = await reader.readexactly(5)
                length = struct.unpack("!I", head[1:5])[0]
                payload = await reader.readexactly(length - 4)
                out = hs.feed(head[:1], payload)
                if out:
                    writer.write(out)

        await asyncio.wait_for(handshake(), timeout)
    except BaseException:
        writer.close()
        raise
    return writer


async def idle_clients(args):
    conns, errors = [], {}
    sem = asyncio.Semaphore(args.concurrency)
    deadline = time.monotonic() + args.open_timeout

    async def one(i):
        # More clients than one source address has ports for (about
        # 28,000 to one server port) come from 127.0.0.2, .3, ...
        source = "127.0.0.%d" % (1 + i % args.sources) if args.sources > 1 else None
        async with sem:
            left = deadline - time.monotonic()
            if left <= 0:
                errors["gave up: --open-timeout reached"] = errors.get("gave up: --open-timeout reached", 0) + 1
                return
            try:
                conns.append(await open_one(args.host, args.port, args.user, args.db, args.password, min(left, args.conn_timeout), source))
            except Exception as e:  # noqa: BLE001 - every failure is counted
                key = (type(e).__name__ + ": " + str(e))[:120]
                errors[key] = errors.get(key, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(args.count)))
    result = {
        "requested": args.count,
        "opened": len(conns),
        "failed": args.count - len(conns),
        "seconds": round(time.monotonic() - started, 2),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
    }
    print(json.dumps(result), flush=True)
    # Hold them until told to stop (SIGTERM/SIGINT) or --hold runs out.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        pass
    for w in conns:
        w.close()


def cmd_idle_clients(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 100
    if soft < want:
        raised = False
        if hard < want and os.geteuid() == 0:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
                raised = True
            except (ValueError, OSError):
                # No CAP_SYS_RESOURCE (a container): the hard limit stays,
                # and the connections beyond it fail with EMFILE, counted
                # and reported as such.
                pass
        if not raised:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    asyncio.run(idle_clients(args))


# --- writer --------------------------------------------------------------------
def cmd_writer(args):
    """A write every --interval seconds through a kept connection
    (reconnecting after any error), for --duration seconds or until
    SIGTERM; then the gaps between consecutive successful writes. The
    outage is the longest gap: from the last success before a failure to
    the first success after it."""
    stop = {"now": False}

    def on_term(*_):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    conn = None
    successes, failures, first_error = [], 0, None
    started = time.monotonic()
    next_at = started
    while not stop["now"] and time.monotonic() - started < args.duration:
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
            continue
        next_at += args.interval
        if next_at < time.monotonic():
            next_at = time.monotonic() + args.interval
        try:
            if conn is None:
                conn = pgwire.Conn(args.host, args.port, args.user, args.db, args.password, timeout=args.timeout)
            conn.sock.settimeout(args.timeout)
            conn.query(args.sql)
            successes.append(time.monotonic())
            if args.progress_file:
                with open(args.progress_file, "w") as f:
                    f.write("%d %d\n" % (len(successes), failures))
        except (OSError, pgwire.PgError) as e:
            failures += 1
            if first_error is None:
                first_error = str(e)[:200]
            if conn is not None:
                try:
                    conn.sock.close()
                except OSError:
                    pass
            conn = None
            if args.progress_file:
                with open(args.progress_file, "w") as f:
                    f.write("%d %d\n" % (len(successes), failures))
    gaps = [b - a for a, b in zip(successes, successes[1:])]
    worst = max(range(len(gaps)), key=lambda i: gaps[i]) if gaps else None
    print(
        json.dumps(
            {
                "writes_ok": len(successes),
                "writes_failed": failures,
                "first_error": first_error,
                "outage_ms": round(gaps[worst] * 1000) if gaps else None,
                "outage_starts_s": round(successes[worst] - started, 3) if gaps else None,
                "median_gap_ms": round(sorted(gaps)[len(gaps) // 2] * 1000) if gaps else None,
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s.set_defaults(fn=cmd_ports)

    s = sub.add_parser("pgbench-stats")
    s.add_argument("out")
    s.add_argument("logs", nargs="*")
    s.set_defaults(fn=cmd_pgbench_stats)

    s = sub.add_parser("perf-cost")
    s.add_argument("--round", type=int, default=1)
    s.add_argument("stat")
    s.add_argument("out")
    s.add_argument("target")
    s.add_argument("workload")
    s.set_defaults(fn=cmd_perf_cost)

    s = sub.add_parser("mem")
    s.add_argument("pid", type=int)
    s.set_defaults(fn=cmd_mem)

    def conn_args(s):
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--user", required=True)
        s.add_argument("--db", required=True)
        s.add_argument("--password")

    s = sub.add_parser("idle-clients")
    conn_args(s)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--concurrency", type=int, default=64)
    s.add_argument("--conn-timeout", type=float, default=10.0)
    s.add_argument("--open-timeout", type=float, default=120.0, help="deadline for opening them all")
    s.add_argument("--sources", type=int, default=1, help="loopback source addresses to spread them over (127.0.0.1..N)")
    s.add_argument("--hold", type=float, default=300.0, help="most seconds to hold them")
    s.set_defaults(fn=cmd_idle_clients)

    s = sub.add_parser("writer")
    conn_args(s)
    s.add_argument("--sql", default="INSERT INTO bench_failover DEFAULT VALUES")
    s.add_argument("--interval", type=float, default=0.1)
    s.add_argument("--timeout", type=float, default=1.0, help="per connect and per write")
    s.add_argument("--duration", type=float, default=60.0)
    s.add_argument("--progress-file")
    s.set_defaults(fn=cmd_writer)

    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
