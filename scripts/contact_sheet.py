"""Render a speech clip and a singing clip with the lite backend and save a contact sheet.

Usage: .venv/bin/python scripts/contact_sheet.py [-o docs/lite_contact_sheet.jpg]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emo_stream.render import RenderOptions, render_file  # noqa: E402
from tests import media  # noqa: E402


def frames_of(path: Path, picks: list[int]) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return [frames[min(i, len(frames) - 1)] for i in picks]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "lite_contact_sheet.jpg")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for label, image, audio, picks in [
            ("speech", media.save_png(media.astronaut(), "astronaut.png"), media.silence_then_speech("hello"),
             list(range(28, 60, 4))),
            ("mama baba papa", media.save_png(media.grace_hopper(), "hopper.png"), media.espeak_wav("mama"),
             list(range(2, 34, 4))),
            ("singing", media.save_png(media.stylise(media.astronaut(), "painted"), "painted.png"),
             media.singing_wav(), list(range(10, 170, 20))),
        ]:
            out = Path(d) / f"{label}.mp4"
            render_file(image, audio, out, RenderOptions(size=256, seed=3))
            tiles = [Image.fromarray(f).crop((40, 20, 216, 196)) for f in frames_of(out, picks)]
            row = Image.new("RGB", (176 * len(tiles), 196), "white")
            for i, t in enumerate(tiles):
                row.paste(t, (176 * i, 20))
            ImageDraw.Draw(row).text((4, 4), f"{label}: frames {picks[0]}..{picks[-1]}", fill="black")
            rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output, quality=85)
    print(args.output)


if __name__ == "__main__":
    main()
