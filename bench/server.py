"""Benchmark of the live core: a real server process and real aiortc peers; prints ONE JSON object.

It starts ``emo-stream serve`` (``configs/default.yaml`` unless ``--config``) on 127.0.0.1, then for
each session count N (``--sessions 1,2,4,6``) runs N clients, each in its own process
(bench/live_load.py: tests/live_client.LivePeer), together for ``--seconds``. Each client sends
1.5 s (+ a per-client stagger) of silence, then short espeak-ng utterances separated by 1.3 s of
silence, in real time, and records what comes back with arrival times. It measures:

- voice onset -> visible mouth motion (p50, p95; raw and corrected for aiortc's one-frame video hold),
- the A/V offset of the returned streams: lip-sync of the recording (compute_video_metrics) and
  per-utterance arrival times, both corrected for aiortc's receive buffering (80 ms audio, 1 frame video),
- frames/s received per session, late/sent frames, server CPU s per session per s, loop lag,
  per-stage latency means (server /metrics deltas over the measured window),
- capacity: the most sessions for which every session held >= 24 frames/s.

The N=1 run is the baseline (measured in the same run); ``ratio`` compares each N against it.
Progress goes to stderr; stdout carries only the JSON.

On a larger machine ``--server-cpus 0,1 --client-cpus 2-15`` pins the server (and its torch/OpenMP threads) to
those cores and the clients and this process to the others, so the server is measured on 2 cores without its
clients beside it. Where mediapipe is missing (a lent Python 3.12 machine), ``--face-replay`` serves the default
portrait from bench/face_replay.py's recording and ``--save-dir DIR`` stores the probe client's streams instead of
running the face mesh; ``--finish DIR`` then completes onset -> mouth, lip-sync and the offline render where
mediapipe is installed, and prints the full JSON.

Usage: .venv/bin/python bench/server.py [--config configs/default.yaml] [--sessions 1,2,4,6] [--seconds 10]
           [--server-cpus 0,1 --client-cpus 2-15] [--face-replay FILE.npz] [--save-dir DIR]
       .venv/bin/python bench/server.py --finish DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emo_stream.audio import load_audio  # noqa: E402
from emo_stream.config import load_config  # noqa: E402
from tests import media  # noqa: E402

RATE = 48_000
UTTERANCES = ("Hello there.", "Are you ready?", "I am here now.", "All is well.", "Away we go.",
              "Open the window.")
LEAD_S = 1.5            # silence before the first utterance
STAGGER_S = 0.17        # client k starts speaking k x 0.17 s later (sessions do not speak in lockstep)
GAP_S = 0.8             # silence added between utterances (espeak-ng's clips end with ~0.4 s of their own)
WARM_S = 1.0            # server metrics window starts this long after the last client connected
AUDIO_HOLD_MS = 80.0    # aiortc's audio jitter buffer holds ~4 x 20 ms packets before recv() (PLATFORM.md)
MIN_FPS = 24.0
MAX_LATE_FRACTION = 0.02  # "on time": at most 2% of the sent frames were hold frames
WARMUP_S = 4.0          # one unreported session first: the server's first-session costs stay out of the baseline
CLIENT = REPO / "bench" / "live_load.py"
FACE_REPLAY = REPO / "bench" / "face_replay.py"
PORTRAIT = REPO / "emo_stream" / "assets" / "default.jpg"  # the server's default avatar
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench/server] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- /proc and /metrics

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


# ---------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(threads: int | None = None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
    if threads:  # torch (silero-vad) and any OpenMP/BLAS pool: one thread per pinned core, not per machine core
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    return env


def start_server(config: Path, port: int, log_file, cpus: list[int] | None = None,
                 face_replay: Path | None = None) -> subprocess.Popen:
    """``emo-stream serve`` (as ``python -m server.cli``, so no installed script is needed), pinned to ``cpus``
    (os.sched_setaffinity in the child before exec: every thread it starts inherits them)."""
    cli = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    cmd = [sys.executable, str(FACE_REPLAY), "run", str(face_replay), *cli] if face_replay \
        else [sys.executable, "-m", "server.cli", *cli]
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(len(cpus) if cpus else None), stdout=log_file,
                            stderr=subprocess.STDOUT, preexec_fn=pin)


def wait_healthy(base: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not become healthy")
        time.sleep(0.2)


def stop_process(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class Client:
    """One client process and its line protocol (see bench/live_load.py)."""

    def __init__(self, index: int, base: str, signal_path: Path, out: Path, fps: int, log_path: Path,
                 lipsync: bool, count_only: bool = False, save_raw: Path | None = None) -> None:
        self.index = index
        self.out = out
        self.log_path = log_path
        self._log = open(log_path, "w")
        cmd = [sys.executable, str(CLIENT), "--base", base, "--signal", str(signal_path), "--out", str(out),
               "--fps", str(fps), "--audio-hold-ms", str(AUDIO_HOLD_MS)]
        if not lipsync:
            cmd.append("--no-lipsync")
        if count_only:
            cmd.append("--count-only")
        elif save_raw is not None:
            cmd += ["--save-raw", str(save_raw)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.answer: dict | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def expect(self, word: str, timeout_s: float) -> str:
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise RuntimeError(f"client {self.index}: no {word!r} within {timeout_s:g} s; "
                               f"its log: {self.log_tail()}") from None
        if line is None or not line.startswith(word):
            raise RuntimeError(f"client {self.index}: expected {word!r}, got {line!r}; its log: {self.log_tail()}")
        return line

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-1500:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._log.close()


def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def wait_sessions(base: str, count: int, timeout_s: float) -> bool:
    """Poll /metrics until ``count`` sessions are active."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if metric(parse_metrics(httpx.get(f"{base}/metrics", timeout=10).text), "emo_stream_sessions_active") == count:
            return True
        time.sleep(0.2)
    return False


