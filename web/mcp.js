// MCP transports for a pyapptron page. The server itself is Python (pyapptron.mcp);
// this file only carries JSON-RPC text between it and a client.
//
// In the page (an agent in the same page, an iframe, a browser extension):
//   exposeMcp(sandboxOrPromise, { allowedOrigins })   // the page with the VM
//   const mcp = await connectMcp(window);              // the agent; or connectMcp(iframe.contentWindow, {targetOrigin})
//   await mcp.initialize();
//   const r = await mcp.callTool("exec", { command: "uname -a" });
//
// From a desktop agent: `python -m pyapptron mcp` opens the page with
// ?mcp-bridge=ws://127.0.0.1:PORT/#mcp-token=TOKEN; connectBridge() dials it.

import { loadPyapptron } from "./pyapptron.js";

const CONNECT = "pyapptron-mcp-connect";
const ACCEPTED = "pyapptron-mcp-accepted";

/**
 * An MCP connection (Python) to the VM the sandbox promise boots; `onMessage(text)` gets
 * every answer. It is there as soon as Python is: the handshake is answered while the VM
 * still boots, and calls that need the VM wait for it.
 */
async function pythonConnection(sandboxPromise, onMessage) {
  const pyodide = await loadPyapptron();
  const serve = pyodide.pyimport("pyapptron.mcp.page").serve;
  try {
    return serve(onMessage, Promise.resolve(sandboxPromise).then((sandbox) => sandbox.vm));
  } finally {
    serve.destroy();
  }
}

/**
 * pythonConnection, usable at once: messages that come before Python is up wait for it.
 * `opened` settles when the connection is there (or could not be made); `close()` ends it.
 */
function bufferedConnection(sandboxPromise, onMessage) {
  let connection = null;
  let closed = false;
  let early = [];
  const opened = pythonConnection(sandboxPromise, onMessage).then((made) => {
    if (closed) { made.close(); made.destroy(); return; }
    connection = made;
    for (const text of early) made.receive(text);
    early = [];
  });
  return {
    opened,
    receive(text) { if (connection) connection.receive(text); else if (!closed) early.push(text); },
    close() {
      closed = true;
      early = [];
      if (connection) { connection.close(); connection.destroy(); connection = null; }
    },
  };
}

/**
 * Serve MCP to clients that post {type: "pyapptron-mcp-connect"} with a MessagePort to
 * this window. Only `allowedOrigins` (default: this page's own origin) may connect.
 * Call it early: connections that arrive while the sandbox still boots wait for it.
 * Returns a function that stops accepting new clients.
 */
export function exposeMcp(sandboxOrPromise, { allowedOrigins = [location.origin], target = globalThis } = {}) {
  const ready = Promise.resolve(sandboxOrPromise);
  const onConnect = async (event) => {
    if (!event.data || event.data.type !== CONNECT || !event.ports || !event.ports[0]) return;
    const port = event.ports[0];
    if (!allowedOrigins.includes("*") && !allowedOrigins.includes(event.origin)) {
      port.postMessage({ type: ACCEPTED, error: `origin ${event.origin} may not use this sandbox's MCP server` });
      port.close();
      return;
    }
    const connection = bufferedConnection(ready, (text) => port.postMessage(JSON.parse(text)));
    port.onmessage = (e) => connection.receive(typeof e.data === "string" ? e.data : JSON.stringify(e.data));
    port.start();
    try {
      await connection.opened;
    } catch (e) {
      port.postMessage({ type: ACCEPTED, error: "pyapptron did not load: " + (e && e.message || e) });
      port.close();
      return;
    }
    port.postMessage({ type: ACCEPTED });
  };
  target.addEventListener("message", onConnect);
  return () => target.removeEventListener("message", onConnect);
}

/**
 * A small MCP client over a MessagePort (protocol 2025-11-25). `target` is the window
 * that called exposeMcp (this one, a parent, an iframe's contentWindow).
 */
