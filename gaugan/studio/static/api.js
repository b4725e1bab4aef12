// The API client: every request the page makes to the studio server (docs/ARCHITECTURE.md
// "Studio"). Requests carry this page's id, so that the server's queue replaces an older
// request of this page still waiting with its newer one.

import { toast } from "./page.js";
import { decodePng } from "./png.js";

// getRandomValues, not randomUUID: pages served beyond loopback are not secure contexts.
const CLIENT_ID = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0"))
  .join("");
const CLIENT_HEADERS = { "X-Studio-Client": CLIENT_ID };

// The model: dataset, size, classes and colours, what the style controls can do.
export async function fetchInfo() {
  const response = await fetch("api/info");
  return response.json();
}

// A photo for the maps and style in `form`; the response as it comes (409, 429 and errors too).
export function postGenerate(form, signal) {
  return fetch("api/generate", { method: "POST", body: form, signal, headers: CLIENT_HEADERS });
}

// A file to api/label, api/instance or api/segment -> the map the server sends back, decoded.
export async function postFile(url, field, file) {
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

export function serverMilliseconds(response) {
  const match = /dur=([0-9.]+)/.exec(response.headers.get("Server-Timing") || "");
  return match ? Number(match[1]) : null;
}

export function showNotes(response) {
  const notes = JSON.parse(response.headers.get("X-Studio-Notes") || "[]");
  const relevant = notes.filter((note) => !note.startsWith("no instance map"));
  if (relevant.length) toast(relevant.join("; "));
}

export async function errorText(response) {
  try {
    return (await response.json()).error;
  } catch {
    return `HTTP ${response.status}`;
  }
}
