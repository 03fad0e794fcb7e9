// pyapptron's embedding entry: one import, one call.
//
//   <div id="term"></div>
//   <script type="module">
//     import { boot } from "/web/pyapptron.js";
//     const sandbox = await boot({ terminal: document.getElementById("term") });
//     const r = await sandbox.run("uname -a");   // {returncode, stdout, stderr} (strings)
//   </script>
//
// It loads Pyodide from the locally built assets (no CDN), installs the pyapptron
// wheel, boots a VM through Python's pyapptron.boot() and, if given an element,
// attaches an xterm.js terminal to the VM's console. Without an element (a worker,
// a test) nothing touches the DOM.

const defaultAssets = new URL("../assets/", import.meta.url).href;
let pyodidePromise = null;

function status(onStatus, text) {
  if (onStatus) onStatus(text);
}

/** Load Pyodide and the pyapptron wheel once per page; resolves to the Pyodide instance. */
export function loadPyapptron({ assetsUrl = defaultAssets, onStatus } = {}) {
  if (!pyodidePromise) {
    pyodidePromise = (async () => {
      const started = performance.now();
      status(onStatus, "loading Python (Pyodide)…");
      const { loadPyodide } = await import(assetsUrl + "pyodide/pyodide.mjs");
      const pyodide = await loadPyodide({ indexURL: assetsUrl + "pyodide/" });
      status(onStatus, "installing pyapptron…");
      const wheel = await (await fetch(assetsUrl + "wheels/latest.json")).json();
      await pyodide.loadPackage(assetsUrl + "wheels/" + wheel.file, { messageCallback: () => {} });
      globalThis.pyapptronAssetsUrl = assetsUrl;
      pyodide.runPython("import pyapptron, pyapptron.remote, pyapptron.terminal");
      pyodide.pyapptronLoadSeconds = (performance.now() - started) / 1000;
      return pyodide;
    })();
    pyodidePromise.catch(() => { pyodidePromise = null; });
  }
  return pyodidePromise;
}

async function loadXterm(assetsUrl) {
  if (!document.querySelector("link[data-pyapptron-xterm]")) {
    const css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = assetsUrl + "xterm/xterm.css";
    css.dataset.pyapptronXterm = "";
    document.head.appendChild(css);
  }
  const [{ Terminal }, { FitAddon }] = await Promise.all([
    import(assetsUrl + "xterm/xterm.mjs"),
    import(assetsUrl + "xterm/addon-fit.mjs"),
  ]);
  return { Terminal, FitAddon };
}

/**
 * Boot a VM. Options: emulator ("v86", or "c2w" for x86_64), image (default: the
 * emulator's, "minimal" for v86 and "debian-x86_64" for c2w), memoryMib, terminal (an
 * element to show the console in), assetsUrl, onStatus(text), persist (true or a store
 * name: keep /root, /persist and installed packages in IndexedDB across reloads),
 * cold (true: boot the kernel instead of resuming the image's boot snapshot), resume
 * (the name of a snapshot kept by vm.snapshot(name), or its bytes as a Uint8Array),
 * network (true, "host-only", a Wisp relay URL "wisp://host:port/path/", or
 * {internet, host_ports: [8080], allow_private, relay}: the guest's network, see
 * pyapptron.boot), options (the backend's own keyword options, e.g. for "qemu-wasm": {build, packages,
 * kernel, initrd, disk, append, args}; bytes as Uint8Array).
 * Resolves to {vm, pyodide, terminal, run(cmd), snapshot(name), shutdown()}.
 */
