// The demo page: pick or upload a portrait, Start, talk; the portrait talks back live.

import { Api, ApiError, describeError } from './api.js';
import { ErrorList, formatNumber, initials, reportUncaught } from './ui.js';
import { LiveSession } from './webrtc.js';

const MAX_UPLOAD_BYTES = 25 * 1024 * 1024; // docs/api.md: photos up to 25 MB / 40 MP
const DEFAULT_AVATAR = 'default';

const $ = (id) => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page is missing #${id}`);
  return el;
};

const ui = {
  state: $('state'),
  stateText: $('state-text'),
  status: $('status'),
  errors: new ErrorList($('errors')),
  stage: $('stage'),
  video: $('video'),
  placeholder: $('placeholder'),
  stagePortrait: $('stage-portrait'),
  stageHint: $('stage-hint'),
  spinner: $('spinner'),
  playSound: $('play-sound'),
  start: $('start'),
  stop: $('stop'),
  interrupt: $('interrupt'),
  mute: $('mute'),
  speaker: $('speaker'),
  gallery: $('gallery'),
  file: $('file'),
  dropzone: $('dropzone'),
  uploadPreview: $('upload-preview'),
  uploadResult: $('upload-result'),
  fps: $('stat-fps'),
  rtt: $('stat-rtt'),
  latency: $('stat-latency'),
  late: $('stat-late'),
  lateLabel: $('stat-late-label'),
  extra: $('stat-extra'),
};

reportUncaught((message) => ui.errors.show(message));

const api = new Api();
/** @type {{id: string, name: string, thumb: string|null}[]} */
let avatars = [];
let selectedId = null;
/** @type {LiveSession|null} */
let session = null;
let micMuted = false;
// The returned voice is the user's own voice, a moment later. Played through speakers it makes
// the echo canceller chop the microphone (double talk all the time), so it starts muted.
let soundOff = true;
const localThumbs = new Map(); // avatar id -> object URL of the uploaded file
const transientErrors = new Set(); // "connection lost, trying again" notices
const uploadErrors = new Set(); // refused uploads: cleared by the next good one

// The page's state, for people and for tests: offline | connecting | idle | speaking | reconnecting.
function setPageState(state, text) {
  ui.state.dataset.state = state;
  ui.stateText.textContent = text;
  document.body.dataset.state = state;
}

function setStatus(text) {
  ui.status.textContent = text;
}

function showError(err) {
  return ui.errors.show(err);
}

// ---------------------------------------------------------------------------------- gallery

function avatarById(id) {
  return avatars.find((a) => a.id === id) || null;
}

function thumbFor(avatar) {
  if (!avatar) return null;
  if (avatar.thumb) return api.authedUrl(avatar.thumb);
  return localThumbs.get(avatar.id) || null;
}

function portraitNode(avatar, className) {
  const holder = document.createElement('span');
  holder.className = className;
  const src = thumbFor(avatar);
  const fallback = () => {
    holder.replaceChildren();
    const letters = document.createElement('span');
    letters.className = 'initials';
    letters.textContent = initials(avatar ? avatar.name : '?');
    holder.append(letters);
  };
  if (src) {
    const img = document.createElement('img');
    img.alt = '';
    img.decoding = 'async';
    img.src = src;
    img.addEventListener('error', fallback, { once: true });
    holder.append(img);
  } else {
    fallback();
  }
  return holder;
}

function renderGallery() {
  ui.gallery.setAttribute('aria-busy', 'false');
  ui.gallery.replaceChildren();
  if (!avatars.length) {
    const empty = document.createElement('p');
    empty.className = 'gallery-empty';
    empty.textContent = 'No portraits yet: upload one below.';
    ui.gallery.append(empty);
    return;
  }
  for (const avatar of avatars) {
    const selected = avatar.id === selectedId;
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'avatar';
    button.setAttribute('role', 'radio');
    button.setAttribute('aria-checked', String(selected));
    button.tabIndex = selected ? 0 : -1;
    button.dataset.id = avatar.id;
    button.title = avatar.name;
    button.append(portraitNode(avatar, 'avatar-thumb'));
    const name = document.createElement('span');
    name.className = 'avatar-name';
    name.textContent = avatar.name;
    button.append(name);
    button.addEventListener('click', () => selectAvatar(avatar.id, { focus: true }));
    ui.gallery.append(button);
  }
  if (!avatars.some((a) => a.id === selectedId)) ui.gallery.firstElementChild.tabIndex = 0;
}

