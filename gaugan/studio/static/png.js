// PNG: 8-bit palette / greyscale and 16-bit greyscale, with the browser's own zlib. The maps
// the page sends and saves are encoded here byte for byte, and the maps the server sends back
// are decoded here (the PNGs it writes; nothing else is read).

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
export async function encodePng(width, height, samples, palette) {
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
export async function decodePng(buffer) {
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
