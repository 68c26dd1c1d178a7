"""Write a randomly initialised tiny EMO checkpoint folder (for tests and benchmarks; takes seconds).

The folder has the real layout (``model_index.json`` + one safetensors part per model, scheduler config) and
loads with ``emo_stream.models.load_checkpoint``. Its zero-initialised layers (face locator ``conv_out``,
temporal ``proj_out``, zero convs, speed projections) get small random weights so that every conditioning
path is live; the output is noise-like, not a face.

Usage: .venv/bin/python scripts/make_tiny_checkpoint.py OUT_DIR [--seed N] [--audio-mode inline|separate]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="checkpoint folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--audio-mode", choices=("inline", "separate"), default="inline",
                        help="audio slot: inline (EchoMimic-style attn2) or separate (Hallo-style audio modules)")
    args = parser.parse_args(argv)

    from emo_stream.models import save_checkpoint, tiny_components

    components = tiny_components(seed=args.seed, audio_mode=args.audio_mode)
    save_checkpoint(components, args.out_dir)
    total = sum(components.num_parameters().values())
    print(f"wrote {args.out_dir} ({total:,} parameters, seed {args.seed}, audio {args.audio_mode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
