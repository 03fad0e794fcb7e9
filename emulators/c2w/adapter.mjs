// The c2w adapter: runs a WASI command module (bochs.wasm and a pyapptron x86_64
// guest, or a user's container2wasm output) in a Web Worker (worker.mjs beside
// this file) and turns it into byte channels for pyapptron, with the same
// `start(options, sinks)` as every emulator adapter.
//
// Input reaches the worker through SharedArrayBuffer rings, so the page must be
// cross-origin isolated (COOP + COEP headers): without them start() fails with
// an error named "NotIsolated", which Python turns into pyapptron.NotIsolated.

import { checkSha256, gunzipSegments, gzipSegments, snapshotError } from "../common/snapshot.mjs";
import { LayerStore } from "../common/persist_store.mjs";

const RING_DATA = 16;
// Frames for the guest not yet taken by its card (beyond it they wait in `pending`).
const NET_RING_BYTES = 1 << 20;

class Ring {
  constructor(size) {
    this.sab = new SharedArrayBuffer(RING_DATA + size);
    this.ctl = new Int32Array(this.sab, 0, 3);
    this.data = new Uint8Array(this.sab, RING_DATA);
    this.pending = []; // bytes the ring had no room for yet, in order
  }
  free() { return this.data.length - ((Atomics.load(this.ctl, 0) - Atomics.load(this.ctl, 1)) | 0); }
  // Copies as much as fits; returns how many bytes were taken.
  put(bytes) {
    const n = Math.min(bytes.length, this.free());
    if (n <= 0) return 0;
    const w = Atomics.load(this.ctl, 0);
    const mask = this.data.length - 1;
    const start = w & mask;
    const first = Math.min(n, this.data.length - start);
    this.data.set(bytes.subarray(0, first), start);
    if (n > first) this.data.set(bytes.subarray(first, n), 0);
    Atomics.store(this.ctl, 0, (w + n) | 0);
    return n;
  }
}

function notIsolated() {  // the name is the pyapptron error class (pyapptron._browser.JS_ERRORS)
  return Object.assign(new Error(
    "this page is not cross-origin isolated, so the c2w emulator cannot share memory " +
    "with its worker. Serve the page with the headers 'Cross-Origin-Opener-Policy: same-origin' and " +
    "'Cross-Origin-Embedder-Policy: require-corp' (python -m pyapptron serve sends them)."), { name: "NotIsolated" });
}

