// The demo page: open an image, click or drag, see the mask. Plain browser JavaScript;
// every request goes to this gateway (the same origin), nothing else is loaded.
// With the in-browser decoder installed (make ui-assets), each click is also decoded in
// the page (browser-decoder.js) and both click-to-mask latencies are shown.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  file: null, bitmap: null, imageId: null, width: 0, height: 0, scale: 1, density: 1,
  points: [], box: null, candidates: [], selected: 0, everything: null,
  // the in-browser decoder: its module, ONNX session and the open image's embedding
  browser: null, session: null, embedding: null, source: "server", shown: "server",
  decoderOffered: false, decoderLoading: false, keyRequired: false,
  results: { server: [], browser: [] }, latency: { server: null, browser: null },
};

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function status(text) { $("status").textContent = text; }

async function call(path, options) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...options.headers } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error ? `${body.error.code}: ${body.error.message}` : response.statusText);
    error.code = body.error && body.error.code;
    throw error;
  }
  return body;
}

// COCO compressed RLE (pycocotools' string form) → column-major run lengths → mask
function decodeRle(rle) {
  const [height, width] = rle.size;
  const s = rle.counts;
  const runs = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1; k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  const mask = new Uint8Array(width * height);  // row-major for drawing
  let index = 0;
  runs.forEach((run, n) => {
    if (n % 2 === 1) {
      for (let i = index; i < index + run; i += 1) {
        const column = Math.floor(i / height), row = i % height;
        mask[row * width + column] = 1;
      }
    }
    index += run;
  });
  return { mask, width, height };
}

function maskCanvas(masks) {
  // the masks at the image's resolution, each in its colour
  const canvas = document.createElement("canvas");
  canvas.width = state.width; canvas.height = state.height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(state.width, state.height);
  masks.forEach(({ rle, colour }) => {
    const { mask } = decodeRle(rle);
    for (let i = 0; i < mask.length; i += 1) {
      if (mask[i]) pixels.data.set(colour, i * 4);
    }
  });
  context.putImageData(pixels, 0, 0);
  return canvas;
}

function render() {
  const overlay = $("overlay");
  const context = overlay.getContext("2d");
  context.clearRect(0, 0, overlay.width, overlay.height);
  let masks = [];
  if (state.everything) {
    masks = state.everything.map((m, n) => ({
      rle: m.mask, colour: [(n * 97) % 256, (n * 57 + 80) % 256, (n * 151 + 160) % 256, 130],
    }));
    $("score").textContent = `${state.everything.length} masks`;
  } else if (state.candidates.length) {
    const candidate = state.candidates[state.selected];
    masks = [{ rle: candidate.mask, colour: [47, 111, 237, 140] }];
    $("score").textContent = candidate.score.toFixed(3);
  } else {
    $("score").textContent = "–";
  }
  if (masks.length) {
    context.imageSmoothingEnabled = false;
    context.drawImage(maskCanvas(masks), 0, 0, overlay.width, overlay.height);
  }
  document.querySelectorAll("#candidates button").forEach((button, n) => {
    button.disabled = state.everything !== null || n >= state.candidates.length;
    button.setAttribute("aria-pressed", String(!state.everything && n === state.selected && n < state.candidates.length));
  });
  const hasMask = !state.everything && state.candidates.length > 0;
  $("download-png").disabled = !hasMask;
  $("download-coco").disabled = !hasMask && !state.everything;
  $("clear").disabled = !state.points.length && !state.box && !state.everything;
  overlay.dataset.state = JSON.stringify({
    imageId: state.imageId, width: state.width, height: state.height,
    prompt: currentPrompt(), selected: state.selected, masks: masks.length,
    source: state.everything ? "everything" : state.shown, latency: state.latency,
  });
  const ms = (value) => (value === null ? "–" : `${Math.round(value)} ms`);
  $("latency-server").textContent = ms(state.latency.server);
  $("latency-browser").textContent = ms(state.latency.browser);
  drawMarks();
}

function drawMarks() {
  const marks = $("marks");
  const context = marks.getContext("2d");
  context.setTransform(1, 0, 0, 1, 0, 0);
  context.clearRect(0, 0, marks.width, marks.height);
  context.setTransform(state.density, 0, 0, state.density, 0, 0);  // CSS pixels from here
  const s = state.scale;
  if (state.box) {
    const [x0, y0, x1, y1] = state.box;
    context.strokeStyle = "#ffb000"; context.lineWidth = 2;
    context.strokeRect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s);
  }
  state.points.forEach(({ x, y, label }) => {
    context.beginPath();
    context.arc(x * s, y * s, 5, 0, 2 * Math.PI);
    context.fillStyle = label ? "#19c37d" : "#e5484d";
    context.fill();
    context.strokeStyle = "#fff"; context.stroke();
  });
}

function currentPrompt() {
  const prompt = {};
  if (state.points.length) {
    prompt.points = state.points.map(({ x, y }) => [x, y]);
    prompt.labels = state.points.map(({ label }) => label);
  }
  if (state.box) prompt.box = state.box;
  return prompt;
}

