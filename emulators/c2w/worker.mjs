// Module Web Worker that runs bochs.wasm (emulators/c2w/build_bochs.py) on a
// guest from emulators/c2w/build_guest64.py, entirely in memory.
//
//   const w = new Worker('emulators/c2w/worker.mjs', { type: 'module' });
//   w.postMessage({ type: 'start', bochsUrl, guestUrl, shimUrl, input });
//
// bochsUrl: bochs.wasm.  guestUrl: directory with guest.json (and the files
// it lists).  shimUrl: dist/index.js of @bjorn3/browser_wasi_shim 0.4.2
// (the WASI preview1 implementation used here).  input (optional): a
// SharedArrayBuffer of 8 + RING bytes laid out as below (demo.html makes one);
// needs a cross-origin isolated page (COOP/COEP headers).
//
// The guest's COM1 is "mode=file, dev=wasi:stdio" (Bochs patch 0006): every
// byte the guest sends goes to fd_write(1) and is posted out in batches as
// { type: 'console', text }.  Batches are flushed at most every FLUSH_MS of
// wall time from inside the WASI calls Bochs makes anyway (fd_write on the
// console, and the fd_read(0) Bochs makes at each serial receive tick), so the
// console streams while the emulator runs without ever returning to the
// event loop.  Console input comes from the SharedArrayBuffer ring: fd_read(0)
// takes whatever the page has written, without blocking.
//
// Other messages out: { type: 'status', text }, { type: 'mark', name, t }
// (t = ms since the worker started Bochs; names: 'start', 'kernel' = first
// "Linux version" line, 'init' = the guest /init's marker, 'prompt' = the
// shell prompt from guest.json), { type: 'log', text } (Bochs's log file,
// line-buffered), { type: 'stderr', text }, { type: 'exit', code, t },
// { type: 'error', text }.

const FLUSH_MS = 25;       // console batching interval (wall time)
const FLUSH_BYTES = 16384; // ... or this many bytes

// Input ring in a SharedArrayBuffer: Int32 [0] = write count, [1] = read
// count (both total bytes, wrapping at 2^31), data from byte 8, RING bytes.
// The page writes bytes and then advances [0]; the worker reads and advances [1].
const RING = 4096; // a power of two

let shim;              // the imported browser_wasi_shim module
let t0 = 0;            // performance.now() when Bochs started
const now = () => performance.now() - t0;

function post(msg, transfer) { self.postMessage(msg, transfer || []); }

// ---- console sink (fd 1) ---------------------------------------------------

class ConsoleSink {
  constructor(markers) {
    this.decoder = new TextDecoder('utf-8');
    this.pending = '';
    this.last = 0;
    this.tail = '';          // for marker matching across batches
    this.markers = markers;  // [{ name, text }], each reported once
  }
  write(bytes) {
    const text = this.decoder.decode(bytes, { stream: true });
    this.pending += text;
    this.scan(text);
    this.maybeFlush();
  }
  scan(text) {
    if (!this.markers.length) return;
    const hay = this.tail + text;
    for (const m of this.markers.slice()) {
      if (hay.includes(m.text)) {
        post({ type: 'mark', name: m.name, t: now() });
        this.markers.splice(this.markers.indexOf(m), 1);
      }
    }
    this.tail = hay.slice(-256);
  }
  maybeFlush() {
    if (this.pending && (performance.now() - this.last >= FLUSH_MS || this.pending.length >= FLUSH_BYTES)) this.flush();
  }
  flush() {
    this.last = performance.now();
    if (!this.pending) return;
    post({ type: 'console', text: this.pending });
    this.pending = '';
  }
}

// Line-buffered text sink for stderr and Bochs's log file.
function lineSink(type) {
  const dec = new TextDecoder('utf-8');
  let buf = '';
  const fn = (bytes) => {
    buf += dec.decode(bytes, { stream: true });
    const i = buf.lastIndexOf('\n');
    if (i >= 0) { post({ type, text: buf.slice(0, i + 1) }); buf = buf.slice(i + 1); }
  };
  fn.flush = () => { if (buf) { post({ type, text: buf }); buf = ''; } };
  return fn;
}

// ---- the WASI file descriptors ----------------------------------------------

