#!/usr/bin/env python3
"""Tests of how scripts/bench's report reads several rounds: the CPU cost
table's medians and the paired per-round ratio. Standard library only:
python3 -m unittest discover -s scripts/bench-lib -p '*_test.py'."""

import os
import sys
import unittest

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
        self.assertAlmostEqual(report.ratio(784, 900), 0.8711, places=4)

    def test_only_rounds_where_both_succeeded_count(self):
        a = [row(1, 900), row(2, 2000), row(3, None, "error: x")]
        b = [row(1, 1000), row(2, None, "error: y"), row(3, 100)]
        self.assertAlmostEqual(report.paired_ratio(a, b), 0.9)
        self.assertIsNone(report.paired_ratio([row(1, 900)], [row(2, 1000)]))
        self.assertIsNone(report.paired_ratio([], []))

    def test_the_median_of_the_rounds_ratios(self):
        a = [row(1, 100), row(2, 300), row(3, 120), row(4, 90), row(5, 100)]
        b = [row(1, 100)] + [row(k, 100) for k in (2, 3, 4, 5)]
        self.assertAlmostEqual(report.paired_ratio(a, b), 1.0)


class CostSummary(unittest.TestCase):
    def test_medians_and_spread_per_workload_and_proxy(self):
        eff = [
            cost("select-simple", "pgbouncer", 1, 18.4, 19000, sendto=2.0, epoll_wait=0.8),
            cost("select-simple", "tidepool-tx", 1, 18.5, 18500, sendto=2.0, epoll_wait=0.5),
            cost("select-simple", "pgbouncer", 2, 21.4, 16000, sendto=2.0, epoll_wait=1.0),
            cost("select-simple", "tidepool-tx", 2, 24.0, 15000, sendto=2.0, epoll_wait=0.7),
            cost("select-simple", "pgbouncer", 3, 21.8, 16500, sendto=2.2, epoll_wait=0.9),
            cost("select-simple", "tidepool-tx", 3, 19.7, 18000, sendto=2.0, epoll_wait=0.6, futex=0.1),
            cost("tpcb", "pgbouncer", 1, 150.0),
        ]
        out = report.cost_summary(eff)
        self.assertEqual([(e["workload"], e["target"]) for e in out],
                         [("select-simple", "pgbouncer"), ("select-simple", "tidepool-tx"), ("tpcb", "pgbouncer")])
        bouncer, tp, tpcb = out
        self.assertEqual(bouncer["runs"], 3)
        self.assertAlmostEqual(bouncer["cpu_us_per_txn"], 21.4)
        self.assertEqual((bouncer["cpu_min"], bouncer["cpu_max"]), (18.4, 21.8))
        self.assertEqual(bouncer["tps"], 16500)
        self.assertAlmostEqual(bouncer["per_txn"]["epoll_wait"], 0.9)
        self.assertAlmostEqual(tp["cpu_us_per_txn"], 19.7)
        # A count one run lacks is the median of the runs that have it.
        self.assertAlmostEqual(tp["per_txn"]["futex"], 0.1)
        self.assertEqual(list(tp["per_txn"]), ["sendto", "epoll_wait", "futex"])
        self.assertEqual((tpcb["runs"], tpcb["cpu_us_per_txn"]), (1, 150.0))
        self.assertEqual(report.cost_summary([]), [])


if __name__ == "__main__":
    unittest.main()