function renderStagePortrait() {
  ui.stagePortrait.replaceChildren(portraitNode(avatarById(selectedId), 'stage-portrait-img'));
}

function selectAvatar(id, { focus = false } = {}) {
  if (!avatarById(id)) return;
  const changed = id !== selectedId;
  selectedId = id;
  for (const button of ui.gallery.querySelectorAll('.avatar')) {
    const on = button.dataset.id === id;
    button.setAttribute('aria-checked', String(on));
    button.tabIndex = on ? 0 : -1;
    if (on && focus) button.focus();
  }
  renderStagePortrait();
  if (changed && session) {
    setStatus(`Switching to ${avatarById(id).name}…`);
    session.restart({ avatarId: id });
  }
}

// Arrow keys move the selection inside the radio group (roving tabindex).
ui.gallery.addEventListener('keydown', (event) => {
  const buttons = [...ui.gallery.querySelectorAll('.avatar')];
  const index = buttons.indexOf(document.activeElement);
  if (index < 0) return;
  let next = null;
  if (event.key === 'ArrowRight' || event.key === 'ArrowDown') next = (index + 1) % buttons.length;
  else if (event.key === 'ArrowLeft' || event.key === 'ArrowUp') next = (index - 1 + buttons.length) % buttons.length;
  else if (event.key === 'Home') next = 0;
  else if (event.key === 'End') next = buttons.length - 1;
  if (next === null) return;
  event.preventDefault();
  selectAvatar(buttons[next].dataset.id, { focus: true });
});

async function loadAvatars() {
  let list;
  try {
    list = await api.listAvatars();
  } catch (err) {
    ui.gallery.setAttribute('aria-busy', 'false');
    ui.gallery.replaceChildren();
    const retry = document.createElement('button');
    retry.type = 'button';
    retry.className = 'btn btn-small';
    retry.textContent = 'Try again';
    retry.addEventListener('click', () => loadAvatars());
    const p = document.createElement('p');
    p.className = 'gallery-empty';
    p.textContent = 'The portraits could not be loaded. ';
    p.append(retry);
    ui.gallery.append(p);
    showError(`Could not load the portraits: ${describeError(err)}`);
    setStatus('Not ready: the server did not list its portraits.');
    return false;
  }
  const known = new Map(avatars.map((a) => [a.id, a]));
  avatars = list.map((a) => ({
    id: String(a.id),
    name: a.name || (known.get(String(a.id)) || {}).name || String(a.id),
    thumb: a.thumbnail_url || null,
  }));
  // Uploads the list does not show (yet) stay in the gallery.
  for (const [id, a] of known) if (!avatars.some((b) => b.id === id)) avatars.push(a);
  if (!avatarById(selectedId)) {
    const wanted = new URLSearchParams(window.location.search).get('avatar');
    selectedId = [wanted, DEFAULT_AVATAR].find((id) => id && avatarById(id)) || (avatars[0] && avatars[0].id) || null;
  }
  renderGallery();
  renderStagePortrait();
  return true;
}

// ----------------------------------------------------------------------------------- upload

function uploadMessage(err) {
  if (err instanceof ApiError) {
    if (err.status === 404 || err.status === 405) return 'This server does not accept portrait uploads.';
    if (err.code === 'image_too_large' || err.status === 413) {
      return `That image is too large: ${err.message || 'the limit is 25 MB and 40 megapixels'}`;
    }
    if (err.code === 'no_face_found') return `No face found in that photo. Try a clear, front-facing portrait. (${err.message})`;
  }
  return describeError(err);
}

function setUploadState(state, message, previewUrl) {
  ui.dropzone.dataset.state = state;
  ui.dropzone.setAttribute('aria-busy', String(state === 'busy'));
  ui.uploadResult.textContent = message || '';
  if (previewUrl !== undefined) {
    ui.uploadPreview.replaceChildren();
    if (previewUrl) {
      const img = document.createElement('img');
      img.alt = '';
      img.src = previewUrl;
      img.addEventListener('error', () => img.remove(), { once: true });
      ui.uploadPreview.append(img);
    }
  }
}

