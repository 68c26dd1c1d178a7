"""bench/server.py's JSON: one round's results summarised, the rounds against the N = 1 baseline, the method
notes and the targets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
from server_stats import (
    Snapshot,
    bucket_quantile_ms,
    busy_cores,
    cpu_list,
    cpu_model,
    histogram_delta,
    metric,
    stage_summary,
)

REPO = Path(__file__).resolve().parent.parent

MIN_FPS = 24.0


MAX_LATE_FRACTION = 0.02  # "on time": at most 2% of the sent frames were hold frames


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 1) if values else None


def summarise(n: int, results: list[dict], failed: list[dict], a: Snapshot, b: Snapshot,
              server_cpus: list[int] | None = None, client_cpus: list[int] | None = None) -> dict:
    ok = [r for r in results if "error" not in r]
    onsets = [o for r in ok for o in r.get("onsets", [])]
    measured = [o for o in onsets if "mouth_raw_ms" in o]
    skipped: dict[str, int] = {}
    for o in onsets:
        if "skipped" in o:
            skipped[o["skipped"]] = skipped.get(o["skipped"], 0) + 1
    voiced = [o for o in onsets if "voice_raw_ms" in o]
    xcorr = [r["voice_delay_xcorr"] for r in ok if (r.get("voice_delay_xcorr") or {}).get("raw_ms") is not None]
    av_arrival = [o for o in measured if "av_arrival_corrected_ms" in o]
    lips = [r["lipsync"] for r in ok if r.get("lipsync") and r["lipsync"].get("av_offset_corrected_ms") is not None]
    window = b.t - a.t
    server_cpu = b.server_cpu - a.server_cpu
    client_cpu = b.client_cpu - a.client_cpu
    sent = metric(b.metrics, "emo_stream_frames_sent_total") - metric(a.metrics, "emo_stream_frames_sent_total")
    late = metric(b.metrics, "emo_stream_frames_late_total") - metric(a.metrics, "emo_stream_frames_late_total")
    lag = histogram_delta(a.metrics, b.metrics, "emo_stream_loop_lag_hist_seconds")
    machine_busy = busy_cores(a.cpus, b.cpus)
    parent_cpu = b.parent_cpu - a.parent_cpu
    fps = [r["fps_received"] for r in ok]
    sessions = len(ok)
    overloaded = not sent or late / sent > MAX_LATE_FRACTION
    in_session = [o for o in onsets if o.get("skipped") != "session ended before the utterance's mouth window"]
    # the onset figures describe the round only when most utterances got a measurable mouth motion
    reliable = bool(in_session) and len(measured) >= 0.75 * len(in_session)
    return {
        "sessions": n,
        "sessions_ok": sessions,
        "declared_latency_ms": next((r["declared_latency_ms"] for r in results if r.get("declared_latency_ms")), None),
        "failed": failed + [{"client": r["client"], "error": r["error"]} for r in results if "error" in r],
        "fps_received": fps,
        "fps_min": min(fps) if fps else 0.0,
        "all_sessions_at_24fps": bool(fps) and sessions == n and min(fps) >= MIN_FPS,
        "all_sessions_at_24fps_on_time": bool(fps) and sessions == n and min(fps) >= MIN_FPS and sent > 0
        and late / sent <= MAX_LATE_FRACTION,
        "max_video_gap_ms": max((r["max_video_gap_ms"] for r in ok), default=None),
        "onset_to_mouth_ms": {
            "corrected": {"p50": pct([o["mouth_corrected_ms"] for o in measured], 50),
                          "p95": pct([o["mouth_corrected_ms"] for o in measured], 95)},
            "raw": {"p50": pct([o["mouth_raw_ms"] for o in measured], 50),
                    "p95": pct([o["mouth_raw_ms"] for o in measured], 95)},
            "min_corrected": min((o["mouth_corrected_ms"] for o in measured), default=None),
            "max_corrected": max((o["mouth_corrected_ms"] for o in measured), default=None),
            "corrected_per_session_in_order": [[o["mouth_corrected_ms"] for o in r.get("onsets", [])
                                                if "mouth_corrected_ms" in o] for r in ok],
            "onsets_measured": len(measured),
            "reliable": reliable,
            "onsets_skipped": skipped,
        },
        "onset_to_returned_voice_ms": {
            "corrected": {"p50": pct([o["voice_corrected_ms"] for o in voiced], 50),
                          "p95": pct([o["voice_corrected_ms"] for o in voiced], 95)},
            "raw": {"p50": pct([o["voice_raw_ms"] for o in voiced], 50),
                    "p95": pct([o["voice_raw_ms"] for o in voiced], 95)},
            "xcorr_corrected_per_session": [x["corrected_ms"] for x in xcorr],
            "xcorr_r_per_session": [x["r"] for x in xcorr],
        },
        "av_offset_ms": {
            "lipsync_corrected_median": median([x["av_offset_corrected_ms"] for x in lips]),
            "lipsync_raw_median": median([x["av_offset_raw_ms"] for x in lips]),
            "lipsync_corrected_per_session": [x["av_offset_corrected_ms"] for x in lips],
            "lipsync_r_per_session": [x["lipsync_r"] for x in lips],
            "arrival_corrected_median": median([o["av_arrival_corrected_ms"] for o in av_arrival]),
            "arrival_raw_median": median([o["av_arrival_raw_ms"] for o in av_arrival]),
            "arrival_corrected_p95_abs": pct([abs(o["av_arrival_corrected_ms"]) for o in av_arrival], 95),
            "arrival_onsets": len(av_arrival),
        },
        "face_found_min": min((r["face_found"] for r in ok if "face_found" in r), default=None),
        "clients_decoding_video": sum(not r.get("count_only") for r in ok),
        "frames_sent": int(sent),
        "frames_late": int(late),
        # the microphones' lead control (server/input_phase.py) within the metrics window
        "input_phase_actions": {kind: int(metric(b.metrics, "emo_stream_input_phase_total", kind=kind)
                                          - metric(a.metrics, "emo_stream_input_phase_total", kind=kind))
                                for kind in ("drop", "advance", "delay", "raise", "lower")},
        "mic_packets_skipped": int(metric(b.metrics, "emo_stream_mic_packets_skipped_total")
                                   - metric(a.metrics, "emo_stream_mic_packets_skipped_total")),
        "mic_concealed_s": round(metric(b.metrics, "emo_stream_mic_concealed_seconds_total")
                                 - metric(a.metrics, "emo_stream_mic_concealed_seconds_total"), 3),
        "late_fraction": round(late / sent, 4) if sent else None,
        "overloaded": overloaded,
        "server_cpu_s_per_session_per_s": round(server_cpu / window / max(n, 1), 4),
        "server_cpu_cores": round(server_cpu / window, 3),
        # pinned: the server's share of its own cores, and how busy those cores were (any process on them)
        "server_cpu_fraction_of_pinned": round(server_cpu / window / len(server_cpus), 3) if server_cpus else None,
        "server_cpus_busy_cores": round(busy_cores(a.cpus, b.cpus, server_cpus), 3) if server_cpus else None,
        "client_cpus_busy_cores": round(busy_cores(a.cpus, b.cpus, client_cpus), 3) if client_cpus else None,
        "client_cpu_s_per_session_per_s": round(client_cpu / window / max(n, 1), 4),
        "machine_cpu_busy_cores": round(machine_busy, 3),
        "other_cpu_cores": round(machine_busy - (server_cpu + client_cpu + parent_cpu) / window, 3),
        "loop_lag_ms": {"p99_at_most": bucket_quantile_ms(lag, 0.99), "max_at_most": bucket_quantile_ms(lag, 1.0),
                        "samples": int(lag[-1][1]) if lag else 0},
        "stage_latency": stage_summary(a.metrics, b.metrics),
        "window_s": round(window, 2),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or not isinstance(value, int | float) or not isinstance(base, int | float) \
            or base == 0:
        return None
    return round(value / base, 3)


def ratios(entry: dict, base: dict) -> dict:
    def stage(e: dict, name: str) -> float | None:
        return e["stage_latency"].get(name, {}).get("mean_ms")

    def onset(e: dict, q: str) -> float | None:
        o = e["onset_to_mouth_ms"]
        return o["corrected"][q] if o["reliable"] else None

    return {
        "server_cpu_s_per_session_per_s": ratio(entry["server_cpu_s_per_session_per_s"],
                                                base["server_cpu_s_per_session_per_s"]),
        "onset_to_mouth_p50_corrected": ratio(onset(entry, "p50"), onset(base, "p50")),
        "onset_to_mouth_p95_corrected": ratio(onset(entry, "p95"), onset(base, "p95")),
        "fps_min": ratio(entry["fps_min"], base["fps_min"]),
        "end_to_end_stage_mean": ratio(stage(entry, "end_to_end"), stage(base, "end_to_end")),
        "encode_stage_mean": ratio(stage(entry, "encode"), stage(base, "encode")),
        "animate_stage_mean": ratio(stage(entry, "animate"), stage(base, "animate")),
    }


def device(server_cpus: list[int] | None = None, client_cpus: list[int] | None = None) -> str:
    model = cpu_model()
    if server_cpus:
        clients = f"cpus {cpu_list(client_cpus)}" if client_cpus else "any cpu"
        return (f"{model}, {os.cpu_count()} cores; the server pinned to cpus {cpu_list(server_cpus)} "
                f"({len(server_cpus)} torch/OpenMP threads), the clients and the bench on {clients}; the lite server "
                "uses no GPU")
    return f"{model}, {os.cpu_count()} cores, no GPU (server, client processes and analysis share these cores)"


def commit() -> str:
    """The checkout's commit; where there is no git repository (a copied tree), $EMO_STREAM_BENCH_COMMIT."""
    run = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO).stdout.strip()  # noqa: E731
    try:
        head = run("rev-parse", "--short", "HEAD")
        dirty = head and run("status", "--porcelain", "--untracked-files=no")
    except OSError:  # no git
        head = dirty = ""
    if not head:
        return os.environ.get("EMO_STREAM_BENCH_COMMIT", "unknown") + " (no git here)"
    return head + ("-dirty" if dirty else "")


