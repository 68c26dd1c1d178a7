"""The GPU campaign's summary: one markdown table from the JSON files ``bench/gpu_campaign.sh`` wrote.

Usage: python bench/campaign_table.py OUT_DIR > OUT_DIR/campaign.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def emo_rows(name: str, result: dict) -> list[str]:
    config = result["config"]
    rows = []
    for row in result["candidate"]["grid"]:
        compute = row.get("compute", {})
        rows.append(f"| {name} | {config['weights']} | {'yes' if config.get('compile') else 'no'} | {row['steps']} | "
                    f"{row['sessions']} | {row['fps_per_session']} | {row['fps_aggregate']} | "
                    f"{row['voice_to_frame_ms_p95']} | {compute.get('gflops_per_frame', '—')} | "
                    f"{_pct(compute.get('mfu'))} |")
    return rows


def main() -> int:
    out = Path(sys.argv[1])
    emo = sorted(out.glob("emo_*.json"))
    lines = ["# GPU campaign", ""]
    device = None
    table = []
    for path in emo:
        result = json.loads(path.read_text())
        device = device or result["device"]
        table += emo_rows(path.stem, result)
    lines += [f"Device: {device}." if device else "No emo results.", ""]
    if table:
        lines += ["| run | weights | compiled | steps | sessions | frames/s per session | aggregate | "
                  "voice → frame p95 ms | GFLOP per frame | MFU |", "|---|---|---|---|---|---|---|---|---|---|", *table, ""]
    for path in sorted(out.glob("audio_parity_*.json")):
        result = json.loads(path.read_text())
        timing = result.get("ms_per_clip", {})
        lines.append(f"- `{path.name}`: {result['encoder']}; relative L2 {result['relative_l2']}"
                     + (f"; ms per live clip padded {timing['padded']['median']} against unpadded "
                        f"{timing['unpadded']['median']}" if timing else ""))
    for path in sorted(out.glob("profile_*.md")):
        lines += ["", f"## {path.stem}", "", path.read_text()]
    missing = sorted(p.name for p in out.glob("*.failed"))
    if missing:
        lines += ["", "Runs that did not finish: " + ", ".join(missing)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
