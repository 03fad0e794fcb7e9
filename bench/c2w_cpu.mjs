// c2w CPU rate from JS alone (no Pyodide): boot the debian-x86_64 image with a
// given bochs.wasm and bochsrc through the real adapter and worker, then type a
// busybox shell loop on the console and time it.  Driven by bench/c2w_cpu.py.
//
// The rate counts emulated instructions directly.  Bochs advances its tick
// counter by one per instruction (a repeated string op: per iteration) and the
// guest's clock is that counter over `ips` (the PIT, the APIC timer and the TSC
// all run on ticks), so guest seconds * ips between two reads of /proc/uptime is
// the instructions executed between them.  Wall time is the arrival of the two
// console lines that carry those reads, so the command's round trip is outside
// it.  Under `clock: sync=slowdown` Bochs sleeps whenever the guest gets ahead
// of real time, which caps the rate at ips; the driver therefore also boots the
// same guest with `sync=none` (same ips, so the same guest work, timer
// interrupts included: only the host-side sleeping is gone).

const enc = new TextEncoder();
const dec = new TextDecoder("latin1");

export async function run(opts) {
  const adapter = await import(opts.adapter_url);
  let text = "";
  const arrivals = []; // [performance.now(), text length after the chunk]
  let waiter = null;
  const sinks = {
    console(data) {
      text += dec.decode(data);
      arrivals.push([performance.now(), text.length, Date.now()]);
      if (waiter) waiter();
    },
    agent() {},
    exit(code, log) { text += `\n@@EXIT ${code}\n`; if (waiter) waiter(); },
  };
  // Resolve when re matches text from `from` on; returns [match, arrival time of its end].
  const waitFor = (re, from, ms) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => { waiter = null; reject(new Error(`timeout waiting for ${re}: ${text.slice(-400)}`)); }, ms);
    const check = () => {
      re.lastIndex = from;
      const m = re.exec(text);
      if (m) {
        const end = m.index + m[0].length;
        const a = arrivals.find(([, len]) => len >= end);
        clearTimeout(timer);
        waiter = null;
        resolve([m, a ? a[0] : performance.now(), a ? a[2] : Date.now()]);
      }
    };
    waiter = check;
    check();
  });
  const t0 = performance.now();
  const handle = await adapter.start(opts.options, sinks);
  const [, tPrompt] = await waitFor(new RegExp(opts.prompt.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "g"), 0, 300000);
  const result = { boot_to_prompt_s: (tPrompt - t0) / 1000, timings: handle.timings, loops: [] };
  const pause = (ms) => new Promise((r) => setTimeout(r, ms));
  await pause(opts.settle_ms || 500);
  for (const n of opts.loops) {
    const from = text.length;
    // `read` is a builtin: no fork around the timed part.  The echoed command
    // line shows "@@A $a", never "@@A 1.23", so only the output matches.
    handle.send("console", enc.encode(
      `read a x </proc/uptime; echo "@@A $a"; i=0; while [ $i -lt ${n} ]; do i=$((i+1)); done; ` +
      `read b x </proc/uptime; echo "@@B $b"\n`));
    const [ma, ta, ea] = await waitFor(/@@A (\d+\.\d+)/g, from, 120000);
    if (opts.counts) await pause(1100);
    const ca = (() => { const l = handle.log().split('\n').filter((x) => x.startsWith('@@COUNTS ')); return l.length ? JSON.parse(l[l.length - 1].slice(9)) : null; })();
    const [mb, tb, eb] = await waitFor(/@@B (\d+\.\d+)/g, from, 900000);
    const lastCounts = () => { const l = handle.log().split('\n').filter((x) => x.startsWith('@@COUNTS ')); return l.length ? JSON.parse(l[l.length - 1].slice(9)) : null; };
    const cb = lastCounts();
    const guest = Number(mb[1]) - Number(ma[1]);
    const wall = (tb - ta) / 1000;
    result.loops.push({ n, epoch_ms: [ea, eb], guest_s: Math.round(guest * 1000) / 1000, wall_s: Math.round(wall * 1000) / 1000,
                        MIPS: Math.round(guest * opts.ips / wall / 1e5) / 10 });
    if (ca && cb) {  // import calls per second over the loop (instrumented worker only)
      const dt = (cb.t - ca.t) / 1000, rates = {};
      for (const k of Object.keys(cb)) if (k !== 't' && cb[k] - ca[k]) rates[k] = Math.round((cb[k] - ca[k]) / dt);
      result.loops[result.loops.length - 1].imports_per_s = rates;
    }
    await waitFor(new RegExp(opts.prompt.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "g"), from, 60000);
    await pause(opts.settle_ms || 500);
  }
  result.log_tail = handle.log().slice(-3000);
  await handle.stop();
  return result;
}
