// The c2w adapter: runs a WASI command module (bochs.wasm and a pyapptron x86_64
// guest, or a user's container2wasm output) in a Web Worker (worker.mjs beside
// this file) and turns it into byte channels for pyapptron, with the same
// `start(options, sinks)` as every emulator adapter.
//
// Input reaches the worker through SharedArrayBuffer rings, so the page must be
// cross-origin isolated (COOP + COEP headers): without them start() fails with
// an error named "NotIsolated", which Python turns into pyapptron.NotIsolated.

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
  const { worker_url, shim_url, args, env, preopens, channels, stderr, ring_bytes, hostchan, network } = options;
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
  const timings = {};
  const t0 = performance.now();
  const doorbell = new Int32Array(new SharedArrayBuffer(4));
  const rings = {};
  const spec = [];
  for (const [name, ch] of Object.entries(channels)) {
    const ring = ch.in === undefined ? null : (rings[name] = new Ring((ring_bytes && ring_bytes[name]) || 65536));
    spec.push({ name, in: ch.in, out: ch.out, blocking: !!ch.blocking, ring: ring ? ring.sab : undefined });
  }
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
    rings.net = new Ring(NET_RING_BYTES);
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
    if (retry) clearTimeout(retry);
    if (worker) worker.terminate();
    const closing = net ? net.destroy() : netStarting ? netStarting.then((n) => n.destroy(), () => {}) : null;
    net = null;
    netStarting = null;
    return closing;
  };
  let worker = null;
  try {
    worker = new Worker(worker_url, { type: "module" });
  } catch (e) {
    await teardown();
    throw e;
  }
  const logTail = [];
  let logBytes = 0;
  const keepLog = (data) => {
    logTail.push(data);
    logBytes += data.length;
    while (logBytes > 65536 && logTail.length > 1) logBytes -= logTail.shift().length;
  };
  const logText = () => new TextDecoder().decode(concat(logTail));
  let firstOutput = true;
  let readyResolve, readyReject;
  const ready = new Promise((res, rej) => { readyResolve = res; readyReject = rej; });
  worker.onmessage = (ev) => {
    const m = ev.data;
    if (stopped) return;
    if (m.type === "out") {
      if (firstOutput) { timings.first_output = (performance.now() - t0) / 1000; firstOutput = false; }
      if (m.name === "console") sinks.console(m.data);
      else if (m.name === "agent") sinks.agent(m.data);
      else keepLog(m.data);
    } else if (m.type === "net" || m.type === "net-mac") {
      toStack(m);
    } else if (m.type === "lazy") {
      // what the guest's reads of lazily loaded files fetched so far
      timings.lazy_chunks = m.chunks;
      timings.lazy_bytes = m.bytes;
      timings.lazy_fetch = m.ms / 1000;
    } else if (m.type === "ready") {
      timings.fetch = m.fetchMs / 1000;
      timings.compile = m.compileMs / 1000;
      timings.ready = (performance.now() - t0) / 1000;
      readyResolve();
    } else if (m.type === "exit") {
      teardown();
      if (sinks.exit) sinks.exit(m.code, logText());
    } else if (m.type === "error") {
      readyReject(new Error(m.text));
      const wasRunning = !stopped;
      teardown();
      if (wasRunning && sinks.exit) sinks.exit(-1, logText() + "\n" + m.text);
    }
  };
  worker.onerror = (e) => readyReject(new Error(`the c2w worker failed to load: ${e.message || e}`));
  worker.postMessage({ type: "start", shimUrl: shim_url, wasm, args, env, files, preopens, channels: spec,
                       doorbell: doorbell.buffer, stderr: stderr || "log", hostchan: hostchan || null, lazy,
                       net: rings.net ? { ring: rings.net.sab } : null },
                     Array.isArray(options.wasm) ? [wasm.buffer] : []);
  try {
    await ready;
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
    log() { return logText(); },
    send(channel, data) {
      if (stopped) return;
      const ring = rings[channel];
      if (!ring) throw new Error(`unknown channel ${channel}`);
      queue(ring, new Uint8Array(data)); // a copy: the caller's buffer may be reused
    },
    // End of input on a channel: the module's reads past what was sent return EOF.
    close(channel) {
      const ring = rings[channel];
      if (ring) { ring.closing = true; if (!retry) pump(); }
    },
    async stop() {
      await teardown();
    },
  };
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