function niceName(fileName) {
  const base = String(fileName || 'My portrait').replace(/\.[a-z0-9]{2,5}$/i, '').replace(/[_-]+/g, ' ').trim();
  return (base || 'My portrait').slice(0, 40);
}

let uploading = false;

async function uploadFile(file) {
  if (!file) return;
  if (uploading) {
    showError('A photo is already being uploaded: wait for it to finish.');
    return;
  }
  if (file.type && !file.type.startsWith('image/')) {
    const message = `“${file.name}” is not an image. Use a JPEG, PNG or WebP photo.`;
    setUploadState('error', message, null);
    uploadErrors.add(showError(message));
    return;
  }
  if (file.size === 0) {
    setUploadState('error', 'That file is empty.', null);
    uploadErrors.add(showError(`“${file.name}” is empty.`));
    return;
  }
  if (file.size > MAX_UPLOAD_BYTES) {
    const mb = (file.size / 1024 / 1024).toFixed(1);
    const message = `That image is too large (${mb} MB): the limit is 25 MB.`;
    setUploadState('error', message, null);
    uploadErrors.add(showError(message));
    return;
  }
  const previewUrl = URL.createObjectURL(file);
  uploading = true;
  ui.file.disabled = true;
  setUploadState('busy', `Uploading “${file.name}” and looking for a face…`, previewUrl);
  try {
    const result = await api.uploadAvatar(file);
    if (!result || !result.id) throw new Error('The server accepted the photo but returned no avatar id.');
    const id = String(result.id);
    const name = result.name || niceName(file.name);
    localThumbs.set(id, previewUrl);
    if (!avatarById(id)) avatars.push({ id, name, thumb: null });
    renderGallery();
    selectAvatar(id);
    const size = result.width && result.height ? ` (${result.width}×${result.height})` : '';
    const warnings = Array.isArray(result.warnings) && result.warnings.length ? ` Note: ${result.warnings.join(' ')}` : '';
    const faces = result.faces > 1 ? ` ${result.faces} faces were found; the largest one is animated.` : '';
    setUploadState('done', `Added “${name}”${size}.${faces}${warnings}`);
    for (const item of uploadErrors) item.remove();
    uploadErrors.clear();
    setStatus(session ? `Portrait added: switching to it.` : 'Portrait added and selected: press Start.');
    loadAvatars().catch(() => {}); // names and thumbnails from the server
  } catch (err) {
    URL.revokeObjectURL(previewUrl);
    const message = uploadMessage(err);
    setUploadState('error', message, null);
    uploadErrors.add(showError(message));
  } finally {
    uploading = false;
    ui.file.disabled = false;
    ui.file.value = '';
  }
}

ui.file.addEventListener('change', () => uploadFile(ui.file.files && ui.file.files[0]));

// Drag and drop onto the drop zone (and anywhere on the page, so a near miss still works).
let dragDepth = 0;
document.addEventListener('dragenter', (event) => {
  if (!event.dataTransfer || ![...event.dataTransfer.types].includes('Files')) return;
  dragDepth += 1;
  ui.dropzone.classList.add('dragging');
});
document.addEventListener('dragleave', () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) ui.dropzone.classList.remove('dragging');
});
document.addEventListener('dragover', (event) => {
  if (event.dataTransfer && [...event.dataTransfer.types].includes('Files')) {
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
  }
});
document.addEventListener('drop', (event) => {
  dragDepth = 0;
  ui.dropzone.classList.remove('dragging');
  if (!event.dataTransfer || !event.dataTransfer.files.length) return;
  event.preventDefault();
  if (event.dataTransfer.files.length > 1) showError('Drop one photo at a time: the first one is used.');
  uploadFile(event.dataTransfer.files[0]);
});

// ---------------------------------------------------------------------------------- session

function setControls(running) {
  ui.start.disabled = running || !selectedId;
  ui.stop.disabled = !running;
  ui.interrupt.disabled = !(session && session.state === 'connected');
}

function showVideo(on) {
  ui.stage.dataset.playing = String(on);
  ui.placeholder.hidden = on;
}

