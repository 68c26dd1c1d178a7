"""The requirements of the agent environment (make's .venv-agents), read from pyproject.toml.

The voice-agent integrations need protobuf>=5 and the server's face mesh needs protobuf<5, so their tests run
in an environment of their own: emo-stream installed without its dependencies, then only what the client, the
two integrations and their tests import (the server they talk to runs from the main environment).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# What emo_stream.client and tests/agents import, by distribution name.
CLIENT = {"numpy", "av", "aiortc", "httpx", "websockets", "pyyaml", "opencv-python-headless", "pillow", "pytest",
          "pytest-timeout"}


def requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [r for r in project["dependencies"] + extras["test"]
              if re.split(r"[<>=~!\[ ;]", r, maxsplit=1)[0].lower() in CLIENT]
    return wanted + extras["pipecat"] + extras["livekit"]


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
