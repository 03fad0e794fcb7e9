// Smoke test for the WASI build of Bochs (emulators/c2w/build_bochs.py).
//
//   node emulators/c2w/smoke_node.mjs [path/to/bochs.wasm] [--seconds N] [--native-wasi]
//
// Runs bochs.wasm under Node's built-in WASI (preview1) three times:
//   1. "nobios": a bochsrc whose ROM image does not exist.  Bochs must parse
//      the config, report the missing BIOS and quit by *returning* from
//      main() (quit_sim()'s longjmp is a wasm exception caught in bxmain).
//   2. "bios": Debian's bochsbios + vgabios (apt-get install bochsbios
//      vgabios), no disk, COM1 to a file.  The BIOS must run and report the
//      boot failure; rombios ends with BX_PANIC "No bootable device.", which
//      longjmps out of the CPU loop and quits Bochs like run 1.
//   3. "boot64": a floppy whose boot sector (smoke_boot.asm, assembled bytes
//      below) prints to COM1 from real mode, takes a #UD, enters 64-bit
//      long mode, takes a #PF there and writes "Shutdown" to port 0x8900.
// A run still going after --seconds (default 20) is stopped and fails.
// Each run happens in a worker thread so that it can be stopped; the log
// file is flushed by Bochs after every message.
// Exit status 0 when all runs showed what they should, 1 otherwise.

import { Worker, isMainThread, workerData, parentPort } from 'node:worker_threads';
import { WASI } from 'node:wasi';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

let nativeWasi = false; // --native-wasi

// emulators/c2w/smoke_boot.asm, assembled with nasm -f bin (without the
// zero padding; the 0x55 0xaa signature is added below).
const BOOT_SECTOR_HEX =
  'fa31c08ed88ec08ed0bc007cfcbafb03b003eebec07de87100c7061800817cc7061a0000000f0bbec67de85d00bf0010' +
  'b9001831c0f3abc70600100320c70600200330c706003083000f0116b07d66b8200000000f22e066b8001000000f22d8' +
  '66b9800000c00f32660d000100000f300f20c0660d010000800f22c0eaa67c08005589e5834602025dcfac84c07405e8' +
  '0300ebf6c35250bafd03eca82074fb58baf803ee5ac366b810008ed88ec08ed0bc007c0000b80100000048c1e02848c1' +
  'e8274883f8020f859d00000048beca7d000000000000e89d000000bf00400000b90002000031c0f348ab48b86c7d0000' +
  '0000000066890425e040000066c70425e2400000080066c70425e4400000008e48c1e81066890425e64000000f011c25' +
  'b67d0000b800000040488b0048bed27d000000000000e83d00000048bed67d000000000000e82e00000066bafd03eca8' +
  '4074fb48bedc7d00000000000066ba0089ac84c07403eeebf8f4ebfd4883442408034883c40848cfac84c0741488c466' +
  'bafd03eca82074fb88e066baf803eeebe7c3909090909090000000000000000000000000009a20000000000000920000' +
  '1700987d0000ff0f00400000000000007265616c2000756420006c6f6e6736342000706620006279650d0a0053687574' +
  '646f776e';

if (!isMainThread) {
  // ---- worker: run one Bochs instance ----
  const { wasmPath, preopens, args } = workerData;
  const wasi = new WASI({ version: 'preview1', args, env: { BXSHARE: '/bios' }, preopens, returnOnExit: true });
  // Importing node:wasi's native functions directly crashed Node 20.20.2
  // with bochs.wasm (SIGSEGV in Factory::NewCatchContext once proc_exit
  // threw its exit marker through the wasm frames; in a worker, a V8 fatal
  // "unreachable code" in GC during memory.grow, before any exit).  Calling
  // every WASI function through a plain JS wrapper avoided both, and
  // proc_exit throws our own JS value instead.
  // (--native-wasi skips the wrappers, to check whether Node still crashes.)
  class ProcExit { constructor(code) { this.code = code; } }
  let imports = wasi.getImportObject();
  if (!workerData.nativeWasi) {
    const native = imports.wasi_snapshot_preview1;
    const wrapped = {};
    for (const [name, fn] of Object.entries(native)) wrapped[name] = (...a) => fn(...a);
    wrapped.proc_exit = (code) => { throw new ProcExit(code); };
    imports = { wasi_snapshot_preview1: wrapped };
  }
  const module = await WebAssembly.compile(fs.readFileSync(wasmPath));
  const instance = await WebAssembly.instantiate(module, imports);
  let code;
  try {
    code = wasi.start(instance);
  } catch (e) {
    if (e instanceof ProcExit) {
      code = e.code;
    } else {
      parentPort.postMessage({ kind: 'trap', message: String(e && e.stack || e) });
      process.exit(0);
    }
  }
  parentPort.postMessage({ kind: 'exit', code });
} else {
  await main();
}

