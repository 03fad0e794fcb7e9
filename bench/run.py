"""pyapptron benchmarks, in real headless Chromium. Prints and saves JSON.

    python bench/run.py [--rounds 200] [--images minimal,agent] [--out bench/results/latest.json]

Figures: Pyodide + pyapptron load, cold boot to exec-ready, run("true") round trip
(median, p95), 10 MB write and read throughput; and, for the ratios, bare v86 from JS
alone (bench/bare_v86.mjs): a fresh V86 with the same options timed to its shell
prompt, and the same EXEC round trip sent from JS on the very machine Python drives,
in blocks alternating with Python's. For the "agent" image (Debian on 9p): cold boot
to exec-ready, the image bytes fetched by then, the first `python3 -c pass`, `git
status` in a repository of 1,000 files and `npm --version`. For persistence: boot
with a 50 MB / 20,000-file store against boot without one, sync throughput, and the
run("true") latency while a sync runs (v86 minimal; `--images persist64` does the same on
c2w agent-x86_64, where the layers go through the guest agent). For MCP: `python -m pyapptron mcp --headless`
start to the first tool result, and the MCP `exec` round trip (stdio -> bridge ->
WebSocket -> page) against a direct vm.run on the same VM, in alternating blocks, with
`tools/list` (the same path without the VM) as the hop's cost; the same over Streamable
HTTP (`mcp --http`), and four HTTP sessions calling exec at once. For snapshots (both images, each
in a freshly loaded page): boot() call to the first run("true") answered, resumed from the
shipped boot snapshot and cold, where the resume spends its time, and the size and save
time of a snapshot and an in-place restore; `--images snapshot64` does the same for the
c2w images (debian-x86_64, agent-x86_64), and times `claude --version` right after a
resume against its second run. For notebooks: opening the example notebook
in JupyterLite to its first vm.run answered. For the pytest plugin: the per-test setup
of a fresh `vm`, resumed or cold, locally and through a Selenium Grid. For c2w (x86_64
Bochs on WASI in a Web Worker, image debian-x86_64; not in the default run): cold boot to
exec-ready with the adapter's timings, the run("true") round trip, 10 MB each way through
run() and through write_file/read_file timed in the page, and the emulated CPU's real
instruction rate (capped and uncapped). For the agent-x86_64 image (agent64; not in the
default run): cold boot to exec-ready and to the zsh prompt, the bytes fetched by then
(the lazily read root and the boot's own files), each agent tool's first and second start
(seconds, bytes of the root fetched), the channel in the page, and the image's size. For
qemu-wasm (the asset step's stand-in for a QEMU-Wasm build, vm.run framed over its console;
not in the default run): cold boot to the shell prompt with the adapter's timings, the
run("true") round trip, `cat` of a 1 MB file through the console, and shutdown. For key
echo (`--images keyecho`; images minimal, agent, debian-x86_64 and agent-x86_64, each in freshly booted
pages of the terminal page): at a warm prompt, 20-key fresh words typed one key at a time
by keydown events dispatched in the page, each key timed there (performance.now()) until
xterm.js has parsed it and rendered its row, at two typing speeds. For the network
(`--images network`; v86 minimal and c2w debian-x86_64, host-only with one allowed port):
50 MB of random bytes guest <- host and 10 MB guest -> host with busybox wget, a small
request's round trip through the relay, and the host's own download for comparison; with
`--images npm`, `npm install` of four packages (5.4 MB) from a registry on the host, on the
host and in both agent images.
Nothing here is asserted: targets
are in the README and the closing notes, measurements here.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pyapptron.host import Browser, BrowserConfig, PageServer, RemoteSession, http_service  # noqa: E402

PY_BENCH = """
import time, statistics
t0 = time.perf_counter()
vm = await pyapptron.boot("v86", "minimal", cold=True)
boot_s = time.perf_counter() - t0
# Steady state, as in the bare run: the guest finishes loading its 9p and network
# modules (after the agent has started) before the shell prompt appears.
await vm.console.wait_for(rb"# ", timeout=60)
await vm.run("true")
# Python's vm.run and bare JS frames alternate in blocks on this one machine, so
# drift in the guest (and the noisy host) hits both alike.
from pyodide.code import run_js
from pyodide.ffi import to_js
bare = await run_js("(u) => import(u)")(BARE_URL)
emulator = vm.backend.engine()
times, bare_times = [], []
for block in range({rounds} // 20):
    for _ in range(20):
        t = time.perf_counter()
        await vm.run("true")
        times.append((time.perf_counter() - t) * 1000)
    bare_times += list((await bare.roundtrips(emulator, 20, 1_000_000 + block * 20, "hostchan" in vm.backend.emulator_options())).to_py())
data = bytes(range(256)) * (10 * 1024 * 1024 // 256)
t = time.perf_counter()
await vm.write_file("/tmp/bench.bin", data)
write_s = time.perf_counter() - t
t = time.perf_counter()
back = await vm.read_file("/tmp/bench.bin")
read_s = time.perf_counter() - t
assert back == data
t = time.perf_counter()
r = await vm.run("cat /tmp/bench.bin")
stdout_s = time.perf_counter() - t
assert len(r.stdout) == len(data)
from pyapptron.backends.v86 import V86Backend
options = vm.backend.emulator_options()
await vm.shutdown()
result = dict(boot_s=boot_s, roundtrip_ms=times, bare_roundtrip_ms=bare_times, write_s=write_s, read_s=read_s, stdout_s=stdout_s, options=options)
"""

AGENT_BENCH = """
import time
from js import performance
performance.setResourceTimingBufferSize(1_000_000)
performance.clearResourceTimings()

def fetched():
    sizes = {"fs_files": 0, "fs_bytes": 0, "index_bytes": 0, "boot_bytes": 0}
    for e in performance.getEntriesByType("resource"):
        url = str(e.name)
        if "/images/agent/fs/" in url:
            sizes["fs_files"] += 1
            sizes["fs_bytes"] += int(e.encodedBodySize)
        elif url.endswith("/images/agent/fs.json.gz"):
            sizes["index_bytes"] += int(e.encodedBodySize)
        elif "/images/minimal/" in url:
            sizes["boot_bytes"] += int(e.encodedBodySize)
    return sizes

async def timed(cmd, timeout=600):
    t = time.perf_counter()
    r = await vm.run(cmd, timeout=timeout)
    assert r.returncode == 0, (cmd, r.stderr)
    return time.perf_counter() - t

t0 = time.perf_counter()
vm = await pyapptron.boot("v86", "agent", cold=True)
boot_s = time.perf_counter() - t0
at_ready = fetched()
await vm.console.wait_for(rb"root@pyapptron", timeout=120)
prompt_s = time.perf_counter() - t0
at_prompt = fetched()
first_python_s = await timed("python3 -c pass")
warm_python_s = await timed("python3 -c pass")
await timed("mkdir -p /root/r && cd /root/r && git init -q && for d in $(seq 0 9); do mkdir $d; "
            "for f in $(seq 0 99); do echo $d$f > $d/$f; done; done && git add . && "
            "git -c user.email=a@b -c user.name=b commit -qm files")
first_git_status_s = await timed("cd /root/r && git status --porcelain")
warm_git_status_s = await timed("cd /root/r && git status --porcelain")
first_npm_s = await timed("npm --version")
warm_npm_s = await timed("npm --version")
first_node_s = await timed("node -e 0")
after = fetched()
await vm.shutdown()
result = dict(boot_s=boot_s, prompt_s=prompt_s, at_ready=at_ready, at_prompt=at_prompt, after=after,
              first_python_s=first_python_s, warm_python_s=warm_python_s,
              first_git_status_s=first_git_status_s, warm_git_status_s=warm_git_status_s,
              first_npm_s=first_npm_s, warm_npm_s=warm_npm_s, first_node_s=first_node_s)
"""

BARE = """
const done = arguments[arguments.length - 1];
import(arguments[0]).then(m => m.run(arguments[1], arguments[2])).then(done, e => done({error: String(e.stack || e)}));
"""

LOAD = """
const done = arguments[arguments.length - 1];
const nav = performance.getEntriesByType("navigation")[0];
window.pyapptronReady.then(p => done({load_s: p.pyapptronLoadSeconds, since_navigation_s: performance.now() / 1000}));
"""


# Snapshots: one image, one freshly loaded page; resumed (the default) or cold.
SNAPSHOT_BOOT = """
import time
t0 = time.perf_counter()
vm = await pyapptron.boot(EMULATOR, IMAGE, cold=COLD)
boot_s = time.perf_counter() - t0
await vm.run("true")
first_run_s = time.perf_counter() - t0
phases = vm.backend.timings()
extra = {}
for command in WARM:  # a large program's first start after the boot, then its second
    t = time.perf_counter()
    r = await vm.run(command)
    first = time.perf_counter() - t
    t = time.perf_counter()
    await vm.run(command)
    extra.setdefault("warm", {})[command] = {"first_s": first, "second_s": time.perf_counter() - t,
                                             "exit": r.returncode}
if SAVE:
    t = time.perf_counter()
    data = await vm.snapshot(to_bytes=True)
    extra["to_bytes_s"] = time.perf_counter() - t
    extra["bytes"] = len(data)
    t = time.perf_counter()
    info = await vm.snapshot("bench")
    extra["to_indexeddb_s"] = time.perf_counter() - t
    extra["state_bytes"] = info.state_bytes
    extra["indexeddb_bytes"] = info.size
    t = time.perf_counter()
    await vm.restore("bench")
    await vm.run("true")
    extra["restore_in_place_to_first_run_s"] = time.perf_counter() - t
    t = time.perf_counter()
    vm2 = await pyapptron.boot(EMULATOR, IMAGE, resume="bench")
    await vm2.run("true")
    extra["resume_from_indexeddb_to_first_run_s"] = time.perf_counter() - t
    await vm2.shutdown()
    await pyapptron.snapshots.delete("bench")
await vm.shutdown()
result = dict(boot_s=boot_s, first_run_s=first_run_s, resumed=vm.resumed_from, phases=phases, **extra)
"""


#: The programs whose first start after a resume is timed against their second (the c2w
#: agent image's boot snapshot was taken after a warm-up run of them).
WARM_COMMANDS = {"agent-x86_64": ["claude --version"]}


def bench_snapshot(server, rounds: int = 5, engines=(("v86", "minimal"), ("v86", "agent"))) -> dict:
    out = {}
    for emulator, image in engines:
        resumed, cold = [], None
        for i in range(rounds + 1):
            with Browser() as browser:  # a fresh page each time: page load to exec-ready
                session = RemoteSession(browser, server.url)
                load = browser.driver.execute_async_script(LOAD)
                is_cold = i == rounds
                code = (SNAPSHOT_BOOT.replace("EMULATOR", repr(emulator)).replace("IMAGE", repr(image))
                        .replace("COLD", str(is_cold)).replace("SAVE", str(i == 0))
                        .replace("WARM", repr(WARM_COMMANDS.get(image, []))))
                py = session.python(code)
                py["load_s"] = load["load_s"]
                if is_cold:
                    cold = py
                else:
                    resumed.append(py)
        snap_file = HERE.parent / "build" / "assets" / "images" / image / "boot.snapshot"
        out.setdefault(image, {})["emulator"] = emulator
        first = [r["first_run_s"] for r in resumed]
        out[image] |= {
            "resumed_boot_call_to_first_run_s": {"median": round(statistics.median(first), 3),
                                                  "min": round(min(first), 3), "max": round(max(first), 3),
                                                  "n": len(first)},
            "resumed_boot_s_median": round(statistics.median(r["boot_s"] for r in resumed), 3),
            "resume_phases_s_median": {k: round(statistics.median(r["phases"].get(k, 0) for r in resumed), 3)
                                       for k in resumed[0]["phases"]},
            "cold_boot_call_to_first_run_s": round(cold["first_run_s"], 3),
            "pyodide_and_pyapptron_load_s_median": round(statistics.median(r["load_s"] for r in resumed + [cold]), 3),
            "page_load_to_first_run_s": {"resumed": round(statistics.median(r["load_s"] + r["first_run_s"] for r in resumed), 3),
                                         "cold": round(cold["load_s"] + cold["first_run_s"], 3)},
            "shipped_snapshot_MB": round(snap_file.stat().st_size / 1e6, 2),
            "state_MB_uncompressed": round(resumed[0]["state_bytes"] / 1e6, 2),
            "snapshot_to_bytes_s": round(resumed[0]["to_bytes_s"], 3),
            "snapshot_to_indexeddb_s": round(resumed[0]["to_indexeddb_s"], 3),
            "snapshot_gzip_MB": round(resumed[0]["indexeddb_bytes"] / 1e6, 2),
            "restore_in_place_to_first_run_s": round(resumed[0]["restore_in_place_to_first_run_s"], 3),
            "resume_from_indexeddb_to_first_run_s": round(resumed[0]["resume_from_indexeddb_to_first_run_s"], 3),
        }
        for command in WARM_COMMANDS.get(image, []):
            out[image][f"after_resume: {command}"] = {
                "first_s_median": round(statistics.median(r["warm"][command]["first_s"] for r in resumed), 3),
                "second_s_median": round(statistics.median(r["warm"][command]["second_s"] for r in resumed), 3)}
            out[image][f"after_cold_boot: {command}"] = {k: round(v, 3) for k, v in cold["warm"][command].items()
                                                        if k != "exit"}
    return out


def bench_lab(rounds: int = 3) -> dict:
    """Opening the example notebook in JupyterLite to its first vm.run answered."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from pyapptron.host.lab import build_site, notebook_url

    site = build_site()
    times, kernel = [], []
    with PageServer(extra_roots={"/lab/": site}) as lab_server:
        for _ in range(rounds):
            with Browser() as browser:
                d = browser.driver
                t0 = time.monotonic()
                d.get(notebook_url(lab_server.url))
                while len(d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")) < 7:
                    time.sleep(0.05)
                d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")[0].click()
                for _ in range(4):  # up to the first vm.run
                    ActionChains(d).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
                while True:
                    text = d.execute_script("return Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
                                            ".map(e => e.innerText).join('\\n')")
                    if "first run answered" in text:
                        break
                    time.sleep(0.05)
                times.append(time.monotonic() - t0)
                kernel.append(float(text.split("first run answered ")[1].split(" s")[0]))
    return {"open_notebook_to_first_run_s": {"median": round(statistics.median(times), 2),
                                             "min": round(min(times), 2), "max": round(max(times), 2)},
            "first_cell_to_first_run_s_median": round(statistics.median(kernel), 2), "n": rounds}


def _pytest_setup_seconds(args: list[str], tests: int) -> list[float]:
    """Setup time of the `vm` fixture for each of `tests` trivial tests (pytest --durations)."""
    import re
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test_trivial.py").write_text("".join(
            f"def test_{i}(vm):\n    assert vm.run('true').returncode == 0\n" for i in range(tests)))
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0",
                            "--durations-min=0", "--pyapptron-scope=function", "--rootdir", tmp, *args,
                            "test_trivial.py"],
                           cwd=tmp, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise SystemExit(f"pytest failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
        return [float(m.group(1)) for m in re.finditer(r"^([\d.]+)s setup\s+\S*test_trivial.py::test_(\d+)",
                                                        r.stdout, re.M) if m.group(2) != "0"]


def bench_fixture(tests: int = 6) -> dict:
    """Per-test overhead of a fresh `vm` (--pyapptron-scope=function): resumed vs cold, locally
    and through a Selenium Grid 4 on this machine. The first test (browser start) is left out."""
    from pyapptron.host.grid import local_grid

    out = {}
    local = _pytest_setup_seconds([], tests)
    cold = _pytest_setup_seconds(["--pyapptron-cold"], 3)
    with local_grid() as grid:
        on_grid = _pytest_setup_seconds(["--pyapptron-remote", grid.url, "--pyapptron-browser-binary",
                                         "/usr/bin/chromium"], tests)
    for name, values in (("local_resumed", local), ("local_cold", cold), ("grid_resumed", on_grid)):
        out[name + "_setup_s"] = {"median": round(statistics.median(values), 2), "n": len(values)}
    return out


# c2w: x86_64 Bochs compiled to WASI, in a Web Worker; every boot here is cold (snapshot64
# measures its resumes).
C2W_IMAGE = "debian-x86_64"
# Guest seconds (/proc/uptime) across a CPU-bound shell loop, inside ONE run() call.
# `read` is a builtin: no fork inside the timed part.
C2W_CPU_LOOP = ("read a x </proc/uptime; i=0; while [ $i -lt {n} ]; do i=$((i+1)); done; "
                "read b x </proc/uptime; echo $a $b")


def bench_c2w(server, boots: int = 3, rounds: int = 20, repeats: int = 3, loop: int = 30000) -> dict:
    """c2w from CPython: cold boots (each in a freshly loaded page of one browser, so after the
    first the assets come from its HTTP cache), then exec latency, throughput and CPU rate on
    the last machine booted."""
    spec = json.loads((HERE.parent / "build" / "assets" / "images" / C2W_IMAGE / "image.json").read_text())
    ips = spec["ips"]
    med = statistics.median
    boot, wall, timings = [], [], []
    with Browser() as browser:
        for i in range(boots):
            session = RemoteSession(browser, server.url)  # a fresh page load
            t = time.perf_counter()
            vm = session.boot("c2w", C2W_IMAGE)
            wall.append(time.perf_counter() - t)
            boot.append(vm.boot_seconds)
            timings.append(session.python(f"result = machines[{vm.id}].backend.timings()"))
            if i < boots - 1:
                vm.shutdown()
        assert vm.run("true").returncode == 0  # warm the agent's path
        rt = []
        for _ in range(rounds):
            t = time.perf_counter()
            vm.run("true")
            rt.append((time.perf_counter() - t) * 1000)
        channel = [session.python(f"import time\nvm = machines[{vm.id}]\n{C2W_CHANNEL}\nresult = chan")
                   for _ in range(repeats)]
        # Bochs counts `ips` instructions per emulated second and, with clock: sync=slowdown,
        # holds the guest's clock back to real time: guest seconds over wall seconds times ips
        # is the real rate, and it can never exceed ips (the guest cannot run faster than ips
        # instructions per real second; a figure near ips means the host keeps up). Wall time
        # is the whole run() call, so the round trip counts against it.
        cpu = []
        for _ in range(repeats):
            cpu.append(_c2w_loop(vm, loop, ips))
        vm.shutdown()
        # Uncapped: the same image booted with `clock: sync=none` (its bochsrc otherwise the
        # same, same ips, so the same guest work, timer interrupts included; only Bochs's
        # sleeping when the guest gets ahead of real time is gone). Bochs's clock is its
        # instruction counter over ips, so guest seconds * ips between the two reads of
        # /proc/uptime counts the instructions executed; wall time is run()'s less the median
        # run("true") round trip. Loops in a row on one machine show V8's tier-up, if any.
        spec_rc = f"megs: {spec.get('memory_mib', 256)}\n" + spec["bochsrc_body"].replace("sync=slowdown", "sync=none")
        vm = session.boot("c2w", C2W_IMAGE, files={"/bochsrc.txt": spec_rc.encode()})
        assert vm.run("true").returncode == 0
        rt_none = []
        for _ in range(5):
            t = time.perf_counter()
            vm.run("true")
            rt_none.append(time.perf_counter() - t)
        uncapped = [_c2w_loop(vm, loop * 2, ips, overhead_s=med(rt_none)) for _ in range(repeats + 1)]
        vm.shutdown()
    cpu.sort(key=lambda c: c["MIPS"])
    return {
        "image": C2W_IMAGE,
        "bochs": {"ips": ips, "clock": spec.get("clock"), "memory_mib": spec.get("memory_mib")},
        "cold_boot_to_exec_ready_s": {"median": round(med(boot), 3), "first": round(boot[0], 3),
                                      "min": round(min(boot), 3), "max": round(max(boot), 3), "n": boots},
        "cold_boot_call_wall_s_median": round(med(wall), 3),
        "adapter_timings_s_median": {k: round(med(t.get(k, 0) for t in timings), 3) for k in timings[0]},
        "adapter_timings_s_first": {k: round(v, 3) for k, v in timings[0].items()},
        "roundtrip_true_ms": {"median": round(med(rt), 2), "p95": round(pct(rt, 0.95), 2), "n": len(rt)},
        "channel_10MB_in_page_MBps": {k: round(med(c[k] for c in channel), 1) for k in channel[0]},
        "cpu_loop": {"iterations": loop, "median": cpu[len(cpu) // 2], "runs": cpu,
                     "note": "MIPS = guest_s * ips / wall_s; capped at ips/1e6 by clock: sync=slowdown"},
        "cpu_loop_uncapped": {
            "iterations": loop * 2, "clock": "none", "runs": uncapped,
            "MIPS_median": round(med(u["MIPS"] for u in uncapped), 1),
            "MIPS_range": [min(u["MIPS"] for u in uncapped), max(u["MIPS"] for u in uncapped)],
            "note": "same image and ips with clock: sync=none; MIPS = guest_s * ips / (wall_s - run('true') "
                    "round trip): instructions counted by Bochs's clock, nothing caps it"},
    }


# agent-x86_64: the 64-bit agent sandbox on c2w, measured in the page (Python in Pyodide),
# so that no WebDriver hop is in the figures. Tools: first start (what it fetches of the
# lazily read root, and its time) and a second start (from the guest's page cache).
# The agent channel, 10 MB each way, timed in the page (from CPython the payload would
# also cross WebDriver, which is slower than the channel); `vm` is the machine, `chan` the result.
C2W_CHANNEL = """
data = bytes(range(256)) * (10_000_000 // 256)
chan = {}
for what in ("write_file", "read_file", "stdout", "stdin"):
    t = time.perf_counter()
    if what == "write_file":
        await vm.write_file("/tmp/bench.bin", data)
    elif what == "read_file":
        assert await vm.read_file("/tmp/bench.bin") == data
    elif what == "stdout":
        assert (await vm.run("cat /tmp/bench.bin")).stdout == data
    else:
        assert int((await vm.run("cat > /tmp/in.bin; stat -c %s /tmp/in.bin", input=data)).stdout) == len(data)
    chan[what] = round(len(data) / 1e6 / (time.perf_counter() - t), 1)
"""
AGENT64_IMAGE = "agent-x86_64"
AGENT64_TOOLS = ["node -e 0", "claude --version", "bun --version", "gemini --version", "npm --version"]
AGENT64_BENCH = """
import time
IMAGE = "agent-x86_64"

def disk():
    t = vm.backend.timings()
    return {"chunks": t.get("lazy_chunks", 0), "MB": t.get("lazy_bytes", 0) / 1e6, "fetch_s": t.get("lazy_fetch", 0)}

t0 = time.perf_counter()
vm = await pyapptron.boot("c2w", IMAGE)
boot_s = time.perf_counter() - t0
r = await vm.run("true")
ready_s = time.perf_counter() - t0
res = {"boot_s": boot_s, "exec_ready_s": ready_s, "at_ready": disk(),
       "timings": vm.backend.timings(), "tools": {}}
await vm.console.wait_for(rb"root@pyapptron", timeout=300)
res["zsh_prompt_s"] = time.perf_counter() - t0
for cmd in TOOLS:
    runs = []
    for _ in range(2):
        before = disk()
        t = time.perf_counter()
        r = await vm.run(cmd, timeout=900)
        runs.append({"s": round(time.perf_counter() - t, 2), "MB_fetched": round(disk()["MB"] - before["MB"], 1),
                     "rc": r.returncode, "stdout": r.stdout.decode(errors="replace").strip()[-60:]})
    res["tools"][cmd] = runs
CHANNEL
res["channel_MBps"] = chan
res["disk_total"] = disk()
await vm.shutdown()
result = res
"""


def bench_agent64(server) -> dict:
    """agent-x86_64 in one freshly loaded page: cold boot, bytes fetched, each tool's first
    and second start, the agent channel; and the image's size."""
    spec = json.loads((HERE.parent / "build" / "assets" / "images" / AGENT64_IMAGE / "image.json").read_text())
    with Browser() as browser:
        session = RemoteSession(browser, server.url)
        py = session.python(AGENT64_BENCH.replace("TOOLS", json.dumps(AGENT64_TOOLS)).replace("CHANNEL", C2W_CHANNEL))
    mb = lambda n: round(n / 1e6, 1)  # noqa: E731
    sizes = spec["sizes"]
    # What the worker fetches whole before the guest starts (it does its own fetches, which
    # the page's resource timing does not see): the image's files and bochs.wasm.
    image_dir = HERE.parent / "build" / "assets" / "images" / AGENT64_IMAGE
    boot_files = sum((image_dir / rel).resolve().stat().st_size for rel in spec["files"].values())
    boot_files += (image_dir / spec["wasm"]).resolve().stat().st_size
    return {
        "image": {"files": sizes["files"], "unpacked_MB": mb(sizes["unpacked_bytes"]),
                  "squashfs_MB": mb(sizes["squashfs_bytes"]), "stored_MB": mb(sizes["stored_bytes"]),
                  "chunks": sizes["chunks"], "chunk_KiB": spec["lazy"]["/rootfs.img"]["chunk"] >> 10,
                  "memory_mib": spec["memory_mib"]},
        "cold_boot_to_exec_ready_s": round(py["exec_ready_s"], 2),
        "cold_boot_to_zsh_prompt_s": round(py["zsh_prompt_s"], 2),
        "fetched_by_exec_ready_MB": {"root_disk": round(py["at_ready"]["MB"], 1),
                                     "root_disk_chunks": py["at_ready"]["chunks"],
                                     "boot_files_and_engine": mb(boot_files),
                                     "total": round(py["at_ready"]["MB"] + boot_files / 1e6, 1)},
        "adapter_timings_s": {k: round(v, 3) for k, v in py["timings"].items()},
        "tools_first_then_second": py["tools"],
        "channel_10MB_in_page_MBps": py["channel_MBps"],
        "root_disk_fetched_in_all_MB": round(py["disk_total"]["MB"], 1),
    }


def _c2w_loop(vm, n: int, ips: int, overhead_s: float = 0.0) -> dict:
    t = time.perf_counter()
    r = vm.run(C2W_CPU_LOOP.format(n=n), timeout=600)
    wall_s = time.perf_counter() - t - overhead_s
    a, b = map(float, r.stdout.split())
    return {"guest_s": round(b - a, 2), "wall_s": round(wall_s, 3), "MIPS": round((b - a) * ips / wall_s / 1e6, 1)}


# qemu-wasm: not a real QEMU but the asset step's stand-in (an Emscripten program with a shell
# on its console), so these figures are pyapptron's side: the adapter and console framing.
QEMU_WASM_BOOT = {"packages": ["load-rom.js", "load-kernel.js"], "kernel": "/pack/standin-kernel.bin"}


def bench_qemu_wasm(server, rounds: int = 200, boots: int = 5, repeats: int = 3) -> dict:
    """qemu-wasm from CPython, in one page (each machine gets an iframe of its own, so every
    boot is cold; after the first the build comes from the HTTP cache): boots each followed by
    shutdown, then exec latency and console output throughput on one booted with a 1 MB file."""
    build = server.url + "assets/qemu_wasm/standin/"
    # 64-byte lines with LF only: the framing turns the console's CR LF back into exactly this.
    big = ((b"0123456789abcdef" * 4)[:63] + b"\n") * (1_000_000 // 64)
    med = statistics.median
    boot, wall, down = [], [], []
    with Browser() as browser:
        session = RemoteSession(browser, server.url)
        for i in range(boots + 1):
            files = {"files": {"/pack/big.txt": big}} if i == boots else {}
            t = time.perf_counter()
            vm = session.boot("qemu-wasm", build=build, **QEMU_WASM_BOOT, **files)
            if files:
                break  # the one with the file is measured below, not counted as a plain boot
            wall.append(time.perf_counter() - t)
            boot.append(vm.boot_seconds)
            if i == 0:
                timings = session.python(f"result = machines[{vm.id}].backend.timings()")
            t = time.perf_counter()
            vm.shutdown()
            down.append(time.perf_counter() - t)
        assert vm.run("true").returncode == 0  # warm the path
        rt = []
        for _ in range(rounds):
            t = time.perf_counter()
            vm.run("true")
            rt.append((time.perf_counter() - t) * 1000)
        cat_s = []
        for _ in range(repeats):
            t = time.perf_counter()
            r = vm.run(["cat", "/pack/big.txt"], timeout=600)
            cat_s.append(time.perf_counter() - t)
            assert r.returncode == 0 and len(r.stdout) == len(big), (r.returncode, len(r.stdout))
        t = time.perf_counter()
        vm.shutdown()
        down.append(time.perf_counter() - t)
    return {
        "build": "stand-in (emulators/qemu_wasm/standin), not a real QEMU-Wasm",
        "cold_boot_to_exec_ready_s": {"median": round(med(boot), 3), "first": round(boot[0], 3),
                                      "min": round(min(boot), 3), "max": round(max(boot), 3), "n": boots},
        "cold_boot_call_wall_s_median": round(med(wall), 3),
        "adapter_timings_s_first": {k: round(v, 3) for k, v in timings.items()},
        "roundtrip_true_ms": {"median": round(med(rt), 2), "p95": round(pct(rt, 0.95), 2), "n": len(rt)},
        "run_cat_1MB_console": {"bytes": len(big), "s_median": round(med(cat_s), 3),
                                "MBps": round(len(big) / 1e6 / med(cat_s), 3), "n": repeats},
        "shutdown_s": {"median": round(med(down), 3), "max": round(max(down), 3), "n": len(down)},
    }

# Persistence: a store of 50 MB in 20,000 files (made once, by import), then the figures.
PERSIST_MAKE = """
import io, random, tarfile, time
vm = await pyapptron.boot(EMULATOR, IMAGE, persist="bench", memory_mib=MEMORY)
buf = io.BytesIO()
rng = random.Random(7)
with tarfile.open(fileobj=buf, mode="w") as tar:
    for i in range(20000):
        body = rng.randbytes(2500)  # 20,000 x 2,500 B = 50 MB
        info = tarfile.TarInfo(f"persist/tree/d{i // 200}/f{i}")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
t = time.perf_counter()
await vm.persist.import_(buf.getvalue())
first_sync_s = time.perf_counter() - t
big = rng.randbytes(64 * 1024 * 1024)
await vm.persist.write_file("/persist/big.bin", big)
t = time.perf_counter()
r = await vm.persist.sync()
sync_64mb_s = time.perf_counter() - t
t = time.perf_counter()
await vm.persist.sync()
noop_sync_s = time.perf_counter() - t
await vm.run("rm /persist/big.bin")
await vm.persist.sync()
await vm.shutdown()
result = {"import_and_first_sync_s": first_sync_s, "sync_64MB_s": sync_64mb_s, "sync_64MB_js_s": r.seconds,
          "noop_sync_20000_files_s": noop_sync_s}
"""

PERSIST_MEASURE = """
import asyncio, statistics, time
t = time.perf_counter()
vm = await pyapptron.boot(EMULATOR, IMAGE, persist="bench", memory_mib=MEMORY)
boot_s = time.perf_counter() - t
restored = vm.persist.restored["persist"]
async def latencies(n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await vm.run("true")
        out.append((time.perf_counter() - t) * 1000)
    return out
quiet = await latencies(40)
# Latency while a sync of 20,000 files (one changed, 32 MB new) runs alongside.
await vm.persist.write_file("/persist/big.bin", bytes(32 * 1024 * 1024))
task = asyncio.ensure_future(vm.persist.sync())
during = []
while not task.done():
    during += await latencies(1)
await vm.run("rm /persist/big.bin")
await vm.persist.sync()
await vm.shutdown()
result = {"boot_s": boot_s, "restored": restored, "quiet_ms": quiet, "during_ms": during}
"""

PLAIN_BOOT = """
import time
t = time.perf_counter()
vm = await pyapptron.boot(EMULATOR, IMAGE, memory_mib=MEMORY)
result = time.perf_counter() - t
await vm.shutdown()
"""


def bench_persist(server, emulator: str = "v86", image: str = "minimal", memory_mib: int = 256) -> dict:
    """A store of 20,000 files: import, syncs, boot with it, exec latency during a sync.
    On c2w the guest keeps the files in its RAM (memory_mib must hold them)."""
    import tempfile

    def code(template):
        return (template.replace("EMULATOR", repr(emulator)).replace("IMAGE", repr(image))
                .replace("MEMORY", str(memory_mib)))

    with tempfile.TemporaryDirectory() as profile:
        with Browser(BrowserConfig(profile_dir=profile)) as browser:
            made = RemoteSession(browser, server.url, autoboot=False).python(code(PERSIST_MAKE))
        with Browser(BrowserConfig(profile_dir=profile)) as browser:  # a browser restart
            session = RemoteSession(browser, server.url, autoboot=False)
            plain = session.python(code(PLAIN_BOOT))
            py = session.python(code(PERSIST_MEASURE))
    q, d = py["quiet_ms"], py["during_ms"]
    return {
        "machine": f"{emulator}/{image}, {memory_mib} MiB",
        "store": {"files": py["restored"]["files"], "MB": round(py["restored"]["bytes"] / 1e6, 1)},
        "boot_with_store_s": round(py["boot_s"], 3),
        "boot_without_store_s": round(plain, 3),
        "mount_cost_s": round(py["boot_s"] - plain, 3),
        "import_20000_files_and_first_sync_s": round(made["import_and_first_sync_s"], 3),
        "sync_64MB_changed_MBps": round(64 * 1.048576 / made["sync_64MB_s"], 1),
        "sync_64MB_js_side_s": round(made["sync_64MB_js_s"], 3),
        "sync_nothing_changed_20000_files_s": round(made["noop_sync_20000_files_s"], 3),
        "run_true_ms_quiet": {"median": round(statistics.median(q), 2), "p95": round(pct(q, 0.95), 2)},
        "run_true_ms_during_sync": {"median": round(statistics.median(d), 2), "max": round(max(d), 2), "n": len(d)},
    }


class McpLines:
    """`python -m pyapptron mcp` as a subprocess, spoken to one JSON-RPC line at a time."""

    def __init__(self, *args):
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "pyapptron", "mcp", *args], cwd=HERE.parent,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.next_id = 0

    def send(self, method, params=None):
        self.next_id += 1
        line = json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}})
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.next_id

    def answer(self, request_id):
        while True:
            message = json.loads(self.proc.stdout.readline())
            if message.get("id") == request_id:
                if "error" in message:
                    raise SystemExit(f"MCP error: {message['error']}")
                return message["result"]

    def request(self, method, params=None):
        return self.answer(self.send(method, params))

    def page_url(self):
        while True:
            line = self.proc.stderr.readline().decode()
            if not line:
                raise SystemExit("the bridge exited before printing its page URL")
            if "open this page to connect a VM: " in line:
                return line.split("open this page to connect a VM: ", 1)[1].strip()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
