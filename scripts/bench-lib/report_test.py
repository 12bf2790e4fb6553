#!/usr/bin/env python3
"""Tests of how scripts/bench's report reads several rounds: the CPU cost
table's medians and the paired per-round ratio. Standard library only:
python3 -m unittest discover -s scripts/bench-lib -p '*_test.py'."""

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402


def row(rnd, tps, status="ok"):
    return {"round": str(rnd), "tps": "" if tps is None else str(tps), "status": status}


def cost(w, t, rnd, cpu, tps=1000.0, **per_txn):
    return {"workload": w, "target": t, "round": rnd, "transactions": 5000, "tps": tps,
            "cpu_us_per_txn": cpu, "per_txn": per_txn}


class PairedRatio(unittest.TestCase):
    def test_rounds_are_matched_by_number(self):
        # The machine's speed moved between rounds: each round's ratio is
        # 0.98, 1.17 and 0.87, so the median is 0.98; the medians' ratio
        # (784 / 900) would say 0.87.
        a = [row(1, 980), row(2, 700), row(3, 784)]
        b = [row(3, 900), row(1, 1000), row(2, 600)]
        self.assertAlmostEqual(report.paired_ratio(a, b), 0.98)

    def test_only_rounds_where_both_succeeded_count(self):
        a = [row(1, 900), row(2, 2000), row(3, None, "error: x")]
        b = [row(1, 1000), row(2, None, "error: y"), row(3, 100)]
        self.assertAlmostEqual(report.paired_ratio(a, b), 0.9)
        self.assertIsNone(report.paired_ratio([row(1, 900)], [row(2, 1000)]))
        self.assertIsNone(report.paired_ratio([], []))

    def test_the_median_of_the_rounds_ratios(self):
        # Ratios 1.0, 3.0, 1.2, 0.9, 1.1: median 1.1 (mean 1.44; the
        # medians' ratio 100 / 100 = 1.0).
        a = [row(1, 100), row(2, 300), row(3, 60), row(4, 90), row(5, 110)]
        b = [row(1, 100), row(2, 100), row(3, 50), row(4, 100), row(5, 100)]
        self.assertAlmostEqual(report.paired_ratio(a, b), 1.1)


class CostSummary(unittest.TestCase):
    def test_medians_and_spread_per_workload_and_proxy(self):
        eff = [
            cost("tpcb", "pgbouncer", 1, 150.0),
            cost("select-simple", "pgbouncer", 1, 18.4, 19000, sendto=2.0, epoll_wait=0.8),
            cost("select-simple", "tidepool-tx", 1, 18.5, 18500, sendto=2.0, epoll_wait=0.5),
            cost("select-simple", "pgbouncer", 2, 21.4, 16000, sendto=2.0, epoll_wait=1.3),
            cost("select-simple", "tidepool-tx", 2, 24.0, 15000, sendto=2.0, epoll_wait=0.7),
            cost("select-simple", "pgbouncer", 3, 21.8, 16500, sendto=2.2, epoll_wait=0.9),
            cost("select-simple", "tidepool-tx", 3, 19.7, 18000, sendto=2.0, epoll_wait=0.6, futex=0.1),
        ]
        out = report.cost_summary(eff)
        # In the report's order (workloads, then proxies), whatever the
        # order measured.
        self.assertEqual([(e["workload"], e["target"]) for e in out],
                         [("select-simple", "pgbouncer"), ("select-simple", "tidepool-tx"), ("tpcb", "pgbouncer")])
        bouncer, tp, tpcb = out
        self.assertEqual(bouncer["runs"], 3)
        self.assertAlmostEqual(bouncer["cpu_us_per_txn"], 21.4)
        self.assertEqual((bouncer["cpu_min"], bouncer["cpu_max"]), (18.4, 21.8))
        self.assertEqual(bouncer["tps"], 16500)
        self.assertAlmostEqual(bouncer["per_txn"]["epoll_wait"], 0.9)  # mean 1.0
        self.assertAlmostEqual(tp["cpu_us_per_txn"], 19.7)
        # A count one run lacks is the median of the runs that have it.
        self.assertAlmostEqual(tp["per_txn"]["futex"], 0.1)
        self.assertEqual(list(tp["per_txn"]), ["sendto", "epoll_wait", "futex"])
        self.assertEqual((tpcb["runs"], tpcb["cpu_us_per_txn"]), (1, 150.0))
        self.assertEqual(report.cost_summary([]), [])


