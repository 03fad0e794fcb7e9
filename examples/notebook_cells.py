# Notebook-style cells, as a notebook author runs them in Pyodide (top-level await works
# in Pyodide's console, JupyterLite's Pyodide kernel and `pyodide.runPythonAsync`).
# tests/test_examples.py runs these cells in order in a real page.

# %% Boot a VM (the minimal busybox image on v86)
import pyapptron

vm = await pyapptron.boot("v86", image="minimal")
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

# %% Wait on the interactive console the way pexpect does
await vm.console.wait_for(rb"# ", timeout=30)
vm.console.sendline("echo hello-console")
await vm.console.wait_for(b"hello-console")

# %% Release the emulator
await vm.shutdown()
result = "notebook done"
