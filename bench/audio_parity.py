"""How far streamed speech features are from the whole-clip ones, and what whisper's 30 s padding costs a live window.

Prints one JSON object (not a test: no pass/fail here). ``--encoder echomimic`` (default): EchoMimic's speech
encoder (whisper-tiny); ``--encoder hallo``: Hallo's (wav2vec2-base). Full size, random weights, every parameter
perturbed; 16 kHz espeak-ng speech. The live emo path cuts the audio as
``EmoAnimator`` does (``emo_audio.audio_reach``: ``context_s`` of past audio, the window's lookahead, segment
starts aligned to the state grid) and encodes each clip's segment on its own; the offline path encodes the
whole clip (EchoMimic's rule). Reported, over every frame's tokens [W × L × C]:

- whisper, ``relative_l2``: ||streamed - offline|| / ||offline|| for the segment placed at its offset in its
  30 s block (``placed``: what the engine does), at position 0 of a block (``at_zero``), and unpadded
  (``unpadded``: the encoder on the segment's own length, the rule before the fix); ``ms_per_clip``: the
  encoder's time per live clip, padded to a block (now) and unpadded, interleaved A/B pairs, medians;
- wav2vec2, ``relative_l2``: ``streamed`` against the whole clip in one pass (Hallo's training features), and
  ``padded_to_16`` (Hallo's inference script: the normalised clip zero-padded to a multiple of 16 frames before
  the pass, then cut back) against the same.

Usage: .venv/bin/python bench/audio_parity.py [--encoder echomimic|hallo] [--seconds S] [--context-s C]
       [--clip-frames F] [--pairs N] [--device cpu|cuda] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emo_stream.animators.emo_audio import audio_reach  # noqa: E402
from emo_stream.audio.decode import load_audio  # noqa: E402
from emo_stream.models import configs  # noqa: E402
from emo_stream.models.speech_encoder import SpeechEncoder, log_mel_spectrogram, window_states  # noqa: E402
from tests import media  # noqa: E402

FPS = 25


TINY_WHISPER = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                "num_mel_bins": 80, "max_source_positions": 1500, "decoder_layers": 1, "decoder_attention_heads": 2,
                "decoder_ffn_dim": 64, "vocab_size": 64}
TINY_WAV2VEC2 = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                 "vocab_size": 32}


def perturbed(family: str, tiny: bool = False) -> SpeechEncoder:
    torch.manual_seed(0)
    named = dict((configs.echomimic_v1() if family == "echomimic" else configs.hallo_v1())["speech_encoder"])
    if tiny:  # the campaign's CPU dry run: the same code at a size a test can afford
        named["encoder_config"] = TINY_WHISPER if family == "echomimic" else TINY_WAV2VEC2
    encoder = SpeechEncoder(**named).eval()
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return encoder


def unpadded_states(encoder: SpeechEncoder, wave: torch.Tensor, frames: int) -> torch.Tensor:
    """The rule before the fix: the encoder run on the segment's own length (no 30 s padding)."""
    whisper = encoder._whisper()
    mel = log_mel_spectrogram(wave[None], encoder.mel_filters)
    x = F.gelu(whisper.conv2(F.gelu(whisper.conv1(mel)))).permute(0, 2, 1)
    x = x + whisper.embed_positions.weight[: x.shape[1]]
    states = [x]
    for layer in whisper.layers:
        out = layer(x, None)
        x = out[0] if isinstance(out, tuple) else out
        states.append(x)
    cfg = encoder.config
    return window_states(torch.stack(states, 2), frames, FPS, cfg.states_hz, cfg.window_before, cfg.window_after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=["echomimic", "hallo"], default="echomimic")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--context-s", type=float, default=2.0, help="the live path's past audio (engine default)")
    parser.add_argument("--clip-frames", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=8, help="interleaved A/B timing pairs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the encoder stays float32, as it runs)")
    parser.add_argument("--tiny", action="store_true", help="small random encoders (a dry run of the code)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    texts = ["hello", "weather", "story", "mama"]
    waves = [load_audio(str(media.espeak_wav(t)), 16_000) for t in texts if t in media.SENTENCES]
    wave = torch.from_numpy(np.concatenate(waves)[: int(args.seconds * 16_000)].astype(np.float32))
    device = torch.device(args.device)
    encoder = perturbed(args.encoder, args.tiny).to(device)
    wave = wave.to(device)
    whisper = args.encoder == "echomimic"
    spf = 16_000 // FPS
    reach = audio_reach(encoder, FPS, args.context_s)
    context, lookahead, align = reach.context_frames(spf), reach.lookahead_frames(spf), reach.align_frames
    total = wave.numel() // spf
    offline = encoder(wave[None], total, FPS).states[0]

    def segment(n: int) -> tuple[int, int]:
        first = max(0, ((n - context) // align) * align) if n - context > 0 else 0
        return first, min(n + args.clip_frames + lookahead, total)

    diffs: dict[str, list[float]] = {}
    norms: list[float] = []
    for n in range(0, total - args.clip_frames + 1, args.clip_frames):
        first, end = segment(n)
        seg = wave[first * spf:end * spf]
        frames = end - first  # every frame of the segment (wav2vec2 interpolates over the frames asked for)
        keep = slice(n - first, n - first + args.clip_frames)
        want = offline[n:n + args.clip_frames]
        if whisper:
            got = {"placed": encoder(seg[None], frames, FPS, start_frame=first).states[0, keep],
                   "at_zero": encoder(seg[None], frames, FPS).states[0, keep],
                   "unpadded": unpadded_states(encoder, seg, frames)[0, keep]}
        else:
            got = {"streamed": encoder(seg[None], frames, FPS).states[0, keep]}
        norms.append(float(want.pow(2).sum()))
        for name, value in got.items():
            diffs.setdefault(name, []).append(float((value - want).pow(2).sum()))
    relative = {name: round(float(np.sqrt(sum(d) / sum(norms))), 4) for name, d in diffs.items()}
    if not whisper:
        # Hallo's inference: zeros after the normalisation, to a multiple of 16 frames. Our encoder normalises
        # again; the zeros keep the mean at 0 and scale the variance, a global gain that the first CNN layer's
        # group norm takes out (up to its epsilon).
        normalised = (wave - wave.mean()) / torch.sqrt(wave.var(correction=0) + 1e-7)
        padded_frames = total + (-total) % 16
        padded = F.pad(normalised[: total * spf], (0, padded_frames * spf - total * spf))
        inference = encoder(padded[None], padded_frames, FPS).states[0, :total]
        relative["padded_to_16"] = round(float((inference - offline).norm() / offline.norm()), 4)
        print(json.dumps(_header(args, encoder, wave, lookahead, end - first) | {"relative_l2": relative},
                         indent=1))
        return

    n = total // 2
    first, end = segment(n)
    seg, frames = wave[first * spf:end * spf], end - first
    timings: dict[str, list[float]] = {"padded": [], "unpadded": []}
    for _ in range(args.pairs + 1):  # the first pair warms kernels up and is not kept
        for name in ("padded", "unpadded"):
            started = time.perf_counter()
            if name == "padded":
                encoder(seg[None], frames, FPS, start_frame=first)
            else:
                unpadded_states(encoder, seg, frames)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings[name].append((time.perf_counter() - started) * 1000)
    timings = {name: t[1:] for name, t in timings.items()}

    print(json.dumps(_header(args, encoder, wave, lookahead, end - first) | {
        "relative_l2": relative,
        "ms_per_clip": {name: {"median": round(float(np.median(t)), 1), "all": [round(x, 1) for x in t]}
                        for name, t in timings.items()},
    }, indent=1))


def _header(args: argparse.Namespace, encoder: SpeechEncoder, wave: torch.Tensor, lookahead: int,
            segment_frames: int) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip() or None
    except OSError:  # no git on a lent machine
        commit = None
    name = "whisper-tiny (EchoMimic v1)" if args.encoder == "echomimic" else "wav2vec2-base (Hallo v1)"
    if args.tiny:
        name = f"a small {encoder.config.kind} (dry run; not {name})"
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return {
        "machine": f"{platform.node()} {where}, torch {torch.__version__}",
        "commit": commit or os.environ.get("EMO_BENCH_COMMIT"),
        "encoder": f"{name}, random weights perturbed, float32, {args.device}",
        "audio_s": round(wave.numel() / 16_000, 2), "fps": FPS, "clip_frames": args.clip_frames,
        "context_s": args.context_s, "lookahead_frames": lookahead, "segment_frames": segment_frames,
    }


if __name__ == "__main__":
    main()