function runOnce(wasmPath, workDir, extraPreopens, seconds) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const w = new Worker(fileURLToPath(import.meta.url), {
      workerData: {
        wasmPath,
        nativeWasi,
        args: ['bochs', '-q', '-f', '/bochsrc.txt'],
        preopens: { '/': workDir, ...extraPreopens },
      },
    });
    let result = null;
    const timer = setTimeout(() => {
      result = { kind: 'timeout' };
      w.terminate();
    }, seconds * 1000);
    w.on('message', (m) => { result = m; });
    w.on('error', (e) => { result = { kind: 'error', message: String(e && e.stack || e) }; });
    w.on('exit', () => {
      clearTimeout(timer);
      resolve({ ...(result || { kind: 'exit?' }), seconds: (Date.now() - t0) / 1000 });
    });
  });
}

function bochsrc(lines) {
  return [
    'megs: 32',
    'display_library: nogui',
    'log: /bochsout.txt',
    'panic: action=fatal',
    'error: action=report',
    'info: action=report',
    'debug: action=ignore',
    'clock: sync=none, time0=946684800',
    'mouse: enabled=0',
    ...lines,
    '',
  ].join('\n');
}

function show(title, text, patterns, max = 25) {
  const lines = text.split('\n').filter((l) => patterns.some((p) => p.test(l)));
  console.log(`--- ${title}: ${lines.length} matching line(s)`);
  for (const l of lines.slice(0, max)) console.log('  ' + l);
  return lines;
}

