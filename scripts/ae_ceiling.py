"""The autoencoder's ceiling for ``make train-tiny``: the lite teacher's held-out videos passed through a checkpoint's
VAE the way the emo backend decodes (128 px, ``decode_residual``: the first frame plus the decoded change), then
scored by ``emo-stream metrics``. A model cannot show mouth motion its autoencoder does not carry.

Usage: .venv/bin/python scripts/ae_ceiling.py --checkpoint runs/train-tiny/checkpoint [--eval runs/train-tiny/eval]
(an autoencoder run's ``final`` folder works too: only its ``vae`` is read)
Prints one JSON object: per video and the means (lipsync_r, mouth ranges in speech and silence).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def through_autoencoder(vae, source: Path, out: Path, size: int) -> None:
    """``source`` (a lite render with audio) → ``out``: every frame as the residual decode of its own latents."""
    with av.open(str(source)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    side = frames[0].shape[0]

    def tensor(img: np.ndarray) -> torch.Tensor:
        small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(small).permute(2, 0, 1)[None].float() / 127.5 - 1

    decoded = []
    with torch.no_grad():
        first = tensor(frames[0])
        base = first - vae.decode(vae.encode(first).latent_dist.mean).sample
        for img in frames:
            y = base + vae.decode(vae.encode(tensor(img)).latent_dist.mean).sample
            rgb = ((y[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
            decoded.append(cv2.resize(rgb, (side, side), interpolation=cv2.INTER_CUBIC))
    with av.open(str(source)) as c_in, av.open(str(out), "w") as c_out:
        video = c_out.add_stream("libx264", rate=25)
        video.width = video.height = side
        video.pix_fmt = "yuv420p"
        sound = c_out.add_stream("aac", rate=c_in.streams.audio[0].rate, layout="mono")
        for n, rgb in enumerate(decoded):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = n, Fraction(1, 25)
            c_out.mux(video.encode(frame))
        c_out.mux(video.encode(None))
        for frame in c_in.decode(audio=0):
            frame.pts = None
            c_out.mux(sound.encode(frame))
        c_out.mux(sound.encode(None))


def main() -> int:
    from emo_stream.models.checkpoint import load_part

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--eval", type=Path, default=REPO / "runs" / "train-tiny" / "eval",
                        help="the folder scripts/eval_tiny.py wrote (its *-lite.mp4 are used)")
    args = parser.parse_args()
    # Only the VAE is read: an autoencoder run's folder is scored before any denoiser fits it.
    vae = load_part(args.checkpoint, "vae")
    size = int(vae.config.sample_size)
    cli = str(Path(sys.executable).parent / "emo-stream")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in sorted(args.eval.glob("*-lite.mp4")):
            out = Path(tmp) / source.name
            through_autoencoder(vae, source, out, size)
            done = subprocess.run([cli, "metrics", str(out), "--compact"], check=True, capture_output=True, text=True)
            m = json.loads(done.stdout)
            rows[source.name.removesuffix("-lite.mp4")] = {k: m[k] for k in (
                "lipsync_r", "mouth_open_range_speech", "mouth_open_range_silence")}
            print(source.name, rows[source.name.removesuffix("-lite.mp4")], file=sys.stderr, flush=True)
    means = {k: round(float(np.mean([r[k] for r in rows.values() if r[k] is not None])), 4)
             for k in ("lipsync_r", "mouth_open_range_speech", "mouth_open_range_silence")}
    print(json.dumps({"checkpoint": str(args.checkpoint), "videos": rows, "mean": means}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
