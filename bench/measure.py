"""What one arm is measured on in one round, in this order:

probe (1 request), warm-up, saturation (req/s, CPU and context switches per
request, core utilisation), a syscall count (perf stat, a separate run so the
tracepoint costs nothing in the timed one), fixed rate (p50/p99/p99.9 and
CPU per request), new connections (conn/s, CPU per connection), idle
connections (RSS per connection). For the gateway, the audit file must then
hold exactly one allow record per successful request.
"""

import json
import subprocess
import time

from arms import Arm, CONF
from procs import CLK_TCK, SyscallCounter, counters, log, status_sum

HEADERS = [
    "Accept: application/json, text/event-stream",
    "MCP-Protocol-Version: 2026-07-28",
    "Mcp-Method: tools/call",
    "Mcp-Name: get_weather",
]


def loadgen(env, port, mode, stdin=False, **flags):
    """Runs the load generator on the load CPUs; returns its JSON (or, with
    stdin=True, the running process for the idle mode)."""
    c = env.certs
    argv = ["taskset", "-c", env.a.load_cpus, env.a.loadgen, "-mode", mode,
            "-addr", f"127.0.0.1:{port}", "-cert", c / "agent.pem", "-key", c / "agent.key",
            "-cacert", c / "bundle.pem", "-body", CONF / "request.json",
            "-expect", CONF / "response.json"]
    for h in HEADERS:
        argv += ["-H", h]
    for k, v in flags.items():
        argv += [f"-{k}", v]
    argv = [str(x) for x in argv]
    if stdin:
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def measured(arm, run, requests):
    """Runs run() and adds the arm's CPU, utilisation and context switches
    per request to its result (and the upstream's CPU per request). The
    gateway's figures are read after its audit writer has caught up."""
    pids, up = arm.pids(), arm.env.upstream.pids()
    c0, u0 = counters(pids), counters(up)
    res = run()
    if arm.audit is not None:
        arm.wait_audit(arm.sent_ok + res["ok"])
    c1, u1 = counters(pids), counters(up)
    n = max(requests(res), 1)
    cpu_s = (c1["ticks"] - c0["ticks"]) / CLK_TCK
    res["cpu_s"] = cpu_s
    res["cpu_us_per_req"] = cpu_s * 1e6 / n
    res["core_util"] = cpu_s / max(c1["t"] - c0["t"], 1e-9)
    res["ctxsw_per_req"] = (c1["ctxsw"] - c0["ctxsw"]) / n
    res["upstream_cpu_us_per_req"] = (u1["ticks"] - u0["ticks"]) / CLK_TCK * 1e6 / n
    arm.sent_ok += res["ok"]
    return res


def syscalls(arm, n, conns):
    """Syscalls per request of the arm's processes over a keep-alive run."""
    counter = SyscallCounter(arm.dir)
    if not counter.available():
        return {"syscalls_per_req": None, "reason": counter.reason}
    counter.start(arm.pids(), arm.name)
    res = loadgen(arm.env, arm.port, "sat", n=n, c=conns)
    count = counter.stop()
    arm.sent_ok += res["ok"]
    return {"requests": n, "bad": res["bad"], "ok": res["ok"], "syscalls": count,
            "syscalls_per_req": None if count is None else count / n, "reason": counter.reason}


def idle(arm, n, settle):
    """RSS growth per idle mTLS connection (one request each, then held)."""
    before = status_sum(arm.pids(), "VmRSS")
    p = loadgen(arm.env, arm.port, "idle", stdin=True, n=n, c=8)
    try:
        opened = json.loads(p.stdout.readline())
        time.sleep(settle)
        held = status_sum(arm.pids(), "VmRSS")
        p.stdin.write("check\n")
        p.stdin.flush()
        alive = json.loads(p.stdout.readline())["alive"]
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    arm.sent_ok += opened["ok"]
    return {"connections": n, "ok": opened["ok"], "bad": opened["bad"],
            "error_samples": opened["error_samples"], "open_s": opened["elapsed_s"],
            "rss_before_kib": before, "rss_idle_kib": held, "alive_at_measure": alive,
            "kib_per_conn": (held - before) / max(opened["ok"], 1)}


