// The WASI host of the c2w backend: a module Web Worker that runs one WASI
// preview1 command module (bochs.wasm with a pyapptron guest, a user's own
// container2wasm output, or any other WASI program) and turns its stdio into
// byte channels for the page (emulators/c2w/adapter.mjs is the only caller).
//
// Why a worker: Bochs's CPU loop never returns to the event loop, and a
// blocking read must really block (Atomics.wait, which the page's main thread
// may not call).  The file system is @bjorn3/browser_wasi_shim's in-memory one;
// stdio, the extra channels, poll_oneoff and proc_exit are ours.
//
// In:  { type: 'start', shimUrl, wasm, args, env, files, preopens, channels,
//        doorbell, stderr }
//   wasm      URL or bytes (the adapter joins a module's chunks).
//   files     { '/abs/path': URL string | Uint8Array | { url, inflate } }: the
//             in-memory tree (inflate: the URL serves it gzip'd).
//   preopens  [ '/dir', ... ]: directories of that tree given to the module
//             (fds 3, 4, ...), created if absent.
//   channels  [ { name, in: fd, out: fd, ring: SharedArrayBuffer, blocking } ]:
//             byte streams to the page.  A fd >= 3 comes after the preopens;
//             the module must name it (e.g. Bochs's "dev=wasi:fd:N").
//   doorbell  SharedArrayBuffer (Int32 [1]) the page bumps after each write
//             into any ring: waits in fd_read / poll_oneoff sleep on it.
//   stderr    the channel name fd 2 goes to.
//   lazy      { '/abs/path': { size, chunk, base, chunks: [name | null, ...] } }: files
//             of the tree read chunk by chunk on demand (LazyFile below): chunk i is
//             base + chunks[i] (null: all zeros), fetched the first time it is read.
//   net       { ring: SharedArrayBuffer }: the guest's network card, when the module is
//             Bochs with our patch 0011 (ethmod=pyapptron): frames for the guest come
//             through this ring, each as a u16 length (little-endian) and its bytes;
//             the guest's frames leave as { type: 'net', data } (see NetPort below).
//   hostchan  { channel, wake_fd }: when the module is Bochs with our patch 0008
//             and the guest attaches to its shared-memory rings, that channel's
//             bytes go over the rings instead of the serial line on wake_fd,
//             which then only carries wake-up bytes (see HostChan below).
//   state     { control: SharedArrayBuffer (Int32 [1]), keep: ['/abs/path', ...] }: when
//             the module is Bochs with our patch 0012, the page sets control[0] to 1 to
//             have the machine's state saved (see "the machine's state" below); `keep`
//             names the tree's files a state carries whole (small disks).
//   restore   { files: { name: Uint8Array }, lazy: { '/abs/path': [[chunk, Uint8Array]] },
//               whole: { '/abs/path': Uint8Array } }: a saved state to start from: Bochs's
//             files go into /pyapptron-state (and its args get -r /pyapptron-state), the
//             disks' written blocks back into the tree.
// Out: { type: 'ready', compileMs, fetchMs }, { type: 'out', name, data },
//      { type: 'net-mac', mac } (the card's address), { type: 'net', data } (a frame),
//      { type: 'lazy', chunks, bytes, ms } (totals fetched on demand, after each fetch),
//      { type: 'state', ok, files: [{ name, data }], lazy, whole } (a saved state, in
//      restore's shape), { type: 'restored', ms } (Bochs has read a restore's state),
//      { type: 'exit', code }, { type: 'error', text }.
//
// An input ring: Int32 [0] bytes written (total, wrapping at 2^31), [1] bytes
// read, [2] closed by the page (then reads past the end return EOF); data from
// byte RING_DATA.

const RING_DATA = 16;
const FLUSH_MS = 2;         // output reaches the page at most this late while the module runs
const FLUSH_BYTES = 1 << 16;
const ERRNO = { SUCCESS: 0, AGAIN: 6, BADF: 8, INVAL: 28, NOTSUP: 58 };
const FDFLAGS_NONBLOCK = 4;

let shim;
const outputs = [];         // every output sink, for flushAll()
let doorbell = null;        // Int32Array over msg.doorbell

function post(msg, transfer) { self.postMessage(msg, transfer || []); }

class OutputSink {
  constructor(name) { this.name = name; this.parts = []; this.size = 0; this.last = 0; outputs.push(this); }
  write(bytes) {
    this.parts.push(bytes);
    this.size += bytes.length;
    if (this.size >= FLUSH_BYTES) this.flush();
    else tick();
  }
  flush() {
    this.last = performance.now();
    if (!this.size) return;
    // Always a new buffer, transferred: never the caller's (the WASI shim reads its
    // length after fd_write returns; a transferred buffer would read as 0 bytes).
    const data = new Uint8Array(this.size);
    let at = 0;
    for (const p of this.parts) { data.set(p, at); at += p.length; }
    this.parts = [];
    this.size = 0;
    post({ type: 'out', name: this.name, data }, [data.buffer]);
  }
}

