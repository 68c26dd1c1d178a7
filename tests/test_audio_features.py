"""Speech features for the lite animator, checked on espeak-ng/sox audio made on this machine."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from emo_stream.audio.decode import load_audio
from emo_stream.audio.features import (
    FEATURE_NAMES,
    LOOKAHEAD_S,
    LOOKAHEAD_SAMPLES,
    FeatureExtractor,
    features_to_arrays,
    frame_features,
    lookahead_frames,
)
from tests import media

SR = 16_000


def _features(path_or_samples) -> dict[str, np.ndarray]:
    samples = path_or_samples if isinstance(path_or_samples, np.ndarray) else load_audio(path_or_samples)
    return features_to_arrays(frame_features(samples, sample_rate=SR, fps=25))


@pytest.fixture(scope="module")
def speech() -> dict[str, np.ndarray]:
    return _features(media.silence_then_speech("hello", silence_s=1.0))


@pytest.fixture(scope="module")
def ee_oo() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return _features(media.espeak_wav("ee")), _features(media.espeak_wav("oo"))


def test_lookahead_is_one_frame_at_25_fps():
    assert LOOKAHEAD_S <= 1 / 25
    assert LOOKAHEAD_SAMPLES == 640
    assert lookahead_frames(25) == 1
    assert FeatureExtractor(SR, 25).lookahead_samples == LOOKAHEAD_SAMPLES


def test_one_frame_per_40_ms_centred_on_n_over_fps():
    samples = np.zeros(SR + 1, dtype=np.float32)
    frames = frame_features(samples)
    assert len(frames) == 26  # centres 0, 0.04, ..., 1.0 s all lie inside the audio
    assert [f.index for f in frames] == list(range(26))
    assert frames[10].time_s == pytest.approx(0.4)


def test_frames_come_out_once_their_lookahead_has_arrived():
    ex = FeatureExtractor(SR, 25)
    # Frame n is centred on sample 640 n and needs 640 samples past it.
    assert ex.push(np.zeros(639, np.float32)) == []
    assert [f.index for f in ex.push(np.zeros(1, np.float32))] == [0]
    assert [f.index for f in ex.push(np.zeros(640 * 2, np.float32))] == [1, 2]
    assert ex.push(np.zeros(1, np.float32)) == []  # sample 1920 is frame 3's centre: 639 short
    assert [f.index for f in ex.flush()] == [3]  # the end pads with silence
    assert ex.flush() == []
    with pytest.raises(ValueError):
        ex.push(np.zeros(10, np.float32))


def test_loud_during_speech_and_zero_in_silence(speech):
    t, loud = speech["time_s"], speech["loudness"]
    assert loud[t < 0.9].max() < 0.05  # the leading second of digital silence
    assert loud[t > t[-1] - 0.3].max() < 0.05  # the trailing half second
    voiced = speech["f0_hz"] > 0
    assert loud[voiced].mean() > 0.6
    assert np.percentile(loud[voiced], 75) > 0.85


@pytest.mark.parametrize("gain", [0.1, 2.5])
def test_loudness_adapts_to_quiet_and_loud_speakers(speech, gain):
    samples = load_audio(media.silence_then_speech("hello", silence_s=1.0))
    scaled = _features(np.clip(samples * gain, -1.0, 1.0).astype(np.float32))
    voiced = speech["f0_hz"] > 0
    # A 20 dB quieter (or louder, clipped) speaker opens the mouth nearly as wide.
    assert scaled["loudness"][voiced].mean() > speech["loudness"][voiced].mean() - 0.1
    assert scaled["loudness"][scaled["time_s"] < 0.9].max() < 0.05


def test_steady_noise_is_not_speech():
    noise = (10 ** (-45 / 20) * np.random.default_rng(0).standard_normal(3 * SR)).astype(np.float32)
    feats = _features(noise)
    assert feats["loudness"].mean() < 0.05
    assert (feats["f0_hz"] > 0).mean() < 0.05


def test_silence_file_gives_nothing():
    feats = _features(media.silence_wav(3.0))
    assert len(feats["index"]) == 75
    for name in ("loudness", "voicing", "f0_hz", "closure", "onset", "jaw", "stress"):
        assert np.all(feats[name] == 0), name


def test_ee_is_spread_and_oo_is_not(ee_oo):
    ee, oo = ee_oo
    ee_v, oo_v = ee["f0_hz"] > 0, oo["f0_hz"] > 0
    assert ee_v.sum() > 20 and oo_v.sum() > 20
    # F2 is the lip-spread axis: "ee" ~2.2 kHz, "oo" ~1.3 kHz in espeak's voice.
    assert np.median(ee["f2_hz"][ee_v]) > np.median(oo["f2_hz"][oo_v]) + 500
    assert ee["spread"][ee_v].mean() > 0.5
    assert ee["spread"][ee_v].mean() > oo["spread"][oo_v].mean() + 0.6
    # The spectrum says the same without formant tracking: "ee" has its F2/F3 energy up high.
    assert ee["band_high"][ee_v].mean() > 2.5 * oo["band_high"][oo_v].mean()
    # Both are close vowels: a low F1, so a smaller jaw than the open "a" of "mama".
    mama = _features(media.espeak_wav("mama"))
    assert np.median(mama["f1_hz"][mama["f0_hz"] > 0]) > np.median(ee["f1_hz"][ee_v]) + 150


def test_mama_baba_papa_shows_closures_before_loudness_rises(ee_oo):
    feats = _features(media.espeak_wav("mama"))
    closed = np.flatnonzero(feats["closure"] > 0.5)
    assert len(closed) >= 8  # 17 bilabials in the line; most are seen
    loud = feats["loudness"]
    rises = [loud[n + 1: n + 4].max() > loud[n] + 0.15 for n in closed if n + 4 <= len(loud)]
    assert np.mean(rises) >= 0.8  # the lips close *before* the vowel opens them again
    # "ooo, ooo, who knew, you do too" has no bilabial: far fewer closure frames.
    _, oo = ee_oo
    rate_mama = len(closed) / len(loud)
    rate_oo = (oo["closure"] > 0.5).sum() / len(oo["closure"])
    assert rate_mama > 2 * rate_oo


def test_voicing_and_pitch_of_speech_are_plausible(speech):
    voiced = speech["f0_hz"] > 0
    assert 0.3 < voiced.mean() < 0.8
    f0 = speech["f0_hz"][voiced]
    assert 80 < np.median(f0) < 200  # espeak-ng's default male voice
    assert np.percentile(f0, 95) < 250  # no octave-up jumps worth the name
    assert speech["voicing"][voiced].mean() > 0.7
    assert np.all(speech["pitch_st"][~voiced] == 0)


@pytest.mark.parametrize("source", ["numpy", "sox"])
def test_sine_at_220_hz_is_found(source):
    if source == "numpy":
        t = np.arange(SR) / SR
        samples = (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    else:
        samples = load_audio(media.sox("sine220.wav", "-q", "-n", "-r", "16000", "-c", "1", "-b", "16", "{out}",
                                       "synth", "1", "sine", "220", "vol", "0.3"))
    feats = _features(samples)
    inner = feats["f0_hz"][3:-3]  # away from the edges, where the window runs into silence
    assert np.all(np.abs(inner - 220.0) < 10.0)
    assert feats["voicing"][3:-3].min() > 0.9


def test_stress_marks_some_syllables_not_all(speech):
    voiced = speech["f0_hz"] > 0
    stressed = speech["stress"][voiced] > 0.5
    # "HEllo there! It is LOVEly to MEET you...": a minority of voiced frames, in runs of a syllable.
    assert 0.05 < stressed.mean() < 0.4
    assert np.all(speech["stress"][~voiced] == 0)


def test_singing_scores_higher_than_speech(speech):
    sung = _features(media.singing_wav())
    assert sung["singing"].mean() > speech["singing"].mean() + 0.15
    assert sung["singing"].max() > 0.6
    assert np.median(sung["f0_hz"][sung["f0_hz"] > 0]) > 180  # a high female voice


def test_features_stay_in_their_ranges(speech):
    for name in ("loudness", "band_low", "band_mid", "band_high", "jaw", "onset", "voicing", "stress",
                 "closure", "singing"):
        assert speech[name].min() >= 0.0 and speech[name].max() <= 1.0, name
    assert speech["spread"].min() >= -1.0 and speech["spread"].max() <= 1.0
    assert speech["flux"].min() >= 0.0
    sounding = speech["rms"] > 1e-3
    total = speech["band_low"] + speech["band_mid"] + speech["band_high"]
    assert np.allclose(total[sounding], 1.0)
    # Voiced frames carry formants; unvoiced ones carry none.
    voiced = speech["f0_hz"] > 0
    assert np.all(speech["f1_hz"][~voiced] == 0)
    assert (speech["f1_hz"][voiced] > 0).mean() > 0.9


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_in_random_chunks_equals_offline(seed):
    samples = load_audio(media.espeak_wav("mama"))
    offline = features_to_arrays(frame_features(samples))
    rng = np.random.default_rng(seed)
    ex = FeatureExtractor(SR, 25)
    frames, pos = [], 0
    while pos < len(samples):
        # Sizes from nothing through odd sub-frame counts to several frames at once.
        size = int(rng.choice([0, 1, 37, 160, 639, 640, 641, 1000, 3333]))
        frames += ex.push(samples[pos: pos + size])
        pos += size
    frames += ex.flush()
    streamed = features_to_arrays(frames)
    assert len(streamed["index"]) == len(offline["index"])
    for name in FEATURE_NAMES:
        assert np.allclose(streamed[name], offline[name], atol=1e-9), name


def test_reset_starts_a_fresh_stream():
    samples = load_audio(media.espeak_wav("ee"))
    ex = FeatureExtractor(SR, 25)
    first = ex.push(samples) + ex.flush()
    ex.reset()
    again = ex.push(samples) + ex.flush()
    assert first == again
    with pytest.raises(ValueError):
        FeatureExtractor(SR, 25).push(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError):
        FeatureExtractor(SR, 25).push(np.zeros(10, np.int16))  # PCM must be scaled to [-1, 1] first


def test_module_imports_neither_torch_nor_scipy():
    code = ("import sys, emo_stream.audio.features; "
            "bad = [m for m in ('torch', 'scipy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=media.REPO)
