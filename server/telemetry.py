"""Prometheus metrics of the server (``emo_stream_*``), on a registry of the app's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)


class Telemetry:
    """Counters, gauges and per-stage latency histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("emo_stream_sessions_active", "Sessions running now", registry=r)
        self.sessions_total = Counter("emo_stream_sessions_total", "Sessions created", registry=r)
        self.sessions_reaped = Counter("emo_stream_sessions_reaped_total", "Sessions closed by the server",
                                       ["reason"], registry=r)
        self.frames_sent = Counter("emo_stream_frames_sent_total", "Video frames handed to the encoder", registry=r)
        self.frames_late = Counter("emo_stream_frames_late_total",
                                   "Ticks whose frame was not ready (a hold or idle frame went out)", registry=r)
        self.frames_dropped = Counter("emo_stream_frames_dropped_total",
                                      "Ticks dropped from a track queue whose sender fell behind", ["track"], registry=r)
        self.mic_packets_skipped = Counter("emo_stream_mic_packets_skipped_total",
                                           "Microphone packets given up: lost, or too late",
                                           registry=r)
        self.mic_concealed_seconds = Counter("emo_stream_mic_concealed_seconds_total",
                                             "Microphone audio filled in for lost packets (server.loss_concealment)",
                                             registry=r)
        self.windows_skipped = Counter("emo_stream_windows_skipped_total",
                                       "Audio windows the worker skipped because their frame was already due",
                                       registry=r)
        self.input_phase = Counter("emo_stream_input_phase_total",
                                   "A microphone's lead control: quiet packets dropped (drop), the clock moved "
                                   "under a packet sooner (advance) or a tick added (delay) in a pause; its least "
                                   "lead raised after a late frame (raise) or lowered after a calm (lower)",
                                   ["kind"], registry=r)
        self.interrupts = Counter("emo_stream_interrupts_total", "Barge-in interrupts", registry=r)
        self.worker_queue_depth = Gauge("emo_stream_worker_queue_depth", "Jobs waiting for the worker", registry=r)
        self.track_queue_depth = Gauge("emo_stream_track_queue_depth", "Frames waiting in video track queues",
                                       registry=r)
        self.loop_lag = Gauge("emo_stream_loop_lag_seconds", "Latest asyncio loop lag", registry=r)
        self.loop_lag_hist = Histogram("emo_stream_loop_lag_hist_seconds", "asyncio loop lag",
                                       buckets=_STAGE_BUCKETS, registry=r)
        self.stage_latency = Histogram("emo_stream_stage_latency_seconds", "Latency per pipeline stage", ["stage"],
                                       buckets=_STAGE_BUCKETS, registry=r)
        self.worker_utilization = Gauge("emo_stream_worker_utilization", "Busy fraction of the inference worker",
                                        registry=r)
        self.admissions_refused = Counter("emo_stream_admissions_refused_total",
                                          "Sessions refused with 503 (limit or load)", ["reason"], registry=r)
        self.uploads = Counter("emo_stream_uploads_total", "Avatar uploads by outcome", ["outcome"], registry=r)
        self.errors = Counter("emo_stream_errors_total", "Error answers by code and status", ["code", "status"],
                              registry=r)
        self.requests = Counter("emo_stream_http_requests_total", "HTTP requests by method and status",
                                ["method", "status"], registry=r)
        self.animator_stat = Gauge("emo_stream_animator_stat", "Numeric counters of the animator backend "
                                   "(emo: fallback frames, late calls, device errors, cache)", ["name"], registry=r)
        self.asyncio_tasks = Gauge("emo_stream_asyncio_tasks", "Tasks alive on the server's loop", registry=r)
        self.threads = Gauge("emo_stream_threads", "Threads alive in the server process", registry=r)
        self.pool_threads = Gauge("emo_stream_pool_threads", "Of those, workers of the loop's default executor "
                                  "(grown on demand up to its max_workers, never shrunk)", registry=r)
        self.speaking = Gauge("emo_stream_sessions_speaking", "Sessions whose VAD says speaking", registry=r)

    def observe(self, stage: str, seconds: float) -> None:
        self.stage_latency.labels(stage=stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
