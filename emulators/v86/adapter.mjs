// The v86 adapter: starts a V86 and turns it into two byte channels for pyapptron.
// Every emulator adapter exports the same `start(options, sinks)`; Python (through
// pyapptron/_browser) is its only caller. Output reaches Python in batches, one per
// emulator tick, never byte by byte.

import { checkSha256, gunzip, gzip, snapshotError } from "../common/snapshot.mjs";

function batcher(sink) {
  let parts = [];
  let size = 0;
  const flush = () => {
    const data = parts.length === 1 ? parts[0] : new Uint8Array(size);
    if (parts.length > 1) {
      let offset = 0;
      for (const p of parts) { data.set(p, offset); offset += p.length; }
    }
    parts = [];
    size = 0;
    sink(data);
  };
  return (chunk) => {
    if (size === 0) queueMicrotask(flush);
    parts.push(chunk);
    size += chunk.length;
  };
}

function byteBatcher(sink) {
  let buf = new Uint8Array(256);
  let size = 0;
  const flush = () => { const out = buf.slice(0, size); size = 0; sink(out); };
  return (byte) => {
    if (size === 0) queueMicrotask(flush);
    if (size === buf.length) { const bigger = new Uint8Array(buf.length * 2); bigger.set(buf); buf = bigger; }
    buf[size++] = byte;
  };
}

// v86 reads a 9p index only as plain JSON: a gzip'd one is inflated here, by the
// browser's own DecompressionStream, into a blob: URL that v86 then loads.
async function inflatedUrl(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`could not download ${url}: HTTP ${response.status}`);
  const inflated = response.body.pipeThrough(new DecompressionStream("gzip"));
  return URL.createObjectURL(await new Response(inflated).blob());
}

// v86 zeroes all guest RAM before it unpacks a state's pages. In a V86 that was just made
// and never ran, only the first MiB (the BIOS and VGA BIOS it copied in) can be non-zero:
// zeroing the rest costs ~0.2 s per 512 MiB and commits every page of it, used or not.
// Returns the function that puts v86's own zeroing back.
function skipRedundantZeroing(emulator) {
  const cpu = emulator.v86 && emulator.v86.cpu;
  if (!cpu || typeof cpu.zero_memory !== "function" || !cpu.memory_size) return () => {};
  const zero = cpu.zero_memory;
  const MiB = 1 << 20;
  cpu.zero_memory = (addr, len) =>
    zero.call(cpu, addr, addr === 0 && len === cpu.memory_size[0] && len > MiB ? MiB : len);
  return () => { cpu.zero_memory = zero; };
}

// A snapshot's state as v86 takes it: checked against its sha256 when it has one, and
// inflated when gzip'd (v86 inflates zstd itself).
async function stateOf(resume) {
  const p = resume.payload;
  await checkSha256(p, resume.sha256);
  if (resume.compression === "zstd") {
    return p.byteOffset === 0 && p.byteLength === p.buffer.byteLength ? p.buffer : p.slice().buffer;
  }
  return gunzip(p);
}

