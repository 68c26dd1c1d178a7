"""One load-generating client process for bench/server.py: a real aiortc peer (tests/live_client.LivePeer).

Run by bench/server.py, one process per session; it talks to its parent over stdin/stdout lines:

    child: ready                 (imports done, signal loaded)
    parent: go                   -> connect, send the microphone signal in real time, record
    child: connected <json>      (the session's POST answer: session_id, latency_ms)
    parent: stop                 -> close the session (DELETE), stop recording
    child: closed
    parent: analyze              -> face mesh on the stored frames, lip-sync of the recording
    child: done                  (the result JSON is in --out)

With ``--count-only`` (bench/server.py's load clients: every client but the first) video is not decoded: the
jitter buffer's completed frames are counted (with their arrival times) and the process measures frames/s and
the returned voice only; the probe client (the first) decodes and measures everything. Decoding 512² VP8 in
every client would take ~0.1 core per session from the two cores the server under test is measured on.

With ``--save-raw PATH`` (bench/server.py ``--save-dir``, on a machine without mediapipe) the probe client does
not run the face mesh: it stores what it received (frames as JPEG q85, audio, arrival times, the sent microphone) in
PATH and reports what needs no mesh; ``analyse_saved`` (bench/server.py ``--finish``) runs the rest elsewhere.

During the session the process only decodes and stores: video frames are kept as YUV 4:2:0
planes (a copy, no colour conversion) and converted to RGB after the session ends, so the
mesh and the MP4 encode never compete with the server for the CPU while it is measured.
Timestamps are time.monotonic() (CLOCK_MONOTONIC: one clock for all processes of the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from tests.impairment import Impairment, UdpRelay  # noqa: E402
from tests.live_client import RATE, LivePeer, Received, received_fps, write_recording  # noqa: E402

FRAME_SAMPLES = RATE // 50          # the microphone's 20 ms frames
ONSET_DBFS = -40.0                  # a 20 ms frame louder than this is voice
ONSET_QUIET_FRAMES = 25             # an onset follows at least 0.5 s of frames below the threshold
REST_WINDOW_S = 0.6                 # resting mouth: median over frames that arrived in the 0.6 s before the onset
TAIL_AFTER_UTTERANCE_S = 0.6        # the mouth is searched until 0.6 s after the utterance's last loud frame
DEPARTURE_FRACTION = 0.25           # "moving" = departure from rest above 25% of the utterance's max departure
MIN_MAX_DEPARTURE = 0.02            # an utterance whose mouth never departs this much (eye spans) is "no motion"


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _level_dbfs(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2))) if len(x) else 0.0
    return 20.0 * math.log10(max(rms, 1e-9))


def _loudness(x: np.ndarray) -> float:
    """sqrt of the RMS (as emo_stream.metrics.lipsync: quiet syllables still count); 0 for nothing."""
    return math.sqrt(math.sqrt(float(np.mean(np.asarray(x, np.float64) ** 2)))) if len(x) else 0.0


class RecordingPeer(LivePeer):
    """LivePeer that stores video as raw YUV 4:2:0 planes (cheap) instead of converting to RGB on the loop."""

    def keep_video(self, frame: av.VideoFrame) -> np.ndarray:
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        return frame.to_ndarray()


class CountingDecoder:
    """A VP8 "decoder" that returns one 16×16 blank frame per complete encoded frame (``--count-only``): the
    receiver's timing and frame count are the real ones, the pixels are not decoded."""

    def decode(self, encoded_frame) -> list[av.VideoFrame]:
        from aiortc.mediastreams import VIDEO_TIME_BASE

        frame = av.VideoFrame(16, 16, "yuv420p")
        frame.pts, frame.time_base = encoded_frame.timestamp, VIDEO_TIME_BASE
        return [frame]