function resetStats() {
  for (const el of [ui.fps, ui.rtt, ui.latency, ui.late]) el.textContent = '—';
  ui.lateLabel.textContent = 'Late frames';
  ui.extra.textContent = '';
}

function renderStats(s) {
  ui.fps.textContent = formatNumber(s.fps, s.fps !== null && s.fps < 10 ? 1 : 0);
  ui.rtt.textContent = formatNumber(s.rttMs);
  ui.latency.textContent = s.latencyMs === null ? '—' : `≈${formatNumber(s.latencyMs)}`;
  if (s.lateFrames !== null) {
    ui.lateLabel.textContent = 'Late frames';
    ui.late.textContent = formatNumber(s.lateFrames);
  } else {
    ui.lateLabel.textContent = 'Dropped frames';
    ui.late.textContent = formatNumber(s.droppedFrames);
  }
  const parts = [];
  if (s.width && s.height) parts.push(`${s.width}×${s.height}`);
  if (s.kbps !== null) parts.push(`${formatNumber(s.kbps)} kbit/s`);
  if (s.pipelineMs !== null) parts.push(`server delay ${formatNumber(s.pipelineMs)} ms`);
  if (s.serverFps !== null) parts.push(`server ${formatNumber(s.serverFps)} fps`);
  parts.push(s.fromServer ? 'stats: browser + server' : 'stats: browser');
  ui.extra.textContent = parts.join(' · ');
}

function voiceText(voice) {
  return voice === 'speaking' ? ['speaking', 'Speaking'] : ['idle', 'Listening'];
}

async function playVideo() {
  ui.video.muted = soundOff;
  try {
    await ui.video.play();
    ui.playSound.hidden = true;
  } catch (err) {
    if (err && err.name === 'NotAllowedError') {
      // Autoplay with sound refused: play muted, offer a button for the sound.
      ui.video.muted = true;
      ui.playSound.hidden = false;
      try {
        await ui.video.play();
      } catch (again) {
        showError(`The video cannot play: ${describeError(again)}`);
      }
    } else if (err && err.name !== 'AbortError') {
      showError(`The video cannot play: ${describeError(err)}`);
    }
  }
}

function wire(s) {
  s.addEventListener('statechange', ({ detail }) => {
    if (s !== session) return;
    switch (detail.state) {
      case 'connecting':
        setPageState('connecting', 'Connecting…');
        setStatus('Connecting: opening the microphone and the stream…');
        ui.spinner.hidden = false;
        break;
      case 'connected': {
        for (const item of transientErrors) item.remove();
        transientErrors.clear();
        const [state, text] = voiceText(s.voice);
        setPageState(state, text);
        setStatus(`Live with ${(avatarById(s.avatarId) || { name: 'the portrait' }).name}: talk and it talks with you.`);
        ui.spinner.hidden = true;
        break;
      }
      case 'reconnecting': {
        setPageState('reconnecting', 'Reconnecting…');
        const secs = detail.delayMs ? Math.max(1, Math.round(detail.delayMs / 1000)) : null;
        setStatus(secs ? `Connection lost: reconnecting in ${secs} s (attempt ${detail.attempt}).`
          : 'Reconnecting…');
        ui.spinner.hidden = false;
        showVideo(false);
        break;
      }
      case 'closed':
        ui.spinner.hidden = true;
        break;
      default:
        break;
    }
    setControls(true);
  });
  s.addEventListener('voice', ({ detail }) => {
    if (s !== session || s.state !== 'connected') return;
    const [state, text] = voiceText(detail.state);
    setPageState(state, text);
  });
  s.addEventListener('stream', ({ detail }) => {
    if (s !== session) return;
    ui.video.srcObject = detail.stream;
    ui.video.dataset.avatarId = s.avatarId || '';
    playVideo();
  });
  s.addEventListener('session', ({ detail }) => {
    if (s !== session) return;
    ui.video.dataset.sessionId = detail.sessionId;
  });
  s.addEventListener('stats', ({ detail }) => {
    if (s === session) renderStats(detail);
  });
  s.addEventListener('interrupted', ({ detail }) => {
    if (s !== session) return;
    const how = { datachannel: 'data channel', websocket: 'WebSocket', http: 'HTTP' }[detail.via] || detail.via;
    setStatus(`Interrupted (sent over ${how}). Pause briefly before talking again.`);
    ui.stage.dataset.interruptedVia = detail.via;
  });
  s.addEventListener('error', ({ detail }) => {
    if (s !== session) return;
    const item = showError(detail.retrying ? `${detail.message} Trying again…` : detail.message);
    if (detail.retrying) transientErrors.add(item); // cleared once the session is back
    if (detail.fatal) {
      stopSession({ reason: 'error' });
    }
  });
}