# ---------------------------------------------------------------------- one round

def make_signal(clips: list[np.ndarray], index: int, seconds: float) -> np.ndarray:
    """Silence, then the utterances (rotated by ``index``) separated by GAP_S of silence, ``seconds`` long."""
    parts = [np.zeros(int((LEAD_S + STAGGER_S * (index % 6)) * RATE), np.float32)]
    length = len(parts[0])
    k = index
    while length < seconds * RATE:
        clip = clips[k % len(clips)]
        parts += [clip, np.zeros(int(GAP_S * RATE), np.float32)]
        length += len(clip) + int(GAP_S * RATE)
        k += 1
    return np.concatenate(parts).astype(np.float32)


def run_round(n: int, base: str, server_pid: int, clips: list[np.ndarray], seconds: float, fps: int,
              tmp: Path, lipsync: bool, analyse: bool = True, decode_all: bool = False,
              save_dir: Path | None = None) -> dict | None:
    """N clients together for ``seconds``; None when ``analyse`` is False (a warm-up), else the round's raw
    record (``summarise`` makes its figures). Client 0 decodes and measures everything (with ``save_dir``: stores
    its streams there for ``--finish``); the others only count frames unless ``decode_all``."""
    clients: list[Client] = []
    started = time.monotonic()
    tag = str(n) if analyse else "warmup"
    try:
        for k in range(n):
            sig = tmp / f"signal-{tag}-{k}.npy"
            # long enough for any stagger of connections; the parent ends the session with "stop"
            np.save(sig, make_signal(clips, k, seconds + 30))
            raw = save_dir / f"probe-{n}.npz" if save_dir is not None and analyse and k == 0 else None
            clients.append(Client(k, base, sig, tmp / f"result-{tag}-{k}.json", fps,
                                  tmp / f"client-{tag}-{k}.log", lipsync, count_only=k > 0 and not decode_all,
                                  save_raw=raw))
        for c in clients:
            c.expect("ready", 120)
        for c in clients:
            c.send("go")
        connected, failed = [], []
        for c in clients:
            try:
                line = c.lines.get(timeout=60)
            except queue.Empty:
                line = None
            if line and line.startswith("connected"):
                c.answer = json.loads(line.split(" ", 1)[1])
                connected.append(c)
            else:
                failed.append({"client": c.index, "error": c.log_tail()[-500:]})
        if not connected:
            raise RuntimeError(f"no client of {n} connected: {failed}")
        log(f"N={n}: {len(connected)} sessions connected ({time.monotonic() - started:.1f} s after spawn)")
        t_all = time.monotonic()
        pids = [c.proc.pid for c in clients]
        sleep_until(t_all + WARM_S)
        a = Snapshot(base, server_pid, pids)
        sleep_until(t_all + seconds)
        b = Snapshot(base, server_pid, pids)
        for c in connected:
            c.send("stop")
        for c in connected:
            c.expect("closed", 30)
        if not analyse:
            return None
        analysis_started = time.monotonic()
        for c in connected:
            c.send("analyze")
        for c in connected:
            c.expect("done", 400)
        log(f"N={n}: analysis {time.monotonic() - analysis_started:.1f} s")
        results = []
        for c in connected:
            r = json.loads(c.out.read_text()) if c.out.exists() else {"error": "no result file"}
            r["client"] = c.index
            r["declared_latency_ms"] = (c.answer or {}).get("latency_ms")
            results.append(r)
    finally:
        for c in clients:
            c.kill()
        try:
            if not wait_sessions(base, 0, 15):
                log(f"N={n}: sessions did not all close within 15 s")
        except httpx.HTTPError as exc:
            log(f"N={n}: /metrics unreachable after the round: {exc}")
    return {"n": n, "results": results, "failed": failed, "a": a.to_dict(), "b": b.to_dict()}


