"""`emo-stream data prepare` and the training data loader, on a handful of tiny clips made here.

The clips (tests/training_media.py) are lite renders of the test portraits speaking espeak sentences, plus
broken ones: no face, no audio track, a truncated MP4, one too short. Prepared at 64 px to stay fast.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emo_stream.animators.motion_filter import MotionFilter
from emo_stream.audio.decode import load_audio
from emo_stream.audio.features import FEATURE_NAMES
from emo_stream.errors import ConfigError, DataError, OutdatedDataError
from emo_stream.face import RIGID_POINTS
from emo_stream.training import shards
from emo_stream.training.dataset import ClipDataset
from emo_stream.training.prepare import PrepareOptions, head_speed, prepare_videos, resample
from emo_stream.training.rig_targets import RIG_TARGET_NAMES
from emo_stream.training.sample import TrainingSample, collate
from emo_stream.training.shards import FORMAT_VERSION, MANIFEST_NAME, load_manifest, read_clip_shard
from tests import training_media

SIZE = 64
CLIP_FRAMES = 60  # 2.4 s at 25 fps, whatever the source rate
GOOD = {"astronaut.mp4", "hopper.mp4", "astronaut20.mkv", "wide.mov"}
BAD = {"gradient.mp4": "no_face_found", "silent.mp4": "no_audio_stream", "truncated.mp4": "corrupt_video",
       "short.mp4": "clip_too_short"}


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emo_stream", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return training_media.videos_folder(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory):
    """The CLI run twice on the same folders: (out folder, first run, second run, shard mtimes after the first)."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    first = cli("data", "prepare", "--videos", str(videos), "--out", str(out), "--size", str(SIZE), "--workers", "2")
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    second = cli("data", "prepare", "--videos", str(videos), "--out", str(out), "--size", str(SIZE), "--quiet",
                 "--json")
    return out, first, second, mtimes


# ---------------------------------------------------------------------------------------------- data prepare


def test_prepare_shards_good_clips_and_reports_bad_ones(prepared):
    out, first, _, _ = prepared
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    summary = first.stderr.strip().splitlines()[-1]
    assert summary.startswith("prepared 4 clips") and "skipped 4" in summary and "already done 0" in summary
    for name, code in BAD.items():
        assert any(name in line and f"[{code}]" in line for line in first.stderr.splitlines()), (name, first.stderr)
    manifest = load_manifest(out)
    assert {Path(p).name for p in manifest.clips} == GOOD
    assert {Path(p).name: s.code for p, s in manifest.skipped.items()} == BAD
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(c.clip_id + ".tar" for c in
                                                                         manifest.clips.values())
    assert not list(out.glob(".*")), "temporary files left behind"
    assert (manifest.size, manifest.fps, manifest.sample_rate) == (SIZE, 25, 16000)


