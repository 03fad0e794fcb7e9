// Boot the build_guest64.py guest with bochs.wasm under Node's WASI and time it.
//
//   nice -n 19 node emulators/c2w/boot_node.mjs [bochs.wasm] [guest-dir] [--seconds N]
//
// Defaults: /tmp/c2w-out/bochs.wasm and /tmp/c2w-guest.  The guest dir is
// copied to a temporary directory first (Bochs writes the disk and a
// disk.img.lock file).  COM1 is dev=wasi:stdio (Bochs patch 0006), so the
// console arrives through fd_write(1); this script prints it with the wall
// time of each line, and stops at the shell prompt from guest.json (exit 0)
// or after --seconds (default 120, exit 1).  stdin is /dev/null (no input:
// under node:wasi a read from a pipe or terminal would block Bochs).
// Every WASI function is called through a JS wrapper (node:wasi's native
// functions imported directly crashed Node 20, see README.md).

import { WASI } from 'node:wasi';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const argv = process.argv.slice(2);
let seconds = 120;
const pos = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--seconds') seconds = Number(argv[++i]);
  else pos.push(argv[i]);
}
const wasmPath = pos[0] || '/tmp/c2w-out/bochs.wasm';
const guestDir = pos[1] || '/tmp/c2w-guest';
const guest = JSON.parse(fs.readFileSync(path.join(guestDir, 'guest.json'), 'utf8'));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'c2w-boot-'));
for (const rel of Object.values(guest.files)) {
  fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
  fs.copyFileSync(path.join(guestDir, rel), path.join(dir, rel));
}

const wasi = new WASI({
  version: 'preview1', args: guest.args,
  env: Object.fromEntries((guest.env || []).map((e) => e.split(/=(.*)/s).slice(0, 2))),
  preopens: { '/': dir }, returnOnExit: true,
  stdin: fs.openSync('/dev/null', 'r'),
});
const native = wasi.getImportObject().wasi_snapshot_preview1;
const imports = {};
for (const [name, fn] of Object.entries(native)) imports[name] = (...a) => fn(...a);

const t0 = Date.now();
const stamp = () => ((Date.now() - t0) / 1000).toFixed(2).padStart(7);
const marks = {};
const want = [['kernel', 'Linux version'], ['init', guest.init_mark], ['prompt', guest.prompt]];
let line = '';
let tail = '';
let memory;
function finish(code) {
  if (line) process.stdout.write(`${stamp()} | ${line}\n`);
  console.log(`marks (s after start): ${JSON.stringify(marks)}`);
  fs.rmSync(dir, { recursive: true, force: true });
  process.exit(code);
}
imports.fd_write = (fd, iovs, n, nwritten) => {
  if (fd !== 1) return native.fd_write(fd, iovs, n, nwritten);
  const dv = new DataView(memory.buffer);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const p = dv.getUint32(iovs + 8 * i, true), len = dv.getUint32(iovs + 8 * i + 4, true);
    const s = Buffer.from(memory.buffer, p, len).toString('latin1');
    total += len;
    for (const ch of s) {
      if (ch === '\n') { process.stdout.write(`${stamp()} | ${line}\n`); line = ''; }
      else if (ch !== '\r') line += ch;
    }
    tail = (tail + s).slice(-512);
  }
  for (const [name, text] of want) {
    if (!(name in marks) && text && tail.includes(text)) marks[name] = Number(stamp());
  }
  dv.setUint32(nwritten, total, true);
  if ('prompt' in marks) finish(0);
  return 0;
};

const module = await WebAssembly.compile(fs.readFileSync(wasmPath));
const instance = await WebAssembly.instantiate(module, { wasi_snapshot_preview1: imports });
memory = instance.exports.memory;
setTimeout(() => { console.log(`timeout after ${seconds} s`); finish(1); }, seconds * 1000).unref();
// Bochs runs synchronously, so the timer above only fires if it returns;
// a hard limit is `timeout N node ...`.
const code = wasi.start(instance);
console.log(`Bochs exited with code ${code} before the prompt`);
finish(1);
