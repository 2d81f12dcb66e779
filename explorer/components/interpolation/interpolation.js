// The Interpolate page's component: a t slider, the decoded image f(z(t)) and a small latent
// map with the path from A to B and the current z(t) on it, all drawn in the page.
//
// The server sends, once per path, every decoded step of it (explorer/services/path_payload.py
// describes the bytes). Dragging t then draws frame k = round(t (T - 1)) on every `input`
// event and sends nothing. The server hears of t once per move, on `change`: the release of
// a drag, or each key press (a key press on a range input is a whole move: the browser fires
// `input` then `change` for it), through setStateValue("t", ...); the page then updates its
// URL, numbers and profile chart. A click on the map near a code sends that test sample's
// index as the trigger "picked" (the page makes it endpoint A or B).

const KEPT = new WeakMap(); // parentElement -> this mount's state, across calls with new data

export default function (component) {
  const { data, parentElement, setStateValue, setTriggerValue } = component;
  const root = parentElement.querySelector(".vae-interp");
  if (!root || !(data instanceof Uint8Array) || data.length < 4) return undefined;
  let kept = KEPT.get(parentElement);
  if (!kept || kept.root !== root) {
    kept = mount(parentElement, root, setStateValue, setTriggerValue);
    KEPT.set(parentElement, kept);
  }
  kept.send = { setStateValue, setTriggerValue };
  const header = readHeader(data);
  if (kept.path && kept.path.header.id === header.id) return kept.cleanup; // the same path, sent again by a rerun: keep t
  kept.path = unpack(data, header);
  kept.frames = [];
  kept.slider.value = String(header.t0);
  layout(kept);
  draw(kept);
  root.dataset.pathId = header.id;
  root.dataset.messageBytes = String(data.length);
  return kept.cleanup;
}

// -- reading the bytes ------------------------------------------------------------------------

function readHeader(bytes) {
  const n = new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
  return JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + n)));
}

function unpack(bytes, header) {
  const buffer = bytes.slice().buffer; // a copy at offset 0: typed views need aligned offsets
  const base = 4 + new DataView(buffer).getUint32(0, true);
  const blobs = {};
  for (const [name, [offset, nbytes, dtype]] of Object.entries(header.blobs)) {
    const View = dtype === "float32" ? Float32Array : Uint8Array;
    blobs[name] = new View(buffer, base + offset, nbytes / View.BYTES_PER_ELEMENT);
  }
  return { header, blobs };
}

// -- the elements and their events ------------------------------------------------------------

function mount(parentElement, root, setStateValue, setTriggerValue) {
  const kept = {
    root,
    slider: root.querySelector(".vae-interp-t"),
    output: root.querySelector(".vae-interp-value"),
    image: root.querySelector(".vae-interp-image"),
    caption: root.querySelector(".vae-interp-caption"),
    map: root.querySelector(".vae-interp-mapcanvas"),
    mapCaption: root.querySelector(".vae-interp-mapcaption"),
    send: { setStateValue, setTriggerValue },
    path: null,
    frames: [], // ImageData per frame, made when first shown
    mapLayer: null, // the codes, the path and A, B drawn once; z(t) is drawn over a copy of it
    view: null, // latent -> canvas pixels
  };
  const onInput = () => draw(kept);
  const onChange = () => {
    draw(kept);
    kept.send.setStateValue("t", Math.round(Number(kept.slider.value) * 100) / 100);
  };
  const onClick = (event) => {
    const j = nearestPoint(kept, event.clientX, event.clientY, 10);
    if (j !== null) kept.send.setTriggerValue("picked", kept.path.header.map.index[j]);
  };
  kept.slider.addEventListener("input", onInput);
  kept.slider.addEventListener("change", onChange);
  kept.map.addEventListener("click", onClick);
  const resized = new ResizeObserver(() => {
    if (!kept.path) return;
    layout(kept);
    draw(kept);
  });
  resized.observe(kept.map);
  // Where each code is drawn, in the viewport's CSS pixels: test index -> [x, y] (for tests
  // and tools that click a given sample).
  kept.map.samplePositions = () => {
    const out = {};
    if (!kept.path || !kept.view) return out;
    const box = kept.map.getBoundingClientRect();
    const p = kept.path.blobs.points;
    kept.path.header.map.index.forEach((i, j) => {
      const [x, y] = kept.view(p[2 * j], p[2 * j + 1]);
      out[i] = [box.left + x, box.top + y];
    });
    return out;
  };
  kept.cleanup = () => {
    resized.disconnect();
    kept.slider.removeEventListener("input", onInput);
    kept.slider.removeEventListener("change", onChange);
    kept.map.removeEventListener("click", onClick);
    KEPT.delete(parentElement);
  };
  return kept;
}

