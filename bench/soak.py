"""Soak: two live sessions, one microphone and one agent's PCM, for --minutes; prints ONE JSON object.

A server (``--config``, default configs/default.yaml, with ``server.av_probe`` on; ``--processes`` overrides its
``server.processes``) and one client process holding both sessions through real aiortc peers. The microphone
loops an espeak-ng utterance with a 1 kHz beep after it; the agent (``emo_stream.client``) pushes the same
utterance and beep every 6 s, then flushes. Every --sample seconds it records:

- the server's resident memory (its process and its children's, /proc), for the RSS slope in MB/h (a least-squares
  line through the samples after the first two minutes);
- frames sent and late (the server's /metrics) and the frames each session received: late share and frames/s;
- the mean input-to-frame latency (the end_to_end stage of /metrics) in the window, for drift;
- the A/V offset of arrival: each beep's marked frame (server.av_probe) against its tone, as they arrive at the
  client (aiortc's receive holds included, the same at the start and the end: the drift is the figure);
- where the machine's CPU went (cores: the server, this client, everything else, the hypervisor's steal) and each
  stage's mean time, so ``late_windows`` can say what the windows with late frames coincide with.

Usage: .venv/bin/python bench/soak.py [--minutes 60] [--sample 30] [--config configs/default.yaml] [--processes N]
Targets (#30): RSS growth <= 20 MB/h, no latency or A/V drift, late frames <= 1 % on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # after the repository: its server/ package comes first

from server_report import commit, device  # noqa: E402
from server_stats import (  # noqa: E402
    Snapshot,
    bucket_quantile_ms,
    busy_cores,
    histogram_delta,
    metric,
    stage_summary,
    steal_jiffies,
)

from emo_stream.audio import load_audio  # noqa: E402
from emo_stream.client import AvatarClient, AvatarSession  # noqa: E402
from server.av_probe import holds_tone  # noqa: E402
from tests import media, servers  # noqa: E402
from tests.browser import av_offsets  # noqa: E402
from tests.live_client import RATE, LivePeer, mono_float  # noqa: E402

BEEP_S = 0.12
MB = 1024 * 1024


def utterance_with_beep(rate: int = RATE) -> np.ndarray:
    """An espeak-ng sentence, 0.6 s of silence, a 120 ms 1 kHz beep, 1 s of silence (mono float32 at ``rate``)."""
    speech = load_audio(media.espeak_wav("hello"), sample_rate=rate)
    t = np.arange(int(BEEP_S * rate)) / rate
    beep = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    gap, tail = np.zeros(int(0.6 * rate), np.float32), np.zeros(rate, np.float32)
    return np.concatenate([speech, gap, beep, tail])


class SoakPeer(LivePeer):
    """Keeps counts and the probe's arrival times, never the media (an hour of frames would not fit)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.video_frames = 0
        self.flashes: list[float] = []
        self.tones: list[float] = []
        self._flash_on = self._tone_on = False

    def on_video(self, arrived: float, frame) -> None:
        self.video_frames += 1
        corner = frame.to_ndarray(format="rgb24")[8:24, 8:24].reshape(-1, 3).mean(axis=0)
        on = bool(corner[0] > 170 and corner[2] > 170 and corner[1] < 100)  # the probe's magenta square
        if on and not self._flash_on:
            self.flashes.append(arrived)
        self._flash_on = on

    def on_audio(self, arrived: float, frame) -> None:
        on = holds_tone(mono_float(frame), frame.sample_rate)
        if on and not self._tone_on:
            self.tones.append(arrived)
        self._tone_on = on


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (MB)."""
    total = 0
    pids = [pid]  # and the children any of its threads started (the session processes)
    with contextlib.suppress(OSError):
        pids += [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
            total += int(match.group(1)) * 1024 if match else 0
    return total / MB


STAGES = ("animate", "encode", "worker_queue", "tick_lag", "end_to_end")


def window_figures(a: Snapshot, b: Snapshot, steal_a: tuple[float, float], steal_b: tuple[float, float]) -> dict:
    """One sample window: frames sent and late, where the machine's CPU went (cores: the server, this client,
    everything else, and the hypervisor's steal), and each stage's mean time (ms)."""
    window = max(b.t - a.t, 1e-9)
    sent = metric(b.metrics, "emo_stream_frames_sent_total") - metric(a.metrics, "emo_stream_frames_sent_total")
    late = metric(b.metrics, "emo_stream_frames_late_total") - metric(a.metrics, "emo_stream_frames_late_total")
    busy = busy_cores(a.cpus, b.cpus)
    server = (b.server_cpu - a.server_cpu) / window
    client = (b.parent_cpu - a.parent_cpu) / window
    cpus = len(b.cpus)
    steal = (steal_b[0] - steal_a[0]) / max(steal_b[1] - steal_a[1], 1.0) * cpus
    stages = stage_summary(a.metrics, b.metrics)
    return {"late_share": round(late / sent, 4) if sent else None,
            "cores": {"server": round(server, 3), "client": round(client, 3),
                      "other": round(busy - server - client - steal, 3), "steal": round(steal, 3)},
            "stage_ms": {k: stages[k]["mean_ms"] for k in STAGES if k in stages},
            "loop_lag_p99_ms_at_most": bucket_quantile_ms(
                histogram_delta(a.metrics, b.metrics, "emo_stream_loop_lag_hist_seconds"), 0.99)}


def late_windows(samples: list[dict], threshold: float = 0.05) -> dict:
    """What windows with late frames coincide with: the mean of each figure in windows over ``threshold`` late
    against the rest, and each figure's Pearson r with the late share across windows."""
    rows = [s for s in samples if s["late_share"] is not None]
    figures = {f"{k}_cores": [s["cores"][k] for s in rows] for k in ("server", "client", "other", "steal")}
    figures.update({f"{k}_ms": [s["stage_ms"].get(k, np.nan) for s in rows] for k in STAGES})
    late = np.array([s["late_share"] for s in rows])
    bad = late > threshold
    out: dict = {"threshold": threshold, "windows": len(rows), "late_windows": int(bad.sum()), "figures": {}}
    for name, values in figures.items():
        v = np.array(values, float)
        ok = np.isfinite(v)
        r = (float(np.corrcoef(v[ok], late[ok])[0, 1])
             if ok.sum() > 2 and np.std(v[ok]) > 0 and np.std(late[ok]) > 0 else None)
        out["figures"][name] = {
            "late_windows_mean": round(float(np.nanmean(v[bad])), 3) if (bad & ok).any() else None,
            "other_windows_mean": round(float(np.nanmean(v[~bad])), 3) if (~bad & ok).any() else None,
            "r_with_late_share": None if r is None else round(r, 2)}
    return out