export async function boot({
  emulator = "v86", image = null, memoryMib = null, terminal = null,
  assetsUrl = defaultAssets, onStatus = null, terminalOptions = {}, persist = null,
  cold = false, resume = null, network = null, options = {},
} = {}) {
  const pyodide = await loadPyapptron({ assetsUrl, onStatus });
  let term = null;
  let fit = null;
  if (terminal) {
    const { Terminal, FitAddon } = await loadXterm(assetsUrl);
    term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000, ...terminalOptions });
    fit = new FitAddon();
    term.loadAddon(fit);
    term.open(terminal);
    fit.fit();
    term.write("\x1b[2mbooting " + emulator + (image ? "/" + image : "") + "…\x1b[0m\r\n");
  }
  status(onStatus, `booting ${emulator}${image ? "/" + image : ""}…`);
  const pyboot = pyodide.pyimport("pyapptron").boot;
  const kwargs = {};
  if (image) kwargs.image = image;
  if (memoryMib) kwargs.memory_mib = memoryMib;
  if (persist) kwargs.persist = persist;
  if (cold) kwargs.cold = true;
  if (resume) kwargs.resume = resume;
  if (network) kwargs.network = typeof network === "object" ? pyodide.toPy(network) : network;
  for (const [key, value] of Object.entries(options || {})) {
    // Lists and dicts become Python's; strings, numbers and byte arrays pass as they are.
    const plain = Array.isArray(value) || (value && Object.getPrototypeOf(value) === Object.prototype);
    kwargs[key] = plain ? pyodide.toPy(value) : value;
  }
  const vm = await pyboot.callKwargs(emulator, kwargs);
  let detach = null;
  if (term) {
    detach = pyodide.pyimport("pyapptron.terminal").attach(vm, term);
    const onWindowResize = () => fit.fit();
    globalThis.addEventListener?.("resize", onWindowResize);
    term.focus();
  }
  status(onStatus, "ready");
  const handle = {
    vm, pyodide, terminal: term,
    /** Run a shell command; resolves to {returncode, stdout, stderr} as strings. */
    async run(cmd, { timeout } = {}) {
      const kwargs = { text: true, errors: "replace" };
      if (timeout) kwargs.timeout = timeout;  // JS null would reach Python as jsnull, not None
      const r = await vm.run.callKwargs(cmd, kwargs);
      try {
        return { returncode: r.returncode, stdout: r.stdout, stderr: r.stderr };
      } finally {
        r.destroy();
      }
    },
    /** Commit the persisted directories now (with persist); resolves when they are safe. */
    async sync() {
      const r = await vm.persist.sync();
      try {
        return { files: r.files, bytes: r.bytes, seconds: r.seconds };
      } finally {
        r.destroy();
      }
    },
    /** Save the machine state in this origin's IndexedDB; resolves to the snapshot's name
     * (boot({resume: name}) starts from it). */
    async snapshot(name = null) {
      const info = await (name ? vm.snapshot(name) : vm.snapshot());
      try {
        return info.name;
      } finally {
        info.destroy();
      }
    },
    async shutdown() {
      if (detach) detach();
      await vm.shutdown();
    },
  };
  return handle;
}

/** For CPython hosts (pyapptron.host): one JSON request into pyapptron.remote; resolves
 * to its JSON answer, an error answer included (it never rejects). */
export async function remote(requestJson) {
  try {
    const pyodide = await loadPyapptron();
    const handle = pyodide.pyimport("pyapptron.remote").handle;
    try {
      return await handle(requestJson);
    } finally {
      handle.destroy();
    }
  } catch (e) {
    return JSON.stringify({ error: { type: "BrowserError", message: String(e && e.stack || e), attrs: {} } });
  }
}

/**
 * Dial a CPython host's WebSocket (pyapptron.host.browser.RemoteSession asks for it
 * through WebDriver) and present its token; then serve its requests, "ID\nJSON" each,
 * every one in its own task, answering "ID\nJSON" as each finishes. Resolves once
 * connected; rejects if the host cannot be reached.
 */
export function dialHost(url, token) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.onopen = () => {
      ws.send(JSON.stringify({ pyapptron: "hello", token }));
      resolve();
    };
    ws.onerror = () => reject(new Error(`the page could not connect to ${url}`));
    ws.onmessage = async (e) => {
      const cut = e.data.indexOf("\n");
      const answer = await remote(e.data.slice(cut + 1));
      if (ws.readyState === WebSocket.OPEN) ws.send(e.data.slice(0, cut) + "\n" + answer);
    };
  });
}

globalThis.pyapptron = { boot, loadPyapptron, remote, dialHost };