def test_rerun_resumes_and_does_nothing_new(prepared):
    out, _, second, mtimes = prepared
    assert second.returncode == 0, second.stderr
    assert second.stderr.strip().count("\n") == 0, "--quiet: the summary line only"
    assert "prepared 0 clips" in second.stderr and "already done 8" in second.stderr
    report = json.loads(second.stdout)
    assert report["prepared"] == [] and report["skipped"] == [] and report["already_done"] == 8
    assert report["total_clips"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == mtimes


def test_shard_contents(prepared, videos):
    out, _, _, _ = prepared
    for clip in load_manifest(out).clips.values():
        arrays = read_clip_shard(out / clip.shard)
        assert isinstance(arrays.frames, np.memmap), "frames are memory-mapped, not read"
        t = clip.frames
        assert t == CLIP_FRAMES, (clip.clip_id, t)  # the 20 fps clip too: resampled to 25 fps
        assert arrays.frames.shape == (t, SIZE, SIZE, 3) and arrays.frames.dtype == np.uint8
        assert arrays.audio.shape == (t * 640,) and arrays.audio.dtype == np.float32
        assert arrays.features.shape == (t, len(FEATURE_NAMES))
        assert arrays.head_speed.shape == (t,) and np.isfinite(arrays.head_speed).all()
        assert (arrays.head_speed >= 0).all() and arrays.head_speed.max() > 1e-3, "the lite head moves"
        assert arrays.head_speed.max() < 0.2, "lite head turns are slow: radians per frame, not degrees"
        assert arrays.frames.std(axis=0).mean() > 0.5, "the mouth and head move between frames"
        # The face is in the middle of a fixed crop, and the mask covers it (not the corners).
        mask = arrays.face_mask
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) == {0, 1}
        assert mask[SIZE // 2, SIZE // 2] == 1 and mask[0, 0] == 0 and mask[-1, -1] == 0
        assert 0.05 < mask.mean() < 0.6
        boxes = arrays.boxes
        assert boxes.shape == (t, 4) and (boxes[:, :2] >= -1).all() and (boxes[:, 2:] <= SIZE + 1).all()
        # Audio sample 0 plays with frame 0: the shard's audio is the file's own track, from its start.
        source = load_audio(clip.source.path)[: t * 640]
        assert np.corrcoef(source, arrays.audio[: len(source)])[0, 1] > 0.99
        assert arrays.meta["clip_id"] == clip.clip_id and arrays.meta["fps"] == 25
        assert clip.source_fps == (20.0 if clip.source.path.endswith(".mkv") else 25.0)
        assert clip.source_size == ((1024, 576) if clip.source.path.endswith(".mov") else (256, 256))
        # The lite rig's targets: per frame, finite, per speaker (the lite renders open their mouths and blink).
        assert arrays.meta["rig_names"] == list(RIG_TARGET_NAMES)
        assert arrays.rig.shape == (t, len(RIG_TARGET_NAMES)) and np.isfinite(arrays.rig).all()
        assert arrays.face_found.shape == (t,) and arrays.face_found.mean() > 0.9
        mouth = arrays.rig[:, RIG_TARGET_NAMES.index("mouth_open")]
        assert mouth.min() >= 0 and np.percentile(mouth, 95) > 0.02, "a speaking mouth opens above its floor"


def test_train_lite_motion_is_deterministic_and_reports_bad_prefixes(prepared, tmp_path):
    out, _, _, _ = prepared
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path in (first, second):
        result = cli("train-lite-motion", "--data", str(out), "--out", str(path), "--held-out", "hopper", "--quiet")
        assert result.returncode == 0, result.stderr
    a, b = MotionFilter.load(first), MotionFilter.load(second)  # (the header's key order varies, not the data)
    for name in ("weight", "bias", "in_mean", "in_std", "rest"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.stats == b.stats and a.stats["held_out"] == ["hopper"]
    assert "held-out speakers (1 clips)" in result.stderr, result.stderr
    bad = cli("train-lite-motion", "--data", str(out), "--out", str(tmp_path / "c.safetensors"), "--held-out", "nobody")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "nobody" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_resume_is_per_video(videos, tmp_path, monkeypatch):
    """A changed file or a lost shard is prepared again; nothing else is. Stale temporary files are cleaned."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("astronaut.mp4", "hopper.mp4"):
        shutil.copyfile(videos / name, folder / name)
    out = tmp_path / "out"
    options = PrepareOptions(size=48, workers=1)
    first = prepare_videos(folder, out, options)
    assert len(first.prepared) == 2 and not first.skipped
    (out / ".tmp-killed-run").mkdir()
    (out / "shards" / ".x.tar.abc.tmp").write_bytes(b"partial")

    stat = (folder / "astronaut.mp4").stat()
    os.utime(folder / "astronaut.mp4", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = prepare_videos(folder, out, options)
    assert [Path(c.source.path).name for c in again.prepared] == ["astronaut.mp4"] and again.already_done == 1
    assert {c.clip_id for c in again.prepared} <= {c.clip_id for c in first.prepared}, "same clip id"
    assert not (out / ".tmp-killed-run").exists() and not (out / "shards" / ".x.tar.abc.tmp").exists()

    hopper = next(c for c in first.prepared if c.source.path.endswith("hopper.mp4"))
    (out / hopper.shard).unlink()
    third = prepare_videos(folder, out, options)
    assert [c.clip_id for c in third.prepared] == [hopper.clip_id] and third.total_clips == 2

    # A run killed after writing a shard but before saving the manifest: the shard is taken back, not redone.
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["clips"] = [c for c in manifest["clips"] if c["clip_id"] != hopper.clip_id]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    fourth = prepare_videos(folder, out, options)
    assert not fourth.prepared and fourth.already_done == 2 and fourth.total_clips == 2

    # The videos folder moved (a run directory renamed): the clips are prepared again from the new paths and
    # replace their old entries — each clip is listed once, or a dataset would draw it twice as often.
    moved = folder.rename(tmp_path / "moved")
    fifth = prepare_videos(moved, out, options)
    assert len(fifth.prepared) == 2 and fifth.total_clips == 2
    listed = [c["source"]["path"] for c in json.loads((out / MANIFEST_NAME).read_text())["clips"]]
    assert sorted(Path(p).parent.name for p in listed) == ["moved", "moved"]

    with pytest.raises(ConfigError, match="48 px"):
        prepare_videos(moved, out, PrepareOptions(size=64, workers=1))

    # A folder an older version prepared: training refuses it with a typed error, and prepare starts it over
    # (every clip again, none of its old shards adopted) instead of telling the user to do what they are doing.
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["version"] = FORMAT_VERSION - 1
    manifest["clips"] = []
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(OutdatedDataError, match="prepare the data again"):
        load_manifest(out)
    # Its shards are of the old format and unlisted, as an interrupted start-over leaves them: never adopted.
    olds = sorted((out / "shards").glob("*.tar"))
    for old in olds:
        arrays = read_clip_shard(old)
        with monkeypatch.context() as patch:
            patch.setattr(shards, "FORMAT_VERSION", FORMAT_VERSION - 1)
            shards.write_clip_shard(old, arrays.clip_id, {name: np.asarray(getattr(arrays, name))
                                                          for name in shards.FIELDS}, arrays.meta)
        with pytest.raises(OutdatedDataError, match="prepare the data again"):
            read_clip_shard(old)
    sixth = prepare_videos(moved, out, options)
    assert len(sixth.prepared) == 2 and sixth.already_done == 0 and load_manifest(out).clips
    for old in olds:
        read_clip_shard(old)  # prepared again, in the current format


def test_a_crashing_worker_skips_only_its_video(videos, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("astronaut.mp4", "gradient.mp4"):
        shutil.copyfile(videos / name, folder / name)
    summary = prepare_videos(folder, tmp_path / "out", PrepareOptions(size=32, workers=2),
                             _run=training_media.crash_on_no_face)
    assert [Path(c.source.path).name for c in summary.prepared] == ["astronaut.mp4"]
    assert [(Path(s.source.path).name, s.code) for s in summary.skipped] == [("gradient.mp4", "worker_crashed")]


@pytest.mark.parametrize("args, words", [
    (["--videos", "{tmp}/missing"], "no such folder"),
    (["--videos", "{tmp}", "--size", "0"], "--size"),
    (["--videos", "{tmp}", "--workers", "0"], "--workers"),
    (["--videos", "{tmp}", "--fps", "30"], "--fps"),
    (["--videos", "{tmp}", "--out", "{tmp}/file.txt"], "is a file"),
])
def test_prepare_bad_arguments(args, words, tmp_path, capsys):
    from emo_stream.cli import main

    (tmp_path / "file.txt").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    # --debug keeps pytest's stderr capture (it re-raises internal errors only; user errors stay one line).
    assert main(["--debug", "data", "prepare", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err, err


def test_resample_to_25_fps():
    def times(fps: float, n: int):
        return ((i / fps, i) for i in range(n))

    assert [i for _, i in resample(times(25, 10), 25, 1 / 25)] == list(range(10))
    assert [i for _, i in resample(times(50, 20), 25, 1 / 50)] == list(range(0, 20, 2))
    # 20 fps → 25 fps: 2 s stay 2 s (50 frames), each output the nearest earlier-or-equal source frame.
    out = [i for _, i in resample(times(20, 40), 25, 1 / 20)]
    assert len(out) == 50 and out[:6] == [0, 1, 2, 2, 3, 4] and out[-1] == 39
    assert out == sorted(out)
    # Repeated and backwards timestamps are dropped; a late start keeps its own zero.
    assert [i for _, i in resample(iter([(1.0, 0), (1.0, 1), (1.04, 2), (1.02, 3), (1.08, 4)]), 25, 0.04)] == \
        [0, 2, 4]


def test_head_speed_from_rigid_landmarks():
    rng = np.random.default_rng(0)
    shape = rng.normal(size=(len(RIGID_POINTS), 3)) * 40 + 200
    step = 0.02  # radians of yaw per frame

    def turned(angle: float) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        centred = shape - shape.mean(axis=0)
        return centred @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T + shape.mean(axis=0)

    frames = np.stack([turned(step * n) for n in range(30)])
    found = np.ones(30, dtype=bool)
    speed = head_speed(frames, found)
    assert speed.shape == (30,) and speed.dtype == np.float32
    assert np.allclose(speed[2:-2], step, atol=1e-3)
    still = head_speed(np.repeat(shape[None], 30, axis=0), found)
    assert np.allclose(still, 0, atol=1e-6)
    found[10:14] = False  # frames without a face: interpolated, no jump
    frames[10:14] = np.nan
    assert np.allclose(head_speed(frames, found)[2:-2], step, atol=2e-3)


# ---------------------------------------------------------------------------------------------- ClipDataset


def test_dataset_samples_follow_the_contract(prepared):
    out = prepared[0]
    ds = ClipDataset(out, clip_frames=8, motion_frames=2, seed=0)
    assert len(ds) == 4 * 7  # ceil((60 - 10 + 1) / 8) slots per clip
    manifest = load_manifest(out)
    ids = {c.clip_id: c for c in manifest.clips.values()}
    for i in range(len(ds)):
        s = ds[i]
        assert isinstance(s, TrainingSample)
        assert s.reference.shape == (3, SIZE, SIZE) and s.target.shape == (3, 8, SIZE, SIZE)
        assert s.motion.shape == (3, 2, SIZE, SIZE) and s.audio.shape == (8 * 640,)
        assert s.face_mask.shape == (1, SIZE, SIZE) and s.head_speed.shape == (8,)
        assert all(t.dtype == torch.float32 for t in (s.reference, s.target, s.motion, s.audio, s.face_mask,
                                                      s.head_speed))
        assert s.target.min() >= -1 and s.target.max() <= 1 and set(s.face_mask.unique().tolist()) <= {0.0, 1.0}
        assert s.clip_id in ids and 2 <= s.start <= ids[s.clip_id].frames - 8
    # Motion frames are the ones just before the target; audio spans exactly the target frames.
    s = ds[0]
    arrays = read_clip_shard(out / ids[s.clip_id].shard)
    pixels = torch.from_numpy(np.array(arrays.frames[s.start - 2: s.start + 8])).permute(3, 0, 1, 2) / 127.5 - 1
    assert torch.allclose(s.motion, pixels[:, :2]) and torch.allclose(s.target, pixels[:, 2:])
    assert torch.equal(s.audio, torch.from_numpy(np.array(arrays.audio[s.start * 640: (s.start + 8) * 640])))
    assert torch.equal(s.head_speed, torch.from_numpy(np.array(arrays.head_speed[s.start: s.start + 8])))
    batch = collate([ds[i] for i in range(4)])
    assert batch.target.shape == (4, 3, 8, SIZE, SIZE) and batch.audio.shape == (4, 8 * 640)


def test_dataset_is_deterministic_and_reshuffles_per_epoch(prepared):
    out = prepared[0]
    a = ClipDataset(out, clip_frames=6, motion_frames=3, seed=7)
    b = ClipDataset(out, clip_frames=6, motion_frames=3, seed=7)
    windows = [a.window(i) for i in range(len(a))]
    assert windows == [b.window(i) for i in range(len(b))]
    for i in (0, 5, len(a) - 1):
        x, y = a[i], b[i]
        assert (x.clip_id, x.start) == (y.clip_id, y.start)
        assert torch.equal(x.target, y.target) and torch.equal(x.reference, y.reference)
    assert windows != [ClipDataset(out, 6, 3, seed=8).window(i) for i in range(len(a))]
    a.set_epoch(1)
    assert [a.window(i) for i in range(len(a))] != windows
    a.set_epoch(0)
    assert [a.window(i) for i in range(len(a))] == windows
    # Every clip is visited each epoch (a permutation of per-clip slots), and pickling (spawned DataLoader
    # workers) keeps the order but not the open shards.
    assert {w[0] for w in windows} == {0, 1, 2, 3}
    clone = pickle.loads(pickle.dumps(a))
    assert clone._open == {} and torch.equal(clone[3].target, a[3].target)


def test_dataset_resize_epoch_length_and_bounded_memory(prepared):
    out = prepared[0]
    ds = ClipDataset(out, clip_frames=4, motion_frames=0, size=32, seed=1, samples_per_epoch=50, max_open_shards=1)
    assert len(ds) == 50
    for i in range(len(ds)):
        s = ds[i]
        assert s.target.shape == (3, 4, 32, 32) and s.motion.shape == (3, 0, 32, 32)
        assert s.face_mask.shape == (1, 32, 32) and s.reference.shape == (3, 32, 32)
        assert len(ds._open) <= 1
    with pytest.raises(IndexError):
        ds[50]
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate)
    assert sum(len(b.clip_ids) for b in loader) == 50


def test_dataset_errors(prepared, tmp_path):
    out = prepared[0]
    with pytest.raises(DataError, match="no manifest.json"):
        ClipDataset(tmp_path, clip_frames=8)
    with pytest.raises(DataError, match="61 frames"):
        ClipDataset(out, clip_frames=50, motion_frames=11)
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    (empty / MANIFEST_NAME).write_text(json.dumps({**manifest, "clips": []}))
    with pytest.raises(DataError, match="no prepared clips"):
        ClipDataset(empty, clip_frames=8)
    with pytest.raises(ConfigError):
        ClipDataset(out, clip_frames=0)
    with pytest.raises(ConfigError, match="seed"):
        ClipDataset(out, clip_frames=8, seed=-1)


def test_augmentation_identity_greyscale_and_mirror():
    from emo_stream.training.augment import ColourJitter, draw_augmentation

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-0.9, 0.9, (3, 2, 8, 8)).astype(np.float32))
    same = draw_augmentation(rng, ColourJitter(hue_turn=0.0, saturation=(1, 1), contrast=(1, 1),
                                               brightness=(0, 0), flip=0.0))
    torch.testing.assert_close(same.pixels(x), x, atol=1e-5, rtol=0)  # the YIQ round trip is exact
    grey = draw_augmentation(rng, ColourJitter(saturation=(0, 0), flip=1.0))
    y = grey.pixels(x)
    assert torch.allclose(y[0], y[1], atol=1e-5) and torch.allclose(y[1], y[2], atol=1e-5)
    mask = torch.zeros(1, 8, 8)
    mask[..., :3] = 1
    assert torch.equal(grey.mask(mask), mask.flip(-1))
    # A hue turn keeps the brightness (Y) and turns the colour: a pure red goes elsewhere.
    turned = draw_augmentation(np.random.default_rng(5), ColourJitter(hue_turn=0.5, saturation=(1, 1),
                                                                      contrast=(1, 1), brightness=(0, 0)))
    red = torch.tensor([0.6, -0.6, -0.6]).reshape(3, 1, 1)
    assert not torch.allclose(turned.pixels(red), red, atol=0.05)


def test_augmented_samples_share_one_change_and_keep_their_windows(prepared):
    out = prepared[0]
    plain = ClipDataset(out, clip_frames=4, motion_frames=2, seed=3)
    aug = ClipDataset(out, clip_frames=4, motion_frames=2, seed=3, augment=True)
    flips = 0
    for i in range(12):
        p, a = plain[i], aug[i]
        assert (p.clip_id, p.start) == (a.clip_id, a.start) and torch.equal(p.audio, a.audio)
        assert a.target.min() >= -1 and a.target.max() <= 1
        flipped = not torch.equal(a.face_mask, p.face_mask)
        flips += flipped
        # One colour map for reference, motion and target: fit it on the reference, it explains the target.
        src = torch.cat([p.reference.reshape(3, -1), torch.ones(1, p.reference[0].numel())])
        dst = (a.reference.flip(-1) if flipped else a.reference).reshape(3, -1)
        keep = (dst.abs() < 0.98).all(0)  # pixels the clamp did not touch
        fit = torch.linalg.lstsq(src[:, keep].T, dst[:, keep].T).solution
        target = a.target.flip(-1) if flipped else a.target
        mapped = (fit.T @ torch.cat([p.target.reshape(3, -1), torch.ones(1, p.target[0].numel())])).clamp(-1, 1)
        assert (mapped - target.reshape(3, -1)).abs().mean() < 0.02
        assert torch.equal(aug[i].target, a.target)  # deterministic
    assert 0 < flips < 12