let lastTick = 0;
// Called from the WASI calls a running module makes anyway: the worker never
// returns to its event loop while the module runs, so this is its clock.
function tick() {
  const now = performance.now();
  if (now - lastTick < FLUSH_MS) return;
  lastTick = now;
  for (const o of outputs) if (o.size) o.flush();
}
function flushAll() { for (const o of outputs) o.flush(); }

class InputRing {
  constructor(sab) {
    this.ctl = new Int32Array(sab, 0, 3);
    this.data = new Uint8Array(sab, RING_DATA);
    this.mask = this.data.length - 1;
  }
  available() { return (Atomics.load(this.ctl, 0) - Atomics.load(this.ctl, 1)) | 0; }
  closed() { return Atomics.load(this.ctl, 2) !== 0; }
  take(max) {
    const n = Math.min(max, this.available());
    const out = new Uint8Array(n);
    this.takeInto(out, 0, n);
    return out;
  }
  // Moves n bytes (at most available()) into dst at offset, without a copy of its own.
  takeInto(dst, offset, n) {
    const r = Atomics.load(this.ctl, 1);
    const start = r & this.mask;
    const first = Math.min(n, this.data.length - start);
    dst.set(this.data.subarray(start, start + first), offset);
    if (n > first) dst.set(this.data.subarray(0, n - first), offset + first);
    Atomics.store(this.ctl, 1, (r + n) | 0);
  }
}

// ---- the shared-memory channel (Bochs patch 0008, iodev/hostchan.cc) ------------
// Bochs maps a region of its own memory into the guest and tells us where
// (pyapptron.hostchan_attach); the guest agent maps it through /dev/mem.  Words of
// the control page (u32): [8] host-to-guest head (ours) [9] its tail (the guest's)
// [10] guest-to-host head (the guest's) [11] its tail (ours) [12] the guest sleeps
// [13] the guest attached.  service() runs inside the module's calls (the guest's
// doorbell, the serial line's polls), between guest instructions.
const HC = { H2G_OFF: 2, H2G_SIZE: 3, G2H_OFF: 4, G2H_SIZE: 5, H2G_HEAD: 8, H2G_TAIL: 9,
             G2H_HEAD: 10, G2H_TAIL: 11, SLEEPING: 12, ATTACHED: 13 };

class HostChan {
  constructor(ring, output) {
    this.ring = ring;       // the page's bytes for the guest (InputRing)
    this.output = output;   // where the guest's bytes go (OutputSink)
    this.memory = null;
    this.base = 0;
    this.wakePending = false;
    // While Bochs restores a saved state the region is not yet the guest's (it says
    // "not attached"): the page's bytes wait, else the serial line would eat them.
    this.holding = false;
  }
  attach(memory, base) {
    this.memory = memory;
    this.base = base;
    return 1;
  }
  get attached() { return this.memory !== null && this.ctl()[HC.ATTACHED] !== 0; }
  ctl() {
    // A new view each time: the module's memory may have grown (a new buffer).
    return new Uint32Array(this.memory.buffer, this.base, 16);
  }
  // Has the page queued bytes that could move now (for poll_oneoff)?
  readable() {
    if (this.wakePending) return true;
    if (!this.attached || this.ring.available() <= 0) return false;
    const c = this.ctl();
    return c[HC.H2G_SIZE] - ((c[HC.H2G_HEAD] - c[HC.H2G_TAIL]) >>> 0) > 0;
  }
  service() {
    if (!this.attached) return;
    const c = this.ctl();
    const bytes = new Uint8Array(this.memory.buffer);
    // guest -> host: everything the guest has written
    const g2hSize = c[HC.G2H_SIZE], g2h = this.base + c[HC.G2H_OFF];
    let tail = c[HC.G2H_TAIL];
    const used = (c[HC.G2H_HEAD] - tail) >>> 0;
    if (used > 0) {
      const out = new Uint8Array(used);
      const at = tail & (g2hSize - 1);
      const first = Math.min(used, g2hSize - at);
      out.set(bytes.subarray(g2h + at, g2h + at + first));
      if (used > first) out.set(bytes.subarray(g2h, g2h + used - first), first);
      c[HC.G2H_TAIL] = (tail + used) >>> 0;
      this.output.write(out);
    }
    // host -> guest: as much as the ring has room for
    const h2gSize = c[HC.H2G_SIZE], h2g = this.base + c[HC.H2G_OFF];
    const head = c[HC.H2G_HEAD];
    const room = h2gSize - ((head - c[HC.H2G_TAIL]) >>> 0);
    let n = Math.min(room, this.ring.available());
    if (n > 0) {
      const at = head & (h2gSize - 1);
      const first = Math.min(n, h2gSize - at);
      this.ring.takeInto(bytes, h2g + at, first);
      if (n > first) this.ring.takeInto(bytes, h2g, n - first);
      c[HC.H2G_HEAD] = (head + n) >>> 0;
      if (c[HC.SLEEPING]) { c[HC.SLEEPING] = 0; this.wakePending = true; }
    }
  }
}
let hostchan = null;