export async function start(options, sinks) {
  if (!globalThis.crossOriginIsolated || typeof SharedArrayBuffer === "undefined") throw notIsolated();
  const { worker_url, shim_url, args, env, preopens, channels, stderr, ring_bytes, hostchan, network, state } = options;
  // URLs are the page's: the worker would resolve them against its own script.
  const pageUrl = (u) => new URL(u, globalThis.location.href).href;
  // A module in chunks is put together here, in order (the page can read any of its
  // own URLs, blob: ones included), and handed over without a copy.
  const wasm = typeof options.wasm === "string" ? pageUrl(options.wasm)
    : Array.isArray(options.wasm) ? await joinChunks(options.wasm.map(pageUrl)) : options.wasm;
  const files = {};
  for (const [path, v] of Object.entries(options.files || {})) {
    files[path] = typeof v === "string" ? pageUrl(v) : v instanceof Uint8Array ? v : { ...v, url: pageUrl(v.url) };
  }
  const lazy = {};
  for (const [path, spec] of Object.entries(options.lazy || {})) lazy[path] = { ...spec, base: pageUrl(spec.base) };
  // The persistent layers' store (boot(persist=...)): held from the start, so that a
  // second machine on it fails at once (PersistLocked). Python fills it through the
  // guest agent (pyapptron/persist_guest.py): the guest keeps its own files.
  const layerStore = options.persist ? await LayerStore.open(options.persist.store) : null;
  const timings = {};
  const t0 = performance.now();
  const doorbell = new Int32Array(new SharedArrayBuffer(4));
  const rings = {};
  // Each run of the module gets fresh rings (a restore's worker must not see what the
  // last one left half read).
  const freshRings = () => {
    const spec = [];
    for (const [name, ch] of Object.entries(channels)) {
      const ring = ch.in === undefined ? null : (rings[name] = new Ring((ring_bytes && ring_bytes[name]) || 65536));
      spec.push({ name, in: ch.in, out: ch.out, blocking: !!ch.blocking, ring: ring ? ring.sab : undefined });
    }
    if (network) rings.net = new Ring(NET_RING_BYTES);
    return spec;
  };
  let spec = freshRings();
  // Bytes the rings had no room for wait here, in order, until the worker reads.
  let retry = null;
  let stopped = false;
  const pump = () => {
    retry = null;
    let waiting = false;
    for (const ring of Object.values(rings)) {
      while (ring.pending.length) {
        const head = ring.pending[0];
        const n = ring.put(head);
        if (n < head.length) { ring.pending[0] = head.subarray(n); waiting = true; break; }
        ring.pending.shift();
      }
      if (ring.closing && !ring.pending.length) Atomics.store(ring.ctl, 2, 1);
    }
    Atomics.add(doorbell, 0, 1);
    Atomics.notify(doorbell, 0);
    if (waiting && !stopped) retry = setTimeout(pump, 2);
  };
  const queue = (ring, bytes) => {
    if (stopped) return;
    if (ring.pending.length) ring.pending.push(bytes);
    else {
      const n = ring.put(bytes);
      if (n < bytes.length) ring.pending.push(bytes.subarray(n));
    }
    if (!retry) pump();
  };
  // The guest's network card (options.network): its frames go to the page's network
  // stack, the one the v86 engine runs (v86/network.mjs), started beside the worker;
  // frames for the guest go into a ring, each after its u16 length.
  let net = null;
  let netStarting = null;
  const early = [];  // the guest's frames and address from before the stack was up
  if (network) {
    const stackOptions = { ...network, libv86_url: pageUrl(network.libv86_url), wasm_path: pageUrl(network.wasm_path) };
    netStarting = import(pageUrl(network.stack_url)).then(({ frameNetwork }) => frameNetwork(stackOptions, (frame) => {
      if (frame.length > 0xffff) return;  // no ethernet frame is: the ring's length field could not say it
      const record = new Uint8Array(2 + frame.length);
      record[0] = frame.length & 0xff;
      record[1] = frame.length >> 8;
      record.set(frame, 2);
      queue(rings.net, record);
    }));
    netStarting.catch(() => {});  // (awaited below; a failure before then is not unhandled)
  }
  const toStack = (m) => {
    if (!net) early.push(m);
    else if (m.type === "net") net.send(m.data);
    else net.setMac(m.mac);
  };
  // Everything a stopped machine leaves behind: the worker, the relay's socket.
  const teardown = () => {
    stopped = true;
    if (layerStore) layerStore.close();
    if (retry) clearTimeout(retry);
    if (worker) worker.terminate();
    if (launching) launching(new Error("the emulator was stopped while it started"));
    if (saving) { saving.reject(new Error("the emulator was stopped while its state was saved")); saving = null; }
    const closing = net ? net.destroy() : netStarting ? netStarting.then((n) => n.destroy(), () => {}) : null;
    net = null;
    netStarting = null;
    return closing;
  };
  // The machine's state (options.state, Bochs's patch 0012): the page asks through a
  // shared word; the worker posts the files. A snapshot restores into a new worker.
  let control = null;   // Int32Array [1]: 1 = save now (one per run of the module)
  let saving = null;    // { resolve, reject } of the save in progress
  let launching = null; // rejects the start in progress (a stop or a failure ends it)
  const logTail = [];
  let logBytes = 0;
  const keepLog = (data) => {
    logTail.push(data);
    logBytes += data.length;
    while (logBytes > 65536 && logTail.length > 1) logBytes -= logTail.shift().length;
  };
  const logText = () => new TextDecoder().decode(concat(logTail));
  let worker = null;
  let restoring = false;

  // One run of the module: a new worker (from a saved state, with `restore`).
  const launch = async (restore) => {
    worker = new Worker(worker_url, { type: "module" });
    const launched = performance.now();
    control = new Int32Array(new SharedArrayBuffer(4));
    let firstOutput = true;
    let readyResolve, readyReject;
    // Ready: the module runs; from a saved state, once Bochs has read it (a state it
    // cannot use fails the start, not a later command).
    const ready = new Promise((res, rej) => { readyResolve = res; readyReject = rej; });
    launching = readyReject;
    const ended = (why) => {
      if (saving) { saving.reject(new Error(`the machine stopped while its state was saved: ${why}`)); saving = null; }
    };
    const mine = worker;
    worker.onmessage = (ev) => {
      const m = ev.data;
      if (stopped || worker !== mine) return;
      if (m.type === "out") {
        if (firstOutput) { timings.first_output = (performance.now() - launched) / 1000; firstOutput = false; }
        if (m.name === "console") sinks.console(m.data);
        else if (m.name === "agent") sinks.agent(m.data);
        else keepLog(m.data);
      } else if (m.type === "net" || m.type === "net-mac") {
        toStack(m);
      } else if (m.type === "restored") {
        timings.restore = m.ms / 1000;  // Bochs's start from the state, to its first poll
        readyResolve();
      } else if (m.type === "state") {
        if (saving) { saving.resolve(m); saving = null; }
      } else if (m.type === "lazy") {
        // what the guest's reads of lazily loaded files fetched so far
        timings.lazy_chunks = m.chunks;
        timings.lazy_bytes = m.bytes;
        timings.lazy_fetch = m.ms / 1000;
      } else if (m.type === "ready") {
        timings.fetch = m.fetchMs / 1000;
        timings.compile = m.compileMs / 1000;
        timings.ready = (performance.now() - launched) / 1000;
        if (!restore) readyResolve();
      } else if (m.type === "exit") {
        readyReject(new Error(`the emulator exited (status ${m.code}) as it started; its log: ${logText().slice(-1500)}`));
        ended(`exit status ${m.code}`);
        teardown();
        if (sinks.exit) sinks.exit(m.code, logText());
      } else if (m.type === "error") {
        readyReject(new Error(m.text));
        ended(m.text);
        const wasRunning = !stopped;
        teardown();
        if (wasRunning && sinks.exit) sinks.exit(-1, logText() + "\n" + m.text);
      }
    };
    worker.onerror = (e) => {
      const error = new Error(`the c2w worker failed: ${e.message || e}`);
      readyReject(error);
      ended(error.message);
    };
    const transfer = Array.isArray(options.wasm) && !restore ? [wasm.buffer] : [];
    if (restore) transfer.push(restore.buffer);
    // A restore does not read what only a cold boot loads (the kernel, the initrd).
    const skip = new Set(restore && state ? state.skip_on_restore || [] : []);
    const launchFiles = Object.fromEntries(Object.entries(files).filter(([p]) => !skip.has(p)));
    worker.postMessage({ type: "start", shimUrl: shim_url, wasm, env, files: launchFiles, preopens, channels: spec,
                         args,
                         doorbell: doorbell.buffer, stderr: stderr || "log", hostchan: hostchan || null, lazy,
                         net: rings.net ? { ring: rings.net.sab } : null,
                         state: state ? { control: control.buffer, keep: state.keep || [] } : null,
                         restore: restore ? restore.state : null },
                       transfer);
    try {
      await ready;
    } finally {
      launching = null;
    }
  };

  try {
    const unpacking = performance.now();
    const restore = options.resume ? await unpackState(options.resume, files, lazy, state) : null;
    options.resume = null;  // its buffer is not needed any more
    if (restore) timings.unpack = (performance.now() - unpacking) / 1000;
    await launch(restore);
    if (netStarting) {
      net = await netStarting;
      for (const m of early.splice(0)) toStack(m);
    }
  } catch (e) {
    await teardown();
    throw e;
  }
  return {
    timings,
    // undefined, not null, when absent: Pyodide turns undefined into None, null into JsNull.
    layerStore: layerStore ?? undefined,
    log() { return logText(); },
    send(channel, data) {
      if (stopped) return;
      const ring = rings[channel];
      if (!ring) throw new Error(`unknown channel ${channel}`);
      const bytes = new Uint8Array(data); // a copy: the caller's buffer may be reused
      queue(ring, bytes);
      // A command typed at the terminal may change the persisted files: Python syncs
      // after a quiet spell (the guest's writes cannot be seen from here).
      if (channel === "console" && layerStore && sinks.persist_changed && bytes.includes(13)) sinks.persist_changed();
    },
    // End of input on a channel: the module's reads past what was sent return EOF.
    close(channel) {
      const ring = rings[channel];
      if (ring) { ring.closing = true; if (!retry) pump(); }
    },
    // The machine's state, packed and gzip'd: {payload: Uint8Array, stateBytes, seconds}.
    async saveState() {
      if (stopped) throw new Error("the emulator was stopped");
      if (!state) throw new Error("this module cannot save its state");
      if (saving) throw new Error("a save of this machine's state is already running");
      const started = performance.now();
      const saved = await new Promise((resolve, reject) => {
        saving = { resolve, reject };
        Atomics.store(control, 0, 1);
        Atomics.add(doorbell, 0, 1);  // a guest asleep in poll_oneoff wakes to poll
        Atomics.notify(doorbell, 0);
      });
      if (!saved.ok) throw new Error(`Bochs could not save the machine's state; its log: ${logText().slice(-800)}`);
      const { parts, size } = packState(saved);
      const payload = await gzipSegments(parts);  // hundreds of MB: in parallel
      return { payload, stateBytes: size, seconds: (performance.now() - started) / 1000 };
    },
    // Put the machine back to a snapshot: Bochs restores only at start, so a new worker
    // starts from it (the console, the network stack and the rings' owners stay).
    async restoreState(snapshot) {
      if (stopped) throw new Error("the emulator was stopped");
      if (restoring) throw new Error("a restore of this machine is already running");
      restoring = true;
      try {
        // A damaged snapshot, or one of other disks, fails here, the machine untouched.
        const restore = await unpackState(snapshot, files, lazy, state);
        const old = worker;
        worker = null;
        old.terminate();
        if (saving) { saving.reject(new Error("the machine was restored while its state was saved")); saving = null; }
        spec = freshRings();
        try {
          await launch(restore);
        } catch (e) {  // the old machine is gone and the new one did not start: stopped
          const wasRunning = !stopped;
          await teardown();
          if (wasRunning && sinks.exit) sinks.exit(-1, `${logText()}\n${e.message || e}`);
          throw e;
        }
      } finally {
        restoring = false;
      }
    },
    async stop() {
      await teardown();
    },
  };
}

