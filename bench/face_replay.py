"""Run the server where mediapipe is not installed: replay the face mesh and person matte recorded here.

The server needs mediapipe only to prepare a portrait (face mesh and face detector on the photo,
selfie-segmentation matte for the rig), once per avatar. A machine lent for measurements (Python 3.12, numpy 2) has no mediapipe (it pins
numpy<2, and its 35 MB wheel does not fit beside PyAV in what travels there), so ``record`` stores what
mediapipe returned for the bundled default portrait here, and ``run`` starts ``emo-stream`` there with
``FaceMesh.detect``, ``FaceDetector.detect`` and ``person_matte`` answering from that file. An image is matched by its shape and a
16×16 thumbnail (mean difference under 3 levels, so another libjpeg's decode of the same photo still
matches); any other image is an error, never a guess.

Usage:
    .venv/bin/python bench/face_replay.py record .benchdata/face_replay.npz [--size 512]
    python bench/face_replay.py run .benchdata/face_replay.npz serve --config configs/default.yaml ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

THUMB = 16
MAX_THUMB_DIFF = 3.0  # mean absolute difference (0-255) of the 16×16 thumbnails


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(np.ascontiguousarray(rgb), (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


class Recording:
    """What mediapipe returned, by input image: ``mesh`` entries hold the faces' points, ``detector`` the boxes,
    ``matte`` the alpha."""

    def __init__(self) -> None:
        self.entries: list[dict] = []

    def add(self, kind: str, rgb: np.ndarray, outputs: list[np.ndarray], **extra) -> None:
        self.entries.append({"kind": kind, "shape": list(rgb.shape), "thumb": thumbnail(rgb), "outputs": outputs,
                             **extra})

    def find(self, kind: str, rgb: np.ndarray) -> dict:
        thumb = thumbnail(rgb)
        best = None
        for e in self.entries:
            if e["kind"] != kind or tuple(e["shape"]) != tuple(rgb.shape):
                continue
            diff = float(np.abs(e["thumb"] - thumb).mean())
            if best is None or diff < best[0]:
                best = (diff, e)
        if best is None or best[0] > MAX_THUMB_DIFF:
            raise RuntimeError(f"face_replay: no recorded {kind} for a {rgb.shape} image (closest thumbnail differs by "
                               f"{'-' if best is None else f'{best[0]:.1f}'}); mediapipe is not installed here: record "
                               "this portrait with `bench/face_replay.py record` where it is")
        return best[1]

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        index = []
        for i, e in enumerate(self.entries):
            arrays[f"e{i}_thumb"] = e["thumb"]
            for j, out in enumerate(e["outputs"]):
                arrays[f"e{i}_out{j}"] = out
            index.append({k: v for k, v in e.items() if k not in ("thumb", "outputs")} | {"n_outputs": len(e["outputs"])})
        arrays["index"] = np.array(json.dumps(index))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> Recording:
        rec = cls()
        with np.load(path, allow_pickle=False) as z:
            for i, meta in enumerate(json.loads(str(z["index"]))):
                outputs = [z[f"e{i}_out{j}"] for j in range(meta.pop("n_outputs"))]
                rec.entries.append({**meta, "thumb": z[f"e{i}_thumb"], "outputs": outputs})
        return rec


def _patch_matte(fn) -> None:
    import emo_stream.animators.lite_rig as lite_rig
    import emo_stream.matte as matte

    matte.person_matte = fn
    lite_rig.person_matte = fn  # imported by name there


def record(out: Path, size: int) -> None:
    """Prepare the default portrait (as the server does) with mediapipe, storing its answers."""
    import emo_stream.matte as matte
    from emo_stream.animators.lite_rig import build_rig
    from emo_stream.face import FaceDetector, FaceMesh
    from server.avatars import DEFAULT_AVATAR_ID, AvatarStore

    rec = Recording()
    real_detect, real_boxes, real_matte = FaceMesh.detect, FaceDetector.detect, matte.person_matte

    def detect(self, rgb):
        faces = real_detect(self, rgb)
        rec.add("mesh", rgb, [f.points for f in faces], image_sizes=[list(f.image_size) for f in faces])
        return faces

    def boxes(self, rgb):
        found = real_boxes(self, rgb)
        rec.add("detector", rgb, [np.array(found, np.float64).reshape(-1, 5)])
        return found

    def person_matte(rgb, landmarks=None):
        alpha = real_matte(rgb, landmarks)
        rec.add("matte", rgb, [alpha])
        return alpha

    FaceMesh.detect = detect
    FaceDetector.detect = boxes
    _patch_matte(person_matte)
    avatar = AvatarStore(size).get(DEFAULT_AVATAR_ID)
    build_rig(avatar)
    rec.save(out)
    print(f"recorded {len(rec.entries)} calls ({', '.join(e['kind'] for e in rec.entries)}) for the {size}² default "
          f"portrait into {out}", file=sys.stderr)


def install(path: Path) -> None:
    """Make FaceMesh.detect, FaceDetector.detect and person_matte answer from ``path``."""
    import emo_stream.face as face
    from emo_stream.types import FaceLandmarks

    rec = Recording.load(path)

    def detect(self, rgb):
        e = rec.find("mesh", rgb)
        return [FaceLandmarks(points=np.asarray(p, np.float32), image_size=tuple(s))
                for p, s in zip(e["outputs"], e["image_sizes"], strict=True)]

    def person_matte(rgb, landmarks=None):
        return rec.find("matte", rgb)["outputs"][0].copy()

    def boxes(self, rgb):
        return [tuple(float(v) for v in row) for row in rec.find("detector", rgb)["outputs"][0]]

    face.FaceMesh.detect = detect
    face.FaceDetector.detect = boxes
    _patch_matte(person_matte)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="record mediapipe's answers for the default portrait (needs mediapipe)")
    r.add_argument("out", type=Path)
    r.add_argument("--size", type=int, default=512, help="the server's output size (animator.size)")
    run = sub.add_parser("run", help="run server.cli (emo-stream) with the recorded answers instead of mediapipe")
    run.add_argument("replay", type=Path)
    run.add_argument("cli_args", nargs=argparse.REMAINDER, help="the emo-stream arguments, e.g. serve --config ...")
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.size)
        return 0
    install(args.replay)
    from server import shards
    from server.cli import main as cli_main

    # Session processes (server.processes) replay the same recording.
    shards.CHILD_COMMAND = [sys.executable, str(Path(__file__).resolve()), "run", str(args.replay.resolve())]

    return cli_main(args.cli_args)


if __name__ == "__main__":
    sys.exit(main())