async function main() {
  const argv = process.argv.slice(2);
  let seconds = 20;
  nativeWasi = argv.includes('--native-wasi');
  let wasmPath = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--seconds') seconds = Number(argv[++i]);
    else if (argv[i] !== '--native-wasi') wasmPath = argv[i];
  }
  const here = path.dirname(fileURLToPath(import.meta.url));
  wasmPath = path.resolve(wasmPath || path.join(here, '..', '..', 'build', 'c2w', 'bochs.wasm'));
  if (!fs.existsSync(wasmPath)) {
    console.error(`no ${wasmPath}; build it with emulators/c2w/build_bochs.py --out DIR`);
    process.exit(2);
  }
  console.log(`node ${process.version}, ${wasmPath} (${fs.statSync(wasmPath).size} bytes)`);
  const results = [];

  // ---- 1. no BIOS: must print the problem and return from main ----
  {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bochs-smoke-nobios-'));
    fs.writeFileSync(path.join(dir, 'bochsrc.txt'), bochsrc([
      'romimage: file=/no-such-bios.bin',
      'vgaromimage: file=/no-such-vgabios.bin',
    ]));
    const r = await runOnce(wasmPath, dir, {}, 30);
    console.log(`=== run 1 (no BIOS): ${JSON.stringify(r)}`);
    const log = fs.existsSync(path.join(dir, 'bochsout.txt')) ? fs.readFileSync(path.join(dir, 'bochsout.txt'), 'utf8') : '';
    const hits = show('bochsout.txt', log, [/Bochs x86 Emulator/, /ROM|BIOS|bios/, /PANIC|quit_sim|exit/i]);
    const good = r.kind === 'exit' && hits.some((l) => /no-such-bios|ROM/.test(l));
    console.log(`run 1 ${good ? 'OK' : 'FAILED'}: quit ${r.kind === 'exit' ? `by returning, exit code ${r.code}` : 'abnormally: ' + (r.message || r.kind)}`);
    results.push(good);
  }

  // ---- 2. Debian's BIOS, no disk: the BIOS must run and fail to boot ----
  {
    const biosDir = '/usr/share/bochs';
    const vgaDir = '/usr/share/vgabios';
    if (!fs.existsSync(path.join(biosDir, 'BIOS-bochs-latest')) || !fs.existsSync(path.join(vgaDir, 'vgabios.bin'))) {
      console.log('run 2 SKIPPED: apt-get install bochsbios vgabios');
      results.push(false);
    } else {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bochs-smoke-bios-'));
      fs.writeFileSync(path.join(dir, 'bochsrc.txt'), bochsrc([
        'romimage: file=/bios/BIOS-bochs-latest',
        'vgaromimage: file=/vgabios/vgabios.bin',
        'cpu: model=corei7_sandy_bridge_2600k, ips=10000000',
        'boot: disk',
        'com1: enabled=1, mode=file, dev=/serial.txt',
      ]));
      const r = await runOnce(wasmPath, dir, { '/bios': biosDir, '/vgabios': vgaDir }, seconds);
      console.log(`=== run 2 (BIOS, no disk): ${JSON.stringify(r)}`);
      const log = fs.existsSync(path.join(dir, 'bochsout.txt')) ? fs.readFileSync(path.join(dir, 'bochsout.txt'), 'utf8') : '';
      const hits = show('bochsout.txt', log, [
        /Bochs x86 Emulator/, /CPU is in|initialized CPU model/, /\[BIOS *\]/, /rombios|VGABios/i,
        /Boot failed|No bootable device|Booting from/i, /PANIC|FATAL/,
      ], 40);
      const serial = fs.existsSync(path.join(dir, 'serial.txt')) ? fs.readFileSync(path.join(dir, 'serial.txt'), 'latin1') : null;
      console.log(`--- serial.txt: ${serial === null ? 'not created' : JSON.stringify(serial.slice(0, 400))}`);
      const biosRan = hits.some((l) => /\[BIOS *\]/.test(l));
      const bootFailed = hits.some((l) => /Boot failed|No bootable device/i.test(l));
      // rombios ends with BX_PANIC "No bootable device."; Bochs then quits
      // through quit_sim() -> longjmp out of the CPU loop -> return from main.
      const otherPanic = hits.some((l) => /PANIC/.test(l) && !/No bootable device/.test(l));
      const good = biosRan && bootFailed && !otherPanic && r.kind === 'exit';
      console.log(`run 2 ${good ? 'OK' : 'FAILED'}: BIOS ran: ${biosRan}, boot failure reported: ${bootFailed}, ` +
        `ended by ${r.kind === 'exit' ? `returning, exit code ${r.code}` : r.kind}`);
      results.push(good);
      console.log(`logs kept in ${dir}`);
    }
  }

  // ---- 3. own boot sector: real mode, #UD, long mode, #PF, shutdown port ----
  if (fs.existsSync('/usr/share/bochs/BIOS-bochs-latest') && fs.existsSync('/usr/share/vgabios/vgabios.bin')) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bochs-smoke-boot64-'));
    const img = Buffer.alloc(1474560);
    Buffer.from(BOOT_SECTOR_HEX, 'hex').copy(img, 0);
    img[510] = 0x55; img[511] = 0xaa;
    fs.writeFileSync(path.join(dir, 'boot.img'), img);
    fs.writeFileSync(path.join(dir, 'bochsrc.txt'), bochsrc([
      'romimage: file=/bios/BIOS-bochs-latest',
      'vgaromimage: file=/vgabios/vgabios.bin',
      'cpu: model=corei7_sandy_bridge_2600k, ips=10000000',
      'floppya: 1_44=/boot.img, status=inserted',
      'boot: floppy',
      'com1: enabled=1, mode=file, dev=/serial.txt',
    ]));
    const r = await runOnce(wasmPath, dir, { '/bios': '/usr/share/bochs', '/vgabios': '/usr/share/vgabios' }, seconds);
    console.log(`=== run 3 (own boot sector -> long mode): ${JSON.stringify(r)}`);
    const log = fs.existsSync(path.join(dir, 'bochsout.txt')) ? fs.readFileSync(path.join(dir, 'bochsout.txt'), 'utf8') : '';
    show('bochsout.txt', log, [/Booting from/i, /Shutdown port/, /PANIC/, /quit_sim/, /CPU is in long mode|CPU is in/]);
    const serial = fs.existsSync(path.join(dir, 'serial.txt')) ? fs.readFileSync(path.join(dir, 'serial.txt'), 'latin1') : '';
    console.log(`--- serial.txt: ${JSON.stringify(serial)}`);
    const good = serial.includes('real ud long64 pf bye') && /Shutdown port: shutdown requested/.test(log) && r.kind === 'exit';
    console.log(`run 3 ${good ? 'OK' : 'FAILED'}`);
    results.push(good);
    console.log(`logs kept in ${dir}`);
  } else {
    results.push(false);
  }
  const passed = results.filter(Boolean).length;
  console.log(`smoke: ${passed} passed, ${results.length - passed} failed`);
  const ok = passed === results.length;
  process.exit(ok ? 0 : 1);
}
