// imgproc's page: upload a CSV, follow the request, compare images.
// Plain script, no dependencies. Talks only to this origin's /v1 API.
'use strict';

(function () {
  const TOKEN_KEY = 'imgproc.token';
  // Products shown at once; "Show more" adds another batch. Each API call
  // reads at most PAGE products and follows next_cursor for the rest.
  const BATCH = 100;
  const PAGE = 100;
  // Polling: quick at first, slower while nothing changes.
  const POLL_MIN_MS = 500;
  const POLL_MAX_MS = 5000;
  const TERMINAL = ['completed', 'completed_with_errors', 'failed'];
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

  const byId = (id) => document.getElementById(id);

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') node.textContent = v;
      else if (k === 'class') node.className = v;
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children || []) if (c) node.append(c);
    return node;
  }

  // ---- formatting -------------------------------------------------------

  function bytes(n) {
    if (n === null || n === undefined) return '—';
    if (n < 1000) return n + ' B';
    const units = ['kB', 'MB', 'GB', 'TB'];
    let v = n / 1000;
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return v.toFixed(v < 10 ? 1 : 0) + ' ' + units[i];
  }

  function saving(input, output) {
    if (!input || output === null || output === undefined) return null;
    return 100 * (1 - output / input);
  }

  function percent(p) {
    return (Math.round(p * 10) / 10).toFixed(1) + '%';
  }

  function duration(ms) {
    if (!(ms >= 0)) return '—';
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + Math.round(s % 60) + ' s';
    return Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
  }

  const stateLabel = (s) => s.replace(/_/g, ' ');

  // ---- API --------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || ('The server answered ' + status + '.'));
      this.status = status;
      this.code = e.code || 'http_' + status;
      this.details = Array.isArray(e.details) ? e.details : [];
    }
  }

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
  }

  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage disabled: the token lasts until reload */ }
    memoryToken = value;
  }
  let memoryToken = '';

  // Relative paths, so the page also works under an API stage prefix.
  async function api(path, init) {
    const headers = new Headers((init && init.headers) || {});
    const t = token() || memoryToken;
    if (t) headers.set('Authorization', 'Bearer ' + t);
    let response;
    try {
      response = await fetch(path, Object.assign({}, init, { headers, cache: 'no-store' }));
    } catch (e) {
      throw new ApiError(0, { error: { code: 'network', message: 'The service cannot be reached. Check your connection and try again.' } });
    }
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, body);
    }
    return response;
  }

  // ---- views ------------------------------------------------------------

  const views = { upload: byId('upload-view'), request: byId('request-view') };
  let current = null; // the request being followed

  function route() {
    const m = /^#\/requests\/([^/?#]+)$/.exec(location.hash);
    if (current) { current.stop(); current = null; }
    if (m && UUID.test(m[1])) {
      views.upload.hidden = true;
      views.request.hidden = false;
      current = new RequestView(m[1].toLowerCase());
      current.start();
    } else {
      views.request.hidden = true;
      views.upload.hidden = false;
      document.title = 'imgproc — compress product images';
    }
    byId('main').focus({ preventScroll: true });
  }

  // ---- upload -----------------------------------------------------------

  const fileInput = byId('csv-file');
  const dropZone = byId('drop-zone');

  function showChosen() {
    const f = fileInput.files && fileInput.files[0];
    byId('csv-chosen').textContent = f ? 'Chosen: ' + f.name + ' (' + bytes(f.size) + ')' : '';
    dropZone.classList.toggle('has-file', !!f);
  }
  fileInput.addEventListener('change', showChosen);

  for (const type of ['dragenter', 'dragover']) {
    dropZone.addEventListener(type, (e) => { e.preventDefault(); dropZone.classList.add('dragging'); });
  }
  for (const type of ['dragleave', 'drop']) {
    dropZone.addEventListener(type, () => dropZone.classList.remove('dragging'));
  }
  dropZone.addEventListener('drop', (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) {
      fileInput.files = e.dataTransfer.files;
      showChosen();
    }
  });

  function showUploadError(err) {
    const box = byId('upload-errors');
    byId('upload-error-title').textContent =
      err.code === 'invalid_csv' ? 'The CSV has problems; nothing was created' : 'The upload was refused';
    byId('upload-error-message').textContent = err.code === 'unauthorized'
      ? 'This service needs an API token. Enter it above and upload again.'
      : err.message;
    const rows = byId('upload-error-rows');
    rows.replaceChildren(...err.details.map((d) => el('tr', {}, [
      el('td', { text: d.line === null || d.line === undefined ? 'whole file' : String(d.line) }),
      el('td', { text: d.column || '—' }),
      el('td', { text: d.message }),
    ])));
    byId('upload-error-table').hidden = err.details.length === 0;
    box.hidden = false;
    box.focus();
    if (err.code === 'unauthorized') byId('api-token').setAttribute('aria-invalid', 'true');
  }

  byId('api-token').value = token();

  byId('upload-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const box = byId('upload-errors');
    const file = fileInput.files && fileInput.files[0];
    const webhook = byId('webhook-url');
    box.hidden = true;
    webhook.removeAttribute('aria-invalid');
    byId('api-token').removeAttribute('aria-invalid');
    if (!file) {
      showUploadError(new ApiError(0, { error: { code: 'no_file', message: 'Choose a CSV file first.' } }));
      fileInput.focus();
      return;
    }
    if (webhook.value.trim() && !webhook.checkValidity()) {
      webhook.setAttribute('aria-invalid', 'true');
      showUploadError(new ApiError(0, { error: { code: 'invalid_request', message: 'The webhook URL must be an absolute http or https URL.' } }));
      return;
    }
    setToken(byId('api-token').value.trim());
    const form = new FormData();
    form.append('file', file, file.name);
    if (webhook.value.trim()) form.append('webhook_url', webhook.value.trim());
    const button = byId('submit-button');
    button.disabled = true;
    button.textContent = 'Uploading…';
    try {
      const response = await api('v1/requests', { method: 'POST', body: form });
      const accepted = await response.json();
      fileInput.value = '';
      showChosen();
      location.hash = '#/requests/' + accepted.request_id;
    } catch (err) {
      showUploadError(err);
    } finally {
      button.disabled = false;
      button.textContent = 'Upload and compress';
    }
  });

  byId('open-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = byId('open-id').value.trim();
    if (UUID.test(id)) location.hash = '#/requests/' + id.toLowerCase();
    else byId('open-id').setAttribute('aria-invalid', 'true');
  });

  // ---- request view -----------------------------------------------------

  class RequestView {
    constructor(id) {
      this.id = id;
      this.shown = BATCH;
      this.timer = null;
      this.stopped = false;
      this.delay = POLL_MIN_MS;
      this.lastDone = -1;
      this.cards = new Map(); // "serial/index" -> card element
      this.sections = new Map(); // serial -> product section
      this.totalsOfAll = null; // totals over every page, once terminal
    }

    start() {
      byId('request-id').textContent = this.id;
      document.title = 'Request ' + this.id.slice(0, 8) + ' — imgproc';
      byId('request-error').hidden = true;
      byId('request-body').hidden = true;
      byId('products').replaceChildren();
      byId('more-products').hidden = true;
      byId('download-csv').disabled = true;
      this.poll();
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
    }

    async poll() {
      if (this.stopped) return;
      // One load at a time; a request for another (e.g. "Show more") runs after.
      if (this.busy) { this.again = true; return; }
      this.busy = true;
      try {
        await this.pollOnce();
      } finally {
        this.busy = false;
      }
      if (this.again && !this.stopped) { this.again = false; this.schedule(0); }
    }

    async pollOnce() {
      let status;
      try {
        status = await this.load();
      } catch (err) {
        if (this.stopped) return;
        this.showError(err);
        // Network trouble may pass; a missing request or a token will not.
        if (err.status === 0 || err.status >= 500) this.schedule(POLL_MAX_MS);
        return;
      }
      if (this.stopped) return;
      byId('request-error').hidden = true;
      byId('request-body').hidden = false;
      this.render(status);
      if (TERMINAL.includes(status.status)) {
        // The webhook is delivered after the request ends: follow it too.
        if (status.webhook && status.webhook.status === 'pending') this.schedule(POLL_MAX_MS);
        return;
      }
      const done = status.progress.succeeded + status.progress.failed;
      this.delay = done !== this.lastDone ? POLL_MIN_MS : Math.min(this.delay * 2, POLL_MAX_MS);
      this.lastDone = done;
      this.schedule(this.delay);
    }

    schedule(ms) {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.poll(), ms);
    }

    // The first `shown` products, following next_cursor.
    async load() {
      let first = null;
      const products = [];
      let cursor = null;
      do {
        const q = new URLSearchParams({ limit: String(Math.min(PAGE, this.shown - products.length)) });
        if (cursor) q.set('cursor', cursor);
        const page = await (await api('v1/requests/' + this.id + '?' + q)).json();
        if (!first) first = page;
        products.push(...page.products);
        cursor = page.next_cursor;
      } while (cursor && products.length < this.shown && !this.stopped);
      first.products = products;
      first.more = !!cursor;
      if (first.more && TERMINAL.includes(first.status) && !this.totalsOfAll) {
        this.totalsOfAll = await this.totalsOverAllPages();
      }
      return first;
    }

    async totalsOverAllPages() {
      const t = { in: 0, out: 0 };
      let cursor = null;
      do {
        const q = new URLSearchParams({ limit: '1000' });
        if (cursor) q.set('cursor', cursor);
        const page = await (await api('v1/requests/' + this.id + '?' + q)).json();
        addTotals(t, page.products);
        cursor = page.next_cursor;
      } while (cursor && !this.stopped);
      return t;
    }

    showError(err) {
      const box = byId('request-error');
      const unauthorized = err.code === 'unauthorized';
      byId('request-error-message').textContent = unauthorized
        ? 'This service needs an API token to show the request.'
        : err.code === 'not_found' ? 'There is no request with this ID.' : err.message;
      byId('token-form').hidden = !unauthorized;
      box.hidden = false;
      if (unauthorized) byId('token-retry').focus(); else box.focus();
    }

    render(s) {
      const p = s.progress;
      const done = p.succeeded + p.failed;
      const terminal = TERMINAL.includes(s.status);
      const badge = byId('request-state');
      badge.textContent = stateLabel(s.status);
      badge.className = 'state-badge ' + s.status;
      const bar = byId('progress-bar');
      bar.max = Math.max(p.total, 1);
      bar.value = done;
      const text = done + ' of ' + p.total + ' images done (' + percent(p.percent) + ') · ' +
        p.succeeded + ' succeeded · ' + p.failed + ' failed · ' + p.pending + ' pending';
      if (byId('progress-text').textContent !== text) byId('progress-text').textContent = text;

      const t = this.totalsOfAll || addTotals({ in: 0, out: 0 }, s.products);
      byId('sum-in').textContent = bytes(t.in);
      byId('sum-out').textContent = bytes(t.out);
      const saved = saving(t.in, t.out);
      byId('sum-saved').textContent = saved === null ? '—' : bytes(t.in - t.out) + ' (' + percent(saved) + ')';
      const created = Date.parse(s.created_at);
      const end = s.completed_at ? Date.parse(s.completed_at) : Date.now();
      byId('sum-time').textContent = duration(end - created) + (s.completed_at ? '' : ' so far');
      byId('sum-webhook').textContent = s.webhook
        ? stateLabel(s.webhook.status) + ' (' + s.webhook.attempts + ' attempt' + (s.webhook.attempts === 1 ? '' : 's') + ')'
        : 'none';
      const note = byId('sum-note');
      note.hidden = !(s.more && !this.totalsOfAll);
      note.textContent = 'Byte totals cover the products shown; all of them are added up when the request is done.';

      byId('download-csv').disabled = !terminal || !s.output_csv_url;
      this.outputCsvUrl = s.output_csv_url;
      byId('download-hint').textContent = terminal ? 'One row per product, with an Output Image Urls column.' : 'Ready when every image is done.';

      for (const product of s.products) this.renderProduct(product);
      const more = byId('more-products');
      more.hidden = !s.more;
    }

    renderProduct(product) {
      let section = this.sections.get(product.serial_number);
      if (!section) {
        const grid = el('ul', { class: 'grid' });
        section = el('article', { class: 'product' }, [
          el('h3', {}, [el('span', { class: 'serial', text: 'S. No. ' + product.serial_number }), ' ' + product.product_name]),
          grid,
        ]);
        section.grid = grid;
        this.sections.set(product.serial_number, section);
        byId('products').append(section);
      }
      product.images.forEach((image, i) => {
        const key = product.serial_number + '/' + (i + 1);
        const old = this.cards.get(key);
        if (old && old.dataset.status === image.status) return;
        const card = imageCard(product, image, i + 1);
        if (old) {
          const hadFocus = old.contains(document.activeElement);
          old.replaceWith(card);
          if (hadFocus) { const b = card.querySelector('button'); if (b) b.focus(); }
        } else section.grid.append(card);
        this.cards.set(key, card);
      });
    }
  }

  function addTotals(t, products) {
    for (const p of products) {
      for (const img of p.images) {
        if (img.status === 'succeeded' && img.input_bytes !== null && img.output_bytes !== null) {
          t.in += img.input_bytes;
          t.out += img.output_bytes;
        }
      }
    }
    return t;
  }

  function thumb(src, alt, label) {
    const img = el('img', { src, alt, loading: 'lazy', decoding: 'async', referrerpolicy: 'no-referrer' });
    const fallback = el('span', { class: 'no-preview', text: 'No preview' });
    fallback.hidden = true;
    img.addEventListener('error', () => { img.hidden = true; fallback.hidden = false; });
    return el('figure', { class: 'thumb' }, [img, fallback, el('figcaption', { text: label })]);
  }

  function imageCard(product, image, index) {
    const name = product.product_name + ', image ' + index;
    const li = el('li', { class: 'card ' + image.status });
    li.dataset.status = image.status;
    const pair = el('div', { class: 'pair' }, [
      thumb(image.input_url, 'Original of ' + name, 'Original'),
      image.output_url
        ? thumb(image.output_url, 'Compressed ' + name, 'Compressed')
        : el('figure', { class: 'thumb placeholder' }, [
          el('span', { text: image.status === 'failed' ? 'Failed' : 'Working…' }),
          el('figcaption', { text: 'Compressed' }),
        ]),
    ]);
    li.append(pair);

    if (image.status === 'succeeded') {
      const s = saving(image.input_bytes, image.output_bytes);
      li.append(el('p', { class: 'sizes' }, [
        bytes(image.input_bytes) + ' → ' + bytes(image.output_bytes) + ' ',
        el('strong', { class: 'saved', text: s === null ? '' : (s >= 0 ? '−' : '+') + percent(Math.abs(s)) }),
      ]));
      if (image.width && image.height) li.append(el('p', { class: 'dims', text: image.width + ' × ' + image.height + ' px' }));
      if (image.original_kept) li.append(el('p', { class: 'hint', text: 'Already small: the original was kept.' }));
      const button = el('button', { type: 'button', class: 'compare-open', text: 'Compare full size' });
      button.setAttribute('aria-label', 'Compare ' + name + ' at full size');
      button.addEventListener('click', () => openCompare(name, image));
      li.append(button);
    } else if (image.status === 'failed') {
      const err = image.error || { code: 'failed', message: 'This image failed.' };
      li.append(el('p', { class: 'error-text' }, [el('strong', { text: 'Failed: ' }), err.message + ' ', el('code', { text: err.code })]));
    } else {
      li.append(el('p', { class: 'hint', text: 'Waiting to be processed…' }));
    }
    // The API only accepts http(s) URLs; checked again before making a link.
    const link = /^https?:\/\//i.test(image.input_url)
      ? el('a', { href: image.input_url, rel: 'noreferrer noopener', target: '_blank', text: image.input_url })
      : el('span', { text: image.input_url });
    li.append(el('p', { class: 'url' }, [link]));
    return li;
  }

  // ---- comparison -------------------------------------------------------

  const dialog = byId('compare');
  const slider = byId('compare-slider');

  function applySlider() {
    byId('compare-after').style.clipPath = 'inset(0 0 0 ' + slider.value + '%)';
    byId('compare-divider').style.left = slider.value + '%';
    slider.setAttribute('aria-valuetext', slider.value + '% original, ' + (100 - slider.value) + '% compressed');
  }

  function openCompare(name, image) {
    byId('compare-title').textContent = name;
    const before = byId('compare-before');
    const after = byId('compare-after');
    before.src = image.input_url;
    before.alt = 'Original of ' + name;
    after.src = image.output_url;
    after.alt = 'Compressed ' + name;
    const s = saving(image.input_bytes, image.output_bytes);
    byId('compare-sizes').textContent = 'Original ' + bytes(image.input_bytes) + ', compressed ' + bytes(image.output_bytes) +
      (s === null ? '' : ' (' + percent(s) + ' smaller)') +
      (image.width ? ', ' + image.width + ' × ' + image.height + ' px' : '') + '.';
    slider.value = 50;
    applySlider();
    dialog.showModal();
    slider.focus();
  }

  slider.addEventListener('input', applySlider);
  byId('compare-actual').addEventListener('change', (e) => byId('compare-frame').classList.toggle('actual', e.target.checked));
  byId('compare-close').addEventListener('click', () => dialog.close());
  dialog.addEventListener('click', (e) => { if (e.target === dialog) dialog.close(); });

  // ---- the rest of the request view ---------------------------------------

  byId('more-products').addEventListener('click', () => {
    if (!current) return;
    current.shown += BATCH;
    current.schedule(0);
  });

  byId('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    setToken(byId('token-retry').value.trim());
    byId('api-token').value = byId('token-retry').value.trim();
    if (current) current.poll();
  });

  byId('download-csv').addEventListener('click', () => {
    if (!current || !current.outputCsvUrl) return;
    const id = current.id;
    // Followed as a link, not fetched: output_csv_url needs no token, and
    // on AWS it redirects to S3, which a fetch from this page could not
    // read (another origin) but a download can.
    const a = el('a', { href: current.outputCsvUrl, download: 'imgproc-' + id + '.csv' });
    document.body.append(a);
    a.click();
    a.remove();
    byId('download-hint').textContent = 'Downloading imgproc-' + id + '.csv.';
  });

  window.addEventListener('hashchange', route);
  route();
})();
