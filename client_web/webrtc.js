// A live emo-stream session over WebRTC, shared by the demo page and the overlay page.
//
//   const session = new LiveSession(api, { avatarId: 'default' });
//   session.addEventListener('stream', (e) => { video.srcObject = e.detail.stream; });
//   await session.start();      // microphone -> offer -> POST /v1/sessions -> answer
//   await session.interrupt();  // DataChannel, else the events WebSocket, else HTTP
//   await session.stop();       // close + DELETE /v1/sessions/{id}
//
// The offer sends the microphone (echo cancellation on) on a sendrecv audio transceiver and
// receives the portrait on a recvonly video transceiver, plus a "control" DataChannel. ICE is
// not trickled (the server answers with all its candidates), so the offer waits for gathering.
// A dropped or failed connection is re-established with exponential backoff (same microphone,
// same avatar); errors a retry cannot fix (no microphone, a refused upload...) end the session.
//
// Events (CustomEvent, details below):
//   statechange {state: 'new'|'connecting'|'connected'|'reconnecting'|'closed', attempt?, delayMs?}
//   voice       {state: 'idle'|'speaking', source: 'server'|'estimate'|'local'}
//   stream      {stream: MediaStream}            the remote portrait video + its voice
//   session     {sessionId, latencyMs}
//   stats       {fps, rttMs, latencyMs, lateFrames, droppedFrames, kbps, width, height, ...}
//   error       {error, message, fatal, retrying}   fatal: the session is over; retrying: a reconnect follows
//   interrupted {via: 'datachannel'|'websocket'|'http'}

import { ApiError, describeError } from './api.js';

export const DEFAULT_AUDIO_CONSTRAINTS = Object.freeze({
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
  channelCount: 1,
});

/** An error on the way to a connection that a later attempt may not hit (ICE, timeouts). */
export class ConnectionError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ConnectionError';
    this.retryable = true;
  }
}

class Superseded extends Error {}

// The video target beyond the audio's buffer: one frame (40 ms at 25 fps). Half of it is the decode and render
// time a video target counts and an audio buffer does not; the other half shows each frame in the middle of the
// 40 ms of sound it was made from, not at its start.
const VIDEO_HOLD_EXTRA_MS = 40;
// While the video repairs losses, a lost packet comes back a round trip (and the receiver's NACK) later: hold both
// tracks that long, for this long after the last repair, so a repaired frame still shows with its sound.
const REPAIR_NACK_MS = 20;
const REPAIR_HOLD_FOR_MS = 10000;

function isRetryable(err) {
  if (err instanceof ApiError || err instanceof ConnectionError) return err.retryable;
  return false;
}

/** The microphone, with messages people can act on when it cannot be opened. */
export async function openMicrophone(constraints = DEFAULT_AUDIO_CONSTRAINTS) {
  if (!window.isSecureContext) {
    throw new Error('The microphone needs a secure page: open this page over https:// or on localhost.');
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error('This browser cannot capture the microphone (no navigator.mediaDevices.getUserMedia).');
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: { ...constraints }, video: false });
  } catch (err) {
    const name = err && err.name;
    if (name === 'NotAllowedError' || name === 'SecurityError') {
      throw new Error('Microphone access was blocked. Allow the microphone for this site and press Start again.');
    }
    if (name === 'NotFoundError' || name === 'OverconstrainedError') {
      throw new Error('No microphone was found. Plug one in and press Start again.');
    }
    if (name === 'NotReadableError' || name === 'AbortError') {
      throw new Error('The microphone is busy or unavailable (another app may be using it).');
    }
    throw new Error(`Could not open the microphone: ${describeError(err)}`);
  }
}

/** Resolves when ICE gathering is complete, or when candidates stop coming for `quietMs`. */
function iceGathered(pc, { maxMs = 3000, quietMs = 600 } = {}) {
  return new Promise((resolve) => {
    let quiet = null;
    const finish = () => {
      clearTimeout(overall);
      clearTimeout(quiet);
      pc.removeEventListener('icecandidate', onCandidate);
      pc.removeEventListener('icegatheringstatechange', onState);
      resolve();
    };
    const onCandidate = (event) => {
      if (!event.candidate) {
        finish();
        return;
      }
      clearTimeout(quiet);
      quiet = setTimeout(finish, quietMs);
    };
    const onState = () => {
      if (pc.iceGatheringState === 'complete') finish();
    };
    const overall = setTimeout(finish, maxMs);
    pc.addEventListener('icecandidate', onCandidate);
    pc.addEventListener('icegatheringstatechange', onState);
  });
}