// ---- the guest's network card (Bochs patch 0011, iodev/network/eth_pyapptron.cc) ---------
// Bochs hands each frame the guest sends to net_send, which posts it to the page at once
// (a TCP ACK must not wait for a flush); its timer asks net_recv for the page's frames.
class NetPort {
  constructor(ring) { this.ring = ring; this.header = new Uint8Array(2); }
  // The next whole frame into memory at ptr: its length, or 0 when none has fully arrived.
  receive(memory, ptr, size) {
    const ring = this.ring;
    for (;;) {
      const available = ring.available();
      if (available < 2) return 0;
      const r = Atomics.load(ring.ctl, 1);
      const len = ring.data[r & ring.mask] | (ring.data[(r + 1) & ring.mask] << 8);
      if (available < 2 + len) return 0;  // the page is still writing it
      ring.takeInto(this.header, 0, 2);
      if (len <= size) {
        ring.takeInto(new Uint8Array(memory.buffer), ptr, len);
        return len;
      }
      ring.takeInto(new Uint8Array(len), 0, len);  // larger than any ethernet frame: dropped
    }
  }
}
let netPort = null;
const WAKE_BYTE = new Uint8Array([0x21]);

function waitDoorbell(seen, ms) {
  flushAll(); // nothing stays unsent while the module sleeps
  Atomics.wait(doorbell, 0, seen, ms === Infinity ? undefined : Math.max(0, ms));
}

// One end of a channel as a WASI fd: a character device.  With hc (a HostChan the
// guest has attached to), the fd is only the guest's wake-up line.
function channelFd(ring, output, blocking, hc = null) {
  const { Fd, wasi } = shim;
  return new (class extends Fd {
    constructor() { super(); this.flags = blocking ? 0 : FDFLAGS_NONBLOCK; this.ring = ring; }
    readable() {
      if (hc && hc.holding) return false;
      if (hc && hc.attached) return hc.readable();
      return ring ? ring.available() > 0 || ring.closed() : false;
    }
    fd_fdstat_get() {
      return { ret: 0, fdstat: new wasi.Fdstat(wasi.FILETYPE_CHARACTER_DEVICE, this.flags) };
    }
    fd_fdstat_set_flags(flags) { this.flags = flags; return 0; }
    fd_prestat_get() { return { ret: ERRNO.BADF, prestat: null }; } // ends wasi-libc's preopen scan
    fd_filestat_get() {
      return { ret: 0, filestat: new wasi.Filestat(0n, wasi.FILETYPE_CHARACTER_DEVICE, 0n) };
    }
    fd_read(size) {
      if (!ring) return { ret: 0, data: new Uint8Array(0) };
      if (hc && hc.holding) return { ret: ERRNO.AGAIN, data: new Uint8Array(0) };
      if (hc && hc.attached) {
        hc.service();
        tick();
        if (!hc.wakePending) return { ret: ERRNO.AGAIN, data: new Uint8Array(0) };
        hc.wakePending = false;
        return { ret: 0, data: WAKE_BYTE.slice() };
      }
      for (;;) {
        const seen = Atomics.load(doorbell, 0);
        if (ring.available() > 0) return { ret: 0, data: ring.take(size) };
        if (ring.closed()) return { ret: 0, data: new Uint8Array(0) };
        if (this.flags & FDFLAGS_NONBLOCK) { tick(); return { ret: ERRNO.AGAIN, data: new Uint8Array(0) }; }
        waitDoorbell(seen, Infinity);
      }
    }
    fd_write(data) {
      if (!output) return { ret: ERRNO.BADF, nwritten: 0 };
      const n = data.length;
      if (hc && hc.attached) return { ret: 0, nwritten: n }; // the line carries nothing then
      output.write(data);
      return { ret: 0, nwritten: n };
    }
    fd_close() { return 0; }
  })();
}

// ---- files read on demand ---------------------------------------------------------
// A large read-only image (the agent-x86_64 root: a squashfs cut into content-addressed
// chunks) must not be downloaded whole.  The module's reads block while a missing chunk
// is fetched with a synchronous XMLHttpRequest (allowed in a worker; the worker never
// returns to its event loop while the module runs, so a fetch() could never finish).
// The browser's HTTP cache keeps the chunks (served immutable), so this cache holds
// only the most recently read ones; bytes the module writes stay here, in memory.
// Readahead: after a missed chunk, the next READAHEAD chunks are fetched in parallel by a
// second worker of this script (Fetcher, below; it has an event loop of its own) into
// shared slots, so a guest reading on finds them there, or waits for the one in flight,
// instead of paying a round trip per chunk.
const LAZY_CACHE_BYTES = 96 << 20;
const READAHEAD = 8;
const SLOTS = 24;             // chunks in flight or fetched ahead, at most
const SLOT_FREE = 0, SLOT_LOADING = 1, SLOT_READY = 2, SLOT_FAILED = 3;
const lazyStats = { chunks: 0, bytes: 0, ms: 0 };
let fetcher = null;           // the Fetcher worker, when there is a lazy file

