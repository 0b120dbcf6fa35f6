// The web demo, and the hook `python -m validate` drives in a headless browser: one page code.
//
// Opened normally, it loads models.json (relative links to the ONNX files) and samples.json
// (Fashion-MNIST test images with their labels), runs every model on them with
// onnxruntime-web (WebAssembly) and shows each prediction. Opened with `?harness`, it only
// sets `window.harness`, which the validator's browser runner calls to run any ONNX model
// (validate/runners/browser.py); the model code is core.mjs in both cases.

import * as ort from './ort/ort.wasm.min.mjs';
import * as core from './core.mjs';

// One thread: no worker threads, the same answer on every page load. (Several threads need
// a cross-origin isolated page; onnxruntime-web falls back to one without it anyway.)
ort.env.wasm.numThreads = 1;
ort.env.logLevel = 'error';

const SESSION_OPTIONS = { executionProviders: ['wasm'], graphOptimizationLevel: 'all' };

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.arrayBuffer();
}

// -- the validator's hook ----------------------------------------------------------------

function makeHarness() {
  let session = null;
  const feedsFrom = async (inputs) => {
    const feeds = {};
    for (const s of inputs) {
      const data = core.typedArray(s.dtype, await fetchBytes(s.url));
      feeds[s.name] = { dtype: s.dtype, shape: s.shape, data };
    }
    return feeds;
  };
  return {
    versions: { ...ort.env.versions, userAgent: navigator.userAgent, crossOriginIsolated },
    async load(url) {
      if (session) await session.release();
      session = null;
      const bytes = new Uint8Array(await fetchBytes(url));
      session = await ort.InferenceSession.create(bytes, SESSION_OPTIONS);
      return core.describe(session);
    },
    // Inputs come from the validator's server by URL; outputs go back to it by POST.
    async run({ inputs, outputs, batch, upload }) {
      const out = await core.run(ort, session, await feedsFrom(inputs), { batch, outputs });
      const specs = [];
      for (const [i, [name, t]] of Object.entries(out).entries()) {
        const url = `${upload}/${i}`;
        // A Blob body: Chromium uploads a typed array body ~30x slower (2.5 s for 31 MB).
        const body = new Blob([core.bytesOf(t.data)]);
        const response = await fetch(url, { method: 'POST', body });
        if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
        specs.push({ name, dtype: t.dtype, shape: t.shape, nbytes: t.data.byteLength, url });
      }
      return specs;
    },
    async time({ inputs, plan }) {
      return core.time(ort, session, await feedsFrom(inputs), plan, () => performance.now(), true);
    },
  };
}

// -- the demo ------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, attrs);
  node.append(...children);
  return node;
}

function thumbnail(pixels) {
  const canvas = el('canvas', { width: 28, height: 28, className: 'digit' });
  const ctx = canvas.getContext('2d');
  const image = ctx.createImageData(28, 28);
  pixels.forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
  ctx.putImageData(image, 0, 0);
  return canvas;
}

async function demo() {
  const status = document.getElementById('status');
  try {
    const config = await (await fetch('models.json')).json();
    const samples = await (await fetch('samples.json')).json();
    const n = samples.labels.length;
    // The ONNX contract: float32 [batch, 1, 28, 28], NCHW, pixel / 255.
    const pixels = new Float32Array(n * 784);
    samples.pixels.forEach((img, i) => img.forEach((v, j) => { pixels[i * 784 + j] = v / 255; }));
    const image = { dtype: 'float32', shape: [n, 1, 28, 28], data: pixels };
    const result = { models: {}, labels: samples.labels, indices: samples.indices };
    for (const [model, url] of Object.entries(config.models)) {
      status.textContent = `loading ${model} (${url}) …`;
      const session = await ort.InferenceSession.create(url, SESSION_OPTIONS);
      const t0 = performance.now();
      const feeds = { [config.input]: image };
      const out = await core.run(ort, session, feeds, { outputs: [config.output] });
      const ms = performance.now() - t0;
      const probs = out[config.output].data;
      const predicted = [], confidence = [];
      for (let i = 0; i < n; i++) {
        const row = Array.from(probs.subarray(i * 10, i * 10 + 10));
        const best = row.indexOf(Math.max(...row));
        predicted.push(best);
        confidence.push(row[best]);
      }
      const correct = predicted.filter((p, i) => p === samples.labels[i]).length;
      result.models[model] = { predicted, confidence, correct, ms };
    }
    render(config, samples, result);
    status.textContent = Object.entries(result.models).map(
      ([m, r]) => `${m}: ${r.correct}/${n} correct (${r.ms.toFixed(1)} ms for ${n} images)`,
    ).join(' · ');
    window.demoResult = result;  // for automated checks
  } catch (err) {
    status.textContent = `error: ${core.oneLine(err)}`;
    status.className = 'error';
    window.demoResult = { error: core.oneLine(err) };
  }
}

function render(config, samples, result) {
  const models = Object.keys(result.models);
  const head = el('tr', {}, el('th', {}, 'image'), el('th', {}, 'label'),
                  ...models.map((m) => el('th', {}, m)));
  const rows = samples.labels.map((label, i) => el('tr', {},
    el('td', {}, thumbnail(samples.pixels[i])),
    el('td', {}, config.class_names[label]),
    ...models.map((m) => {
      const r = result.models[m];
      const ok = r.predicted[i] === label;
      return el('td', { className: ok ? 'ok' : 'wrong' },
                `${config.class_names[r.predicted[i]]} (${(100 * r.confidence[i]).toFixed(1)}%)`);
    })));
  document.getElementById('results').append(el('thead', {}, head), el('tbody', {}, ...rows));
}

if (new URLSearchParams(location.search).has('harness')) {
  window.harness = makeHarness();
} else {
  demo();
}
