"""Headless Chromium for the browser tests: the server as a subprocess, a fresh browser profile per
test, a fake microphone from a WAV, and page-side probes (frames from the <video>, the level of
the returned voice) run through Selenium's execute_script.

Nothing is downloaded: Debian's chromium + chromedriver (``make test`` installs them).
"""

from __future__ import annotations

import contextlib
import json
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


# ---------------------------------------------------------------------------- A/V sync as Chromium plays it

# With ``server.av_probe`` on, the frame of each tick whose voice holds a 1 kHz beep has a magenta top-left
# square (server/av_probe.py). Here: each rising edge of that square, at the time the frame is expected on screen
# (requestVideoFrameCallback), and each beep's onset in the remote audio as WebAudio plays it (an AudioWorklet;
# context time -> page time through getOutputTimestamp). Both in performance.now() milliseconds.
INSTALL_AV_PROBE_JS = """
const done = arguments[arguments.length - 1];
const v = document.getElementById('video');
const stream = v && v.srcObject;
if (!stream || !stream.getAudioTracks().length || !v.requestVideoFrameCallback) { done(false); return; }
window.__av = {flashes: [], tones: [], frames: 0};
const c = document.createElement('canvas'); c.width = 8; c.height = 8;
const g = c.getContext('2d', {willReadFrequently: true});
let was = false;
const onFrame = (now, meta) => {
  const side = v.videoHeight / 8;
  g.drawImage(v, side * 0.2, side * 0.2, side * 0.6, side * 0.6, 0, 0, 8, 8);
  const d = g.getImageData(0, 0, 8, 8).data;
  let r = 0, gr = 0, b = 0;
  for (let i = 0; i < d.length; i += 4) { r += d[i]; gr += d[i + 1]; b += d[i + 2]; }
  const n = d.length / 4;
  const is = r / n > 170 && b / n > 170 && gr / n < 100;
  if (is && !was) window.__av.flashes.push(meta.expectedDisplayTime);
  was = is;
  window.__av.frames++;
  v.requestVideoFrameCallback(onFrame);
};
v.requestVideoFrameCallback(onFrame);
const code = `class ToneOnset extends AudioWorkletProcessor {
  constructor() { super(); this.on = false; this.quiet = 0; }
  process(inputs) {
    const x = inputs[0] && inputs[0][0];
    if (!x) return true;
    for (let i = 0; i < x.length; i++) {
      const a = Math.abs(x[i]);
      if (!this.on && a > 0.1) { this.on = true; this.port.postMessage(currentTime + i / sampleRate); }
      if (a > 0.05) this.quiet = 0; else if (++this.quiet > sampleRate * 0.05) this.on = false;
    }
    return true;
  }
}
registerProcessor('tone-onset', ToneOnset);`;
const ctx = new AudioContext();
ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([code], {type: 'application/javascript'}))).then(() => {
  const node = new AudioWorkletNode(ctx, 'tone-onset');
  ctx.createMediaStreamSource(stream).connect(node);
  node.connect(ctx.destination);
  node.port.onmessage = (e) => {
    const ts = ctx.getOutputTimestamp();
    window.__av.tones.push(ts.performanceTime + (e.data - ts.contextTime) * 1000);
  };
  window.__avCtx = ctx;
  return ctx.resume();
}).then(() => done(true), (err) => done(String(err)));
"""

AV_PROBE_JS = "return window.__av || null;"


def beeps_mic(count: int = 10, period_s: float = 1.5) -> Path:
    """Chromium's fake microphone for the probe: 1 s of silence, then ``count`` 120 ms 1 kHz beeps."""
    return media.sox(f"mic48-beeps-{count}-{period_s}.wav", "-q", "-n", "-r", "48000", "-c", "1", "-b", "16",
                     "-e", "signed-integer", "{out}", "synth", "0.12", "sine", "1000", "vol", "0.5",
                     "pad", "0", f"{period_s - 0.12:.2f}", "repeat", str(count - 1), "pad", "1.0", "0")


def av_offsets(probe: dict, window_ms: float = 400.0) -> list[float]:
    """Each beep's flash minus its tone (ms; positive = the picture after the sound), pairing each tone with the
    nearest flash within ``window_ms``."""
    flashes = sorted(probe.get("flashes") or [])
    offsets = []
    for tone in sorted(probe.get("tones") or []):
        near = [f for f in flashes if abs(f - tone) <= window_ms]
        if near:
            offsets.append(min(near, key=lambda f: abs(f - tone)) - tone)
    return offsets


# ---------------------------------------------------------------------------- the demo page


def open_page(driver, base: str, query: str = "") -> None:
    driver.get(f"{base}/{query}")
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready === 'true'"), 15,
             "the page to list the portraits")