// The emulator's side of the readahead: which slot holds which chunk (it alone hands
// slots out and frees them, so the fetcher never overwrites a slot being read).
class Readahead {
  constructor(chunk) {
    this.chunk = chunk;
    this.data = new SharedArrayBuffer(SLOTS * chunk);
    this.state = new Int32Array(new SharedArrayBuffer(SLOTS * 4));
    this.slotOf = new Map();  // chunk index -> slot
    this.indexOf = new Array(SLOTS).fill(-1);
  }
  // The chunk's bytes if it was fetched ahead (waiting for it if it is in flight), else null.
  take(i) {
    const slot = this.slotOf.get(i);
    if (slot === undefined) return null;
    if (Atomics.load(this.state, slot) === SLOT_LOADING) Atomics.wait(this.state, slot, SLOT_LOADING, 30000);
    const ok = Atomics.load(this.state, slot) === SLOT_READY;
    const bytes = ok ? new Uint8Array(this.data, slot * this.chunk, this.chunk).slice() : null;
    if (Atomics.load(this.state, slot) !== SLOT_LOADING) this.release(slot);
    return bytes;
  }
  release(slot) {
    this.slotOf.delete(this.indexOf[slot]);
    this.indexOf[slot] = -1;
    Atomics.store(this.state, slot, SLOT_FREE);
  }
  request(i, url) {
    if (this.slotOf.has(i)) return;
    let slot = this.indexOf.indexOf(-1);
    if (slot < 0) {  // all busy: reuse a fetched chunk nobody read (the oldest first)
      slot = this.indexOf.findIndex((_, k) => Atomics.load(this.state, k) !== SLOT_LOADING);
      if (slot < 0) return;
      this.release(slot);
    }
    this.slotOf.set(i, slot);
    this.indexOf[slot] = i;
    Atomics.store(this.state, slot, SLOT_LOADING);
    fetcher.postMessage({ type: 'fetch', slot, url });
  }
}

// The other worker: fetches chunks into the shared slots, several at once.
function runFetcher(init) {
  const data = new Uint8Array(init.data), state = new Int32Array(init.state), chunk = init.chunk;
  self.onmessage = async (ev) => {
    const { slot, url } = ev.data;
    let ok = false;
    try {
      const r = await fetch(url);
      const bytes = new Uint8Array(await r.arrayBuffer());
      if (r.ok && bytes.length === chunk && Atomics.load(state, slot) === SLOT_LOADING) {
        data.set(bytes, slot * chunk);
        ok = true;
      }
    } catch (e) { /* the emulator's side fetches it itself */ }
    Atomics.store(state, slot, ok ? SLOT_READY : SLOT_FAILED);
    Atomics.notify(state, slot);
  };
  self.postMessage({ type: 'fetcher-ready' });
}