function frameAt(kept) {
  const steps = kept.path.header.steps;
  const t = Number(kept.slider.value);
  return { t, k: Math.min(steps - 1, Math.max(0, Math.round(t * (steps - 1)))) };
}

function draw(kept) {
  const { t, k } = frameAt(kept);
  kept.output.textContent = t.toFixed(2);
  if (kept.path.header.kind === "image") drawImage(kept, k);
  else drawBars(kept, k);
  drawMap(kept, k);
  kept.image.dataset.frame = String(k);
  const at = kept.path.header.t[k].toFixed(2);
  kept.caption.textContent = kept.path.header.kind === "image"
    ? `f(z(t)) at t = ${at}`
    : `f(z(t)) at t = ${at}, one bar per coordinate (blue >= 0, red < 0)`;
}

// -- sizes ------------------------------------------------------------------------------------

function layout(kept) {
  const { header } = kept.path;
  const dpr = window.devicePixelRatio || 1;
  let cssW = 220;
  let cssH = 180;
  if (header.kind === "image") {
    const [h, w] = header.shape;
    cssW = Math.max(160, Math.min(220, 40 * w));
    cssH = Math.round((cssW * h) / w);
    kept.image.setAttribute("aria-label", "decoded image at t");
  } else {
    kept.image.setAttribute("aria-label", "decoded values at t");
  }
  kept.image.style.width = `${cssW}px`;
  kept.image.style.height = `${cssH}px`;
  kept.image.width = Math.round(cssW * dpr);
  kept.image.height = Math.round(cssH * dpr);

  const box = kept.map.getBoundingClientRect();
  const mapW = Math.max(1, box.width || 320);
  const mapH = Math.max(1, box.height || 260);
  kept.map.width = Math.round(mapW * dpr);
  kept.map.height = Math.round(mapH * dpr);
  kept.view = mapView(kept.path, mapW, mapH);
  kept.mapLayer = drawMapLayer(kept, mapW, mapH, dpr);
  const m = header.map;
  kept.mapCaption.textContent =
    `The test set's codes${m.color_name ? ` (coloured by ${m.color_name})` : ""}` +
    `${m.shown < m.total ? `, ${m.shown} of ${m.total} shown (a random subsample)` : ""}` +
    `, the ${header.method} path from A to B and z(t) (gold). Click a code to make it an endpoint.`;
}

// -- the decoded image, or the decoded values as bars -----------------------------------------

function drawImage(kept, k) {
  const [h, w, c] = kept.path.header.shape;
  if (!kept.frames[k]) {
    const src = kept.path.blobs.frames;
    const img = new ImageData(w, h);
    const start = k * h * w * c;
    for (let p = 0; p < h * w; p++) {
      const s = start + p * c;
      img.data[4 * p] = src[s];
      img.data[4 * p + 1] = c >= 3 ? src[s + 1] : src[s];
      img.data[4 * p + 2] = c >= 3 ? src[s + 2] : src[s];
      img.data[4 * p + 3] = 255;
    }
    kept.frames[k] = img;
  }
  if (!kept.small || kept.small.width !== w || kept.small.height !== h) {
    kept.small = new OffscreenCanvas(w, h);
  }
  kept.small.getContext("2d").putImageData(kept.frames[k], 0, 0);
  const ctx = kept.image.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(kept.small, 0, 0, kept.image.width, kept.image.height);
}