function makeFds(guestFiles, guest, sink, input, logSink, errSink) {
  const { ConsoleStdout, File, Directory, PreopenDirectory } = shim;

  // stdin: never blocks; 0 bytes (EOF for this call) when nothing is pending.
  class Stdin extends ConsoleStdout {
    constructor() {
      super(() => {});
      this.ctl = input ? new Int32Array(input, 0, 2) : null;
      this.data = input ? new Uint8Array(input, 8, RING) : null;
    }
    fd_read(size) {
      sink.maybeFlush(); // Bochs calls this at every serial rx tick: our clock
      if (!this.ctl) return { ret: 0, data: new Uint8Array(0) };
      const w = Atomics.load(this.ctl, 0);
      const r = Atomics.load(this.ctl, 1);
      const n = Math.min(size, (w - r) | 0);
      if (n <= 0) return { ret: 0, data: new Uint8Array(0) };
      const out = new Uint8Array(n);
      for (let i = 0; i < n; i++) out[i] = this.data[(r + i) & (RING - 1)];
      Atomics.store(this.ctl, 1, (r + n) | 0);
      return { ret: 0, data: out };
    }
  }

  // A file whose opens all write to a JS callback (Bochs's log file).
  class SinkFile extends File {
    constructor(fn) { super(new Uint8Array(0)); this.fn = fn; }
    path_open() { return { ret: 0, fd_obj: new ConsoleStdout(this.fn) }; }
  }

  // Build the directory tree from guest.json's "/path" -> bytes.
  const root = new Map();
  const put = (absPath, inode) => {
    const parts = absPath.replace(/^\/+/, '').split('/');
    let dir = root;
    for (const p of parts.slice(0, -1)) {
      let d = dir.get(p);
      if (!d) { d = new Directory(new Map()); dir.set(p, d); }
      dir = d.contents;
    }
    dir.set(parts[parts.length - 1], inode);
  };
  const writable = new Set(guest.writable || []);
  for (const [p, bytes] of Object.entries(guestFiles)) {
    put(p, new File(bytes, { readonly: !writable.has(p) }));
  }
  if (guest.log) put(guest.log, new SinkFile(logSink));

  return [
    new Stdin(),
    new ConsoleStdout((b) => sink.write(b)),
    new ConsoleStdout(errSink),
    new PreopenDirectory('/', root),
  ];
}

// ---- start --------------------------------------------------------------------

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function start(msg) {
  const tFetch = performance.now();
  shim = await import(msg.shimUrl);
  const guestBase = new URL(msg.guestUrl.endsWith('/') ? msg.guestUrl : msg.guestUrl + '/', self.location.href);
  const guest = await (await fetch(new URL('guest.json', guestBase))).json();
  post({ type: 'status', text: `fetching bochs.wasm and ${Object.keys(guest.files).length} guest files` });
  const modP = WebAssembly.compileStreaming(fetch(new URL(msg.bochsUrl, self.location.href)));
  const files = {};
  await Promise.all(Object.entries(guest.files).map(async ([p, rel]) => {
    files[p] = await fetchBytes(new URL(rel, guestBase));
  }));
  const module = await modP;
  post({ type: 'status', text: `fetched and compiled in ${(performance.now() - tFetch).toFixed(0)} ms; starting Bochs` });

  const markers = [
    { name: 'kernel', text: 'Linux version' },
    { name: 'init', text: guest.init_mark },
    { name: 'prompt', text: guest.prompt },
  ].filter((m) => m.text);
  const sink = new ConsoleSink(markers);
  const logSink = lineSink('log');
  const errSink = lineSink('stderr');
  const fds = makeFds(files, guest, sink, msg.input || null, logSink, errSink);
  const wasi = new shim.WASI(guest.args, guest.env || [], fds);

  // Every import is our own JS function that calls the shim's (the hosting
  // rule found with Node; harmless here), and proc_exit is ours.
  class Exit { constructor(code) { this.code = code; } }
  const imports = {};
  for (const [name, fn] of Object.entries(wasi.wasiImport)) imports[name] = (...a) => fn(...a);
  imports.proc_exit = (code) => { throw new Exit(code); };
  const instance = await WebAssembly.instantiate(module, { wasi_snapshot_preview1: imports });
  wasi.inst = instance;

  t0 = performance.now();
  post({ type: 'mark', name: 'start', t: 0 });
  let code = 0;
  try {
    instance.exports._start();
  } catch (e) {
    if (e instanceof Exit) code = e.code;
    else { sink.flush(); logSink.flush(); errSink.flush(); post({ type: 'error', text: String(e && e.stack || e) }); return; }
  }
  sink.flush(); logSink.flush(); errSink.flush();
  post({ type: 'exit', code, t: now() });
}

self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg && msg.type === 'start') {
    start(msg).catch((e) => post({ type: 'error', text: String(e && e.stack || e) }));
  }
};