class LazyImage {
  constructor(spec) {
    this.size = spec.size;
    this.chunk = spec.chunk;
    this.base = spec.base;
    this.names = spec.chunks;
    this.cache = new Map();   // chunk index -> bytes, least recently read first
    this.cached = 0;
    this.dirty = new Map();   // chunk index -> bytes the module wrote (never evicted)
    this.ahead = null;        // Readahead, once the fetcher runs
    this.lastMiss = -2;       // the last chunk that was not in the cache
    this.run = 0;             // chunks to read ahead now (grows along a sequential run)
  }
  chunkAt(i, forWrite = false) {
    let data = this.dirty.get(i);
    if (data) return data;
    data = this.cache.get(i);
    if (data) {
      this.cache.delete(i);
      this.cache.set(i, data);
    } else {
      const name = this.names[i];
      data = name ? (this.ahead && this.ahead.take(i)) || this.fetch(this.base + name) : new Uint8Array(this.chunk);
      // Read ahead only along a sequential run of misses, doubling as it goes on (as
      // Linux's readahead does): the squashfs's scattered reads would fetch for nothing.
      this.run = i === this.lastMiss + 1 ? Math.min(READAHEAD, Math.max(1, this.run * 2)) : 0;
      this.lastMiss = i;
      if (name && this.ahead && this.run) {
        let asked = 0;
        for (let j = i + 1; j <= i + this.run && j < this.names.length; j++) {
          if (this.names[j] && !this.cache.has(j) && !this.dirty.has(j) && !this.ahead.slotOf.has(j)) {
            this.ahead.request(j, this.base + this.names[j]);
            asked++;
          }
        }
        if (asked) {
          lazyStats.chunks += asked;
          lazyStats.bytes += asked * this.chunk;
          post({ type: 'lazy', ...lazyStats });
        }
      }
      this.cache.set(i, data);
      this.cached += data.length;
      for (const [j, old] of this.cache) {
        if (this.cached <= LAZY_CACHE_BYTES) break;
        this.cache.delete(j);
        this.cached -= old.length;
      }
    }
    if (forWrite) {
      if (this.cache.delete(i)) this.cached -= data.length;
      data = data.slice();
      this.dirty.set(i, data);
    }
    return data;
  }
  fetch(url) {
    const t0 = performance.now();
    let error = '';
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const xhr = new XMLHttpRequest();
        xhr.open('GET', url, false);
        xhr.responseType = 'arraybuffer';
        xhr.send();
        if (xhr.status === 200 && xhr.response && xhr.response.byteLength === this.chunk) {
          lazyStats.chunks++;
          lazyStats.bytes += this.chunk;
          lazyStats.ms += performance.now() - t0;
          post({ type: 'lazy', ...lazyStats });
          return new Uint8Array(xhr.response);
        }
        error = `HTTP ${xhr.status}, ${xhr.response ? xhr.response.byteLength : 0} bytes`;
      } catch (e) {
        error = String(e);
      }
    }
    throw new LazyError(`cannot fetch ${url}: ${error}`);
  }
  read(offset, size) {
    const end = Math.min(this.size, offset + size);
    if (end <= offset) return new Uint8Array(0);
    const out = new Uint8Array(end - offset);
    for (let at = offset; at < end;) {
      const i = Math.floor(at / this.chunk), within = at - i * this.chunk;
      const n = Math.min(this.chunk - within, end - at);
      out.set(this.chunkAt(i).subarray(within, within + n), at - offset);
      at += n;
    }
    return out;
  }
  write(offset, data) {
    const end = Math.min(this.size, offset + data.length);
    for (let at = offset; at < end;) {
      const i = Math.floor(at / this.chunk), within = at - i * this.chunk;
      const n = Math.min(this.chunk - within, end - at);
      this.chunkAt(i, true).set(data.subarray(at - offset, at - offset + n), within);
      at += n;
    }
    return Math.max(0, end - offset);
  }
}
class LazyError extends Error {}

function lazyFileInode(image) {
  const { Inode, Fd, wasi } = shim;
  const inode = new (class extends Inode {
    stat() { return new wasi.Filestat(this.ino, wasi.FILETYPE_REGULAR_FILE, BigInt(image.size)); }
    path_open() { return { ret: 0, fd_obj: openLazy() }; }
  })();
  const failed = (e) => {
    if (!(e instanceof LazyError)) throw e;
    outputs.find((o) => o.name === 'log')?.write(new TextEncoder().encode(`pyapptron: ${e.message}\n`));
    return 29; // EIO: the guest sees a disk error, the page the reason in the log
  };
  const openLazy = () => new (class extends Fd {
    constructor() { super(); this.pos = 0; }
    fd_fdstat_get() { return { ret: 0, fdstat: new wasi.Fdstat(wasi.FILETYPE_REGULAR_FILE, 0) }; }
    fd_filestat_get() { return { ret: 0, filestat: inode.stat() }; }
    fd_seek(offset, whence) {
      const base = whence === wasi.WHENCE_SET ? 0 : whence === wasi.WHENCE_CUR ? this.pos : image.size;
      const at = base + Number(offset);
      if (at < 0) return { ret: ERRNO.INVAL, offset: 0n };
      this.pos = at;
      return { ret: 0, offset: BigInt(at) };
    }
    fd_tell() { return { ret: 0, offset: BigInt(this.pos) }; }
    fd_read(size) {
      try {
        const data = image.read(this.pos, size);
        this.pos += data.length;
        return { ret: 0, data };
      } catch (e) { return { ret: failed(e), data: new Uint8Array(0) }; }
    }
    fd_pread(size, offset) {
      try { return { ret: 0, data: image.read(Number(offset), size) }; }
      catch (e) { return { ret: failed(e), data: new Uint8Array(0) }; }
    }
    fd_write(data) {
      try {
        const n = image.write(this.pos, data);
        this.pos += n;
        return { ret: 0, nwritten: n };
      } catch (e) { return { ret: failed(e), nwritten: 0 }; }
    }
    fd_pwrite(data, offset) {
      try { return { ret: 0, nwritten: image.write(Number(offset), data) }; }
      catch (e) { return { ret: failed(e), nwritten: 0 }; }
    }
  })();
  return inode;
}

// ---- the machine's state (Bochs patch 0012, iodev/wasi_state.cc) ------------------
// Bochs polls pyapptron.state_request every millisecond of emulated time; on a request
// it returns from its CPU loop at an instruction boundary, writes its files into
// SAVE_DIR and calls pyapptron.state_saved, where they are taken (with the disks'
// written blocks) and posted to the page; then the guest runs on. A restore's files
// wait in RESTORE_DIR until Bochs first polls, which is after it has read them.
const SAVE_DIR = 'pyapptron-save';
const RESTORE_DIR = 'pyapptron-state';