class Report(unittest.TestCase):
    """main() over a run's files: the goal rows read the rounds as above."""

    def run_report(self, results, efficiency, meta="", memory=""):
        d = tempfile.mkdtemp()
        try:
            paths = {}
            for name, text in (("results.csv", results), ("meta.tsv", "rounds\t3\nduration\t5\n" + meta),
                               ("efficiency.jsonl", efficiency), ("memory.jsonl", memory)):
                paths[name] = os.path.join(d, name)
                with open(paths[name], "w") as f:
                    f.write(text)
            argv = ["report.py", "--results", paths["results.csv"], "--meta", paths["meta.tsv"],
                    "--efficiency", paths["efficiency.jsonl"], "--memory", paths["memory.jsonl"]]
            out = io.StringIO()
            with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(out):
                report.main()
            return out.getvalue()
        finally:
            shutil.rmtree(d)

    def test_goal_rows_use_paired_ratios_and_median_cpu(self):
        header = "round,workload,clients,target,tps,n,mean_ms,p50_ms,p95_ms,p99_ms,failed,status\n"
        lines = []
        for rnd, tx, lbp, bouncer in ((1, 1000, 980, 900), (2, 600, 700, 500), (3, 900, 784, 800)):
            for t, v in (("tidepool-tx", tx), ("tidepool-tx-lbp", lbp), ("pgbouncer", bouncer)):
                lines.append("%d,select-simple,16,%s,%d,%d,1.0,0.9,1.5,2.0,0,ok" % (rnd, t, v, v * 5))
        eff = "".join(json.dumps(cost("select-simple", t, r, c)) + "\n" for t, r, c in (
            ("pgbouncer", 1, 20.0), ("tidepool-tx", 1, 30.0), ("pgbouncer", 2, 40.0),
            ("tidepool-tx", 2, 18.0), ("pgbouncer", 3, 22.0), ("tidepool-tx", 3, 20.0)))
        text = self.run_report(header + "\n".join(lines) + "\n", eff)
        lbp = next(l for l in text.splitlines() if l.startswith("| read load balancing on, every read weighted"))
        # Rounds: 0.98, 1.17, 0.87 -> 0.98 (the medians' ratio: 784 / 900 = 0.87).
        self.assertIn("simple/16: 0.98×", lbp)
        self.assertTrue(lbp.endswith("| met |"), lbp)
        cpu = next(l for l in text.splitlines() if l.startswith("| CPU per select-only transaction"))
        # Medians 22.0 and 20.0 (means 27.3 and 22.7; first runs 20 and 30).
        self.assertIn("simple: 1.10×", cpu)
        table = text[text.index("## CPU cost per transaction"):]
        self.assertIn("each of 3 rounds", table.replace("\n", " "))
        self.assertIn("| 20.0 | 18.0–30.0 |", table)

    def test_a_large_idle_run_held_to_the_open_file_limit_says_so(self):
        header = "round,workload,clients,target,tps,n,mean_ms,p50_ms,p95_ms,p99_ms,failed,status\n"
        results = header + "1,select-simple,16,tidepool-tx,1000,5000,1.0,0.9,1.5,2.0,0,ok\n"
        large = {"target": "tidepool-large", "note": "transaction pooling, trust",
                 "clients": {"requested": 50000, "opened": 19957, "failed": 30043,
                             "errors": {"OSError: [Errno 24] Too many open files": 30008}},
                 "before": {"procs": 1, "rss_kb": 27000, "pss_kb": 20000},
                 "after": {"procs": 1, "rss_kb": 60000, "pss_kb": 52000}}
        memory = json.dumps(large) + "\n"
        held = self.run_report(results, "", "nofile_large\t20000\n", memory)
        self.assertIn("held to the machine's limit of 20,000 open files per process", held)
        self.assertIn("(opened: 19,957)", held)
        for meta in ("nofile_large\t60000\n", "nofile_large\tunlimited\n", ""):
            self.assertNotIn("held to the machine's limit", self.run_report(results, "", meta, memory))


if __name__ == "__main__":
    unittest.main()
