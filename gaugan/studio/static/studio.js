// GauGAN studio page.
//
// The label map is an array of class indices at the model's resolution (one byte per
// pixel), never a picture: every tool writes indices into it, and the canvas only shows
// it through the class colours. So painting is exact (no anti-aliasing, no blended
// colours), the map sent to the server and the map saved are the same bytes, and the
// canvas is scaled up on screen with `image-rendering: pixelated`. Models with an instance
// edge channel also get an instance map (16-bit ids) painted alongside.
"use strict";

const DEBOUNCE_MS = 90; // wait for a pause in painting before generating ...
const MAX_WAIT_MS = 450; // ... but not longer than this while painting goes on
const HISTORY_LIMIT = 100; // undo steps kept
const BRUSH_SIZES = [1, 3, 5, 9, 15, 25, 41]; // odd diameters: the stamp is centred on a pixel
const FIRST_OBJECT_ID = 256; // instance ids below are "the class region" (id = class index)
const DISPLAY_SIZE = 512; // on-screen size of the longer side, in CSS pixels (integer zoom)
// This page's id for the server's queue: a newer request of this page replaces its older one
// still waiting. getRandomValues, not randomUUID: pages served beyond loopback are not secure contexts.
const CLIENT_ID = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0"))
  .join("");
const CLIENT_HEADERS = { "X-Studio-Client": CLIENT_ID };

const $ = (id) => document.getElementById(id);

const state = {
  info: null,
  width: 0,
  height: 0,
  labels: null, // Uint8Array(width * height): class index per pixel
  instance: null, // Uint16Array(width * height) or null: instance id per pixel
  palette: null, // Uint8Array(3 * classes)
  current: 0,
  tool: "brush",
  size: 5,
  objectGeneration: 0, // bumped by "new instance"
  objectIds: new Map(), // "class:generation" -> instance id
  nextObjectId: FIRST_OBJECT_ID,
  undo: [],
  redo: [],
  version: 0, // bumped by every change of the maps
  seed: 0,
  classSeeds: {}, // class index -> seed of its re-drawn 3D noise (OASIS)
  styleFile: null,
  photoBlob: null,
  generations: 0,
};

// ---------------------------------------------------------------------------------------
// PNG: 8-bit palette / greyscale and 16-bit greyscale, with the browser's own zlib.

const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

async function zlib(bytes, inflate) {
  const transform = inflate ? new DecompressionStream("deflate") : new CompressionStream("deflate");
  const stream = new Blob([bytes]).stream().pipeThrough(transform);
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function pngChunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

// samples: one value per pixel (Uint8Array: 8 bits, Uint16Array: 16 bits); palette: RGB bytes or null.
async function encodePng(width, height, samples, palette) {
  const bytesPerSample = samples.BYTES_PER_ELEMENT;
  const rowBytes = width * bytesPerSample;
  const raw = new Uint8Array((rowBytes + 1) * height); // each row: filter type 0, then the samples
  for (let y = 0; y < height; y++) {
    const row = y * (rowBytes + 1) + 1;
    for (let x = 0; x < width; x++) {
      const value = samples[y * width + x];
      if (bytesPerSample === 1) raw[row + x] = value;
      else {
        raw[row + 2 * x] = value >> 8;
        raw[row + 2 * x + 1] = value & 0xff;
      }
    }
  }
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header[8] = 8 * bytesPerSample; // bit depth
  header[9] = palette ? 3 : 0; // colour type: palette or greyscale
  const parts = [new Uint8Array(PNG_SIGNATURE), pngChunk("IHDR", header)];
  if (palette) parts.push(pngChunk("PLTE", palette));
  parts.push(pngChunk("IDAT", await zlib(raw, false)), pngChunk("IEND", new Uint8Array(0)));
  return new Blob(parts, { type: "image/png" });
}

// The PNGs this server sends (8-bit palette or greyscale, 16-bit greyscale) -> samples.
async function decodePng(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  if (!PNG_SIGNATURE.every((value, i) => bytes[i] === value)) throw new Error("not a PNG");
  let width = 0, height = 0, depth = 0, colourType = 0;
  const idat = [];
  for (let at = 8; at < bytes.length;) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    if (type === "IHDR") {
      width = view.getUint32(at + 8);
      height = view.getUint32(at + 12);
      [depth, colourType] = [data[8], data[9]];
      if (![0, 3].includes(colourType) || ![8, 16].includes(depth) || data[12] !== 0) {
        throw new Error(`unsupported PNG (colour type ${colourType}, ${depth} bits, interlace ${data[12]})`);
      }
    } else if (type === "IDAT") idat.push(data);
    at += 12 + length;
  }
  const raw = await zlib(new Blob(idat), true);
  const step = depth / 8; // bytes per pixel
  const rowBytes = width * step;
  const out = new Uint8Array(rowBytes * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (rowBytes + 1)];
    const source = y * (rowBytes + 1) + 1;
    const row = y * rowBytes;
    for (let i = 0; i < rowBytes; i++) {
      const a = i >= step ? out[row + i - step] : 0;
      const b = y > 0 ? out[row - rowBytes + i] : 0;
      const c = y > 0 && i >= step ? out[row - rowBytes + i - step] : 0;
      let predictor = 0;
      if (filter === 1) predictor = a;
      else if (filter === 2) predictor = b;
      else if (filter === 3) predictor = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      out[row + i] = (raw[source + i] + predictor) & 0xff;
    }
  }
  if (depth === 8) return { width, height, samples: out };
  const samples = new Uint16Array(width * height);
  for (let i = 0; i < samples.length; i++) samples[i] = (out[2 * i] << 8) | out[2 * i + 1];
  return { width, height, samples };
}

