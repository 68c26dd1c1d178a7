"""Talking-head clips for the data-preparation tests, made on this machine and cached like ``tests.media``.

Good clips are lite renders of the test portraits speaking short espeak sentences (the lite animator
moves the head and mouth, so the face track, crops, masks and head speed all have something to see).
Bad ones are made from them: no face (a moving gradient with speech), no audio (the video track
alone), truncated (the first half of an MP4, whose index is at its end) and too short (half a second).
"""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests import media

CLIP_SIZE = 256  # the lite render's side: big enough for the face mesh, small enough to be quick
CLIP_SECONDS = 2.4


def _cached(name: str, recipe: str) -> Path:
    return media._cached(f"training-{name}", recipe)


def _speech(text_key: str, voice: str, seconds: float) -> Path:
    wav = media.espeak_wav(text_key, voice)
    return media.sox(f"speech-{text_key}-{seconds}.wav", "-q", str(wav), "-r", "16000", "{out}",
                     "trim", "0", f"{seconds}")


def talking_clip(portrait: str, text_key: str, voice: str = "en-us", fps: int = 25, suffix: str = ".mp4",
                 seconds: float = CLIP_SECONDS) -> Path:
    """A lite render of ``portrait`` ("astronaut" or "hopper") speaking ``text_key`` for ``seconds``."""
    from emo_stream.render import RenderOptions, render_file

    out = _cached(f"{portrait}-{text_key}-{fps}{suffix}", f"talk|{portrait}|{text_key}|{voice}|{fps}|{seconds}"
                  f"|{CLIP_SIZE}")
    if not out.exists():
        rgb = media.astronaut() if portrait == "astronaut" else media.grace_hopper()
        image = media.save_png(rgb, f"{portrait}.png")
        tmp = out.with_name(out.stem + ".tmp" + out.suffix)
        render_file(image, _speech(text_key, voice, seconds), tmp, RenderOptions(size=CLIP_SIZE, fps=fps, seed=1))
        tmp.rename(out)
    return out


def no_face_clip(seconds: float = CLIP_SECONDS) -> Path:
    """A drifting colour gradient with speech: a valid video with audio, and no face in it."""
    out = _cached("no-face.mp4", f"noface|{seconds}")
    if not out.exists():
        audio = _speech("weather", "en-us", seconds)
        tmp = out.with_name(out.stem + ".tmp.mp4")
        with av.open(str(tmp), "w") as container:
            video = container.add_stream("libx264", rate=25)
            video.width = video.height = 128
            video.pix_fmt = "yuv420p"
            sound = container.add_stream("aac", rate=16000, layout="mono")
            samples = _read_wav(audio)
            y, x = np.mgrid[0:128, 0:128]
            for n in range(round(seconds * 25)):
                rgb = np.stack([(x + 3 * n) % 256, (y + 2 * n) % 256, np.full_like(x, 128)], axis=2).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = n, Fraction(1, 25)
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
            for start in range(0, len(samples), 1024):
                chunk = samples[start: start + 1024]
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
        tmp.rename(out)
    return out


def wide_clip() -> Path:
    """A good clip placed off-centre in a 1024×576 QuickTime frame: larger than the face mesh's input (scaled
    down for tracking), not square, and another container."""
    source = talking_clip("hopper", "weather", "en-gb")
    out = _cached("wide.mov", f"wide|{source.name}")
    if not out.exists():
        tmp = out.with_name(out.stem + ".tmp.mov")
        with av.open(str(source)) as src, av.open(str(tmp), "w") as dst:
            video = dst.add_stream("libx264", rate=25)
            video.width, video.height, video.pix_fmt = 1024, 576, "yuv420p"
            sound = dst.add_stream_from_template(src.streams.audio[0])
            canvas = np.full((576, 1024, 3), 90, dtype=np.uint8)
            for n, frame in enumerate(src.decode(src.streams.video[0])):
                canvas[200:456, 640:896] = frame.to_ndarray(format="rgb24")
                picture = av.VideoFrame.from_ndarray(canvas, format="rgb24")
                picture.pts, picture.time_base = n, Fraction(1, 25)
                dst.mux(video.encode(picture))
            dst.mux(video.encode(None))
            src.seek(0)
            for packet in src.demux(src.streams.audio[0]):
                if packet.dts is None:
                    continue
                packet.stream = sound
                dst.mux(packet)
        tmp.rename(out)
    return out


def _read_wav(path: Path) -> np.ndarray:
    from emo_stream.audio.decode import load_audio

    return load_audio(path)


def no_audio_clip() -> Path:
    """A good clip's video track alone (stream copy)."""
    source = talking_clip("astronaut", "hello")
    out = _cached("no-audio.mp4", f"noaudio|{source.name}")
    if not out.exists():
        tmp = out.with_name(out.stem + ".tmp.mp4")
        with av.open(str(source)) as src, av.open(str(tmp), "w") as dst:
            stream = dst.add_stream_from_template(src.streams.video[0])
            for packet in src.demux(src.streams.video[0]):
                if packet.dts is None:
                    continue
                packet.stream = stream
                dst.mux(packet)
        tmp.rename(out)
    return out


def truncated_clip() -> Path:
    """The first half of a good MP4: its index (moov) is written last, so nothing can be read."""
    source = talking_clip("astronaut", "hello")
    out = _cached("truncated.mp4", f"truncated|{source.name}")
    if not out.exists():
        data = source.read_bytes()
        out.write_bytes(data[: len(data) // 2])
    return out


def short_clip() -> Path:
    """Half a second of talking: shorter than ``data prepare``'s default minimum of one second."""
    return talking_clip("hopper", "mama", seconds=0.5)


def good_clips() -> dict[str, Path]:
    """Four talking clips: two portraits, one rendered at 20 fps into MKV (resampled to 25 fps), one in a wide
    1024×576 MOV."""
    return {"astronaut.mp4": talking_clip("astronaut", "hello"),
            "hopper.mp4": talking_clip("hopper", "weather", "en-gb"),
            "astronaut20.mkv": talking_clip("astronaut", "story", "en-us+f3", fps=20, suffix=".mkv"),
            "wide.mov": wide_clip()}


def bad_clips() -> dict[str, Path]:
    return {"gradient.mp4": no_face_clip(), "silent.mp4": no_audio_clip(), "truncated.mp4": truncated_clip(),
            "short.mp4": short_clip()}


def videos_folder(folder: Path) -> Path:
    """``folder`` holding copies of the good and the bad clips (copies: the run keys them by mtime)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in {**good_clips(), **bad_clips()}.items():
        shutil.copyfile(path, folder / name)
    (folder / "notes.txt").write_text("not a video: ignored\n")
    return folder


def crash_on_no_face(task):
    """A ``prepare_videos`` task function whose process dies on the no-face clip (as a crash in native code
    would), for the pool's crash isolation test. Top level, so spawned workers can import it."""
    import os

    from emo_stream.training.prepare import _run_task

    if "gradient" in Path(task.path).name:
        os._exit(3)
    return _run_task(task)