async function embed() {
  const headers = { "Content-Type": state.file.type || "application/octet-stream" };
  if (!state.session) {
    const body = await call("/embed", { method: "POST", body: state.file, headers });
    state.imageId = body.image_id;
    return body;
  }
  // the in-browser decoder needs the embedding itself: the same call, answered as .npy
  const response = await fetch("/embed", {
    method: "POST", body: state.file,
    headers: { ...authHeaders(), ...headers, Accept: "application/x-npy" },
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : response.statusText);
  }
  state.embedding = state.browser.parseNpy(await response.arrayBuffer());
  state.imageId = response.headers.get("X-Image-Id");
  return { image_id: state.imageId, cached: response.headers.get("X-Cached") === "true" };
}

async function decodeHere(prompt, multimask) {
  const started = performance.now();
  const candidates = await state.browser.decodeInBrowser(
    state.session, state.embedding, prompt, state.width, state.height, multimask);
  candidates[0].mask;  // click to mask: the best candidate's full-size mask is part of it
  return { candidates, ms: performance.now() - started };
}

async function segment() {
  if (!state.points.length && !state.box) { state.candidates = []; render(); return; }
  // the server applies SAM's click rule ("auto"); the in-browser decoder the same one
  const multimask = state.points.length === 1 && state.points[0].label === 1 && !state.box;
  const request = () => call("/segment", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ image_id: state.imageId, prompts: [currentPrompt()], multimask: "auto", mask_format: "rle" }),
  });
  status("Segmenting…");
  const prompt = currentPrompt();
  if (state.session && !state.embedding) await embed();  // the decoder became ready since
  // one path after the other: each latency is its own, not the other's wait
  const here = state.session && state.embedding ? await decodeHere(prompt, multimask) : null;
  const started = performance.now();
  let answer;
  try {
    answer = await request();
  } catch (error) {
    if (error.code !== "embedding_not_found") throw error;
    await embed();  // evicted: send the image again, once
    answer = await request();
  }
  const serverMs = performance.now() - started;
  state.everything = null;
  state.results = { server: answer.results[0].candidates, browser: here ? here.candidates : [] };
  state.latency = { server: serverMs, browser: here ? here.ms : null };
  state.selected = 0;
  showSource();
  status(here
    ? `Mask in ${Math.round(here.ms)} ms in the browser, ${Math.round(serverMs)} ms from the server.`
    : `Mask in ${Math.round(serverMs)} ms.`);
}

function showSource() {
  const source = state.source === "browser" && state.results.browser.length ? "browser" : "server";
  state.candidates = state.results[source];
  state.shown = source;
  render();
}

async function everything() {
  status("Finding every object…");
  const started = performance.now();
  const answer = await call("/segment/everything", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ image_id: state.imageId, mask_format: "rle" }),
  });
  state.points = []; state.box = null; state.candidates = [];
  state.results = { server: [], browser: [] };
  state.everything = answer.masks;
  render();
  status(`${answer.masks.length} objects in ${Math.round(performance.now() - started)} ms.`);
}

async function openFile(file) {
  state.file = file;
  state.points = []; state.box = null; state.candidates = []; state.everything = null;
  state.results = { server: [], browser: [] }; state.latency = { server: null, browser: null };
  state.embedding = null;
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  state.bitmap = bitmap;
  state.width = bitmap.width; state.height = bitmap.height;
  $("drop-hint").hidden = true;
  layout();
  guard(startBrowserDecoder)();
  status("Encoding…");
  const started = performance.now();
  const body = await embed();
  $("everything").disabled = false;
  render();
  status(`${body.cached ? "Cached" : "Encoded"} in ${Math.round(performance.now() - started)} ms: click the image.`);
}

// the image fitted to the stage's width and to the window's height below the stage
// (never enlarged), drawn at the screen's pixel density; again on every resize
function layout() {
  if (!state.bitmap) return;
  const stage = $("stage");
  const roomWidth = stage.clientWidth - 4;
  const roomHeight = window.innerHeight - stage.getBoundingClientRect().top - window.scrollY - 16;
  state.scale = Math.min(1, roomWidth / state.width, Math.max(roomHeight, 120) / state.height);
  const width = Math.max(1, Math.round(state.width * state.scale));
  const height = Math.max(1, Math.round(state.height * state.scale));
  state.density = window.devicePixelRatio || 1;
  for (const id of ["image", "overlay", "marks"]) {
    const canvas = $(id);
    canvas.style.width = `${width}px`; canvas.style.height = `${height}px`;
    canvas.width = Math.round(width * state.density);
    canvas.height = Math.round(height * state.density);
  }
  stage.style.height = `${height + 4}px`;
  stage.style.minHeight = "0";  // the drop area's height is for an empty stage only
  const image = $("image").getContext("2d");
  image.imageSmoothingQuality = "high";
  image.drawImage(state.bitmap, 0, 0, $("image").width, $("image").height);
  render();
}

function imagePoint(event) {
  const rect = $("marks").getBoundingClientRect();
  const x = (event.clientX - rect.left) / state.scale, y = (event.clientY - rect.top) / state.scale;
  return [Math.min(Math.max(x, 0), state.width), Math.min(Math.max(y, 0), state.height)];
}

