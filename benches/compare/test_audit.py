#!/usr/bin/env python3
"""Tests of what the comparison's verdicts rest on: audit.py, the judge of every polite row,
on logs with known answers in nginx's format; how `run` picks a round and says met or
missed; and the URL lists of urls.py.

    python3 benches/compare/test_audit.py
"""

import importlib.machinery
import importlib.util
import os
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import audit  # noqa: E402
import urls  # noqa: E402


def load_run():
    """The `run` script as a module (its name has no .py); `main` is not called."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run")
    loader = importlib.machinery.SourceFileLoader("compare_run", path)
    spec = importlib.util.spec_from_loader("compare_run", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


run = load_run()

DELAY = 100


def line(host, start_ms, end_ms, uri="/p/0", status=200):
    """An access log line as the bench's nginx writes it: `$msec $request_time $host
    $status $body_bytes_sent $request_uri`, times in seconds with milliseconds."""
    return f"{end_ms / 1000:.3f} {(end_ms - start_ms) / 1000:.3f} {host} {status} 256 {uri}\n"


def parse_log(text):
    """The audit's entries of an access log with this text, through a real file."""
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        return audit.parse(path)
    finally:
        os.unlink(path)


def entries(*requests):
    """(host, start_ms, end_ms) → the audit's entries."""
    return parse_log("".join(line(host, start, end, uri=f"/p/{i}")
                             for i, (host, start, end) in enumerate(requests)))


def paced(host, first_start, count, gap=DELAY, duration=0):
    """`count` requests to `host`, each `gap` ms after the end of the one before."""
    out, start = [], first_start
    for _ in range(count):
        out.append((host, start, start + duration))
        start += duration + gap
    return out


# Wall-clock milliseconds, as nginx logs them, so that rounding is exercised as in a run.
T0 = 1_795_658_531_000


class Parse(unittest.TestCase):
    def test_start_is_the_end_less_the_request_time(self):
        [e] = entries(("127.0.0.1", T0 + 12, T0 + 47))
        self.assertEqual(e, ("127.0.0.1", T0 + 12, T0 + 47, 200, "/p/0"))

    def test_robots_txt_and_short_lines_are_left_out(self):
        got = parse_log(line("127.0.0.1", T0, T0 + 1, uri="/robots.txt")
                        + "1795658531.394 0.000 127.0.0.1\n"
                        + line("127.0.0.1", T0 + 5, T0 + 6, uri="/p/1", status=404))
        self.assertEqual(got, [("127.0.0.1", T0 + 5, T0 + 6, 404, "/p/1")])


class Summary(unittest.TestCase):
    def test_rate_is_requests_over_first_start_to_last_end(self):
        s = audit.summary(entries(("a", T0, T0 + 10), ("b", T0 + 5, T0 + 250), ("a", T0 + 200, T0 + 240)))
        self.assertEqual(s["requests"], 3)
        self.assertEqual(s["hosts"], 2)
        self.assertAlmostEqual(s["span_s"], 0.25)
        self.assertAlmostEqual(s["rate"], 12.0)

    def test_an_empty_log_has_no_rate(self):
        self.assertEqual(audit.summary([])["rate"], 0.0)


class Politeness(unittest.TestCase):
    def test_a_perfect_run_is_fully_efficient(self):
        log = paced("a", T0, 10) + paced("b", T0, 10)
        p = audit.politeness(entries(*log), DELAY)
        self.assertEqual(p["violations"], 0)
        self.assertEqual(p["start_violations"], 0)
        self.assertEqual(p["min_gap_ms"], DELAY)
        self.assertEqual(p["span_ms"], 900)
        # (20 requests - 2 hosts) / 0.9 s over 2 hosts / 0.1 s
        self.assertAlmostEqual(p["steady_rate"], 20.0)
        self.assertAlmostEqual(p["theoretical"], 20.0)
        self.assertAlmostEqual(p["efficiency"], 1.0)
        self.assertAlmostEqual(p["per_host_efficiency"], 1.0)

    def test_a_late_host_costs_the_whole_span(self):
        # Each host keeps its pace; the second starts 50 ms late and so ends 50 ms late.
        log = paced("a", T0, 10) + paced("b", T0 + 50, 10)
        p = audit.politeness(entries(*log), DELAY)
        self.assertEqual((p["first_spread_ms"], p["last_spread_ms"], p["span_ms"]), (50, 50, 950))
        self.assertAlmostEqual(p["per_host_efficiency"], 1.0)
        self.assertAlmostEqual(p["efficiency"], 900 / 950)

    def test_response_times_lengthen_each_hosts_cycle(self):
        # The delay runs from a response's end: a 5 ms response makes each cycle 105 ms.
        p = audit.politeness(entries(*paced("a", T0, 11, duration=5)), DELAY)
        self.assertEqual(p["span_ms"], 1050)
        self.assertAlmostEqual(p["per_host_efficiency"], 1000 / 1050)
        self.assertAlmostEqual(p["efficiency"], 1000 / 1050)
        self.assertEqual(p["violations"], 0)

    def test_a_short_gap_is_a_violation_beyond_the_clocks_millisecond(self):
        # 99 ms may be 100 ms on a clock in whole milliseconds; 98 ms cannot be.
        within = paced("a", T0, 2, gap=99)
        beyond = paced("b", T0, 2, gap=98)
        p = audit.politeness(entries(*within), DELAY)
        self.assertEqual((p["violations"], p["min_gap_ms"]), (0, 99))
        p = audit.politeness(entries(*within, *beyond), DELAY)
        self.assertEqual((p["violations"], p["min_gap_ms"]), (1, 98))

    def test_the_gap_runs_from_the_latest_end_of_a_host(self):
        # Two requests at once to one host, the first with a long response: the third
        # starts 100 ms after the second's end but only 40 ms after the first's.
        log = [("a", T0, T0 + 160), ("a", T0 + 1, T0 + 100), ("a", T0 + 200, T0 + 201)]
        p = audit.politeness(entries(*log), DELAY)
        # The second starts before the first ends (gap -159) and the third 40 ms after it.
        self.assertEqual(p["violations"], 2)
        self.assertEqual(p["min_gap_ms"], -159)

    def test_scrapys_rule_counts_start_to_start_only(self):
        # Starts 100 ms apart but 30 ms responses: downpour's rule is broken, Scrapy's kept.
        log = [("a", T0, T0 + 30), ("a", T0 + 100, T0 + 130), ("a", T0 + 200, T0 + 230)]
        p = audit.politeness(entries(*log), DELAY)
        self.assertEqual((p["violations"], p["start_violations"], p["min_gap_ms"]), (2, 0, 70))
        log = [("a", T0, T0 + 1), ("a", T0 + 50, T0 + 51)]
        p = audit.politeness(entries(*log), DELAY)
        self.assertEqual((p["violations"], p["start_violations"]), (1, 1))

    def test_hosts_are_audited_apart(self):
        # Two hosts fetched at once is no violation: the delay is per host.
        log = [("a", T0, T0 + 1), ("b", T0, T0 + 1), ("a", T0 + 101, T0 + 102), ("b", T0 + 101, T0 + 102)]
        p = audit.politeness(entries(*log), DELAY)
        self.assertEqual((p["violations"], p["min_gap_ms"]), (0, 100))


def polite_round(efficiency, violations=0, min_gap=100, notes=()):
    return {"client": "downpour (tokio)", "section": "polite, 1,000 hosts", "ran": "the list",
            "efficiency": efficiency, "violations": violations, "min_gap_ms": min_gap,
            "notes": list(notes)}


class Verdicts(unittest.TestCase):
    def test_the_median_round_stands_for_the_rounds_but_not_for_their_violations(self):
        rounds = [polite_round(0.97), polite_round(0.93, violations=2, min_gap=40, notes=["3 failed"]),
                  polite_round(0.95), polite_round(0.99), polite_round(0.94)]
        m, ran = run.median_round(rounds)
        self.assertEqual(m["efficiency"], 0.95)
        # A violation in any round counts, whichever round is shown.
        self.assertEqual((m["violations"], m["min_gap_ms"]), (2, 40))
        self.assertEqual(m["notes"], ["round 2: 3 failed"])
        self.assertEqual(m["rounds"], [0.97, 0.93, 0.95, 0.99, 0.94])
        self.assertIn("median of 5 rounds (93.0% to 99.0%", ran)
        self.assertEqual(rounds[2]["violations"], 0, "the rounds themselves are left as they were")

    def test_an_even_count_shows_the_lower_middle_round(self):
        m, _ = run.median_round([polite_round(0.96), polite_round(0.94), polite_round(0.95), polite_round(0.97)])
        self.assertEqual(m["efficiency"], 0.95)

    def test_one_round_is_shown_as_it_is(self):
        only = polite_round(0.9)
        self.assertEqual(run.median_round([only]), (only, ""))

    def verdicts(self, results, limit):
        return [line for line in run.targets(results, limit) if line.startswith("- ")]

    def fifo(self, client, rate):
        return {"section": "fifo, 200,000 URLs over 64 hosts", "client": client, "rate": rate}

    def test_a_ratio_just_under_a_target_is_cut_not_rounded_up(self):
        results = [self.fifo("downpour (tokio)", 5996), self.fifo("Scrapy", 100), self.fifo("reqwest loop", 5451)]
        lines = self.verdicts(results, 10_000)
        self.assertIn("0.599 (target ≥ 0.600) **missed**", lines[0])
        self.assertIn("59.9× (target ≥ 50.0×) **met**", lines[1])
        self.assertIn("1.09× (target ≥ 1.10×) **missed**", lines[2])  # 1.09998
        results[0]["rate"] = 6000
        lines = self.verdicts(results, 10_000)
        self.assertIn("0.600 (target ≥ 0.600) **met**", lines[0])
        self.assertIn("1.10× (target ≥ 1.10×) **met**", lines[2])

    def test_figures_are_cut_to_the_digits_shown(self):
        self.assertEqual(run.fmt_pct(0.9496), "94.9%")
        self.assertEqual(run.fmt_pct(0.95), "95.0%")
        self.assertEqual(run.fmt_ratio(0.29, 2), "0.29")  # 28.999999999999996 hundredths
        self.assertEqual(run.fmt_ratio(0.636, 2), "0.63")
        self.assertEqual(run.fmt_ratio(108.66, 1), "108.6")

    def test_a_peer_not_measured_misses_its_target(self):
        lines = self.verdicts([self.fifo("downpour (tokio)", 6000)], None)
        self.assertEqual(sum("not measured" in line and "**missed**" in line for line in lines), 3)

    def test_a_polite_row_needs_95_percent_and_no_violation(self):
        rows = [polite_round(0.95), polite_round(0.9496), polite_round(0.99, violations=1)]
        for r, client in zip(rows, ("downpour (tokio)", "downpour (smol)", "downpour (blocking)")):
            r["client"] = client
        lines = [line for line in self.verdicts(rows, None) if "efficient" in line]
        self.assertEqual([line.endswith("**met**") for line in lines], [True, False, False])
        self.assertIn("94.9% efficient", lines[1])
        # Scrapy's polite rows are shown in the table but have no target.
        scrapy = dict(polite_round(0.5), client="Scrapy")
        self.assertEqual(len([line for line in self.verdicts(rows + [scrapy], None) if "efficient" in line]), 3)


class Lists(unittest.TestCase):
    def test_any_prefix_spreads_over_the_hosts_in_turn(self):
        with tempfile.NamedTemporaryFile("r", suffix=".txt", delete=False) as f:
            path = f.name
        try:
            urls.write(path, 1_200, 300, 8080)
            with open(path) as f:
                lines = f.read().splitlines()
        finally:
            os.unlink(path)
        self.assertEqual(len(lines), 1_200)
        hosts = [u.split("/")[2] for u in lines]
        self.assertEqual(len(set(hosts)), 300)
        self.assertEqual(len(set(hosts[:300])), 300)  # the first 300 URLs: one per host
        self.assertEqual(lines[0], "http://127.1.0.1:8080/p/0")
        self.assertEqual(lines[301], "http://127.1.0.2:8080/p/301")
        self.assertEqual(lines[299], "http://127.1.1.50:8080/p/299")

    def test_up_to_250_hosts_are_127_0_0_n(self):
        self.assertEqual([urls.host(j, 64) for j in (0, 63)], ["127.0.0.1", "127.0.0.64"])


if __name__ == "__main__":
    unittest.main(verbosity=1)