// ---------------------------------------------------------------------------------------
// Painting: every tool writes class indices (and instance ids) into the arrays.

function instanceIdFor(classIndex) {
  if (state.objectGeneration === 0) return classIndex;
  const key = `${classIndex}:${state.objectGeneration}`;
  if (!state.objectIds.has(key)) state.objectIds.set(key, state.nextObjectId++);
  return state.objectIds.get(key);
}

function setPixel(x, y) {
  if (x < 0 || y < 0 || x >= state.width || y >= state.height) return;
  const i = y * state.width + x;
  state.labels[i] = state.current;
  if (state.instance) state.instance[i] = instanceIdFor(state.current);
}

// A disc of odd diameter `size`: offsets with dx² + dy² <= r² + r, r = (size - 1) / 2.
function stampOffsets(size) {
  const r = (size - 1) / 2;
  const offsets = [];
  for (let dy = -r; dy <= r; dy++) {
    for (let dx = -r; dx <= r; dx++) if (dx * dx + dy * dy <= r * r + r) offsets.push([dx, dy]);
  }
  return offsets;
}

function stamp(x, y) {
  for (const [dx, dy] of stampOffsets(state.size)) setPixel(x + dx, y + dy);
}

// Bresenham: every pixel of the segment, so a fast stroke leaves no gaps.
function line(x0, y0, x1, y1, plot) {
  const dx = Math.abs(x1 - x0), dy = -Math.abs(y1 - y0);
  const sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  let error = dx + dy;
  for (;;) {
    plot(x0, y0);
    if (x0 === x1 && y0 === y1) return;
    const e2 = 2 * error;
    if (e2 >= dy) { error += dy; x0 += sx; }
    if (e2 <= dx) { error += dx; y0 += sy; }
  }
}

function rectangle(x0, y0, x1, y1) {
  const [left, right] = [Math.max(0, Math.min(x0, x1)), Math.min(state.width - 1, Math.max(x0, x1))];
  const [top, bottom] = [Math.max(0, Math.min(y0, y1)), Math.min(state.height - 1, Math.max(y0, y1))];
  for (let y = top; y <= bottom; y++) for (let x = left; x <= right; x++) setPixel(x, y);
}