DIRECT_RUNS = """
import time
vm = machines[{vm}]
times = []
for _ in range({n}):
    t = time.perf_counter()
    await vm.run(["/bin/sh", "-c", "true"])
    times.append((time.perf_counter() - t) * 1000)
result = times
"""


IN_PAGE_LAYER = """
import asyncio, json, statistics, time
from pyapptron.mcp import McpServer, MachineTools
vm = machines[{vm}]
box = {{}}
conn = McpServer(MachineTools(vm)).connect(lambda text: box["answer"].set_result(text))
box["answer"] = asyncio.get_running_loop().create_future()
conn.receive(json.dumps({{"jsonrpc": "2.0", "id": 0, "method": "initialize",
                          "params": {{"protocolVersion": "2025-11-25"}}}}))
await box["answer"]
layer, direct = [], []
for block in range({n} // 20):
    for i in range(20):
        box["answer"] = asyncio.get_running_loop().create_future()
        t = time.perf_counter()
        conn.receive(json.dumps({{"jsonrpc": "2.0", "id": block * 100 + i + 1, "method": "tools/call",
                                  "params": {{"name": "exec", "arguments": {{"command": "true"}}}}}}))
        answer = await box["answer"]
        layer.append((time.perf_counter() - t) * 1000)
    for i in range(20):
        t = time.perf_counter()
        await vm.run(["/bin/sh", "-c", "true"])
        direct.append((time.perf_counter() - t) * 1000)
assert json.loads(answer)["result"]["structuredContent"]["exit_code"] == 0, answer
result = {{"layer": layer, "direct": direct}}
"""


