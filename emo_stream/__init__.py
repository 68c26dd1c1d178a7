"""emo-stream: one portrait photo + a voice -> a live, expressive portrait video.

The engine package. It never imports ``server``; the lite path imports no torch.
"""

__version__ = "0.1.0"
