"""Native tests of the guest agent (emulators/agent/pyapptron-agent.c).

The agent is compiled with the host's gcc and run on the slave side of a pty,
exactly as it runs on /dev/hvc0 in a guest, and driven from the master side
with a tiny frame codec written here from emulators/agent/PROTOCOL.md (it does
not use pyapptron/agent.py on purpose: this checks the C side against the
document, not against the other implementation).
"""

from __future__ import annotations

import os
import pathlib
import pty
import shutil
import stat
import struct
import subprocess
import sys
import threading
import time
import tty

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
AGENT_SRC = ROOT / "emulators" / "agent" / "pyapptron-agent.c"

MAGIC = 0x5AA5
HDR = struct.Struct("<HBBII")
CHUNK = 4096

# host -> guest
HELLO, EXEC, STDIN, STDIN_EOF, SIGNAL = 0x01, 0x10, 0x11, 0x12, 0x13
READ_FILE, WRITE_FILE, DATA, DATA_END, LIST_DIR = 0x20, 0x21, 0x22, 0x23, 0x24
# guest -> host
G_HELLO, G_STDOUT, G_STDERR, G_EXIT, G_ERROR = 0x01, 0x81, 0x82, 0x83, 0x84
G_DATA, G_END, G_WINDOW = 0x85, 0x86, 0x87

TIMEOUT = 20.0


# ---- codec ---------------------------------------------------------------

def frame(ftype: int, fid: int, payload: bytes = b"") -> bytes:
    return HDR.pack(MAGIC, ftype, 0, fid, len(payload)) + payload


def s(value: str | bytes) -> bytes:
    b = value.encode() if isinstance(value, str) else value
    return struct.pack("<I", len(b)) + b


