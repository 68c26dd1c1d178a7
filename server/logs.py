"""Logging for the server: one line per event, plain text or JSON (``--log-json``).

Fields that handlers pass in ``extra`` (request_id, session_id, status) are kept as JSON keys. An exception's
traceback is printed under its line (``traceback`` in JSON). Token values are replaced by ``***`` everywhere.
"""

from __future__ import annotations

import json
import logging
import re
import time

EXTRA_FIELDS = ("session_process", "request_id", "session_id", "status", "reason")
# ``token=`` and ``control_token=`` in a query (uvicorn logs WebSocket paths with theirs), and bearer headers.
_SECRET = re.compile(r"((?:control_)?token=|bearer\s+)[^&\s\"'\]\)]+", re.IGNORECASE)
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with every token value replaced by ``***``."""
    return _SECRET.sub(lambda m: m.group(1) + REDACTED, text)


class RedactSecrets(logging.Filter):
    """Takes tokens out of every record: its message, its arguments, and the traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            trace = redact(self.formatException(record.exc_info))
            entry["error"] = trace.splitlines()[-1]
            entry["traceback"] = trace
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{n}={getattr(record, n)}" for n in EXTRA_FIELDS if getattr(record, n, None) is not None)
        line = f"{line} [{extras}]" if extras else line
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


class _ProcessTag(logging.Filter):
    """Names the session process (``s0``, ``s1``…) on every line it logs: the children share the server's stderr."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.tag = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.session_process = self.tag
        return True


def configure(level: str = "info", as_json: bool = False, process: str | None = None) -> None:
    """Route the app's and uvicorn's logs through one handler on stderr (``process``: a session process's tag)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler.addFilter(RedactSecrets())
    if process is not None:
        handler.addFilter(_ProcessTag(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our own access log carries the request id; uvicorn's would repeat each line without it.
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("aioice", "aiortc", "av", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
