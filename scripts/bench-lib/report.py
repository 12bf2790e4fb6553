#!/usr/bin/env python3
"""Turns the raw numbers of scripts/bench into docs/benchmarks.md.

Inputs: results.csv (one line per pgbench run), meta.tsv (machine,
versions, command, settings), memory.jsonl (one line per target of the
idle-clients test), and the failover JSON/text files named in meta.tsv.
Output: Markdown on stdout.
"""

import argparse
import csv
import json
import os
import re
import statistics
import sys

WORKLOADS = [
    ("select-simple", "Select-only, simple protocol", "pgbench -S -M simple"),
    ("select-extended", "Select-only, extended protocol", "pgbench -S -M extended"),
    ("select-prepared", "Select-only, prepared statements", "pgbench -S -M prepared"),
    ("tpcb", "TPC-B-like read-write", "pgbench (default script) -M simple"),
    ("select-connect", "Select-only, a new connection per transaction", "pgbench -S -C"),
    (
        "select-connect-trust",
        "Select-only, a new connection per transaction, trust authentication",
        "pgbench -S -C -U trustuser",
    ),
    (
        "cache-simple",
        "Query cache, simple protocol: -S's query over a hot set of 10,000 accounts",
        "pgbench -M simple -f cache.sql, each cache target warmed up first",
    ),
    (
        "cache-extended",
        "Query cache, extended protocol: -S's query over a hot set of 10,000 accounts",
        "pgbench -M extended -f cache.sql, each cache target warmed up first",
    ),
]
TARGET_NAMES = {
    "direct": "direct (primary)",
    "pgbouncer": "PgBouncer",
    "pgpool": "Pgpool-II",
    "tidepool-tx": "tidepool (transaction)",
    "tidepool-session": "tidepool (session)",
    "tidepool-tx-lb": "tidepool (transaction, read LB)",
    "tidepool-tx-lbp": "tidepool (transaction, read LB, reads weighted to the primary)",
    "tidepool-tx-cache": "tidepool (transaction, query cache)",
    "pgpool-cache": "Pgpool-II (query cache)",
}
TARGET_ORDER = list(TARGET_NAMES)
TIDEPOOLS = ["tidepool-tx", "tidepool-session", "tidepool-tx-lb", "tidepool-tx-lbp", "tidepool-tx-cache"]
PEERS = ["direct", "pgbouncer", "pgpool", "pgpool-cache"]
# scripts/bench --tls: TLS on both sides, reported in their own table.
TLS_TARGET_NAMES = {
    "direct-tls": "direct (primary), TLS",
    "pgbouncer-tls": "PgBouncer, TLS",
    "tidepool-tx-tls": "tidepool (transaction), TLS",
}
TLS_WORKLOADS = ["select-simple", "select-connect", "select-connect-trust"]
ALL_TARGET_NAMES = dict(TARGET_NAMES, **TLS_TARGET_NAMES)