def bench_mcp(rounds: int) -> dict:
    # 1. What a desktop agent waits for: process start to the first tool result.
    started = time.perf_counter()
    mcp = McpLines("--headless")
    init_id = mcp.send("initialize", INIT)
    mcp.answer(init_id)
    initialized_s = time.perf_counter() - started
    mcp.request("tools/call", {"name": "exec", "arguments": {"command": "true"}})
    first_result_s = time.perf_counter() - started
    mcp.close()

    # 2. Round trips, on a page this process can also drive directly (same VM, same run).
    mcp = McpLines()
    url = mcp.page_url()
    with Browser() as browser:
        session = RemoteSession(browser, url, autoboot=True)
        vm = session.page_machine()
        mcp.request("initialize", INIT)
        call = {"name": "exec", "arguments": {"command": "true"}}
        for _ in range(10):  # warm both paths
            mcp.request("tools/call", call)
        mcp_ms, direct_ms, ping_ms = [], [], []
        for _ in range(max(1, rounds // 20)):
            for _ in range(20):
                t = time.perf_counter()
                mcp.request("tools/call", call)
                mcp_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                mcp.request("tools/list")  # answered by the page, without the VM: the hop alone
                ping_ms.append((time.perf_counter() - t) * 1000)
            direct_ms += session.python(DIRECT_RUNS.format(vm=vm.id, n=20))
        # The MCP layer alone, in the page (no stdio, no WebSocket), against vm.run.
        in_page = session.python(IN_PAGE_LAYER.format(vm=vm.id, n=rounds))
    mcp.close()
    med = statistics.median
    return {
        "headless_start_to_initialize_answered_s": round(initialized_s, 3),
        "headless_start_to_first_tool_result_s": round(first_result_s, 3),
        "exec_true_ms": {"median": round(med(mcp_ms), 2), "p95": round(pct(mcp_ms, 0.95), 2), "n": len(mcp_ms)},
        "direct_run_true_ms": {"median": round(med(direct_ms), 2), "p95": round(pct(direct_ms, 0.95), 2)},
        "tools_list_ms_websocket_hop": {"median": round(med(ping_ms), 2), "p95": round(pct(ping_ms, 0.95), 2)},
        "exec_over_direct_ratio": round(med(mcp_ms) / med(direct_ms), 2),
        "exec_minus_hop_over_direct_ratio": round((med(mcp_ms) - med(ping_ms)) / med(direct_ms), 2),
        "in_page_mcp_layer_exec_true_ms": round(med(in_page["layer"]), 2),
        "in_page_direct_run_true_ms": round(med(in_page["direct"]), 2),
        "in_page_mcp_layer_over_direct_ratio": round(med(in_page["layer"]) / med(in_page["direct"]), 2),
    }


def bench_mcp_http(rounds: int, clients: int = 4) -> dict:
    """MCP over Streamable HTTP: start to the first tool result, exec("true") over HTTP against
    the same over stdio (bench_mcp's) and a direct vm.run on the same VM, and `clients`
    sessions calling exec at once."""
    import asyncio
    import contextlib

    import aiohttp

    sys.path.insert(0, str(HERE.parent / "tests"))
    from mcp_clients import McpHttpServer

    accept = {"Accept": "application/json, text/event-stream"}
    ids = iter(range(1, 1 << 30))  # ids are never reused in a session

    async def session(http, url):
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT}
        async with http.post(url, json=init, headers=accept) as r:
            await r.read()
            return {**accept, "Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}

    async def exec_true(http, url, headers) -> float:
        call = {"jsonrpc": "2.0", "id": next(ids), "method": "tools/call",
                "params": {"name": "exec", "arguments": {"command": "true"}}}
        t = time.perf_counter()
        async with http.post(url, json=call, headers=headers) as r:
            body = await r.text()  # a call is answered as an SSE stream: its answer is the last event
        answer = json.loads(body.rsplit("data: ", 1)[1]) if "data: " in body else json.loads(body)
        assert answer["result"]["structuredContent"]["exit_code"] == 0, answer
        return (time.perf_counter() - t) * 1000

    # 1. What a remote agent waits for: process start to the first tool result, headless.
    started = time.perf_counter()
    server = McpHttpServer("--headless")
    listening_s = time.perf_counter() - started

    async def first_result():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {server.key}"}) as http:
            headers = await session(http, server.url)
            initialized = time.perf_counter() - started
            await exec_true(http, server.url, headers)
            return initialized, time.perf_counter() - started

    try:
        initialized_s, first_result_s = asyncio.run(first_result())
    finally:
        server.close()

    # 2. Round trips on a page this process also drives directly (same VM, alternating blocks),
    #    and several clients at once.
    server = McpHttpServer()
    page_url = server.page_url()
    with contextlib.closing(server), Browser() as browser:
        remote = RemoteSession(browser, page_url, autoboot=True)
        vm = remote.page_machine()

        async def measure():
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {server.key}"}) as http:
                headers = await session(http, server.url)
                for _ in range(10):  # warm the path
                    await exec_true(http, server.url, headers)
                http_ms, direct_ms = [], []
                for _ in range(max(1, rounds // 20)):
                    http_ms += [await exec_true(http, server.url, headers) for _ in range(20)]
                    direct_ms += await asyncio.get_running_loop().run_in_executor(
                        None, remote.python, DIRECT_RUNS.format(vm=vm.id, n=20))
                sessions = [await session(http, server.url) for _ in range(clients)]
                per_client = max(10, rounds // clients)

                async def client(headers):
                    return [await exec_true(http, server.url, headers) for _ in range(per_client)]

                t = time.perf_counter()
                together = await asyncio.gather(*map(client, sessions))
                wall = time.perf_counter() - t
                return http_ms, direct_ms, [ms for one in together for ms in one], wall

        http_ms, direct_ms, together_ms, wall_s = asyncio.run(measure())
    med = statistics.median
    return {
        "headless_start_to_listening_s": round(listening_s, 3),
        "headless_start_to_initialize_answered_s": round(initialized_s, 3),
        "headless_start_to_first_tool_result_s": round(first_result_s, 3),
        "exec_true_ms": {"median": round(med(http_ms), 2), "p95": round(pct(http_ms, 0.95), 2), "n": len(http_ms)},
        "direct_run_true_ms": {"median": round(med(direct_ms), 2), "p95": round(pct(direct_ms, 0.95), 2)},
        "exec_over_direct_ratio": round(med(http_ms) / med(direct_ms), 2),
        f"{clients}_clients_at_once": {"calls": len(together_ms), "calls_per_s": round(len(together_ms) / wall_s, 1),
                                       "median_ms": round(med(together_ms), 2),
                                       "p95_ms": round(pct(together_ms, 0.95), 2)},
    }


# Per-key echo in the terminal page: keys dispatched into xterm.js in the page itself, each
# timed (performance.now()) until xterm has parsed it into its buffer and then rendered it.
KEYECHO_IMAGES = {"minimal": "web/index.html?image=minimal", "agent": "web/index.html?image=agent",
                  "debian-x86_64": "web/index.html?emulator=c2w",
                  "agent-x86_64": "web/index.html?emulator=c2w&image=agent-x86_64"}

KEYECHO_JS = r"""
const [words, gapMs, keyTimeoutMs] = [arguments[0], arguments[1], arguments[2]];
const done = arguments[arguments.length - 1];
const term = window.sandbox.terminal, core = () => term.buffer.active;
const now = () => performance.now();
const sleep = (ms) => new Promise(r => setTimeout(r, ms));
let lastWrite = now();
const waiters = new Set();  // checked after every parsed write and render
const wake = (kind) => { if (kind === "write") lastWrite = now(); for (const w of [...waiters]) w(kind); };
const subs = [term.onWriteParsed(() => wake("write")), term.onRender((e) => wake({start: e.start, end: e.end}))];
let dataAt = null;
subs.push(term.onData(() => { if (dataAt === null) dataAt = now(); }));
// What a key costs besides time: bytes the guest wrote to the terminal and, on v86, 9p
// requests the guest made (each is a virtio round trip into the emulator's JS file system).
const count = {out: 0, p9: 0};
const write = term.write;
term.write = function (data, cb) { count.out += data.length; return write.call(this, data, cb); };
subs.push({dispose: () => { term.write = write; }});
try {
  const p9 = window.sandbox.vm.backend.engine().v86.cpu.devices.virtio_9p;
  if (p9 && p9.SendReply) {
    p9.SendReply = function (...a) { count.p9++; return Object.getPrototypeOf(this).SendReply.apply(this, a); };
    subs.push({dispose: () => { delete p9.SendReply; }});
  }
} catch (e) { count.p9 = null; }
const counted = () => ({out: count.out, p9: count.p9});
function until(test, timeoutMs) {  // resolves with now() when test() first holds after an event
  return new Promise((resolve) => {
    if (test("poll")) return resolve(now());
    const timer = setTimeout(() => { waiters.delete(w); resolve(null); }, timeoutMs);
    const w = (kind) => { if (test(kind)) { clearTimeout(timer); waiters.delete(w); resolve(now()); } };
    waiters.add(w);
  });
}
async function quiet(ms, timeoutMs) {  // no output for ms
  const t0 = now();
  while (now() - lastWrite < ms) { if (now() - t0 > timeoutMs) return false; await sleep(20); }
  return true;
}
const cursorText = () => { const b = core(); return b.getLine(b.baseY + b.cursorY).translateToString(false, 0, b.cursorX); };
const lastLines = (from) => { const b = core(), out = [];  // from a row to the cursor's
  for (let i = Math.min(from, b.baseY + b.cursorY); i <= b.baseY + b.cursorY; i++) out.push(b.getLine(i).translateToString(true));
  return out.join("\n"); };
const atPrompt = () => /[#$%>] $/.test(cursorText());
// A key as the browser delivers it: keydown on xterm's textarea (xterm turns it into onData).
function press(ch) {
  dataAt = null;
  if (/^[a-z]$/.test(ch)) {
    const code = ch.toUpperCase().charCodeAt(0);
    term.textarea.dispatchEvent(new KeyboardEvent("keydown", {key: ch, code: "Key" + ch.toUpperCase(),
      keyCode: code, which: code, bubbles: true, cancelable: true}));
  }
  if (dataAt === null) term.input(ch);  // (other keys; a browser that ignores keyCode in synthetic events)
}
async function typeWord(word) {
  await quiet(500, 30000);
  const b = core(), row = b.baseY + b.cursorY, x0 = b.cursorX;
  const keys = [];
  let cKey = null;  // counts at the last key: what it cost in all, up to the next key
  let tKey = 0;
  // ...and when the guest last wrote before the next key: the line's colours and suggestion drawn
  const settle = (key, c) => Object.assign(key, {out_bytes: c.out - cKey.out, p9: c.p9 === null ? null : c.p9 - cKey.p9,
                                                 settled_ms: Math.max(key.parsed_ms, lastWrite - tKey)});
  for (let i = 0; i < word.length; i++) {
    const want = word.slice(0, i + 1);
    // (the key's text in its place and the cursor after it: a space shows only by the cursor)
    const shown = () => { const b = core(), l = b.getLine(row);
      return l && l.translateToString(false, x0, x0 + i + 1) === want && b.baseY + b.cursorY === row && b.cursorX === x0 + i + 1; };
    const c0 = counted();
    if (i > 0) settle(keys[i - 1], c0);
    cKey = c0;
    const t0 = tKey = now();
    press(word[i]);
    const tData = dataAt;
    const tParsed = await until(shown, keyTimeoutMs);
    const cEcho = counted();
    if (tParsed === null) return {keys, error: `key ${i} (${word[i]}) not echoed in ${keyTimeoutMs} ms; the screen ends: ${JSON.stringify(lastLines(row))}`};
    // On the screen: the next render of the row (xterm renders in an animation frame).
    const vrow = row - core().viewportY;
    const tRender = await until((k) => typeof k === "object" && k.start <= vrow && vrow <= k.end, 2000);
    keys.push({data_ms: tData - t0, parsed_ms: tParsed - t0, shown_ms: (tRender ?? tParsed) - t0,
               out_bytes_to_echo: cEcho.out - c0.out, p9_to_echo: count.p9 === null ? null : cEcho.p9 - c0.p9});
    await sleep(gapMs);
  }
  settle(keys[keys.length - 1], counted());
  // Once the typing stops: when the guest last wrote (the line's colours, a suggestion).
  const tLast = tKey;
  await quiet(600, 10000);
  const lineDoneMs = lastWrite - tLast;
  term.input("\x15");  // Ctrl-U: the word goes, unrun, out of history's way
  const cleared = await until(() => { const l = core().getLine(row); return l && l.translateToString(true, x0).trim() === ""; }, 30000);
  if (cleared === null) {
    const l = core().getLine(row);
    return {keys, error: "the line was not cleared: " + JSON.stringify(l && l.translateToString(true)) + " cursor " + JSON.stringify(cursorText())};
  }
  return {keys, line_done_ms: lineDoneMs};
}
(async () => {
  // A warm prompt: Enter at a quiet prompt gives a new one; then a word typed and dropped.
  // (a quiet console is not yet a prompt: a boot pauses before the shell starts)
  const tPrompt = now();
  while (!(await quiet(1000, 120000)) || !atPrompt()) {
    if (now() - tPrompt > 180000) return {error: "no quiet prompt: " + JSON.stringify(cursorText())};
    await sleep(200);
  }
  const before = core().baseY + core().cursorY;
  term.input("\r");
  if (await until(() => core().baseY + core().cursorY > before && atPrompt(), 60000) === null)
    return {error: "no new prompt after Enter: " + JSON.stringify(cursorText())};
  const out = {warmup: null, words: []};
  for (let i = 0; i < words.length; i++) {
    const r = await typeWord(words[i]);
    if (i === 0) out.warmup = r; else out.words.push(r);
    if (r.error) { out.error = r.error; break; }
  }
  return out;
})().then((r) => { subs.forEach(s => s.dispose()); done(r); },
          (e) => { subs.forEach(s => s.dispose()); done({error: String(e && e.stack || e)}); });
"""


def _fresh_words(n: int, length: int = 20) -> list[str]:
    """Words no history holds: random letters, not starting with a letter any command here
    would complete to a suggestion (zsh-autosuggestions draws history after the cursor)."""
    import random

    rng = random.Random()
    return ["q" + "".join(rng.choice("bcdfghjkmnpvwxz") for _ in range(length - 1)) for _ in range(n)]


# Two typists: the next key 100 ms after the last one showed (about 8 keys a second) and
# 250 ms after it (about 3.5 a second, time for work an image does once typing pauses).
KEYECHO_GAPS_MS = {"fast": 100, "slow": 250}


def keyecho_run(server, image: str, words: int = 3, gaps: dict | None = None, browser=None) -> dict:
    """One page: boot IMAGE into the terminal, reach a warm prompt and, for each typing speed
    of `gaps`, type a warm-up word then `words` fresh words of 20 keys. Per key, the ms from
    its keydown to the character parsed into xterm's buffer and to the next render of its
    row; the first warm-up word is the first typing after the boot."""
    own = browser is None
    browser = browser or Browser()
    try:
        session = RemoteSession(browser, server.url + KEYECHO_IMAGES[image], autoboot=True)
        session.page_machine()  # booted
        return {speed: browser.driver.execute_async_script(KEYECHO_JS, _fresh_words(words + 1), gap, 20000)
                for speed, gap in (gaps or KEYECHO_GAPS_MS).items()}
    finally:
        if own:
            browser.close()


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 1), "p95": round(pct(values, 0.95), 1),
            "max": round(max(values), 1), "n": len(values)}


def bench_keyecho(server, pages: int = 2, words: int = 3) -> dict:
    """Per-key echo at a warm prompt, per image: `pages` freshly booted pages, each typing
    `words` fresh words of 20 keys (after a warm-up word) at each speed of KEYECHO_GAPS_MS."""
    out = {"how": "keydown dispatched on xterm's textarea in the page; per key, the time to the character "
                  "parsed into xterm's buffer (parsed) and to the next render of its row (shown); "
                  f"{pages} pages per image, {words} words of 20 keys per page and speed after a warm-up "
                  "word, the next key this long after the last one showed: "
                  + ", ".join(f"{k} {v} ms" for k, v in KEYECHO_GAPS_MS.items())
                  + "; line_done: from a word's last key to the guest's last write (its colours, a suggestion)"}
    med = statistics.median
    for image in KEYECHO_IMAGES:
        result, first, errors = {}, [], []
        runs = [keyecho_run(server, image, words) for _ in range(pages)]
        for speed in KEYECHO_GAPS_MS:
            keys, done, per_page = [], [], []
            for run in runs:
                r = run[speed]
                if r.get("error"):
                    errors.append(f"{speed}: {r['error']}")
                if speed == next(iter(KEYECHO_GAPS_MS)) and r.get("warmup"):
                    first += [k["shown_ms"] for k in r["warmup"]["keys"]]
                page = [k for w in r.get("words", []) for k in w["keys"]]
                keys += page
                done += [w["line_done_ms"] for w in r.get("words", []) if "line_done_ms" in w]
                if page:
                    per_page.append({"median": round(med(k["shown_ms"] for k in page), 1),
                                     "p95": round(pct([k["shown_ms"] for k in page], 0.95), 1)})
            if not keys:
                result[speed] = None
                continue
            p9 = [k["p9"] for k in keys if k.get("p9") is not None]
            result[speed] = {
                "shown_ms": _summary([k["shown_ms"] for k in keys]),
                "parsed_ms": _summary([k["parsed_ms"] for k in keys]),
                "per_page_shown_ms": per_page,
                "line_done_ms_median": round(med(done), 1) if done else None,
                "per_key_median": {"bytes_out": med(k["out_bytes"] for k in keys),
                                   "p9_requests": med(p9) if p9 else None},
            }
        result["first_word_after_boot_shown_ms"] = _summary(first) if first else None
        if errors:
            result["errors"] = errors
        out[image] = result
    return out


def _network_handler(big: bytes):
    """The guests' HTTP service in bench_network: GET /big (random bytes: the relay's
    WebSocket compresses, so zeros would flatter it), GET /small, POST /sink (counted in
    the server's `received`)."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            body = big if self.path == "/big" else b"ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            left = int(self.headers["Content-Length"])
            while left:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
                self.server.received += len(chunk)
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *args):
            pass

    return Handler


def bench_network(server, download_mb: int = 50, upload_mb: int = 10, requests: int = 20) -> dict:
    """The guest's network through the relay (host-only, one allowed port), on v86
    (minimal) and c2w (debian-x86_64): a download of download_mb and an upload of upload_mb
    of random bytes (busybox wget), and one small HTTP request's round trip (TCP connect
    through the relay, GET, close), less the same wget failing at once on the guest's own
    loopback (the cost of starting wget); the host's own download for comparison."""
    import os
    import urllib.request
    figures = {}
    with http_service(_network_handler(os.urandom(download_mb << 20))) as service:
        service.received = 0
        port = service.server_address[1]
        url = f"http://host.pyapptron.internal:{port}"
        t = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/big") as response:
            assert len(response.read()) == download_mb << 20
        figures["host_download_MBps"] = round(download_mb / (time.perf_counter() - t), 1)
        with Browser() as browser:
            for emulator, image in (("v86", "minimal"), ("c2w", C2W_IMAGE)):
                session = RemoteSession(browser, server.url)  # a fresh page for each engine
                vm = session.boot(emulator, image, network={"internet": False, "host_ports": [port]}, timeout=300)
                assert vm.run(f"wget -qO /dev/null {url}/small").returncode == 0  # the path is warm
                t = time.perf_counter()
                r = vm.run(f"wget -qO- {url}/big | wc -c", timeout=1800)
                down_s = time.perf_counter() - t
                assert int(r.stdout) == download_mb << 20, r
                # busybox wget posts its file as a C string: random bytes without NULs
                made = vm.run(f"head -c {upload_mb << 20} /dev/urandom | tr '\\000' '\\001' > /tmp/up", timeout=600)
                assert made.returncode == 0, made
                before = service.received
                t = time.perf_counter()
                r = vm.run(f"wget -qO- --post-file=/tmp/up {url}/sink", timeout=1800)
                up_s = time.perf_counter() - t
                assert r.stdout == b"ok\n" and service.received - before == upload_mb << 20, (r, service.received - before)
                loop = f"n=0; for i in $(seq {requests}); do wget -qO /dev/null %s 2>/dev/null && n=$((n+1)); done; echo $n"
                t = time.perf_counter()
                answered = vm.run(loop % f"{url}/small", timeout=600)
                request_s = (time.perf_counter() - t) / requests
                assert answered.stdout == f"{requests}\n".encode(), answered
                t = time.perf_counter()
                refused = vm.run(loop % "http://127.0.0.1:1/", timeout=600)
                spawn_s = (time.perf_counter() - t) / requests
                assert refused.stdout == b"0\n", refused
                figures[emulator] = {
                    "image": image,
                    f"download_{download_mb}MB_MBps": round(download_mb / down_s, 2),
                    f"upload_{upload_mb}MB_MBps": round(upload_mb / up_s, 2),
                    "small_request_round_trip_ms": round((request_s - spawn_s) * 1000, 1),
                    "wget_start_ms": round(spawn_s * 1000, 1),
                }
                vm.shutdown()
    return figures


#: The packages `npm install` fetches in bench_npm: the page's own pinned npm packages
#: without dependencies (about 5.4 MB of tarballs).
NPM_BENCH_PACKAGES = ("@xterm/xterm", "@xterm/addon-fit", "@bjorn3/browser_wasi_shim", "v86")


def bench_npm(server) -> dict:
    """`npm install` of NPM_BENCH_PACKAGES from a registry on the host's loopback: on the
    host (its own node and npm, an empty cache) and in both agent images (v86 `agent`,
    c2w `agent-x86_64`; host-only with the registry's port allowed), each into a new
    project with an empty npm cache."""
    import base64
    import hashlib
    import http.server
    import subprocess
    import tempfile
    import urllib.parse
    import importlib.util
    path = HERE.parent / "emulators" / "build.py"  # by path: PyPI's `build` may be importable as `build`
    spec = importlib.util.spec_from_file_location("pyapptron_emulators_build", path)
    assets_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(assets_build)
    manifest = assets_build.load_manifest()
    tarballs = {name: assets_build._npm_tarball(name, manifest["npm"][name], assets_build.DEFAULT_CACHE)[0].read_bytes()
                for name in NPM_BENCH_PACKAGES}
    host_name = "host.pyapptron.internal"

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = urllib.parse.unquote(self.path)
            name, _, rest = path.lstrip("/").partition("/-/")
            if name in tarballs and not rest:
                host = self.headers.get("Host", host_name)
                data = tarballs[name]
                version = manifest["npm"][name]["version"]
                dist = {"tarball": f"http://{host}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz",
                        "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
                        "shasum": hashlib.sha1(data).hexdigest()}
                body = json.dumps({"name": name, "dist-tags": {"latest": version},
                                   "versions": {version: {"name": name, "version": version, "dist": dist}}}).encode()
            elif name in tarballs:
                body = tarballs[name]
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    names = " ".join(NPM_BENCH_PACKAGES)
    flags = "--no-audit --no-fund --no-update-notifier"
    figures = {"packages": list(NPM_BENCH_PACKAGES), "tarballs_MB": round(sum(map(len, tarballs.values())) / 1e6, 1)}
    with http_service(Registry) as httpd:
        port = httpd.server_address[1]
        with tempfile.TemporaryDirectory() as work:
            (Path(work) / "cache").mkdir()
            t = time.perf_counter()
            done = subprocess.run(f"npm install {flags} --cache {work}/cache --registry http://127.0.0.1:{port}/ "
                                  f"{names}", shell=True, cwd=work, capture_output=True, text=True)
            assert done.returncode == 0, f"npm install on the host failed:\n{done.stdout}{done.stderr}"
            figures["host_s"] = round(time.perf_counter() - t, 2)
            figures["host_npm"] = subprocess.run(["npm", "--version"], capture_output=True, text=True).stdout.strip()
        with Browser() as browser:
            for emulator, image in (("v86", "agent"), ("c2w", AGENT64_IMAGE)):
                session = RemoteSession(browser, server.url)
                vm = session.boot(emulator, image, network={"internet": False, "host_ports": [port]}, timeout=300)
                vm.run("npm --version", timeout=600)  # npm's own first start is not the network's
                t = time.perf_counter()
                r = vm.run(f"rm -rf /tmp/bench-npm ~/.npm/_cacache && mkdir /tmp/bench-npm && cd /tmp/bench-npm && "
                           f"npm install {flags} --registry http://{host_name}:{port}/ {names}", timeout=1800)
                seconds = time.perf_counter() - t
                assert r.returncode == 0, r
                figures[emulator] = {"image": image, "s": round(seconds, 2),
                                     "npm": vm.run("npm --version").stdout.decode().strip()}
                vm.shutdown()
    return figures


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--images", default="minimal,agent,persist,snapshot",
                    help="what to measure (comma-separated): minimal, agent, persist (a 50 MB / 20,000-file store), "
                         "mcp, snapshot (resume vs cold boot, both images), snapshot64 (the same for the c2w "
                         "images, and claude --version after a resume), lab (JupyterLite notebook), "
                         "fixture (the pytest vm fixture per test: resumed, cold, through a Grid), "
                         "c2w (x86_64 Bochs on WASI: cold boot, exec, 10 MB each way in the page, real MIPS), "
                         "agent64 (the agent-x86_64 image: cold boot, bytes fetched, the agent tools' first "
                         "and second start, the channel in the page), "
                         "qemu-wasm (the stand-in build: cold boot, exec and 1 MB out over the console), "
                         "keyecho (per-key echo in the terminal page at a warm prompt: every image), "
                         "network (v86 and c2w: 50 MB down, 10 MB up and a small request through the relay), "
                         "npm (npm install of 4 packages from a registry on the host: host, agent, agent-x86_64)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    ap.add_argument("--latency-ms", type=float, default=0,
                    help="answer each content-addressed image file (fs/ID) this much later, as a far server would")
    args = ap.parse_args()
    images = set(args.images.split(","))
    # Measuring one image keeps the other's figures from the last run.
    try:
        figures = json.loads(args.out.read_text())
    except (OSError, ValueError):
        figures = {}
    figures |= {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
    }
    def save() -> str:  # after every section: a later failure keeps what was measured
        text = json.dumps(figures, indent=2)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        return text

    sections = [
        ("minimal", None, lambda: bench_minimal(server, args.rounds)),
        ("agent", "agent", lambda: bench_agent(server)),
        ("persist", "persist", lambda: bench_persist(server)),
        ("persist64", "persist_x86_64", lambda: bench_persist(server, "c2w", "agent-x86_64", 1024)),
        ("mcp", "mcp", lambda: bench_mcp(args.rounds)),
        ("mcp", "mcp_http", lambda: bench_mcp_http(args.rounds)),
        ("snapshot", "snapshot", lambda: bench_snapshot(server)),
        ("snapshot64", "snapshot_x86_64",
         lambda: bench_snapshot(server, engines=(("c2w", "debian-x86_64"), ("c2w", "agent-x86_64")))),
        ("lab", "lab", bench_lab),
        ("fixture", "pytest_fixture", bench_fixture),
        ("c2w", "c2w", lambda: bench_c2w(server)),
        ("agent64", "agent_x86_64", lambda: bench_agent64(server)),
        ("qemu-wasm", "qemu_wasm", lambda: bench_qemu_wasm(server, args.rounds)),
        ("keyecho", "keyecho", lambda: bench_keyecho(server)),
        ("network", "network", lambda: bench_network(server)),
        ("npm", "network_npm", lambda: bench_npm(server)),
    ]
    with PageServer(extra_roots={"/bench/": HERE}, latency_ms=args.latency_ms) as server:
        for name, key, measure in sections:
            if name not in images:
                continue
            result = measure()
            if key is None:
                figures.update(result)
            else:
                figures[key] = result
            save()
    print(save())
    print(f"saved {args.out}", file=sys.stderr)
    return 0


def bench_agent(server) -> dict:
    with Browser() as browser:
        session = RemoteSession(browser, server.url)
        py = session.python(AGENT_BENCH)
    spec = json.loads((HERE.parent / "build" / "assets" / "images" / "agent" / "image.json").read_text())
    mb = lambda n: round(n / 1e6, 2)  # noqa: E731
    return {
        "image_files": spec["sizes"]["files"],
        "image_uncompressed_MB": mb(spec["sizes"]["uncompressed_bytes"]),
        "image_compressed_total_MB": mb(spec["sizes"]["stored_bytes"] + spec["sizes"]["index_bytes"]),
        "cold_boot_to_exec_ready_s": round(py["boot_s"], 3),
        "cold_boot_to_zsh_prompt_s": round(py["prompt_s"], 3),
        "fetched_to_exec_ready": {"image_MB": mb(py["at_ready"]["fs_bytes"] + py["at_ready"]["index_bytes"]),
                                  "files": py["at_ready"]["fs_files"],
                                  "kernel_and_initramfs_MB": mb(py["at_ready"]["boot_bytes"])},
        "fetched_to_zsh_prompt": {"image_MB": mb(py["at_prompt"]["fs_bytes"] + py["at_prompt"]["index_bytes"]),
                                  "files": py["at_prompt"]["fs_files"]},
        "fetched_after_all_below": {"image_MB": mb(py["after"]["fs_bytes"] + py["after"]["index_bytes"]),
                                    "files": py["after"]["fs_files"]},
        "python3_c_pass_s": {"first": round(py["first_python_s"], 3), "again": round(py["warm_python_s"], 3)},
        "git_status_1000_files_s": {"first": round(py["first_git_status_s"], 3), "again": round(py["warm_git_status_s"], 3)},
        "npm_version_s": {"first": round(py["first_npm_s"], 3), "again": round(py["warm_npm_s"], 3)},
        "node_e_0_first_s": round(py["first_node_s"], 3),
    }


def bench_minimal(server, rounds: int) -> dict:
    with Browser() as browser:
        session = RemoteSession(browser, server.url)
        load = browser.driver.execute_async_script(LOAD)
        bare_url = server.url + "bench/bare_v86.mjs"
        py = session.python(PY_BENCH.format(rounds=rounds).replace("BARE_URL", repr(bare_url)))
        bare = browser.driver.execute_async_script(BARE, bare_url, py.pop("options"), 5)
        if "error" in bare:
            raise SystemExit(f"bare v86 run failed: {bare['error']}")
        memory = browser.driver.execute_script("return performance.memory ? performance.memory.usedJSHeapSize : null")
    mb = 10 * 1024 * 1024 / 1e6
    rt, bare_rt = py["roundtrip_ms"], py["bare_roundtrip_ms"]
    return {
        "pyodide_and_pyapptron_load_s": round(load["load_s"], 3),
        "page_ready_since_navigation_s": round(load["since_navigation_s"], 3),
        "cold_boot_to_exec_ready_s": round(py["boot_s"], 3),
        "bare_v86_boot_to_shell_prompt_s": round(bare["prompt_s"], 3),
        "bare_v86_boot_to_agent_hello_s": round(bare["agent_hello_s"], 3),
        "exec_ready_vs_bare_prompt_ratio": round(py["boot_s"] / bare["prompt_s"], 3),
        "roundtrip_true_ms": {"median": round(statistics.median(rt), 2), "p95": round(pct(rt, 0.95), 2), "n": len(rt)},
        "bare_roundtrip_true_ms": {"median": round(statistics.median(bare_rt), 2), "p95": round(pct(bare_rt, 0.95), 2), "n": len(bare_rt)},
        "python_layer_roundtrip_ratio": round(statistics.median(rt) / statistics.median(bare_rt), 3),
        "write_file_10MB_MBps": round(mb / py["write_s"], 2),
        "read_file_10MB_MBps": round(mb / py["read_s"], 2),
        "run_stdout_10MB_MBps": round(mb / py["stdout_s"], 2),
        "js_heap_used_MB_after": round(memory / 1e6, 1) if memory else None,
    }


if __name__ == "__main__":
    raise SystemExit(main())