def count_video_only() -> None:
    """Make aiortc's receivers count video frames instead of decoding them (audio is still decoded)."""
    import aiortc.rtcrtpreceiver as receiver

    real = receiver.get_decoder
    receiver.get_decoder = lambda codec: CountingDecoder() if codec.mimeType.lower() == "video/vp8" else real(codec)


def find_onsets(samples: np.ndarray, frames_sent: int) -> list[tuple[int, int]]:
    """(first loud frame, last loud frame) of each utterance among the first ``frames_sent`` 20 ms frames."""
    levels = [_level_dbfs(samples[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES]) for i in range(frames_sent)]
    loud = [lv > ONSET_DBFS for lv in levels]
    utterances: list[list[int]] = []
    quiet_run = ONSET_QUIET_FRAMES  # the signal starts after silence
    for i, is_loud in enumerate(loud):
        if is_loud:
            if quiet_run >= ONSET_QUIET_FRAMES:
                utterances.append([i, i])
            elif utterances:
                utterances[-1][1] = i
            quiet_run = 0
        else:
            quiet_run += 1
    return [(a, b) for a, b in utterances]


def voice_delay(sent_at: list[float], samples: np.ndarray, audio: list[tuple[float, np.ndarray]],
                max_lag_s: float = 4.0, step_s: float = 0.005) -> tuple[float | None, float | None]:
    """(lag s, r): the delay of the returned voice behind the sent one, by cross-correlating their loudness.

    Both sides are 20 ms frame levels (sqrt RMS) placed at the frame's wall time: when the mic frame
    was handed to the sender, when the returned frame came out of recv(); the lag is searched in
    ``0..max_lag_s`` over the overlap of both (at least 3 s).
    """
    if len(sent_at) < 100 or len(audio) < 100:
        return None, None
    st = np.asarray(sent_at)
    sent = np.array([_loudness(samples[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES]) for i in range(len(st))])
    rt = np.array([t for t, _ in audio])
    recv = np.array([_loudness(a) for _, a in audio])
    grid = np.arange(st[0], st[-1], 0.01)
    ref = np.interp(grid, st, sent)
    best_r, best_lag = None, None
    for lag in np.arange(0.0, max_lag_s, step_s):
        keep = (grid + lag >= rt[0]) & (grid + lag <= rt[-1])
        if keep.sum() < 300:
            continue
        a = ref[keep] - ref[keep].mean()
        b = np.interp(grid[keep] + lag, rt, recv)
        b = b - b.mean()
        denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
        if denom <= 0:
            continue
        r = float((a * b).sum()) / denom
        if best_r is None or r > best_r:
            best_r, best_lag = r, float(lag)
    return best_lag, best_r


