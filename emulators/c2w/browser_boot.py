#!/usr/bin/env python3
"""Boot the x86_64 guest in headless Chromium and time it.

    SE_OFFLINE=true nice -n 19 python3 emulators/c2w/browser_boot.py [--runs 3] [--port 8765]

Starts emulators/c2w/serve_demo.py (COOP/COEP, 127.0.0.1), then for each run
a fresh headless Chromium (/usr/bin/chromium + /usr/bin/chromedriver via
Selenium, fresh --user-data-dir) that loads demo.html, waits for the busybox
prompt on the streamed console, types `uname -m` and a line that prints the
guest's CPU time counters, and reads the answers.  One browser at a time;
the server and browsers are stopped at the end.

Prerequisites: build_bochs.py --out /tmp/c2w-out, build_guest64.py --out
/tmp/c2w-guest, the shim unpacked to /tmp/c2w-npm/browser_wasi_shim (see
serve_demo.py).  Prints one JSON line per run and a summary.

Instruction estimate: with `clock: sync=none`, one emulated second is `ips`
instructions (bochsrc) of *running* CPU; halted time is skipped.  The guest's
/proc/stat busy jiffies (user+nice+system+irq+softirq, USER_HZ=100) at the
prompt are the emulated seconds the kernel spent running, so busy * ips is
about the instructions the guest kernel phase executed (the BIOS/syslinux
phase before the kernel is not counted).  Divided by the wall time from the
kernel's first line to the prompt, that is the instruction rate.  A second,
cleaner rate: a busy shell loop under `time`; its guest real time is
emulated time of a CPU that never halts, so guest seconds * ips / host wall
seconds (the host wall includes the input/echo round trip, so it is a
slight underestimate).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def wait_for(driver, js, timeout, poll=0.25):
    end = time.time() + timeout
    while time.time() < end:
        v = driver.execute_script(js)
        if v:
            return v
        time.sleep(poll)
    return None


LOOP = "time sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'"


def cpu_loop(driver, prompt: str, ips: int) -> dict:
    """Instruction rate from a busy shell loop: guest `time` real seconds are
    emulated seconds of a CPU that never halts, i.e. instructions / ips."""
    n0 = driver.execute_script("return window.c2w.text.length")
    t = time.time()
    driver.execute_script("window.c2w.send(arguments[0])", LOOP + "\r")
    end = time.time() + 180
    while time.time() < end:
        out = driver.execute_script("return window.c2w.text.slice(arguments[0])", n0)
        m = re.search(r"real\s+(?:(\d+)m\s*)?([\d.]+)s", out)
        if m and prompt in out[m.end():]:
            wall = time.time() - t
            guest_s = int(m.group(1) or 0) * 60 + float(m.group(2))
            return {"loop_guest_s": guest_s, "loop_wall_s": round(wall, 2),
                    "loop_mips": round(guest_s * ips / wall / 1e6, 1)}
        time.sleep(0.05)
    return {"loop_failure": driver.execute_script("return window.c2w.text.slice(-600)")}


def one_run(port: int, timeout: float, guest: dict) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="c2w-chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for f in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    res = {"ok": False}
    try:
        t_load = time.time()
        driver.get(f"http://127.0.0.1:{port}/emulators/c2w/demo.html")
        res["crossOriginIsolated"] = driver.execute_script("return self.crossOriginIsolated")
        prompt = guest["prompt"]
        got = wait_for(driver, "const c = window.c2w; return c && (c.marks.prompt !== undefined || c.error || c.exited) ? "
                       "{marks: c.marks, error: c.error, exited: c.exited} : null", timeout)
        res["wall_to_prompt_incl_fetch_s"] = round(time.time() - t_load, 2)
        if not got or got.get("error") or got.get("exited") or "prompt" not in got["marks"]:
            res["failure"] = got or "timeout"
            res["console_tail"] = driver.execute_script("return window.c2w && window.c2w.text.slice(-2000)")
            res["log_tail"] = driver.execute_script("return window.c2w && window.c2w.log.slice(-2000)")
            return res
        marks = got["marks"]
        res["marks_s"] = {k: round(v / 1000, 2) for k, v in marks.items()}
        if driver.execute_script("return !!window.c2w.send"):
            n0 = driver.execute_script("return window.c2w.text.length")
            t_cmd = time.time()
            driver.execute_script("window.c2w.send(arguments[0])",
                                  "uname -m; echo STAT $(head -1 /proc/stat) UP $(cat /proc/uptime) END\r")
            out = None
            end = time.time() + 120
            while time.time() < end:
                t = driver.execute_script("return window.c2w.text.slice(arguments[0])", n0)
                m = re.search(r"STAT cpu [^\n]* END", t)
                if m and prompt in t[m.end():]:
                    out = t
                    break
                time.sleep(0.1)
            res["command_roundtrip_s"] = round(time.time() - t_cmd, 2)
            if out is None:
                res["failure"] = "no answer to uname -m"
                res["console_tail"] = driver.execute_script("return window.c2w.text.slice(-1500)")
                return res
            lines = [l.strip() for l in out.replace("\r", "").split("\n")]
            res["uname_m"] = next((l for l in lines if re.fullmatch(r"[a-z0-9_]+", l)), None)
            m = re.search(r"STAT cpu\s+([\d ]+?)\s+UP ([\d.]+) ([\d.]+) END", out)
            if m:
                j = [int(x) for x in m.group(1).split()]
                user, nice, system, idle, iowait, irq, softirq = (j + [0] * 7)[:7]
                busy = (user + nice + system + irq + softirq) / 100.0
                res["guest_uptime_s"] = float(m.group(2))
                res["guest_busy_s"] = busy
                res["guest_idle_s"] = (idle + iowait) / 100.0
                kernel_wall = (marks["prompt"] - marks["kernel"]) / 1000.0
                res["est_instr_kernel_phase"] = busy * guest["ips"]
                res["est_mips"] = round(busy * guest["ips"] / kernel_wall / 1e6, 1)
            res["ok"] = res["uname_m"] == "x86_64"
            res.update(cpu_loop(driver, prompt, guest["ips"]))
        else:
            res["ok"] = True
            res["note"] = "no input (page not cross-origin isolated)"
        return res
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for the prompt per run")
    ap.add_argument("--guest", type=Path, default=Path("/tmp/c2w-guest"), help="build_guest64.py --out")
    ap.add_argument("--bochs-dir", type=Path, default=Path("/tmp/c2w-out"), help="build_bochs.py --out")
    ap.add_argument("--npm-dir", type=Path, default=Path("/tmp/c2w-npm"), help="holds browser_wasi_shim/")
    args = ap.parse_args(argv)
    os.environ.setdefault("SE_OFFLINE", "true")
    guest = json.loads((args.guest / "guest.json").read_text())
    mounts = [f"/c2w-out={args.bochs_dir}", f"/c2w-guest={args.guest}", f"/npm={args.npm_dir}"]
    srv = subprocess.Popen([sys.executable, str(HERE / "serve_demo.py"), "--port", str(args.port)] +
                           [a for m in mounts for a in ("--mount", m)],
                           env=dict(os.environ, SERVE_DEMO_QUIET="1"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{args.port}/emulators/c2w/demo.html", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        for i in range(args.runs):
            r = one_run(args.port, args.timeout, guest)
            r["run"] = i + 1
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(10)
    ok = [r for r in results if r["ok"]]
    print(f"summary: {len(ok)}/{len(results)} runs reached the prompt" +
          (" and answered uname -m" if ok and "uname_m" in ok[0] else ""))
    for key in ("kernel", "init", "prompt"):
        vals = [r["marks_s"][key] for r in ok if key in r.get("marks_s", {})]
        if vals:
            print(f"  {key}: " + ", ".join(f"{v:.1f}" for v in vals) + " s after Bochs start")
    mips = [r["est_mips"] for r in ok if "est_mips" in r]
    if mips:
        print("  est. instruction rate (kernel phase): " + ", ".join(f"{v:.0f}" for v in mips) + " M instr/s")
    mips = [r["loop_mips"] for r in ok if "loop_mips" in r]
    if mips:
        print("  instruction rate (busy shell loop): " + ", ".join(f"{v:.0f}" for v in mips) + " M instr/s")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
