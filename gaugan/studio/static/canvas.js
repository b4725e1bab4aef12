// The canvas and its tools.
//
// The label map is an array of class indices at the model's resolution (one byte per
// pixel), never a picture: every tool writes indices into it, and the canvas only shows
// it through the class colours. So painting is exact (no anti-aliasing, no blended
// colours), the map sent to the server and the map saved are the same bytes, and the
// canvas is scaled up on screen with `image-rendering: pixelated`. Models with an instance
// edge channel also get an instance map (16-bit ids) painted alongside.

import { $, FIRST_OBJECT_ID, state, toast } from "./page.js";
import { classNamed, selectClass } from "./palette.js";
import { encodePng } from "./png.js";

const HISTORY_LIMIT = 100; // undo steps kept
export const BRUSH_SIZES = [1, 3, 5, 9, 15, 25, 41]; // odd diameters: the stamp is centred on a pixel
const DISPLAY_SIZE = 512; // on-screen size of the longer side, in CSS pixels (integer zoom)

let onChange = () => {}; // the maps changed (setUpCanvas): ask for a new photo

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

export function undo() {
  if (!state.undo.length) return;
  state.redo.push(snapshot());
  restore(state.undo.pop());
  changed();
}

export function redo() {
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
  onChange();
}

// Replace the label map (one undo step); instance ids start over as one object per class region.
export function replaceLabels(samples) {
  edit(() => {
    state.labels.set(samples);
    if (state.instance) state.instance.set(state.labels);
  });
}

// Replace the instance map with the server's compact ids (one undo step), as objects of their own.
export function replaceInstances(samples) {
  let largest = 0;
  edit(() => {
    for (let i = 0; i < samples.length; i++) {
      state.instance[i] = FIRST_OBJECT_ID + samples[i];
      largest = Math.max(largest, state.instance[i]);
    }
  });
  state.nextObjectId = Math.max(state.nextObjectId, largest + 1);
}

// The maps as the API takes them and as they are saved.
export function labelPng() {
  return encodePng(state.width, state.height, state.labels, state.palette);
}

export function instancePng() {
  return encodePng(state.width, state.height, state.instance, null);
}

// ---------------------------------------------------------------------------------------
// Drawing on screen.

let labelContext, overlayContext, labelImage, overlayImage;
let hover = null; // canvas pixel under the pointer

export function render() {
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
  onChange();
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
// Tools, brush sizes, instances.

export function selectTool(tool) {
  state.tool = tool;
  for (const button of document.querySelectorAll("[data-tool]")) {
    button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
  }
  $("overlay-canvas").style.cursor = tool === "pick" ? "copy" : tool === "fill" ? "cell" : "crosshair";
  renderOverlay();
}

export function selectSize(size) {
  state.size = size;
  for (const button of $("sizes").children) button.setAttribute("aria-pressed", String(Number(button.dataset.size) === size));
  renderOverlay();
}

export function newInstance() {
  state.objectGeneration += 1;
  $("instance-info").textContent = `object ${state.objectGeneration + 1}`;
  toast("New instance: what you paint next is a separate object.");
}

export function buildSizes() {
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

// The first canvas: sky over grass (or road) where the dataset has them, like NVIDIA's demo.
export function initialScene() {
  const sky = classNamed("sky", "sky-other") ?? 0;
  const ground = classNamed("grass", "road");
  state.labels.fill(sky);
  if (ground !== null) state.labels.fill(ground, Math.floor((state.height * 2) / 3) * state.width);
  if (state.instance) state.instance.set(state.labels);
  return ground ?? sky;
}

// The canvases at the model's size, shown at an integer zoom (the photo beside them too);
// `changed` is called whenever the maps change.
export function setUpCanvas(changed) {
  onChange = changed;
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
}

// The canvas's pointer input, the tool buttons, undo and redo, new instance and clear.
export function wireCanvas() {
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
}
