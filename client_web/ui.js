// Small page helpers shared by the demo page and the overlay page.

import { describeError } from './api.js';

/**
 * An error area: messages people can read and dismiss, announced by screen readers
 * (the container is role="alert"). Repeats of the newest message are counted, not stacked.
 */
export class ErrorList {
  constructor(container, { max = 4 } = {}) {
    this.container = container;
    this.max = max;
  }

  show(errorOrMessage) {
    const message = typeof errorOrMessage === 'string' ? errorOrMessage : describeError(errorOrMessage);
    const last = this.container.lastElementChild;
    if (last && last.dataset.message === message) {
      const count = Number(last.dataset.count || '1') + 1;
      last.dataset.count = String(count);
      last.querySelector('.error-count').textContent = ` (×${count})`;
      return last;
    }
    const item = document.createElement('div');
    item.className = 'error';
    item.dataset.message = message;
    const icon = document.createElement('span');
    icon.className = 'error-icon';
    icon.setAttribute('aria-hidden', 'true');
    icon.textContent = '!';
    const text = document.createElement('p');
    text.className = 'error-text';
    text.textContent = message;
    const count = document.createElement('span');
    count.className = 'error-count';
    text.append(count);
    const close = document.createElement('button');
    close.type = 'button';
    close.className = 'error-close';
    close.setAttribute('aria-label', 'Dismiss this message');
    close.textContent = '×';
    close.addEventListener('click', () => item.remove());
    item.append(icon, text, close);
    this.container.append(item);
    while (this.container.childElementCount > this.max) this.container.firstElementChild.remove();
    return item;
  }

  clear() {
    this.container.replaceChildren();
  }

  get messages() {
    return [...this.container.children].map((el) => el.dataset.message);
  }
}

/** Show uncaught errors and unhandled promise rejections in the page, not only in the console. */
export function reportUncaught(show) {
  window.addEventListener('error', (event) => {
    // Resource load errors do not reach window listeners in the bubbling phase: these are script errors.
    const where = event.filename ? ` (${event.filename.split('/').pop()}:${event.lineno})` : '';
    show(`Something went wrong in the page: ${event.message || 'unknown error'}${where}`);
  });
  window.addEventListener('unhandledrejection', (event) => {
    show(`Something went wrong in the page: ${describeError(event.reason)}`);
  });
}

/** "12", "1.2k"... for small panels; "—" when unknown. */
export function formatNumber(value, digits = 0) {
  if (value === null || value === undefined || !Number.isFinite(value)) return '—';
  return value.toFixed(digits);
}

/** Initials for a placeholder portrait. */
export function initials(name) {
  const words = String(name || '?').replace(/\(.*?\)/g, '').trim().split(/[\s_-]+/).filter(Boolean);
  return (words.slice(0, 2).map((w) => w[0]).join('') || '?').toUpperCase();
}
