// The in-page latent map (explorer/components/latent_map/__init__.py mounts it).
//
// One module, mounted in two ways:
//   data = bytes  a payload from explorer/services/inpage.py (pack): parsed once and kept in
//                 `payloads` by its id; the element itself is hidden.
//   data = JSON   a map view naming two payloads (samples, points): drawn in a 2-D canvas.
// Everything a pointer or key does (hover, zoom, pan, decode at the cursor, the epoch player)
// runs here, in the page; only a click on a point is sent to the server (setStateValue).
// Streamlit calls the default export again, with the same parentElement, whenever the data
// changes, so the map keeps its state (zoom, pan) on the element and only redraws.

const payloads = new Map(); // id -> {meta, arrays}
const maps = new Set(); // live LatentMap instances, told when a payload arrives
const savedViews = new Map(); // view_key -> {cx, cy, scale}: zoom and pan across reruns
const POINT_R = 3; // point radius, CSS px
const HIT_R = 8; // a pointer within this many CSS px of a point is over it
const MAX_PAYLOADS = 8;

// -- payloads ---------------------------------------------------------------------------------

const TYPED = { float32: Float32Array, uint8: Uint8Array, int32: Int32Array };

export function unpack(bytes) {
  // The format of inpage.pack: "VLM1", uint32 header length, JSON header, aligned arrays.
  const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const own = u8.slice(); // a fresh buffer at offset 0, so typed views are aligned
  const dv = new DataView(own.buffer);
  if (String.fromCharCode(own[0], own[1], own[2], own[3]) !== "VLM1") throw new Error("not a latent map payload");
  const n = dv.getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(own.subarray(8, 8 + n)));
  const start = 8 + n;
  const arrays = {};
  for (const [name, s] of Object.entries(header.arrays)) {
    const T = TYPED[s.dtype];
    const count = s.shape.reduce((a, b) => a * b, 1);
    arrays[name] = new T(own.buffer, start + s.offset, count);
    arrays[name].shape = s.shape;
  }
  return { id: header.id, meta: header.meta, arrays };
}

function keepPayload(p) {
  // Keep p by its id; beyond MAX_PAYLOADS forget the oldest that no live map names (a payload
  // in use is never dropped: Streamlit does not send an unchanged one again).
  if (payloads.has(p.id)) return false;
  payloads.set(p.id, p);
  const inUse = new Set();
  for (const m of maps) if (m.view) { inUse.add(m.view.samples); inUse.add(m.view.points); }
  for (const id of [...payloads.keys()]) {
    if (payloads.size <= MAX_PAYLOADS) break;
    if (!inUse.has(id) && id !== p.id) payloads.delete(id);
  }
  return true;
}

// -- the decoder, in the page -------------------------------------------------------------

export function decodeMLP(samples, z) {
  // E[x|z] for one code z (d,): the affine layers w_k (out, in), b_k with ReLU between them,
  // then the likelihood's mean (identity, sigmoid, or the continuous Bernoulli's mean).
  const { meta, arrays } = samples;
  let h = Float64Array.from(z);
  for (let k = 0; k < meta.decoder.layers; k++) {
    const w = arrays[`w${k}`], b = arrays[`b${k}`];
    const [nOut, nIn] = w.shape;
    const out = new Float64Array(nOut);
    for (let o = 0; o < nOut; o++) {
      let s = b[o];
      const row = o * nIn;
      for (let i = 0; i < nIn; i++) s += w[row + i] * h[i];
      out[o] = k < meta.decoder.layers - 1 && s < 0 ? 0 : s;
    }
    h = out;
  }
  if (meta.output === "sigmoid") for (let i = 0; i < h.length; i++) h[i] = 1 / (1 + Math.exp(-h[i]));
  else if (meta.output === "cb_mean") {
    const small = meta.decoder.cb_taylor_below;
    for (let i = 0; i < h.length; i++) {
      const e = h[i];
      h[i] = Math.abs(e) < small ? 0.5 + e / 12 - e ** 3 / 720 + e ** 5 / 30240 : 1 / (-Math.expm1(-e)) - 1 / e;
    }
  }
  return h;
}

function planeCode(samples, u, v) {
  // The code z = mean + u axes[0] + v axes[1] of a point (u, v) of the map.
  const mean = samples.arrays.plane_mean, axes = samples.arrays.plane_axes;
  const d = mean.length, z = new Float64Array(d);
  for (let j = 0; j < d; j++) z[j] = mean[j] + u * axes[j] + v * axes[d + j];
  return z;
}

// -- drawing images ---------------------------------------------------------------------