def analyse_onsets(sent_at: list[float], samples: np.ndarray, arrivals: np.ndarray, mouth: np.ndarray,
                   audio: list[tuple[float, np.ndarray]], video_hold_s: float, audio_hold_s: float,
                   earliest_s: float = 0.0) -> list[dict]:
    """Voice onset -> first visibly moving mouth (and -> first loud returned voice) for each utterance.

    ``arrivals`` and ``mouth``: arrival time and mouth opening (NaN without a face) of each received
    video frame; ``audio``: the received audio frames with their arrival times. A motion (or a loud
    returned frame) seen sooner than ``earliest_s`` after the onset (the least the server can take: its
    declared latency less two ticks, see ``analyse``) cannot answer this onset (it is an earlier
    utterance's, late): the onset is then skipped, not counted as fast.
    """
    audio_t = np.array([t for t, _ in audio])
    audio_loud = np.array([_level_dbfs(a) > ONSET_DBFS for _, a in audio], dtype=bool)
    utterances = find_onsets(samples, len(sent_at))
    results = []
    for k, (first, last) in enumerate(utterances):
        t0 = sent_at[first]
        t_end = sent_at[last]
        t_next = sent_at[utterances[k + 1][0]] if k + 1 < len(utterances) else math.inf
        stop = min(t_end + TAIL_AFTER_UTTERANCE_S, t_next)
        entry: dict = {"onset_s": round(t0 - sent_at[0], 3), "utterance_s": round(t_end - t0 + 0.02, 3)}
        if len(arrivals) == 0 or arrivals[-1] < stop:
            entry["skipped"] = "session ended before the utterance's mouth window"
            results.append(entry)
            continue
        rest_sel = (arrivals >= t0 - REST_WINDOW_S) & (arrivals <= t0) & np.isfinite(mouth)
        search = np.flatnonzero((arrivals > t0) & (arrivals <= stop))
        search = search[np.isfinite(mouth[search])]
        if rest_sel.sum() < 5 or len(search) < 5:
            entry["skipped"] = f"too few frames with a face (rest {int(rest_sel.sum())}, search {len(search)})"
            results.append(entry)
            continue
        rest = float(np.median(mouth[rest_sel]))
        departure = np.abs(mouth[search] - rest)
        max_dep = float(departure.max())
        entry.update(rest=round(rest, 4), max_departure=round(max_dep, 4))
        # the returned voice: first returned 20 ms audio frame above the threshold, not sooner (corrected)
        # than the server can return it
        loud_after = np.flatnonzero((audio_t > t0 + earliest_s + audio_hold_s) & audio_loud)
        if len(loud_after):
            voice_raw = float(audio_t[loud_after[0]] - t0)
            entry.update(voice_raw_ms=round(voice_raw * 1000, 1),
                         voice_corrected_ms=round((voice_raw - audio_hold_s) * 1000, 1))
        if max_dep < MIN_MAX_DEPARTURE:
            entry["skipped"] = "no visible mouth motion"
            results.append(entry)
            continue
        moving = search[np.flatnonzero(departure > DEPARTURE_FRACTION * max_dep)[0]]
        mouth_raw = float(arrivals[moving] - t0)
        if mouth_raw - video_hold_s < earliest_s:
            entry["skipped"] = "mouth moved sooner than the server can show it (an earlier utterance's motion)"
            results.append(entry)
            continue
        entry.update(mouth_raw_ms=round(mouth_raw * 1000, 1),
                     mouth_corrected_ms=round((mouth_raw - video_hold_s) * 1000, 1))
        if "voice_raw_ms" in entry:
            entry["av_arrival_raw_ms"] = round(entry["mouth_raw_ms"] - entry["voice_raw_ms"], 1)
            entry["av_arrival_corrected_ms"] = round(entry["mouth_corrected_ms"] - entry["voice_corrected_ms"], 1)
        results.append(entry)
    return results


def analyse_counts(peer: RecordingPeer, samples: np.ndarray, audio_hold_s: float) -> dict:
    """``--count-only``: frames/s, the largest gap between frames and the returned voice's delay."""
    arrivals = [t for t, _ in peer.received.video]
    gaps = np.diff(arrivals) if len(arrivals) > 1 else np.zeros(1)
    lag, r = voice_delay(peer.mic.sent_at, samples, peer.received.audio)
    return {"session_id": peer.session_id, "count_only": True, "video_frames": len(arrivals),
            "audio_frames": len(peer.received.audio), "mic_frames_sent": len(peer.mic.sent_at),
            "fps_received": round(received_fps(peer.received, skip_s=1.0), 2),
            "max_video_gap_ms": round(float(gaps.max()) * 1000, 1),
            "voice_delay_xcorr": {"raw_ms": None if lag is None else round(lag * 1000, 1),
                                  "corrected_ms": None if lag is None else round((lag - audio_hold_s) * 1000, 1),
                                  "r": None if r is None else round(r, 3)}}