function drawBars(kept, k) {
  // The decoded values at step k as bars from a zero line on header.range, or, where the values'
  // units differ, each on its own range (header.ranges: the test set's and the path's) from its
  // baseline: 0 where the range holds it, else the range's end nearer 0 (as the map's strips).
  const values = kept.path.blobs.values;
  const d = kept.path.header.shape[0];
  const ranges = kept.path.header.ranges;
  const ctx = kept.image.getContext("2d");
  const W = kept.image.width;
  const H = kept.image.height;
  const ink = getComputedStyle(kept.root).color;
  ctx.clearRect(0, 0, W, H);
  const scale = (j) => {
    const [lo, hi] = (ranges && ranges[j]) || kept.path.header.range;
    return { y: (v) => H - 4 - ((v - lo) / (hi - lo || 1)) * (H - 8), base: Math.min(Math.max(0, lo), hi) };
  };
  const bars = Array.from({ length: d }, (_, j) => scale(j));
  const slot = W / d;
  for (let j = 0; j < d; j++) {
    const v = values[k * d + j], { y, base } = bars[j];
    ctx.fillStyle = v >= 0 ? "#1f77b4" : "#d62728";
    const top = Math.min(y(v), y(base));
    ctx.fillRect(j * slot + slot * 0.1, top, Math.max(1, slot * 0.8), Math.max(1, Math.abs(y(v) - y(base))));
  }
  // each bar named in the canvas's tooltip (and for a screen reader): "alcohol = 0.12", ...
  const names = kept.path.header.feature_names || [];
  const said = Array.from({ length: d }, (_, j) => `${names[j] || `x${j + 1}`} = ${values[k * d + j].toFixed(3)}`);
  kept.image.title = `decoded values at t, left to right${ranges ? ", each on its own scale" : ""}:\n${said.join("\n")}`;
  ctx.strokeStyle = ink;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let j = 0; j < d; j++) {  // the baseline, one piece per bar (one line at 0 on a shared scale)
    const { y, base } = bars[j];
    ctx.moveTo(j * slot, y(base));
    ctx.lineTo((j + 1) * slot, y(base));
  }
  ctx.stroke();
  // each bar's name and value beside its baseline (or its end, where the canvas has no room):
  // "name = v" where every label fits its bar's slot, else the values alone, else none (the
  // tooltip names them all)
  const dpr = window.devicePixelRatio || 1;
  ctx.font = `${11 * dpr}px sans-serif`;
  const fit = (texts) => texts.every((t) => ctx.measureText(t).width <= slot - 4 * dpr);
  const shown = Array.from({ length: d }, (_, j) => values[k * d + j].toFixed(2));
  const named = shown.map((v, j) => `${names[j] || `x${j + 1}`} = ${v}`);
  const labels = d > 16 ? null : fit(named) ? named : fit(shown) ? shown : null;
  kept.image.dataset.barLabels = labels === named ? "names and values" : labels ? "values" : "none";
  if (!labels) return;
  ctx.textAlign = "center";
  const line = 14 * dpr;  // a label's height, with room
  const fits = ([at, hang]) => (hang === "top" ? at + line <= H : at - line >= 0);
  for (let j = 0; j < d; j++) {
    const { y, base } = bars[j], up = values[k * d + j] >= base, root = y(base), end = y(values[k * d + j]);
    const s = up ? 3 * dpr : -3 * dpr;  // towards the canvas's bottom from the baseline, for a bar going up
    // the first place that has room: past the baseline, past the bar's end; else inside its end, in white
    const [at, hang, colour] = [[root + s, up ? "top" : "bottom", ink], [end - s, up ? "bottom" : "top", ink]].find(fits)
      || [end + s, up ? "top" : "bottom", "#ffffff"];
    ctx.textBaseline = hang;
    ctx.fillStyle = colour;
    ctx.fillText(labels[j], (j + 0.5) * slot, at);
  }
}

