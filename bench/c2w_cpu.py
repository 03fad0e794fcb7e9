#!/usr/bin/env python3
"""c2w CPU rate in headless Chromium from JS alone (bench/c2w_cpu.mjs), for comparing builds.

    python3 bench/c2w_cpu.py [--wasm LABEL=PATH ...] [--rounds 3] [--loop 30000] [--sync none,slowdown]
                             [--ips N] [--loops-per-boot 2] [--js-flags FLAGS] [--out FILE]

Each round boots the image once per variant (LABEL=PATH for a bochs.wasm, default the built
one; SYNC in --sync), in that order, so the variants interleave (A B A B ...) and drift on a
shared machine hits them alike.  Each boot types --loops-per-boot shell loops of --loop
iterations on the console; MIPS = (guest seconds between two reads of /proc/uptime) * ips /
(wall seconds between the arrivals of the two console lines that carry them).  Bochs's
clock is its instruction counter over ips, so the numerator counts instructions; with
sync=none nothing caps the rate, with sync=slowdown it cannot exceed ips (see c2w_cpu.mjs).
Also the CPU time the worker thread got (see WorkerCpu): instructions per worker CPU second.
Prints and saves JSON: every run, and per variant and loop index the median and range.
--js-flags passes V8 flags to Chromium: a diagnostic only (a user's browser has none).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pyapptron.host import browser as browser_mod  # noqa: E402
from pyapptron.host import Browser, PageServer  # noqa: E402

IMAGE = "debian-x86_64"
ASSETS = HERE.parent / "build" / "assets"
RING_BYTES = {"console": 1 << 16, "agent": 1 << 17}  # as pyapptron/backends/c2w.py


def bochsrc(spec: dict, ips: int | None, sync: str) -> str:
    body = spec["bochsrc_body"]
    if ips:
        body = re.sub(r"ips=\d+", f"ips={ips}", body)
    body = re.sub(r"sync=\w+", f"sync={sync}", body)
    return f"megs: {spec.get('memory_mib', 256)}\n{body}"


def adapter_options(spec: dict, wasm_url: str, rc: str, worker_url: str) -> dict:
    base = f"/assets/images/{IMAGE}/"
    inflate = set(spec.get("inflate", []))
    files = {}
    for guest, rel in spec["files"].items():
        if guest == "/bochsrc.txt":
            continue
        url = base + rel
        files[guest] = {"url": url, "inflate": True} if guest in inflate else url
    files["/bochsrc.txt"] = list(rc.encode())  # turned into a Uint8Array in the page
    return {
        "wasm": wasm_url, "args": spec["args"], "env": spec.get("env", []), "files": files, "preopens": ["/"],
        "channels": {"console": {"in": 0, "out": 1}, "agent": {"in": spec["agent_fd"], "out": spec["agent_fd"]}},
        "stderr": "log", "worker_url": worker_url, "shim_url": "/assets/c2w/browser_wasi_shim/dist/index.js",
        "ring_bytes": RING_BYTES,
    }


class WorkerCpu:
    """Samples the CPU time (utime + stime) of this browser's DedicatedWorker threads every
    20 ms, so a loop's instructions can be divided by the CPU seconds the worker got as well
    as by wall seconds: on a machine shared with other work the wall figure drops whenever the
    worker waits for a core, the CPU figure much less (caches and SMT still shared)."""

    HZ = os.sysconf("SC_CLK_TCK")

    def __init__(self, profile: str):
        self.profile = profile
        self.samples = []  # (epoch s, {tid: cpu s})
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pids(self):
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if self.profile in (d / "cmdline").read_bytes().decode(errors="replace"):
                        yield d
                except OSError:
                    pass

    def _run(self):
        pids, last = [], 0.0
        while not self.stop.wait(0.02):
            now = time.time()
            if now - last > 1:
                pids, last = list(self._pids()), now
            cpu = {}
            for d in pids:
                try:
                    for t in (d / "task").iterdir():
                        if (t / "comm").read_text().startswith("DedicatedWorker"):
                            f = (t / "stat").read_text().rsplit(")", 1)[1].split()
                            cpu[int(t.name)] = (int(f[11]) + int(f[12])) / self.HZ
                except OSError:
                    pass
            self.samples.append((now, cpu))

    def between(self, t0: float, t1: float) -> float | None:
        """CPU seconds of the busiest worker thread between epoch times t0 and t1."""
        a = next((c for t, c in reversed(self.samples) if t <= t0), None)
        b = next((c for t, c in self.samples if t >= t1), None)
        if not a or not b:
            return None
        deltas = [b[k] - a[k] for k in b if k in a]
        return max(deltas) if deltas else None


RUN_JS = """
const [opts, done] = [arguments[0], arguments[arguments.length - 1]];
const o = opts.options;
o.files['/bochsrc.txt'] = new Uint8Array(o.files['/bochsrc.txt']);
import(opts.module).then((m) => m.run(opts)).then((r) => done({ok: r}), (e) => done({error: String(e && e.stack || e)}));
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", action="append", default=[], help="LABEL=PATH of a bochs.wasm (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loop", type=int, default=30000)
    ap.add_argument("--loops-per-boot", type=int, default=2)
    ap.add_argument("--sync", default="none", help="comma-separated clock sync modes to boot each variant with")
    ap.add_argument("--ips", type=int, default=None, help="override the image's ips")
    ap.add_argument("--js-flags", default=None, help="V8 flags for Chromium (diagnostic only)")
    ap.add_argument("--worker", default=None, help="another worker.mjs to serve (diagnostic)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    spec = json.loads((ASSETS / "images" / IMAGE / "image.json").read_text())
    ips = args.ips or spec["ips"]
    variants = []
    tmp = Path(tempfile.mkdtemp(prefix="c2w-cpu-"))
    shutil.copyfile(HERE / "c2w_cpu.mjs", tmp / "c2w_cpu.mjs")
    (tmp / "index.html").write_text("<!doctype html><title>c2w cpu</title>\n")
    worker_url = "/assets/c2w/worker.mjs"
    if args.worker:
        shutil.copyfile(args.worker, tmp / "worker.mjs")
        worker_url = "/perf/worker.mjs"
    wasms = args.wasm or [f"built={ASSETS / 'c2w' / 'bochs.wasm'}"]
    for item in wasms:
        label, _, path = item.partition("=")
        shutil.copyfile(path, tmp / f"{label}.wasm")
        for sync in args.sync.split(","):
            variants.append((label if len(args.sync.split(",")) == 1 else f"{label}/{sync}", label, sync))
    if args.js_flags:
        browser_mod.CHROMIUM_FLAGS.append(f"--js-flags={args.js_flags}")
    runs = []
    with PageServer(refresh=False, extra_roots={"/perf/": tmp}) as server, Browser() as browser:
        d = browser.driver
        sampler = WorkerCpu(browser._tmp_profile)
        for rnd in range(args.rounds):
            for name, label, sync in variants:
                d.get(server.url + "perf/index.html")
                opts = {
                    "module": "/perf/c2w_cpu.mjs", "adapter_url": "/assets/c2w/adapter.mjs",
                    "options": adapter_options(spec, f"/perf/{label}.wasm", bochsrc(spec, args.ips, sync), worker_url),
                    "prompt": spec["prompt"], "ips": ips, "counts": bool(args.worker), "loops": [args.loop] * args.loops_per_boot,
                }
                t = time.perf_counter()
                r = d.execute_async_script(RUN_JS, opts)
                if "error" in r:
                    print(f"{name}: ERROR {r['error']}", flush=True)
                    runs.append({"variant": name, "round": rnd, "error": r["error"]})
                    continue
                r = r["ok"]
                tail = r.pop("log_tail", "")
                time.sleep(0.1)
                for lp in r["loops"]:
                    cpu_s = sampler.between(lp["epoch_ms"][0] / 1000, lp["epoch_ms"][1] / 1000)
                    lp["worker_cpu_s"] = round(cpu_s, 3) if cpu_s else None
                    lp["MIPS_per_cpu_s"] = round(lp["guest_s"] * ips / cpu_s / 1e6, 1) if cpu_s else None
                rec = {"variant": name, "round": rnd, "sync": sync, "wall_s": round(time.perf_counter() - t, 2), **r}
                runs.append(rec)
                print(f"r{rnd} {name:>24}: boot {r['boot_to_prompt_s']:.2f} s, MIPS "
                      + ", ".join(f"{lp['MIPS']:.1f}" for lp in r["loops"]) + "; per worker CPU s "
                      + ", ".join(f"{lp['MIPS_per_cpu_s']}" for lp in r["loops"]), flush=True)
                if args.worker and "@@" in tail:
                    rec["worker_log"] = [ln for ln in tail.splitlines() if ln.startswith("@@")][-3:]
    summary = {}
    for name, _, _ in variants:
        mine = [r for r in runs if r["variant"] == name and "loops" in r]
        if not mine:
            continue
        s = {"boot_to_prompt_s": _stat([r["boot_to_prompt_s"] for r in mine])}
        for k in range(args.loops_per_boot):
            s[f"loop{k + 1}_MIPS"] = _stat([r["loops"][k]["MIPS"] for r in mine])
            cpu = [r["loops"][k]["MIPS_per_cpu_s"] for r in mine if r["loops"][k].get("MIPS_per_cpu_s")]
            if cpu:
                s[f"loop{k + 1}_MIPS_per_cpu_s"] = _stat(cpu)
        summary[name] = s
    out = {"image": IMAGE, "ips": ips, "loop": args.loop, "js_flags": args.js_flags, "summary": summary, "runs": runs,
           "method": "MIPS = guest seconds (/proc/uptime, Bochs ticks / ips) * ips / wall seconds between the "
                     "console lines carrying the two reads; MIPS_per_cpu_s divides by the CPU seconds the "
                     "worker thread got in that window instead (/proc/PID/task/TID/stat, 10 ms ticks)"}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _stat(xs):
    xs = sorted(xs)
    return {"median": round(statistics.median(xs), 2), "min": xs[0], "max": xs[-1], "n": len(xs)}


if __name__ == "__main__":
    sys.exit(main())
