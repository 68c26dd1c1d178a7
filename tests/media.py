"""Test media made on the machine, never downloaded: portraits from packages, audio from espeak-ng/sox.

Everything is cached under ``.cache/test-media`` (or ``$EMO_STREAM_TEST_CACHE``) keyed by the
command that made it, so a second run makes nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EMO_STREAM_TEST_CACHE", REPO / ".cache" / "test-media"))

SENTENCES = {
    "hello": "Hello there! It is lovely to meet you, and I hope your day is going well.",
    "weather": "The weather today is bright and sunny, with a gentle breeze from the west.",
    "story": "Once upon a time, a small robot learned to paint portraits of everyone it met.",
    "mama": "mama baba papa, mama baba papa, bob made a map.",
    "ee": "eee, eee, see me, we eat cheese, eee.",
    "oo": "ooo, ooo, who knew, you do too, ooo.",
}
VOICES = ("en-us", "en-gb", "en-us+f3")


def _cached(name: str, recipe: str) -> Path:
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE / f"{Path(name).stem}-{digest}{Path(name).suffix}"


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed: `make test` installs it (apt-get install {tool})")
    return path


def espeak_wav(text_key: str, voice: str = "en-us", speed: int = 150, pitch: int = 50) -> Path:
    """A mono WAV (22.05 kHz, s16) of one of SENTENCES spoken by espeak-ng."""
    text = SENTENCES.get(text_key, text_key)
    recipe = f"espeak|{text}|{voice}|{speed}|{pitch}"
    out = _cached(f"speech-{voice.replace('+', '_')}.wav", recipe)
    if not out.exists():
        tmp = out.with_suffix(".tmp.wav")
        subprocess.run([_require("espeak-ng"), "-v", voice, "-s", str(speed), "-p", str(pitch),
                        "-w", str(tmp), text], check=True, capture_output=True)
        tmp.rename(out)
    return out


def sox(name: str, *args: str) -> Path:
    """Run sox with ``args`` (output path substituted for ``{out}``), cached.

    ``-R``: sox dithers every 16-bit output with fresh random noise (±2 levels) unless told to repeat its
    random sequence; without it a fresh checkout made different audio, so ``make train-tiny`` trained on
    different teacher videos each time it ran."""
    recipe = "sox|-R|" + "|".join(args)
    out = _cached(name, recipe)
    if not out.exists():
        tmp = out.with_name(out.stem + ".tmp" + out.suffix)
        subprocess.run([_require("sox"), "-R", *[a.replace("{out}", str(tmp)) for a in args]],
                       check=True, capture_output=True)
        tmp.rename(out)
    return out


def silence_then_speech(text_key: str = "hello", silence_s: float = 1.0, voice: str = "en-us") -> Path:
    """``silence_s`` of silence, then speech, then 0.5 s of silence, at 16 kHz."""
    speech = espeak_wav(text_key, voice)
    return sox(f"sil-speech-{text_key}.wav", "-q", str(speech), "-r", "16000", "{out}",
               "pad", f"{silence_s}", "0.5")


def singing_wav() -> Path:
    """Singing-like audio: slow, high-pitched sung syllables with vibrato (espeak-ng + sox)."""
    sung = espeak_wav("laa laa laa, daa daa daa, laa dee daa", voice="en-us+f3", speed=70, pitch=80)
    # A slow pitch bend up and down plus tremolo makes it sound sung rather than spoken.
    return sox("singing.wav", "-q", str(sung), "-r", "16000", "{out}",
               "bend", "0.3,300,0.6", "0.9,-300,0.6", "tremolo", "5.5", "35", "pad", "0.2", "0.3")


def silence_wav(seconds: float = 3.0) -> Path:
    return sox(f"silence-{seconds}.wav", "-q", "-n", "-r", "16000", "-c", "1", "-b", "16", "{out}",
               "trim", "0", f"{seconds}")


# ---------------------------------------------------------------------- portraits

def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def stylise(rgb: np.ndarray, style: str) -> np.ndarray:
    """Greyscale, sketch, posterised or painted variants: the other styles a user brings."""
    if style == "greyscale":
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        return np.repeat(grey[..., None], 3, axis=2)
    if style == "sketch":
        # A pencil sketch by colour dodge: lines on white, no shading.
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        blurred = cv2.GaussianBlur(255 - grey, (21, 21), 0)
        sketch = cv2.divide(grey, 255 - blurred, scale=256)
        return np.repeat(sketch[..., None], 3, axis=2)
    if style == "posterised":
        return np.asarray(ImageOps.posterize(Image.fromarray(rgb), 3))
    if style == "painted":
        bgr = cv2.stylization(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), sigma_s=40, sigma_r=0.3)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    raise ValueError(f"unknown style {style!r}")


STYLES = ("greyscale", "sketch", "posterised", "painted")


def save_png(rgb: np.ndarray, name: str) -> Path:
    out = CACHE / name
    CACHE.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        Image.fromarray(rgb).save(out)
    return out