METHOD = {
    "clients": ("client 0 decodes the video and measures onset -> mouth, A/V and lip-sync; the other clients (load) "
                "let aiortc's jitter buffer complete each VP8 frame and count it without decoding (--decode-all: "
                "all decode), so the 2 cores measure the server and not N video decoders; frames/s is every "
                "client's"),
    "onset": ("wall time (CLOCK_MONOTONIC, shared by all processes) at which the client's first 20 ms mic frame "
              "louder than -40 dBFS after >= 0.5 s below it was handed to the sender (LivePeer.mic.sent_at)"),
    "visible_mouth_motion": ("arrival time of the first received video frame after the onset whose mouth opening "
                             "(mediapipe face mesh, static mode, emo_stream.metrics.face_measures.mouth_opening) departs "
                             "from the resting level (median over frames that arrived in the 0.6 s before the onset) by "
                             "more than 25% of that utterance's largest departure (searched until 0.6 s after its last "
                             "loud frame); utterances whose largest departure is under 0.02 eye spans count as 'no "
                             "visible mouth motion'. Face mesh runs after the session ends, on the stored frames"),
    "onset_to_mouth_corrected": ("raw minus one frame period (40 ms at 25 fps): aiortc's video jitter buffer returns a "
                                 "frame from recv() only when the next frame's first packet arrives"),
    "onset_to_returned_voice": ("arrival of the first returned 20 ms audio frame above -40 dBFS later than onset + "
                                "the declared latency less two ticks (the server returns the caller's voice on the tick "
                                "the declared latency after the tick its window completes in); corrected "
                                "= raw minus 80 ms, aiortc's audio receive buffer. xcorr_*: per session, the lag "
                                "(0-4 s) that best correlates the loudness of the sent and the returned 20 ms frames "
                                "on the wall clock, minus the same 80 ms"),
    "onset_association": ("a mouth motion (or loud returned frame) seen sooner than onset + the declared latency less "
                          "two ticks (where in its tick the window completes, and the lite mouth's one frame of "
                          "anticipation) is not counted for that onset (it is an earlier utterance's, arriving late); when a round is "
                          "'overloaded' (frames_late > 2% of frames_sent) the per-utterance figures cannot be trusted: "
                          "delays reach the 2 s between utterances. onset_to_mouth.reliable is false when under 75% "
                          "of the utterances inside the session got a measured mouth motion (ratios are then null)"),
    "av_offset_lipsync": ("tests/live_client.write_recording of everything received, frames placed at arrival - 40 ms "
                          "(video hold) and audio at first arrival - 20 ms (write_recording's frame length) - 80 ms "
                          "(audio hold), then emo_stream.metrics.compute_video_metrics(...).av_offset_ms (best-lag "
                          "Pearson r of mouth opening vs loudness, +-200 ms in 5 ms steps); positive = video late. "
                          "raw = corrected - 40 ms (the holds shift video vs audio by 80 - 40 ms). Caveat: the server "
                          "sends each tick's two 20 ms audio packets together at the tick, so write_recording's "
                          "'arrival = end of the frame' placement puts the audio ~20 ms early: this figure reads ~20 "
                          "ms more 'video late' than the tick alignment. baseline.offline_render is the same animator "
                          "on the same signal rendered offline (no transport)"),
    "av_offset_arrival": ("per utterance: onset_to_mouth - onset_to_returned_voice, each corrected for its own "
                          "receive hold (raw: both uncorrected); positive = the mouth moves after the voice is heard. "
                          "Biased late by up to a frame: the mouth is detected at 25% of its swing, the voice at its "
                          "first loud frame"),
    "server_metrics": ("deltas of the server's /metrics between two snapshots taken 1 s after the last client "
                       "connected and at --seconds; CPU from /proc/<pid>/stat (utime+stime, all threads, with its session processes) over the same "
                       "window; loop lag and stage p95 are histogram bucket upper bounds"),
    "fps_received": "tests/live_client.received_fps: received video frames per second after the first 1 s",
    "capacity": ("sessions_at_25fps: the largest N tested for which all N connected and every session received >= 24 "
                 "frames/s. The clock never stalls (hold frames go out when a frame is late), so the received rate "
                 "alone cannot show overload: sessions_at_25fps_on_time also requires frames_late <= 2% of "
                 "frames_sent in the window"),
    "warmup": "one unreported 1-session round runs first, so first-session costs stay out of the baseline",
    "pinning": ("--server-cpus: the server process is pinned (os.sched_setaffinity before exec, inherited by all its "
                "threads) and OMP_NUM_THREADS/MKL_NUM_THREADS = its core count (torch runs silero-vad); --client-cpus: "
                "the clients and this process. server_cpu_fraction_of_pinned = the server's CPU time / (window x its "
                "cores); server_cpus_busy_cores / client_cpus_busy_cores: busy time of those cores (/proc/stat, any "
                "process) in cores; machine_cpu_busy_cores: all cores"),
    "deferred_analysis": ("with --save-dir the probe client stores its streams (frames as JPEG q85, lower if a file "
                          "would pass 14 MiB; audio; arrival times) instead of running the face mesh; --finish runs the "
                          "same analysis on them and the offline render later, on the machine named in "
                          "config.probe_analysis"),
}


