"""`data prepare` on real talking video: the lite rig's targets behave as real faces do.

The clips are not in the repository (their licences do not allow shipping them): they are read from the team's
``../shared/data/talking`` beside the checkout, and these tests skip with that message where it is absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from emo_stream.audio.features import frame_features
from emo_stream.metrics.blinks import blink_events
from emo_stream.training.prepare import PrepareOptions, prepare_videos
from emo_stream.training.rig_targets import RIG_TARGET_NAMES
from emo_stream.training.shards import SAMPLE_RATE, load_manifest, read_clip_shard

TALKING = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "talking"
# Three short clips, three speakers: a woman in English, two men on TV (5, 5 and 10 s).
CLIPS = ("04_may.mp4", "13_pcavs_audio_00086.mp4", "15_pcavs_audio_681100216.mp4")

pytestmark = pytest.mark.skipif(
    not all((TALKING / name).is_file() for name in CLIPS),
    reason=f"real talking clips not found in {TALKING}: these tests need the team's data folder beside the "
           "checkout (the clips are not in the repository)")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """clip name → (rig targets, face found, loudness per frame)."""
    videos = tmp_path_factory.mktemp("talking")
    for name in CLIPS:
        shutil.copyfile(TALKING / name, videos / name)  # copies: prepare resolves links out of the folder
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare_videos(videos, out, PrepareOptions(size=32, workers=1), progress=False)
    assert not summary.skipped, summary.skipped
    result = {}
    for record in load_manifest(out).clips.values():
        arrays = read_clip_shard(out / record.shard)
        frames = frame_features(np.asarray(arrays.audio), SAMPLE_RATE, record.fps)[: record.frames]
        result[Path(record.source.path).name] = (np.asarray(arrays.rig), np.asarray(arrays.face_found),
                                                 np.array([f.loudness for f in frames]))
    return result


def test_every_frame_has_finite_targets_and_the_face(prepared):
    assert set(prepared) == set(CLIPS)
    for rig, found, _ in prepared.values():
        assert rig.shape[1] == len(RIG_TARGET_NAMES) and np.isfinite(rig).all()
        assert found.mean() > 0.95


def test_the_mouth_opens_more_in_speech_than_in_pauses(prepared):
    col_lips, col_jaw = RIG_TARGET_NAMES.index("lips_apart"), RIG_TARGET_NAMES.index("jaw")
    for name, (rig, _, loudness) in prepared.items():
        opening = 0.5 * (rig[:, col_lips] + rig[:, col_jaw])
        speech, pause = opening[loudness > 0.3], opening[loudness < 0.05]
        assert len(pause) >= 5, name
        assert speech.mean() > pause.mean(), (name, speech.mean(), pause.mean())
        assert np.percentile(opening, 95) > 0.05, name  # eye spans: a talking mouth opens visibly


def test_blinks_and_head_motion_are_found(prepared):
    blink, yaw = RIG_TARGET_NAMES.index("blink"), RIG_TARGET_NAMES.index("yaw")
    for name, (rig, _, _) in prepared.items():
        assert len(blink_events(1.0 - rig[:, blink])) >= 1, name
        assert 0.0 <= rig[:, blink].min() and rig[:, blink].max() <= 1.0
        head_std = rig[:, yaw:].std(axis=0)
        assert ((head_std > 0.3) & (head_std < 20.0)).all(), (name, head_std)
        assert np.abs(np.median(rig[:, yaw:], axis=0)).max() < 1e-3  # about the speaker's own median pose