def cost(payload_len: int) -> int:
    return -(-(12 + payload_len) // CHUNK)


def exec_payload(argv, env=(), cwd="", stdin=False, replace_env=False) -> bytes:
    flags = (1 if stdin else 0) | (2 if replace_env else 0)
    out = struct.pack("<II", flags, len(argv)) + b"".join(s(a) for a in argv)
    out += struct.pack("<I", len(env)) + b"".join(s(e) for e in env)
    return out + s(cwd)


class Agent:
    """The host end: a reader thread that sorts frames by id and keeps the
    flow-control credit, and a sender that respects it."""

    def __init__(self, binary: pathlib.Path, environment_file: str = "/nonexistent/environment"):
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.proc = subprocess.Popen(
            [str(binary), os.ttyname(slave)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            # the image's /etc/environment, not this host's
            env={"PYAPPTRON_ENVIRONMENT_FILE": environment_file},
        )
        self.cond = threading.Condition()
        self.frames: dict[int, list[tuple[int, bytes]]] = {}
        self.hellos: list[bytes] = []
        self.windows: list[int] = []
        self.credit = 0
        self.window = 0
        self.send_lock = threading.Lock()
        self.next_id = 1
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()
        self.wait_for(lambda: self.hellos, "agent HELLO")
        os.close(slave)  # the agent holds its own descriptor now

    # -- transport
    def _read_loop(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self.cond:
                    self.cond.notify_all()
                return
            buf += chunk
            while len(buf) >= 12:
                magic, ftype, _flags, fid, length = HDR.unpack_from(buf)
                assert magic == MAGIC, f"bad magic from agent: {buf[:16]!r}"
                if len(buf) < 12 + length:
                    break
                payload, buf = buf[12:12 + length], buf[12 + length:]
                with self.cond:
                    if ftype == G_HELLO:
                        self.hellos.append(payload)
                        _ver, self.window, _chunk = struct.unpack_from("<III", payload)
                        self.credit = self.window
                    elif ftype == G_WINDOW:
                        (chunks,) = struct.unpack("<I", payload)
                        self.windows.append(chunks)
                        self.credit += chunks
                    else:
                        self.frames.setdefault(fid, []).append((ftype, payload))
                    self.cond.notify_all()

    def wait_for(self, predicate, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.cond.wait(min(left, 0.1))

    def write_raw(self, data: bytes):
        view = memoryview(data)
        while view:
            n = os.write(self.master, view[:CHUNK])
            view = view[n:]

    def send(self, ftype: int, fid: int, payload: bytes = b""):
        """Sends one frame once its whole cost fits in the credit, in
        transport writes of at most CHUNK bytes (never two frames in one)."""
        need = cost(len(payload))
        assert need <= self.window, "frame larger than the window"
        with self.send_lock:
            self.wait_for(lambda: self.credit >= need, "credit")
            with self.cond:
                self.credit -= need
            self.write_raw(frame(ftype, fid, payload))

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    # -- requests
    def exec(self, argv, stdin=False, **kw) -> int:
        fid = self.new_id()
        self.send(EXEC, fid, exec_payload(argv, stdin=stdin, **kw))
        return fid

    def feed(self, fid: int, data: bytes, eof=True):
        step = self.window * CHUNK - 12
        for i in range(0, len(data), step):
            self.send(STDIN, fid, data[i:i + step])
        if eof:
            self.send(STDIN_EOF, fid)

    def finish(self, fid: int, timeout=TIMEOUT):
        """Waits for the end of a request: (frames, last frame)."""
        def done():
            fr = self.frames.get(fid, [])
            return fr and fr[-1][0] in (G_EXIT, G_ERROR, G_END)
        self.wait_for(done, f"end of request {fid}", timeout)
        with self.cond:
            return list(self.frames[fid])

    def result(self, fid: int, timeout=TIMEOUT):
        frames = self.finish(fid, timeout)
        out = b"".join(p for t, p in frames if t == G_STDOUT)
        err = b"".join(p for t, p in frames if t == G_STDERR)
        last_type, last = frames[-1]
        if last_type == G_ERROR:
            return out, err, ("error", error_errno(last))
        assert last_type == G_EXIT, frames[-1]
        return out, err, struct.unpack("<i", last)[0]

    def run(self, argv, input=None, **kw):
        fid = self.exec(argv, stdin=input is not None, **kw)
        if input is not None:
            self.feed(fid, input)
        return self.result(fid)

    def write_file(self, path, data: bytes, mode=0):
        fid = self.new_id()
        self.send(WRITE_FILE, fid, struct.pack("<I", mode) + s(str(path)))
        step = self.window * CHUNK - 12
        for i in range(0, len(data), step):
            self.send(DATA, fid, data[i:i + step])
        self.send(DATA_END, fid)
        return self.finish(fid)

    def read_file(self, path):
        fid = self.new_id()
        self.send(READ_FILE, fid, s(str(path)))
        return self.finish(fid)

    def list_dir(self, path):
        fid = self.new_id()
        self.send(LIST_DIR, fid, s(str(path)))
        return self.finish(fid)

    def quiesce(self):
        """Waits until all credit is back (every frame sent has been read)."""
        self.wait_for(lambda: self.credit == self.window, "all credit returned")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)
        self.reader.join(timeout=5)
        self.proc.stderr.close()


def error_errno(payload: bytes) -> int:
    return struct.unpack_from("<i", payload)[0]


def error_message(payload: bytes) -> str:
    (n,) = struct.unpack_from("<I", payload, 4)
    return payload[8:8 + n].decode()


def parse_entries(data: bytes):
    entries = {}
    off = 0
    while off < len(data):
        kind = chr(data[off])
        mode, size, mtime, nlen = struct.unpack_from("<IQqI", data, off + 1)
        name = data[off + 25:off + 25 + nlen].decode()
        entries[name] = (kind, mode, size, mtime)
        off += 25 + nlen
    return entries


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (OSError, IndexError):  # gone, or exited between open and read (ESRCH)
        return False


# ---- fixtures ------------------------------------------------------------

@pytest.fixture(scope="session")
def agent_binary(tmp_path_factory) -> pathlib.Path:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is required to build the guest agent for these tests"
    out = tmp_path_factory.mktemp("agent") / "pyapptron-agent"
    proc = subprocess.run(
        [gcc, "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(AGENT_SRC)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, f"agent does not compile:\n{proc.stderr}"
    return out


@pytest.fixture
def agent(agent_binary):
    a = Agent(agent_binary)
    yield a
    a.close()


PY = sys.executable


# ---- tests ---------------------------------------------------------------

def test_hello_on_start(agent):
    version, window, chunk = struct.unpack_from("<III", agent.hellos[0])
    assert (version, window, chunk) == (1, 15, 4096)
    assert agent.hellos[0][12:].startswith(b"pyapptron-agent")


def test_host_hello_is_answered(agent):
    agent.write_raw(frame(HELLO, 0))
    agent.wait_for(lambda: len(agent.hellos) == 2, "second HELLO")
    assert agent.run(["true"])[2] == 0


def test_stdout_stderr_and_exit_code(agent):
    out, err, code = agent.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (out, err, code) == (b"out\n", b"err\n", 3)


def test_exit_by_signal(agent):
    assert agent.run(["sh", "-c", "kill -9 $$"])[2] == -9


def test_default_env_cwd_and_extra_env(agent):
    out, _, code = agent.run(["sh", "-c", 'echo "$HOME|$TERM|$LANG|$FOO|$PWD"'],
                             env=["FOO=bar", "TERM=xterm"])
    assert code == 0
    assert out == b"/root|xterm|C.UTF-8|bar|/root\n"


def test_the_images_etc_environment_adds_to_the_default_env(agent_binary, tmp_path):
    env_file = tmp_path / "environment"
    env_file.write_text('# comment\nNODE_COMPILE_CACHE=/var/cache/ncc\nLANG="en_US.UTF-8"\nnot a line\n')
    agent = Agent(agent_binary, str(env_file))
    try:
        out, _, code = agent.run(["sh", "-c", 'echo "$NODE_COMPILE_CACHE|$LANG|$HOME|$FOO"'], env=["FOO=bar"])
        assert (out, code) == (b"/var/cache/ncc|en_US.UTF-8|/root|bar\n", 0)
        out, _, _ = agent.run(["sh", "-c", 'echo "$NODE_COMPILE_CACHE"'], env=["NODE_COMPILE_CACHE=/x"])
        assert out == b"/x\n"  # the request's env still wins
    finally:
        agent.close()


def test_env_replaces(agent, tmp_path):
    out, _, code = agent.run(["env"], env=["ONLY=1", "PATH=/usr/bin:/bin"],
                             replace_env=True, cwd=str(tmp_path))
    assert code == 0
    assert sorted(out.decode().split()) == ["ONLY=1", "PATH=/usr/bin:/bin"]
    # PATH lookup uses the request's PATH.
    _, _, res = agent.run(["sh", "-c", "true"], env=["PATH=/nonexistent"], replace_env=True)
    assert res == ("error", 2)


def test_binary_output_exact(agent):
    data = bytes(range(256)) * 8
    code = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 8)"
    out, err, rc = agent.run([PY, "-c", code])
    assert (out, err, rc) == (data, b"", 0)


def test_large_output_exact(agent, tmp_path):
    data = os.urandom(5 * 1000 * 1000)
    (tmp_path / "big").write_bytes(data)
    out, err, rc = agent.run(["cat", str(tmp_path / "big")])
    assert rc == 0 and err == b""
    assert len(out) == len(data) and out == data


def test_stdin_frames_and_eof(agent):
    data = os.urandom(300 * 1000) + bytes(range(256))
    out, _, rc = agent.run(["cat"], input=data)
    assert rc == 0 and out == data
    # Empty stdin: EOF alone ends the input.
    out, _, rc = agent.run(["wc", "-c"], input=b"")
    assert rc == 0 and out.strip() == b"0"


def test_child_not_reading_stdin_does_not_block_agent(agent):
    slow = agent.exec(["sleep", "1"], stdin=True)
    agent.feed(slow, os.urandom(500 * 1000), eof=True)  # far more than a pipe holds
    t0 = time.monotonic()
    assert agent.run(["echo", "alive"])[:2] == (b"alive\n", b"")
    assert time.monotonic() - t0 < 0.9
    assert agent.result(slow)[2] == 0


def test_missing_program_is_error_enoent(agent):
    out, err, res = agent.run(["/no/such/program"])
    assert res == ("error", 2)
    _, _, res = agent.run(["no-such-program-xyz"])
    assert res == ("error", 2)
    frames = agent.finish(agent.next_id)
    assert "no-such-program-xyz" in error_message(frames[-1][1])
    assert not any(t == G_EXIT for t, _ in frames)


def test_scripts_without_shebang_run_under_sh_like_execvp(agent, tmp_path):
    script = tmp_path / "greet"
    script.write_text('echo "hello, $1"\n')
    script.chmod(0o755)
    assert agent.run([str(script), "you"])[:3] == (b"hello, you\n", b"", 0)
    # Found through the request's PATH, then run by /bin/sh.
    assert agent.run(["greet", "x"], env=[f"PATH={tmp_path}"], replace_env=True)[:3] == (b"hello, x\n", b"", 0)
    # Not a program at all: /bin/sh gets it and fails the way a shell does, with an exit code.
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01garbage(\n")
    junk.chmod(0o755)
    _, _, res = agent.run([str(junk)])
    assert isinstance(res, int) and res != 0


def test_bad_cwd_is_error(agent):
    _, _, res = agent.run(["true"], cwd="/no/such/dir")
    assert res == ("error", 2)


def test_signal_kills_process_group(agent):
    fid = agent.exec(["sh", "-c", "sleep 100 & echo $!; sleep 100"])
    agent.wait_for(lambda: any(t == G_STDOUT for t, _ in agent.frames.get(fid, [])), "pid")
    bg = int(agent.frames[fid][0][1].split()[0])
    assert pid_alive(bg)
    agent.send(SIGNAL, fid, struct.pack("<I", 9))
    assert agent.result(fid, timeout=5)[2] == -9
    deadline = time.monotonic() + 5
    while pid_alive(bg) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(bg), "the background child survived SIGNAL"


def test_concurrent_execs_do_not_mix(agent):
    script = "for i in 1 2 3 4 5; do echo {0}$i; echo E{0}$i >&2; sleep 0.05; done; exit {1}"
    a = agent.exec(["sh", "-c", script.format("A", 4)])
    b = agent.exec(["sh", "-c", script.format("B", 5)])
    ra, rb = agent.result(a), agent.result(b)
    assert ra == (b"A1\nA2\nA3\nA4\nA5\n", b"EA1\nEA2\nEA3\nEA4\nEA5\n", 4)
    assert rb == (b"B1\nB2\nB3\nB4\nB5\n", b"EB1\nEB2\nEB3\nEB4\nEB5\n", 5)


def test_background_daemon_does_not_delay_exit(agent):
    t0 = time.monotonic()
    out, _, rc = agent.run(["sh", "-c", "sleep 100 & echo $!; echo done"])
    elapsed = time.monotonic() - t0
    pid = int(out.split()[0])
    try:
        assert rc == 0 and out.endswith(b"done\n")
        assert elapsed < 3
    finally:
        os.kill(pid, 9)


def test_write_read_round_trip(agent, tmp_path):
    data = os.urandom(1024 * 1024)
    path = tmp_path / "blob.bin"
    frames = agent.write_file(path, data, mode=0o600)
    assert frames == [(G_END, b"")]
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    frames = agent.read_file(path)
    assert frames[-1] == (G_END, b"")
    assert all(t == G_DATA for t, _ in frames[:-1])
    assert b"".join(p for _, p in frames[:-1]) == data
    # Default mode, empty file, overwrite truncates.
    assert agent.write_file(path, b"") == [(G_END, b"")]
    assert path.read_bytes() == b""
    assert agent.read_file(path) == [(G_END, b"")]


def test_write_file_error_is_sent_once(agent, tmp_path):
    frames = agent.write_file(tmp_path / "nodir" / "x", b"y" * 200000)
    # The id ends with a single ERROR: later DATA/DATA_END are ignored.
    assert [t for t, _ in frames] == [G_ERROR]
    assert error_errno(frames[0][1]) == 2
    agent.quiesce()
    assert [t for t, _ in agent.frames[agent.next_id]] == [G_ERROR]


def test_read_errors(agent, tmp_path):
    frames = agent.read_file(tmp_path / "missing")
    assert [t for t, _ in frames] == [G_ERROR] and error_errno(frames[0][1]) == 2
    frames = agent.read_file(tmp_path)
    assert [t for t, _ in frames] == [G_ERROR] and error_errno(frames[0][1]) == 21


def test_list_dir(agent, tmp_path):
    (tmp_path / "file.txt").write_bytes(b"hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to("file.txt")
    os.mkfifo(tmp_path / "fifo")
    frames = agent.list_dir(tmp_path)
    assert frames[-1] == (G_END, b"")
    entries = parse_entries(b"".join(p for t, p in frames if t == G_DATA))
    assert set(entries) == {"file.txt", "sub", "link", "fifo"}
    kind, mode, size, mtime = entries["file.txt"]
    assert (kind, size, stat.S_ISREG(mode)) == ("f", 5, True)
    assert abs(mtime - (tmp_path / "file.txt").stat().st_mtime) < 2
    assert entries["sub"][0] == "d"
    assert entries["link"][0] == "l" and entries["link"][2] == len("file.txt")
    assert entries["fifo"][0] == "p"
    frames = agent.list_dir(tmp_path / "missing")
    assert [t for t, _ in frames] == [G_ERROR] and error_errno(frames[0][1]) == 2


def test_list_dir_many_entries_span_frames(agent, tmp_path):
    names = {f"entry-{i:04d}-" + "x" * 100 for i in range(1000)}
    for n in names:
        (tmp_path / n).touch()
    frames = agent.list_dir(tmp_path)
    data_frames = [p for t, p in frames if t == G_DATA]
    assert len(data_frames) > 1
    got = {}
    for p in data_frames:  # each frame parses on its own: no entry spans two
        got.update(parse_entries(p))
    assert set(got) == names


def test_window_credit_returned_for_frames_read(agent):
    agent.quiesce()
    before = len(agent.windows)
    # A frame for an unknown id is still read, so its credit comes back:
    # 12 + 10000 bytes = 3 chunks.
    agent.send(STDIN, 999999, b"z" * 10000)
    agent.wait_for(lambda: len(agent.windows) > before, "WINDOW")
    assert agent.windows[before:] == [3]
    agent.quiesce()
    # Credit comes back for frames read even while their action is pending:
    # stdin for a process that never reads it.
    fid = agent.exec(["sleep", "2"], stdin=True)
    agent.feed(fid, b"q" * (200 * 1000), eof=False)
    agent.quiesce()
    agent.send(SIGNAL, fid, struct.pack("<I", 9))
    assert agent.result(fid)[2] == -9


def test_bad_magic_recovery(agent):
    assert agent.run(["true"])[2] == 0
    agent.quiesce()
    agent.write_raw(b"\x00\x01garbage that is not a frame" * 10)
    # Until a HELLO, frames are dropped (the stream is considered corrupt).
    lost = agent.new_id()
    agent.write_raw(frame(EXEC, lost, exec_payload(["true"])))
    time.sleep(0.3)
    assert lost not in agent.frames
    agent.write_raw(frame(HELLO, 0))
    agent.wait_for(lambda: len(agent.hellos) == 2, "HELLO after resync")
    out, _, rc = agent.run(["echo", "back"])
    assert (out, rc) == (b"back\n", 0)
    agent.quiesce()
    assert agent.proc.poll() is None


def test_malformed_requests_do_not_crash(agent):
    fid = agent.new_id()
    agent.send(EXEC, fid, b"\x01\x02")  # truncated
    assert [t for t, _ in agent.finish(fid)] == [G_ERROR]
    fid = agent.new_id()
    agent.send(EXEC, fid, struct.pack("<II", 0, 0xFFFFFFFF) + b"abc")
    assert error_errno(agent.finish(fid)[-1][1]) == 22
    fid = agent.new_id()
    agent.send(READ_FILE, fid, struct.pack("<I", 1000) + b"short")
    assert [t for t, _ in agent.finish(fid)] == [G_ERROR]
    agent.send(0x7F, 5, b"unknown type")
    agent.send(SIGNAL, 424242, b"")
    assert agent.run(["echo", "ok"])[0] == b"ok\n"


def test_zombies_are_reaped(agent):
    out, _, _ = agent.run(["sh", "-c", "sh -c 'exit 0' & echo $!"])
    pid = int(out)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")


def test_runs_over_a_socketpair(agent_binary):
    """Not a tty: the agent skips the termios calls and works all the same."""
    import socket
    host, guest = socket.socketpair()
    proc = subprocess.Popen([str(agent_binary), f"fd:{guest.fileno()}"],
                            pass_fds=[guest.fileno()], stderr=subprocess.DEVNULL)
    guest.close()
    try:
        host.settimeout(TIMEOUT)
        buf = b""

        def next_frame():
            nonlocal buf
            while len(buf) < 12 or len(buf) < 12 + HDR.unpack_from(buf)[4]:
                chunk = host.recv(65536)
                assert chunk, "agent closed the socket"
                buf += chunk
            _m, ftype, _f, fid, length = HDR.unpack_from(buf)
            payload, buf = buf[12:12 + length], buf[12 + length:]
            return ftype, fid, payload

        assert next_frame()[0] == G_HELLO
        host.sendall(frame(EXEC, 7, exec_payload(["echo", "over a socket"])))
        got = []
        while not got or got[-1][0] != G_EXIT:
            ftype, fid, payload = next_frame()
            if ftype != G_WINDOW:
                got.append((ftype, payload))
        assert got == [(G_STDOUT, b"over a socket\n"), (G_EXIT, struct.pack("<i", 0))]
        host.close()  # EOF on the channel: the agent exits
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_read_file_refuses_fifos_and_endless_devices_without_blocking(agent, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        frames = agent.read_file(path)
        assert [t for t, _ in frames] == [G_ERROR] and error_errno(frames[0][1]) == 22  # EINVAL
    assert agent.run(["echo", "still serving"])[:2] == (b"still serving\n", b"")