class MachineState {
  constructor(spec, root, images) {
    this.control = new Int32Array(spec.control);
    this.keep = spec.keep || [];
    this.root = root;         // the tree's root Directory
    this.images = images;     // path -> LazyImage
    this.restoring = root.contents.has(RESTORE_DIR);
    this.started = 0;         // when the module started (for the page's timings)
    root.contents.set(SAVE_DIR, new shim.Directory(new Map()));
  }
  request() {
    if (this.restoring) {  // Bochs has restored the state: its files can go, the channel runs
      post({ type: 'restored', ms: performance.now() - this.started });
      this.root.contents.delete(RESTORE_DIR);
      this.restoring = false;
      // A wake-up the old host had promised (wakePending) is not in the state: give
      // the guest one now (a spare one only makes it look at the rings).
      if (hostchan) { hostchan.holding = false; hostchan.wakePending = true; }
    }
    return Atomics.exchange(this.control, 0, 0);
  }
  saved(ok) {
    const dir = this.root.contents.get(SAVE_DIR);
    const files = [], transfer = [];
    for (const [name, file] of dir.contents) {
      files.push({ name, data: file.data });
      transfer.push(file.data.buffer);
    }
    dir.contents.clear();
    // Copies: the guest writes on into the blocks it wrote before.
    const lazy = {};
    for (const [path, image] of this.images) {
      lazy[path] = [...image.dirty].map(([i, bytes]) => [i, bytes.slice()]);
      transfer.push(...lazy[path].map(([, b]) => b.buffer));
    }
    const whole = {};
    for (const path of this.keep) {
      const file = lookup(this.root, path);
      if (file && file.data) { whole[path] = file.data.slice(); transfer.push(whole[path].buffer); }
    }
    flushAll();  // what the guest printed before the save reaches the page first
    post({ type: 'state', ok: ok !== 0, files, lazy, whole }, transfer);
  }
}
let machineState = null;

function lookup(root, path) {
  let entry = root;
  for (const part of path.split('/').filter(Boolean)) entry = entry && entry.contents && entry.contents.get(part);
  return entry;
}

// The shim's File copies itself whole each time a write makes it longer: Bochs's saved
// RAM, hundreds of MiB written a MiB at a time (patch 0012's buffer), would copy for minutes. Files grow into
// spare room here instead (doubling, as a vector does).
function growFilesInPlace() {
  const { OpenFile } = shim;
  const grow = (file, end) => {
    const data = file.data;
    if (file.readonly || end <= data.byteLength) return;
    if (data.byteOffset === 0 && end <= data.buffer.byteLength) {
      file.data = new Uint8Array(data.buffer, 0, end);
      return;
    }
    const room = new Uint8Array(Math.max(end, Math.min(2 * data.byteLength, data.byteLength + (256 << 20))));
    room.set(data);
    file.data = room.subarray(0, end);
  };
  const write = OpenFile.prototype.fd_write, pwrite = OpenFile.prototype.fd_pwrite;
  OpenFile.prototype.fd_write = function (data) {
    grow(this.file, Number(this.file_pos) + data.byteLength);
    return write.call(this, data);
  };
  OpenFile.prototype.fd_pwrite = function (data, offset) {
    grow(this.file, Number(offset) + data.byteLength);
    return pwrite.call(this, data, offset);
  };
}

// ---- poll_oneoff: clocks and fds, several subscriptions -----------------------

function pollOneoff(memory, fds, inPtr, outPtr, nsubs, neventsPtr) {
  if (nsubs === 0) return ERRNO.INVAL;
  const view = new DataView(memory.buffer);
  const subs = [];
  let deadline = Infinity; // performance.now() ms
  for (let i = 0; i < nsubs; i++) {
    const base = inPtr + 48 * i;
    const sub = { userdata: view.getBigUint64(base, true), tag: view.getUint8(base + 8) };
    if (sub.tag === 0) {
      const clock = view.getUint32(base + 16, true);
      const timeout = view.getBigUint64(base + 24, true);
      const absolute = (view.getUint16(base + 40, true) & 1) !== 0;
      let ms = Number(timeout) / 1e6;
      if (absolute) ms -= clock === 0 ? Date.now() : performance.now(); // realtime : monotonic
      sub.at = performance.now() + Math.max(0, ms);
      deadline = Math.min(deadline, sub.at);
    } else if (sub.tag === 1 || sub.tag === 2) {
      sub.fd = view.getUint32(base + 16, true);
    } else {
      return ERRNO.INVAL;
    }
    subs.push(sub);
  }
  for (;;) {
    const seen = Atomics.load(doorbell, 0);
    const events = [];
    for (const s of subs) {
      if (s.tag === 0) continue;
      const fd = fds[s.fd];
      if (!fd) { events.push([s, ERRNO.BADF, 0]); continue; }
      const ring = fd.ring;
      if (s.tag === 2 || ring === undefined) { events.push([s, 0, 0]); continue; } // writable / a file
      if (fd.readable()) events.push([s, 0, ring ? Math.max(1, ring.available()) : 0]);
    }
    const now = performance.now();
    if (!events.length) for (const s of subs) if (s.tag === 0 && s.at <= now) events.push([s, 0, 0]);
    if (events.length) {
      events.forEach(([s, err, nbytes], i) => {
        const e = outPtr + 32 * i;
        view.setBigUint64(e, s.userdata, true);
        view.setUint16(e + 8, err, true);
        view.setUint8(e + 10, s.tag);
        view.setBigUint64(e + 16, BigInt(nbytes), true);
        view.setUint16(e + 24, 0, true);
      });
      view.setUint32(neventsPtr, events.length, true);
      tick();
      return ERRNO.SUCCESS;
    }
    waitDoorbell(seen, deadline - now);
  }
}