def probe(arm):
    res = loadgen(arm.env, arm.port, "sat", n=1, c=1)
    arm.sent_ok += res["ok"]
    return {"ok": res["ok"] == 1 and res["bad"] == 0, "statuses": res["statuses"],
            "error_samples": res["error_samples"]}


def run_arm(env, name, rnd, plan):
    """Starts the arm, measures it, stops it; returns its record."""
    arm = Arm(env, name, rnd)
    arm.sent_ok = 0  # successful requests the gateway must have audited
    log(f"round {rnd}: {name}")
    env.fresh_upstream(arm.dir.name)
    arm.start()
    try:
        out = measure_arm(arm, plan)
        arm.check_alive()
        out["processes"] = len(arm.pids())
        out["threads"] = status_sum(arm.pids(), "Threads")
        if arm.audit is not None:
            out["audit"] = audit_check(arm)
            arm.audit.unlink()  # large in a full run; the counts are kept
    finally:
        arm.stop()
    return out


def measure_arm(arm, plan):
    a, name = arm.env.a, arm.name
    out = {"arm": name, "round": arm.round, "probe": probe(arm)}
    if not out["probe"]["ok"]:
        log(f"  probe FAILED: {out['probe']}")
    warm = loadgen(arm.env, arm.port, "sat", n=a.warmup, c=a.conns)
    arm.sent_ok += warm["ok"]
    out["warmup_bad"] = warm["bad"]
    if name not in plan:  # sized in the first round, then the same every round
        plan[name] = max(a.min_sat, int(warm["per_s"] * a.sat_secs / 1000) * 1000)
    sat = measured(arm, lambda: loadgen(arm.env, arm.port, "sat", n=plan[name], c=a.conns),
                   lambda r: r["requests"])
    sat["rss_kib"] = status_sum(arm.pids(), "VmRSS")
    out["saturation"] = sat
    log(f"  saturation: {sat['per_s']:.0f} req/s, {sat['cpu_us_per_req']:.1f} us/req, "
        f"util {sat['core_util']:.2f}, {sat['ctxsw_per_req']:.2f} ctxsw/req, bad {sat['bad']}")
    out["syscalls"] = syscalls(arm, a.syscall_requests, a.conns)
    log(f"  syscalls/req: {out['syscalls']['syscalls_per_req']} {out['syscalls']['reason'] or ''}")
    rate = measured(arm, lambda: loadgen(arm.env, arm.port, "rate", rate=a.rate, c=a.conns,
                                         duration=f"{a.rate_secs}s"),
                    lambda r: r["requests"])
    out["fixed_rate"] = rate
    log(f"  {a.rate}/s: p50 {rate['p50_ms']:.3f} ms, p99 {rate['p99_ms']:.3f} ms, "
        f"{rate['cpu_us_per_req']:.1f} us/req, bad {rate['bad']}")
    conn = measured(arm, lambda: loadgen(arm.env, arm.port, "conn", n=a.conn_requests,
                                         c=a.conns), lambda r: r["requests"])
    out["new_conns"] = conn
    log(f"  new conns: {conn['per_s']:.0f}/s, {conn['cpu_us_per_req']:.0f} us/conn, "
        f"util {conn['core_util']:.2f}, bad {conn['bad']}")
    out["idle"] = idle(arm, a.idle, a.idle_settle)
    log(f"  {a.idle} idle conns: {out['idle']['kib_per_conn']:.1f} KiB/conn, "
        f"alive {out['idle']['alive_at_measure']}, bad {out['idle']['bad']}")
    return out


def audit_check(arm):
    """The audit file must hold one allow record per successful request and
    nothing else but the chain's own lines (genesis, checkpoints)."""
    counts = arm.wait_audit(arm.sent_ok)
    other = {k: v for k, v in counts.items() if k not in ("allow", "chain")}
    ok = counts.get("allow", 0) == arm.sent_ok and not other
    log(f"  audit: {counts.get('allow', 0)} allow records for {arm.sent_ok} requests, "
        f"other {other}: {'ok' if ok else 'WRONG'}")
    return {"expected_allow": arm.sent_ok, "counts": counts, "ok": ok}
