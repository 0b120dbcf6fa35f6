// One long-lived model runner for validate/runners/node.py:
//   node runner.mjs node|wasm REPLY_FD
// `node`: onnxruntime-node (native CPU kernels); `wasm`: onnxruntime-web's WebAssembly
// backend, the kernels a browser runs, on one thread.
//
// Protocol. Requests come on stdin, replies go to file descriptor REPLY_FD (not stdout, so
// that nothing a library prints can corrupt a reply). Each message is one JSON line, then
// the raw little-endian bytes of the tensors it lists ({name, dtype, shape, nbytes}), in
// order. Requests: {op: "load", path | nbytes, threads}, {op: "run", inputs, outputs, batch},
// {op: "time", inputs, plan}, {op: "exit"}. Replies: {ok: true, ...} or
// {ok: false, error (one line), detail (the whole message)}.
// Everything is synchronous except the model's own promises: one request at a time.

import fs from 'node:fs';
import { performance } from 'node:perf_hooks';

import * as core from '../web/core.mjs';

const [backend, replyFdText] = process.argv.slice(2);
const replyFd = Number(replyFdText);
const sleeper = new Int32Array(new SharedArrayBuffer(4));

function retrying(fn) {
  for (;;) {
    try {
      return fn();
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err;
      Atomics.wait(sleeper, 0, 0, 1);  // a non-blocking pipe with nothing ready: wait 1 ms
    }
  }
}

class Input {
  constructor(fd) {
    this.fd = fd;
    this.pending = Buffer.alloc(0);
  }

  more() {
    const chunk = Buffer.allocUnsafe(1 << 16);
    const n = retrying(() => fs.readSync(this.fd, chunk, 0, chunk.length, null));
    if (n === 0) return false;
    this.pending = Buffer.concat([this.pending, chunk.subarray(0, n)]);
    return true;
  }

  line() {
    let end;
    while ((end = this.pending.indexOf(10)) < 0) if (!this.more()) return null;
    const text = this.pending.subarray(0, end).toString('utf8');
    this.pending = this.pending.subarray(end + 1);
    return text;
  }

  // Into a fresh ArrayBuffer, so that every typed array over it is aligned.
  bytes(n) {
    const out = new Uint8Array(new ArrayBuffer(n));
    let done = Math.min(n, this.pending.length);
    out.set(this.pending.subarray(0, done));
    this.pending = this.pending.subarray(done);
    while (done < n) {
      const k = retrying(() => fs.readSync(this.fd, out, done, n - done, null));
      if (k === 0) throw new Error('input closed in the middle of a tensor');
      done += k;
    }
    return out.buffer;
  }
}

function writeAll(bytes) {
  let done = 0;
  while (done < bytes.length) {
    done += retrying(() => fs.writeSync(replyFd, bytes, done, bytes.length - done));
  }
}

function reply(header, tensors = []) {
  writeAll(Buffer.from(JSON.stringify(header) + '\n'));
  for (const t of tensors) writeAll(core.bytesOf(t.data));
}

async function loadOrt() {
  const mod = await import(backend === 'node' ? 'onnxruntime-node' : 'onnxruntime-web');
  const ort = mod.InferenceSession ? mod : mod.default;
  ort.env.logLevel = 'error';
  if (backend === 'wasm') {
    // One thread: the figure a browser page gets without cross-origin isolation, and
    // deterministic; no worker threads to start.
    ort.env.wasm.numThreads = 1;
  }
  return ort;
}

function sessionOptions(threads) {
  const common = { graphOptimizationLevel: 'all', logSeverityLevel: 3 };
  if (backend === 'node') {
    return { ...common, executionProviders: ['cpu'], intraOpNumThreads: threads,
             interOpNumThreads: 1, executionMode: 'sequential' };
  }
  return { ...common, executionProviders: ['wasm'] };
}

function readTensors(input, specs) {
  const feeds = {};
  for (const s of specs) {
    const data = core.typedArray(s.dtype, input.bytes(s.nbytes));
    feeds[s.name] = { dtype: s.dtype, shape: s.shape, data };
  }
  return feeds;
}

async function main() {
  const input = new Input(0);
  let ort;
  try {
    ort = await loadOrt();
  } catch (err) {
    reply({ ok: false, unavailable: true, error: core.oneLine(err), detail: String(err) });
    return;
  }
  const versions = { ...(ort.env.versions || {}), node: process.versions.node };
  reply({ ok: true, versions });
  let session = null;
  for (;;) {
    const line = input.line();
    if (line === null) break;
    const req = JSON.parse(line);
    // Read every tensor of the request before anything can fail, so the stream stays in step.
    const feeds = req.inputs ? readTensors(input, req.inputs) : null;
    const model = req.op === 'load' && req.nbytes !== undefined
      ? new Uint8Array(input.bytes(req.nbytes)) : null;
    try {
      if (req.op === 'exit') break;
      if (req.op === 'load') {
        // onnxruntime-node reads the file itself (external data too); the WebAssembly build
        // gets the bytes.
        const source = model
          || (backend === 'node' ? req.path : new Uint8Array(fs.readFileSync(req.path)));
        if (session) await session.release();
        session = await ort.InferenceSession.create(source, sessionOptions(req.threads));
        reply({ ok: true, ...core.describe(session) });
      } else if (req.op === 'run') {
        const out = await core.run(ort, session, feeds, { batch: req.batch, outputs: req.outputs });
        const tensors = Object.entries(out).map(([name, t]) => ({ name, ...t }));
        const specs = tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape,
                                            nbytes: t.data.byteLength }));
        reply({ ok: true, outputs: specs }, tensors);
      } else if (req.op === 'time') {
        const times = await core.time(ort, session, feeds, req.plan, () => performance.now(),
                                      backend === 'wasm');
        reply({ ok: true, times });
      } else {
        reply({ ok: false, error: `unknown request ${req.op}` });
      }
    } catch (err) {
      reply({ ok: false, error: core.oneLine(err), detail: String((err && err.stack) || err) });
    }
  }
  if (session) await session.release();
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(`runner.mjs: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