export async function connectMcp(target = globalThis, { targetOrigin = location.origin, timeoutMs = 300000 } = {}) {
  const channel = new MessageChannel();
  const port = channel.port1;
  const pending = new Map();
  const listeners = new Set();
  let nextId = 1;
  const accepted = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no pyapptron MCP server answered (did the page call exposeMcp?)")), timeoutMs);
    port.onmessage = (e) => {
      const msg = e.data;
      if (msg && msg.type === ACCEPTED) {
        clearTimeout(timer);
        if (msg.error) reject(new Error(msg.error)); else resolve();
        return;
      }
      if (msg && msg.id !== undefined && pending.has(msg.id) && (msg.result !== undefined || msg.error !== undefined)) {
        const { resolve, reject } = pending.get(msg.id);
        pending.delete(msg.id);
        if (msg.error) reject(Object.assign(new Error(msg.error.message), { code: msg.error.code, data: msg.error.data }));
        else resolve(msg.result);
      } else if (msg && msg.method) {
        for (const listener of listeners) listener(msg);
      }
    };
  });
  port.start();
  target.postMessage({ type: CONNECT }, targetOrigin, [channel.port2]);
  await accepted;

  const client = {
    /** Send a JSON-RPC request; `signal` (an AbortSignal) cancels it, `onProgress` gets progress. */
    request(method, params = {}, { signal, onProgress } = {}) {
      const id = nextId++;
      let progressListener = null;
      if (onProgress) {
        params = { ...params, _meta: { ...(params._meta || {}), progressToken: id } };
        progressListener = (msg) => {
          if (msg.method === "notifications/progress" && msg.params.progressToken === id) onProgress(msg.params);
        };
        listeners.add(progressListener);
      }
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        port.postMessage({ jsonrpc: "2.0", id, method, params });
        if (signal) {
          signal.addEventListener("abort", () => {
            client.notify("notifications/cancelled", { requestId: id, reason: String(signal.reason || "aborted") });
            pending.delete(id);
            reject(signal.reason || new Error("cancelled"));
          }, { once: true });
        }
      }).finally(() => progressListener && listeners.delete(progressListener));
    },
    notify(method, params = {}) {
      port.postMessage({ jsonrpc: "2.0", method, params });
    },
    /** Every notification from the server (progress, …). Returns an unsubscribe function. */
    onNotification(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async initialize(clientInfo = { name: "pyapptron-web-client", version: "1" }) {
      const result = await client.request("initialize", { protocolVersion: "2025-11-25", capabilities: {}, clientInfo });
      client.notify("notifications/initialized");
      return result;
    },
    listTools() { return client.request("tools/list"); },
    callTool(name, args = {}, options = {}) { return client.request("tools/call", { name, arguments: args }, options); },
    close() { port.close(); },
  };
  return client;
}

/**
 * Dial the desktop bridge (`python -m pyapptron mcp`): present the token, report boot
 * progress, then carry JSON-RPC between the bridge's clients and the VM's MCP server.
 *
 * The bridge may serve several clients (stdio, and one per Streamable HTTP session or
 * stateless request): each is a channel, and each channel gets its own MCP connection.
 * A frame is "CHANNEL\nJSON" both ways; "CHANNEL\n" alone from the bridge closes one.
 * Control frames are JSON objects ({"pyapptron": ...}).
 */
export function connectBridge(url, token, sandboxPromise, { onStatus = () => {} } = {}) {
  const ws = new WebSocket(url);
  const channels = new Map();  // channel -> its bufferedConnection
  const say = (message) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(message));
  const failed = (e) => {
    // A Python error's message is its whole traceback: the client gets the last line.
    const text = String(e && e.message || e).trim();
    say({ pyapptron: "failed", error: text.split("\n").pop(), detail: text });
  };
  const open = (channel) => {
    const prefix = channel + "\n";
    const connection = bufferedConnection(sandboxPromise, (text) => ws.readyState === WebSocket.OPEN && ws.send(prefix + text));
    channels.set(channel, connection);
    connection.opened.catch((e) => {
      // This client's requests are refused by the bridge; its next message tries again.
      if (channels.get(channel) === connection) channels.delete(channel);
      say({ pyapptron: "channel-failed", channel: Number(channel), error: String(e && e.message || e).trim().split("\n").pop() });
    });
    return connection;
  };
  const close = (channel) => {
    const connection = channels.get(channel);
    channels.delete(channel);
    if (connection) connection.close();
  };
  ws.onopen = async () => {
    say({ pyapptron: "hello", token });
    try {
      await loadPyapptron();  // MCP is served once Python is up; the VM may still be booting
    } catch (e) {
      failed(e);
      return;
    }
    say({ pyapptron: "ready" });
    onStatus("MCP bridge connected");
    Promise.resolve(sandboxPromise).then(
      ({ vm }) => say({ pyapptron: "status", text: `VM ${vm.emulator}/${vm.image} booted in ${vm.boot_seconds.toFixed(1)} s` }),
      (e) => say({ pyapptron: "boot-failed", error: String(e && e.message || e).trim().split("\n").pop() }));
  };
  ws.onmessage = (e) => {
    const frame = String(e.data);
    const cut = frame.indexOf("\n");
    if (cut < 0) return;
    const channel = frame.slice(0, cut);
    const text = frame.slice(cut + 1);
    if (!text) { close(channel); return; }
    (channels.get(channel) || open(channel)).receive(text);
  };
  ws.onclose = (e) => {
    for (const channel of [...channels.keys()]) close(channel);
    onStatus(e.code === 4003 ? "MCP bridge refused this page: wrong token" : "MCP bridge disconnected");
  };
  return ws;
}