// ---- start ----------------------------------------------------------------------

async function fetchBytes(url, inflate = false) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`cannot fetch ${url}: HTTP ${r.status}`);
  const body = inflate ? new Response(r.body.pipeThrough(new DecompressionStream('gzip'))) : r;
  return new Uint8Array(await body.arrayBuffer());
}

async function compileModule(wasm) {
  if (typeof wasm === 'string') {
    const r = await fetch(wasm);
    if (!r.ok) throw new Error(`cannot fetch ${wasm}: HTTP ${r.status}`);
    return WebAssembly.compileStreaming(r);
  }
  return WebAssembly.compile(wasm);
}

function buildTree(files, lazy = {}) {
  const { File, Directory } = shim;
  const root = new Directory(new Map());
  const dirAt = (parts) => {
    let dir = root;
    for (const p of parts) {
      let d = dir.contents.get(p);
      if (!d) { d = new Directory(new Map()); d.parent = dir; dir.contents.set(p, d); }
      dir = d;
    }
    return dir;
  };
  for (const [path, bytes] of Object.entries(files)) {
    const parts = path.split('/').filter(Boolean);
    dirAt(parts.slice(0, -1)).contents.set(parts[parts.length - 1], new File(bytes));
  }
  const images = new Map();
  for (const [path, spec] of Object.entries(lazy)) {
    const parts = path.split('/').filter(Boolean);
    const image = new LazyImage(spec);
    images.set(path, image);
    dirAt(parts.slice(0, -1)).contents.set(parts[parts.length - 1], lazyFileInode(image));
  }
  return { root, dirAt, images };
}