// ---- a saved state as one payload ---------------------------------------------------
// MAGIC, u32 little-endian length of the JSON index, the index, then the bytes it lists
// in its order: Bochs's files, the lazily loaded disks' written chunks, the kept files.
const STATE_MAGIC = new TextEncoder().encode("PYC2WST1");

function packState(saved) {
  const index = { files: [], lazy: {}, whole: {} };
  const data = [];
  for (const { name, data: bytes } of saved.files) { index.files.push([name, bytes.length]); data.push(bytes); }
  for (const [path, chunks] of Object.entries(saved.lazy)) {
    index.lazy[path] = chunks.map(([i, bytes]) => { data.push(bytes); return [i, bytes.length]; });
  }
  for (const [path, bytes] of Object.entries(saved.whole)) { index.whole[path] = bytes.length; data.push(bytes); }
  const json = new TextEncoder().encode(JSON.stringify(index));
  const head = new Uint8Array(STATE_MAGIC.length + 4);
  head.set(STATE_MAGIC);
  new DataView(head.buffer).setUint32(STATE_MAGIC.length, json.length, true);
  const parts = [head, json, ...data];
  return { parts, size: parts.reduce((n, p) => n + p.length, 0) };
}

// A snapshot ({payload, compression, sha256}) -> { state (the worker's `restore`), buffer },
// checked against this machine's files and lazy disks.
async function unpackState(snapshot, files, lazy, stateOptions) {
  if (snapshot.compression && snapshot.compression !== "gzip") {
    throw snapshotError(`its state is ${snapshot.compression}-compressed; the c2w engine reads gzip only`);
  }
  await checkSha256(snapshot.payload, snapshot.sha256);
  const buffer = await gunzipSegments(snapshot.payload);
  const bytes = new Uint8Array(buffer);
  const magicOk = bytes.length >= STATE_MAGIC.length + 4 && STATE_MAGIC.every((b, i) => bytes[i] === b);
  if (!magicOk) throw snapshotError("its state is not a c2w machine's (no c2w state header)");
  const length = new DataView(buffer).getUint32(STATE_MAGIC.length, true);
  let at = STATE_MAGIC.length + 4;
  let index;
  try {
    index = JSON.parse(new TextDecoder().decode(bytes.subarray(at, at + length)));
  } catch (e) {
    throw snapshotError("its c2w state index is damaged");
  }
  at += length;
  const take = (n) => {
    if (!Number.isInteger(n) || n < 0 || at + n > bytes.length) throw snapshotError("its c2w state is cut short");
    const view = bytes.subarray(at, at + n);
    at += n;
    return view;
  };
  const state = { files: {}, lazy: {}, whole: {} };
  for (const [name, n] of index.files || []) state.files[name] = take(n);
  for (const [path, chunks] of Object.entries(index.lazy || {})) state.lazy[path] = chunks.map(([i, n]) => [i, take(n)]);
  for (const [path, n] of Object.entries(index.whole || {})) state.whole[path] = take(n);
  if (!state.files.config || !state.files["pyapptron.ram"]) throw snapshotError("its c2w state lacks Bochs's files");
  const badName = Object.keys(state.files).find((name) => !/^[A-Za-z0-9._-]+$/.test(name) || name.startsWith(".."));
  if (badName !== undefined) throw snapshotError(`its c2w state names a file ${JSON.stringify(badName)}`);
  const keep = new Set((stateOptions && stateOptions.keep) || []);
  const stranger = Object.keys(state.lazy).find((p) => !(p in lazy))
    || Object.keys(state.whole).find((p) => !keep.has(p) || !(p in files));
  if (stranger !== undefined) throw snapshotError(`its c2w state has a disk this machine does not: ${stranger}`);
  return { state, buffer };
}

async function joinChunks(urls) {
  const parts = await Promise.all(urls.map(async (u) => {
    const r = await fetch(u);
    if (!r.ok) throw new Error(`cannot fetch the module chunk ${u}: HTTP ${r.status}`);
    return new Uint8Array(await r.arrayBuffer());
  }));
  return concat(parts);
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}