def offline_reference(clips: list[np.ndarray], seconds: float, config, tmp: Path) -> dict:
    """The same animator rendered offline (``emo-stream render``) from client 0's microphone signal:
    the animator's own lip-sync offset, with no transport. Live minus this = what the live path adds."""
    x = make_signal(clips, 0, seconds)
    wav = tmp / "offline.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes())
    a = config.animator
    out = tmp / "offline.mp4"
    r = subprocess.run([sys.executable, "-m", "server.cli", "render", "--image", str(PORTRAIT), "--audio", str(wav),
                        "-o", str(out), "--size", str(a.size), "--fps", str(a.fps), "--backend", a.backend,
                        "--seed", str(a.seed), "--motion", str(a.motion)],
                       cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip()[-500:]}
    from emo_stream.metrics import compute_video_metrics

    m = compute_video_metrics(out)
    return {"av_offset_ms": m.av_offset_ms, "lipsync_r": None if m.lipsync_r is None else round(m.lipsync_r, 3),
            "audio_s": round(len(x) / RATE, 2)}


# ---------------------------------------------------------------------- summaries

def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 1) if values else None


def summarise(n: int, results: list[dict], failed: list[dict], a: Snapshot, b: Snapshot,
              server_cpus: list[int] | None = None, client_cpus: list[int] | None = None) -> dict:
    ok = [r for r in results if "error" not in r]
    onsets = [o for r in ok for o in r.get("onsets", [])]
    measured = [o for o in onsets if "mouth_raw_ms" in o]
    skipped: dict[str, int] = {}
    for o in onsets:
        if "skipped" in o:
            skipped[o["skipped"]] = skipped.get(o["skipped"], 0) + 1
    voiced = [o for o in onsets if "voice_raw_ms" in o]
    xcorr = [r["voice_delay_xcorr"] for r in ok if (r.get("voice_delay_xcorr") or {}).get("raw_ms") is not None]
    av_arrival = [o for o in measured if "av_arrival_corrected_ms" in o]
    lips = [r["lipsync"] for r in ok if r.get("lipsync") and r["lipsync"].get("av_offset_corrected_ms") is not None]
    window = b.t - a.t
    server_cpu = b.server_cpu - a.server_cpu
    client_cpu = b.client_cpu - a.client_cpu
    sent = metric(b.metrics, "emo_stream_frames_sent_total") - metric(a.metrics, "emo_stream_frames_sent_total")
    late = metric(b.metrics, "emo_stream_frames_late_total") - metric(a.metrics, "emo_stream_frames_late_total")
    lag = histogram_delta(a.metrics, b.metrics, "emo_stream_loop_lag_hist_seconds")
    machine_busy = busy_cores(a.cpus, b.cpus)
    parent_cpu = b.parent_cpu - a.parent_cpu
    fps = [r["fps_received"] for r in ok]
    sessions = len(ok)
    overloaded = not sent or late / sent > MAX_LATE_FRACTION
    in_session = [o for o in onsets if o.get("skipped") != "session ended before the utterance's mouth window"]
    # the onset figures describe the round only when most utterances got a measurable mouth motion
    reliable = bool(in_session) and len(measured) >= 0.75 * len(in_session)
    return {
        "sessions": n,
        "sessions_ok": sessions,
        "declared_latency_ms": next((r["declared_latency_ms"] for r in results if r.get("declared_latency_ms")), None),
        "failed": failed + [{"client": r["client"], "error": r["error"]} for r in results if "error" in r],
        "fps_received": fps,
        "fps_min": min(fps) if fps else 0.0,
        "all_sessions_at_24fps": bool(fps) and sessions == n and min(fps) >= MIN_FPS,
        "all_sessions_at_24fps_on_time": bool(fps) and sessions == n and min(fps) >= MIN_FPS and sent > 0
        and late / sent <= MAX_LATE_FRACTION,
        "max_video_gap_ms": max((r["max_video_gap_ms"] for r in ok), default=None),
        "onset_to_mouth_ms": {
            "corrected": {"p50": pct([o["mouth_corrected_ms"] for o in measured], 50),
                          "p95": pct([o["mouth_corrected_ms"] for o in measured], 95)},
            "raw": {"p50": pct([o["mouth_raw_ms"] for o in measured], 50),
                    "p95": pct([o["mouth_raw_ms"] for o in measured], 95)},
            "min_corrected": min((o["mouth_corrected_ms"] for o in measured), default=None),
            "max_corrected": max((o["mouth_corrected_ms"] for o in measured), default=None),
            "corrected_per_session_in_order": [[o["mouth_corrected_ms"] for o in r.get("onsets", [])
                                                if "mouth_corrected_ms" in o] for r in ok],
            "onsets_measured": len(measured),
            "reliable": reliable,
            "onsets_skipped": skipped,
        },
        "onset_to_returned_voice_ms": {
            "corrected": {"p50": pct([o["voice_corrected_ms"] for o in voiced], 50),
                          "p95": pct([o["voice_corrected_ms"] for o in voiced], 95)},
            "raw": {"p50": pct([o["voice_raw_ms"] for o in voiced], 50),
                    "p95": pct([o["voice_raw_ms"] for o in voiced], 95)},
            "xcorr_corrected_per_session": [x["corrected_ms"] for x in xcorr],
            "xcorr_r_per_session": [x["r"] for x in xcorr],
        },
        "av_offset_ms": {
            "lipsync_corrected_median": median([x["av_offset_corrected_ms"] for x in lips]),
            "lipsync_raw_median": median([x["av_offset_raw_ms"] for x in lips]),
            "lipsync_corrected_per_session": [x["av_offset_corrected_ms"] for x in lips],
            "lipsync_r_per_session": [x["lipsync_r"] for x in lips],
            "arrival_corrected_median": median([o["av_arrival_corrected_ms"] for o in av_arrival]),
            "arrival_raw_median": median([o["av_arrival_raw_ms"] for o in av_arrival]),
            "arrival_corrected_p95_abs": pct([abs(o["av_arrival_corrected_ms"]) for o in av_arrival], 95),
            "arrival_onsets": len(av_arrival),
        },
        "face_found_min": min((r["face_found"] for r in ok if "face_found" in r), default=None),
        "clients_decoding_video": sum(not r.get("count_only") for r in ok),
        "frames_sent": int(sent),
        "frames_late": int(late),
        "late_fraction": round(late / sent, 4) if sent else None,
        "overloaded": overloaded,
        "server_cpu_s_per_session_per_s": round(server_cpu / window / max(n, 1), 4),
        "server_cpu_cores": round(server_cpu / window, 3),
        # pinned: the server's share of its own cores, and how busy those cores were (any process on them)
        "server_cpu_fraction_of_pinned": round(server_cpu / window / len(server_cpus), 3) if server_cpus else None,
        "server_cpus_busy_cores": round(busy_cores(a.cpus, b.cpus, server_cpus), 3) if server_cpus else None,
        "client_cpus_busy_cores": round(busy_cores(a.cpus, b.cpus, client_cpus), 3) if client_cpus else None,
        "client_cpu_s_per_session_per_s": round(client_cpu / window / max(n, 1), 4),
        "machine_cpu_busy_cores": round(machine_busy, 3),
        "other_cpu_cores": round(machine_busy - (server_cpu + client_cpu + parent_cpu) / window, 3),
        "loop_lag_ms": {"p99_at_most": bucket_quantile_ms(lag, 0.99), "max_at_most": bucket_quantile_ms(lag, 1.0),
                        "samples": int(lag[-1][1]) if lag else 0},
        "stage_latency": stage_summary(a.metrics, b.metrics),
        "window_s": round(window, 2),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or not isinstance(value, int | float) or not isinstance(base, int | float) \
            or base == 0:
        return None
    return round(value / base, 3)


def ratios(entry: dict, base: dict) -> dict:
    def stage(e: dict, name: str) -> float | None:
        return e["stage_latency"].get(name, {}).get("mean_ms")

    def onset(e: dict, q: str) -> float | None:
        o = e["onset_to_mouth_ms"]
        return o["corrected"][q] if o["reliable"] else None

    return {
        "server_cpu_s_per_session_per_s": ratio(entry["server_cpu_s_per_session_per_s"],
                                                base["server_cpu_s_per_session_per_s"]),
        "onset_to_mouth_p50_corrected": ratio(onset(entry, "p50"), onset(base, "p50")),
        "onset_to_mouth_p95_corrected": ratio(onset(entry, "p95"), onset(base, "p95")),
        "fps_min": ratio(entry["fps_min"], base["fps_min"]),
        "end_to_end_stage_mean": ratio(stage(entry, "end_to_end"), stage(base, "end_to_end")),
        "encode_stage_mean": ratio(stage(entry, "encode"), stage(base, "encode")),
        "animate_stage_mean": ratio(stage(entry, "animate"), stage(base, "animate")),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device(server_cpus: list[int] | None = None, client_cpus: list[int] | None = None) -> str:
    model = cpu_model()
    if server_cpus:
        clients = f"cpus {cpu_list(client_cpus)}" if client_cpus else "any cpu"
        return (f"{model}, {os.cpu_count()} cores; the server pinned to cpus {cpu_list(server_cpus)} "
                f"({len(server_cpus)} torch/OpenMP threads), the clients and the bench on {clients}; the lite server "
                "uses no GPU")
    return f"{model}, {os.cpu_count()} cores, no GPU (server, client processes and analysis share these cores)"


def cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def commit() -> str:
    """The checkout's commit; where there is no git repository (a copied tree), $EMO_STREAM_BENCH_COMMIT."""
    run = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO).stdout.strip()  # noqa: E731
    try:
        head = run("rev-parse", "--short", "HEAD")
        dirty = head and run("status", "--porcelain", "--untracked-files=no")
    except OSError:  # no git
        head = dirty = ""
    if not head:
        return os.environ.get("EMO_STREAM_BENCH_COMMIT", "unknown") + " (no git here)"
    return head + ("-dirty" if dirty else "")


METHOD = {
    "clients": ("client 0 decodes the video and measures onset -> mouth, A/V and lip-sync; the other clients (load) "
                "let aiortc's jitter buffer complete each VP8 frame and count it without decoding (--decode-all: "
                "all decode), so the 2 cores measure the server and not N video decoders; frames/s is every "
                "client's"),
    "onset": ("wall time (CLOCK_MONOTONIC, shared by all processes) at which the client's first 20 ms mic frame "
              "louder than -40 dBFS after >= 0.5 s below it was handed to the sender (LivePeer.mic.sent_at)"),
    "visible_mouth_motion": ("arrival time of the first received video frame after the onset whose mouth opening "
                             "(mediapipe face mesh, static mode, emo_stream.metrics.face_measures.mouth_opening) departs "
                             "from the resting level (median over frames that arrived in the 0.6 s before the onset) by "
                             "more than 25% of that utterance's largest departure (searched until 0.6 s after its last "
                             "loud frame); utterances whose largest departure is under 0.02 eye spans count as 'no "
                             "visible mouth motion'. Face mesh runs after the session ends, on the stored frames"),
    "onset_to_mouth_corrected": ("raw minus one frame period (40 ms at 25 fps): aiortc's video jitter buffer returns a "
                                 "frame from recv() only when the next frame's first packet arrives"),
    "onset_to_returned_voice": ("arrival of the first returned 20 ms audio frame above -40 dBFS later than onset + "
                                "the declared latency (the server returns the caller's voice delayed by it); corrected "
                                "= raw minus 80 ms, aiortc's audio receive buffer. xcorr_*: per session, the lag "
                                "(0-4 s) that best correlates the loudness of the sent and the returned 20 ms frames "
                                "on the wall clock, minus the same 80 ms"),
    "onset_association": ("a mouth motion (or loud returned frame) seen sooner than onset + the declared latency is "
                          "not counted for that onset (it is an earlier utterance's, arriving late); when a round is "
                          "'overloaded' (frames_late > 2% of frames_sent) the per-utterance figures cannot be trusted: "
                          "delays reach the 2 s between utterances. onset_to_mouth.reliable is false when under 75% "
                          "of the utterances inside the session got a measured mouth motion (ratios are then null)"),
    "av_offset_lipsync": ("tests/live_client.write_recording of everything received, frames placed at arrival - 40 ms "
                          "(video hold) and audio at first arrival - 20 ms (write_recording's frame length) - 80 ms "
                          "(audio hold), then emo_stream.metrics.compute_video_metrics(...).av_offset_ms (best-lag "
                          "Pearson r of mouth opening vs loudness, +-200 ms in 5 ms steps); positive = video late. "
                          "raw = corrected - 40 ms (the holds shift video vs audio by 80 - 40 ms). Caveat: the server "
                          "sends each tick's two 20 ms audio packets together at the tick, so write_recording's "
                          "'arrival = end of the frame' placement puts the audio ~20 ms early: this figure reads ~20 "
                          "ms more 'video late' than the tick alignment. baseline.offline_render is the same animator "
                          "on the same signal rendered offline (no transport)"),
    "av_offset_arrival": ("per utterance: onset_to_mouth - onset_to_returned_voice, each corrected for its own "
                          "receive hold (raw: both uncorrected); positive = the mouth moves after the voice is heard. "
                          "Biased late by up to a frame: the mouth is detected at 25% of its swing, the voice at its "
                          "first loud frame"),
    "server_metrics": ("deltas of the server's /metrics between two snapshots taken 1 s after the last client "
                       "connected and at --seconds; CPU from /proc/<pid>/stat (utime+stime, all threads, with its session processes) over the same "
                       "window; loop lag and stage p95 are histogram bucket upper bounds"),
    "fps_received": "tests/live_client.received_fps: received video frames per second after the first 1 s",
    "capacity": ("sessions_at_25fps: the largest N tested for which all N connected and every session received >= 24 "
                 "frames/s. The clock never stalls (hold frames go out when a frame is late), so the received rate "
                 "alone cannot show overload: sessions_at_25fps_on_time also requires frames_late <= 2% of "
                 "frames_sent in the window"),
    "warmup": "one unreported 1-session round runs first, so first-session costs stay out of the baseline",
    "pinning": ("--server-cpus: the server process is pinned (os.sched_setaffinity before exec, inherited by all its "
                "threads) and OMP_NUM_THREADS/MKL_NUM_THREADS = its core count (torch runs silero-vad); --client-cpus: "
                "the clients and this process. server_cpu_fraction_of_pinned = the server's CPU time / (window x its "
                "cores); server_cpus_busy_cores / client_cpus_busy_cores: busy time of those cores (/proc/stat, any "
                "process) in cores; machine_cpu_busy_cores: all cores"),
    "deferred_analysis": ("with --save-dir the probe client stores its streams (frames as JPEG q85, lower if a file "
                          "would pass 14 MiB; audio; arrival times) instead of running the face mesh; --finish runs the "
                          "same analysis on them and the offline render later, on the machine named in "
                          "config.probe_analysis"),
}


def measure(args: argparse.Namespace, config, clips: list[np.ndarray], counts: list[int]) -> dict:
    """Start the server, run the warm-up and each round; the raw record of the run (``report`` makes the JSON)."""
    fps = config.animator.fps
    rounds: dict[str, dict] = {}
    started = time.monotonic()
    state = {
        "device": device(args.server_cpus, args.client_cpus),
        "commit": commit(),
        "config": {
            "config_file": str(args.config.relative_to(REPO)) if args.config.is_relative_to(REPO)
            else str(args.config),
            "backend": config.animator.backend, "size": config.animator.size, "fps": fps,
            "max_sessions": config.server.max_sessions,
            "sessions": counts, "seconds_per_round": args.seconds, "metrics_window_s": args.seconds - WARM_S,
            "utterances": list(UTTERANCES), "lead_silence_s": LEAD_S, "per_client_stagger_s": STAGGER_S,
            "gap_s": GAP_S, "receive_hold_corrections_ms": {"video": round(1000 / fps, 1), "audio": AUDIO_HOLD_MS},
            "client_processes": "one per session (bench/live_load.py)",
            "load_clients": "decode video" if args.decode_all else "count video frames, no decode (client 0 decodes)",
            "server_cpus": args.server_cpus, "server_cpus_observed": None,
            "server_threads": len(args.server_cpus) if args.server_cpus else None,
            "client_cpus": args.client_cpus,
            "face_replay": None if args.face_replay is None else args.face_replay.name,
            "python": platform.python_version(), "numpy": np.__version__,
        },
        "lipsync": not args.no_lipsync,
        "rounds": rounds,
    }

    def save_state() -> None:  # after every round: a run cut short keeps what it measured
        if args.save_dir:
            state["duration_s"] = round(time.monotonic() - started, 1)
            (args.save_dir / "state.json").write_text(json.dumps(state))

    with tempfile.TemporaryDirectory(prefix="bench-server-") as d:
        tmp = Path(d)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = tmp / "server.log"
        with open(log_path, "w") as server_log:
            server = start_server(args.config, port, server_log, args.server_cpus, args.face_replay)
            try:
                wait_healthy(base, server, log_path)
                pinned = sorted(os.sched_getaffinity(server.pid)) if args.server_cpus else None
                state["config"]["server_cpus_observed"] = pinned
                log(f"server up on {base} ({time.monotonic() - started:.1f} s), pid {server.pid}"
                    + (f", on cpus {cpu_list(pinned)}" if pinned else ""))
                run_round(1, base, server.pid, clips, WARMUP_S, fps, tmp, lipsync=False, analyse=False)
                log("warm-up session done")
                for n in counts:
                    if n > config.server.max_sessions:
                        log(f"N={n} is over the config's max_sessions {config.server.max_sessions}: "
                            "the extra clients should get a 503")
                    t = time.monotonic()
                    try:
                        rounds[str(n)] = run_round(n, base, server.pid, clips, args.seconds, fps, tmp,
                                                   lipsync=not args.no_lipsync, decode_all=args.decode_all,
                                                   save_dir=args.save_dir)
                    except (RuntimeError, OSError, httpx.HTTPError, ValueError) as exc:
                        if n == 1:
                            raise  # no baseline, nothing to compare against
                        log(f"N={n}: round failed: {exc}")
                        rounds[str(n)] = {"n": n, "error": str(exc)[-1500:]}
                        save_state()
                        with contextlib.suppress(httpx.HTTPError):
                            wait_sessions(base, 0, 15)
                        continue
                    save_state()
                    e = summarise_round(rounds[str(n)], args.server_cpus, args.client_cpus)
                    if "error" in e:
                        log(f"N={n}: {e['error']}")
                        continue
                    log(f"N={n}: fps_min {e['fps_min']}, onset->mouth p95 {e['onset_to_mouth_ms']['corrected']['p95']} "
                        f"ms (corrected), late {e['frames_late']}/{e['frames_sent']}, "
                        f"server cpu {e['server_cpu_s_per_session_per_s']} s/session/s "
                        f"({e['server_cpu_cores']} cores) ({time.monotonic() - t:.1f} s)")
            finally:
                t = time.monotonic()
                stop_process(server)
                log(f"server stopped ({time.monotonic() - t:.1f} s)")
                if server.returncode not in (0, -signal.SIGINT, None):
                    log(f"server exit code {server.returncode}; log tail:\n{log_path.read_text()[-2000:]}")
                elif args.save_dir and log_path.stat().st_size:  # a lent machine: its log is not kept
                    log(f"server log tail:\n{log_path.read_text()[-2000:]}")
    state["duration_s"] = round(time.monotonic() - started, 1)
    return state


def summarise_round(r: dict, server_cpus: list[int] | None, client_cpus: list[int] | None) -> dict:
    if "error" in r:
        return {"sessions": r["n"], "error": r["error"], "all_sessions_at_24fps": False}
    try:
        return summarise(r["n"], r["results"], r["failed"], Snapshot.from_dict(r["a"]), Snapshot.from_dict(r["b"]),
                         server_cpus, client_cpus)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # one odd round must not lose the others
        if r["n"] == 1:
            raise
        return {"sessions": r["n"], "error": f"summary failed: {type(exc).__name__}: {exc}",
                "all_sessions_at_24fps": False}


def report(state: dict, offline: dict | None) -> dict:
    """The JSON of a run (``measure``'s record; ``finish``'s after the deferred analysis)."""
    cfg = state["config"]
    counts = [n for n in cfg["sessions"] if str(n) in state["rounds"]]  # a run cut short has fewer
    per_n = {k: summarise_round(r, cfg["server_cpus"], cfg["client_cpus"]) for k, r in state["rounds"].items()}
    base_entry = per_n["1"]
    passing = [n for n in counts if per_n[str(n)]["all_sessions_at_24fps"]]
    on_time = [n for n in counts if per_n[str(n)].get("all_sessions_at_24fps_on_time")]
    deferred = any(r.get("raw") for rnd in state["rounds"].values() for r in rnd.get("results", []))
    return {
        "bench": "server",
        "device": state["device"],
        "commit": state["commit"],
        "config": {**cfg, "declared_latency_ms": base_entry.get("declared_latency_ms"),
                   "probe_analysis": state.get("analysed_on") or ("deferred: stored with --save-dir, not analysed yet "
                                                                  "(bench/server.py --finish DIR)" if deferred
                                                                  else "in the probe client, after each round")},
        "baseline": {**base_entry, "offline_render": offline},
        "candidate": {
            "sessions_at_25fps": max(passing, default=0),
            "sessions_at_25fps_on_time": max(on_time, default=0),
            "onset_to_mouth_p95_ms": base_entry["onset_to_mouth_ms"]["corrected"]["p95"],
            "abs_av_offset_ms": None if base_entry["av_offset_ms"]["lipsync_corrected_median"] is None
            else abs(base_entry["av_offset_ms"]["lipsync_corrected_median"]),
            "per_sessions": per_n,
        },
        "ratio": {str(n): ratios(per_n[str(n)], base_entry) for n in counts if n != 1 and "error" not in per_n[str(n)]},
        "units": {
            "latency": "ms", "fps": "frames/s received", "cpu": "CPU s per session per wall s (1.0 = one core)",
            "loop_lag": "ms (histogram bucket upper bound)", "stage_latency": "ms", "ratio": "N sessions / N=1",
            "av_offset": "ms, positive = video late",
        },
        "targets": {"onset_to_mouth_p95_ms": "<= 150 on loopback", "abs_av_offset_ms": "<= 20",
                    "sessions_at_25fps": ">= 4 (aim 6)"},
        "method": METHOD,
    }


def speech_clips() -> list[np.ndarray]:
    log("making the microphone signal (espeak-ng, or $EMO_STREAM_TEST_CACHE's copies)")
    return [load_audio(media.espeak_wav(text), sample_rate=RATE) for text in UTTERANCES]


def finish(folder: Path) -> int:
    """Complete a --save-dir run here: the probe clients' face mesh and lip-sync, and the offline render."""
    sys.path.insert(0, str(REPO / "bench"))
    from live_load import analyse_saved

    state = json.loads((folder / "state.json").read_text())
    for key, rnd in state["rounds"].items():
        for i, r in enumerate(rnd.get("results", [])):
            if not r.get("raw"):
                continue
            t = time.monotonic()
            try:
                full = analyse_saved(folder / r["raw"], lipsync=state["lipsync"])
            except Exception as exc:  # one bad file: report it, keep the rest
                full = {"error": f"analysis of {r['raw']} failed: {type(exc).__name__}: {exc}"}
            rnd["results"][i] = {**full, "client": r["client"], "declared_latency_ms": r.get("declared_latency_ms"),
                                 "raw": r["raw"]}
            log(f"N={key}: probe analysed ({time.monotonic() - t:.1f} s)")
    state["analysed_on"] = (f"face mesh and lip-sync of the stored probe streams, and the offline render, afterwards "
                            f"(--finish) on {cpu_model()}, {os.cpu_count()} cores, commit {commit()}")
    config = load_config(REPO / state["config"]["config_file"])
    clips = speech_clips()
    with tempfile.TemporaryDirectory(prefix="bench-server-") as d:
        log("offline render of the same signal (the animator's own A/V offset)")
        offline = offline_reference(clips, state["config"]["seconds_per_round"], config, Path(d))
    print(json.dumps(report(state, offline), indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="live-core benchmark (prints one JSON object)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--sessions", default="1,2,4,6", help="comma-separated session counts (1 is always run)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds each round's sessions run together")
    parser.add_argument("--no-lipsync", action="store_true", help="skip the recording lip-sync (faster)")
    parser.add_argument("--decode-all", action="store_true",
                        help="every client decodes video (default: client 0 decodes and measures, the load clients "
                             "count frames: decoding would take ~0.1 core per session from the server's 2 cores)")
    parser.add_argument("--server-cpus", type=parse_cpus, default=None, metavar="LIST",
                        help="pin the server to these CPUs (e.g. 0,1), with as many torch/OpenMP threads")
    parser.add_argument("--client-cpus", type=parse_cpus, default=None, metavar="LIST",
                        help="pin the clients and this process to these CPUs (e.g. 2-15)")
    parser.add_argument("--face-replay", type=Path, default=None, metavar="NPZ",
                        help="serve without mediapipe: the default portrait's face mesh and matte from "
                             "bench/face_replay.py record")
    parser.add_argument("--save-dir", type=Path, default=None, metavar="DIR",
                        help="store state.json and the probe client's streams (probe-N.npz) here instead of running "
                             "the face mesh and the offline render; complete later with --finish DIR")
    parser.add_argument("--finish", type=Path, default=None, metavar="DIR",
                        help="complete a --save-dir run (needs mediapipe) and print its full JSON")
    args = parser.parse_args()
    if args.finish:
        return finish(args.finish.resolve())
    counts = sorted({1, *(int(x) for x in args.sessions.split(",") if x.strip())})
    args.config = args.config.resolve()
    if args.face_replay:
        args.face_replay = args.face_replay.resolve()
    if args.save_dir:
        args.save_dir = args.save_dir.resolve()
        args.save_dir.mkdir(parents=True, exist_ok=True)
    if args.server_cpus and args.client_cpus and set(args.server_cpus) & set(args.client_cpus):
        parser.error("--server-cpus and --client-cpus overlap")
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)  # this process; the clients inherit it
    config = load_config(args.config)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    clips = speech_clips()
    state = measure(args, config, clips, counts)
    if args.save_dir:
        (args.save_dir / "state.json").write_text(json.dumps(state))
        log(f"state and probe streams in {args.save_dir}: complete with bench/server.py --finish DIR")
        offline = None
    else:
        with tempfile.TemporaryDirectory(prefix="bench-server-") as d:
            log("offline render of the same signal (the animator's own A/V offset)")
            offline = offline_reference(clips, args.seconds, config, Path(d))
    out = report(state, offline)
    log(f"done in {time.monotonic() - started:.1f} s")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
