"""The wav2vec2 audio path as Hallo computes it (``hallo/datasets/audio_processor.py``, ``hallo/models/wav2vec.py``,
``scripts/inference.py``): the feature extractor's normalisation, CNN features interpolated to the frame count
before the transformer, all 12 layer outputs without the embedding output, a ±2 frame window clamped at the ends,
and ``ceil(N / 640)`` frames at 25 fps."""

from __future__ import annotations

import numpy as np
import torch

from emo_stream.models.speech_encoder import SpeechEncoder
from emo_stream.streaming import iter_windows

TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
        "conv_dim": [8, 8], "conv_kernel": [10, 3], "conv_stride": [5, 2], "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2, "vocab_size": 32}


def encoder() -> SpeechEncoder:
    torch.manual_seed(0)
    return SpeechEncoder(kind="wav2vec2", encoder_config=TINY, window_before=2, window_after=2, states_hz=0.0).eval()


def test_the_input_is_normalised_as_the_feature_extractor_normalises_it():
    """``Wav2Vec2FeatureExtractor(do_normalize=True)``: (x - mean) / sqrt(var + 1e-7), the variance over N (not
    N - 1), over the whole clip."""
    from transformers import Wav2Vec2FeatureExtractor

    model = encoder()
    audio = (0.3 * np.random.default_rng(2).standard_normal(1_000) + 0.05).astype(np.float32)
    seen: list[torch.Tensor] = []
    model.encoder.feature_extractor.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model(torch.from_numpy(audio)[None], 2, 25)
    expected = Wav2Vec2FeatureExtractor(do_normalize=True)(audio, sampling_rate=16_000).input_values[0]
    assert np.allclose(seen[0][0].numpy(), expected, atol=1e-6)
    # Hallo's inference pads a clip to whole clips with zeros after this normalisation, not before it.
    with torch.no_grad():
        model(torch.from_numpy(audio)[None], 4, 25, trailing_zeros=1_560)
    assert np.allclose(seen[1][0].numpy(), np.concatenate([expected, np.zeros(1_560)]), atol=1e-6)


def test_states_are_interpolated_to_the_frame_count_and_windowed_two_either_side():
    model = encoder()
    frames = 7
    audio = torch.from_numpy(np.random.default_rng(3).standard_normal(frames * 640).astype(np.float32))
    seen: dict[str, torch.Tensor] = {}
    model.encoder.feature_extractor.register_forward_hook(lambda _m, _a, out: seen.setdefault("cnn", out))
    model.encoder.feature_projection.register_forward_pre_hook(lambda _m, args: seen.setdefault("in", args[0]))
    with torch.no_grad():
        windows = model(audio[None], frames, 25).states[0]  # [F, W, L, C]
    # The CNN's features, linearly interpolated to the frame count with aligned corners, before the transformer.
    expected = torch.nn.functional.interpolate(seen["cnn"], size=frames, mode="linear", align_corners=True)
    assert torch.allclose(seen["in"], expected.transpose(1, 2), atol=1e-6)
    assert windows.shape == (frames, 5, TINY["num_hidden_layers"], TINY["hidden_size"])
    per_frame = windows[:, 2]  # each frame's own states (the window's centre)
    for i in range(frames):  # Hallo: audio_emb[max(min(i + j, F - 1), 0)] for j in -2..2
        expected = torch.stack([per_frame[max(min(i + j, frames - 1), 0)] for j in range(-2, 3)])
        assert torch.equal(windows[i], expected)


def test_a_clip_has_as_many_frames_as_hallo_gives_it():
    """``ceil(len / 16000 * 25)`` frames; equal to ours (one per 40 ms window, the last padded) except where
    Hallo's float product overshoots an exact multiple of 640 samples (listed in its import report)."""
    import math

    for samples in (16_000, 16_001, 640 * 13 + 5, 4_000):
        ours = sum(1 for _ in iter_windows([np.zeros(samples, np.float32)]))
        assert ours == math.ceil(samples / 16_000 * 25) == math.ceil(samples / 640)
    assert math.ceil(4_480 / 16_000 * 25) == 8 and sum(1 for _ in iter_windows([np.zeros(4_480, np.float32)])) == 7
