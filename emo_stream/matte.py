"""The person's alpha matte (face, hair, neck, shoulders), computed once per portrait.

mediapipe's selfie segmentation (its model ships inside the wheel) gives the person; the face
oval from the landmarks is added so the face itself is never cut, however the photo is styled.
The animators warp the matte with the same map as the picture, so it moves with the head.
"""

from __future__ import annotations

import cv2
import numpy as np

from emo_stream.face import _native_stderr_silenced, _silence_native_logging, import_mediapipe
from emo_stream.types import FaceLandmarks

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)


def person_matte(rgb: np.ndarray, landmarks: FaceLandmarks | None = None) -> np.ndarray:
    """An H×W uint8 alpha: 255 on the person, 0 on the background, soft at the edge."""
    _silence_native_logging()
    with _native_stderr_silenced():
        mp = import_mediapipe()
        with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as segmenter:
            mask = segmenter.process(np.ascontiguousarray(rgb)).segmentation_mask
    alpha = np.clip(mask, 0.0, 1.0).astype(np.float32)
    if landmarks is not None:
        oval = np.zeros(rgb.shape[:2], np.uint8)
        cv2.fillPoly(oval, [np.round(landmarks.points[list(FACE_OVAL), :2]).astype(np.int32)], (255,))
        face = cv2.GaussianBlur(oval, (0, 0), sigmaX=max(1.0, rgb.shape[0] / 256)).astype(np.float32) / 255.0
        alpha = np.maximum(alpha, face)
    return np.round(alpha * 255).astype(np.uint8)
