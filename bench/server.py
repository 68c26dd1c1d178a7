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
Progress goes to stderr; stdout carries only the JSON. This file runs the server and the clients;
bench/server_stats.py reads CPU time and /metrics, bench/server_report.py turns the rounds into the JSON.

On a larger machine ``--server-cpus 0,1 --client-cpus 2-15`` pins the server (and its torch/OpenMP threads) to
those cores and the clients and this process to the others, so the server is measured on 2 cores without its
clients beside it. Where there are no spare cores, ``--client-nice 10`` runs the clients at a lower CPU priority:
the server has the cores whenever it needs them and the clients take what is left (their own timing suffers
instead; it is recorded in the JSON's config). Where mediapipe is missing (a lent Python 3.12 machine),
``--face-replay`` serves the default portrait from bench/face_replay.py's recording and ``--save-dir DIR`` stores
the probe client's streams instead of running the face mesh; ``--finish DIR`` then completes onset -> mouth,
lip-sync and the offline render where mediapipe is installed, and prints the full JSON.

Usage: .venv/bin/python bench/server.py [--config configs/default.yaml] [--sessions 1,2,4,6] [--seconds 10]
           [--server-cpus 0,1 --client-cpus 2-15] [--client-nice N] [--face-replay FILE.npz] [--save-dir DIR]
       .venv/bin/python bench/server.py --finish DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
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
from server.config import load_config  # noqa: E402
from tests import media  # noqa: E402

sys.path.insert(1, str(REPO / "bench"))
from server_report import commit, device, report, summarise_round  # noqa: E402
from server_stats import Snapshot, cpu_list, cpu_model, metric, parse_cpus, parse_metrics  # noqa: E402

RATE = 48_000
UTTERANCES = ("Hello there.", "Are you ready?", "I am here now.", "All is well.", "Away we go.",
              "Open the window.")
LEAD_S = 1.5            # silence before the first utterance
STAGGER_S = 0.17        # client k starts speaking k x 0.17 s later (sessions do not speak in lockstep)
GAP_S = 0.8             # silence added between utterances (espeak-ng's clips end with ~0.4 s of their own)
WARM_S = 1.0            # server metrics window starts this long after the last client connected
AUDIO_HOLD_MS = 80.0    # aiortc's audio jitter buffer holds ~4 x 20 ms packets before recv() (docs/platform.md)
WARMUP_S = 4.0          # one unreported session first: the server's first-session costs stay out of the baseline
CLIENT = REPO / "bench" / "live_load.py"
FACE_REPLAY = REPO / "bench" / "face_replay.py"
PORTRAIT = REPO / "emo_stream" / "assets" / "default.jpg"  # the server's default avatar


def audio_hold_ms(in_order: bool) -> float:
    """What the client's audio receiver holds before recv(): nothing in order, aiortc's prefetch otherwise."""
    return 0.0 if in_order else AUDIO_HOLD_MS


def log(message: str) -> None:
    print(f"[bench/server] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- /proc and /metrics


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
                 lipsync: bool, seconds: float, count_only: bool = False, save_raw: Path | None = None,
                 nice: int = 0, impair: str = "", audio_in_order: bool = False) -> None:
        self.index = index
        self.out = out
        self.log_path = log_path
        self._log = open(log_path, "w")
        cmd = [sys.executable, str(CLIENT), "--base", base, "--signal", str(signal_path), "--out", str(out),
               "--fps", str(fps), "--audio-hold-ms", str(audio_hold_ms(audio_in_order)),
               "--timeout", str(seconds + 60)]  # its session ends at "stop", after the round and any stagger
        if not lipsync:
            cmd.append("--no-lipsync")
        if impair:
            cmd += ["--impair", impair]
        if audio_in_order:
            cmd.append("--audio-in-order")
        if count_only:
            cmd.append("--count-only")
        elif save_raw is not None:
            cmd += ["--save-raw", str(save_raw)]
        lower = (lambda: os.nice(nice)) if nice else None
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, preexec_fn=lower)
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
              save_dir: Path | None = None, client_nice: int = 0, impair: str = "",
              audio_in_order: bool = False) -> dict | None:
    """N clients together for ``seconds``; None when ``analyse`` is False (a warm-up), else the round's raw
    record (``summarise`` makes its figures). Client 0 decodes and measures everything (with ``save_dir``: stores
    its streams there for ``--finish``); the others only count frames unless ``decode_all``."""
    clients: list[Client] = []
    started = time.monotonic()
    tag = (str(n) if analyse else "warmup") + ("-impaired" if impair else "")
    try:
        for k in range(n):
            sig = tmp / f"signal-{tag}-{k}.npy"
            # long enough for any stagger of connections; the parent ends the session with "stop"
            np.save(sig, make_signal(clips, k, seconds + 30))
            raw = save_dir / f"probe-{n}.npz" if save_dir is not None and analyse and k == 0 else None
            clients.append(Client(k, base, sig, tmp / f"result-{tag}-{k}.json", fps,
                                  tmp / f"client-{tag}-{k}.log", lipsync, seconds, count_only=k > 0 and not decode_all,
                                  save_raw=raw, nice=client_nice, impair=impair, audio_in_order=audio_in_order))
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
    return {"n": n, "results": results, "failed": failed, "a": a.to_dict(), "b": b.to_dict(),
            **({"impairment": impair} if impair else {})}


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
            "gap_s": GAP_S, "receive_hold_corrections_ms": {"video": round(1000 / fps, 1),
                                                           "audio": audio_hold_ms(args.audio_in_order)},
            "audio_receive": "in order, as a browser plays it" if args.audio_in_order else "aiortc's jitter buffer",
            "client_processes": "one per session (bench/live_load.py)",
            "load_clients": "decode video" if args.decode_all else "count video frames, no decode (client 0 decodes)",
            "server_cpus": args.server_cpus, "server_cpus_observed": None,
            "server_threads": len(args.server_cpus) if args.server_cpus else None,
            "client_cpus": args.client_cpus, "client_nice": args.client_nice,
            "face_replay": None if args.face_replay is None else args.face_replay.name,
            "python": platform.python_version(), "numpy": np.__version__,
            "impair": args.impair or None,
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
                run_round(1, base, server.pid, clips, WARMUP_S, fps, tmp, lipsync=False, analyse=False,
                          client_nice=args.client_nice)
                log("warm-up session done")
                for n in counts:
                    if n > config.server.max_sessions:
                        log(f"N={n} is over the config's max_sessions {config.server.max_sessions}: "
                            "the extra clients should get a 503")
                    t = time.monotonic()
                    try:
                        rounds[str(n)] = run_round(n, base, server.pid, clips, args.seconds, fps, tmp,
                                                   lipsync=not args.no_lipsync, decode_all=args.decode_all,
                                                   save_dir=args.save_dir, client_nice=args.client_nice,
                                                   audio_in_order=args.audio_in_order)
                    except (RuntimeError, OSError, httpx.HTTPError, ValueError) as exc:
                        if n == 1:
                            raise  # no baseline, nothing to compare against
                        log(f"N={n}: round failed: {exc}")
                        rounds[str(n)] = {"n": n, "error": str(exc)[-1500:]}
                        save_state()
                        with contextlib.suppress(httpx.HTTPError):
                            wait_sessions(base, 0, 15)
                        continue
                    if args.impair:  # the same N through the impairment relay, right after its clean round
                        log(f"N={n}: again through the relay ({args.impair})")
                        try:
                            rounds[f"{n}+impaired"] = run_round(
                                n, base, server.pid, clips, args.seconds, fps, tmp, lipsync=not args.no_lipsync,
                                decode_all=args.decode_all, client_nice=args.client_nice, impair=args.impair,
                                audio_in_order=args.audio_in_order)
                        except (RuntimeError, OSError, httpx.HTTPError, ValueError) as exc:
                            log(f"N={n} impaired: round failed: {exc}")
                            rounds[f"{n}+impaired"] = {"n": n, "error": str(exc)[-1500:]}
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
    parser.add_argument("--impair", default="", metavar="SPEC",
                        help="after each round, the same round with every session through a user-space impairment "
                             "relay (tests/impairment.py), both ways: e.g. loss=0.05,delay_ms=30,jitter_ms=10")
    parser.add_argument("--audio-in-order", action="store_true",
                        help="the clients receive the voice as a browser plays it (each packet at once, a lost one "
                             "given up once a later one is waiting), not through aiortc's audio buffer (4 packets held, "
                             "320 ms waited for a lost one)")
    parser.add_argument("--decode-all", action="store_true",
                        help="every client decodes video (default: client 0 decodes and measures, the load clients "
                             "count frames: decoding would take ~0.1 core per session from the server's 2 cores)")
    parser.add_argument("--server-cpus", type=parse_cpus, default=None, metavar="LIST",
                        help="pin the server to these CPUs (e.g. 0,1), with as many torch/OpenMP threads")
    parser.add_argument("--client-cpus", type=parse_cpus, default=None, metavar="LIST",
                        help="pin the clients and this process to these CPUs (e.g. 2-15)")
    parser.add_argument("--client-nice", type=int, default=0, choices=range(20), metavar="N",
                        help="run the clients at CPU priority nice N (0-19; default 0): with no spare cores, the "
                             "server gets them first, as if its clients ran elsewhere")
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
