// Model-running code shared by every JavaScript runtime of the toolkit: the Node.js runners
// (onnxruntime-node, onnxruntime-web under Node), the browser runner and the web demo.
// It takes the `ort` module as an argument, so the same code runs against any of them.
// A tensor here is {dtype, shape, data}: an ONNX element type name, a shape (numbers), and a
// typed array in row-major order.

// ONNX element type -> the typed array that holds it. bool travels as one byte per value,
// float16 as its raw 16-bit patterns.
export const ARRAYS = {
  float32: Float32Array, float64: Float64Array, float16: Uint16Array,
  int8: Int8Array, uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array,
  int32: Int32Array, uint32: Uint32Array, int64: BigInt64Array, uint64: BigUint64Array,
  bool: Uint8Array,
};

/** A typed array over `bytes` (an ArrayBuffer or a view) of the given element type. */
export function typedArray(dtype, bytes) {
  const Array_ = ARRAYS[dtype];
  if (!Array_) throw new Error(`element type ${dtype} is not supported by the JavaScript runners`);
  const buffer = bytes instanceof ArrayBuffer ? bytes : bytes.buffer;
  const offset = bytes instanceof ArrayBuffer ? 0 : bytes.byteOffset;
  const length = bytes.byteLength / Array_.BYTES_PER_ELEMENT;
  if (offset % Array_.BYTES_PER_ELEMENT) {  // unaligned view: copy once
    return new Array_(buffer.slice(offset, offset + bytes.byteLength));
  }
  return new Array_(buffer, offset, length);
}

/** The bytes of a typed array, as a Uint8Array view (no copy). */
export function bytesOf(data) {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function rowSize(shape) {
  return shape.slice(1).reduce((a, b) => a * b, 1);
}

function leading(feeds) {
  const sizes = new Set(Object.values(feeds).map((t) => (t.shape.length ? t.shape[0] : null)));
  return sizes.size === 1 ? [...sizes][0] : null;
}

function toOrt(ort, t) {
  return new ort.Tensor(t.dtype, t.data, t.shape);
}

function fromOrt(tensor) {
  const data = tensor.data;
  // float16 may come back as a Float16Array where the platform has one: keep the raw bits.
  const raw = tensor.type === 'float16' ? new Uint16Array(data.buffer, data.byteOffset, data.length)
    : data;
  return { dtype: tensor.type, shape: [...tensor.dims], data: raw };
}

async function runOnce(ort, session, feeds, outputs) {
  const ortFeeds = {};
  for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrt(ort, t);
  const result = outputs ? await session.run(ortFeeds, outputs) : await session.run(ortFeeds);
  const out = {};
  for (const name of outputs || session.outputNames) out[name] = fromOrt(result[name]);
  return out;
}

function slice(t, start, end) {
  const row = rowSize(t.shape);
  return { dtype: t.dtype, shape: [end - start, ...t.shape.slice(1)],
           data: t.data.subarray(start * row, end * row) };
}

function concat(parts) {
  const first = parts[0];
  const length = parts.reduce((n, p) => n + p.data.length, 0);
  const data = new first.data.constructor(length);
  let offset = 0;
  for (const p of parts) {
    data.set(p.data, offset);
    offset += p.data.length;
  }
  const rows = parts.reduce((n, p) => n + (p.shape.length ? p.shape[0] : 1), 0);
  return { dtype: first.dtype, shape: [rows, ...first.shape.slice(1)], data };
}

/**
 * Run the model on named tensors; returns named tensors (all graph outputs unless `outputs`
 * names some). With `batch`, the leading axis of every input is cut into chunks of that size
 * and the outputs are concatenated, as a deployment that batches requests would do.
 */
export async function run(ort, session, feeds, { batch = null, outputs = null } = {}) {
  const n = leading(feeds);
  if (!batch || n === null || n <= batch) return runOnce(ort, session, feeds, outputs);
  const parts = [];
  for (let i = 0; i < n; i += batch) {
    const chunk = {};
    const end = Math.min(n, i + batch);
    for (const [name, t] of Object.entries(feeds)) chunk[name] = slice(t, i, end);
    parts.push(await runOnce(ort, session, chunk, outputs));
  }
  const out = {};
  for (const name of Object.keys(parts[0])) out[name] = concat(parts.map((p) => p[name]));
  return out;
}

/**
 * Milliseconds per `session.run` call, timed here so that no transport is counted:
 * `plan.warmup` untimed calls, then timed calls until at least `plan.min_runs` calls and
 * `plan.min_seconds`, at most `plan.max_runs` (validate/latency.py's TimingPlan).
 * WebAssembly runs first as baseline code and is optimised once hot (V8's dynamic tiering:
 * the first ~0.5 s of LeNet-5 calls run 2-3x slower), so the WebAssembly runtimes also warm
 * up for `plan.warmup_seconds` (when the plan sets it), else min(1, plan.min_seconds).
 */
export async function time(ort, session, feeds, plan, now = () => performance.now(),
                           wasmWarmup = false) {
  const ortFeeds = {};
  for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrt(ort, t);
  const warmSeconds = !wasmWarmup ? 0
    : (plan.warmup_seconds ?? Math.min(1, plan.min_seconds));
  const warmStart = now();
  for (let i = 0; i < plan.warmup || (now() - warmStart) / 1e3 < warmSeconds; i++) {
    await session.run(ortFeeds);
  }
  const times = [];
  const start = now();
  while (times.length < plan.max_runs
         && (times.length < plan.min_runs || (now() - start) / 1e3 < plan.min_seconds)) {
    const t0 = now();
    await session.run(ortFeeds);
    times.push(now() - t0);
  }
  return times;
}

/** Names, element types and shapes of the session's inputs and outputs. */
export function describe(session) {
  const meta = (names, list) => names.map((name, i) => {
    const m = list ? list[i] : null;
    return { name, type: m && m.isTensor ? m.type : null, shape: m && m.isTensor ? m.shape : null };
  });
  return { inputs: meta(session.inputNames, session.inputMetadata),
           outputs: meta(session.outputNames, session.outputMetadata) };
}

/** The first line of an error's message, shortened: what the report shows. */
export function oneLine(err) {
  const text = String((err && err.message) || err || 'unknown error').trim();
  return (text.split('\n').find((l) => l.trim()) || text).slice(0, 300);
}