def fnum(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return "{:,.0f}".format(v)
    return "{:.{}f}".format(v, digits)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fratio(r):
    return "–" if r is None else "{:.2f}×".format(r)


def fms(v):
    if v is None:
        return "–"
    return "{:.2f}".format(v) if v < 10 else "{:.1f}".format(v)


def mib(kb):
    return kb / 1024.0


def read_text(path):
    """A file's text, stripped, or None when the path is unset, missing or empty."""
    if not path or not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    with open(path) as f:
        return f.read().strip()


def load_meta(path):
    meta, multi = {}, {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "\t" not in line:
                continue
            k, v = line.split("\t", 1)
            meta.setdefault(k, v)
            multi.setdefault(k, []).append(v)
    return meta, multi


def load_results(path):
    cells = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            key = (row["workload"], int(row["clients"]), row["target"])
            cells.setdefault(key, []).append(row)
    return cells


def summarize(rows):
    """Median over the successful rounds; None when there are none."""
    ok = [r for r in rows if r["status"] == "ok" and r["tps"]]
    if not ok:
        return None

    def med(field):
        vals = [float(r[field]) for r in ok if r[field]]
        return statistics.median(vals) if vals else None

    tps = [float(r["tps"]) for r in ok]
    return {
        "tps": statistics.median(tps),
        "tps_min": min(tps),
        "tps_max": max(tps),
        "rounds": len(ok),
        "mean": med("mean_ms"),
        "p50": med("p50_ms"),
        "p95": med("p95_ms"),
        "p99": med("p99_ms"),
        "failed": sum(int(r["failed"] or 0) for r in ok),
    }


def paired_ratio(a_rows, b_rows):
    """The median over rounds of A's tps ÷ B's in the same round (rounds
    where both succeeded): a slow spell of the machine during one round
    weighs on both sides of that round's ratio. None without such a round."""

    def by_round(rows):
        return {r["round"]: float(r["tps"]) for r in rows if r["status"] == "ok" and r["tps"]}

    a, b = by_round(a_rows), by_round(b_rows)
    ratios = [a[k] / b[k] for k in a if k in b and b[k] > 0]
    return statistics.median(ratios) if ratios else None


def cost_summary(eff):
    """Per (workload, target), in the report's order of workloads and
    proxies: the median over rounds of CPU µs, tps and every count per
    transaction, with the lowest and highest CPU µs and the number of runs."""
    groups = {}
    for e in eff:
        groups.setdefault((e["workload"], e["target"]), []).append(e)
    out = []
    for (w, t), es in groups.items():
        cpu = [e["cpu_us_per_txn"] for e in es]
        keys = []
        for e in es:
            keys += [k for k in e["per_txn"] if k not in keys]
        tps = [e["tps"] for e in es if e.get("tps") is not None]
        out.append({
            "workload": w,
            "target": t,
            "runs": len(es),
            "cpu_us_per_txn": statistics.median(cpu),
            "cpu_min": min(cpu),
            "cpu_max": max(cpu),
            "tps": statistics.median(tps) if tps else None,
            "per_txn": {
                k: statistics.median([e["per_txn"][k] for e in es if k in e["per_txn"]]) for k in keys
            },
        })
    w_order = [w[0] for w in WORKLOADS]
    t_order = list(ALL_TARGET_NAMES)

    def place(e):
        w, t = e["workload"], e["target"]
        return (w_order.index(w) if w in w_order else len(w_order), t_order.index(t) if t in t_order else len(t_order), t)

    return sorted(out, key=place)


def problem(rows):
    statuses = sorted({r["status"] for r in rows if r["status"] != "ok"})
    return "; ".join(statuses) if statuses else "no result"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--memory")
    ap.add_argument("--efficiency")
    args = ap.parse_args()

    meta, multi = load_meta(args.meta)
    cells = load_results(args.results)
    workloads = [w for w in WORKLOADS if any(k[0] == w[0] for k in cells)]
    clients = sorted({k[1] for k in cells})
    targets = [t for t in TARGET_ORDER if any(k[2] == t for k in cells)]
    summary = {k: summarize(v) for k, v in cells.items()}

    def tps(w, c, t):
        s = summary.get((w, c, t))
        return s["tps"] if s else None

    out = []
    p = out.append
    p("# Benchmarks")
    p("")
    p("tidepool side by side with direct PostgreSQL, PgBouncer and Pgpool-II, measured in one")
    p("run on one machine by `scripts/bench` (this page is its output; `scripts/bench --quick`")
    p("is a one-minute smoke of the same code). The numbers are only comparable within this")
    p("page: every target ran on the same machine, interleaved, minutes apart.")
    p("")

    # --- goals -------------------------------------------------------------------
    memory = []
    if args.memory and os.path.exists(args.memory):
        with open(args.memory) as f:
            memory = [json.loads(l) for l in f if l.strip()]
    fo_pgpool = None
    path = meta.get("failover_pgpool", "")
    if path and os.path.exists(path):
        with open(path) as f:
            fo_pgpool = json.load(f)
    fo_tidepool_text = read_text(meta.get("failover_tidepool", ""))

    p("## Where tidepool stands")
    p("")
    p("Read against the goals, with tidepool in transaction pooling (`tidepool-tx`). A ratio is")
    p("tidepool's median tps divided by the other's, except in the two rows on read load balancing,")
    p("which compare two tidepools: there the two runs of each round, which follow each other within")
    p("a minute (rounds are ten minutes and more apart), are divided, and the median of those")
    p("ratios is shown. CPU ratios divide medians over rounds. \"met\" compares the numbers as they")
    p("are, with no allowance for noise (see the spread columns below).")
    p("")
    p("| goal | measured | verdict |")
    p("| --- | --- | --- |")

    def goal_row(title, pairs, need):
        """pairs: list of (label, ratio or None)."""
        have = [(l, r) for l, r in pairs if r is not None]
        if not have:
            p("| %s | not measured in this run | – |" % title)
            return
        text = ", ".join("%s %s" % (l, fratio(r)) for l, r in have)
        verdict = "met" if all(r >= need for _, r in have) else "**not met**"
        if verdict != "met" and any(r >= need for _, r in have):
            verdict = "**not met** (%d of %d)" % (sum(r >= need for _, r in have), len(have))
        p("| %s | %s | %s |" % (title, text, verdict))

    sel = [w for w in ("select-simple", "select-extended", "select-prepared") if any(k[0] == w for k in cells)]
    big = [c for c in clients if c >= 16]
    short = {"select-simple": "simple", "select-extended": "extended", "select-prepared": "prepared",
             "tpcb": "TPC-B", "select-connect-trust": "-C trust"}
    # Against PgBouncer: the select-only workloads, TPC-B and -C with trust.
    vs_bouncer = sel + [w for w in ("tpcb", "select-connect-trust") if any(k[0] == w for k in cells)]
    goal_row(
        "tps ≥ PgBouncer's at 16+ clients (select-only, TPC-B, `-C` trust)",
        [("%s/%d:" % (short[w], c), ratio(tps(w, c, "tidepool-tx"), tps(w, c, "pgbouncer"))) for w in vs_bouncer for c in big],
        1.0,
    )

    def p99(w, c, t):
        s = summary.get((w, c, t))
        return s["p99"] if s else None

    goal_row(
        "p99 latency ≤ PgBouncer's at 16+ clients (PgBouncer's p99 ÷ tidepool's)",
        [("%s/%d:" % (short[w], c), ratio(p99(w, c, "pgbouncer"), p99(w, c, "tidepool-tx"))) for w in vs_bouncer for c in big],
        1.0,
    )
    eff_rows = []
    if args.efficiency and os.path.exists(args.efficiency):
        with open(args.efficiency) as f:
            eff_rows = cost_summary([json.loads(l) for l in f if l.strip()])

    def cpu(w, t):
        return next((e["cpu_us_per_txn"] for e in eff_rows if e["workload"] == w and e["target"] == t), None)

    goal_row(
        "CPU per select-only transaction ≤ PgBouncer's (PgBouncer's µs ÷ tidepool's, perf stat)",
        [("%s:" % short[w], ratio(cpu(w, "pgbouncer"), cpu(w, "tidepool-tx"))) for w in ("select-simple", "select-extended")],
        1.0,
    )
    goal_row(
        "select-only tps ≥ 2× Pgpool-II's at 16+ clients",
        [("%s/%d:" % (short[w], c), ratio(tps(w, c, "tidepool-tx"), tps(w, c, "pgpool"))) for w in sel for c in big],
        2.0,
    )
    goal_row(
        "`-C` tps ≥ 3× direct (SCRAM-SHA-256)",
        [("%d clients:" % c, ratio(tps("select-connect", c, "tidepool-tx"), tps("select-connect", c, "direct"))) for c in clients],
        3.0,
    )
    goal_row(
        "`-C` tps ≥ 3× direct (trust: without the client's PBKDF2)",
        [
            ("%d clients:" % c, ratio(tps("select-connect-trust", c, "tidepool-tx"), tps("select-connect-trust", c, "direct")))
            for c in clients
        ],
        3.0,
    )
    tls_cells = [w for w in TLS_WORKLOADS if any(k[0] == w and k[2] in TLS_TARGET_NAMES for k in cells)]
    if tls_cells:
        tls_short = {"select-simple": "simple", "select-connect": "-C", "select-connect-trust": "-C trust"}
        goal_row(
            "TLS to clients and backends: select-only (16+ clients) and `-C` tps ≥ PgBouncer's",
            [
                ("%s/%d:" % (tls_short[w], c), ratio(tps(w, c, "tidepool-tx-tls"), tps(w, c, "pgbouncer-tls")))
                for w in tls_cells
                for c in (big if w == "select-simple" else clients)
            ],
            1.0,
        )
    cache_w = [w for w in ("cache-simple", "cache-extended") if any(k[0] == w and k[2] == "tidepool-tx-cache" for k in cells)]
    cshort = {"cache-simple": "simple", "cache-extended": "extended"}
    if cache_w:
        goal_row(
            "query cache: tps above direct's",
            [("%s/%d:" % (cshort[w], c), ratio(tps(w, c, "tidepool-tx-cache"), tps(w, c, "direct"))) for w in cache_w for c in clients],
            1.0,
        )
        goal_row(
            "query cache: tps ≥ 2× Pgpool-II's query cache",
            [("%s/%d:" % (cshort[w], c), ratio(tps(w, c, "tidepool-tx-cache"), tps(w, c, "pgpool-cache"))) for w in cache_w for c in clients],
            2.0,
        )

        def p50(w, c, t):
            s = summary.get((w, c, t))
            return s["p50"] if s else None

        goal_row(
            "query cache: p50 latency ≤ direct's (direct's p50 ÷ tidepool's)",
            [("%s/%d:" % (cshort[w], c), ratio(p50(w, c, "direct"), p50(w, c, "tidepool-tx-cache"))) for w in cache_w for c in clients],
            1.0,
        )
    lb = [
        ("%s/%d:" % (short[w], c), paired_ratio(cells.get((w, c, "tidepool-tx-lb"), []), cells.get((w, c, "tidepool-tx"), [])))
        for w in sel
        for c in clients
    ]
    lb = [(l, r) for l, r in lb if r is not None]
    if lb:
        p("| select-only with read load balancing (routing on) ÷ routing off (median of each round's ratio) | %s | (reported) |"
          % ", ".join("%s %s" % (l, fratio(r)) for l, r in lb))
    goal_row(
        "read load balancing on, every read weighted to the primary ÷ off ≥ 0.97 (classification and choice only; median of each round's ratio)",
        [
            ("%s/%d:" % (short[w], c), paired_ratio(cells.get((w, c, "tidepool-tx-lbp"), []), cells.get((w, c, "tidepool-tx"), [])))
            for w in sel
            for c in clients
        ],
        0.97,
    )
    tp_mem = next((m for m in memory if m["target"] == "tidepool"), None)
    if tp_mem:
        rss = mib(tp_mem["after"]["rss_kb"])
        opened = tp_mem["clients"]["opened"]
        verdict = "met" if rss < 100 and opened >= 10000 else "**not met**"
        if opened < 10000:
            verdict += " (only %d clients in this run)" % opened
        p("| 10,000 idle clients under 100 MB RSS | %s MiB with %s clients | %s |" % (fnum(rss, 1), fnum(opened), verdict))
        per = (tp_mem["after"]["rss_kb"] - tp_mem["before"]["rss_kb"]) / opened if opened else None
        if per is not None:
            verdict = "met" if per <= 2.0 and opened >= 10000 else "**not met**"
            if opened < 10000:
                verdict += " (only %d clients in this run)" % opened
            p("| idle clients: at most 2 KiB of RSS each (10,000) | %s KiB per client | %s |" % (fnum(per, 2), verdict))
    else:
        p("| 10,000 idle clients under 100 MB RSS | not measured in this run | – |")
    tp_median = None
    if fo_tidepool_text:
        m = re.search(r"median ([0-9.]+) ?ms", fo_tidepool_text)
        tp_median = float(m.group(1)) if m else None
    pgpool_ctx = ""
    if fo_pgpool and fo_pgpool.get("median_ms") is not None:
        pgpool_ctx = " (Pgpool-II: %s ms)" % fnum(fo_pgpool["median_ms"])
    if tp_median is not None:
        p("| failover outage median under 1 s | %s ms median%s | %s |" % (
            fnum(tp_median), pgpool_ctx, "met" if tp_median < 1000 else "**not met**"))
    elif fo_tidepool_text:
        p("| failover outage median under 1 s | see [Failover](#failover-outage) (scripts/bench-failover) | see below |")
    else:
        p("| failover outage median under 1 s | not measured: %s | – |" % (
            "scripts/bench-failover does not exist yet" if meta.get("failover_tidepool_script") == "absent"
            else "scripts/bench-failover gave no output in this run"))
    p("")

    # --- machine -----------------------------------------------------------------
    p("## Machine and versions")
    p("")
    p("| | |")
    p("| --- | --- |")
    for key, label in [
        ("cpu", "CPU"), ("nproc", "cores (nproc)"), ("memory", "memory"), ("os", "OS"), ("kernel", "kernel"),
        ("loadavg", "load average at the end"), ("postgresql", "PostgreSQL"), ("pgbench", "pgbench"),
        ("pgbouncer", "PgBouncer"), ("pgpool", "Pgpool-II"), ("tidepool", "tidepool (git commit)"),
        ("tidepool_build", "tidepool build"), ("started", "started (UTC)"), ("finished", "finished (UTC)"),
    ]:
        p("| %s | %s |" % (label, meta.get(key, "?")))
    p("")
    p("Command: `%s` (%s mode: %s round(s) of %s s per run, scale %s, clients %s)." % (
        meta.get("command", "scripts/bench"), meta.get("mode"), meta.get("rounds"), meta.get("duration"),
        meta.get("scale"), meta.get("clients")))
    p("")

    # --- method ------------------------------------------------------------------
    p("## Method")
    p("")
    p("- **Cluster**: a primary and two streaming standbys of the same PostgreSQL on 127.0.0.1")
    p("  (`scripts/dev-cluster`, normal durability: `fsync` and `synchronous_commit` on;")
    p("  `max_connections = 700` so that every target's server connections fit at once).")
    p("  `pgbench -i` once, directly on the primary; before each TPC-B run the branches and")
    p("  tellers are vacuumed and the history truncated, directly on the primary.")
    p("- **Targets**, all on 127.0.0.1, all logging in as `app` with SCRAM-SHA-256 (but")
    p("  `select-connect-trust`, below):")
    p("  - *direct*: the primary itself.")
    p("  - *PgBouncer*: `pool_mode = transaction`, `scram-sha-256` (`auth_type = hba`) with an")
    p("    `auth_file` (plaintext, so it can log in to the server with SCRAM),")
    p("    `default_pool_size = 20`, connection logging off; towards the primary.")
    p("  - *Pgpool-II*: `backend_clustering_mode = 'streaming_replication'`, `load_balance_mode = on`")
    p("    over the three nodes, `num_init_children = %s` (the most clients + 8), `max_pool = 1`" % meta.get("pgpool_children", "?"))
    p("    (one user and database), health checks as in its documentation's example cluster")
    p("    (`health_check_period = 5`, `health_check_timeout = 30`, `health_check_max_retries = 3`),")
    p("    `sr_check_user = 'postgres'`,")
    p("    SCRAM through `pool_hba.conf` and `pool_passwd`; no `failover_command` here; started")
    p("    with `-D`.")
    p("  - *tidepool (transaction)*: `pool.mode = \"transaction\"`, `max_size = 20` (PgBouncer's pool")
    p("    size), the three nodes as backends; default logging; %s; %s;" % (
        meta.get("hc_note", "?"), meta.get("failover_note", "?")))
    p("    `[server]` %s (every tidepool target)." % meta.get("tp_server", "?"))
    p("  - *tidepool (session)*: `pool.mode = \"session\"`, `max_size = %s` (a server connection per" % meta.get("session_pool", "?"))
    p("    client, like session pooling anywhere).")
    p("  - *tidepool (transaction, read LB)*: %s." % meta.get("lb_note", "?"))
    p("  - *tidepool (transaction, read LB, reads weighted to the primary)*: the same with the")
    p("    standbys at `weight = 0`: every read is classified and a node chosen, and the choice is")
    p("    always the primary — what routing costs by itself.")
    p("- **Runs**: `pgbench -n -T <duration> -c <clients> -j min(clients, 2)`, interleaved: each")
    p("  round runs every (workload, clients) cell once per target, in an order rotated between")
    p("  cells and rounds, so slow drifts of the machine's load fall on every target alike.")
    p("  Tables show the **median over rounds** of tps and of each latency figure, and the")
    p("  lowest–highest tps over rounds as the spread. Latencies come from pgbench's")
    p("  per-transaction logs (`-l`): mean and the 50th/95th/99th percentiles, in ms.")
    p("- With `-C`, every transaction opens a connection that authenticates with SCRAM-SHA-256,")
    p("  and pgbench (libpq) derives the client's key (PBKDF2, 4096 rounds) for each one: on a")
    p("  small machine that client-side cost bounds `-C` for every target. So `-C` runs twice:")
    p("  as `app` with SCRAM-SHA-256, and as `trustuser`, whom every target (the servers'")
    p("  `pg_hba.conf`, PgBouncer's `auth_hba_file`, Pgpool-II's `pool_hba.conf`, tidepool's")
    p("  `[[hba]]`) lets in with `trust`: what opening a connection costs the target itself.")
    p("  A proxy's own cost per login shows in [CPU cost per transaction](#cpu-cost-per-transaction).")
    if meta.get("tls") == "on":
        p("- **TLS** (`scripts/bench --tls`): the servers run with `ssl = on` (throwaway certificates")
        p("  for `127.0.0.1` from `scripts/dev-cluster --tls DIR --tls-optional`, whose `host` rules")
        p("  let both plaintext and TLS clients in). Three more targets, with pgbench on")
        p("  `PGSSLMODE=require`: *direct, TLS* (the primary); *PgBouncer, TLS* (the PgBouncer")
        p("  above with `client_tls_sslmode = require`, the cluster's `tidepool.crt` as")
        p("  `client_tls_cert_file`, and `server_tls_sslmode = require`); *tidepool (transaction),")
        p("  TLS* (the tidepool above with %s)." % meta.get("tls_note", "?"))
        p("  They run %s only." % ", ".join("`%s`" % w for w in meta.get("tls_workloads", "").split(",") if w))
        p("  The plaintext targets then get `PGSSLMODE=disable` (libpq's default, `prefer`, would")
        p("  use TLS towards the primary), and the other tidepools `[backend_defaults] sslmode =")
        p("  \"disable\"`. With libpq's default `channel_binding = prefer`, logins over TLS use")
        p("  SCRAM-SHA-256-PLUS where it is offered (PostgreSQL, tidepool); PgBouncer offers")
        p("  SCRAM-SHA-256 only.")
    p("- pgbench runs on the same machine and competes with the target for the cores: a proxy's")
    p("  CPU cost shows up twice as lower tps. On a machine shared with other work, compare")
    p("  ratios within this page, not absolute numbers with other pages.")
    p("")

    # --- throughput --------------------------------------------------------------
    p("## Throughput")
    p("")
    for w, title, cmd in workloads:
        p("### %s (`%s`)" % (title, cmd))
        p("")
        p("| clients | target | tps (median) | spread | vs direct | p50 ms | p95 ms | p99 ms | mean ms |")
        p("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for c in clients:
            for t in targets:
                rows = cells.get((w, c, t))
                if not rows:
                    continue
                s = summary[(w, c, t)]
                name = TARGET_NAMES[t]
                if t.startswith("tidepool"):
                    name = "**%s**" % name
                if s is None:
                    p("| %d | %s | %s | | | | | | |" % (c, name, problem(rows).replace("|", "/")))
                    continue
                spread = "%s–%s" % (fnum(s["tps_min"]), fnum(s["tps_max"])) if s["rounds"] > 1 else "1 round"
                p("| %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    c, name, fnum(s["tps"]), spread,
                    "–" if t == "direct" else fratio(ratio(s["tps"], tps(w, c, "direct"))),
                    fms(s["p50"]), fms(s["p95"]), fms(s["p99"]), fms(s["mean"])))
        p("")

    # --- ratios ------------------------------------------------------------------
    tps_targets = [t for t in TIDEPOOLS if t in targets]
    if tps_targets:
        p("## tidepool against each peer")
        p("")
        p("tidepool's median tps divided by the peer's, per workload and client count (> 1: tidepool")
        p("is faster).")
        p("")
        peers = [t for t in PEERS if t in targets]
        head = "| workload | clients | " + " | ".join(
            "%s / %s" % (TARGET_NAMES[tp].replace("tidepool ", "tp "), TARGET_NAMES[pe]) for tp in tps_targets for pe in peers) + " |"
        p(head)
        p("| --- | ---: |" + " ---: |" * (len(tps_targets) * len(peers)))
        for w, title, _ in workloads:
            for c in clients:
                vals = [fratio(ratio(tps(w, c, tp), tps(w, c, pe))) for tp in tps_targets for pe in peers]
                p("| %s | %d | %s |" % (w, c, " | ".join(vals)))
        p("")

    # --- TLS ---------------------------------------------------------------------
    tls_targets = [t for t in TLS_TARGET_NAMES if any(k[2] == t for k in cells)]
    if tls_targets:
        p("## TLS (client and backend)")
        p("")
        p("TLS from pgbench to the target and from the target to PostgreSQL (`sslmode = require` on")
        p("both sides; see [Method](#method)). Median tps over rounds; \"TLS ÷ plaintext\" divides by the")
        p("same proxy's plaintext median in this run (what TLS costs it).")
        p("")
        head = ["workload", "clients"] + [TLS_TARGET_NAMES[t] for t in tls_targets]
        head += ["tidepool ÷ PgBouncer (TLS)", "TLS ÷ plaintext: PgBouncer", "TLS ÷ plaintext: tidepool"]
        p("| " + " | ".join(head) + " |")
        p("| --- | ---: |" + " ---: |" * (len(head) - 2))
        for w in TLS_WORKLOADS:
            for c in clients:
                if not any((w, c, t) in cells for t in tls_targets):
                    continue
                vals = []
                for t in tls_targets:
                    rows = cells.get((w, c, t))
                    if not rows:
                        vals.append("–")
                    elif summary[(w, c, t)] is None:
                        vals.append(problem(rows).replace("|", "/"))
                    else:
                        vals.append(fnum(summary[(w, c, t)]["tps"]))
                vals.append(fratio(ratio(tps(w, c, "tidepool-tx-tls"), tps(w, c, "pgbouncer-tls"))))
                vals.append(fratio(ratio(tps(w, c, "pgbouncer-tls"), tps(w, c, "pgbouncer"))))
                vals.append(fratio(ratio(tps(w, c, "tidepool-tx-tls"), tps(w, c, "tidepool-tx"))))
                p("| %s | %d | %s |" % (w, c, " | ".join(vals)))
        p("")

    # --- memory ------------------------------------------------------------------
    p("## Memory with idle clients")
    p("")
    if not memory:
        p("Not measured in this run (`--no-memory`).")
    else:
        p("Each target started fresh, then a client (`scripts/bench-lib/benchtool.py idle-clients`,")
        p("asyncio) opened the connections — StartupMessage, authentication (`trust` for `app` from")
        p("127.0.0.1 for this test only), until ReadyForQuery — and held them idle. Memory is summed")
        p("over the target's processes: RSS (resident pages; pages shared between Pgpool-II's")
        p("forked children are counted in each) and PSS (shared pages split among the processes")
        p("sharing them). Per client = (RSS holding them − RSS idle) / clients opened.")
        p("")
        p("| target | setting | clients asked | opened | processes | RSS idle | RSS holding them | PSS holding them | per client |")
        p("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for m in memory:
            cl = m["clients"]
            opened = cl["opened"]
            per = (m["after"]["rss_kb"] - m["before"]["rss_kb"]) / opened if opened else None
            p("| %s | %s | %s | %s | %s | %s MiB | %s MiB | %s MiB | %s |" % (
                {"tidepool": "**tidepool**", "tidepool-large": "**tidepool**", "pgbouncer": "PgBouncer", "pgpool": "Pgpool-II"}.get(m["target"], m["target"]),
                m["note"], fnum(cl["requested"]), fnum(opened), m["after"]["procs"],
                fnum(mib(m["before"]["rss_kb"]), 1), fnum(mib(m["after"]["rss_kb"]), 1), fnum(mib(m["after"]["pss_kb"]), 1),
                "–" if per is None else "%s KiB" % fnum(per, 1)))
        errs = [(m["target"], m["clients"]["errors"]) for m in memory if m["clients"].get("errors")]
        if errs:
            p("")
            for t, e in errs:
                p("- %s refused some clients: %s" % (t, "; ".join("%s (×%d)" % (k, v) for k, v in e.items())))
        limit = meta.get("nofile_large", "")
        large = next((m for m in memory if m["target"] == "tidepool-large"), None)
        if large and limit.isdigit() and int(limit) < large["clients"]["requested"]:
            p("")
            p("- The %s-client run was held to the machine's limit of %s open files per process:"
              % (fnum(large["clients"]["requested"]), fnum(int(limit))))
            p("  raising the hard limit needs `CAP_SYS_RESOURCE`, which this machine does not give")
            p("  root. The client and tidepool each need a descriptor per connection, so about that")
            p("  many connections is all one process of either can hold here (opened: %s)." % fnum(large["clients"]["opened"]))
        p("")
        p("Pgpool-II serves one client per child process and each child holds its own server")
        p("connections, so it cannot hold 10,000 idle clients on this cluster: it is measured at")
        p("`num_init_children = %s` (every one of its clients also costs a PostgreSQL backend per node" % meta.get("pgpool_idle", "?"))
        p("it connects to). PgBouncer and tidepool hold idle clients without server connections.")
    p("")

    # --- failover ----------------------------------------------------------------
    p("## Failover outage")
    p("")
    p("A client writes every 100 ms through a kept connection, reconnecting after any error; the")
    p("primary gets SIGKILL; the outage is the gap between the last write that succeeded before")
    p("and the first that succeeded after (so it includes up to 100 ms of the write interval).")
    p("")
    if fo_pgpool:
        p("**Pgpool-II** (`scripts/bench-failover-pgpool`; %s): %d run(s), %d recovered — min **%s ms**, median **%s ms**, max **%s ms**." % (
            fo_pgpool["settings"], len(fo_pgpool["runs"]), fo_pgpool["recovered"],
            fnum(fo_pgpool["min_ms"]), fnum(fo_pgpool["median_ms"]), fnum(fo_pgpool["max_ms"])))
        p("")
        p("| run | outage ms | writes ok | writes failed | first error | nodes after (id:status:role) |")
        p("| ---: | ---: | ---: | ---: | --- | --- |")
        for r in fo_pgpool["runs"]:
            p("| %d | %s | %d | %d | %s | %s |" % (r["run"], fnum(r["outage_ms"]), r["writes_ok"], r["writes_failed"],
                                                  (r.get("first_error") or "").replace("|", "/"), r.get("nodes_after", "")))
        p("")
    elif meta.get("failover_runs") == "0":
        p("**Pgpool-II**: not measured in this run (`--failover-runs 0`).")
        p("")
    else:
        p("**Pgpool-II**: `scripts/bench-failover-pgpool` gave no result in this run.")
        p("")
    if fo_tidepool_text:
        p("**tidepool** (`scripts/bench-failover`, its output as printed):")
        p("")
        p("```")
        p(fo_tidepool_text)
        p("```")
    elif meta.get("failover_tidepool_script") == "absent":
        p("**tidepool**: not measured — `scripts/bench-failover` (tidepool's own failover benchmark)")
        p("is not in this checkout.")
    else:
        p("**tidepool**: `scripts/bench-failover` gave no result in this run.")
    p("")

    # --- routing: classification cost ------------------------------------------
    text = read_text(meta.get("classify", ""))
    if text:
        p("## Routing: classification cost per statement")
        p("")
        p("What deciding a statement's route costs tidepool's classifier (`proxy/examples/classify_cost`,")
        p("release build, one thread): the same statements parsed by libpg_query every time, then through")
        p("the cache keyed by the statement's shape (its text with constants taken out), which is what")
        p("the proxy uses. The throughput cost of routing as a whole is the \"read load balancing ÷")
        p("routing off\" row under [Where tidepool stands](#where-tidepool-stands).")
        p("")
        p("```")
        p(text)
        p("```")
        p("")

    # --- CPU cost ----------------------------------------------------------------
    eff = eff_rows  # cost_summary's medians, read by the CPU goal row above too
    if eff:
        runs = max(e["runs"] for e in eff)
        p("## CPU cost per transaction")
        p("")
        p("Counted by the kernel for the proxy's processes (`perf stat`: task-clock, context")
        p("switches, system calls) during extra %s-second pgbench runs at 16 clients, one per proxy" % meta.get("duration"))
        p("and workload in each of %d round%s (the proxies in a rotated order), each divided by the" % (runs, "" if runs == 1 else "s"))
        p("transactions that run completed. The table gives the median over the runs, and the")
        p("lowest–highest CPU time. They are the numbers to compare proxies' efficiency by, though")
        p("on a shared virtual machine one run can differ from the next by 15% or more: hence the")
        p("rounds. Pgpool-II's are summed over all its processes.")
        p("")
        syscalls = []
        for e in eff:
            for k in e["per_txn"]:
                if k != "context-switches" and k not in syscalls:
                    syscalls.append(k)
        order = ["sendto", "recvfrom", "write", "read", "epoll_wait", "futex"]
        syscalls.sort(key=lambda k: order.index(k) if k in order else 99)
        p("| workload | proxy | tps in those runs | CPU µs / txn | lowest–highest | context switches / txn | " + " | ".join("`%s` / txn" % k for k in syscalls) + " |")
        p("| --- | --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(syscalls))
        for e in eff:
            name = ALL_TARGET_NAMES.get(e["target"], e["target"])
            if e["target"].startswith("tidepool"):
                name = "**%s**" % name
            pt = e["per_txn"]
            spread = "%s–%s" % (fnum(e["cpu_min"], 1), fnum(e["cpu_max"], 1)) if e["runs"] > 1 else "1 run"
            p("| %s | %s | %s | %s | %s | %s | %s |" % (
                e["workload"], name, fnum(e.get("tps")), fnum(e["cpu_us_per_txn"], 1), spread,
                fnum(pt.get("context-switches"), 2), " | ".join(fnum(pt.get(k), 2) for k in syscalls)))
        p("")

    # --- profile -----------------------------------------------------------------
    perfs = multi.get("perf", [])
    if perfs:
        p("## Where tidepool spends its CPU")
        p("")
        p("`perf record -F 499 --call-graph dwarf` on the `tidepool-tx` process during a 16-client")
        p("run: self time per symbol, then the share of samples under tidepool's own functions and")
        p("the async runtime's wake-up and I/O paths (with callees).")
        p("")
        for item in perfs:
            w, path = item.split("=", 1)
            p("**%s**" % w)
            p("")
            p("```")
            try:
                with open(path) as f:
                    lines = [l.rstrip() for l in f if l.strip()]
                p("\n".join(lines) if lines else "(no samples)")
            except OSError:
                p("(no profile)")
            p("```")
            p("")

    p("## Reproduce")
    p("")
    p("```sh")
    p("scripts/bench            # full report into docs/benchmarks.md (about 40 minutes, TLS rows included)")
    p("scripts/bench --quick    # smoke: a minute, report in .tidepool-dev/bench/report.md")
    p("scripts/bench --quick --tls   # the smoke with the TLS targets too")
    p("scripts/bench --help     # options: rounds, duration, clients, targets, --perf, ...")
    p("scripts/bench-failover-pgpool --runs 5   # Pgpool-II's failover outage alone")
    p("```")
    p("")
    p("Raw numbers of the last run: `.tidepool-dev/bench/results.csv` (one line per pgbench run).")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