def summarise_round(r: dict, server_cpus: list[int] | None, client_cpus: list[int] | None) -> dict:
    if "error" in r:
        return {"sessions": r["n"], "error": r["error"], "all_sessions_at_24fps": False}
    try:
        return summarise(r["n"], r["results"], r["failed"], Snapshot.from_dict(r["a"]), Snapshot.from_dict(r["b"]),
                         server_cpus, client_cpus)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # one odd round must not lose the others
        if r["n"] == 1:
            raise
        return {"sessions": r["n"], "error": f"summary failed: {type(exc).__name__}: {exc}",
                "all_sessions_at_24fps": False}


def report(state: dict, offline: dict | None) -> dict:
    """The JSON of a run (``measure``'s record; ``finish``'s after the deferred analysis)."""
    cfg = state["config"]
    counts = [n for n in cfg["sessions"] if str(n) in state["rounds"]]  # a run cut short has fewer
    per_n = {k: summarise_round(r, cfg["server_cpus"], cfg["client_cpus"]) for k, r in state["rounds"].items()}
    base_entry = per_n["1"]
    passing = [n for n in counts if per_n[str(n)]["all_sessions_at_24fps"]]
    on_time = [n for n in counts if per_n[str(n)].get("all_sessions_at_24fps_on_time")]
    deferred = any(r.get("raw") for rnd in state["rounds"].values() for r in rnd.get("results", []))
    return {
        "bench": "server",
        "device": state["device"],
        "commit": state["commit"],
        "config": {**cfg, "declared_latency_ms": base_entry.get("declared_latency_ms"),
                   "probe_analysis": state.get("analysed_on") or ("deferred: stored with --save-dir, not analysed yet "
                                                                  "(bench/server.py --finish DIR)" if deferred
                                                                  else "in the probe client, after each round")},
        "baseline": {**base_entry, "offline_render": offline},
        "candidate": {
            "sessions_at_25fps": max(passing, default=0),
            "sessions_at_25fps_on_time": max(on_time, default=0),
            "onset_to_mouth_p95_ms": base_entry["onset_to_mouth_ms"]["corrected"]["p95"],
            "abs_av_offset_ms": None if base_entry["av_offset_ms"]["lipsync_corrected_median"] is None
            else abs(base_entry["av_offset_ms"]["lipsync_corrected_median"]),
            "per_sessions": per_n,
        },
        "ratio": {str(n): ratios(per_n[str(n)], base_entry) for n in counts if n != 1 and "error" not in per_n[str(n)]},
        # --impair: each N again through the impairment relay, against its clean round of the same run
        "impaired": {key: {"impairment": cfg.get("impair"), **entry,
                           "vs_clean": None if "error" in entry or "error" in per_n.get(key.split("+")[0], {"error": 1})
                           else ratios(entry, per_n[key.split("+")[0]])}
                     for key, entry in per_n.items() if key.endswith("+impaired")},
        "units": {
            "latency": "ms", "fps": "frames/s received", "cpu": "CPU s per session per wall s (1.0 = one core)",
            "loop_lag": "ms (histogram bucket upper bound)", "stage_latency": "ms", "ratio": "N sessions / N=1",
            "av_offset": "ms, positive = video late",
        },
        "targets": {"onset_to_mouth_p95_ms": "<= 150 on loopback", "abs_av_offset_ms": "<= 20",
                    "sessions_at_25fps": ">= 4 (aim 6)"},
        "method": METHOD,
    }
