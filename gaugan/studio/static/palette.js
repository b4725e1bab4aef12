// The palette: the dataset's classes with their colours, searchable by name or index; the
// class chosen is the one every tool paints with.

import { $, state } from "./page.js";

export function selectClass(index) {
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

export function buildPalette() {
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

export function classNamed(...names) {
  for (const name of names) {
    const found = state.info.classes.find((entry) => entry.name === name);
    if (found) return found.index;
  }
  return null;
}