function connected(pc, timeoutMs) {
  return new Promise((resolve, reject) => {
    if (pc.connectionState === 'connected') {
      resolve();
      return;
    }
    const done = (err) => {
      clearTimeout(timer);
      pc.removeEventListener('connectionstatechange', onChange);
      if (err) reject(err);
      else resolve();
    };
    const onChange = () => {
      const state = pc.connectionState;
      if (state === 'connected') done();
      else if (state === 'failed') done(new ConnectionError('The media connection to the server failed (ICE/DTLS).'));
      else if (state === 'closed') done(new Superseded());
    };
    const timer = setTimeout(
      () => done(new ConnectionError(`No media connection to the server after ${Math.round(timeoutMs / 1000)} s.`)),
      timeoutMs,
    );
    pc.addEventListener('connectionstatechange', onChange);
  });
}

export class LiveSession extends EventTarget {
  /**
   * @param {import('./api.js').Api} api
   * @param {{avatarId?: string|null, options?: object, microphone?: boolean, audio?: object,
   *          reconnect?: boolean, maxAttempts?: number, maxDelayMs?: number, events?: boolean}} [opts]
   *   microphone: send the microphone (false: receive only, e.g. a PCM session for the overlay);
   *   events: also open the session's events WebSocket (state + server stats) when the server has it.
   */
  constructor(api, opts = {}) {
    super();
    this.api = api;
    this.avatarId = opts.avatarId ?? null;
    this.options = opts.options ?? {};
    this.microphone = opts.microphone ?? true;
    this.audio = opts.audio ?? DEFAULT_AUDIO_CONSTRAINTS;
    this.reconnect = opts.reconnect ?? true;
    this.maxAttempts = opts.maxAttempts ?? 8;
    this.maxDelayMs = opts.maxDelayMs ?? 30000;
    this.useEvents = opts.events ?? true;
    // Hold the video back as long as the audio is held (see _holdVideoWithAudio); false leaves it to the browser.
    this.holdVideo = opts.holdVideo ?? true;
    // While the video repairs lost packets, hold both tracks a round trip more (see _holdVideoWithAudio; only
    // with holdVideo, since it keeps the video a frame behind the audio it holds).
    this.holdForRepair = opts.holdForRepair ?? true;
    this._videoHoldMs = null;
    this._audioHoldMs = null;
    this._repairUntil = 0;
    this._lastRttMs = null;

    this.state = 'new';
    this.voice = null;
    this.sessionId = null;
    this.controlToken = null;
    this.latencyMs = null;
    this.pc = null;
    this.dc = null;
    this.ws = null;
    this.micStream = null;
    this.remoteStream = null;
    this.eventsConnected = false;
    this.lastStats = null;

    this._gen = 0;
    this._stopped = true;
    this._attempt = 0;
    this._micMuted = false;
    this._retryTimer = null;
    this._disconnectTimer = null;
    this._pollTimer = null;
    this._serverStats = null;
    this._prev = null;
    this._quietSince = null;
    this._eventsMissing = false;
    this._micPromise = null;
    this._onOnline = () => {
      if (this.state === 'reconnecting' && this._retryTimer) {
        clearTimeout(this._retryTimer);
        this._retryTimer = null;
        this._connect();
      }
    };
  }

