"""The results: medians over rounds, the Markdown table, the machine and
the versions. Pure functions of the recorded rounds (no process is touched
here), so a results.json can be re-tabled later.
"""

import os
import platform
import statistics
import subprocess
from pathlib import Path

from arms import GATEWAYS

LABELS = {
    "direct": "direct (no proxy)",
    "gateway": "spiffe-mcp-gateway",
    "baseline": "spiffe-mcp-gateway (baseline)",
    "nginx": "nginx",
    "ghostunnel": "ghostunnel (server + client)",
}

# (column title, summary key, format); {rate} and {idle} are filled in.
COLUMNS = [
    ("req/s c={conns}", "rps", ",.0f"),
    ("CPU µs/req sat", "cpu_us_sat", ".1f"),
    ("core util sat", "util_sat", ".2f"),
    ("p50 ms @{rate}/s", "p50_ms", ".3f"),
    ("p99 ms @{rate}/s", "p99_ms", ".3f"),
    ("CPU µs/req @{rate}/s", "cpu_us_rate", ".1f"),
    ("ctx sw/req sat", "ctxsw_sat", ".2f"),
    ("syscalls/req", "syscalls", ".1f"),
    ("new conn/s", "conn_per_s", ",.0f"),
    ("CPU µs/new conn", "cpu_us_conn", ",.0f"),
    ("RSS MiB sat", "rss_mib", ".1f"),
    ("KiB/idle conn ({idle})", "kib_idle", ".1f"),
    ("bad", "bad", "d"),
]

PATHS = {
    "rps": ("saturation", "per_s"),
    "cpu_us_sat": ("saturation", "cpu_us_per_req"),
    "util_sat": ("saturation", "core_util"),
    "ctxsw_sat": ("saturation", "ctxsw_per_req"),
    "upstream_us_sat": ("saturation", "upstream_cpu_us_per_req"),
    "rss_mib": ("saturation", "rss_kib"),
    "syscalls": ("syscalls", "syscalls_per_req"),
    "p50_ms": ("fixed_rate", "p50_ms"),
    "p99_ms": ("fixed_rate", "p99_ms"),
    "p999_ms": ("fixed_rate", "p999_ms"),
    "cpu_us_rate": ("fixed_rate", "cpu_us_per_req"),
    "conn_per_s": ("new_conns", "per_s"),
    "cpu_us_conn": ("new_conns", "cpu_us_per_req"),
    "kib_idle": ("idle", "kib_per_conn"),
    "idle_alive": ("idle", "alive_at_measure"),
}


def dig(record, path):
    for key in path:
        record = record.get(key) if isinstance(record, dict) else None
    return record


def bad_count(r):
    """Failed requests and probes of one round of one arm."""
    bad = 0 if r["probe"]["ok"] else 1
    bad += r["warmup_bad"]
    for part in ("saturation", "syscalls", "fixed_rate", "new_conns", "idle"):
        bad += r.get(part, {}).get("bad", 0)
    return bad


def summarize(rounds, arms):
    """Per arm: median, min, max and every value of each figure; bad and the
    audit check summed over rounds."""
    rows = {}
    for name in arms:
        rs = [r for r in rounds if r["arm"] == name]
        if not rs:
            continue
        row = {}
        for key, path in PATHS.items():
            vals = [v for v in (dig(r, path) for r in rs) if v is not None]
            if key == "rss_mib":
                vals = [v / 1024 for v in vals]
            row[key] = {"median": statistics.median(vals) if vals else None,
                        "min": min(vals, default=None), "max": max(vals, default=None),
                        "all": vals}
        row["bad"] = sum(bad_count(r) for r in rs)
        row["rounds"] = len(rs)
        if name in GATEWAYS:
            row["audit_ok"] = all(r.get("audit", {}).get("ok") for r in rs)
        rows[name] = row
    return rows


def fmt(value, spec):
    return "–" if value is None else format(value, spec)


def table(rows, args):
    """The Markdown table of medians over rounds."""
    titles = [t.format(rate=args.rate, idle=args.idle, conns=args.conns) for t, _, _ in COLUMNS]
    lines = ["| arm | " + " | ".join(titles) + " |",
             "| --- |" + " ---: |" * len(COLUMNS)]
    for name, row in rows.items():
        cells = []
        for _, key, spec in COLUMNS:
            v = row[key]
            cells.append(fmt(v["median"] if isinstance(v, dict) else v, spec))
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def first_line(argv):
    try:
        p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=30)
        text = (p.stdout + p.stderr).strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.SubprocessError) as e:
        return f"? ({e})"


def machine():
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "os": first_line(["sh", "-c", ". /etc/os-release && "
                                                             "echo $PRETTY_NAME"])}


def versions(a, root):
    return {
        "spiffe-mcp-gateway": first_line([a.gateway, "--version"]),
        "baseline": a.baseline and first_line([a.baseline, "--version"]),
        "git": first_line(["git", "-C", root, "describe", "--always", "--dirty"]),
        "ghostunnel": "ghostunnel " + first_line([a.ghostunnel, "--version"]),
        "nginx": first_line([a.nginx, "-v"]),
        "spire": first_line([Path(a.spire_bin) / "spire-server", "--version"]),
        "go": first_line(["go", "version"]),
        "openssl": first_line(["openssl", "version"]),
        "python": platform.python_version(),
    }


def header(doc, args, plan):
    """The lines printed above the table: what ran, where."""
    m = doc["machine"]
    return "\n".join([
        f"spiffe-mcp-gateway benchmark, {doc['started']} .. {doc['finished']}"
        + (" (tiny run: counts too small for the figures to mean anything)" if args.tiny else ""),
        f"machine: {m['cpu']}, {m['cores']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"{m['os']}; load average at start {doc['loadavg_at_start'][0]:.2f}",
        f"gateway {doc['versions']['spiffe-mcp-gateway']} (git {doc['versions']['git']}), "
        f"{doc['versions']['ghostunnel']}, {doc['versions']['nginx']}",
        f"{args.rounds} round(s), arm order rotated each round; medians over rounds. "
        f"Proxy on CPU {args.proxy_cpu}; load generator, upstream and SPIRE on CPU {args.load_cpus}.",
        f"saturation: {args.conns} keep-alive connections, requests per arm {plan}; "
        f"fixed rate: {args.rate}/s for {args.rate_secs} s; new connections: "
        f"{args.conn_requests}; idle: {args.idle} connections.",
        "direct: CPU, context switches, syscalls and RSS are the upstream nginx's own.",
    ])
