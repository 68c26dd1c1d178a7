"""``python -m emo_stream.cli COMMAND …`` (the form ``torchrun -m emo_stream.cli train …`` needs)."""

import sys

from emo_stream.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m emo_stream.cli"))
