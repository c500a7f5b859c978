// The optional in-browser decoder: the serving model's prompt encoder + mask decoder as
// ONNX (/ui/models/decoder.onnx), run by onnxruntime-web's WebAssembly build (/ui/ort/),
// fed the cached embedding that /embed returns as a float16 .npy (int8 records come
// dequantised). Every step mirrors the gateway: prompts scaled to the 1024 frame and
// padded with -1, candidates ordered by predicted IoU, bicubic upsampling (PyTorch's,
// align_corners=False) straight to the image size, mask = logits >= 0, COCO
// compressed RLE.
const IMG_SIZE = 1024, MAX_POINTS = 6, LOW_RES = 256;

let ort = null;

export async function loadDecoder(headers) {
  ort = await import("/ui/ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = "/ui/ort/";
  // threads need cross-origin isolation (the gateway sends COOP/COEP with the page)
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const response = await fetch("/ui/models/decoder.onnx", { headers });
  if (!response.ok) throw new Error(`decoder.onnx: HTTP ${response.status}`);
  const model = new Uint8Array(await response.arrayBuffer());
  const session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
  return { session, threads: ort.env.wasm.numThreads };
}

// float16 bit patterns → float32, once
const HALF = (() => {
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h += 1) {
    const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
    if (exponent === 0) table[h] = sign * fraction * 2 ** -24;
    else if (exponent === 31) table[h] = fraction ? NaN : sign * Infinity;
    else table[h] = sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }
  return table;
})();

// a little-endian float16 or float32 .npy (numpy's format, versions 1-3) → Float32Array
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  if (bytes[0] !== 0x93 || String.fromCharCode(...bytes.slice(1, 6)) !== "NUMPY") throw new Error("not a .npy file");
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.slice(start, start + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  if (/'fortran_order':\s*True/.test(header)) throw new Error(".npy in Fortran order");
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLength;
  const data = new Float32Array(count);
  if (descr === "<f2") {
    for (let i = 0; i < count; i += 1) data[i] = HALF[view.getUint16(offset + 2 * i, true)];
  } else if (descr === "<f4") {
    for (let i = 0; i < count; i += 1) data[i] = view.getFloat32(offset + 4 * i, true);
  } else {
    throw new Error(`unsupported .npy dtype ${descr}`);
  }
  return { data, shape };
}

// the reference's prompt layout: box corners first (labels 2, 3), then points; padding -1
function promptTensors(prompt, width, height) {
  const points = new Float32Array(MAX_POINTS * 2).fill(-1);
  const labels = new Float32Array(MAX_POINTS).fill(-1);
  const sx = IMG_SIZE / width, sy = IMG_SIZE / height;
  const all = [];
  if (prompt.box) all.push([prompt.box[0], prompt.box[1], 2], [prompt.box[2], prompt.box[3], 3]);
  (prompt.points || []).forEach(([x, y], n) => all.push([x, y, prompt.labels[n]]));
  all.forEach(([x, y, label], n) => { points[2 * n] = x * sx; points[2 * n + 1] = y * sy; labels[n] = label; });
  return {
    points: new ort.Tensor("float32", points, [1, MAX_POINTS, 2]),
    labels: new ort.Tensor("float32", labels, [1, MAX_POINTS]),
  };
}

// PyTorch's bicubic (A = -0.75, align_corners=False, edge-clamped taps) along one axis:
// for each output index, its four source indices and weights
function cubicTaps(inSize, outSize) {
  const A = -0.75, scale = inSize / outSize;
  const near = (x) => ((A + 2) * x - (A + 3)) * x * x + 1;
  const far = (x) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
  const index = new Int32Array(outSize * 4), weight = new Float64Array(outSize * 4);
  for (let o = 0; o < outSize; o += 1) {
    const source = scale * (o + 0.5) - 0.5, floor = Math.floor(source), t = source - floor;
    const w = [far(t + 1), near(t), near(1 - t), far(2 - t)];
    for (let k = 0; k < 4; k += 1) {
      index[o * 4 + k] = Math.min(Math.max(floor - 1 + k, 0), inSize - 1);
      weight[o * 4 + k] = w[k];
    }
  }
  return { index, weight };
}

function upsampleMask(logits, offset, width, height) {
  const columns = cubicTaps(LOW_RES, width), rows = cubicTaps(LOW_RES, height);
  const wide = new Float64Array(LOW_RES * width);  // rows of the low-res grid, widened
  for (let r = 0; r < LOW_RES; r += 1) {
    const base = offset + r * LOW_RES;
    for (let x = 0; x < width; x += 1) {
      let sum = 0;
      for (let k = 0; k < 4; k += 1) sum += columns.weight[x * 4 + k] * logits[base + columns.index[x * 4 + k]];
      wide[r * width + x] = sum;
    }
  }
  const mask = new Uint8Array(width * height);
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      let sum = 0;
      for (let k = 0; k < 4; k += 1) sum += rows.weight[y * 4 + k] * wide[rows.index[y * 4 + k] * width + x];
      mask[y * width + x] = sum >= 0 ? 1 : 0;
    }
  }
  return mask;
}

// row-major mask → COCO compressed RLE (column-major runs, pycocotools' string form),
// its area and [x, y, w, h] box
export function encodeMask(mask, width, height) {
  const runs = [];
  let value = 0, run = 0, area = 0;
  let x0 = width, y0 = height, x1 = -1, y1 = -1;
  for (let x = 0; x < width; x += 1) {
    for (let y = 0; y < height; y += 1) {
      const m = mask[y * width + x];
      if (m !== value) { runs.push(run); run = 0; value = m; }
      run += 1;
      if (m) {
        area += 1;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  runs.push(run);
  let counts = "";
  runs.forEach((count, i) => {
    let v = i > 2 ? count - runs[i - 2] : count;
    let more = true;
    while (more) {
      let c = v & 0x1f;
      v >>= 5;
      more = c & 0x10 ? v !== -1 : v !== 0;
      if (more) c |= 0x20;
      counts += String.fromCharCode(c + 48);
    }
  });
  const bbox = area ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : [0, 0, 0, 0];
  return { rle: { size: [height, width], counts }, area, bbox };
}

// one prompt → the gateway's candidates: {score, area, bbox, mask: RLE}, best first
export async function decodeInBrowser(session, embedding, prompt, width, height, multimask) {
  const { points, labels } = promptTensors(prompt, width, height);
  const image = new ort.Tensor("float32", embedding.data, embedding.shape);
  const out = await session.run({ image_embeddings: image, points, labels });
  const logits = out.low_res_logits.data, iou = out.iou_predictions.data;
  const tokens = multimask ? [1, 2, 3] : [0];
  tokens.sort((a, b) => iou[b] - iou[a]);  // stable: ties keep token order, as the gateway
  // each candidate's full-size mask is computed when first read (the page shows one)
  return tokens.map((k) => {
    let encoded = null;
    const encode = () => {
      encoded = encoded || encodeMask(upsampleMask(logits, k * LOW_RES * LOW_RES, width, height), width, height);
      return encoded;
    };
    return {
      score: iou[k],
      get mask() { return encode().rle; },
      get area() { return encode().area; },
      get bbox() { return encode().bbox; },
    };
  });
}
