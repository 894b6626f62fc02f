#!/usr/bin/env python3
"""Reads the nginx access log of one run of benches/compare and audits it.

    python audit.py ACCESS_LOG [DELAY_MS]

Each line is `$msec $request_time $host $status $body_bytes_sent $request_uri`. nginx logs
a request when it is done, so `$msec` is its end (the response handed to the socket) and
`$msec - $request_time` its start (the first bytes of the request read). Both come from
nginx's cached clock, refreshed when epoll returns, in whole milliseconds: a start is never
earlier than the request's arrival and an end never later than the response's last write,
so a gap measured here is never longer than the one the client left.

- rate: requests / (last end - first start), what the server saw of the whole run;
- politeness, per host name: requests sorted by start; a request that starts less than
  DELAY after the end of any earlier one of its host (the latest end so far) is a
  violation (1 ms of slack for the clock's granularity); the smallest such gap is reported.
  This is downpour's definition of the delay (end of a response to the next fetch). The
  weaker rule of Scrapy's DOWNLOAD_DELAY (start of a request to the start of the next) is
  counted too, as start_violations;
- efficiency: the steady-state rate (requests - hosts) / (last start - first start),
  every host's first request needing no wait, over the theoretical hosts / DELAY;
- where that span goes: how far apart the hosts' first requests started, and their last
  ones, and each host's own efficiency, (its requests - 1) x DELAY over the time from its
  first start to its last, summed over the hosts: what is lost between a host's requests,
  where the span also counts what is lost before a host's first one.
"""

import sys
from collections import defaultdict

TOLERANCE_MS = 1


def parse(path):
    """Returns [(host, start_ms, end_ms, status, uri)], robots.txt left out."""
    entries = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6:
                continue
            msec, rt, host, status, _bytes, uri = parts[:6]
            if uri == "/robots.txt":
                continue
            end = round(float(msec) * 1000)
            start = end - round(float(rt) * 1000)
            entries.append((host, start, end, int(status), uri))
    return entries


def summary(entries):
    if not entries:
        return {"requests": 0, "ok": 0, "span_s": 0.0, "rate": 0.0, "hosts": 0}
    first = min(e[1] for e in entries)
    last_end = max(e[2] for e in entries)
    span = max(last_end - first, 1) / 1000
    return {
        "requests": len(entries),
        "ok": sum(1 for e in entries if e[3] == 200),
        "span_s": span,
        "rate": len(entries) / span,
        "hosts": len({e[0] for e in entries}),
    }


def politeness(entries, delay_ms):
    by_host = defaultdict(list)
    for host, start, end, _status, _uri in entries:
        by_host[host].append((start, end))
    violations, min_gap = 0, None
    start_violations = 0  # the weaker rule of Scrapy's DOWNLOAD_DELAY: start to start
    for reqs in by_host.values():
        reqs.sort()
        latest_end = previous_start = None
        for start, end in reqs:
            if latest_end is not None:
                gap = start - latest_end
                min_gap = gap if min_gap is None else min(min_gap, gap)
                if gap + TOLERANCE_MS < delay_ms:
                    violations += 1
                if start - previous_start + TOLERANCE_MS < delay_ms:
                    start_violations += 1
            latest_end = end if latest_end is None else max(latest_end, end)
            previous_start = start
    hosts = len(by_host)
    starts = [e[1] for e in entries]
    span_ms = max(starts) - min(starts) if starts else 0
    steady = (len(entries) - hosts) / (span_ms / 1000) if span_ms > 0 else 0.0
    theoretical = hosts / (delay_ms / 1000) if hosts else 0.0
    firsts = [reqs[0][0] for reqs in by_host.values()]
    lasts = [reqs[-1][0] for reqs in by_host.values()]
    own_span = sum(reqs[-1][0] - reqs[0][0] for reqs in by_host.values())
    own_waits = sum(len(reqs) - 1 for reqs in by_host.values()) * delay_ms
    return {
        "span_ms": span_ms,
        "first_spread_ms": max(firsts) - min(firsts) if firsts else 0,
        "last_spread_ms": max(lasts) - min(lasts) if lasts else 0,
        "per_host_efficiency": own_waits / own_span if own_span > 0 else 0.0,
        "violations": violations,
        "start_violations": start_violations,
        "min_gap_ms": min_gap,
        "steady_rate": steady,
        "theoretical": theoretical,
        "efficiency": steady / theoretical if theoretical else 0.0,
    }


if __name__ == "__main__":
    entries = parse(sys.argv[1])
    print(summary(entries))
    if len(sys.argv) > 2:
        print(politeness(entries, float(sys.argv[2])))
