"""The pipecat video service against a direct AvatarClient: latency and A/V offset, prints ONE JSON object.

A server with ``server.av_probe`` on (``--config``, default configs/default.yaml: 512² lite) marks the frame of
every tick whose returned voice holds a 1 kHz tone (server/av_probe.py). The "TTS" is a beep (120 ms, 1 kHz)
every 1.5 s in 20 ms frames, streamed at real time as a live TTS gives it. Two variants, alternated on one
server (``--pairs``):

- **direct** (the baseline): ``AvatarClient``'s ``push_pcm``; the marked frame and the tone as they arrive from
  ``session.media()``.
- **pipecat**: the same frames as ``TTSAudioRawFrame`` through ``EmoStreamVideoService`` in a pipeline, into
  ``Mp4RecorderSink``, which plays as an output transport would.

Per beep: TTS audio in -> marked image out (the frame that enters the service or ``push_pcm`` -> the marked
frame leaving ``media()`` or reaching the sink), and the A/V offset (marked picture minus tone: as they
arrive for direct, as the sink shows and plays them for pipecat; positive = the picture after the sound).

Run it from the agent environment (pipecat is not in the server's, see docs/integrations.md); the server runs
from the main one:

    .venv-agents/bin/python bench/pipecat.py [--config configs/default.yaml] [--seconds 20] [--pairs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
# This file's own folder comes first on sys.path, where its name would hide the pipecat package.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"] + [str(REPO / "bench")]
if not os.environ.get("EMO_STREAM_SERVER_PYTHON") and (REPO / ".venv" / "bin" / "python").exists():
    os.environ["EMO_STREAM_SERVER_PYTHON"] = str(REPO / ".venv" / "bin" / "python")

from pipecat.frames.frames import TTSAudioRawFrame  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402
from server_stats import parse_metrics, stage_summary  # noqa: E402

from emo_stream.client import AudioFrame, AvatarClient, VideoFrame  # noqa: E402
from emo_stream.integrations.pipecat import EmoStreamVideoService  # noqa: E402
from emo_stream.integrations.pipecat_recorder import Mp4RecorderSink  # noqa: E402
from server.av_probe import FLASH_FRACTION, PROBE_HZ, holds_tone  # noqa: E402
from tests import servers  # noqa: E402
from tests.agents.support import FrameTap  # noqa: E402

RATE = 24_000
FRAME = RATE // 50  # 20 ms
BEEP_S, EVERY_S = 0.12, 1.5


def beeps(seconds: float) -> tuple[np.ndarray, list[int]]:
    """The "TTS": int16 at RATE, a beep every EVERY_S from 0.5 s; and the index of each beep's first frame."""
    pcm = np.zeros(int(seconds * RATE), np.float32)
    onsets = []
    t = np.arange(int(BEEP_S * RATE)) / RATE
    for start in np.arange(0.5, seconds - 1.0, EVERY_S):
        i = int(start * RATE) // FRAME * FRAME
        pcm[i: i + len(t)] = 0.5 * np.sin(2 * np.pi * PROBE_HZ * t)
        onsets.append(i // FRAME)
    return (pcm * 32767).astype(np.int16), onsets


def marked(rgb: np.ndarray) -> bool:
    side = max(8, rgb.shape[0] // FLASH_FRACTION)
    r, g, b = rgb[2: side - 2, 2: side - 2].reshape(-1, 3).mean(axis=0)
    return r > 200 and g < 80 and b > 200


def first_after(times: list[float], t: float, within: float = 1.0) -> float | None:
    later = [x for x in times if t <= x <= t + within]
    return min(later) if later else None


def per_beep(sent: list[float], flashes: list[float], tones: list[float]) -> dict:
    """Latency (beep in -> marked picture out) and offset (picture - tone) per beep sent."""
    latency, offset = [], []
    for t in sent:
        flash = first_after(flashes, t, 2.0)
        tone = first_after(tones, t, 2.0)
        if flash is not None:
            latency.append((flash - t) * 1000)
        if flash is not None and tone is not None and abs(flash - tone) < 0.4:
            offset.append((flash - tone) * 1000)
    return {"latency_ms": latency, "offset_ms": offset, "beeps": len(sent)}


def onsets_of(times: list[float], gap_s: float = 0.5) -> list[float]:
    """The first of each run of times (a beep spans several frames and packets)."""
    out: list[float] = []
    for t in sorted(times):
        if not out or t - out[-1] > gap_s:
            out.append(t)
    return out


async def paced(pcm: np.ndarray, send) -> list[float]:
    """Send the TTS 20 ms at a time, at real time; returns when each frame was sent."""
    start = time.monotonic()
    sent = []
    for k, i in enumerate(range(0, len(pcm), FRAME)):
        wait = start + k * FRAME / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        sent.append(time.monotonic())
        await send(pcm[i: i + FRAME])
    return sent


async def direct(base: str, seconds: float) -> dict:
    pcm, onsets = beeps(seconds)
    flashes, tones = [], []
    async with AvatarClient(base) as client, client.session() as session:
        async def watch():
            async for item in session.media():
                if isinstance(item, VideoFrame) and marked(item.rgb):
                    flashes.append(item.arrived)
                elif isinstance(item, AudioFrame) and holds_tone(item.mono(), item.sample_rate):
                    tones.append(item.arrived)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(1.0)
        sent = await paced(pcm, lambda chunk: session.push_pcm(chunk, RATE))
        await asyncio.sleep(2.0)
        watcher.cancel()
    return per_beep([sent[k] for k in onsets], onsets_of(flashes), onsets_of(tones))


async def through_pipecat(base: str, seconds: float) -> dict:
    pcm, onsets = beeps(seconds)
    stamp, sink = FrameTap(TTSAudioRawFrame), Mp4RecorderSink()  # stamp: when each TTS frame enters the service
    service = EmoStreamVideoService(base_url=base)
    worker = PipelineWorker(Pipeline([stamp, service, sink]), params=PipelineParams(audio_out_sample_rate=RATE),
                            enable_rtvi=False, idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    for _ in range(300):
        if sink.played.images:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    await paced(pcm, lambda chunk: worker.queue_frame(TTSAudioRawFrame(audio=chunk.tobytes(), sample_rate=RATE,
                                                                       num_channels=1)))
    await asyncio.sleep(2.0)
    from pipecat.frames.frames import EndFrame

    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, 30)
    played = sink.played
    in_times = [stamp.times[k] for k in onsets if k < len(stamp.times)]
    arrivals = onsets_of([t for t, (_, rgb) in zip(played.image_arrivals, played.images, strict=True)
                          if marked(rgb)])
    shown = onsets_of([t for t, rgb in played.images if marked(rgb)])
    tones_played = onsets_of([t for t, pcm in played.audio
                              if holds_tone(pcm.astype(np.float32) / 32768, played.sample_rate)])
    latency = per_beep(in_times, arrivals, tones_played)["latency_ms"]
    offsets = per_beep(in_times, shown, tones_played)
    return {"latency_ms": latency, "offset_ms": offsets["offset_ms"], "beeps": len(in_times)}


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": len(a), "p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "median": round(float(np.median(a)), 1), "p95_abs": round(float(np.percentile(np.abs(a), 95)), 1),
            "within_20ms": round(float(np.mean(np.abs(a) <= 20)), 3), "min": round(float(a.min()), 1),
            "max": round(float(a.max()), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text()) or {}
    config.setdefault("server", {})["av_probe"] = True
    path = servers.write_config({}).parent / "av_probe.yaml"
    path.write_text(yaml.safe_dump(config))
    runs: dict[str, list[dict]] = {"direct": [], "pipecat": []}
    stages: dict[str, dict[str, list[float]]] = {"direct": {}, "pipecat": {}}  # stage -> [sum ms, count]
    with servers.run_server(config_path=path) as server:
        def scrape() -> dict:
            return parse_metrics(httpx.get(f"{server.base}/metrics", timeout=10).text)

        for _ in range(args.pairs):
            for name, variant in (("direct", direct), ("pipecat", through_pipecat)):
                before = scrape()
                runs[name].append(asyncio.run(variant(server.base, args.seconds)))
                for stage, figures in stage_summary(before, scrape()).items():
                    total = stages[name].setdefault(stage, [0.0, 0.0])
                    total[0] += figures["mean_ms"] * figures["count"]
                    total[1] += figures["count"]
    out = {"bench": "pipecat", "machine": f"{platform.node()} ({os.cpu_count()} cores)",
           "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip(),
           "config": {"config_file": str(args.config), "seconds": args.seconds, "pairs": args.pairs}}
    for name, results in runs.items():
        out[name] = {"beeps": sum(r["beeps"] for r in results),
                     "tts_in_to_image_out_ms": summary([x for r in results for x in r["latency_ms"]]),
                     "av_offset_ms": summary([x for r in results for x in r["offset_ms"]]),
                     "server_stage_mean_ms": {stage: round(total / count, 1)
                                              for stage, (total, count) in sorted(stages[name].items()) if count}}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
