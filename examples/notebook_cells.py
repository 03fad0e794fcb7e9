# Notebook-style cells, as a notebook author runs them in Pyodide (top-level await works
# in Pyodide's console, JupyterLite's Pyodide kernel and `pyodide.runPythonAsync`).
# tests/test_examples.py runs these cells in order in a real page.

# %% Boot a VM (the minimal busybox image on v86). It resumes from the image's boot
# snapshot in well under a second (cold=True boots the kernel, ~10 s). persist= keeps
# /root, /persist and installed packages in this browser's IndexedDB: rerun the notebook
# after a reload and they are still there.
import pyapptron

vm = await pyapptron.boot("v86", image="minimal", persist="notebook")
print(vm.resumed_from, f"in {vm.boot_seconds:.2f} s")
vm.capabilities

# %% Run commands: a subprocess.CompletedProcess with exact bytes
r = await vm.run("uname -a")
print(r.returncode, r.stdout.decode())

r = await vm.run(["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"])
assert (r.returncode, r.stdout, r.stderr) == (3, b"to-stdout\n", b"to-stderr\n")

# %% Move data between the notebook and the VM
await vm.write_file("/root/data.csv", "name,score\nada,10\nlin,7\n")
r = await vm.run("sort -t, -k2 -n /root/data.csv | head -n 2", text=True)
lowest = r.stdout.splitlines()
print(lowest)
assert lowest == ["name,score", "lin,7"]

# %% Files that outlive the page: write from Python straight into the persisted tree,
# use them in the guest, and commit (an automatic sync also runs shortly after changes)
runs = int((await vm.run("cat /persist/runs 2>/dev/null || echo 0")).stdout) + 1
await vm.persist.write_file("/persist/runs", f"{runs}\n")
await vm.run("echo \"run $(cat /persist/runs)\" >> /persist/history", check=True)
print((await vm.persist.read_file("/persist/history")).decode())
committed = await vm.persist.sync()
print(f"kept {committed.files} files ({committed.bytes} bytes) in {committed.seconds * 1000:.0f} ms")

# %% Snapshots: save the whole machine, break it, go back. A snapshot is kept in
# IndexedDB (or returned as bytes with to_bytes=True) and boot(resume=name) starts
# a new machine from it.
await vm.run("echo prepared > /tmp/setup-done")
saved = await vm.snapshot("notebook-prepared")
await vm.run("rm /tmp/setup-done")
await vm.restore("notebook-prepared")
assert (await vm.run("cat /tmp/setup-done")).stdout == b"prepared\n"
print([s.name for s in await pyapptron.snapshots.list()], f"{saved.size / 1e6:.1f} MB")
await pyapptron.snapshots.delete("notebook-prepared")

# %% Wait on the interactive console the way pexpect does
await vm.console.wait_for(rb"# ", timeout=30)
vm.console.sendline("echo hello-console")
await vm.console.wait_for(b"hello-console")

# %% Release the emulator
await vm.shutdown()

# %% The 64-bit agent sandbox: the same interface on the c2w backend (Bochs for WASI,
# x86_64; the page must be cross-origin isolated, as `python -m pyapptron serve` makes it).
# Debian amd64 with Node 22, Claude Code, Bun and Gemini CLI; a tool's first start reads
# it from the lazily loaded root (seconds), later starts come from the guest's cache.
async with await pyapptron.boot("c2w", image="agent-x86_64") as vm64:
    await vm64.write_file("/root/hello.ts", b"const n: number = 6 * 7; console.log(`bun says ${n}`);\n")
    r = await vm64.run("uname -m; node -p process.version; bun /root/hello.ts", timeout=600)
    print(r.stdout.decode(), vm64.capabilities.arch)
    assert r.stdout.startswith(b"x86_64\nv22.") and r.stdout.endswith(b"bun says 42\n")

# %% Your own QEMU-Wasm build: serve its directory (out.js, its .wasm, load-*.js packages)
# beside the page, e.g. `python -m pyapptron serve --mount /qemu/=DIR`, and point boot at
# it. Here: the stand-in the asset step builds (not QEMU: it keeps QEMU-Wasm's contract).
from pyapptron import _browser
build = _browser.default_assets_url() + "qemu_wasm/standin/"
async with await pyapptron.boot("qemu-wasm", build=build, packages=["load-rom.js", "load-kernel.js"],
                                kernel="/pack/standin-kernel.bin", append="quiet") as qvm:
    r = await qvm.run("uname -m")     # typed into the guest's shell on ttyS0, output between markers
    print(r.stdout.decode(), qvm.capabilities.as_dict())
    assert r.stdout == b"x86_64\n"
result = "notebook done"
