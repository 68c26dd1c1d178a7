"""Key → shape manifests of the public EchoMimic v1 and Hallo v1 checkpoints (see README.md here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST_DIR = Path(__file__).resolve().parent
MANIFESTS = ("echomimic_v1.json", "hallo_v1.json")


def load_manifest(name: str) -> dict[str, Any]:
    """The ``files`` table of one manifest: ``{file name: {"tensors": {key: shape}, ...}}``.

    Raises:
        FileNotFoundError: ``name`` is not one of ``MANIFESTS``.
    """
    if name not in MANIFESTS:
        raise FileNotFoundError(f"no weight manifest {name!r}: the repository has {', '.join(MANIFESTS)}")
    return json.loads((MANIFEST_DIR / name).read_text())["files"]