  _emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit('statechange', { state, ...extra });
  }

  _setVoice(state, source) {
    if (state !== 'idle' && state !== 'speaking') return;
    if (state === this.voice) return;
    this.voice = state;
    this._emit('voice', { state, source });
  }

  _error(error, fatal, { retrying = false } = {}) {
    this._emit('error', { error, message: describeError(error), fatal, retrying });
  }

  get micMuted() {
    return this._micMuted;
  }

  /** Mute or unmute the microphone (the server then hears silence; the session stays up). */
  setMicMuted(muted) {
    this._micMuted = Boolean(muted);
    for (const track of this.micStream ? this.micStream.getAudioTracks() : []) track.enabled = !this._micMuted;
  }

  /** Connect. Resolves true once media flows, false when it did not (see the events). */
  async start() {
    if (!this._stopped) return this.state === 'connected';
    this._stopped = false;
    this._attempt = 0;
    window.addEventListener('online', this._onOnline);
    return this._connect();
  }

  /** A new session with another avatar (or options), keeping the microphone. */
  async restart({ avatarId, options } = {}) {
    if (avatarId !== undefined) this.avatarId = avatarId;
    if (options !== undefined) this.options = options;
    if (this._stopped) return this.start();
    this._gen += 1;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._teardown();
    this._attempt = 0;
    return this._connect();
  }

  /** Close the connection, DELETE the session, release the microphone. */
  async stop() {
    this._stopped = true;
    this._gen += 1;
    window.removeEventListener('online', this._onOnline);
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const deleting = this._teardown();
    for (const track of this.micStream ? this.micStream.getTracks() : []) track.stop();
    this.micStream = null;
    this.voice = null;
    if (this.state !== 'closed') this._setState('closed');
    await deleting;
  }

  /** Barge-in: stop the avatar's speech now. Resolves with the path it took. */
  async interrupt() {
    if (!this.sessionId || this.state !== 'connected') throw new Error('There is no live session to interrupt.');
    const message = JSON.stringify({ type: 'interrupt' });
    let via = null;
    if (this.dc && this.dc.readyState === 'open') {
      try {
        this.dc.send(message);
        via = 'datachannel';
      } catch {
        via = null;
      }
    }
    if (!via && this.ws && this.ws.readyState === WebSocket.OPEN) {
      try {
        this.ws.send(message);
        via = 'websocket';
      } catch {
        via = null;
      }
    }
    if (!via) {
      await this.api.interrupt(this.sessionId, this.controlToken);
      via = 'http';
    }
    this._setVoice('idle', 'local');
    this._emit('interrupted', { via });
    return via;
  }

  // ------------------------------------------------------------------ connecting

  async _connect() {
    const gen = ++this._gen;
    const check = () => {
      if (gen !== this._gen || this._stopped) throw new Superseded();
    };
    this._setState(this._attempt > 0 ? 'reconnecting' : 'connecting', { attempt: this._attempt });
    try {
      if (this.microphone && !this.micStream) {
        // One request even when a restart overlaps this attempt (a second stream would stay live).
        if (!this._micPromise) {
          this._micPromise = openMicrophone(this.audio).finally(() => {
            this._micPromise = null;
          });
        }
        const mic = await this._micPromise;
        if (this._stopped) {
          for (const track of mic.getTracks()) track.stop();
          throw new Superseded();
        }
        if (!this.micStream) {
          this.micStream = mic;
          this.setMicMuted(this._micMuted);
          for (const track of mic.getAudioTracks()) {
            track.addEventListener('ended', () => {
              if (!this._stopped && this.micStream === mic) {
                this._error(new Error('The microphone stopped (unplugged or taken by another app).'), true);
                this.stop();
              }
            });
          }
        }
      }
      check();
      const iceServers = await this.api.iceServers();
      check();
      const pc = new RTCPeerConnection({ iceServers });
      this.pc = pc;
      const stream = new MediaStream();
      this.remoteStream = stream;
      pc.addEventListener('track', (event) => {
        if (!stream.getTracks().includes(event.track)) stream.addTrack(event.track);
      });
      const mic = this.micStream && this.micStream.getAudioTracks()[0];
      if (mic) pc.addTransceiver(mic, { direction: 'sendrecv', streams: [this.micStream] });
      else pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });
      this._openDataChannel(pc, gen);
      pc.addEventListener('connectionstatechange', () => this._onConnectionState(pc, gen));

      const hasTurn = iceServers.some((s) => [].concat(s.urls).some((u) => String(u).startsWith('turn')));
      const gathered = iceGathered(pc, { maxMs: hasTurn ? 5000 : 3000, quietMs: hasTurn ? 1500 : 600 });
      await pc.setLocalDescription(await pc.createOffer());
      await gathered;
      check();

      const body = { sdp: pc.localDescription.sdp, type: 'offer' };
      if (this.avatarId) body.avatar_id = this.avatarId;
      if (this.options && Object.keys(this.options).length) body.options = this.options;
      const answer = await this.api.createSession(body);
      if (gen !== this._gen || this._stopped) {
        this.api.deleteSession(answer.session_id, answer.control_token, { keepalive: true }).catch(() => {});
        throw new Superseded();
      }
      this.sessionId = answer.session_id;
      this.controlToken = answer.control_token;
      this.latencyMs = Number.isFinite(answer.latency_ms) ? answer.latency_ms : null;
      await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
      check();
      this._emit('session', { sessionId: this.sessionId, latencyMs: this.latencyMs });
      this._emit('stream', { stream });
      this._openEvents(gen);
      await connected(pc, 20000);
      check();
      this._attempt = 0;
      this._prev = null;
      this._videoHoldMs = null;
      this._audioHoldMs = null;
      this._repairUntil = 0;
      this._lastRttMs = null;
      this._setState('connected');
      if (!this.eventsConnected) this._setVoice('idle', 'estimate');
      this._poll(gen);
      return true;
    } catch (err) {
      if (err instanceof Superseded || gen !== this._gen || this._stopped) return false;
      this._gen += 1;
      this._teardown();
      if (!this.reconnect || !isRetryable(err)) {
        this._error(err, true);
        await this.stop();
        return false;
      }
      this._error(err, false, { retrying: true });
      this._scheduleReconnect(err);
      return false;
    }
  }

  _scheduleReconnect(err) {
    this._attempt += 1;
    if (this._attempt > this.maxAttempts) {
      this._error(new Error(`Gave up reconnecting after ${this.maxAttempts} attempts. Press Start to try again.`), true);
      this.stop();
      return;
    }
    let delayMs = Math.min(this.maxDelayMs, 1000 * 2 ** (this._attempt - 1)) * (0.8 + 0.4 * Math.random());
    if (err && err.retryAfterS) delayMs = Math.max(delayMs, err.retryAfterS * 1000);
    delayMs = Math.round(delayMs);
    this._setState('reconnecting', { attempt: this._attempt, delayMs, reason: describeError(err) });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._connect();
    }, delayMs);
  }

  /** The live connection went away: tell, clean up, try again with backoff. */
  _lost(gen, reason, { serverClosed = false } = {}) {
    if (gen !== this._gen || this._stopped || this.state !== 'connected') return;
    this._gen += 1;
    this._teardown({ deleteSession: !serverClosed });
    const err = new ConnectionError(reason);
    this._error(err, false, { retrying: this.reconnect });
    if (this.reconnect) this._scheduleReconnect(err);
    else this.stop();
  }

  _onConnectionState(pc, gen) {
    if (gen !== this._gen) return;
    const state = pc.connectionState;
    if (state === 'connected') {
      clearTimeout(this._disconnectTimer);
      this._disconnectTimer = null;
    } else if (state === 'disconnected') {
      // Often transient (Wi-Fi hiccup): give ICE a few seconds to recover first.
      clearTimeout(this._disconnectTimer);
      this._disconnectTimer = setTimeout(() => {
        if (pc.connectionState !== 'connected') this._lost(gen, 'The connection to the server dropped.');
      }, 4000);
    } else if (state === 'failed') {
      this._lost(gen, 'The connection to the server failed.');
    }
  }

  _openDataChannel(pc, gen) {
    const dc = pc.createDataChannel('control', { ordered: true });
    this.dc = dc;
    dc.addEventListener('close', () => {
      // The server closing the session closes the channel first: reconnect without waiting for ICE.
      if (gen === this._gen && this.state === 'connected') {
        this._lost(gen, 'The server closed the session.', { serverClosed: true });
      }
    });
    dc.addEventListener('message', (event) => this._onServerMessage(event.data, gen));
  }

  _openEvents(gen) {
    if (!this.useEvents || this._eventsMissing || typeof WebSocket === 'undefined' || !this.sessionId) return;
    let ws;
    try {
      ws = new WebSocket(this.api.sessionSocketUrl(this.sessionId, this.controlToken, 'events'));
    } catch {
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.addEventListener('open', () => {
      opened = true;
      if (gen === this._gen) this.eventsConnected = true;
    });
    ws.addEventListener('message', (event) => {
      if (gen === this._gen) this._onServerMessage(event.data, gen);
    });
    ws.addEventListener('close', () => {
      if (gen !== this._gen) return;
      this.eventsConnected = false;
      this.ws = null;
      // Never opened: this server has no events route; use the browser's own estimates from now on.
      if (!opened) this._eventsMissing = true;
    });
  }

  _onServerMessage(data, gen = this._gen) {
    if (typeof data !== 'string') return;
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (!message || typeof message !== 'object') return;
    if (message.type === 'state') this._setVoice(message.state, 'server');
    else if (message.type === 'stats') this._serverStats = { ...message, at: performance.now() };
    else if (message.type === 'closed') {
      // The server ended the session (reaped, restarting...): connect again.
      const why = message.reason ? ` (${message.reason})` : '';
      this._lost(gen, `The server ended the session${why}.`, { serverClosed: true });
    } else if (message.type === 'error') {
      const text = message.message || 'The server reported an error.';
      this._error(new ApiError(0, message.code || 'server_error', text), false);
    }
  }

  /**
   * Close everything of the current connection. Resolves once the session is deleted on the
   * server. The DELETE goes first: closing the connection first would make the server end the
   * session by itself and the DELETE would find nothing.
   */
  _teardown({ deleteSession = true } = {}) {
    clearTimeout(this._disconnectTimer);
    this._disconnectTimer = null;
    clearTimeout(this._pollTimer);
    this._pollTimer = null;
    if (this.ws) {
      try {
        this.ws.close(1000, 'bye');
      } catch {
        // already closed
      }
    }
    this.ws = null;
    this.eventsConnected = false;
    const { pc, dc, sessionId, controlToken } = this;
    this.pc = null;
    this.dc = null;
    this.sessionId = null;
    this.controlToken = null;
    this._serverStats = null;
    for (const track of this.remoteStream ? this.remoteStream.getTracks() : []) track.stop();
    const closeMedia = () => {
      for (const closable of [dc, pc]) {
        try {
          if (closable) closable.close();
        } catch {
          // already closed
        }
      }
    };
    if (!sessionId || !deleteSession) {
      closeMedia();
      return Promise.resolve();
    }
    const deleting = this.api.deleteSession(sessionId, controlToken, { keepalive: true }).catch((err) => {
      // Already gone (reaped, server restarted) or unreachable: nothing left to delete.
      if (err instanceof ApiError && (err.status === 404 || err.status === 0)) return;
      this._error(err, false);
    });
    const waited = Promise.race([deleting, new Promise((resolve) => setTimeout(resolve, 1500))]);
    return waited.then(closeMedia);
  }

  // ------------------------------------------------------------------ statistics

  _poll(gen) {
    let tick = 0;
    const step = async () => {
      if (gen !== this._gen || !this.pc) return;
      try {
        if (!this.eventsConnected) await this._estimateVoice();
        if (tick % 4 === 0) await this._collectStats();
      } catch {
        // getStats on a closing connection: the next state change handles it
      }
      tick += 1;
      if (gen === this._gen) this._pollTimer = setTimeout(step, 250);
    };
    this._pollTimer = setTimeout(step, 250);
  }

  /** Without the events WebSocket: speaking while the returned voice is audible. */
  async _estimateVoice() {
    const receiver = this.pc && this.pc.getReceivers().find((r) => r.track && r.track.kind === 'audio');
    if (!receiver) return;
    let level = null;
    (await receiver.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && typeof s.audioLevel === 'number') level = s.audioLevel;
    });
    if (level === null) return;
    const now = performance.now();
    if (level > 0.02) {
      this._quietSince = null;
      this._setVoice('speaking', 'estimate');
    } else if (level < 0.01) {
      if (this._quietSince === null) this._quietSince = now;
      if (now - this._quietSince > 500) this._setVoice('idle', 'estimate');
    }
  }

  /**
   * A fresh session's audio buffer holds ~130 ms, its video buffer next to nothing, and Chromium's A/V
   * synchroniser closes that gap by 10-20 ms a second: for the first ~15 s the picture ran ahead of the voice
   * (docs/benchmarks.md). Asking the video receiver to hold what the audio holds closes it from the first second.
   */
  _holdVideoWithAudio(pc, audioBufferMs, repairMs = 0) {
    // pc: the connection the figure was measured on (a reconnect may have replaced this.pc meanwhile).
    // repairMs: how long a lost video packet takes to come back while the video is repairing losses, else 0.
    if (!Number.isFinite(audioBufferMs) || pc !== this.pc) return;
    const receivers = pc.getReceivers();
    const receiver = receivers.find((r) => r.track && r.track.kind === 'video');
    if (!receiver || !('jitterBufferTarget' in receiver)) return;
    const floor = repairMs > 0 ? Math.round(repairMs + VIDEO_HOLD_EXTRA_MS) : 0;
    const target = Math.min(Math.max(Math.round(audioBufferMs + VIDEO_HOLD_EXTRA_MS), floor, 0), 4000);
    const audioReceiver = receivers.find((r) => r.track && r.track.kind === 'audio');
    if (audioReceiver && 'jitterBufferTarget' in audioReceiver) {
      const audioHold = repairMs > 0 ? Math.min(Math.round(repairMs), 4000) : null;
      if (audioHold !== this._audioHoldMs && (audioHold === null || this._audioHoldMs === null
          || Math.abs(audioHold - this._audioHoldMs) >= 5)) {
        audioReceiver.jitterBufferTarget = audioHold;
        this._audioHoldMs = audioHold;
      }
    }
    if (this._videoHoldMs !== null && Math.abs(target - this._videoHoldMs) < 5) return;
    receiver.jitterBufferTarget = target;
    this._videoHoldMs = target;
  }

  async _collectStats() {
    const pc = this.pc;
    if (!pc) return;
    const report = await pc.getStats();
    let video = null;
    let audio = null;
    let transport = null;
    let remoteInbound = null;
    let pair = null;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') video = s;
      else if (s.type === 'inbound-rtp' && s.kind === 'audio') audio = s;
      else if (s.type === 'transport') transport = s;
      else if (s.type === 'remote-inbound-rtp') remoteInbound = s;
    });
    if (transport && transport.selectedCandidatePairId) pair = report.get(transport.selectedCandidatePairId);
    if (!pair) {
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
      });
    }
    const now = performance.now();
    const prev = this._prev;
    const dt = prev ? (now - prev.at) / 1000 : 0;
    const delta = (a, b, key) => (a && b && typeof a[key] === 'number' && typeof b[key] === 'number' ? a[key] - b[key] : null);

    let fps = video && typeof video.framesPerSecond === 'number' ? video.framesPerSecond : null;
    if (fps === null && prev && dt > 0) {
      const frames = delta(video, prev.video, 'framesDecoded');
      if (frames !== null) fps = frames / dt;
    }
    let rttMs = null;
    if (pair && typeof pair.currentRoundTripTime === 'number') rttMs = pair.currentRoundTripTime * 1000;
    else if (remoteInbound && typeof remoteInbound.roundTripTime === 'number') rttMs = remoteInbound.roundTripTime * 1000;
    const bufferMs = (now_, before) => {
      const d = delta(now_, before, 'jitterBufferDelay');
      const n = delta(now_, before, 'jitterBufferEmittedCount');
      if (d !== null && n) return (d / n) * 1000;
      if (now_ && now_.jitterBufferEmittedCount) return (now_.jitterBufferDelay / now_.jitterBufferEmittedCount) * 1000;
      return null;
    };
    const videoBufferMs = video ? bufferMs(video, prev && prev.video) : null;
    const audioBufferMs = audio ? bufferMs(audio, prev && prev.audio) : null;
    const repairs = delta(video, prev && prev.video, 'nackCount');
    if (repairs > 0) this._repairUntil = now + REPAIR_HOLD_FOR_MS;
    if (rttMs !== null) this._lastRttMs = rttMs;  // a poll without one keeps the hold as it was
    const repairing = this.holdForRepair && now < this._repairUntil && this._lastRttMs !== null;
    const repairMs = repairing ? this._lastRttMs + REPAIR_NACK_MS : 0;
    if (this.holdVideo) this._holdVideoWithAudio(pc, audioBufferMs, repairMs);
    let kbps = null;
    if (prev && dt > 0) {
      const bytes = (delta(video, prev.video, 'bytesReceived') || 0) + (delta(audio, prev.audio, 'bytesReceived') || 0);
      kbps = (bytes * 8) / 1000 / dt;
    }
    const server = this._serverStats && now - this._serverStats.at < 5000 ? this._serverStats : null;
    const pipelineMs = server && typeof server.latency_ms === 'number' ? server.latency_ms : this.latencyMs;
    // Voice onset -> visible mouth: the server's pipeline, half a round trip, the receive buffer.
    let latencyMs = null;
    if (pipelineMs !== null && pipelineMs !== undefined) {
      latencyMs = pipelineMs + (rttMs !== null ? rttMs / 2 : 0) + (videoBufferMs ?? audioBufferMs ?? 0);
    }
    this._prev = { at: now, video, audio };
    const stats = {
      fps,
      rttMs,
      latencyMs,
      pipelineMs: pipelineMs ?? null,
      videoBufferMs,
      audioBufferMs,
      kbps,
      width: video ? video.frameWidth ?? null : null,
      height: video ? video.frameHeight ?? null : null,
      framesDecoded: video ? video.framesDecoded ?? null : null,
      droppedFrames: video ? (video.framesDropped ?? 0) : null,
      freezeCount: video ? video.freezeCount ?? null : null,
      lateFrames: server && typeof server.late_frames === 'number' ? server.late_frames : null,
      serverFps: server && typeof server.fps === 'number' ? server.fps : null,
      framesSent: server && typeof server.frames_sent === 'number' ? server.frames_sent : null,
      fromServer: Boolean(server),
    };
    this.lastStats = stats;
    this._emit('stats', stats);
  }
}
