// Bench baseline: the same guest driven from JS alone, without Pyodide or pyapptron.
// It speaks just enough of the agent protocol (emulators/agent/PROTOCOL.md) to time
// a `true` round trip. Options come from pyapptron's own V86Backend so both runs boot
// the identical machine.

const enc = new TextEncoder();

function frame(type, id, payload) {
  const out = new Uint8Array(12 + payload.length);
  const dv = new DataView(out.buffer);
  dv.setUint16(0, 0x5aa5, true); out[2] = type; dv.setUint32(4, id, true); dv.setUint32(8, payload.length, true);
  out.set(payload, 12);
  return out;
}

function execPayload(argv) {
  const parts = [];
  const u32 = (n) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, n, true); parts.push(b); };
  u32(0); u32(argv.length);
  for (const a of argv) { const s = enc.encode(a); u32(s.length); parts.push(s); }
  u32(0); u32(0);
  const size = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(size);
  let o = 0; for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

// A listener for the agent channel that calls onFrame(type, id) per complete frame.
function frameListener(onFrame) {
  let buf = new Uint8Array(0);
  return (chunk) => {
    const joined = new Uint8Array(buf.length + chunk.length); joined.set(buf); joined.set(chunk, buf.length); buf = joined;
    let pos = 0;
    while (buf.length - pos >= 12) {
      const dv = new DataView(buf.buffer, buf.byteOffset + pos);
      const type = dv.getUint8(2), id = dv.getUint32(4, true), len = dv.getUint32(8, true);
      if (buf.length - pos < 12 + len) break;
      onFrame(type, id);
      pos += 12 + len;
    }
    buf = buf.slice(pos);
  };
}

// Boots a fresh V86 with pyapptron's options and times it to the shell prompt and to
// the agent's HELLO, then to `rounds` EXEC round trips.
export async function run(options, rounds) {
  const { libv86_url, hostchan, ...v86options } = options;
  const { V86 } = await import(libv86_url);
  // The agent's shared-memory channel, as the adapter sets it up (it ships beside libv86).
  const { HostChan } = hostchan ? await import(new URL("hostchan.mjs", libv86_url)) : {};
  if (hostchan) v86options.autostart = false; // the rings are set up before the first instruction
  const t0 = performance.now();
  const emulator = new V86(v86options);
  if (hostchan) {
    emulator.add_listener("emulator-loaded", () => {
      new HostChan(emulator, hostchan.base, hostchan.doorbell).init();
      emulator.run();
    });
  }
  let serial = "";
  let promptAt = null;
  let helloAt = null;
  let readyResolve;
  const ready = new Promise((r) => { readyResolve = r; });
  const check = () => { if (promptAt !== null && helloAt !== null) readyResolve(); };
  const onSerial = (b) => {
    serial += String.fromCharCode(b);
    if (/# $/.test(serial)) { promptAt = performance.now() - t0; emulator.remove_listener("serial0-output-byte", onSerial); check(); }
  };
  const onAgent = frameListener((type) => {
    if (type === 0x01 && helloAt === null) { helloAt = performance.now() - t0; check(); }
  });
  const output = hostchan ? "hostchan-output" : "virtio-console0-output-bytes";
  emulator.add_listener("serial0-output-byte", onSerial);
  emulator.add_listener(output, onAgent);
  await ready;
  emulator.remove_listener(output, onAgent);
  const times = await roundtrips(emulator, rounds, 1, Boolean(hostchan));
  await emulator.destroy();
  return { prompt_s: promptAt / 1000, agent_hello_s: helloAt / 1000, roundtrip_ms: times };
}

// Round trips of `true` on an emulator that pyapptron already drives: JS sends EXEC
// frames on the same channel (ids from `firstId`, which Python's client ignores) and
// times each EXIT, so both paths are measured on one machine in the same state.
// hostchan: the agent talks over the shared-memory rings (emulators/v86/hostchan.mjs).
export async function roundtrips(emulator, rounds, firstId, hostchan) {
  const output = hostchan ? "hostchan-output" : "virtio-console0-output-bytes";
  const input = hostchan ? "hostchan-input" : "virtio-console0-input-bytes";
  const waiters = new Map();
  const listener = frameListener((type, id) => {
    if (type === 0x83 && waiters.has(id)) { waiters.get(id)(); waiters.delete(id); }
  });
  emulator.add_listener(output, listener);
  const payload = execPayload(["/bin/sh", "-c", "true"]);
  const times = [];
  try {
    for (let i = 0; i < rounds; i++) {
      const id = firstId + i;
      const start = performance.now();
      await new Promise((resolve) => { waiters.set(id, resolve); emulator.bus.send(input, frame(0x10, id, payload)); });
      times.push(performance.now() - start);
    }
  } finally {
    emulator.remove_listener(output, listener);
  }
  return times;
}
