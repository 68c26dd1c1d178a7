// The emo-stream HTTP contract (docs/api.md) for browser pages: one small client that
// every page (demo, overlay) shares. No dependencies, no build step.
//
// - The API lives next to the page: `/` and `/overlay` both resolve `v1/...` to `/v1/...`,
//   so the pages also work behind a reverse proxy that mounts the server under a prefix.
// - When the page was opened with `?token=T`, every call carries `Authorization: Bearer T`
//   (and URLs that cannot carry headers — images, WebSockets — get `?token=T`).
// - Every failure becomes an `ApiError` with a stable `code` and a message fit for people.

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0: the server could not be reached)
   * @param {string} code   the server's `error.code`, or a client-side code
   * @param {string} message
   * @param {{retryAfterS?: number|null}} [extra]
   */
  constructor(status, code, message, extra = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.retryAfterS = extra.retryAfterS ?? null;
  }

  /** Worth trying again later (network trouble, overload, server restarts). */
  get retryable() {
    return this.status === 0 || this.status === 408 || this.status === 429 || this.status >= 500;
  }
}

// What people see for the error codes the server can send (docs/api.md / emo_stream/errors.py).
// The server's own message follows when it adds something.
const FRIENDLY = {
  network: 'Cannot reach the server. Check your connection.',
  not_an_image: 'That file is not an image we can read. Use a JPEG, PNG or WebP photo.',
  bad_image: 'That image could not be read. Try another photo.',
  image_too_large: 'That image is too large.',
  image_too_small: 'That image is too small. Use a photo at least a few hundred pixels wide.',
  no_face_found: 'No face found in that photo. Try a clear, front-facing portrait.',
  face_too_small: 'The face in that photo is too small. Crop closer to the face and try again.',
  avatar_not_found: 'That portrait is no longer on the server. Pick another one.',
  session_not_found: 'The live session has ended on the server.',
  unauthorized: 'The server needs an access token: open this page with ?token=… in its address.',
  overloaded: 'The server is busy right now.',
  invalid_sdp: 'The browser and the server could not agree on a connection.',
  bad_request: 'The server refused the request.',
};

/** A message for people: the friendly sentence for `err.code`, then the server's details. */
export function describeError(err) {
  if (!err) return 'Unknown error.';
  if (err instanceof ApiError) {
    const friendly = FRIENDLY[err.code];
    if (friendly && err.message && !err.message.startsWith(friendly)) {
      return `${friendly} (${err.message})`;
    }
    return friendly || err.message || `The server answered ${err.status}.`;
  }
  if (typeof err === 'string') return err;
  return err.message || String(err);
}

function tokenFromLocation() {
  try {
    return new URLSearchParams(window.location.search).get('token') || null;
  } catch {
    return null;
  }
}

export class Api {
  /**
   * @param {{base?: string|URL, token?: string|null}} [opts] base: the server root (default: the
   *   page's directory); token: the server's bearer token (default: `?token=` of the page URL).
   */
  constructor(opts = {}) {
    this.base = new URL(opts.base ?? '.', window.location.href);
    this.token = opts.token === undefined ? tokenFromLocation() : opts.token;
  }

  /** An absolute URL for `path` (relative to the server root), with query `params`. */
  url(path, params = {}) {
    const url = new URL(path.replace(/^\//, ''), this.base);
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    return url;
  }

  /** A URL usable where no header can be set (<img src>, downloads): carries `?token=`. */
  authedUrl(pathOrUrl) {
    const url = new URL(pathOrUrl, this.base);
    if (this.token && url.origin === this.base.origin && !url.searchParams.has('token')) {
      url.searchParams.set('token', this.token);
    }
    return url.toString();
  }

  /** The ws:// or wss:// URL for `path`. */
  wsUrl(path, params = {}) {
    const url = this.url(path, params);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.toString();
  }

  /**
   * One call. Resolves with the parsed JSON body (null for 204), rejects with ApiError.
   * @param {string} method
   * @param {string} path
   * @param {{json?: any, body?: BodyInit, headers?: Record<string,string>, controlToken?: string,
   *          signal?: AbortSignal, keepalive?: boolean}} [opts]
   */
  async request(method, path, opts = {}) {
    const headers = { Accept: 'application/json', ...(opts.headers || {}) };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (opts.controlToken) headers['X-Control-Token'] = opts.controlToken;
    let body = opts.body;
    if (opts.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.json);
    }
    let response;
    try {
      response = await fetch(this.url(path), {
        method, headers, body, signal: opts.signal, keepalive: opts.keepalive, cache: 'no-store',
      });
    } catch (err) {
      if (err && err.name === 'AbortError') throw err;
      throw new ApiError(0, 'network', FRIENDLY.network);
    }
    if (response.status === 204) return null;
    const text = await response.text().catch(() => '');
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      const retry = Number.parseFloat(response.headers.get('Retry-After') || '');
      const error = data && data.error;
      const code = (error && error.code) || `http_${response.status}`;
      const message = (error && error.message) || (text && !text.trimStart().startsWith('<') ? text.slice(0, 300) : '')
        || `${method} ${path} failed with HTTP ${response.status} ${response.statusText}`.trim();
      throw new ApiError(response.status, code, message, { retryAfterS: Number.isFinite(retry) ? retry : null });
    }
    return data;
  }

  // -------------------------------------------------------------------- the routes of docs/api.md

  /** `[{urls, username?, credential?}]` for RTCPeerConnection. */
  async iceServers() {
    const data = await this.request('GET', 'v1/ice-servers');
    return (data && Array.isArray(data.ice_servers) ? data.ice_servers : []).map((s) => {
      const server = { urls: s.urls };
      if (s.username) server.username = s.username;
      if (s.credential) server.credential = s.credential;
      return server;
    });
  }

  /** `[{id, name, thumbnail_url}]`. */
  async listAvatars() {
    const data = await this.request('GET', 'v1/avatars');
    return (data && Array.isArray(data.avatars)) ? data.avatars : [];
  }

  /** Upload a portrait: resolves `{id, width, height, faces, warnings}`. */
  async uploadAvatar(file, { signal } = {}) {
    const form = new FormData();
    form.append('file', file, file.name || 'portrait');
    return this.request('POST', 'v1/avatars', { body: form, signal });
  }

  /** `{session_id, sdp, type, control_token, latency_ms}`. */
  async createSession(body, { signal } = {}) {
    return this.request('POST', 'v1/sessions', { json: body, signal });
  }

  async deleteSession(sessionId, controlToken, { keepalive = false } = {}) {
    return this.request('DELETE', `v1/sessions/${encodeURIComponent(sessionId)}`, { controlToken, keepalive });
  }

  async interrupt(sessionId, controlToken) {
    return this.request('POST', `v1/sessions/${encodeURIComponent(sessionId)}/interrupt`, { controlToken });
  }

  /** A session's WebSocket URL (`events`, `audio`): `?control_token=` opens the session, and
   *  `?token=` carries the server's token when it has one (browsers cannot set WebSocket headers). */
  sessionSocketUrl(sessionId, controlToken, kind = 'events') {
    return this.wsUrl(`v1/sessions/${encodeURIComponent(sessionId)}/${kind}`,
      { control_token: controlToken, token: this.token });
  }
}