def analyse(peer: RecordingPeer, samples: np.ndarray, fps: int, audio_hold_s: float, lipsync: bool,
            declared_s: float = 0.0) -> dict:
    import cv2

    from emo_stream.face import FaceMesh
    from emo_stream.metrics import compute_video_metrics
    from emo_stream.metrics.face_measures import mouth_opening

    video_hold_s = 1.0 / fps  # aiortc's video jitter buffer hands a frame out when the next one starts
    started = time.perf_counter()
    # YUV 4:2:0 planes as received (RecordingPeer), or RGB already (analyse_saved)
    rgb = [(t, f if f.ndim == 3 else cv2.cvtColor(f, cv2.COLOR_YUV2RGB_I420)) for t, f in peer.received.video]
    peer.received.video.clear()
    # with their media times: the recording places frames and voice by them (a lost packet leaves its gap)
    rgb_received = Received(video=rgb, audio=peer.received.audio, video_pts=peer.received.video_pts,
                            audio_pts=peer.received.audio_pts)
    arrivals = [t for t, _ in rgb]
    gaps = np.diff(arrivals) if len(arrivals) > 1 else np.zeros(1)
    out: dict = {
        "session_id": peer.session_id,
        "video_frames": len(rgb),
        "audio_frames": len(peer.received.audio),
        "mic_frames_sent": len(peer.mic.sent_at),
        "fps_received": round(received_fps(rgb_received, skip_s=1.0), 2),
        "max_video_gap_ms": round(float(gaps.max()) * 1000, 1),
    }
    mouth = np.full(len(rgb), np.nan)
    with FaceMesh(static=True) as mesh:
        for i, (_, frame) in enumerate(rgb):
            faces = mesh.detect(frame)
            if faces:
                mouth[i] = mouth_opening(faces[0].points)
    out["face_found"] = round(float(np.isfinite(mouth).mean()) if len(mouth) else 0.0, 3)
    # The server shows a window's frame and voice on the tick ``declared_s`` after the tick the window completes
    # in: from the window itself, between declared_s - 1 tick and declared_s. The lite animator's mouth opens one
    # frame ahead of the sound (its lookahead): a motion may show one tick sooner still.
    earliest_s = max(0.0, declared_s - 2.0 / fps)
    out["onsets"] = analyse_onsets(peer.mic.sent_at, samples, np.array(arrivals), mouth, peer.received.audio,
                                   video_hold_s, audio_hold_s, earliest_s)
    lag, r = voice_delay(peer.mic.sent_at, samples, peer.received.audio)
    out["voice_delay_xcorr"] = {"raw_ms": None if lag is None else round(lag * 1000, 1),
                                "corrected_ms": None if lag is None else round((lag - audio_hold_s) * 1000, 1),
                                "r": None if r is None else round(r, 3)}
    out["mesh_s"] = round(time.perf_counter() - started, 2)
    if lipsync and rgb and peer.received.audio:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            path = write_recording(rgb_received, Path(d) / "recording.mp4", audio_hold_s=audio_hold_s,
                                   video_hold_s=video_hold_s)
            m = compute_video_metrics(path)
        out["lipsync"] = {"av_offset_corrected_ms": m.av_offset_ms,
                          "av_offset_raw_ms": None if m.av_offset_ms is None
                          else round(m.av_offset_ms - (audio_hold_s - video_hold_s) * 1000, 1),
                          "lipsync_r": None if m.lipsync_r is None else round(m.lipsync_r, 3),
                          "face_found": round(m.face_found, 3),
                          "mouth_open_range": None if m.mouth_open_range is None else round(m.mouth_open_range, 4)}
        out["lipsync_s"] = round(time.perf_counter() - started, 2)
    return out


JPEG_QUALITIES = (85, 75, 60)  # the first whose frames fit RAW_BUDGET (85: ~40 kB per 512² frame)
RAW_BUDGET = 14 * 2**20        # a lent machine sends back files of at most 16 MiB


