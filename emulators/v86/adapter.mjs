// The v86 adapter: starts a V86 and turns it into two byte channels for pyapptron.
// Every emulator adapter exports the same `start(options, sinks)`; Python (through
// pyapptron/_browser) is its only caller. Output reaches Python in batches, one per
// emulator tick, never byte by byte.

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

export async function start(options, sinks) {
  const { libv86_url, persist, ...v86options } = options;
  // With persistent layers the guest must not run before they are back in its 9p tree.
  if (persist) v86options.autostart = false;
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
  let session = null;
  let restored = null;
  if (persist) {
    try {
      const { PersistSession } = await import(new URL("./persist.mjs", import.meta.url));
      session = await PersistSession.open(emulator.fs9p, persist.store, persist.layers,
                                          () => { if (!stopped) sinks.persist_changed(); });
      restored = await session.restore();
    } catch (e) {
      if (session) session.close();
      await emulator.destroy();
      throw e;
    }
    emulator.run();
  }
  return {
    emulator,
    // undefined, not null, when absent: Pyodide turns undefined into None, null into JsNull.
    persist: session ?? undefined,
    restored: restored ?? undefined,
    send(channel, data) {
      if (stopped) return;
      if (channel === "agent") emulator.bus.send("virtio-console0-input-bytes", data);
      else if (channel === "console") emulator.serial_send_bytes(0, data);
      else throw new Error(`unknown channel ${channel}`);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (session) session.close();
      await emulator.destroy();
    },
  };
}
