// The photo: generated for the maps on the canvas, debounced while painting goes on; a new
// request cancels the one in flight, and a busy studio (429) is asked again shortly.

import { errorText, postGenerate, serverMilliseconds, showNotes } from "./api.js";
import { instancePng, labelPng } from "./canvas.js";
import { $, state, toast } from "./page.js";

const DEBOUNCE_MS = 90; // wait for a pause in painting before generating ...
const MAX_WAIT_MS = 450; // ... but not longer than this while painting goes on

let generateTimer = null;
let firstPendingAt = 0;
let inFlight = null; // AbortController of the request in flight
let retryTimer = null; // asks again after the server answered "busy" (429)

export function scheduleGenerate() {
  const now = performance.now();
  if (generateTimer === null) firstPendingAt = now;
  else clearTimeout(generateTimer);
  const wait = Math.max(0, Math.min(DEBOUNCE_MS, firstPendingAt + MAX_WAIT_MS - now));
  generateTimer = setTimeout(() => {
    generateTimer = null;
    generate();
  }, wait);
}

export async function generate() {
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
    const response = await postGenerate(form, controller.signal);
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
