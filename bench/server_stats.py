"""bench/server.py's measurements of the server from outside: CPU time from /proc, and its Prometheus /metrics
parsed, differenced between two snapshots and summarised per stage."""

from __future__ import annotations

import math
import os
import platform
import re
import time
from pathlib import Path

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its running children (the session processes),
    seconds; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return own + sum(proc_cpu_s(child) for child in _children(pid))


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for task in tasks for c in (task / "children").read_text().split()]
    except OSError:
        return []


def cpu_jiffies() -> dict[int, tuple[float, float]]:
    """(busy, total) jiffies of each CPU from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        total = sum(values[:8])
        out[int(name[3:])] = (float(total - idle), float(total))
    return out


def steal_jiffies() -> tuple[float, float]:
    """(steal, total) jiffies of all CPUs from /proc/stat's first line: time the hypervisor gave another guest."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return float(fields[7]) if len(fields) > 7 else 0.0, float(sum(fields[:8]))


def busy_cores(a: dict[int, tuple[float, float]], b: dict[int, tuple[float, float]],
               cpus: list[int] | None = None) -> float:
    """Cores' worth of busy time of ``cpus`` (all when None) between two cpu_jiffies() readings."""
    keep = [c for c in (cpus if cpus is not None else b) if c in a and c in b]
    return sum((b[c][0] - a[c][0]) / max(b[c][1] - a[c][1], 1.0) for c in keep)


def parse_cpus(text: str) -> list[int]:
    """'0,1' or '2-15' or '0-1,4' -> sorted CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    if not cpus:
        raise ValueError(f"no CPUs in {text!r}")
    return sorted(cpus)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def histogram_delta(a: dict, b: dict, name: str, **labels: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of ``name`` observed between snapshots a and b."""
    buckets = []
    for (n, lab), value in b.items():
        d = dict(lab)
        if n != f"{name}_bucket" or any(d.get(k) != v for k, v in labels.items()):
            continue
        le = d["le"]
        buckets.append((math.inf if le == "+Inf" else float(le), value - a.get((n, lab), 0.0)))
    return sorted(buckets)


def bucket_quantile_ms(buckets: list[tuple[float, float]], q: float) -> float | str | None:
    """Upper bound (ms) of the bucket holding quantile ``q`` (q=1: the largest observation's bucket)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    for le, count in buckets:
        if count >= target - 1e-9:
            return round(le * 1000, 3) if math.isfinite(le) else f"> {buckets[-2][0] * 1000:g}"
    return None


def stage_summary(a: dict, b: dict) -> dict:
    stages = sorted({dict(lab)["stage"] for (n, lab) in b if n == "emo_stream_stage_latency_seconds_count"})
    out = {}
    for stage in stages:
        count = metric(b, "emo_stream_stage_latency_seconds_count", stage=stage) - \
            metric(a, "emo_stream_stage_latency_seconds_count", stage=stage)
        total = metric(b, "emo_stream_stage_latency_seconds_sum", stage=stage) - \
            metric(a, "emo_stream_stage_latency_seconds_sum", stage=stage)
        if count <= 0:
            continue
        buckets = histogram_delta(a, b, "emo_stream_stage_latency_seconds", stage=stage)
        out[stage] = {"mean_ms": round(total / count * 1000, 3), "p95_ms_at_most": bucket_quantile_ms(buckets, 0.95),
                      "count": int(count)}
    return out


class Snapshot:
    def __init__(self, base: str | None, server_pid: int = 0, client_pids: list[int] | None = None) -> None:
        if base is None:  # from_dict fills it
            return
        self.t = time.monotonic()
        self.server_cpu = proc_cpu_s(server_pid)
        self.client_cpu = sum(proc_cpu_s(p) for p in client_pids or [])
        self.cpus = cpu_jiffies()
        self.parent_cpu = sum(os.times()[:2])
        self.metrics = parse_metrics(httpx.get(f"{base}/metrics", timeout=10).text)

    def to_dict(self) -> dict:
        return {"t": self.t, "server_cpu": self.server_cpu, "client_cpu": self.client_cpu, "parent_cpu": self.parent_cpu,
                "cpus": {str(c): list(v) for c, v in self.cpus.items()},
                "metrics": [[name, [list(kv) for kv in labels], value] for (name, labels), value in self.metrics.items()]}

    @classmethod
    def from_dict(cls, d: dict) -> Snapshot:
        snap = cls(None)
        snap.t, snap.server_cpu, snap.client_cpu, snap.parent_cpu = d["t"], d["server_cpu"], d["client_cpu"], d["parent_cpu"]
        snap.cpus = {int(c): tuple(v) for c, v in d["cpus"].items()}
        snap.metrics = {(name, tuple(tuple(kv) for kv in labels)): value for name, labels, value in d["metrics"]}
        return snap


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
