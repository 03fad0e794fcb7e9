#!/usr/bin/env python3
"""The native ceiling for c2w: the same Bochs source, configure options and guest, built for
x86_64 Linux, running the same shell loop as bench/c2w_cpu.py times in Chromium.

    python3 bench/c2w_native.py [--speedups] [--rounds 3] [--loop 30000] [--sync none,slowdown]
                                [--cc clang] [--out bench/results/c2w_native.json]

Build: Debian's bochs source (the orig tarball build_bochs.py pins and caches), patches
0001-... of emulators/c2w/patches applied as for the wasm build (they change nothing
natively: their code is #ifdef __wasi__), configure with build_bochs.CONFIGURE_ARGS (host and
build triplets dropped; --speedups adds build_bochs.SPEEDUP_ARGS) and the same -O2, with
clang-14 or gcc.  Two patches are enabled natively too, their `#ifdef __wasi__` read as
`#if defined(__wasi__) || defined(BX_PYAPPTRON_STREAM)` (built with -DBX_PYAPPTRON_STREAM):
0006's serial streams, so COM1 is this process's stdin/stdout pipes (non-blocking, as the
WASI host's fds) and COM2 a socket on fd 4 exactly as in the browser, and 0007's block-wise
optramimage load (stock Bochs loads the 60 MiB kernel into one RAM block natively too and
the guest triple-faults).  The result is cached
under ~/.cache/pyapptron/c2w/native/KEY (key: a hash of the inputs) and never shipped.

With --wasm PATH each round also boots that bochs.wasm in headless Chromium (bench/c2w_cpu.py)
and the JSON gets wasm/native, by wall time and by CPU time.

Run: the built image (build/assets/images/debian-x86_64) with its bochsrc (paths made
absolute in a temporary copy), the console driven through the pipes: wait for the prompt,
type the loop, and MIPS = (guest seconds between two reads of /proc/uptime) * ips / (wall
seconds between the arrivals of the two lines that carry them), as in bench/c2w_cpu.mjs.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "emulators" / "c2w"))
import build_bochs as B  # noqa: E402

IMAGE_DIR = REPO / "build" / "assets" / "images" / "debian-x86_64"
CACHE = Path.home() / ".cache" / "pyapptron" / "c2w"
OPT = ["-O2"]
STREAM_FILES = ("iodev/serial.cc", "memory/misc_mem.cc")  # their `#ifdef __wasi__` also natively


def native_build(speedups: bool, cc: str) -> Path:
    orig = B.fetch_source(CACHE)
    extra = B.SPEEDUP_ARGS if speedups else []
    configure = [a for a in B.CONFIGURE_ARGS if not a.startswith(("--host=", "--build="))] + extra
    compilers = {"clang": ("clang-14", "clang++-14"), "gcc": ("gcc", "g++")}[cc]
    h = hashlib.sha256(json.dumps({"orig": B.ORIG_SHA256, "configure": configure, "cc": compilers, "opt": OPT,
                                   "recipe": [STREAM_FILES, "-DBX_PYAPPTRON_STREAM"],
                                   "patches": [B.sha256_file(p) for p in sorted(B.PATCH_DIR.glob("*.patch"))]},
                                  sort_keys=True).encode()).hexdigest()[:16]
    out_dir = CACHE / "native" / h
    binary = out_dir / "bochs"
    if binary.is_file():
        return binary
    work = out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = out_dir / "build.log"
    log.write_text("")
    tree = B.unpack(orig, work)
    for p in sorted(B.PATCH_DIR.glob("*.patch")):
        B.run(["patch", "-p1", "--forward", "--no-backup-if-mismatch", "-i", p], cwd=tree, logfile=log)
    for rel in STREAM_FILES:
        src = tree / rel
        src.write_text(src.read_text().replace(
            "#ifdef __wasi__\n", "#if defined(__wasi__) || defined(BX_PYAPPTRON_STREAM)\n"))
    flags = " ".join(OPT + ["-DBX_PYAPPTRON_STREAM"])
    env = dict(os.environ, CC=compilers[0], CXX=compilers[1], CFLAGS=flags, CXXFLAGS=flags, LC_ALL="C")
    B.run(["./configure"] + configure, cwd=tree, env=env, logfile=log, nice=True)
    B.run(["make", f"-j{B.MAX_JOBS}", "bochs"], cwd=tree, env=env, logfile=log, nice=True)
    shutil.copyfile(tree / "bochs", binary)
    binary.chmod(0o755)
    (out_dir / "inputs.json").write_text(json.dumps({"configure": configure, "cc": compilers, "opt": OPT}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return binary


class Guest:
    """One native Bochs boot of the image, its console on pipes."""

    def __init__(self, binary: Path, sync: str, ips: int | None):
        spec = json.loads((IMAGE_DIR / "image.json").read_text())
        self.spec = spec
        self.ips = ips or spec["ips"]
        self.dir = Path(tempfile.mkdtemp(prefix="c2w-native-"))
        for guest, rel in spec["files"].items():
            if guest == "/bochsrc.txt":
                continue
            dest = self.dir / guest.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if guest in spec.get("inflate", []):
                with gzip.open(IMAGE_DIR / rel) as f, open(dest, "wb") as g:
                    shutil.copyfileobj(f, g)
            else:
                shutil.copyfile(IMAGE_DIR / rel, dest)
        body = spec["bochsrc_body"]
        body = re.sub(r"(file|path)=/", lambda m: f"{m.group(1)}={self.dir}/", body)
        body = re.sub(r"sync=\w+", f"sync={sync}", body)
        if ips:
            body = re.sub(r"ips=\d+", f"ips={ips}", body)
        (self.dir / "bochsrc.txt").write_text(f"megs: {spec.get('memory_mib', 256)}\n{body}")
        self.agent_parent, agent_child = socket.socketpair()
        agent_child.setblocking(False)
        child_fd = agent_child.fileno()
        env = dict(os.environ, BXSHARE=str(self.dir / "bios"))

        def fd4():
            os.dup2(child_fd, 4)

        # The console's input: a pipe whose read end is non-blocking, as the WASI host's
        # fd 0 (Bochs's receive poll must never wait).
        stdin_r, self.stdin_w = os.pipe()
        os.set_blocking(stdin_r, False)
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([str(binary), "-q", "-f", str(self.dir / "bochsrc.txt")], cwd=self.dir,
                                     stdin=stdin_r, stdout=subprocess.PIPE, stderr=open(self.dir / "log", "wb"),
                                     env=env, preexec_fn=fd4, pass_fds=(child_fd,))
        os.close(stdin_r)
        agent_child.close()
        self.text = ""
        self.arrivals = []  # (time, length)
        self.lock = threading.Condition()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        fd = self.proc.stdout.fileno()
        while True:
            data = os.read(fd, 65536)
            now = time.perf_counter()
            if not data:
                break
            cpu = self.cpu_s()
            with self.lock:
                self.text += data.decode("latin1")
                self.arrivals.append((now, len(self.text), cpu))
                self.lock.notify_all()

    def cpu_s(self) -> float | None:
        """CPU seconds (utime + stime) Bochs has used so far."""
        try:
            f = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, AttributeError):
            return None

    def wait_for(self, pattern: str, start: int, timeout: float, cpu: bool = False):
        rx = re.compile(pattern)
        end = time.perf_counter() + timeout
        with self.lock:
            while True:
                m = rx.search(self.text, start)
                if m:
                    at = next(a for a in self.arrivals if a[1] >= m.end())
                    return (m, at[0], at[2]) if cpu else (m, at[0])
                left = end - time.perf_counter()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"waiting for {pattern!r}: {self.text[-500:]}")
                self.lock.wait(left)

    def send(self, s: str) -> None:
        data = s.encode()
        while data:
            try:
                n = os.write(self.stdin_w, data)
                data = data[n:]
            except BlockingIOError:
                time.sleep(0.001)

    def close(self) -> None:
        os.close(self.stdin_w)
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def loop_once(g: Guest, n: int) -> dict:
    start = len(g.text)
    g.send(f'read a x </proc/uptime; echo "@@A $a"; i=0; while [ $i -lt {n} ]; do i=$((i+1)); done; '
           f'read b x </proc/uptime; echo "@@B $b"\n')
    ma, ta, ca = g.wait_for(r"@@A (\d+\.\d+)", start, 120, cpu=True)
    mb, tb, cb = g.wait_for(r"@@B (\d+\.\d+)", start, 900, cpu=True)
    guest = float(mb.group(1)) - float(ma.group(1))
    g.wait_for(re.escape(g.spec["prompt"]), mb.end(), 60)
    cpu = (cb - ca) if ca is not None and cb is not None else None
    return {"n": n, "guest_s": round(guest, 3), "wall_s": round(tb - ta, 3),
            "MIPS": round(guest * g.ips / (tb - ta) / 1e6, 1), "cpu_s": cpu and round(cpu, 3),
            "MIPS_per_cpu_s": round(guest * g.ips / cpu / 1e6, 1) if cpu else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speedups", action="store_true")
    ap.add_argument("--cc", choices=["clang", "gcc"], default="clang")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loop", type=int, default=30000)
    ap.add_argument("--loops-per-boot", type=int, default=2)
    ap.add_argument("--sync", default="none,slowdown")
    ap.add_argument("--ips", type=int, default=None)
    ap.add_argument("--wasm", type=Path, default=None,
                    help="also time this bochs.wasm in headless Chromium (bench/c2w_cpu.py), one boot per sync mode "
                         "after each native round, and report wasm/native")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    binary = native_build(args.speedups, args.cc)
    runs, wasm_runs = [], []
    for rnd in range(args.rounds):
        if args.wasm:
            import c2w_cpu  # noqa: E402  (beside this file)
            tmp = Path(tempfile.mkstemp(suffix=".json")[1])
            c2w_cpu.main(["--wasm", f"wasm={args.wasm}", "--rounds", "1", "--loop", str(args.loop),
                          "--loops-per-boot", str(args.loops_per_boot), "--sync", args.sync, "--out", str(tmp)])
            wasm_runs += json.loads(tmp.read_text())["runs"]
            tmp.unlink()
        for sync in args.sync.split(","):
            g = Guest(binary, sync, args.ips)
            try:
                _, tp = g.wait_for(re.escape(g.spec["prompt"]), 0, 300)
                time.sleep(0.5)
                loops = [loop_once(g, args.loop) for _ in range(args.loops_per_boot)]
            finally:
                g.close()
            rec = {"round": rnd, "sync": sync, "boot_to_prompt_s": round(tp - g.t0, 3), "loops": loops}
            runs.append(rec)
            print(f"r{rnd} native/{sync}: boot {rec['boot_to_prompt_s']:.2f} s, MIPS "
                  + ", ".join(str(lp["MIPS"]) for lp in loops) + "; per CPU s "
                  + ", ".join(str(lp["MIPS_per_cpu_s"]) for lp in loops), flush=True)
    summary = {}
    for sync in args.sync.split(","):
        mine = [r for r in runs if r["sync"] == sync]
        mips = sorted(lp["MIPS"] for r in mine for lp in r["loops"])
        boots = sorted(r["boot_to_prompt_s"] for r in mine)
        cpu = sorted(lp["MIPS_per_cpu_s"] for r in mine for lp in r["loops"] if lp["MIPS_per_cpu_s"])
        summary[sync] = {"MIPS": {"median": statistics.median(mips), "min": mips[0], "max": mips[-1], "n": len(mips)},
                         "MIPS_per_cpu_s": cpu and {"median": statistics.median(cpu), "min": cpu[0], "max": cpu[-1]},
                         "boot_to_prompt_s": {"median": statistics.median(boots), "min": boots[0], "max": boots[-1]}}
    wasm_summary = {}
    for sync in args.sync.split(","):
        mine = [r for r in wasm_runs if r.get("sync") == sync and "loops" in r]
        if not mine:
            continue
        w = sorted(lp["MIPS"] for r in mine for lp in r["loops"])
        c = sorted(lp["MIPS_per_cpu_s"] for r in mine for lp in r["loops"] if lp.get("MIPS_per_cpu_s"))
        wasm_summary[sync] = {"MIPS": {"median": statistics.median(w), "min": w[0], "max": w[-1], "n": len(w)},
                              "MIPS_per_cpu_s": c and {"median": statistics.median(c), "min": c[0], "max": c[-1]}}
        nat = summary[sync]
        wasm_summary[sync]["wasm_over_native"] = round(statistics.median(w) / nat["MIPS"]["median"], 3)
        if c and nat.get("MIPS_per_cpu_s"):
            wasm_summary[sync]["wasm_over_native_per_cpu_s"] = round(statistics.median(c) / nat["MIPS_per_cpu_s"]["median"], 3)
    out = {"binary": str(binary), "compiler": args.cc, "speedups": args.speedups,
           "wasm": str(args.wasm) if args.wasm else None, "wasm_chromium": wasm_summary, "wasm_runs": wasm_runs,
           "configure": json.loads((binary.parent / "inputs.json").read_text())["configure"],
           "loop": args.loop, "summary": summary, "runs": runs}
    print(json.dumps({"native": summary, "wasm_chromium": wasm_summary}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
