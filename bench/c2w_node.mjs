// c2w CPU rate under Node (node:wasi), for comparing bochs.wasm builds outside the browser.
// A diagnostic beside bench/c2w_cpu.py (Chromium is the product): it prints MIPS by wall time
// and per CPU second of the Node process, and the WASI import calls per second during the loop.
// The guest dir is a copy of build/assets/images/debian-x86_64 with kernel.bin.gz gunzipped
// and guest.json's "/kernel.bin" pointing at it (as emulators/c2w/boot_node.mjs expects).
//   node bench/c2w_node.mjs bochs.wasm guest-dir [loop] [loops] [sync]
import { WASI } from 'node:wasi';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
const [wasmPath, guestDir, loopN = '30000', loopsN = '2', sync = 'none'] = process.argv.slice(2);
const guest = JSON.parse(fs.readFileSync(path.join(guestDir, 'guest.json'), 'utf8'));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'c2w-loop-'));
for (const rel of Object.values(guest.files)) {
  fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
  fs.copyFileSync(path.join(guestDir, rel), path.join(dir, rel));
}
const rc = fs.readFileSync(path.join(dir, 'bochsrc.txt'), 'utf8').replace(/sync=\w+/, `sync=${sync}`);
fs.writeFileSync(path.join(dir, 'bochsrc.txt'), rc);
const wasi = new WASI({ version: 'preview1', args: guest.args,
  env: Object.fromEntries((guest.env || []).map((e) => e.split(/=(.*)/s).slice(0, 2))),
  preopens: { '/': dir }, returnOnExit: true, stdin: fs.openSync('/dev/null', 'r') });
const native = wasi.getImportObject().wasi_snapshot_preview1;
const imports = {};
const counts = {};
for (const [name, fn] of Object.entries(native)) { counts[name] = 0; imports[name] = (...a) => { counts[name]++; return fn(...a); }; }
let memory, text = '', input = Buffer.alloc(0), state = 'boot', ta = 0, ga = 0, left = Number(loopsN), ca = null;
const t0 = performance.now();
const ips = guest.ips;
const cmd = `read a x </proc/uptime; echo "@@A $a"; i=0; while [ $i -lt ${loopN} ]; do i=$((i+1)); done; read b x </proc/uptime; echo "@@B $b"\n`;
imports.fd_read = (fd, iovs, n, nread) => {
  counts.fd_read++;
  if (fd !== 0) return native.fd_read(fd, iovs, n, nread);
  const dv = new DataView(memory.buffer);
  let total = 0;
  for (let i = 0; i < n && input.length; i++) {
    const p = dv.getUint32(iovs + 8 * i, true), len = dv.getUint32(iovs + 8 * i + 4, true);
    const k = Math.min(len, input.length);
    new Uint8Array(memory.buffer, p, k).set(input.subarray(0, k));
    input = input.subarray(k); total += k;
  }
  dv.setUint32(nread, total, true);
  return 0;
};
imports.fd_write = (fd, iovs, n, nwritten) => {
  counts.fd_write++;
  if (fd !== 1) return native.fd_write(fd, iovs, n, nwritten);
  const dv = new DataView(memory.buffer);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const p = dv.getUint32(iovs + 8 * i, true), len = dv.getUint32(iovs + 8 * i + 4, true);
    text += Buffer.from(memory.buffer, p, len).toString('latin1'); total += len;
  }
  dv.setUint32(nwritten, total, true);
  const now = performance.now();
  if (state === 'boot' && text.includes(guest.prompt)) {
    console.log(`prompt ${((now - t0) / 1000).toFixed(2)} s`); state = 'a'; text = ''; input = Buffer.from(cmd);
  } else if (state === 'a') {
    const m = /@@A (\d+\.\d+)/.exec(text);
    if (m) { ta = now; ga = Number(m[1]); state = 'b'; ca = { ...counts }; globalThis.cpuA = process.cpuUsage(); }
  } else if (state === 'b') {
    const m = /@@B (\d+\.\d+)/.exec(text);
    if (m) {
      const g = Number(m[1]) - ga, w = (now - ta) / 1000; const cu = process.cpuUsage(globalThis.cpuA); const cs = (cu.user + cu.system) / 1e6;
      const rates = {}; for (const k of Object.keys(counts)) if (counts[k] - ca[k]) rates[k] = Math.round((counts[k] - ca[k]) / w);
      console.log(`loop guest ${g.toFixed(2)} s wall ${w.toFixed(3)} s MIPS ${(g * ips / w / 1e6).toFixed(1)} perCPU ${(g * ips / cs / 1e6).toFixed(1)} imports/s ${JSON.stringify(rates)}`);
      text = '';
      if (--left > 0) { state = 'a'; input = Buffer.from(cmd); } else { fs.rmSync(dir, { recursive: true, force: true }); process.exit(0); }
    }
  }
  return 0;
};
const module = await WebAssembly.compile(fs.readFileSync(wasmPath));
// Bochs's patches import these (0008 the agent's shared-memory channel, 0011 the network
// card, 0012 the saved state): none of them is served here.
const pyapptron = { hostchan_attach: () => 0, hostchan_kick: () => {}, net_attach: () => 0, net_send: () => {},
                    net_recv: () => 0, state_request: () => 0, state_saved: () => {} };
const instance = await WebAssembly.instantiate(module, { wasi_snapshot_preview1: imports, pyapptron });
memory = instance.exports.memory;
wasi.start(instance);
