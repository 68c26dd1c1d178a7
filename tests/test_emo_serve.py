"""`serve` with the emo backend (a tiny random checkpoint on the CPU): a real aiortc peer gets the
portrait at frame rate, the voice back, and a bad checkpoint is a one-line error before serving."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest

from emo_stream.audio import load_audio
from tests import media
from tests.live_client import RATE, LivePeer, audio_timeline, received_fps
from tests.servers import run_server

pytestmark = pytest.mark.timeout(240)
CHECKPOINT = media.REPO / ".cache" / "tiny-emo-checkpoint"


@pytest.fixture(scope="module")
def checkpoint():
    if not (CHECKPOINT / "model_index.json").is_file():
        subprocess.run([sys.executable, str(media.REPO / "scripts" / "make_tiny_checkpoint.py"), str(CHECKPOINT)],
                       check=True, cwd=media.REPO, capture_output=True)
    return CHECKPOINT


@pytest.fixture(scope="module")
def live_checkpoint(checkpoint, tmp_path_factory):
    """The tiny checkpoint as a distilled live one runs: 1 step, guidance folded in (one row a session). Its own
    2 steps with guidance (4 denoiser rows a clip) take ~100 ms of the 160 ms a 4-frame clip may take on these
    2 cores before the server's own work, so whether it keeps up was the machine's speed, not the server's."""
    live = tmp_path_factory.mktemp("emo-live") / "tiny"
    shutil.copytree(checkpoint, live)
    index = json.loads((live / "model_index.json").read_text())
    index["inference"].update(num_inference_steps=1, guidance_scale=1.0)
    (live / "model_index.json").write_text(json.dumps(index, indent=2))
    return live


@pytest.fixture(scope="module")
def emo_session(live_checkpoint):
    """A session served by the emo backend: (the peer, the animator's stats, the frames sent)."""
    speech = load_audio(media.silence_then_speech("hello"), sample_rate=RATE)
    config = {"animator": {"backend": "emo", "size": 128, "checkpoint": str(live_checkpoint), "device": "cpu"},
              "server": {"delay_margin_ticks": 3}}
    with run_server(config) as server:
        async def run():
            peer = LivePeer(server.base, speech)
            await peer.connect()
            await asyncio.sleep(len(speech) / RATE + 1.0)
            await peer.close()
            return peer

        peer = asyncio.run(run())
        text = httpx.get(f"{server.base}/metrics").text
    stats = dict(re.findall(r'^emo_stream_animator_stat\{name="(\w+)"\} ([0-9.e+-]+)$', text, re.M))
    assert "fallback_frames" in stats, text[-2000:]
    frames_sent = float(re.search(r"^emo_stream_frames_sent_total ([0-9.e+]+)$", text, re.M).group(1))
    return peer, stats, frames_sent


def test_serve_with_the_emo_backend(emo_session):
    peer, stats, frames_sent = emo_session
    # (Which path drew them, the model or its lite fall-back, depends on the machine's speed: see below.)
    assert frames_sent > 0 and {"emo_frames", "fallback_frames"} <= set(stats), stats
    assert received_fps(peer.received) >= 1
    assert peer.received.video[-1][1].shape == (128, 128, 3)
    _, voice = audio_timeline(peer.received)
    assert np.abs(voice).max() > 0.1  # the voice came back through the emo session
    frames = [f.astype(np.int16) for _, f in peer.received.video[25:]]
    assert max(np.abs(f - frames[0]).mean() for f in frames[1:]) > 0.1  # moving frames, not a still


def test_serve_refuses_a_broken_checkpoint(tmp_path, checkpoint):
    broken = tmp_path / "ckpt"
    subprocess.run(["cp", "-r", str(checkpoint), str(broken)], check=True)
    subprocess.run(["rm", "-r", str(broken / "vae")], check=True)
    config = tmp_path / "c.yaml"
    config.write_text(f"animator:\n  backend: emo\n  checkpoint: {broken}\n  size: 128\n")
    result = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--config", str(config), "--port", "0"],
                            capture_output=True, text=True, timeout=120, cwd=media.REPO)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "vae" in lines[0], result.stderr


@pytest.mark.realtime
def test_the_emo_backend_keeps_the_frame_rate_with_few_fallbacks(emo_session):
    peer, stats, frames_sent = emo_session
    # Most frames came from the diffusion model, not from the lite fall-back it uses when it is late.
    assert float(stats["fallback_frames"]) < 0.5 * frames_sent, stats
    assert received_fps(peer.received) >= 24
