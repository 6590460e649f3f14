"""Processes the harness starts, and what /proc and perf say about them.

Every figure of a proxy is the sum over all its processes (nginx master and
worker, both ghostunnels) and, for context switches, all their threads. This
module must never signal a process it did not start.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def children(pid):
    """All descendants of pid (needs /proc/<pid>/task/<tid>/children)."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            for kid in Path(f"/proc/{pid}/task/{tid}/children").read_text().split():
                out.append(int(kid))
                out.extend(children(int(kid)))
    except OSError:
        pass
    return out


def cpu_ticks(pids):
    """utime + stime of the processes, in clock ticks (/proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total


def status_sum(pids, key):
    """Sum of a /proc/<pid>/status value (e.g. VmRSS in KiB) over processes."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                total += int(line.split()[1])
    return total


def context_switches(pids):
    """Voluntary + nonvoluntary context switches over every thread."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue  # the thread ended meanwhile
            for line in text.splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    total += int(line.split()[1])
    return total


def counters(pids):
    """One snapshot of the counters a measurement takes deltas of."""
    return {"ticks": cpu_ticks(pids), "ctxsw": context_switches(pids), "t": time.monotonic()}


class Service:
    """A process we started, pinned to CPUs, its output in a log file."""

    def __init__(self, name, argv, cpus, logfile, env=None):
        self.name = name
        self.logfile = open(logfile, "ab")
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpus] + [str(a) for a in argv], stdout=self.logfile,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.pid = self.proc.pid  # taskset execs the program: same pid

    def pids(self):
        return [self.pid] + children(self.pid)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ({self.pid}) ignored SIGTERM, killing it")
                self.proc.kill()
                self.proc.wait()
        self.logfile.close()


class SyscallCounter:
    """`perf stat -e raw_syscalls:sys_enter` attached to running processes.

    `available()` says whether perf can count here; when it cannot, the
    reason is kept and the figure is reported as null."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.reason = None
        if not shutil.which("perf"):
            self.reason = "perf not installed"

    def available(self):
        return self.reason is None

    def start(self, pids, name):
        self.out = self.out_dir / f"perf-stat-{name}.csv"
        self.proc = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p",
             ",".join(map(str, pids)), "-o", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)  # attached before the load starts
        if self.proc.poll() is not None:
            self.reason = f"perf stat exited: {self.proc.stderr.read().decode()[:200].strip()}"

    def stop(self):
        """Returns the count, or None (and sets the reason) if perf could not count."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)
        if self.reason:
            return None
        if not self.out.exists():
            err = self.proc.stderr.read().decode()[:200].strip()
            self.reason = f"perf stat wrote no file (exit {self.proc.returncode}): {err}"
            return None
        for line in self.out.read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2] == "raw_syscalls:sys_enter":
                try:
                    return int(float(fields[0]))
                except ValueError:
                    self.reason = f"perf stat: {fields[0]} (tracepoints not readable here?)"
                    return None
        self.reason = "perf stat wrote no count"
        return None