function drawTile(canvas, tiles, k, shape) {
  // Tile k of an (n, H, W, C) uint8 atlas into a canvas of H x W pixels.
  const [, h, w, c] = tiles.shape;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const base = k * h * w * c;
  for (let p = 0; p < h * w; p++) {
    const q = base + p * c;
    img.data[4 * p] = tiles[q];
    img.data[4 * p + 1] = tiles[q + (c >= 3 ? 1 : 0)];
    img.data[4 * p + 2] = tiles[q + (c >= 3 ? 2 : 0)];
    img.data[4 * p + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function drawValues(canvas, values, shape) {
  // A decoded mean (D,) in (C, H, W) order, values in [0, 1] shown as pixels.
  const [c, h, w] = shape;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const px = v => Math.round(255 * Math.min(1, Math.max(0, v)));
  for (let p = 0; p < h * w; p++) {
    img.data[4 * p] = px(values[p]);
    img.data[4 * p + 1] = px(values[(c >= 3 ? 1 : 0) * h * w + p]);
    img.data[4 * p + 2] = px(values[(c >= 3 ? 2 : 0) * h * w + p]);
    img.data[4 * p + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function drawBars(canvas, series, meta, colors) {
  // A bar strip: one group of bars per value, one bar per series (input, reconstruction), on
  // meta.bar_range, or on each feature's own range (meta.bar_ranges) where their units differ.
  const W = 168, H = 64;
  if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, W, H);
  const n = series[0].length;
  const bw = W / n / series.length;
  for (let i = 0; i < n; i++) {
    const [lo, hi] = (meta.bar_ranges && meta.bar_ranges[i]) || meta.bar_range;
    const y = v => H - 2 - ((v - lo) / (hi - lo)) * (H - 4);
    const y0 = y(Math.min(Math.max(0, lo), hi));
    series.forEach((s, j) => {
      ctx.fillStyle = colors[j];
      const top = y(s[i]);
      ctx.fillRect((i * series.length + j) * bw, Math.min(top, y0), Math.max(1, bw - 1), Math.abs(y0 - top) || 1);
    });
  }
}

function barsTitle(meta, series, names) {
  // A bar strip's tooltip: one line per bar, the feature's name and each series' value.
  const features = meta.feature_names || [];
  const n = series[0].length;
  const lines = [`bars, left to right: ${names.join(", ")} per feature` +
    (meta.bar_ranges ? ", each feature on its own scale (its range over the test set)" : "")];
  for (let j = 0; j < n; j++) {
    lines.push(`${features[j] || `x${j + 1}`}: ` + series.map((s, k) => `${names[k]} = ${s[j].toFixed(3)}`).join(", "));
  }
  return lines.join("\n");
}

function barsNames(meta) {
  // The bars' features in a line short enough for the hover: "alcohol, malic_acid, ash, ... (13 features)".
  const f = meta.feature_names || [];
  if (!f.length) return "";
  const names = f.length <= 4 ? `features: ${f.join(", ")}` : `features: ${f.slice(0, 3).join(", ")}, ..., ${f[f.length - 1]} (${f.length})`;
  return meta.bar_ranges ? `${names}; each on its own scale` : names;
}

function el(tag, attrs = {}, parent = null) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  if (parent) parent.appendChild(e);
  return e;
}

function p95(xs) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(0.95 * s.length) - 1)];
}

// -- the map ---------------------------------------------------------------------------------

class LatentMap {
  constructor(parent) {
    this.parent = parent;
    this.view = null; // the JSON the server sent
    this.cam = null; // {cx, cy, scale}: world point at the canvas centre, CSS px per unit
    this.hover = -1; // the point under the pointer (its place in the points payload), or -1
    this.cursor = null; // {x, y} CSS px in the canvas, where the pointer (or the keyboard cursor) is
    this.clicks = 0;
    this.epochFrame = -1; // the snapshot drawn (-1: the checkpoint's own codes)
    // ms from a pointer event's timeStamp to the image drawn (and of that, the handler's own work)
    this.timings = { thumbnail: [], decoded: [], thumbnail_work: [], decoded_work: [], click: [] };
    this.build();
    maps.add(this);
  }

  build() {
    const root = el("div", { class: "vlm-root" }, this.parent.querySelector(".vlm-mount") || this.parent);
    this.root = root;
    this.legend = el("div", { class: "vlm-legend" }, root);
    const stage = el("div", { class: "vlm-stage" }, root);
    this.stage = stage;
    this.canvas = el("canvas", {
      class: "vlm-canvas", tabindex: "0", role: "application", "aria-label": "latent map",
      "aria-roledescription": "scatter plot of the test set's codes",
      "aria-describedby": "vlm-help",
    }, stage);
    this.overlay = el("canvas", { class: "vlm-overlay", "aria-hidden": "true" }, stage);
    this.axisX = el("div", { class: "vlm-axis vlm-axis-x" }, stage);
    this.axisY = el("div", { class: "vlm-axis vlm-axis-y" }, stage);
    this.tip = el("div", { class: "vlm-tip", hidden: "" }, stage);
    this.hoverBox = el("div", { class: "vlm-tip-sample" }, this.tip);
    const f1 = el("figure", {}, this.hoverBox);
    this.thumb = el("canvas", { class: "vlm-thumb", role: "img", "aria-label": "hovered sample" }, f1);
    this.thumbCaption = el("figcaption", {}, f1);
    this.barsCaption = el("figcaption", { class: "vlm-bars-names", hidden: "" }, f1); // non-image data: the bars' features
    this.hoverLabel = el("figcaption", { class: "vlm-hover-label", hidden: "" }, f1); // what colours the point
    const f2 = el("figure", {}, this.hoverBox);
    this.thumbRecon = el("canvas", { class: "vlm-thumb", role: "img", "aria-label": "hovered reconstruction" }, f2);
    el("figcaption", { text: "f(mu(x))" }, f2);
    this.decodedBox = el("figure", { class: "vlm-tip-decoded" }, this.tip);
    this.decoded = el("canvas", { class: "vlm-thumb", role: "img", "aria-label": "decoded at cursor" }, this.decodedBox);
    this.decodedCaption = el("figcaption", {}, this.decodedBox);
    this.player = el("div", { class: "vlm-player", hidden: "" }, root);
    this.playButton = el("button", { type: "button", class: "vlm-play", "aria-label": "play epochs", text: "▶" }, this.player);
    this.epochSlider = el("input", { type: "range", class: "vlm-epoch", "aria-label": "epoch", min: "0", max: "0", step: "1", value: "0" }, this.player);
    this.epochLabel = el("span", { class: "vlm-epoch-label", "aria-live": "polite" }, this.player);
    this.help = el("p", {
      class: "vlm-help", id: "vlm-help",
      text: "Scroll to zoom, drag to pan, hover a point to see its input and reconstruction, click to select it. "
        + "Keys: arrows move the cursor, + and - zoom, 0 fits the view, Enter selects the point under the cursor.",
    }, root);
    this.status = el("div", { class: "vlm-status", "aria-live": "polite" }, root);
    this.listen();
    this.resizer = new ResizeObserver(entries => {
      for (const e of entries) {
        if (e.target === this.tip) this.tipSize = { w: e.target.offsetWidth, h: e.target.offsetHeight };
        else this.resize();
      }
    });
    this.resizer.observe(stage);
    this.resizer.observe(this.tip);
    this.canvas.latentMap = this; // for the tests and the bench (page.evaluate)
  }

  // -- data -------------------------------------------------------------------------------
  update(view, setStateValue) {
    this.setStateValue = setStateValue;
    const before = this.view;
    this.view = view;
    if (this.clickStarted != null && view.selected === this.pendingSelect) {
      this.timings.click.push(performance.now() - this.clickStarted); // click -> the server's answer
      this.clickStarted = null;
    }
    if (before && before.selected !== view.selected) this.pendingSelect = null;
    this.resolve();
  }

  resolve() {
    // Draw once both payloads the view names have arrived.
    const v = this.view;
    if (!v) return;
    const held = (id, p) => (p && p.id === id ? p : null); // what this map drew from already
    const samples = payloads.get(v.samples) || held(v.samples, this.samples);
    const points = payloads.get(v.points) || held(v.points, this.points);
    if (!samples || !points) { this.status.textContent = "Loading the map..."; return; }
    const changed = samples !== this.samples || points !== this.points;
    this.samples = samples; this.points = points;
    if (changed) this.prepare();
    if (!this.cam || this.camKey !== v.view_key) {
      this.camKey = v.view_key;
      this.cam = savedViews.get(v.view_key) || this.loadSavedView(v.view_key) || this.fit();
    } else if (changed && v.live && !savedViews.has(v.view_key)) {
      this.cam = this.fit(); // a live map follows the codes as they spread, until zoomed or panned
    }
    this.axisX.textContent = v.axes[0];
    this.axisY.textContent = v.axes[1];
    this.drawLegend();
    this.setupPlayer();
    this.draw();
    this.status.textContent = "";
  }

  prepare() {
    // Group the points by colour (one fill per group) and map test index -> thumbnail slot.
    const { rgb, index } = this.points.arrays;
    const groups = new Map();
    for (let k = 0; k < index.length; k++) {
      const key = `rgb(${rgb[3 * k]},${rgb[3 * k + 1]},${rgb[3 * k + 2]})`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(k);
    }
    this.groups = groups;
    const slot = new Map();
    const ai = this.samples.arrays.atlas_index;
    for (let k = 0; k < ai.length; k++) slot.set(ai[k], k);
    this.slot = slot;
    this.manifoldImage = null;
    const m = this.samples.arrays.manifold;
    if (m) {
      const c = document.createElement("canvas");
      const [h, w] = m.shape, ch = m.shape.length > 2 ? m.shape[2] : 1;
      c.width = w; c.height = h;
      const ctx = c.getContext("2d"), img = ctx.createImageData(w, h);
      for (let p = 0; p < h * w; p++) {
        for (let j = 0; j < 3; j++) img.data[4 * p + j] = m[p * ch + (ch >= 3 ? j : 0)];
        img.data[4 * p + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
      this.manifoldImage = c;
    }
  }

  xy() {
    // The positions drawn: a snapshot's during the epoch player, else the checkpoint's.
    const snaps = this.points.arrays.snapshots;
    if (snaps && this.epochFrame >= 0) {
      const [, n] = snaps.shape;
      return { data: snaps.subarray(this.epochFrame * n * 2, (this.epochFrame + 1) * n * 2), n };
    }
    return { data: this.points.arrays.xy, n: this.points.arrays.index.length };
  }

  // -- the camera -------------------------------------------------------------------------
  size() {
    // the stage's size, read once per resize (a read on every mouse move would force a layout)
    if (!this.stageSize) this.stageSize = { w: this.stage.clientWidth || 600, h: this.stage.clientHeight || 480 };
    return this.stageSize;
  }

  fit() {
    const { data, n } = { data: this.points.arrays.xy, n: this.points.arrays.index.length };
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let k = 0; k < n; k++) {
      const x = data[2 * k], y = data[2 * k + 1];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    if (!isFinite(x0)) { x0 = -1; x1 = 1; y0 = -1; y1 = 1; }
    const { w, h } = this.size();
    const scale = 0.9 * Math.min(w / Math.max(x1 - x0, 1e-6), h / Math.max(y1 - y0, 1e-6));
    return { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, scale };
  }

  toScreen(x, y) {
    const { w, h } = this.size();
    return [(x - this.cam.cx) * this.cam.scale + w / 2, h / 2 - (y - this.cam.cy) * this.cam.scale];
  }

  toWorld(sx, sy) {
    const { w, h } = this.size();
    return [(sx - w / 2) / this.cam.scale + this.cam.cx, this.cam.cy - (sy - h / 2) / this.cam.scale];
  }

  saveView() {
    savedViews.set(this.camKey, { ...this.cam });
    try { sessionStorage.setItem(`vlm:${this.camKey}`, JSON.stringify(this.cam)); } catch (e) { /* private mode */ }
  }

  loadSavedView(key) {
    try {
      const v = JSON.parse(sessionStorage.getItem(`vlm:${key}`) || "null");
      return v && isFinite(v.cx) && isFinite(v.cy) && v.scale > 0 ? v : null;
    } catch (e) { return null; }
  }

  zoomAt(sx, sy, factor) {
    const [wx, wy] = this.toWorld(sx, sy);
    this.cam.scale *= factor;
    const [nx, ny] = this.toWorld(sx, sy);
    this.cam.cx += wx - nx; this.cam.cy += wy - ny;
    this.saveView(); this.draw();
  }

  // -- drawing ------------------------------------------------------------------------------
  resize() {
    this.stageSize = null;
    const { w, h } = this.size();
    const dpr = window.devicePixelRatio || 1;
    for (const c of [this.canvas, this.overlay]) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    }
    this.draw();
  }

  draw() {
    if (!this.samples || !this.points || !this.cam) return;
    const ctx = this.canvas.getContext("2d"), dpr = window.devicePixelRatio || 1;
    const { w, h } = this.size();
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const v = this.view;
    if (v.manifold && this.manifoldImage) {
      const s = this.samples.meta.manifold_half;
      const [ax, ay] = this.toScreen(-s, s), [bx, by] = this.toScreen(s, -s);
      ctx.globalAlpha = 0.85; ctx.imageSmoothingEnabled = false;
      ctx.drawImage(this.manifoldImage, ax, ay, bx - ax, by - ay);
      ctx.globalAlpha = 1;
    }
    this.drawAxes(ctx, w, h);
    if (v.contours) this.drawContours(ctx);
    const { data, n } = this.xy();
    const tau = 2 * Math.PI;
    ctx.globalAlpha = 0.85;
    for (const [color, ks] of this.groups) {
      ctx.fillStyle = color;
      ctx.beginPath();
      for (const k of ks) {
        if (k >= n) continue;
        const [sx, sy] = this.toScreen(data[2 * k], data[2 * k + 1]);
        if (!(sx >= -5 && sy >= -5 && sx <= w + 5 && sy <= h + 5)) continue; // off the canvas, or NaN (not in a snapshot)
        ctx.moveTo(sx + POINT_R, sy); ctx.arc(sx, sy, POINT_R, 0, tau);
      }
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    this.buildHitGrid(data, n, w, h);
    this.drawOverlay();
  }

  drawAxes(ctx, w, h) {
    const [ox, oy] = this.toScreen(0, 0);
    ctx.strokeStyle = "rgba(128,128,128,0.5)"; ctx.lineWidth = 1;
    ctx.beginPath();
    if (oy >= 0 && oy <= h) { ctx.moveTo(0, oy); ctx.lineTo(w, oy); }
    if (ox >= 0 && ox <= w) { ctx.moveTo(ox, 0); ctx.lineTo(ox, h); }
    ctx.stroke();
  }

  drawContours(ctx) {
    // log N(z; 0, I) for d = 2 is -r^2/2 - log(2 pi): circles about the origin, labelled in nats.
    ctx.strokeStyle = "rgba(120, 60, 160, 0.8)"; ctx.fillStyle = "rgba(120, 60, 160, 1)";
    ctx.font = "10px sans-serif"; ctx.lineWidth = 1;
    const [ox, oy] = this.toScreen(0, 0);
    for (const r of [0.5, 1, 1.5, 2, 2.5, 3]) {
      ctx.beginPath(); ctx.arc(ox, oy, r * this.cam.scale, 0, 2 * Math.PI); ctx.stroke();
      ctx.fillText((-r * r / 2 - Math.log(2 * Math.PI)).toFixed(1), ox + r * this.cam.scale * 0.71 + 2, oy - r * this.cam.scale * 0.71);
    }
  }

  buildHitGrid(data, n, w, h) {
    // Points bucketed by 16-px screen cells: the point under the pointer in a few lookups.
    const cell = 16, grid = new Map(), scr = new Float32Array(2 * n);
    for (let k = 0; k < n; k++) {
      const [sx, sy] = this.toScreen(data[2 * k], data[2 * k + 1]);
      scr[2 * k] = sx; scr[2 * k + 1] = sy;
      if (!(sx >= -HIT_R && sy >= -HIT_R && sx <= w + HIT_R && sy <= h + HIT_R)) continue;
      const key = Math.floor(sx / cell) * 65536 + Math.floor(sy / cell);
      let b = grid.get(key);
      if (!b) grid.set(key, (b = []));
      b.push(k);
    }
    this.hitGrid = { cell, grid, scr };
  }

  pointAt(sx, sy) {
    const { cell, grid, scr } = this.hitGrid || {};
    if (!grid) return -1;
    let best = -1, bestD = HIT_R * HIT_R;
    const cx = Math.floor(sx / cell), cy = Math.floor(sy / cell);
    for (let i = cx - 1; i <= cx + 1; i++) for (let j = cy - 1; j <= cy + 1; j++) {
      for (const k of grid.get(i * 65536 + j) || []) {
        const dx = scr[2 * k] - sx, dy = scr[2 * k + 1] - sy, dd = dx * dx + dy * dy;
        if (dd <= bestD) { bestD = dd; best = k; }
      }
    }
    return best;
  }

  placeOf(testIndex) {
    // The place k in the points payload of a test index, or -1.
    const idx = this.points.arrays.index;
    let lo = 0, hi = idx.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (idx[mid] === testIndex) return mid;
      if (idx[mid] < testIndex) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
  }

  drawOverlay() {
    // The selection ring, the hovered point's ring and the keyboard cursor, over the points.
    const ctx = this.overlay.getContext("2d"), dpr = window.devicePixelRatio || 1;
    const { w, h } = this.size();
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const scr = this.hitGrid && this.hitGrid.scr;
    if (!scr) return;
    const sel = this.placeOf(this.pendingSelect ?? this.view.selected);
    const ring = (k, r, color, width) => {
      if (k < 0 || 2 * k + 1 >= scr.length) return;
      ctx.strokeStyle = color; ctx.lineWidth = width;
      ctx.beginPath(); ctx.arc(scr[2 * k], scr[2 * k + 1], r, 0, 2 * Math.PI); ctx.stroke();
    };
    ring(sel, 8, "#000", 3); ring(sel, 8, "#fff", 1);
    ring(this.hover, 6, "#e02020", 2);
    if (this.keyboardCursor && this.cursor) {
      const { x, y } = this.cursor;
      ctx.strokeStyle = "#e02020"; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(x - 10, y); ctx.lineTo(x + 10, y); ctx.moveTo(x, y - 10); ctx.lineTo(x, y + 10); ctx.stroke();
    }
  }

  drawLegend() {
    const lg = this.points.meta.legend;
    const key = JSON.stringify(lg);
    if (this.legendKey === key) return;
    this.legendKey = key;
    this.legend.textContent = "";
    if (lg.kind === "categories") {
      el("span", { class: "vlm-legend-title", text: `${lg.name}:` }, this.legend); // what colours the points
      for (const item of lg.items) {
        const s = el("span", { class: "vlm-legend-item" }, this.legend);
        el("span", { class: "vlm-swatch", style: `background:${item.color}` }, s);
        el("span", { text: item.label }, s);
      }
    } else if (lg.kind === "scale") {
      el("span", { text: `${lg.name}: ${lg.min.toFixed(2)}` }, this.legend);
      el("span", { class: "vlm-bar", style: `background:linear-gradient(to right, ${lg.stops.join(",")})`, role: "img", "aria-label": `colour scale of ${lg.name}` }, this.legend);
      el("span", { text: lg.max.toFixed(2) }, this.legend);
    }
  }

  // -- hover and decode at the cursor --------------------------------------------------------
  moved(sx, sy, t0) {
    // The pointer (or keyboard cursor) is at (sx, sy): show the point under it and f(z) there.
    const tStart = performance.now(); // the handler itself starts (t0: the event was made)
    this.cursor = { x: sx, y: sy };
    const k = this.pointAt(sx, sy);
    this.hover = k;
    this.showHovered(k);
    const tThumb = performance.now();
    const decoded = this.showDecoded(sx, sy);
    const tDecoded = performance.now();
    this.placeTip(sx, sy);
    this.drawOverlay();
    if (k >= 0) { this.timings.thumbnail.push(tThumb - t0); this.timings.thumbnail_work.push(tThumb - tStart); }
    if (decoded) { this.timings.decoded.push(tDecoded - t0); this.timings.decoded_work.push(tDecoded - tThumb); }
    for (const xs of Object.values(this.timings)) if (xs.length > 5000) xs.splice(0, 1000);
  }

  showHovered(k) {
    this.hoverBox.hidden = k < 0;
    if (k < 0 || (k === this.shownHover && this.shownPoints === this.points)) return; // drawn already
    this.shownHover = k; this.shownPoints = this.points;
    const i = this.points.arrays.index[k];
    const slot = this.slot.get(i);
    const { meta, arrays } = this.samples;
    const what = this.pointLabel(k);
    this.hoverLabel.textContent = what;
    this.hoverLabel.hidden = !what;
    if (slot === undefined) {
      this.thumbCaption.textContent = `sample ${i} (no thumbnail: ${meta.thumbnails})`;
      return;
    }
    if (meta.is_image) {
      drawTile(this.thumb, arrays.atlas_x, slot);
      if (arrays.atlas_recon) drawTile(this.thumbRecon, arrays.atlas_recon, slot);
      this.thumbRecon.parentElement.hidden = !arrays.atlas_recon;
    } else {
      const b = meta.bars, series = [arrays.bars_x.subarray(slot * b, (slot + 1) * b)];
      if (arrays.bars_recon) series.push(arrays.bars_recon.subarray(slot * b, (slot + 1) * b));
      drawBars(this.thumb, series, meta, ["#636EFA", "#EF553B"]);
      this.thumbRecon.parentElement.hidden = true;
      this.thumb.title = barsTitle(meta, series, ["x", "f(mu(x))"]);
      this.barsCaption.textContent = barsNames(meta);
    }
    this.barsCaption.hidden = meta.is_image;
    this.thumb.dataset.sample = String(i);
    this.thumbCaption.textContent = meta.is_image || !arrays.bars_recon ? `sample ${i}` : `sample ${i}: x (blue), f(mu(x)) (red)`;
    this.thumb.setAttribute("aria-description", `input of test sample ${i}${what ? `, ${what}` : ""}`);
  }

  pointLabel(k) {
    // What colours point k, for the hover: "target: class_1", "digit 3", "ELBO = -12.30", or "".
    const lg = this.points.meta.legend, a = this.points.arrays;
    if (lg.kind === "categories" && a.category) return lg.items[a.category[k]].hover;
    if (lg.kind === "scale" && a.value) return `${lg.name} = ${a.value[k].toFixed(2)}`;
    return "";
  }

  decodeAt(u, v) {
    // f(z) at the map point (u, v): {kind: "values", values} or {kind: "tile", k} (conv grid).
    const s = this.samples, dec = s.meta.decoder;
    if (!dec) return null;
    if (dec.kind === "mlp") return { kind: "values", values: decodeMLP(s, planeCode(s, u, v)) };
    const n = dec.n;
    const c = Math.round(((u - dec.lo[0]) / (dec.hi[0] - dec.lo[0])) * (n - 1));
    const r = Math.round(((v - dec.lo[1]) / (dec.hi[1] - dec.lo[1])) * (n - 1));
    return { kind: "tile", k: Math.min(n - 1, Math.max(0, r)) * n + Math.min(n - 1, Math.max(0, c)) };
  }

  showDecoded(sx, sy) {
    const on = this.view.decode && this.epochFrame < 0;
    this.decodedBox.hidden = !on;
    if (!on) return false;
    const [u, v] = this.toWorld(sx, sy);
    const out = this.decodeAt(u, v);
    if (!out) { this.decodedBox.hidden = true; return false; }
    const meta = this.samples.meta;
    if (out.kind === "tile") drawTile(this.decoded, this.samples.arrays.conv_grid, out.k);
    else if (meta.is_image) drawValues(this.decoded, out.values, meta.shape);
    else {
      const b = Math.min(out.values.length, meta.bars || 64);
      drawBars(this.decoded, [out.values.subarray(0, b)], meta, ["#00CC96"]);
      this.decoded.title = barsTitle(meta, [out.values.subarray(0, b)], ["f(z)"]);
    }
    const where = meta.latent_dim <= 2 ? `z = (${u.toFixed(2)}, ${v.toFixed(2)})` : `PC (${u.toFixed(2)}, ${v.toFixed(2)})`;
    this.decodedCaption.textContent = `f(z) at ${where}`;
    this.decoded.setAttribute("aria-description", `decoder mean at ${where}`);
    return true;
  }

  placeTip(sx, sy) {
    this.tip.hidden = this.hoverBox.hidden && this.decodedBox.hidden;
    if (this.tip.hidden) return;
    const { w, h } = this.size();
    // the tip's size as last laid out (a ResizeObserver keeps it): reading offsetWidth here
    // would make the browser lay out the whole page on every mouse move
    const tw = this.tipSize ? this.tipSize.w : 280, th = this.tipSize ? this.tipSize.h : 120;
    const x = sx + 16 + tw > w ? sx - 16 - tw : sx + 16;
    const y = Math.min(Math.max(0, sy - th / 2), Math.max(0, h - th));
    this.tip.style.transform = `translate(${Math.round(x)}px, ${Math.round(y)}px)`;
  }

  left() {
    this.hover = -1; this.cursor = null; this.tip.hidden = true; this.drawOverlay();
  }

  // -- selecting ----------------------------------------------------------------------------
  select(k) {
    if (k < 0 || !this.setStateValue) return;
    const i = this.points.arrays.index[k];
    this.pendingSelect = i; // drawn at once; the server's answer confirms it
    this.clickStarted = performance.now();
    this.drawOverlay();
    this.clicks += 1;
    this.status.textContent = `Selected test sample ${i}.`;
    this.setStateValue("selected", { index: i, click: this.clicks });
  }

  // -- the epoch player (snapshots of the codes during training) --------------------------------
  setupPlayer() {
    const snaps = this.points.arrays.snapshots;
    const epochs = this.points.meta.snapshot_epochs || [];
    this.player.hidden = !snaps;
    if (!snaps) { this.epochFrame = -1; this.stop(); return; }
    const max = epochs.length; // slider value epochs.length: the checkpoint itself
    if (String(this.epochSlider.max) !== String(max)) {
      this.epochSlider.max = String(max);
      if (!this.timer) { this.epochSlider.value = String(max); this.epochFrame = -1; }
    }
    this.showEpochLabel();
  }

  showEpochLabel() {
    const epochs = this.points.meta.snapshot_epochs || [];
    const v = Number(this.epochSlider.value);
    this.epochLabel.textContent = v >= epochs.length
      ? `epoch ${this.points.meta.checkpoint_epoch ?? epochs[epochs.length - 1]} (${this.view.live ? "newest snapshot, training" : "this checkpoint"})`
      : `epoch ${epochs[v]} (first ${this.points.arrays.snapshots.shape[1]} test samples)`;
    this.epochSlider.setAttribute("aria-valuetext", this.epochLabel.textContent);
  }

  setEpoch(v) {
    const epochs = this.points.meta.snapshot_epochs || [];
    this.epochSlider.value = String(v);
    this.epochFrame = v >= epochs.length ? -1 : v;
    this.showEpochLabel();
    this.draw();
  }

  play() {
    if (this.timer) { this.stop(); return; }
    const epochs = this.points.meta.snapshot_epochs || [];
    if (Number(this.epochSlider.value) >= epochs.length) this.setEpoch(0);
    this.playButton.textContent = "⏸"; this.playButton.setAttribute("aria-label", "pause epochs");
    this.timer = setInterval(() => {
      const v = Number(this.epochSlider.value) + 1;
      this.setEpoch(v);
      if (v >= epochs.length) this.stop();
    }, 250);
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.playButton.textContent = "▶"; this.playButton.setAttribute("aria-label", "play epochs");
  }

  // -- events -------------------------------------------------------------------------------
  listen() {
    const c = this.canvas;
    const local = e => { const b = c.getBoundingClientRect(); return [e.clientX - b.left, e.clientY - b.top]; };
    let drag = null;
    this.on(c, "pointerdown", e => {
      if (e.button !== 0) return;
      const [x, y] = local(e);
      drag = { x, y, cx: this.cam && this.cam.cx, cy: this.cam && this.cam.cy, moved: false };
      c.setPointerCapture(e.pointerId);
    });
    this.on(c, "pointermove", e => {
      if (!this.cam) return;
      const [x, y] = local(e);
      this.keyboardCursor = false;
      if (drag) {
        if (Math.hypot(x - drag.x, y - drag.y) > 3) drag.moved = true;
        if (drag.moved) {
          this.cam.cx = drag.cx - (x - drag.x) / this.cam.scale;
          this.cam.cy = drag.cy + (y - drag.y) / this.cam.scale;
          this.draw();
        }
      }
      this.moved(x, y, e.timeStamp || performance.now());
    });
    this.on(c, "pointerup", e => {
      if (!drag) return;
      const [x, y] = local(e);
      if (drag.moved) this.saveView();
      else this.select(this.pointAt(x, y));
      drag = null;
    });
    this.on(c, "pointerleave", () => { if (!drag) this.left(); });
    this.on(c, "wheel", e => {
      if (!this.cam) return;
      e.preventDefault();
      const [x, y] = local(e);
      this.zoomAt(x, y, Math.exp(-e.deltaY * 0.0015));
      this.moved(x, y, performance.now());
    }, { passive: false });
    this.on(c, "keydown", e => this.key(e));
    this.on(c, "blur", () => { if (this.keyboardCursor) { this.keyboardCursor = false; this.left(); } });
    this.on(this.playButton, "click", () => this.play());
    this.on(this.epochSlider, "input", () => { this.stop(); this.setEpoch(Number(this.epochSlider.value)); });
  }

  key(e) {
    if (!this.cam) return;
    const { w, h } = this.size();
    const step = e.shiftKey ? 48 : 12;
    const cur = this.keyboardCursor && this.cursor ? this.cursor : { x: w / 2, y: h / 2 };
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (moves[e.key]) {
      const [dx, dy] = moves[e.key];
      this.keyboardCursor = true;
      this.moved(Math.min(w, Math.max(0, cur.x + dx)), Math.min(h, Math.max(0, cur.y + dy)), performance.now());
    } else if (e.key === "+" || e.key === "=") this.zoomAt(cur.x, cur.y, 1.25);
    else if (e.key === "-" || e.key === "_") this.zoomAt(cur.x, cur.y, 0.8);
    else if (e.key === "0") { this.cam = this.fit(); this.saveView(); this.draw(); }
    else if (e.key === "Enter" || e.key === " ") this.select(this.pointAt(cur.x, cur.y));
    else if (e.key === "Escape") this.left();
    else return;
    e.preventDefault();
  }

  on(target, type, fn, opts) {
    target.addEventListener(type, fn, opts);
    (this.listeners || (this.listeners = [])).push([target, type, fn, opts]);
  }

  // -- for the tests and the bench ---------------------------------------------------------------
  screenPoints() {
    // Test index -> [clientX, clientY] of every drawn point inside the canvas.
    const b = this.canvas.getBoundingClientRect(), { w, h } = this.size(), out = {};
    const { scr } = this.hitGrid || {};
    if (!scr) return out;
    const idx = this.points.arrays.index;
    for (let k = 0; k < scr.length / 2; k++) {
      const x = scr[2 * k], y = scr[2 * k + 1];
      if (x >= 0 && y >= 0 && x <= w && y <= h) out[idx[k]] = [b.left + x, b.top + y];
    }
    return out;
  }

  decode(z) { return Array.from(decodeMLP(this.samples, z)); }

  stats() {
    const out = {};
    for (const [k, xs] of Object.entries(this.timings)) out[k] = { n: xs.length, p95_ms: p95(xs) };
    return out;
  }

  destroy() {
    this.stop();
    this.resizer.disconnect();
    for (const [t, type, fn, opts] of this.listeners || []) t.removeEventListener(type, fn, opts);
    maps.delete(this);
    this.root.remove();
  }
}

// -- the entry point Streamlit calls ------------------------------------------------------------

const instances = new WeakMap(); // parentElement -> LatentMap

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  if (data instanceof Uint8Array || data instanceof ArrayBuffer) {
    // A payload: keep it, tell the maps, take no room in the page.
    const box = parentElement.closest ? parentElement.closest('[data-testid="stElementContainer"]') : null;
    if (box) box.style.display = "none";
    const p = unpack(data);
    if (keepPayload(p)) for (const m of maps) m.resolve();
    return undefined;
  }
  if (!data || typeof data !== "object") return undefined;
  let map = instances.get(parentElement);
  if (!map) {
    map = new LatentMap(parentElement);
    instances.set(parentElement, map);
  }
  map.update(data, setStateValue);
  return () => { map.destroy(); instances.delete(parentElement); };
}
