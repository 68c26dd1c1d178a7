// The OBS overlay: /overlay?avatar=ID&bg=green|transparent|%23rrggbb&name=N&token=T&audio=0|1
// Starts by itself, fills the window with the avatar alone, and reconnects (with a short,
// capped backoff) whenever the server goes away, forever. The session is a PCM session, so an
// agent or a TTS tool drives it by name: WS /v1/sessions/{name}/audio.
import { Api } from './api.js';
import { LiveSession } from './webrtc.js';

const params = new URLSearchParams(location.search);
const background = params.get('bg') || 'green';
const name = params.get('name') || 'overlay';
const withAudio = params.get('audio') !== '0';
const video = document.getElementById('video');
const canvas = document.getElementById('canvas');
const statusBox = document.getElementById('status');
const transparent = background === 'transparent';

// Outside the video (letterboxing) the page shows the key colour, so the chroma key removes it.
if (background !== 'transparent' && background !== 'original') {
  document.body.style.background = background === 'green' ? 'rgb(0, 177, 64)' : background;
}

function status(text) {
  statusBox.textContent = text;
  document.body.classList.toggle('show-status', Boolean(text));
}

const api = new Api({ token: params.get('token') });
const session = new LiveSession(api, {
  avatarId: params.get('avatar') || null,
  options: { background, audio_source: 'pcm', name },
  microphone: false,
  reconnect: true,
  maxAttempts: Number.POSITIVE_INFINITY,
  maxDelayMs: 2000,
  events: true,
  // Hold the picture with the voice it plays; without that voice (audio=0) nothing to wait for.
  holdVideo: withAudio && params.get('hold_video') !== '0',
});

async function play() {
  video.muted = !withAudio;
  try {
    await video.play();
  } catch {
    // The browser refused autoplay with sound (OBS allows it): play muted rather than not at all.
    video.muted = true;
    await video.play().catch(() => {});
  }
}

session.addEventListener('stream', (event) => {
  video.srcObject = event.detail.stream;
  play();
});
session.addEventListener('statechange', (event) => {
  const state = event.detail.state;
  document.body.dataset.state = state;
  status(state === 'connected' ? '' : state === 'reconnecting' ? 'reconnecting…' : state === 'connecting' ? 'connecting…' : '');
});
session.addEventListener('error', (event) => {
  if (event.detail.fatal) status(event.detail.message);
});

// transparent: the server sends picture | matte side by side; recombine them into RGBA here.
if (transparent) {
  video.style.visibility = 'hidden';
  canvas.style.display = 'block';
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const scratch = document.createElement('canvas');
  const sctx = scratch.getContext('2d', { willReadFrequently: true });
  const draw = () => {
    const w = video.videoWidth / 2;
    const h = video.videoHeight;
    if (w > 0 && h > 0) {
      if (canvas.width !== w || canvas.height !== h) {
        canvas.width = w;
        canvas.height = h;
        scratch.width = 2 * w;
        scratch.height = h;
      }
      sctx.drawImage(video, 0, 0);
      const both = sctx.getImageData(0, 0, 2 * w, h).data;
      const out = ctx.createImageData(w, h);
      const px = out.data;
      for (let y = 0; y < h; y += 1) {
        let src = y * 8 * w;
        let dst = y * 4 * w;
        const matte = src + 4 * w;
        for (let x = 0; x < w; x += 1, src += 4, dst += 4) {
          px[dst] = both[src];
          px[dst + 1] = both[src + 1];
          px[dst + 2] = both[src + 2];
          px[dst + 3] = both[matte + 4 * x];
        }
      }
      ctx.putImageData(out, 0, 0);
    }
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(draw);
    else requestAnimationFrame(draw);
  };
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(draw);
  else requestAnimationFrame(draw);
}

window.emoOverlay = { session, video, canvas };
session.start();
