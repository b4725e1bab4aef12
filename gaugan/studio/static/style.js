// The style panel: the seed of z (VAE) or of the 3D noise (OASIS: "New style"), the re-drawn
// noise of one class's region ("Re-roll <class>", the "Regions" field: class=seed, ...) and the
// style photo (the VAE's encoder). Controls a model cannot use are disabled, with the reason.

import { $, state, toast, wireFileButton } from "./page.js";

let regenerate = () => {}; // the style changed (wireStyle): ask for a new photo

export function setUpStyle(info) {
  const { seed_reason: seedReason, photo_reason: photoReason, region_reason: regionReason } = info.style;
  $("seed").disabled = $("new-style").disabled = Boolean(seedReason);
  $("style-photo").disabled = Boolean(photoReason);
  $("reroll-class").disabled = $("class-seeds").disabled = Boolean(regionReason);
  const reasons = [...new Set([seedReason, photoReason, regionReason].filter(Boolean))];
  $("style-reason").textContent = reasons.map((reason) => `Disabled: ${reason}.`).join(" ");
  $("style-reason").hidden = !reasons.length;
}

function setStyleFile(file) {
  state.styleFile = file;
  const thumb = $("style-thumb");
  if (thumb.src) URL.revokeObjectURL(thumb.src);
  thumb.hidden = !file;
  $("clear-style").hidden = !file;
  if (file) thumb.src = URL.createObjectURL(file);
  else thumb.removeAttribute("src");
  regenerate();
}

function setSeed(value) {
  const seed = Math.min(2147483647, Math.max(0, Math.floor(Number(value) || 0)));
  state.seed = seed;
  $("seed").value = String(seed);
  regenerate();
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
  regenerate();
}

function rerollClass() {
  setClassSeeds({ ...state.classSeeds, [state.current]: randomSeed() });
}

// The panel's controls; `changed` is called whenever the style changes.
export function wireStyle(changed) {
  regenerate = changed;
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
}
