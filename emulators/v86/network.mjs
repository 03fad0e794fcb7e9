// The guest's network in the page, for every engine: DHCP, ARP, DNS and TCP carried
// over a Wisp relay. The stack is v86's own (its wisp_network.js and fake_network.js):
// the v86 engine runs it inside its emulator, and an engine that only moves ethernet
// frames (c2w's e1000, Bochs patch 0011) gets the same code through frameNetwork(),
// so there is one network stack to trust, not one per engine.

// ---- names ---------------------------------------------------------------------------
// v86's stack asks DNS-over-HTTPS, as fetch("https://<doh_server>/dns-query", {method:
// "POST", body: <DNS message>}). The backend names a server that does not exist
// (pyapptron.network.DNS_SERVER_NAME), which each machine here makes its own
// (m1.dns.pyapptron.internal, ...); its requests go to the relay's resolver for that
// machine's policy instead, as RFC 8484's GET ?dns=, so no DNS service is asked from the
// page. fetch is the page's: only those names are rerouted.
const dnsRoutes = new Map(); // "https://mN.<name>/dns-query" -> the relay's dns URL (with policy)
let dnsMachines = 0;

// Points netDevice.doh_server (changed in place) at the relay's dnsUrl; returns the undo.
export function routeDnsQueries(netDevice, dnsUrl) {
  const server = `m${++dnsMachines}.${netDevice.doh_server}`;
  const url = `https://${server}/dns-query`;
  netDevice.doh_server = server;
  dnsRoutes.set(url, dnsUrl);
  if (dnsMachines === 1) {
    const pageFetch = globalThis.fetch;
    globalThis.fetch = function (resource, init) {
      const route = typeof resource === "string" ? dnsRoutes.get(resource) : undefined;
      if (!route || !init || !init.body) return pageFetch.call(this, resource, init);
      const body = init.body instanceof Uint8Array ? init.body : new Uint8Array(init.body);
      let text = "";
      for (let i = 0; i < body.length; i++) text += String.fromCharCode(body[i]);
      const dns = btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
      return pageFetch.call(this, `${route}&dns=${dns}`);
    };
  }
  return () => dnsRoutes.delete(url);
}

// ---- frames from another engine -------------------------------------------------------
// libv86 exports only its V86 class, which builds its network stack as it loads. So a V86
// that never runs (no BIOS, no disk, 1 MiB of RAM, never started) carries the stack here:
// frames cross its bus exactly as they do from v86's own network card. Its card (an
// ne2k, stopped since nothing boots) ignores what the stack sends.
//
// options: { libv86_url, wasm_path, net_device: {relay_url, dns_method, doh_server, ...},
//            dns_url }  (absolute URLs)
// toGuest(frame): each frame for the guest, in order.
// Returns { setMac(mac), send(frame), destroy() } (mac as "52:54:00:12:34:56").
export async function frameNetwork(options, toGuest) {
  const netDevice = { ...options.net_device, type: "ne2k" };
  // Fetched here, not by libv86: it reports no failure to load its wasm (it logs, or
  // retries a 5xx for ever), and a network that never comes up must say why.
  const response = await fetch(options.wasm_path);
  if (!response.ok) {
    throw new Error(`the network stack cannot load ${options.wasm_path}: HTTP ${response.status} ` +
                    "(is v86 built? python emulators/build.py)");
  }
  const [module, { V86 }] = await Promise.all([WebAssembly.compile(await response.arrayBuffer()),
                                               import(options.libv86_url)]);
  const unrouteDns = options.dns_url ? routeDnsQueries(netDevice, options.dns_url) : () => {};
  let carrier = null;
  try {
    carrier = new V86({
      wasm_fn: async (imports) => (await WebAssembly.instantiate(module, imports)).exports,
      memory_size: 1 << 20,
      vga_memory_size: 1 << 18,
      net_device: netDevice,
      autostart: false,
      disable_keyboard: true,
      disable_mouse: true,
      disable_speaker: true,
    });
    await new Promise((resolve) => carrier.add_listener("emulator-loaded", resolve));
  } catch (e) {
    unrouteDns();
    if (carrier && carrier.network_adapter) carrier.network_adapter.destroy(); // its relay socket
    throw e;
  }
  const bus = carrier.emulator_bus;  // the emulator's end: the stack listens on the other
  let open = true;
  bus.register("net0-receive", (frame) => { if (open) toGuest(frame); });
  return {
    setMac(mac) { bus.send("net0-mac", mac); },
    send(frame) { if (open) bus.send("net0-send", frame); },
    async destroy() {
      if (!open) return;
      open = false;
      unrouteDns();
      await carrier.destroy();
    },
  };
}