// options.resume: {payload: Uint8Array, compression: "gzip" | "zstd"} to start from a
// snapshot instead of a cold boot. v86 inflates a zstd state itself, faster than gzip.
export async function start(options, sinks) {
  const { libv86_url, persist, resume, hostchan: hostchanOptions, dns_url, ...v86options } = options;
  // The network stack is v86's own, inside the emulator; network.mjs routes its DNS.
  const { routeDnsQueries } = dns_url ? await import(new URL("./network.mjs", import.meta.url)) : {};
  const unrouteDns = dns_url ? routeDnsQueries(v86options.net_device = { ...v86options.net_device }, dns_url) : () => {};
  // Where a start spends its time (seconds), for bench/: inflate, load, restore, persist.
  const timings = {};
  let mark = performance.now();
  const lap = (name) => { const now = performance.now(); timings[name] = (now - mark) / 1000; mark = now; };
  let state = null;
  if (resume) {
    state = await stateOf(resume);
    lap("inflate");
    // The state holds the guest's RAM and its 9p tree: the kernel, initrd and the 9p
    // index need not be loaded again (files are still fetched lazily from baseurl).
    delete v86options.bzimage;
    delete v86options.initrd;
    if (v86options.filesystem && v86options.filesystem.baseurl) {
      v86options.filesystem = { baseurl: v86options.filesystem.baseurl };
    }
  }
  // The guest must not run before its state, persistent layers and agent channel are in place.
  const holdStart = Boolean(persist || state || hostchanOptions);
  if (holdStart) v86options.autostart = false;
  const fs = v86options.filesystem;
  const blobUrl = fs && fs.basefs && fs.basefs.endsWith(".gz") ? await inflatedUrl(fs.basefs) : null;
  if (blobUrl) v86options.filesystem = { ...fs, basefs: blobUrl };
  const { V86 } = await import(libv86_url);
  const emulator = new V86(v86options);
  let stopped = false;
  // After stop() the Python callbacks are destroyed: a flush still queued must not call them.
  const toConsole = byteBatcher((data) => { if (!stopped) sinks.console(data); });
  const toAgent = batcher((data) => { if (!stopped) sinks.agent(data); });
  emulator.add_listener("serial0-output-byte", toConsole);
  emulator.add_listener("virtio-console0-output-bytes", toAgent);
  emulator.add_listener("hostchan-output", toAgent);
  try {
    await new Promise((resolve, reject) => {
      emulator.add_listener("emulator-loaded", resolve);
      emulator.add_listener("download-error", (e) => {
        emulator.destroy();
        reject(new Error(`could not download ${e.file_name || "an asset"}`));
      });
    });
  } finally {
    if (blobUrl) URL.revokeObjectURL(blobUrl);
  }
  lap("load");
  let hostchan = null;
  if (hostchanOptions) {
    const { HostChan } = await import(new URL("./hostchan.mjs", import.meta.url));
    hostchan = new HostChan(emulator, hostchanOptions.base, hostchanOptions.doorbell);
    if (!state) hostchan.init(); // a state carries the rings in its RAM
  }
  if (state) {
    const restoreZeroing = skipRedundantZeroing(emulator);
    try {
      await emulator.restore_state(state);
    } catch (e) {
      await emulator.destroy();
      throw snapshotError(`v86 cannot restore its state (${e.message || e})`);
    } finally {
      restoreZeroing();
    }
    lap("restore");
  }
  let session = null;
  let restored = null;
  if (persist) {
    try {
      const { PersistSession } = await import(new URL("./persist.mjs", import.meta.url));
      session = await PersistSession.open(emulator.fs9p, persist.store, persist.layers,
                                          () => { if (!stopped) sinks.persist_changed(); });
      // On a resume this replaces the snapshot's copy of the layers with the store's.
      restored = await session.restore();
    } catch (e) {
      if (session) session.close();
      await emulator.destroy();
      throw e;
    }
    lap("persist");
  }
  if (holdStart) emulator.run();
  return {
    emulator,
    timings,
    // undefined, not null, when absent: Pyodide turns undefined into None, null into JsNull.
    persist: session ?? undefined,
    restored: restored ?? undefined,
    send(channel, data) {
      if (stopped) return;
      if (channel === "agent") emulator.bus.send(hostchan ? "hostchan-input" : "virtio-console0-input-bytes", data);
      else if (channel === "console") emulator.serial_send_bytes(0, data);
      else throw new Error(`unknown channel ${channel}`);
    },
    // The machine state, gzip'd: {payload: Uint8Array, stateBytes, seconds}.
    async saveState() {
      if (stopped) throw new Error("the emulator was stopped");
      const started = performance.now();
      const raw = await emulator.save_state();
      const payload = await gzip(raw);
      return { payload, stateBytes: raw.byteLength, seconds: (performance.now() - started) / 1000 };
    },
    // Put the running machine back to a snapshot (same options: Python checked its binding).
    // Persistent layers come back from the store, as on a resume. Resolves to what the
    // store restored (like `restored` above).
    async restoreState(snapshot) {
      if (stopped) throw new Error("the emulator was stopped");
      const next = await stateOf(snapshot); // a damaged snapshot fails here, the machine untouched
      await emulator.stop();
      try {
        await emulator.restore_state(next);
      } finally {
        if (session) session.forgetTree(); // its inode ids are the old tree's
        if (hostchan) hostchan.reset(); // the state brought its own rings
      }
      const report = session ? await session.restore() : undefined;
      emulator.run();
      return report;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (session) session.close();
      if (hostchan) hostchan.close();
      unrouteDns();
      await emulator.destroy();
    },
  };
}