def save_raw(peer: RecordingPeer, samples: np.ndarray, path: Path, fps: int, audio_hold_s: float,
             declared_s: float) -> None:
    """Everything ``analyse`` reads, in one .npz: frames as JPEG, audio as s16 (lossless: it arrived as s16)."""
    import cv2

    bgr = [cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420) for _, yuv in peer.received.video]
    for quality in JPEG_QUALITIES:
        jpegs = []
        for frame in bgr:
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            jpegs.append(buf.reshape(-1))
        if sum(len(j) for j in jpegs) <= RAW_BUDGET:
            break
    audio = peer.received.audio
    nan_for_none = lambda xs: np.array([np.nan if x is None else x for x in xs], np.float64)  # noqa: E731
    meta = {"session_id": peer.session_id, "fps": fps, "audio_hold_s": audio_hold_s, "declared_s": declared_s,
            "jpeg_quality": quality}
    np.savez_compressed(
        path, meta=np.array(json.dumps(meta)),
        video_t=np.array([t for t, _ in peer.received.video], np.float64), video_pts=nan_for_none(peer.received.video_pts),
        jpeg=np.concatenate(jpegs) if jpegs else np.zeros(0, np.uint8),
        jpeg_len=np.array([len(j) for j in jpegs], np.int64),
        audio_t=np.array([t for t, _ in audio], np.float64), audio_pts=nan_for_none(peer.received.audio_pts),
        audio=np.concatenate([np.round(a * 32768).astype(np.int16) for _, a in audio]) if audio
        else np.zeros(0, np.int16),
        audio_len=np.array([len(a) for _, a in audio], np.int64),
        sent_at=np.array(peer.mic.sent_at, np.float64),
        samples=samples[: len(peer.mic.sent_at) * FRAME_SAMPLES].astype(np.float32))


