"""Headless Chromium for the browser tests: the server as a subprocess, a fresh browser profile per
test, a fake microphone from a WAV, and page-side probes (frames from the <video>, the level of
the returned voice) run through Selenium's execute_script.

Nothing is downloaded: Debian's chromium + chromedriver (``make test`` installs them).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests import media, servers

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# docs/platform.md: the flags that work on these machines.
BASE_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000",
)


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


@contextlib.contextmanager
def run_server(config: Path | None = None, extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """``emo-stream serve`` on 127.0.0.1 and a free port; yields its base URL, stops it after."""
    with servers.run_server(args=extra_args, config_path=config) as server:
        yield server.base


def mic_wav(source: Path, name: str) -> Path:
    """``source`` as Chromium's fake capture wants it: 16-bit PCM WAV, mono, 48 kHz (cached)."""
    return media.sox(f"mic48-{name}.wav", "-q", str(source), "-r", "48000", "-c", "1", "-b", "16",
                     "-e", "signed-integer", "{out}")


@contextlib.contextmanager
def chromium(mic: Path | None = None, noloop: bool = False) -> Iterator:
    """A headless Chromium with a fresh profile; ``mic`` (a 16-bit PCM WAV) is its microphone."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="emo-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BASE_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    if mic is not None:
        options.add_argument(f"--use-file-for-fake-audio-capture={mic}{'%noloop' if noloop else ''}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """SEVERE console entries since the last call, without the favicon's 404."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def page_errors(driver) -> list[str]:
    """The messages in the page's own error area."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#errors .error')].map(e => e.dataset.message);")


# ---------------------------------------------------------------------------- page-side probes

# One frame of the <video> as a small greyscale image (a flat list of 0..255), or null.
GRAB_FRAME_JS = """
const v = document.getElementById('video');
if (!v || !v.videoWidth) return null;
const n = 64;
window.__grab = window.__grab || document.createElement('canvas');
const c = window.__grab; c.width = n; c.height = n;
const g = c.getContext('2d', {willReadFrequently: true});
g.drawImage(v, 0, 0, n, n);
const d = g.getImageData(0, 0, n, n).data;
const out = new Array(n * n);
for (let i = 0; i < n * n; i++) out[i] = Math.round((d[4*i] * 299 + d[4*i+1] * 587 + d[4*i+2] * 114) / 1000);
return out;
"""

# Start measuring the returned voice: RMS of the remote stream every ~20 ms, with page times.
START_LEVEL_METER_JS = """
const v = document.getElementById('video');
const stream = v && v.srcObject;
if (!stream || !stream.getAudioTracks().length) return false;
const ctx = new AudioContext();
const analyser = ctx.createAnalyser();
analyser.fftSize = 1024;
ctx.createMediaStreamSource(stream).connect(analyser);
const buf = new Float32Array(analyser.fftSize);
window.__levels = [];
window.__meter = setInterval(() => {
  analyser.getFloatTimeDomainData(buf);
  let s = 0; for (const x of buf) s += x * x;
  window.__levels.push([performance.now(), Math.sqrt(s / buf.length)]);
}, 20);
window.__meterCtx = ctx;
ctx.resume();
return true;
"""

LEVELS_JS = "return window.__levels || [];"