async function start(msg) {
  const t0 = performance.now();
  shim = await import(msg.shimUrl);
  doorbell = new Int32Array(msg.doorbell);
  const modP = compileModule(msg.wasm);
  let restore = msg.restore;
  msg.restore = null;  // below, only `restore` holds the state (and lets it go)
  const restoring = !!restore;
  const files = {};
  await Promise.all(Object.entries(msg.files || {}).map(async ([p, v]) => {
    files[p] = restore && restore.whole[p] ? restore.whole[p].slice()  // as the state has it
      : typeof v === 'string' ? await fetchBytes(v)
      : v instanceof Uint8Array ? v : await fetchBytes(v.url, !!v.inflate);
  }));
  const tFetched = performance.now();
  const module = await modP;
  const tCompiled = performance.now();

  const sinks = new Map();
  const sinkFor = (name) => {
    if (!name) return null;
    if (!sinks.has(name)) sinks.set(name, new OutputSink(name));
    return sinks.get(name);
  };
  const { root, dirAt, images } = buildTree(files, msg.lazy || {});
  if (restore) {
    // Bochs's files, as views of the state's one buffer (the shim's File would copy):
    // they go, and the buffer with them, once Bochs has read them (MachineState).
    const dir = dirAt([RESTORE_DIR]);
    for (const [name, data] of Object.entries(restore.files)) {
      const file = new shim.File(new ArrayBuffer(0));
      file.data = data;
      dir.contents.set(name, file);
    }
    for (const [path, chunks] of Object.entries(restore.lazy)) {
      const image = images.get(path);
      if (!image) throw new Error(`the saved state has written blocks of ${path}, which this machine does not have`);
      // Copies: the state's one buffer is let go once Bochs has read its files.
      for (const [i, bytes] of chunks) image.dirty.set(i, bytes.slice());
    }
  }
  const args = restore ? [...(msg.args || []), '-r', `/${RESTORE_DIR}`] : msg.args;  // Bochs restores at start
  restore = null;
  if (msg.state) {
    growFilesInPlace();
    machineState = new MachineState(msg.state, root, images);
  }
  if (images.size) await startReadahead(images.values().next().value);
  const fds = [];
  const byFd = new Map(); // fd number -> channel end
  for (const ch of msg.channels || []) {
    const ring = ch.ring ? new InputRing(ch.ring) : null;
    const out = sinkFor(ch.out !== undefined ? ch.name : null);
    let hc = null;
    if (msg.hostchan && msg.hostchan.channel === ch.name && ring && out) hostchan = hc = new HostChan(ring, out);
    if (ch.in !== undefined) byFd.set(ch.in, channelFd(ring, ch.in === ch.out ? out : null, ch.blocking, hc));
    if (ch.out !== undefined && ch.out !== ch.in) byFd.set(ch.out, channelFd(null, out, ch.blocking));
  }
  if (restoring && hostchan) hostchan.holding = true;
  for (const fd of [0, 1, 2]) {
    if (!byFd.has(fd)) {
      const out = fd === 0 ? null : sinkFor(fd === 2 ? (msg.stderr || 'stderr') : 'stdout');
      byFd.set(fd, channelFd(null, out, true));
    }
  }
  const preopens = msg.preopens || ['/'];
  for (let i = 0; i < 3; i++) fds.push(byFd.get(i));
  for (const dir of preopens) {
    const d = dirAt(dir.split('/').filter(Boolean));
    fds.push(new shim.PreopenDirectory(dir, d.contents));
  }
  for (const [fd, end] of [...byFd].sort((a, b) => a[0] - b[0])) {
    if (fd < 3) continue;
    if (fd !== fds.length) throw new Error(`channel fd ${fd}: the next free fd after ${preopens.length} preopen(s) is ${fds.length}`);
    fds.push(end);
  }

  const wasi = new shim.WASI(args || ['wasm'], msg.env || [], fds, { debug: false });
  // Every import is our own JS function that calls the shim's: importing some
  // host functions directly crashed Node's V8, and several are ours anyway.
  const imports = {};
  for (const [name, fn] of Object.entries(wasi.wasiImport)) imports[name] = (...a) => fn(...a);
  let memory = null;
  imports.poll_oneoff = (inPtr, outPtr, n, neventsPtr) => pollOneoff(memory, wasi.fds, inPtr, outPtr, n, neventsPtr);
  imports.sched_yield = () => { tick(); return 0; };
  // A clean exit: report it and sleep until the page ends this worker, so that
  // nothing unwinds through the module's frames.
  imports.proc_exit = (code) => {
    flushAll();
    post({ type: 'exit', code });
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
  };
  if (msg.net) netPort = new NetPort(new InputRing(msg.net.ring));
  // Bochs's patches 0008, 0011 and 0012 import these; other modules ignore them.
  const pyapptron = {
    hostchan_attach: (base, size) => (hostchan ? hostchan.attach(memory, base) : 0),
    hostchan_kick: () => { if (hostchan) { hostchan.service(); tick(); } },
    net_attach: (macPtr) => {
      if (!netPort) return 0;
      const mac = [...new Uint8Array(memory.buffer, macPtr, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
      post({ type: 'net-mac', mac });
      return 1;
    },
    net_send: (ptr, len) => {
      const data = new Uint8Array(memory.buffer, ptr, len).slice();
      post({ type: 'net', data }, [data.buffer]);
    },
    net_recv: (ptr, size) => (netPort ? netPort.receive(memory, ptr, size) : 0),
    state_request: () => (machineState ? machineState.request() : 0),
    state_saved: (ok) => { if (machineState) machineState.saved(ok); },
  };
  const instance = await WebAssembly.instantiate(module, { wasi_snapshot_preview1: imports, pyapptron });
  memory = instance.exports.memory;
  wasi.inst = instance;
  post({ type: 'ready', fetchMs: tFetched - t0, compileMs: tCompiled - tFetched });
  if (machineState) machineState.started = performance.now();
  instance.exports._start();
  imports.proc_exit(0); // returned from main with 0
}

// One image gets readahead (the pyapptron images have one lazy disk); started, and
// answering, before the module runs: this worker's event loop stops then.
async function startReadahead(image) {
  const ahead = new Readahead(image.chunk);
  fetcher = new Worker(import.meta.url, { type: 'module' });
  await new Promise((resolve, reject) => {
    fetcher.onmessage = (ev) => { if (ev.data.type === 'fetcher-ready') resolve(); };
    fetcher.onerror = (e) => reject(new Error(`the readahead worker failed to start: ${e.message || e}`));
    fetcher.postMessage({ type: 'fetcher', data: ahead.data, state: ahead.state.buffer, chunk: image.chunk });
  });
  image.ahead = ahead;
}

self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg && msg.type === 'fetcher') {
    runFetcher(msg);
    return;
  }
  if (msg && msg.type === 'start') {
    start(msg).catch((e) => {
      flushAll();
      post({ type: 'error', text: String((e && e.stack) || e) });
    });
  }
};