// The 4-connected region of equal class (and instance id) around (x, y) takes the current class.
function floodFill(x, y) {
  const { width, height, labels, instance } = state;
  const start = y * width + x;
  const targetClass = labels[start];
  const targetId = instance ? instance[start] : 0;
  if (targetClass === state.current && (!instance || targetId === instanceIdFor(state.current))) return;
  const inside = (i) => labels[i] === targetClass && (!instance || instance[i] === targetId);
  const seen = new Uint8Array(width * height);
  const stack = [start];
  seen[start] = 1;
  while (stack.length) {
    const i = stack.pop();
    const px = i % width, py = (i - px) / width;
    setPixel(px, py);
    for (const [nx, ny] of [[px - 1, py], [px + 1, py], [px, py - 1], [px, py + 1]]) {
      if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
      const j = ny * width + nx;
      if (!seen[j] && inside(j)) { seen[j] = 1; stack.push(j); }
    }
  }
}

// ---------------------------------------------------------------------------------------
// History: snapshots of both maps before each edit.

function snapshot() {
  return { labels: state.labels.slice(), instance: state.instance ? state.instance.slice() : null };
}

function sameMaps(a, b) {
  for (let i = 0; i < a.labels.length; i++) if (a.labels[i] !== b.labels[i]) return false;
  if (a.instance) for (let i = 0; i < a.instance.length; i++) if (a.instance[i] !== b.instance[i]) return false;
  return true;
}

function restore(shot) {
  state.labels.set(shot.labels);
  if (state.instance) state.instance.set(shot.instance);
}

// An edit: `change` modifies the maps; one undo step if anything changed.
function edit(change) {
  const before = snapshot();
  change();
  commit(before);
}

function commit(before) {
  if (sameMaps(before, snapshot())) {
    render();
    return;
  }
  state.undo.push(before);
  if (state.undo.length > HISTORY_LIMIT) state.undo.shift();
  state.redo = [];
  changed();
}

function undo() {
  if (!state.undo.length) return;
  state.redo.push(snapshot());
  restore(state.undo.pop());
  changed();
}

function redo() {
  if (!state.redo.length) return;
  state.undo.push(snapshot());
  restore(state.redo.pop());
  changed();
}

// The maps changed: show them, and ask for a new photo.
function changed() {
  state.version += 1;
  $("label-canvas").dataset.version = String(state.version);
  render();
  scheduleGenerate();
}

// ---------------------------------------------------------------------------------------
// Drawing on screen.

let labelContext, overlayContext, labelImage, overlayImage;
let hover = null; // canvas pixel under the pointer

function render() {
  const { labels, palette } = state;
  const pixels = labelImage.data;
  for (let i = 0; i < labels.length; i++) {
    const c = 3 * labels[i];
    pixels[4 * i] = palette[c];
    pixels[4 * i + 1] = palette[c + 1];
    pixels[4 * i + 2] = palette[c + 2];
    pixels[4 * i + 3] = 255;
  }
  labelContext.putImageData(labelImage, 0, 0);
  renderOverlay();
  $("undo").disabled = !state.undo.length;
  $("redo").disabled = !state.redo.length;
  $("history-info").textContent = `${state.undo.length} undo · ${state.redo.length} redo`;
}

// Overlay: where two objects of the same class touch (their edge is invisible in the class
// colours), and the brush footprint under the pointer.
function renderOverlay() {
  const { width, height, labels, instance } = state;
  const pixels = overlayImage.data;
  pixels.fill(0);
  if (instance) {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = y * width + x;
        const right = x + 1 < width && labels[i + 1] === labels[i] && instance[i + 1] !== instance[i];
        const below = y + 1 < height && labels[i + width] === labels[i] && instance[i + width] !== instance[i];
        if (right || below) pixels.set([255, 255, 255, 200], 4 * i);
      }
    }
  }
  if (hover && ["brush", "line"].includes(state.tool)) {
    for (const [dx, dy] of stampOffsets(state.size)) {
      const x = hover.x + dx, y = hover.y + dy;
      if (x >= 0 && y >= 0 && x < width && y < height) pixels.set([0, 0, 0, 90], 4 * (y * width + x));
    }
  }
  overlayContext.putImageData(overlayImage, 0, 0);
}