// -- the map ----------------------------------------------------------------------------------

function mapView(path, width, height) {
  // latent (x, y) -> canvas CSS pixels, the same scale on both axes, y up.
  const p = path.blobs.points;
  const q = path.blobs.path;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const arr of [p, q]) {
    for (let i = 0; i < arr.length; i += 2) {
      x0 = Math.min(x0, arr[i]); x1 = Math.max(x1, arr[i]);
      y0 = Math.min(y0, arr[i + 1]); y1 = Math.max(y1, arr[i + 1]);
    }
  }
  const pad = 12;
  const scale = Math.min((width - 2 * pad) / (x1 - x0 || 1), (height - 2 * pad) / (y1 - y0 || 1));
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  return (x, y) => [width / 2 + (x - cx) * scale, height / 2 - (y - cy) * scale];
}

function drawMapLayer(kept, width, height, dpr) {
  const { header, blobs } = kept.path;
  const layer = new OffscreenCanvas(kept.map.width, kept.map.height);
  const ctx = layer.getContext("2d");
  ctx.scale(dpr, dpr);
  const view = kept.view;
  const palette = header.map.palette;
  const colors = blobs.colors;
  const p = blobs.points;
  const n = p.length / 2;
  const r = n > 5000 ? 1.2 : 2.2;
  ctx.globalAlpha = 0.55;
  for (let j = 0; j < n; j++) {
    ctx.fillStyle = palette[colors.length ? colors[j] : 0];
    const [x, y] = view(p[2 * j], p[2 * j + 1]);
    ctx.fillRect(x - r, y - r, 2 * r, 2 * r);
  }
  ctx.globalAlpha = 1;
  const ink = getComputedStyle(kept.root).color;
  const q = blobs.path;
  ctx.strokeStyle = ink;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  for (let i = 0; i < q.length; i += 2) {
    const [x, y] = view(q[i], q[i + 1]);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  }
  ctx.stroke();
  ctx.font = "bold 12px sans-serif";
  for (const [name, j] of [["A", header.map.a], ["B", header.map.b]]) {
    const [x, y] = view(p[2 * j], p[2 * j + 1]);
    ctx.lineWidth = 2;
    ctx.strokeStyle = ink;
    ctx.beginPath();
    ctx.arc(x, y, 6, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.fillStyle = ink;
    ctx.fillText(name, x + 8, y - 8);
  }
  return layer;
}

function drawMap(kept, k) {
  const ctx = kept.map.getContext("2d");
  const dpr = window.devicePixelRatio || 1;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, kept.map.width, kept.map.height);
  ctx.drawImage(kept.mapLayer, 0, 0);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const q = kept.path.blobs.path;
  const [x, y] = kept.view(q[2 * k], q[2 * k + 1]);
  ctx.fillStyle = "#f5b700";
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  ctx.arc(x, y, 5.5, 0, 2 * Math.PI);
  ctx.fill();
  ctx.stroke();
}

function nearestPoint(kept, clientX, clientY, within) {
  if (!kept.path || !kept.view) return null;
  const box = kept.map.getBoundingClientRect();
  const mx = clientX - box.left;
  const my = clientY - box.top;
  const p = kept.path.blobs.points;
  let best = null;
  let bestD = within * within;
  for (let j = 0; j < p.length / 2; j++) {
    const [x, y] = kept.view(p[2 * j], p[2 * j + 1]);
    const d = (x - mx) ** 2 + (y - my) ** 2;
    if (d <= bestD) {
      best = j;
      bestD = d;
    }
  }
  return best;
}