function download(name, blob) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob); link.download = name;
  document.body.append(link); link.click(); link.remove();
}

function coco() {
  const entries = state.everything
    ? state.everything.map((m) => ({ segmentation: m.mask, area: m.area, bbox: m.bbox, score: m.predicted_iou }))
    : [state.candidates[state.selected]].map((c) => ({ segmentation: c.mask, area: c.area, bbox: c.bbox, score: c.score }));
  return {
    images: [{ id: 1, file_name: state.file.name, width: state.width, height: state.height }],
    annotations: entries.map((entry, n) => ({ id: n + 1, image_id: 1, category_id: 1, ...entry })),
    categories: [{ id: 1, name: "object" }],
  };
}

function guard(action) {
  return (...args) => action(...args).catch((error) => status(`Error: ${error.message}`));
}

function setUp() {
  window.addEventListener("resize", layout);
  const marks = document.createElement("canvas");
  marks.id = "marks";
  $("stage").append(marks);
  let start = null;
  marks.addEventListener("contextmenu", (event) => event.preventDefault());
  marks.addEventListener("mousedown", (event) => { if (state.imageId) start = imagePoint(event); });
  marks.addEventListener("mouseup", guard(async (event) => {
    if (!start) return;
    const end = imagePoint(event);
    const dragged = Math.hypot((end[0] - start[0]) * state.scale, (end[1] - start[1]) * state.scale) > 6;
    if (dragged) {
      state.box = [Math.min(start[0], end[0]), Math.min(start[1], end[1]), Math.max(start[0], end[0]), Math.max(start[1], end[1])];
    } else {
      const background = event.button === 2 || event.altKey;
      state.points.push({ x: end[0], y: end[1], label: background ? 0 : 1 });
    }
    start = null;
    await segment();
  }));
  $("file").addEventListener("change", guard(async () => { if ($("file").files[0]) await openFile($("file").files[0]); }));
  const stage = $("stage");
  stage.addEventListener("dragover", (event) => { event.preventDefault(); stage.classList.add("dragging"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
  stage.addEventListener("drop", guard(async (event) => {
    event.preventDefault(); stage.classList.remove("dragging");
    if (event.dataTransfer.files[0]) await openFile(event.dataTransfer.files[0]);
  }));
  document.querySelectorAll("#candidates button").forEach((button) => {
    button.addEventListener("click", () => { state.selected = Number(button.dataset.candidate); render(); });
  });
  $("clear").addEventListener("click", () => {
    state.points = []; state.box = null; state.candidates = []; state.everything = null;
    state.results = { server: [], browser: [] }; render();
  });
  $("everything").addEventListener("click", guard(everything));
  $("download-png").addEventListener("click", () => {
    maskCanvas([{ rle: state.candidates[state.selected].mask, colour: [255, 255, 255, 255] }])
      .toBlob((blob) => download("mask.png", blob), "image/png");
  });
  $("download-coco").addEventListener("click", () => {
    download("masks.json", new Blob([JSON.stringify(coco())], { type: "application/json" }));
  });
  const key = $("api-key");
  key.value = sessionStorage.getItem("esam-api-key") || "";
  key.addEventListener("change", () => {
    sessionStorage.setItem("esam-api-key", key.value);
    guard(startBrowserDecoder)();  // the decoder's weights need the key
  });
  fetch("/ui/config.json").then((r) => r.json()).then((config) => {
    $("key-field").hidden = !config.api_key_required;
    $("model").textContent = config.model;
    state.decoderOffered = config.browser_decoder;
    state.keyRequired = config.api_key_required;
    guard(startBrowserDecoder)();  // at once, or when the key is entered
  });
  document.querySelectorAll("input[name=source]").forEach((radio) => {
    radio.addEventListener("change", () => { state.source = radio.value; state.selected = 0; showSource(); });
  });
}

// loads once; a failure (say, no key yet) lets a later key or image try again
async function startBrowserDecoder() {
  if (!state.decoderOffered || state.session || state.decoderLoading) return;
  if (state.keyRequired && !$("api-key").value.trim()) return;
  const indicator = $("browser-decoder");
  $("paths").hidden = false;
  indicator.dataset.state = "loading";
  indicator.textContent = "loading…";
  state.decoderLoading = true;
  try {
    state.browser = await import("/ui/browser-decoder.js");
    const loaded = await state.browser.loadDecoder(authHeaders());
    state.session = loaded.session;
    indicator.dataset.threads = String(loaded.threads);
  } catch (error) {
    indicator.dataset.state = "failed";
    indicator.textContent = `unavailable (${error.message})`;
    state.browser = null; state.session = null;
    return;
  } finally {
    state.decoderLoading = false;
  }
  state.source = "browser";
  $("source-browser").checked = true;
  indicator.dataset.state = "ready";
  indicator.textContent = `ready (WebAssembly, ${indicator.dataset.threads} thread${indicator.dataset.threads === "1" ? "" : "s"})`;
  if (state.imageId && !state.embedding) await embed();  // an image opened meanwhile
}

setUp();