function canvasPoint(event) {
  const box = $("overlay-canvas").getBoundingClientRect();
  return {
    x: Math.floor(((event.clientX - box.left) * state.width) / box.width),
    y: Math.floor(((event.clientY - box.top) * state.height) / box.height),
  };
}

function inside(point) {
  return point.x >= 0 && point.y >= 0 && point.x < state.width && point.y < state.height;
}

// ---------------------------------------------------------------------------------------
// Pointer input.

let gesture = null; // {tool, start, last, before}

function pick(point) {
  if (inside(point)) selectClass(state.labels[point.y * state.width + point.x]);
}

function onPointerDown(event) {
  if (event.button !== 0) return;
  const point = canvasPoint(event);
  if (event.altKey || state.tool === "pick") {
    pick(point);
    return;
  }
  if (!inside(point)) return;
  event.currentTarget.setPointerCapture(event.pointerId);
  if (state.tool === "fill") {
    edit(() => floodFill(point.x, point.y));
    return;
  }
  gesture = { tool: state.tool, start: point, last: point, before: snapshot() };
  drawGesture(point);
}

function drawGesture(point) {
  const { tool, start, last, before } = gesture;
  if (tool === "brush") line(last.x, last.y, point.x, point.y, stamp);
  else {
    restore(before); // line and rectangle follow the pointer from where they started
    if (tool === "line") line(start.x, start.y, point.x, point.y, stamp);
    else rectangle(start.x, start.y, point.x, point.y);
  }
  gesture.last = point;
  state.version += 1;
  $("label-canvas").dataset.version = String(state.version);
  render();
  scheduleGenerate();
}

function onPointerMove(event) {
  const point = canvasPoint(event);
  hover = inside(point) ? point : null;
  showCursor(point);
  if (gesture) {
    const samePixel = point.x === gesture.last.x && point.y === gesture.last.y;
    if (!samePixel) drawGesture(point);
  } else renderOverlay();
}

function onPointerUp() {
  if (!gesture) return;
  const { before } = gesture;
  gesture = null;
  commit(before);
}

function showCursor(point) {
  if (!inside(point)) {
    $("cursor-info").textContent = "\u00a0";
    return;
  }
  const i = point.y * state.width + point.x;
  const classIndex = state.labels[i];
  const object = state.instance ? ` · instance ${state.instance[i]}` : "";
  $("cursor-info").textContent = `x ${point.x}, y ${point.y} · ${state.info.classes[classIndex].name} (${classIndex})${object}`;
}

// ---------------------------------------------------------------------------------------
// Generation: debounced, and a new request cancels the one in flight.

let generateTimer = null;
let firstPendingAt = 0;
let inFlight = null; // AbortController of the request in flight
let retryTimer = null; // asks again after the server answered "busy" (429)

function scheduleGenerate() {
  const now = performance.now();
  if (generateTimer === null) firstPendingAt = now;
  else clearTimeout(generateTimer);
  const wait = Math.max(0, Math.min(DEBOUNCE_MS, firstPendingAt + MAX_WAIT_MS - now));
  generateTimer = setTimeout(() => {
    generateTimer = null;
    generate();
  }, wait);
}

