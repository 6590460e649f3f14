#!/usr/bin/env python3
"""The project's benchmark harness: what one MCP tool call costs through
spiffe-mcp-gateway, next to a direct call and two plain mTLS proxies (nginx,
ghostunnel), on real SPIRE identities. Run it with scripts/bench, which
builds the tools; docs/performance.md explains every column.

The proxy under test is pinned to one CPU, the load generator, upstream and
SPIRE to the others; each arm is started fresh in every round and rounds
interleave the arms in rotated order. Exits 1 if any request or probe failed
or the gateway's audit file does not hold exactly one allow record per
successful request: a broken harness or gateway, never a slow figure.
"""

import argparse
import datetime as dt
import json
import os
import resource
import signal
import sys
from pathlib import Path

from arms import ARMS, GATEWAYS, ROOT, Env
from measure import run_arm
from procs import log
from report import header, machine, summarize, table, versions

# --tiny: one round, counts just large enough to exercise every step.
TINY = {"rounds": 1, "warmup": 200, "sat_secs": 0.5, "min_sat": 1000, "rate": 200,
        "rate_secs": 2, "syscall_requests": 500, "conn_requests": 200, "idle": 100,
        "idle_settle": 0.2}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gateway", required=True, help="release gateway binary")
    ap.add_argument("--baseline", help="another gateway binary (say, before a change), measured "
                    "as arm `baseline` beside `gateway` in the same run")
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--ghostunnel", required=True)
    ap.add_argument("--nginx", default="/usr/sbin/nginx")
    ap.add_argument("--spire-bin", required=True, help="directory with spire-server, spire-agent")
    ap.add_argument("--results", required=True, help="directory for results.json and table.md")
    ap.add_argument("--tiny", action="store_true", help="one round, tiny counts (CI)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated, from " + ",".join(ARMS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=32, help="keep-alive and new-connection concurrency")
    ap.add_argument("--warmup", type=int, default=5000)
    ap.add_argument("--sat-secs", type=float, default=10, help="saturation run length (sized in round 1)")
    ap.add_argument("--min-sat", type=int, default=20000)
    ap.add_argument("--syscall-requests", type=int, default=20000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--rate-secs", type=int, default=15)
    ap.add_argument("--conn-requests", type=int, default=5000)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--idle-settle", type=float, default=2.0)
    ap.add_argument("--proxy-cpu", help="CPU of the proxy (default: the last one)")
    ap.add_argument("--load-cpus", help="CPUs of everything else (default: all others)")
    a = ap.parse_args(argv)
    if a.tiny:  # presets; an explicit --rate or --rounds still wins
        given = {arg.split("=")[0].lstrip("-").replace("-", "_") for arg in argv}
        for key, value in TINY.items():
            if key not in given:
                setattr(a, key, value)
    a.arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    if a.baseline and "baseline" not in a.arms:
        a.arms.insert(a.arms.index("gateway") + 1 if "gateway" in a.arms else 0, "baseline")
    if "baseline" in a.arms and not a.baseline:
        ap.error("--arms baseline: needs --baseline BIN")
    unknown = [x for x in a.arms if x not in ARMS + ["baseline"]]
    if unknown or not a.arms:
        ap.error(f"--arms: unknown {unknown}; choose from {','.join(ARMS)},baseline")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 and not (a.proxy_cpu and a.load_cpus):
        ap.error("needs 2 CPUs: the proxy on one, the load on the others")
    a.proxy_cpu = a.proxy_cpu or str(cpus[-1])
    a.load_cpus = a.load_cpus or ",".join(str(c) for c in cpus if str(c) != a.proxy_cpu)
    return a


def raise_nofile():
    """Idle connections need file descriptors; children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 1 << 20), hard))


def run_rounds(env, a, doc, results):
    """Rounds interleave the arms, the order rotated by one each round."""
    plan = {}
    for rnd in range(1, a.rounds + 1):
        shift = (rnd - 1) % len(a.arms)
        order = a.arms[shift:] + a.arms[:shift]
        log(f"=== round {rnd}/{a.rounds}: {' '.join(order)}")
        for name in order:
            rec = run_arm(env, name, rnd, plan)
            rec["loadavg"] = os.getloadavg()
            doc["rounds"].append(rec)
            (results / "results.json").write_text(json.dumps(doc, indent=1))
    return plan


def failures(rows):
    out = [f"{name}: {row['bad']} failed requests or probes" for name, row in rows.items()
           if row["bad"]]
    for name in GATEWAYS:
        if rows.get(name, {}).get("audit_ok") is False:
            out.append(f"{name}: the audit file does not hold exactly one allow record per request")
    return out


def main(argv):
    a = parse_args(argv)
    # The orchestrator and everything it starts run off the proxy's CPU
    # unless pinned to it explicitly.
    os.sched_setaffinity(0, {int(c) for c in a.load_cpus.split(",")})
    raise_nofile()
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    run_dir = results / "run"
    doc = {"started": dt.datetime.now().isoformat(timespec="seconds"),
           "args": {k: v for k, v in vars(a).items()}, "machine": machine(),
           "versions": versions(a, ROOT), "loadavg_at_start": os.getloadavg(), "rounds": []}
    log(f"results to {results}; processes, configs and logs in {run_dir}")
    if doc["loadavg_at_start"][0] > 0.5:
        log(f"note: load average {doc['loadavg_at_start'][0]:.2f}: other work is running")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = Env(a, run_dir)
    ok = False
    try:
        env.start()
        plan = run_rounds(env, a, doc, results)
        ok = True
    finally:
        env.stop(keep_spire_dir=not ok)
        if not ok:
            log(f"failed; SPIRE state and logs kept in {env.spire}")
    rows = summarize(doc["rounds"], a.arms)
    doc["summary"] = rows
    doc["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    text = header(doc, a, plan) + "\n\n" + table(rows, a) + "\n"
    reasons = sorted({r["syscalls"]["reason"] for r in doc["rounds"] if r["syscalls"]["reason"]})
    if reasons:
        text += "\nsyscalls/req not counted: " + "; ".join(reasons) + "\n"
    problems = failures(rows)
    doc["failures"] = problems
    (results / "results.json").write_text(json.dumps(doc, indent=1))
    (results / "table.md").write_text(text)
    print("\n" + text)
    for p in problems:
        log(f"FAILED: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
