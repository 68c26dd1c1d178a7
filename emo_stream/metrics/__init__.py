"""Metrics of a decoded video as a viewer sees it: face presence, mouth motion, lip-sync, blinks, head motion.

``compute_video_metrics(video, audio=None)`` returns a ``VideoMetrics``; ``.to_dict()`` is what
``emo-stream metrics`` prints. Modules, one job each: ``video`` (decode + per-frame measures),
``face_measures`` (mouth, eyes, head rotation from landmarks), ``lipsync`` (audio envelope and
lag search), ``blinks`` (blink events), ``report`` (the summary numbers).
"""

from emo_stream.metrics.report import VideoMetrics, compute_video_metrics

__all__ = ["VideoMetrics", "compute_video_metrics"]
