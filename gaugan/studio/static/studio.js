// GauGAN studio page: the entry module, which starts the page and wires its parts.
//
// page.js holds the shared state; canvas.js the label map and the tools that paint it
// (class indices, never a picture); palette.js the classes; style.js the style panel;
// photo.js the generated photo; api.js every request to the server; png.js the PNGs the page
// writes and reads. Modules served as they are (no build step), same-origin only.

import { fetchInfo, postFile } from "./api.js";
import {
  BRUSH_SIZES,
  buildSizes,
  initialScene,
  instancePng,
  labelPng,
  newInstance,
  redo,
  render,
  replaceInstances,
  replaceLabels,
  selectSize,
  selectTool,
  setUpCanvas,
  undo,
  wireCanvas,
} from "./canvas.js";
import { $, state, toast, wireFileButton } from "./page.js";
import { buildPalette, selectClass } from "./palette.js";
import { generate, scheduleGenerate } from "./photo.js";
import { setUpStyle, wireStyle } from "./style.js";

// ---------------------------------------------------------------------------------------
// Files: load and save maps, save the photo, photo -> label map.

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
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
    replaceInstances((await postFile("api/instance", "instance", file)).samples);
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

function wireFiles() {
  $("save-label").addEventListener("click", async () => download(await labelPng(), `${state.info.dataset}_label.png`));
  $("save-instance").addEventListener("click", async () => download(await instancePng(), `${state.info.dataset}_instance.png`));
  $("save-photo").addEventListener("click", () => download(state.photoBlob, `${state.info.dataset}_photo.png`));
  wireFileButton("load-label", "load-label-file", loadLabel);
  wireFileButton("load-instance", "load-instance-file", loadInstance);
  wireFileButton("segment-photo", "segment-photo-file", segmentPhoto);
}

// ---------------------------------------------------------------------------------------
// Keys, and the start.

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

async function start() {
  const info = await fetchInfo();
  state.info = info;
  state.width = info.image_size.width;
  state.height = info.image_size.height;
  state.labels = new Uint8Array(state.width * state.height);
  state.instance = info.use_instance ? new Uint16Array(state.width * state.height) : null;
  state.palette = new Uint8Array(info.classes.flatMap(({ colour }) => [1, 3, 5].map((at) => parseInt(colour.slice(at, at + 2), 16))));
  setUpCanvas(scheduleGenerate);

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
  wireCanvas();
  wireStyle(generate);
  wireFiles();
  document.addEventListener("keydown", onKey);
  selectTool("brush");
  const preferred = Math.max(state.width, state.height) / 14;
  selectSize(BRUSH_SIZES.reduce((best, size) => (Math.abs(size - preferred) < Math.abs(best - preferred) ? size : best)));
  selectClass(initialScene());
  render();
  generate();
}

start().catch((error) => toast(`The studio could not start: ${error.message}`, true));
