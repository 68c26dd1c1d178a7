"""A/V sync as Chromium plays a session: prints ONE JSON object.

A server with ``server.av_probe`` on (``--config``, default configs/default.yaml: one 512² lite session) and a
headless Chromium on the demo page whose microphone beeps (1 kHz, 120 ms, every 1.5 s). The server marks the
frame of each tick whose returned voice holds the tone; in the page, requestVideoFrameCallback times each
marked frame as it is expected on screen and an AudioWorklet times each tone as WebAudio plays the remote
audio (tests/browser.py). offset = flash - tone (positive: the picture after the sound).

The baseline in the same run: the page with ``?hold_video=0``, which leaves A/V sync to Chromium alone (by
default the page asks the video receiver to hold what the audio holds plus a frame, client_web/webrtc.js).
``--pairs N`` alternates baseline and default sessions N times on one server.

``--impair SPEC`` (e.g. ``loss=0.05,delay_ms=30,jitter_ms=10``) compares the default page on the clean loopback
(the baseline) with the default page whose every packet crosses tests/impairment.py's relay, impaired both ways
(a new relay per session; the page's SDP names the relay, tests.browser.route_through), and with the page
through the relay without its repair hold (``?repair_hold=0``: no extra hold of both tracks while the video
repairs losses).

Usage: .venv/bin/python bench/av_sync.py [--config configs/default.yaml] [--seconds 30] [--pairs 2] [--impair SPEC]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # after the repository: its server/ package comes first

from server_report import commit, device  # noqa: E402

from tests import browser, servers  # noqa: E402
from tests.impairment import Impairment, relay_in_thread  # noqa: E402


def summary(offsets: list[float]) -> dict:
    if not offsets:
        return {"count": 0}
    a = np.asarray(offsets)
    return {"count": len(a), "median_ms": round(float(np.median(a)), 1),
            "p95_abs_ms": round(float(np.percentile(np.abs(a), 95)), 1),
            "min_ms": round(float(a.min()), 1), "max_ms": round(float(a.max()), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pairs", type=int, default=2, help="baseline/default sessions, alternated")
    parser.add_argument("--impair", default="", metavar="SPEC",
                        help="compare the clean path with one impaired both ways, e.g. loss=0.05,delay_ms=30,jitter_ms=10")
    args = parser.parse_args()
    try:
        impairment = Impairment.parse(args.impair) if args.impair else None
    except ValueError as exc:
        print(f"error: --impair: {exc}", file=sys.stderr)
        return 2
    why_not = browser.missing_browser()
    if why_not:
        print(f"error: {why_not}", file=sys.stderr)
        return 2
    config = yaml.safe_load(args.config.read_text()) or {}
    config.setdefault("server", {})["av_probe"] = True
    path = Path(servers.write_config({}).parent) / "av_probe.yaml"
    path.write_text(yaml.safe_dump(config))
    variants: dict[str, tuple[str, Impairment | None]] = (
        {"page_holds_video": ("", None), "page_holds_video_impaired": ("", impairment),
         "impaired_without_repair_hold": ("?repair_hold=0", impairment)} if impairment
        else {"browser_alone": ("?hold_video=0", None), "page_holds_video": ("", None)})
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with browser.run_server(config=path) as base:
        for pair in range(args.pairs):
            order = list(variants.items())
            for name, (query, impaired) in order if pair % 2 == 0 else order[::-1]:  # neither always meets a cold server
                if impaired is None:
                    result = browser.measure_av_sync(base, args.seconds, query)
                else:
                    with relay_in_thread(impaired, impaired, seed=pair) as relay:
                        result = browser.measure_av_sync(base, args.seconds, query, relay=relay)
                        result["relay"] = {"up": vars(relay.up.stats), "down": vars(relay.down.stats)}
                if result["page_errors"]:
                    print(f"error: the page reported errors: {result['page_errors']}", file=sys.stderr)
                    return 1
                offsets = result["offsets_ms"]
                half = len(offsets) // 2
                runs[name].append({
                    "tones": len(result["tones"]), "flashes": len(result["flashes"]), "frames": result["frames"],
                    "video_hold_ms": result["video_hold_ms"], "audio_hold_ms": result["audio_hold_ms"],
                    "audio_buffer_ms": result["audio_buffer_ms"],
                    **({"relay": result["relay"]} if "relay" in result else {}),
                    "first_half": offsets[:half], "second_half": offsets[half:]})
    report = {}
    for name, rs in runs.items():
        first = [o for r in rs for o in r["first_half"]]
        second = [o for r in rs for o in r["second_half"]]
        report[name] = {"all": summary(first + second), "first_half": summary(first), "second_half": summary(second),
                        "runs": [{**r, "first_half": [round(o, 1) for o in r["first_half"]],
                                  "second_half": [round(o, 1) for o in r["second_half"]]} for r in rs]}
    print(json.dumps({
        "bench": "av_sync", "device": device(None, None), "commit": commit(),
        "config": {"config_file": str(args.config), "seconds": args.seconds, "pairs": args.pairs,
                   "impair": args.impair or None,
                   "beep": "1 kHz, 120 ms, every 1.5 s"},
        **report,
        "targets": {"median_abs_ms": "<= 20", "p95_abs_ms": "<= 45"},
        "units": "ms, performance.now(); positive = the picture after the sound",
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
