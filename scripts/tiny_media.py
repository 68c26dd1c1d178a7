"""The media of ``make train-tiny``: portraits, voices and sentences, split into training and held-out sets.

Everything is made on this machine (portraits from scikit-image/matplotlib and their stylised variants, speech
from espeak-ng, sung notes from espeak-ng + sox; see ``tests/media.py``) and is deterministic for a seed.
Training videos are the lite animator (the teacher here) speaking the training audio; the held-out set uses
portraits, voices and sentences that no training video has.

- Training portraits: astronaut and Grace Hopper as they are, greyscale, sketch and posterised.
- Held-out portraits: both in the painted style, and both mirrored with shifted colours.
- Training voices/sentences: ``TRAIN_VOICES`` × ``TRAIN_SENTENCES`` (+ sung notes); held out: ``HELD_OUT_*``.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import media  # noqa: E402

TRAIN_SENTENCES = (
    "Hello there! It is lovely to meet you, and I hope your day is going well.",
    "The weather today is bright and sunny, with a gentle breeze from the west.",
    "Once upon a time, a small robot learned to paint portraits of everyone it met.",
    "mama baba papa, mama baba papa, bob made a map.",
    "eee, eee, see me, we eat cheese, eee.",
    "ooo, ooo, who knew, you do too, ooo.",
    "Please open the window. The room is warm, and we need some fresh air.",
    "My father bought a boat, and we sailed along the coast all summer.",
    "Quick! Catch the ball before it rolls away down the hill.",
    "I would like a cup of tea with milk, and maybe a biscuit or two.",
    "Numbers: one, two, three, four, five, six, seven, eight, nine, ten.",
    "Apples, oranges and bananas are on the table by the door.",
)
TRAIN_VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-x-rp", "en-us+m3", "en-029", "en-gb+f2", "en-us-nyc+m1")
SUNG = ("laa laa laa, daa daa daa, laa dee daa", "noo naa nee, moo maa mee, la la la")
HELD_OUT_SENTENCES = (
    "Good morning everyone, thank you all for coming to the meeting today.",
    "The yellow bicycle leaned against the old stone wall near the river.",
    "Could you pass me the salt and pepper, please? Thank you very much.",
    "We walked along the beach and watched the boats come into the harbour.",
)
HELD_OUT_VOICES = ("en-gb-scotland+f4", "en-us+m7", "en-gb-x-gbcwmd+f1", "en-029+f5")
STYLES = ("original", "greyscale", "sketch", "posterised")
HELD_OUT_STYLES = ("painted", "mirrored")
IDENTITIES = ("astronaut", "hopper")


@dataclass(frozen=True)
class Portrait:
    name: str
    rgb: np.ndarray


def _identity(name: str) -> np.ndarray:
    return media.astronaut() if name == "astronaut" else media.grace_hopper()


def _mirrored(rgb: np.ndarray) -> np.ndarray:
    """Mirrored, hue turned by 20°, a little warmer and brighter: a portrait the model never saw."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb[:, ::-1]), cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + 10) % 180
    hsv[..., 2] = np.clip(hsv[..., 2] * 1.08 + 6, 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.int16)
    out[..., 0] += 8
    out[..., 2] -= 8
    return np.clip(out, 0, 255).astype(np.uint8)


def portrait(identity: str, style: str) -> Portrait:
    rgb = _identity(identity)
    if style == "mirrored":
        rgb = _mirrored(rgb)
    elif style != "original":
        rgb = media.stylise(rgb, style)
    return Portrait(f"{identity}-{style}", rgb)


def training_portraits() -> list[Portrait]:
    return [portrait(i, s) for i in IDENTITIES for s in STYLES]


def held_out_portraits() -> list[Portrait]:
    return [portrait(i, s) for s in HELD_OUT_STYLES for i in IDENTITIES]


def _padded(wav: Path, name: str, before: float, after: float, tempo: float = 1.0) -> Path:
    """16 kHz mono ``wav`` with ``before``/``after`` seconds of silence (the model must learn to stay still)."""
    args = ["-q", str(wav), "-r", "16000", "-c", "1", "{out}"]
    if abs(tempo - 1.0) > 1e-6:
        args += ["tempo", f"{tempo:.3f}"]
    return media.sox(name, *args, "pad", f"{before:.2f}", f"{after:.2f}")


def _sung(text: str, pitch: int, seed: int) -> Path:
    sung = media.espeak_wav(text, voice="en-us+f3" if pitch > 60 else "en-us+m3", speed=70, pitch=pitch)
    bend = 200 + 50 * (seed % 4)
    return media.sox(f"sung-{seed}.wav", "-q", str(sung), "-r", "16000", "{out}", "bend", f"0.3,{bend},0.6",
                     f"0.9,-{bend},0.6", "tremolo", "5.5", "35")


def training_audio(seed: int, count: int) -> list[tuple[str, Path]]:
    """``count`` (label, 16 kHz wav) pairs: seeded voice × sentence picks (speed, pitch, pauses), 1 in 6 sung."""
    rng = random.Random(seed)
    out = []
    for k in range(count):
        before, after = rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.2)
        if k % 6 == 5:
            wav = _sung(SUNG[rng.randrange(len(SUNG))], rng.choice((45, 65, 80)), rng.randrange(1000))
            out.append((f"sung{k}", _padded(wav, f"tiny-train-{k}.wav", before, after)))
            continue
        voice = rng.choice(TRAIN_VOICES)
        text = rng.choice(TRAIN_SENTENCES)
        wav = media.espeak_wav(text, voice=voice, speed=rng.randrange(130, 185), pitch=rng.randrange(30, 70))
        out.append((f"speech{k}", _padded(wav, f"tiny-train-{k}.wav", before, after)))
    return out


def held_out_audio() -> list[tuple[str, Path]]:
    """One held-out (voice, sentence) per held-out portrait: 1 s of silence, speech, 1 s of silence."""
    out = []
    for k, (voice, text) in enumerate(zip(HELD_OUT_VOICES, HELD_OUT_SENTENCES, strict=True)):
        wav = media.espeak_wav(text, voice=voice, speed=160, pitch=50)
        out.append((f"{voice}", _padded(wav, f"tiny-heldout-{k}.wav", 1.0, 1.0)))
    return out


def save_portrait(p: Portrait, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{p.name}.png"
    if not path.exists():
        Image.fromarray(p.rgb).save(path)
    return path