def page_state(driver) -> str:
    return driver.execute_script("return document.getElementById('state').dataset.state")


def start_and_wait_for_video(driver) -> None:
    driver.find_element("id", "start").click()
    wait_for(lambda: page_state(driver) in ("idle", "speaking"), 30, "the session to connect")
    wait_for(lambda: driver.execute_script(
        "const v = document.getElementById('video'); return v.videoWidth > 0 && v.currentTime > 0;"),
        15, "the video to play")


# What the page asked the receivers to hold (jitterBufferTarget, ms; the audio's is null unless the video is
# repairing losses) and the audio buffer it last measured.
VIDEO_HOLD_JS = """
const s = window.emoDemo && window.emoDemo.session;
const r = s && s.pc && s.pc.getReceivers().find((x) => x.track && x.track.kind === 'video');
const a = s && s.pc && s.pc.getReceivers().find((x) => x.track && x.track.kind === 'audio');
return {video_hold_ms: r ? r.jitterBufferTarget : null, audio_hold_ms: a ? a.jitterBufferTarget : null,
        audio_buffer_ms: s && s.lastStats ? s.lastStats.audioBufferMs : null};
"""


# Every packet of the page's session through tests/impairment.py's relay, as ``tests.impairment.through`` does for
# an aiortc peer: the offer the page posts names the relay's server-facing address as its only candidate, and the
# answer it applies the client-facing one. Installed before the page's own scripts run; the relay learns
# Chromium's address from its first datagram.
RELAY_SDP_JS = """
(() => {
  const toServer = %s, toClient = %s;
  const through = (sdp, [host, port]) => {
    const out = [];
    let placed = false;
    for (let line of sdp.split('\\r\\n')) {
      if (line.startsWith('m=')) {
        placed = false;
        const p = line.split(' ');
        if (p[1] !== '0') p[1] = String(port);  // port 0: a rejected or bundle-only section stays so
        line = p.join(' ');
      } else if (line.startsWith('c=IN IP4 ')) {
        line = 'c=IN IP4 ' + host;
      } else if (line.startsWith('a=candidate:')) {
        const f = line.slice('a=candidate:'.length).split(' ');
        if (placed || f[2].toLowerCase() !== 'udp') continue;
        line = `a=candidate:${f[0]} ${f[1]} udp ${f[3]} ${host} ${port} typ host`;
        placed = true;
      }
      out.push(line);
    }
    return out.join('\\r\\n');
  };
  const realFetch = window.fetch.bind(window);
  window.fetch = (input, init) => {
    if (init && typeof init.body === 'string' && init.body.includes('"offer"')) {
      const body = JSON.parse(init.body);
      if (body.type === 'offer' && body.sdp) init = {...init, body: JSON.stringify({...body, sdp: through(body.sdp, toServer)})};
    }
    return realFetch(input, init);
  };
  const realSet = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = function (desc, ...rest) {
    if (desc && desc.type === 'answer' && desc.sdp) desc = {type: 'answer', sdp: through(desc.sdp, toClient)};
    return realSet.call(this, desc, ...rest);
  };
})();
"""


def route_through(driver, relay) -> None:
    """Make every page this driver opens send its session through ``relay`` (a started
    ``tests.impairment.UdpRelay``)."""
    server, client = (json.dumps(list(face)) for face in (relay.server_facing, relay.client_facing))
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RELAY_SDP_JS % (server, client)})


def measure_av_sync(base: str, seconds: float = 12.0, query: str = "", relay=None) -> dict:
    """Chromium plays a session of a server with ``server.av_probe`` on, its microphone beeping: every flash and
    tone (page milliseconds), frames seen, each beep's flash minus its tone (``av_offsets``), and what the page
    asked the video receiver to hold. ``query``: the demo page's URL query (``?hold_video=0``); ``relay``: a
    started ``tests.impairment.UdpRelay`` the session's packets all cross (``route_through``)."""
    with chromium(beeps_mic(count=max(10, int(seconds / 1.5) + 4))) as driver:
        if relay is not None:
            route_through(driver, relay)
        open_page(driver, base, query)
        start_and_wait_for_video(driver)
        installed = driver.execute_async_script(INSTALL_AV_PROBE_JS)
        if installed is not True:
            raise AssertionError(f"the A/V probe could not start in the page: {installed}")
        time.sleep(seconds)
        probe = driver.execute_script(AV_PROBE_JS)
        hold = driver.execute_script(VIDEO_HOLD_JS)
        errors = console_errors(driver) + page_errors(driver)
    return {**probe, **hold, "offsets_ms": av_offsets(probe), "page_errors": errors}
