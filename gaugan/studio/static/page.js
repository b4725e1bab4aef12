// The page's shared state and what every part of it uses: element lookup, toasts, file buttons.

export const FIRST_OBJECT_ID = 256; // instance ids below are "the class region" (id = class index)

export const $ = (id) => document.getElementById(id);

export const state = {
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

let toastTimer = null;

export function toast(message, isError = false) {
  const element = $("toast");
  element.textContent = message;
  element.classList.toggle("error", isError);
  element.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { element.hidden = true; }, isError ? 8000 : 4000);
}

export function wireFileButton(buttonId, inputId, handler) {
  const input = $(inputId);
  $(buttonId).addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    const [file] = input.files;
    input.value = "";
    if (file) handler(file);
  });
}