def analyse_saved(path: Path, lipsync: bool = True) -> dict:
    """``analyse`` of a probe stored by ``save_raw`` (face mesh and lip-sync, where mediapipe is installed)."""
    import types

    import cv2

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        ends = np.cumsum(z["jpeg_len"])
        jpeg = z["jpeg"]
        video = [(float(t), cv2.cvtColor(cv2.imdecode(jpeg[e - n:e], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
                 for t, n, e in zip(z["video_t"], z["jpeg_len"], ends, strict=True)]
        aends = np.cumsum(z["audio_len"])
        audio = [(float(t), z["audio"][e - n:e].astype(np.float32) / 32768.0)
                 for t, n, e in zip(z["audio_t"], z["audio_len"], aends, strict=True)]
        none_for_nan = lambda xs: [None if math.isnan(x) else float(x) for x in xs]  # noqa: E731
        received = Received(video=video, audio=audio, video_pts=none_for_nan(z["video_pts"]),
                            audio_pts=none_for_nan(z["audio_pts"]))
        peer = types.SimpleNamespace(session_id=meta["session_id"], received=received,
                                     mic=types.SimpleNamespace(sent_at=[float(t) for t in z["sent_at"]]))
        samples = z["samples"]
    return analyse(peer, samples, meta["fps"], meta["audio_hold_s"], lipsync=lipsync, declared_s=meta["declared_s"])


async def _session(peer: RecordingPeer, stdin_lines: asyncio.Queue, timeout_s: float) -> dict:
    answer = await peer.connect()
    _say("connected " + json.dumps({"session_id": answer.get("session_id"), "latency_ms": answer.get("latency_ms")}))
    try:
        line = await asyncio.wait_for(stdin_lines.get(), timeout=timeout_s)
        if line != "stop":
            print(f"live_load: expected 'stop', got {line!r}", file=sys.stderr)
    finally:
        await peer.close()
    return answer


async def _run_session(base: str, samples: np.ndarray, timeout_s: float,
                       impair: str = "", audio_in_order: bool = False) -> tuple[RecordingPeer, dict]:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue = asyncio.Queue()

    def read_stdin() -> None:
        line = sys.stdin.readline()
        with contextlib.suppress(RuntimeError):  # the loop is gone already
            loop.call_soon_threadsafe(lines.put_nowait, line.strip() if line else "eof")

    # a daemon thread (not the loop's executor, which asyncio.run would wait for): the parent's
    # "stop", or EOF when it died, ends the session
    threading.Thread(target=read_stdin, daemon=True).start()
    relay = None
    if impair:  # every packet of the session crosses a user-space impairment relay, both ways
        relay = await UdpRelay(to_server=Impairment.parse(impair), to_client=Impairment.parse(impair)).start("127.0.0.1")
    peer = RecordingPeer(base, samples, relay=relay, audio_in_order=audio_in_order)
    try:
        answer = await _session(peer, lines, timeout_s)
    finally:
        if relay is not None:
            relay.close()
    if relay is not None:
        answer = {**answer, "relay": {"up": vars(relay.up.stats), "down": vars(relay.down.stats)}}
    return peer, answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="server URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--signal", type=Path, required=True, help=".npy of the 48 kHz mono float32 microphone")
    parser.add_argument("--out", type=Path, required=True, help="where the result JSON goes")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--audio-hold-ms", type=float, default=None,
                        help="how long the receiver holds audio before recv() (subtracted from the figures); "
                             "default 80 for aiortc's audio buffer, 0 with --audio-in-order")
    parser.add_argument("--audio-in-order", action="store_true",
                        help="receive the voice as a browser plays it: each packet at once, a lost one given up "
                             "once a later one is waiting (tests/live_client.py), not through aiortc's audio buffer")
    parser.add_argument("--timeout", type=float, default=120.0, help="longest session without 'stop'")
    parser.add_argument("--no-lipsync", action="store_true")
    parser.add_argument("--count-only", action="store_true", help="count video frames, do not decode them")
    parser.add_argument("--save-raw", type=Path, default=None,
                        help="store the received streams in this .npz for analyse_saved instead of running the face "
                             "mesh here (report only what needs no mesh)")
    parser.add_argument("--impair", default="", metavar="SPEC",
                        help="route the session through tests/impairment.UdpRelay with this impairment both ways, "
                             "e.g. loss=0.05,delay_ms=30,jitter_ms=10")
    args = parser.parse_args()
    samples = np.load(args.signal).astype(np.float32)
    if args.audio_hold_ms is None:
        args.audio_hold_ms = 0.0 if args.audio_in_order else 80.0
    if args.count_only:
        count_video_only()
    _say("ready")
    if sys.stdin.readline().strip() != "go":
        return 1
    try:
        peer, answer = asyncio.run(_run_session(args.base, samples, args.timeout, args.impair,
                                                      args.audio_in_order))
    except Exception as exc:  # report, never hang the parent
        traceback.print_exc()
        args.out.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        _say("closed")
        _say("done")
        return 1
    _say("closed")
    if sys.stdin.readline().strip() != "analyze":
        return 1
    try:
        if args.count_only:
            result = analyse_counts(peer, samples, args.audio_hold_ms / 1000.0)
        elif args.save_raw:
            started = time.perf_counter()
            save_raw(peer, samples, args.save_raw, args.fps, args.audio_hold_ms / 1000.0,
                     (answer.get("latency_ms") or 0) / 1000.0)
            result = {**analyse_counts(peer, samples, args.audio_hold_ms / 1000.0), "count_only": False,
                      "raw": args.save_raw.name, "raw_bytes": args.save_raw.stat().st_size,
                      "save_s": round(time.perf_counter() - started, 2)}
        else:
            result = analyse(peer, samples, args.fps, args.audio_hold_ms / 1000.0, lipsync=not args.no_lipsync,
                             declared_s=(answer.get("latency_ms") or 0) / 1000.0)
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"analysis failed: {type(exc).__name__}: {exc}"}
    if "relay" in answer:  # datagrams each way: received, dropped, sent on
        result["relay"] = answer["relay"]
    args.out.write_text(json.dumps(result))
    _say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
