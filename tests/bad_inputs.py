"""Builders for the bad inputs every entry point must refuse with a typed error."""

from __future__ import annotations

import io
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests import media


def text_file(tmp: Path) -> Path:
    p = tmp / "notes.jpg"
    p.write_text("this is a text file, not a photo\n" * 20)
    return p


def truncated_jpeg(tmp: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(media.astronaut()).save(buf, "JPEG", quality=90)
    p = tmp / "truncated.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return p


def one_pixel_png(tmp: Path) -> Path:
    p = tmp / "one.png"
    Image.new("RGB", (1, 1), (200, 150, 120)).save(p)
    return p


def huge_jpeg(tmp: Path, width: int = 10_000, height: int = 6_000) -> Path:
    """A real 60 MP JPEG (small on disk: one flat colour)."""
    p = tmp / "huge.jpg"
    Image.new("RGB", (width, height), (90, 120, 150)).save(p, "JPEG", quality=50)
    return p


def png_bomb(tmp: Path, side: int = 100_000) -> Path:
    """A PNG whose header claims side×side pixels but carries a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")
    p = tmp / "bomb.png"
    p.write_bytes(body)
    return p


def no_face_png(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    sky = np.linspace(40, 220, 384, dtype=np.float32)[:, None, None] * np.ones((384, 512, 3), np.float32)
    noisy = np.clip(sky + rng.normal(0, 8, sky.shape), 0, 255).astype(np.uint8)
    p = tmp / "landscape.png"
    Image.fromarray(noisy).save(p)
    return p


def tiny_face_png(tmp: Path) -> Path:
    """The astronaut shrunk to a 20-px face in a grey 400×400 picture."""
    canvas = Image.new("RGB", (400, 400), (128, 128, 128))
    canvas.paste(Image.fromarray(media.astronaut()).resize((100, 100)), (133, 100))
    p = tmp / "tiny_face.png"
    canvas.save(p)
    return p


def empty_wav(tmp: Path) -> Path:
    """A valid WAV header with no samples."""
    p = tmp / "empty.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(p), "trim", "0", "0"], check=True)
    return p


def garbage_wav(tmp: Path) -> Path:
    p = tmp / "garbage.wav"
    rng = np.random.default_rng(1)
    p.write_bytes(b"RIFF" + struct.pack("<I", 4000) + b"WAVE" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return p


def silent_video_mp4(tmp: Path, frames: int = 10) -> Path:
    """An MP4 with a video track and no audio track."""
    import av

    p = tmp / "no_audio.mp4"
    with av.open(str(p), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 20, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return p
