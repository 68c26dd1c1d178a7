"""Face landmarks from mediapipe's face mesh (478 points, model inside the wheel).

Two modes: ``FaceMesh(static=True)`` for single photos (each image on its own) and
``FaceMesh(static=False)`` for video, where the mesh tracks between frames (~3 ms/frame).
mediapipe is imported lazily and its C++ logging is silenced so CLI errors stay one line.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from emo_stream.errors import DependencyError
from emo_stream.types import FaceLandmarks

# Landmark indices used across the engine and the metrics (mediapipe face-mesh topology).
LIP_OUTER_TOP = 0
LIP_OUTER_BOTTOM = 17
LIP_INNER_TOP = 13
LIP_INNER_BOTTOM = 14
MOUTH_LEFT = 61
MOUTH_RIGHT = 291
NOSE_TIP = 1
CHIN = 152
EYE_OUTER_RIGHT = 33   # subject's right eye, image left
EYE_INNER_RIGHT = 133
EYE_OUTER_LEFT = 263
EYE_INNER_LEFT = 362
RIGHT_EYE_TOP, RIGHT_EYE_BOTTOM = 159, 145
LEFT_EYE_TOP, LEFT_EYE_BOTTOM = 386, 374
FOREHEAD = 10
# Points that move little with expression: used to estimate head rotation.
RIGID_POINTS = (1, 4, 5, 6, 168, 197, 195, 10, 151, 9, 8, 33, 133, 263, 362, 234, 454, 127, 356, 21, 251)


def _silence_native_logging() -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl ships with mediapipe's needs
        pass


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point fd 2 at /dev/null while mediapipe's C++ side starts up: it logs there unasked."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_mediapipe() -> Any:
    """Import mediapipe without its drawing helpers.

    ``mediapipe.solutions`` imports its drawing utilities, which import matplotlib.pyplot:
    0.4 s of start-up for code we never call. Empty stand-ins are registered for those two
    modules first (only if nobody imported them yet). Call inside ``_native_stderr_silenced``.
    """
    import types

    check_protobuf()
    for name in ("mediapipe.python.solutions.drawing_utils", "mediapipe.python.solutions.drawing_styles"):
        sys.modules.setdefault(name, types.ModuleType(name))
    try:
        import mediapipe
    except ImportError as exc:
        raise DependencyError(f"the face mesh needs mediapipe 0.10.21 ({exc}); `make install` installs it "
                              "(docs/platform.md)") from None
    return mediapipe


def check_protobuf(version: str | None = None) -> None:
    """mediapipe 0.10.21's graphs fail to parse under protobuf 5 or later, with an error that names neither.

    Raises:
        DependencyError: protobuf ``version`` (the installed one by default) is 5 or later.
    """
    if version is None:
        try:
            from google.protobuf import __version__ as installed  # type: ignore[import-untyped]
        except ImportError:
            return  # mediapipe's own import says what is missing
        version = str(installed)
    if int(version.split(".")[0]) >= 5:
        raise DependencyError(
            f"the face mesh (mediapipe 0.10.21) needs protobuf<5, and this environment has {version}. pipecat and "
            "LiveKit Agents need 5 or later: install them in the agent's environment, not the server's "
            "(docs/integrations.md), or run pip install 'protobuf>=4.25.3,<5'")


class FaceMesh:
    """Find faces and their 478 landmarks in RGB images.

    Args:
        static: True for unrelated photos, False to track through a video.
        max_faces: how many faces to look for.
        min_confidence: detection confidence threshold.
    """

    def __init__(self, static: bool = True, max_faces: int = 1, min_confidence: float = 0.5) -> None:
        self._options = dict(
            static_image_mode=static,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=0.5,
        )
        self._mesh: Any = None

    def _process(self, rgb: np.ndarray) -> Any:
        if self._mesh is not None:
            return self._mesh.process(rgb)
        # mediapipe's C++ side logs set-up noise to stderr, from its import until the first
        # frame is through (calculators start on their own threads): keep it all in one block.
        _silence_native_logging()
        with _native_stderr_silenced():
            mp = import_mediapipe()  # heavy: imported only when a mesh is used
            self._mesh = mp.solutions.face_mesh.FaceMesh(**self._options)
            return self._mesh.process(rgb)

    def detect(self, rgb: np.ndarray) -> list[FaceLandmarks]:
        """All faces found in ``rgb`` (H×W×3 uint8), largest first."""
        h, w = rgb.shape[:2]
        result = self._process(np.ascontiguousarray(rgb))
        faces = []
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark], dtype=np.float32)
            faces.append(FaceLandmarks(points=pts, image_size=(w, h)))
        faces.sort(key=lambda f: f.face_size_px, reverse=True)
        return faces

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> FaceMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eye_span(points: np.ndarray) -> float:
    """Distance between the outer eye corners: the face's scale, used to normalise distances."""
    return float(np.linalg.norm(points[EYE_OUTER_RIGHT, :2] - points[EYE_OUTER_LEFT, :2]))


class FaceDetector:
    """Face boxes from mediapipe's full-range detector (finds faces far smaller than the mesh does).

    Used to locate a face the mesh missed, so a small face is found and measured, then either
    refused with its size or cropped and enlarged for the mesh.
    """

    def __init__(self, min_confidence: float = 0.5) -> None:
        self._min_confidence = min_confidence
        self._detector: Any = None

    def detect(self, rgb: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        """Boxes ``(x0, y0, x1, y1, score)`` in pixels of ``rgb``, best first."""
        h, w = rgb.shape[:2]
        rgb = np.ascontiguousarray(rgb)
        if self._detector is None:
            _silence_native_logging()
            with _native_stderr_silenced():
                mp = import_mediapipe()
                self._detector = mp.solutions.face_detection.FaceDetection(
                    model_selection=1, min_detection_confidence=self._min_confidence)
                result = self._detector.process(rgb)
        else:
            result = self._detector.process(rgb)
        boxes = []
        for det in result.detections or []:
            box = det.location_data.relative_bounding_box
            x0, y0 = box.xmin * w, box.ymin * h
            boxes.append((x0, y0, x0 + box.width * w, y0 + box.height * h, float(det.score[0])))
        boxes.sort(key=lambda b: b[4], reverse=True)
        return boxes

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None