async function generate() {
  if (inFlight) inFlight.abort();
  clearTimeout(retryTimer);
  const controller = new AbortController();
  inFlight = controller;
  const version = state.version;
  $("busy").hidden = false;
  try {
    const form = new FormData();
    form.append("label", await labelPng(), "label.png");
    if (state.instance) form.append("instance", await instancePng(), "instance.png");
    if (state.info.vae || state.info.noise_channels) form.append("seed", String(state.seed));
    if (state.info.noise_channels && Object.keys(state.classSeeds).length) {
      form.append("class_seeds", JSON.stringify(state.classSeeds));
    }
    if (state.styleFile) form.append("style", state.styleFile, state.styleFile.name);
    if (controller.signal.aborted) return;
    const started = performance.now();
    const response = await fetch("api/generate", {
      method: "POST", body: form, signal: controller.signal, headers: CLIENT_HEADERS,
    });
    if (response.status === 409) return; // a newer request of this page took its place in the queue
    if (response.status === 429) { // other clients' requests fill the queue: ask again shortly
      const seconds = Number(response.headers.get("Retry-After")) || 1;
      $("latency").textContent = "The studio is busy with other requests; asking again…";
      retryTimer = setTimeout(generate, seconds * 1000);
      return;
    }
    if (!response.ok) throw new Error(await errorText(response));
    const blob = await response.blob();
    if (controller !== inFlight) return;
    showPhoto(blob, version, performance.now() - started, serverMilliseconds(response));
    showNotes(response);
  } catch (error) {
    if (error.name !== "AbortError") toast(`Generation failed: ${error.message}`, true);
  } finally {
    if (controller === inFlight) {
      inFlight = null;
      $("busy").hidden = true;
    }
  }
}

function showPhoto(blob, version, totalMs, serverMs) {
  const photo = $("photo");
  if (photo.src) URL.revokeObjectURL(photo.src);
  photo.src = URL.createObjectURL(blob);
  photo.hidden = false;
  $("photo-placeholder").hidden = true;
  state.photoBlob = blob;
  state.generations += 1;
  photo.dataset.version = String(version);
  photo.dataset.generations = String(state.generations);
  $("save-photo").disabled = false;
  const device = serverMs === null ? "" : ` · ${Math.round(serverMs)} ms on the ${state.info.device.split(" ")[0]}`;
  $("latency").textContent = `Generated in ${Math.round(totalMs)} ms${device}`;
}

function serverMilliseconds(response) {
  const match = /dur=([0-9.]+)/.exec(response.headers.get("Server-Timing") || "");
  return match ? Number(match[1]) : null;
}

function showNotes(response) {
  const notes = JSON.parse(response.headers.get("X-Studio-Notes") || "[]");
  const relevant = notes.filter((note) => !note.startsWith("no instance map"));
  if (relevant.length) toast(relevant.join("; "));
}