def offsets_ms(peer: SoakPeer, since: float, until: float) -> list[float]:
    """Each beep's flash minus its tone, by arrival (ms), for tones in [since, until) (tests/browser.av_offsets)."""
    tones = [t * 1000 for t in peer.tones if since <= t < until]
    return [round(o, 1) for o in av_offsets({"tones": tones, "flashes": [f * 1000 for f in peer.flashes]},
                                            window_ms=500.0)]


async def agent(session: AvatarSession, stop: asyncio.Event) -> None:
    """The PCM session's agent: the utterance and beep at 16 kHz every 6 s, flushed."""
    speech = utterance_with_beep(16_000)
    while not stop.is_set():
        await session.push_pcm(speech, 16_000)
        await session.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 6.0)


async def count_frames(session: AvatarSession, counts: dict[str, int]) -> None:
    async for _ in session.video():
        counts["pcm"] += 1


async def soak(base: str, server_pid: int, minutes: float, sample_s: float) -> dict:
    clip = utterance_with_beep()
    mic = SoakPeer(base, np.tile(clip, int(minutes * 60 / (len(clip) / RATE)) + 2))
    await mic.connect()
    client = AvatarClient(base)
    pcm = await client.session().open()  # the agent's session, as an agent would hold it (emo_stream.client)
    counts = {"pcm": 0}
    stop = asyncio.Event()
    agent_task = asyncio.create_task(agent(pcm, stop))
    counter = asyncio.create_task(count_frames(pcm, counts))
    started = time.monotonic()
    samples: list[dict] = []
    last = {"snap": Snapshot(base, server_pid), "steal": steal_jiffies(), "mic": 0, "pcm": 0}
    try:
        while time.monotonic() - started < minutes * 60:
            await asyncio.sleep(sample_s)
            snap, steal = Snapshot(base, server_pid), steal_jiffies()
            window = snap.t - last["snap"].t
            figures = window_figures(last["snap"], snap, last["steal"], steal)
            samples.append({
                "t_min": round((snap.t - started) / 60, 2), "rss_mb": round(rss_mb(server_pid), 1),
                "late_share": figures["late_share"],
                "fps_mic": round((mic.video_frames - last["mic"]) / window, 2),
                "fps_pcm": round((counts["pcm"] - last["pcm"]) / window, 2),
                "end_to_end_ms": figures["stage_ms"].get("end_to_end"),
                "av_offset_ms": offsets_ms(mic, last["snap"].t, snap.t),
                "cores": figures["cores"], "stage_ms": figures["stage_ms"],
                "loop_lag_p99_ms_at_most": figures["loop_lag_p99_ms_at_most"]})
            print(f"[soak] {samples[-1]}", file=sys.stderr, flush=True)
            last = {"snap": snap, "steal": steal, "mic": mic.video_frames, "pcm": counts["pcm"]}
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agent_task, 10)
        counter.cancel()
        await asyncio.gather(counter, return_exceptions=True)
        await mic.close()
        await pcm.close()
        await client.aclose()
    return {"samples": samples}


