// The qemu-wasm adapter: starts a user's QEMU-Wasm build (an Emscripten ES module,
// -sMODULARIZE -sEXPORT_ES6, with file_packager packages) the way QEMU-Wasm's own
// pages do, and turns its console into pyapptron's byte channel, with the same
// `start(options, sinks)` as every emulator adapter.
//
// pyapptron.backends.qemu_wasm has already checked the build's file set and built
// the command line; options:
//   build         the build directory's URL (locateFile resolves names against it)
//   main          the main script's name in it ("out.js")
//   packages      file_packager scripts (load-*.js URLs), loaded in this order
//   arguments     Module.arguments (QEMU's command line)
//   files         {path: Uint8Array | URL}: written into the emulator's FS by a preRun
//   dirs          directories made by that preRun (the -virtfs share)
//   xterm_pty_url xterm-pty's ES module: openpty() gives the pty QEMU reads and writes
//
// A package script reads and extends the global `Module`, so each machine lives in a
// hidden iframe of its own: its globals are separate, and removing it (stop) ends
// QEMU's threads and frees its memory.

function incompleteBuild(message) {
  return Object.assign(new Error(message), { name: "IncompleteBuild" });
}

function notIsolated() {  // the name is the pyapptron error class (pyapptron._browser.JS_ERRORS)
  return Object.assign(new Error(
    "this page is not cross-origin isolated, so QEMU-Wasm (which runs QEMU in " +
    "pthreads on SharedArrayBuffer) cannot start. Serve the page with the headers " +
    "'Cross-Origin-Opener-Policy: same-origin' and 'Cross-Origin-Embedder-Policy: require-corp' " +
    "(python -m pyapptron serve sends them)."), { name: "NotIsolated" });
}

const POLLOUT = 4;

export async function start(options, sinks) {
  if (!globalThis.crossOriginIsolated || typeof SharedArrayBuffer === "undefined") throw notIsolated();
  const page = (u) => new URL(u, globalThis.location.href).href;
  const build = page(options.build);
  const timings = {};
  const t0 = performance.now();
  const since = () => (performance.now() - t0) / 1000;
  const { openpty } = await import(page(options.xterm_pty_url));

  // Inputs given as URLs (kernel=, initrd=, disk=, files=) are fetched before QEMU starts.
  const files = {};
  await Promise.all(Object.entries(options.files || {}).map(async ([path, value]) => {
    if (typeof value !== "string") { files[path] = value; return; }
    const response = await fetch(page(value));
    if (!response.ok) throw incompleteBuild(`${value} (for ${path}) answered HTTP ${response.status}`);
    files[path] = new Uint8Array(await response.arrayBuffer());
  }));
  timings.inputs = since();

  // The pty: its master side is attached to a minimal terminal object that hands
  // output to pyapptron's console and takes its input, as xterm.js would.
  const { master, slave } = openpty();
  let typed = null;
  master.activate({
    write(data, done) {
      sinks.console(typeof data === "string" ? new TextEncoder().encode(data) : data.slice());
      if (done) done();
    },
    onData(listener) { typed = listener; return { dispose() { typed = null; } }; },
    onBinary() { return { dispose() {} }; },
    onResize() { return { dispose() {} }; },
  });

  const logTail = [];
  let logChars = 0;
  const keepLog = (text) => {
    logTail.push(String(text));
    logChars += String(text).length + 1;
    while (logChars > 65536 && logTail.length > 1) logChars -= logTail.shift().length + 1;
  };
  const logText = () => logTail.join("\n");

  const frame = document.createElement("iframe");
  frame.style.display = "none";
  frame.setAttribute("aria-hidden", "true");
  frame.srcdoc = "<!doctype html><meta charset=utf-8><title>pyapptron qemu-wasm</title>";
  await new Promise((resolve) => { frame.onload = resolve; document.body.appendChild(frame); });
  const win = frame.contentWindow;
  const doc = frame.contentDocument;
  let stopped = false;
  let ended = false;
  const end = (code, why) => {
    if (ended) return;
    ended = true;
    if (why) keepLog(why);
    if (sinks.exit) sinks.exit(code, logText());
  };

  const Module = {
    arguments: options.arguments,
    locateFile: (name) => new URL(name, build).href,
    mainScriptUrlOrBlob: new URL(options.main, build).href,
    pty: slave,
    preRun: [],
    print: keepLog,
    printErr: keepLog,
    onExit: (code) => end(code),
    onAbort: (what) => end(-1, `QEMU-Wasm aborted: ${what}`),
  };
  // Before the packages' own preRun steps (they queue theirs as they load).
  Module.preRun.push(() => {
    const mkdirs = (dir) => { if (dir !== "/") Module.FS_createPath("/", dir.replace(/^\//, ""), true, true); };
    for (const dir of options.dirs || []) mkdirs(dir);
    for (const [path, data] of Object.entries(files)) {
      const slash = path.lastIndexOf("/");
      const dir = path.slice(0, slash) || "/";
      mkdirs(dir);
      Module.FS_createDataFile(dir, path.slice(slash + 1), data, true, true, true);
    }
  });
  win.Module = Module;

  const fail = (e) => { stopped = true; frame.remove(); throw e; };
  try {
    for (const url of options.packages || []) await loadScript(doc, page(url));
    timings.packages_loaded = since();
    const factory = await importInFrame(win, doc, new URL(options.main, build).href);
    const instance = await factory(Module);
    timings.started = since();
    // QEMU-Wasm's pages make the TTY's poll report "not readable" while the pty has
    // nothing, so QEMU's main loop waits instead of reading an empty console.
    const ops = instance && instance.TTY && instance.TTY.stream_ops;
    if (ops && typeof ops.poll === "function") {
      const poll = ops.poll;
      ops.poll = function (stream, timeout) {
        return slave.readable ? poll.call(this, stream, timeout) : (slave.writable ? POLLOUT : 0);
      };
    }
  } catch (e) {
    fail(e instanceof Error ? e : new Error(String(e)));
  }

  return {
    timings,
    log() { return logText(); },
    send(channel, data) {
      if (stopped || channel !== "console" || !typed) return;
      typed(Array.from(new Uint8Array(data)));
    },
    async stop() {
      stopped = true;
      master.dispose();
      frame.remove();
    },
  };
}

function loadScript(doc, url) {
  return new Promise((resolve, reject) => {
    const s = doc.createElement("script");
    s.src = url;
    s.onload = resolve;
    s.onerror = () => reject(incompleteBuild(`the package script ${url} did not load`));
    doc.head.appendChild(s);
  });
}

// The main script is imported inside the iframe, so its globals (and its workers'
// parent) are the iframe's, not the page's.
function importInFrame(win, doc, url) {
  return new Promise((resolve, reject) => {
    const key = "__pyapptronImport" + Math.random().toString(36).slice(2);
    win[key] = (m, error) => {
      delete win[key];
      if (error) reject(incompleteBuild(`${url} could not be imported: ${error}`));
      else if (typeof m.default !== "function")
        reject(incompleteBuild(`${url} has no default export: build it with -sMODULARIZE -sEXPORT_ES6=1`));
      else resolve(m.default);
    };
    const s = doc.createElement("script");
    s.type = "module";
    s.textContent = `import(${JSON.stringify(url)}).then((m) => window.${key}(m), (e) => window.${key}(null, String(e)));`;
    doc.head.appendChild(s);
  });
}