async function errorText(response) {
  try {
    return (await response.json()).error;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function labelPng() {
  return encodePng(state.width, state.height, state.labels, state.palette);
}

function instancePng() {
  return encodePng(state.width, state.height, state.instance, null);
}

// ---------------------------------------------------------------------------------------
// Files: load and save maps, save the photo, photo -> label map, style photo.

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function postFile(url, field, file) {
  const form = new FormData();
  form.append(field, file, file.name);
  const response = await fetch(url, { method: "POST", body: form, headers: CLIENT_HEADERS });
  if (!response.ok) {
    const error = new Error(await errorText(response));
    error.status = response.status;
    throw error;
  }
  showNotes(response);
  return decodePng(await response.arrayBuffer());
}

// Replace the label map (one undo step); instance ids start over as one object per class region.
function replaceLabels(samples) {
  edit(() => {
    state.labels.set(samples);
    if (state.instance) state.instance.set(state.labels);
  });
}

async function loadLabel(file) {
  try {
    replaceLabels((await postFile("api/label", "label", file)).samples);
  } catch (error) {
    toast(`Could not load ${file.name}: ${error.message}`, true);
  }
}

async function loadInstance(file) {
  try {
    const { samples } = await postFile("api/instance", "instance", file);
    let largest = 0;
    edit(() => {
      for (let i = 0; i < samples.length; i++) {
        state.instance[i] = FIRST_OBJECT_ID + samples[i];
        largest = Math.max(largest, state.instance[i]);
      }
    });
    state.nextObjectId = Math.max(state.nextObjectId, largest + 1);
  } catch (error) {
    toast(`Could not load ${file.name}: ${error.message}`, true);
  }
}

async function segmentPhoto(file) {
  const reason = $("segment-reason");
  const button = $("segment-photo");
  button.disabled = true;
  button.textContent = "Segmenting…";
  try {
    replaceLabels((await postFile("api/segment", "photo", file)).samples);
    reason.hidden = true;
  } catch (error) {
    reason.textContent = error.status === 503 ? `No segmenter available: ${error.message}` : error.message;
    reason.classList.add("error");
    reason.hidden = false;
  } finally {
    button.disabled = false;
    button.textContent = "Choose a photo…";
  }
}

function setStyleFile(file) {
  state.styleFile = file;
  const thumb = $("style-thumb");
  if (thumb.src) URL.revokeObjectURL(thumb.src);
  thumb.hidden = !file;
  $("clear-style").hidden = !file;
  if (file) thumb.src = URL.createObjectURL(file);
  else thumb.removeAttribute("src");
  generate();
}

function setSeed(value) {
  const seed = Math.min(2147483647, Math.max(0, Math.floor(Number(value) || 0)));
  state.seed = seed;
  $("seed").value = String(seed);
  generate();
}

const randomSeed = () => Math.floor(Math.random() * 2147483648);

// Re-rolled regions as the text the user reads and types: "3=17, 5=2" (class index = seed).
function classSeedsText(seeds) {
  return Object.entries(seeds).map(([index, seed]) => `${index}=${seed}`).join(", ");
}

function parseClassSeeds(text) {
  const seeds = {};
  for (const part of text.split(",").map((item) => item.trim()).filter(Boolean)) {
    const match = /^(\d+)\s*=\s*(\d+)$/.exec(part);
    const index = match ? Number(match[1]) : -1;
    const seed = match ? Number(match[2]) : -1;
    if (!(index >= 0 && index < state.info.classes.length && seed >= 0 && seed <= 2147483647)) {
      throw new Error(`Regions: "${part}" is not class=seed (class 0..${state.info.classes.length - 1}, seed 0..2147483647)`);
    }
    seeds[index] = seed;
  }
  return seeds;
}

function setClassSeeds(seeds) {
  state.classSeeds = seeds;
  $("class-seeds").value = classSeedsText(seeds);
  generate();
}

function rerollClass() {
  setClassSeeds({ ...state.classSeeds, [state.current]: randomSeed() });
}

// ---------------------------------------------------------------------------------------
// Controls.

function selectClass(index) {
  state.current = index;
  const { name, colour } = state.info.classes[index];
  for (const item of $("palette").children) {
    const selected = Number(item.dataset.index) === index;
    item.setAttribute("aria-selected", String(selected));
    if (selected) item.scrollIntoView({ block: "nearest" });
  }
  $("current-swatch").style.background = colour;
  $("current-name").textContent = `${name} (${index})`;
  $("clear-swatch").style.background = colour;
  $("clear-name").textContent = name;
  $("reroll-name").textContent = name;
}

function selectTool(tool) {
  state.tool = tool;
  for (const button of document.querySelectorAll("[data-tool]")) {
    button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
  }
  $("overlay-canvas").style.cursor = tool === "pick" ? "copy" : tool === "fill" ? "cell" : "crosshair";
  renderOverlay();
}

function selectSize(size) {
  state.size = size;
  for (const button of $("sizes").children) button.setAttribute("aria-pressed", String(Number(button.dataset.size) === size));
  renderOverlay();
}

function newInstance() {
  state.objectGeneration += 1;
  $("instance-info").textContent = `object ${state.objectGeneration + 1}`;
  toast("New instance: what you paint next is a separate object.");
}

function buildPalette() {
  const list = $("palette");
  for (const { index, name, colour } of state.info.classes) {
    const item = document.createElement("li");
    item.setAttribute("role", "option");
    item.dataset.index = String(index);
    item.dataset.search = `${name.toLowerCase()} ${index}`;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour;
    const label = document.createElement("span");
    label.textContent = name;
    const number = document.createElement("span");
    number.className = "index";
    number.textContent = String(index);
    item.append(swatch, label, number);
    item.title = `${name}: class ${index}, ${colour}`;
    item.addEventListener("click", () => selectClass(index));
    list.append(item);
  }
  $("class-count").textContent = `${state.info.classes.length}`;
  $("class-search").addEventListener("input", filterPalette);
  $("class-search").addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    const first = [...list.children].find((item) => !item.hidden);
    if (first) selectClass(Number(first.dataset.index));
  });
}