def slope_mb_per_h(samples: list[dict], skip_min: float = 2.0) -> float | None:
    kept = [(s["t_min"], s["rss_mb"]) for s in samples if s["t_min"] >= skip_min]
    if len(kept) < 3:
        return None
    t, rss = np.array(kept).T
    return round(float(np.polyfit(t / 60, rss, 1)[0]), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--processes", type=int, default=None,
                        help="server.processes (default: the config's; 0 = a session process per core, 1 = one process)")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text()) or {}
    config.setdefault("server", {})["av_probe"] = True
    if args.processes is not None:
        config["server"]["processes"] = args.processes
    path = servers.write_config({}).parent / "soak.yaml"
    path.write_text(yaml.safe_dump(config))
    with servers.run_server(config_path=path) as server:
        record = asyncio.run(soak(server.base, server.proc.pid, args.minutes, args.sample))
    samples = record["samples"]
    n = max(1, len(samples) // 6)  # the first and last sixth
    first = [o for s in samples[:n] for o in s["av_offset_ms"]]
    last = [o for s in samples[-n:] for o in s["av_offset_ms"]]
    e2e = [s["end_to_end_ms"] for s in samples if s["end_to_end_ms"] is not None]
    late = [s["late_share"] for s in samples if s["late_share"] is not None]
    print(json.dumps({
        "bench": "soak", "device": device(None, None), "commit": commit(),
        "config": {"config_file": str(args.config), "minutes": args.minutes, "sample_s": args.sample,
                   "processes": config["server"].get("processes", 0),
                   "sessions": "one microphone (looped utterance + beep), one PCM agent (utterance + beep every 6 s)"},
        "rss_mb": {"start": samples[0]["rss_mb"] if samples else None, "end": samples[-1]["rss_mb"] if samples else None,
                   "slope_mb_per_h": slope_mb_per_h(samples)},
        "late_share": {"mean": round(float(np.mean(late)), 4) if late else None,
                       "max_window": max(late, default=None)},
        "fps_min": {"mic": min((s["fps_mic"] for s in samples), default=None),
                    "pcm": min((s["fps_pcm"] for s in samples), default=None)},
        "end_to_end_ms": {"first": e2e[0] if e2e else None, "last": e2e[-1] if e2e else None,
                          "max": max(e2e, default=None)},
        "av_offset_arrival_ms": {"first_median": float(np.median(first)) if first else None,
                                 "last_median": float(np.median(last)) if last else None,
                                 "first": first, "last": last},
        "late_windows": late_windows(samples),
        "samples": samples,
        "targets": {"slope_mb_per_h": "<= 20", "late_share": "<= 0.01 (quiet machine)", "drift": "none"},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
