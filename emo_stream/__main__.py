"""``python -m emo_stream COMMAND …``: the engine's commands (``emo_stream.cli``)."""

import sys

from emo_stream.cli import main

if __name__ == "__main__":
    sys.exit(main())