function filterPalette() {
  const query = $("class-search").value.trim().toLowerCase();
  for (const item of $("palette").children) {
    item.hidden = query !== "" && !item.dataset.search.includes(query) && item.dataset.index !== query;
  }
}

function buildSizes() {
  for (const size of BRUSH_SIZES) {
    const button = document.createElement("button");
    button.dataset.size = String(size);
    button.title = `Brush size ${size} px ([ and ] to change)`;
    button.setAttribute("aria-label", `Brush size ${size}`);
    const dot = document.createElement("span");
    dot.className = "dot";
    const shown = 4 + Math.round((14 * BRUSH_SIZES.indexOf(size)) / (BRUSH_SIZES.length - 1));
    dot.style.width = dot.style.height = `${shown}px`;
    button.append(dot);
    button.addEventListener("click", () => selectSize(size));
    $("sizes").append(button);
  }
}

function classNamed(...names) {
  for (const name of names) {
    const found = state.info.classes.find((entry) => entry.name === name);
    if (found) return found.index;
  }
  return null;
}

// The first canvas: sky over grass (or road) where the dataset has them, like NVIDIA's demo.
function initialScene() {
  const sky = classNamed("sky", "sky-other") ?? 0;
  const ground = classNamed("grass", "road");
  state.labels.fill(sky);
  if (ground !== null) state.labels.fill(ground, Math.floor((state.height * 2) / 3) * state.width);
  if (state.instance) state.instance.set(state.labels);
  return ground ?? sky;
}

let toastTimer = null;

function toast(message, isError = false) {
  const element = $("toast");
  element.textContent = message;
  element.classList.toggle("error", isError);
  element.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { element.hidden = true; }, isError ? 8000 : 4000);
}

function onKey(event) {
  if (event.target.closest("input, textarea")) return;
  const key = event.key.toLowerCase();
  const command = event.ctrlKey || event.metaKey;
  if (command && key === "z") event.shiftKey ? redo() : undo();
  else if (command && key === "y") redo();
  else if (command) return;
  else if ({ b: 1, l: 1, r: 1, f: 1, i: 1 }[key]) selectTool({ b: "brush", l: "line", r: "rect", f: "fill", i: "pick" }[key]);
  else if (key === "[" || key === "]") {
    const at = BRUSH_SIZES.indexOf(state.size) + (key === "]" ? 1 : -1);
    selectSize(BRUSH_SIZES[Math.max(0, Math.min(BRUSH_SIZES.length - 1, at))]);
  } else if (key === "n" && state.instance) newInstance();
  else return;
  event.preventDefault();
}

function setUpStyle(info) {
  const { seed_reason: seedReason, photo_reason: photoReason, region_reason: regionReason } = info.style;
  $("seed").disabled = $("new-style").disabled = Boolean(seedReason);
  $("style-photo").disabled = Boolean(photoReason);
  $("reroll-class").disabled = $("class-seeds").disabled = Boolean(regionReason);
  const reasons = [...new Set([seedReason, photoReason, regionReason].filter(Boolean))];
  $("style-reason").textContent = reasons.map((reason) => `Disabled: ${reason}.`).join(" ");
  $("style-reason").hidden = !reasons.length;
}

function wireFileButton(buttonId, inputId, handler) {
  const input = $(inputId);
  $(buttonId).addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    const [file] = input.files;
    input.value = "";
    if (file) handler(file);
  });
}