async function startSession() {
  if (session || !selectedId) return;
  ui.start.disabled = true;
  resetStats();
  // ?hold_video=0 leaves A/V sync to the browser alone (to compare; docs/benchmarks.md).
  const params = new URLSearchParams(window.location.search);
  const holdVideo = params.get('hold_video') !== '0';
  // ?repair_hold=0: no extra hold while the video repairs losses (to compare; docs/benchmarks.md).
  const holdForRepair = params.get('repair_hold') !== '0';
  const s = new LiveSession(api, { avatarId: selectedId, holdVideo, holdForRepair });
  s.setMicMuted(micMuted);
  session = s;
  wire(s);
  setControls(true);
  ui.video.addEventListener('playing', onPlaying);
  await s.start();
}

function onPlaying() {
  if (session && ui.video.srcObject) showVideo(true);
}

async function stopSession({ reason = 'user' } = {}) {
  const s = session;
  if (!s) return;
  session = null;
  ui.video.removeEventListener('playing', onPlaying);
  await s.stop();
  ui.video.srcObject = null;
  ui.spinner.hidden = true;
  ui.playSound.hidden = true;
  showVideo(false);
  setPageState('offline', 'Offline');
  if (reason === 'user') setStatus('Stopped. Press Start to go live again.');
  else setStatus('Stopped. Press Start to try again.');
  setControls(false);
}

ui.start.addEventListener('click', () => startSession());
ui.stop.addEventListener('click', () => {
  stopSession();
  ui.start.focus();
});

async function interrupt() {
  if (!session || session.state !== 'connected') return;
  try {
    await session.interrupt();
    setPageState('idle', 'Listening');
  } catch (err) {
    showError(`Interrupt failed: ${describeError(err)}`);
  }
}

ui.interrupt.addEventListener('click', () => interrupt());
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && !event.defaultPrevented && session && session.state === 'connected') {
    event.preventDefault();
    interrupt();
  }
});

ui.mute.addEventListener('click', () => {
  micMuted = !micMuted;
  ui.mute.setAttribute('aria-pressed', String(micMuted));
  if (session) session.setMicMuted(micMuted);
  setStatus(micMuted ? 'Microphone muted: the portrait hears silence.' : 'Microphone on.');
});

ui.speaker.addEventListener('click', () => {
  soundOff = !soundOff;
  ui.speaker.setAttribute('aria-pressed', String(soundOff));
  ui.video.muted = soundOff;
  if (!soundOff) ui.playSound.hidden = true;
});

ui.playSound.addEventListener('click', () => {
  ui.playSound.hidden = true;
  soundOff = false;
  ui.speaker.setAttribute('aria-pressed', 'false');
  playVideo();
});

window.addEventListener('offline', () => {
  if (session) setStatus('You are offline: the stream will reconnect when the network is back.');
});

// Leaving the page ends the session on the server at once (DELETE with keepalive).
window.addEventListener('pagehide', () => {
  if (session) session.stop();
});

// --------------------------------------------------------------------------------- start-up

async function init() {
  setPageState('offline', 'Offline');
  setControls(false);
  if (!window.isSecureContext) {
    showError('This page is not secure (http:// on a remote host): the browser will not give it the microphone. '
      + 'Open it over https:// or on localhost.');
  }
  if (typeof RTCPeerConnection === 'undefined') {
    showError('This browser does not support WebRTC, which the live portrait needs.');
  }
  const ok = await loadAvatars();
  setControls(false);
  if (ok) setStatus(selectedId ? 'Ready: press Start and allow the microphone.' : 'Upload a portrait to begin.');
  document.body.dataset.ready = 'true';
}

init();

// For debugging in the console (and for tests): the page's live objects.
window.emoDemo = {
  api,
  get session() {
    return session;
  },
  get selectedId() {
    return selectedId;
  },
};