function wireControls() {
  const overlay = $("overlay-canvas");
  overlay.addEventListener("pointerdown", onPointerDown);
  overlay.addEventListener("pointermove", onPointerMove);
  overlay.addEventListener("pointerup", onPointerUp);
  overlay.addEventListener("pointercancel", onPointerUp);
  overlay.addEventListener("pointerleave", () => {
    hover = null;
    showCursor({ x: -1, y: -1 });
    renderOverlay();
  });
  for (const button of document.querySelectorAll("[data-tool]")) {
    button.addEventListener("click", () => selectTool(button.dataset.tool));
  }
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("new-instance").addEventListener("click", newInstance);
  $("clear").addEventListener("click", () => edit(() => {
    state.labels.fill(state.current);
    if (state.instance) state.instance.fill(instanceIdFor(state.current));
  }));
  $("save-label").addEventListener("click", async () => download(await labelPng(), `${state.info.dataset}_label.png`));
  $("save-instance").addEventListener("click", async () => download(await instancePng(), `${state.info.dataset}_instance.png`));
  $("save-photo").addEventListener("click", () => download(state.photoBlob, `${state.info.dataset}_photo.png`));
  wireFileButton("load-label", "load-label-file", loadLabel);
  wireFileButton("load-instance", "load-instance-file", loadInstance);
  wireFileButton("segment-photo", "segment-photo-file", segmentPhoto);
  wireFileButton("style-photo", "style-photo-file", setStyleFile);
  $("clear-style").addEventListener("click", () => setStyleFile(null));
  $("seed").addEventListener("change", () => setSeed($("seed").value));
  $("new-style").addEventListener("click", () => setSeed(randomSeed()));
  $("reroll-class").addEventListener("click", rerollClass);
  $("class-seeds").addEventListener("change", () => {
    try {
      setClassSeeds(parseClassSeeds($("class-seeds").value));
    } catch (error) {
      toast(error.message, true);
    }
  });
  document.addEventListener("keydown", onKey);
}

async function start() {
  const response = await fetch("api/info");
  const info = await response.json();
  state.info = info;
  state.width = info.image_size.width;
  state.height = info.image_size.height;
  state.labels = new Uint8Array(state.width * state.height);
  state.instance = info.use_instance ? new Uint16Array(state.width * state.height) : null;
  state.palette = new Uint8Array(info.classes.flatMap(({ colour }) => [1, 3, 5].map((at) => parseInt(colour.slice(at, at + 2), 16))));

  const zoom = Math.max(1, Math.floor(DISPLAY_SIZE / Math.max(state.width, state.height)));
  for (const id of ["label-canvas", "overlay-canvas"]) {
    const canvas = $(id);
    canvas.width = state.width;
    canvas.height = state.height;
    canvas.style.width = `${state.width * zoom}px`;
    canvas.style.height = `${state.height * zoom}px`;
  }
  const photo = $("photo");
  photo.style.width = `${state.width * zoom}px`;
  photo.style.height = `${state.height * zoom}px`;
  $("photo-frame").style.minHeight = `${state.height * zoom}px`;
  $("photo-frame").style.minWidth = `${state.width * zoom}px`;
  labelContext = $("label-canvas").getContext("2d");
  overlayContext = $("overlay-canvas").getContext("2d");
  labelImage = labelContext.createImageData(state.width, state.height);
  overlayImage = overlayContext.createImageData(state.width, state.height);

  const checkpoint = info.checkpoint.path.split("/").pop();
  $("model-summary").textContent =
    `${info.dataset} · ${state.width}×${state.height} · ${info.classes.length} classes` +
    `${info.use_instance ? " + instance edges" : ""} · ${checkpoint} (${info.checkpoint.weights})${info.vae ? " · VAE" : ""}${info.noise_channels ? " · 3D noise" : ""}`;
  $("model-summary").title = info.checkpoint.path;
  $("device").textContent = info.device;
  for (const id of ["instance-group", "load-instance", "save-instance"]) $(id).hidden = !info.use_instance;
  $("instance-info").textContent = "object 1";
  setUpStyle(info);
  buildPalette();
  buildSizes();
  wireControls();
  selectTool("brush");
  const preferred = Math.max(state.width, state.height) / 14;
  selectSize(BRUSH_SIZES.reduce((best, size) => (Math.abs(size - preferred) < Math.abs(best - preferred) ? size : best)));
  selectClass(initialScene());
  render();
  generate();
}

start().catch((error) => toast(`The studio could not start: ${error.message}`, true));
