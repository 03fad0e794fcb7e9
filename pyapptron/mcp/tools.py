"""The VM as MCP tools and resources: exec, files, the persistent layers, the console.

Tools are offered by what the machine can do (its Capabilities), never guessed: no
`persist_sync` without persistence, no file tools without the guest agent's files.
A tool that fails in the guest (a missing file, a timed-out command) answers with
`isError: true` and a message the model can act on; only a malformed call (no such
tool, arguments that are not an object) is a JSON-RPC error.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import inspect
import json
import mimetypes
import posixpath
import time
import urllib.parse
from typing import Any

from ..errors import NotSupported, PyapptronError, TimeoutExpired
from .server import INVALID_PARAMS, RESOURCE_NOT_FOUND, McpError, ProgressFn

#: JSON-RPC error for "the VM is not there" (an implementation-defined server error).
VM_UNAVAILABLE = -32000

#: A command that names no timeout is killed after this long (an agent must not hang the VM).
DEFAULT_EXEC_TIMEOUT_S = 600.0
#: Each stream of an exec result keeps at most this much (its head and its tail).
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
#: How often a long exec reports progress when the client asked for it.
PROGRESS_INTERVAL_S = 1.0
CONSOLE_URI = "pyapptron://console"
#: resources/list shows the regular files directly under these guest directories.
LISTED_DIRS = ("/root", "/persist")
LISTED_FILES_MAX = 100

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

EXEC_INPUT = {
    "type": "object",
    "properties": {
        "command": {
            "description": "A shell command line (run by /bin/sh -c), or an argv array run directly.",
            "anyOf": [{"type": "string", "minLength": 1},
                      {"type": "array", "items": {"type": "string"}, "minItems": 1}],
        },
        "timeout": {"type": "number", "exclusiveMinimum": 0,
                    "description": f"Seconds before the command is killed (default {DEFAULT_EXEC_TIMEOUT_S:g})."},
        "cwd": {"type": "string", "minLength": 1, "description": "Working directory in the guest."},
        # Not `env`: vm.run(env=) replaces the environment (as subprocess does); this adds to it.
        "env_add": {**_STRING_MAP, "description": "Variables added to the guest's default environment "
                                                  "(the command keeps the rest of it, PATH included)."},
        "stdin": {"type": "string", "description": "Text fed to the command's standard input."},
        "max_output_bytes": {"type": "integer", "minimum": 1,
                             "description": f"Keep at most this much of each stream (default {DEFAULT_MAX_OUTPUT_BYTES}); "
                                            "the middle is cut."},
    },
    "required": ["command"],
    "additionalProperties": False,
}
#: tool -> {old argument name: new name}: a call with the old name gets a tool error naming
#: the new one, never a silent different meaning.
RENAMED_ARGUMENTS = {"exec": {"env": "env_add"}}
EXEC_OUTPUT = {
    "type": "object",
    "properties": {
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "exit_code": {"type": ["integer", "null"], "description": "null when the command was killed on timeout"},
        "timed_out": {"type": "boolean"},
        "truncated": {"type": "boolean", "description": "true when a stream was cut to max_output_bytes"},
        "seconds": {"type": "number"},
    },
    "required": ["stdout", "stderr", "exit_code", "timed_out", "truncated", "seconds"],
}
_PATH = {"type": "string", "minLength": 1, "description": "An absolute path in the guest."}
READ_INPUT = {"type": "object", "properties": {"path": _PATH}, "required": ["path"], "additionalProperties": False}
READ_OUTPUT = {
    "type": "object",
    "properties": {"path": {"type": "string"}, "size": {"type": "integer"},
                   "encoding": {"enum": ["utf-8", "base64"]}, "content": {"type": "string"}},
    "required": ["path", "size", "encoding", "content"],
}
WRITE_INPUT = {
    "type": "object",
    "properties": {
        "path": _PATH,
        "content": {"type": "string", "description": "The file's new content."},
        "encoding": {"enum": ["utf-8", "base64"], "description": "How content is encoded (default utf-8)."},
        "mode": {"type": "integer", "minimum": 1, "maximum": 4095, "description": "Permission bits (default 420 = 0o644)."},
        "make_parents": {"type": "boolean", "description": "Create missing parent directories (default false)."},
    },
    "required": ["path", "content"],
    "additionalProperties": False,
}
WRITE_OUTPUT = {"type": "object", "properties": {"path": {"type": "string"}, "bytes": {"type": "integer"}},
                "required": ["path", "bytes"]}
LIST_INPUT = {"type": "object", "properties": {"path": _PATH}, "required": ["path"], "additionalProperties": False}
LIST_OUTPUT = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "entries": {"type": "array", "items": {
            "type": "object",
            "properties": {"name": {"type": "string"},
                           "type": {"enum": ["file", "dir", "symlink", "char", "block", "fifo", "socket", "other"]},
                           "size": {"type": "integer"}, "mode": {"type": "integer"}, "mtime": {"type": "integer"}},
            "required": ["name", "type", "size", "mode", "mtime"]}},
    },
    "required": ["path", "entries"],
}
SYNC_INPUT = {"type": "object", "properties": {}, "additionalProperties": False}
SYNC_OUTPUT = {
    "type": "object",
    "properties": {"files": {"type": "integer"}, "bytes": {"type": "integer"},
                   "written_bytes": {"type": "integer"}, "seconds": {"type": "number"}},
    "required": ["files", "bytes", "written_bytes", "seconds"],
}
_SNAPSHOT_NAME = {"type": "string", "minLength": 1,
                  "description": "A snapshot's name (1 to 200 printable characters, no '/')."}
SNAPSHOT_INPUT = {"type": "object", "properties": {"name": _SNAPSHOT_NAME}, "additionalProperties": False}
_SNAPSHOT_INFO = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "image": {"type": "string"}, "created": {"type": "number"},
                   "size": {"type": "integer"}, "state_bytes": {"type": ["integer", "null"]}},
    "required": ["name", "image", "created", "size"],
}
SNAPSHOT_OUTPUT = _SNAPSHOT_INFO
RESTORE_INPUT = {"type": "object", "properties": {"name": _SNAPSHOT_NAME}, "required": ["name"],
                 "additionalProperties": False}
RESTORE_OUTPUT = {"type": "object", "properties": {"restored": {"type": "string"}, "seconds": {"type": "number"}},
                  "required": ["restored", "seconds"]}
LIST_SNAPSHOTS_INPUT = {"type": "object", "properties": {}, "additionalProperties": False}
LIST_SNAPSHOTS_OUTPUT = {"type": "object", "properties": {"snapshots": {"type": "array", "items": _SNAPSHOT_INFO}},
                         "required": ["snapshots"]}


class MachineTools:
    """Tools and resources over one pyapptron Machine (or anything with its methods)."""

    def __init__(self, machine):
        """`machine`: a Machine, or an awaitable of one (a VM still booting): the protocol's
        handshake is answered at once, and the first call that needs the VM waits for it."""
        if inspect.isawaitable(machine):
            self.machine = None
            self._booting = asyncio.ensure_future(machine)
        else:
            self.machine = machine
            self._booting = None

    async def ready(self):
        """The machine, once booted. A VM that failed to boot is a JSON-RPC error saying why."""
        if self.machine is None:
            try:
                self.machine = await asyncio.shield(self._booting)
            except Exception as exc:
                reason = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
                raise McpError(VM_UNAVAILABLE, f"the VM did not boot: {reason[0]}") from None
        return self.machine

    # -- what is offered ---------------------------------------------------------------
    def _persisted(self) -> str | None:
        """The machine's persistent layers as an agent should read them (from the Persist it
        was booted with, never the defaults), or None when nothing is kept."""
        if not self.machine.capabilities.persist:
            return None
        try:
            layers = self.machine.persist.layers
        except NotSupported:
            return None
        return "; ".join(f"{name}: {', '.join(paths)}" for name, paths in layers.items())

    def _tool_table(self) -> dict[str, tuple[dict, Any]]:
        caps = self.machine.capabilities
        table: dict[str, tuple[dict, Any]] = {}
        persisted = self._persisted()
        if caps.exec:
            table["exec"] = ({
                "name": "exec", "title": "Run a command",
                "description": "Run a command in the Linux VM and return its exit code, stdout and stderr. "
                               "It is killed after `timeout` seconds; cancelling the call kills it too.",
                "inputSchema": EXEC_INPUT, "outputSchema": EXEC_OUTPUT,
                "annotations": {"destructiveHint": True, "openWorldHint": False},
            }, self._exec)
        if caps.files:
            table["read_file"] = ({
                "name": "read_file", "title": "Read a file",
                "description": "Read a file from the VM: UTF-8 text as is, anything else as base64.",
                "inputSchema": READ_INPUT, "outputSchema": READ_OUTPUT,
                "annotations": {"readOnlyHint": True},
            }, self._read_file)
            table["write_file"] = ({
                "name": "write_file", "title": "Write a file",
                "description": "Create or replace a file in the VM.",
                "inputSchema": WRITE_INPUT, "outputSchema": WRITE_OUTPUT,
                "annotations": {"destructiveHint": True, "idempotentHint": True},
            }, self._write_file)
            table["list_dir"] = ({
                "name": "list_dir", "title": "List a directory",
                "description": "List a directory in the VM: name, type, size, mode and mtime of each entry.",
                "inputSchema": LIST_INPUT, "outputSchema": LIST_OUTPUT,
                "annotations": {"readOnlyHint": True},
            }, self._list_dir)
        if persisted:
            table["persist_sync"] = ({
                "name": "persist_sync", "title": "Save the persistent layers",
                "description": f"Commit the persistent layers ({persisted}) to the browser's storage now, "
                               "so they survive a page reload.",
                "inputSchema": SYNC_INPUT, "outputSchema": SYNC_OUTPUT,
                "annotations": {"idempotentHint": True},
            }, self._persist_sync)
        if caps.snapshot:
            table["snapshot"] = ({
                "name": "snapshot", "title": "Save the VM's state",
                "description": "Save the whole machine (memory, processes, "
                               + ("files outside the persistent layers" if persisted else "files")
                               + ") under a name, to go back to with `restore`: before a risky change, or to keep "
                               "a prepared setup. Kept in the browser across page reloads.",
                "inputSchema": SNAPSHOT_INPUT, "outputSchema": SNAPSHOT_OUTPUT,
                "annotations": {"destructiveHint": False},
            }, self._snapshot)
            table["restore"] = ({
                "name": "restore", "title": "Go back to a saved state",
                "description": "Put the VM back to a snapshot made by `snapshot`. Commands still running are "
                               "stopped; " + (f"the persistent layers ({persisted}) keep their latest content."
                                              if persisted else "files go back to what they were too."),
                "inputSchema": RESTORE_INPUT, "outputSchema": RESTORE_OUTPUT,
                "annotations": {"destructiveHint": True, "idempotentHint": True},
            }, self._restore)
            table["list_snapshots"] = ({
                "name": "list_snapshots", "title": "List saved states",
                "description": "The snapshots kept in this browser, oldest first.",
                "inputSchema": LIST_SNAPSHOTS_INPUT, "outputSchema": LIST_SNAPSHOTS_OUTPUT,
                "annotations": {"readOnlyHint": True},
            }, self._list_snapshots)
        return table

    def list_tools(self) -> list[dict]:
        return [spec for spec, _ in self._tool_table().values()]

    def instructions(self) -> str:
        vm = self.machine
        if vm is None:
            return ("A Linux VM running in a browser tab; it is still booting, and the first tool call "
                    "waits for it. Run shell commands with `exec`; move files with `read_file`, "
                    "`write_file` and `list_dir`. `tools/list` shows what this VM offers.")
        caps = vm.capabilities
        text = (f"A Linux VM ({vm.emulator}, {caps.arch}, image '{vm.image}') running in a browser tab. "
                "Run shell commands with `exec` (output and exit code come back exactly); "
                "move files with `read_file`, `write_file` and `list_dir`.")
        persisted = self._persisted()
        if persisted:
            text += (f" These directories are kept across page reloads ({persisted}): they are saved a few "
                     "seconds after changes, and at once by `persist_sync`.")
        else:
            text += " Nothing is kept when the page reloads."
        if "snapshot" in self._tool_table():
            text += (" `snapshot` saves the whole machine under a name and `restore` goes back to it "
                     "(e.g. before a risky change).")
        return text

    async def call_tool(self, name: str, arguments: dict, progress: ProgressFn | None) -> dict:
        table = self._tool_table()
        if name not in table:
            raise McpError(INVALID_PARAMS, f"unknown tool {name!r}; this VM offers: {', '.join(table)}")
        spec, handler = table[name]
        problems = [f"`{old}` is now called `{new}`. {spec['inputSchema']['properties'][new]['description']}"
                    for old, new in RENAMED_ARGUMENTS.get(name, {}).items() if old in arguments]
        problems = problems or validate(spec["inputSchema"], arguments)
        if problems:
            # The spec (2025-11-25) wants argument errors as tool errors, so the model can correct itself.
            return _tool_error(f"invalid arguments for {name}: " + "; ".join(problems))
        try:
            structured = await handler(arguments, progress)
        except McpError:
            raise
        except (PyapptronError, OSError, ValueError) as exc:
            return _tool_error(_describe(exc))
        if isinstance(structured, tuple):  # (structured, is_error)
            structured, is_error = structured
        else:
            is_error = False
        result = {"content": [{"type": "text", "text": json.dumps(structured, ensure_ascii=False)}],
                  "structuredContent": structured}
        if is_error:
            result["isError"] = True
        return result

    # -- tools -------------------------------------------------------------------------
    async def _exec(self, args: dict, progress: ProgressFn | None):
        command = args["command"]
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        env = args.get("env_add") or {}
        for key in env:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"environment variable name {key!r} is not valid")
        if env:  # `env K=V cmd` adds to the inherited environment (the agent's env= replaces it)
            # `--`: a name such as "-i" is a variable, not an option of env
            argv = ["env", "--", *(f"{k}={v}" for k, v in env.items()), *argv]
        timeout = float(args.get("timeout", DEFAULT_EXEC_TIMEOUT_S))
        limit = args.get("max_output_bytes", DEFAULT_MAX_OUTPUT_BYTES)
        started = time.monotonic()
        run = asyncio.ensure_future(self.machine.run(argv, timeout=timeout, input=args.get("stdin"),
                                                      cwd=args.get("cwd")))
        try:
            if progress is not None:
                while not run.done():
                    await asyncio.wait({run}, timeout=PROGRESS_INTERVAL_S)
                    if not run.done():
                        elapsed = time.monotonic() - started
                        progress(round(elapsed, 1), timeout, f"running for {elapsed:.0f} s")
            r = await run
        except TimeoutExpired as exc:
            out, out_cut = _clip(exc.stdout or b"", limit)
            err, err_cut = _clip(exc.stderr or b"", limit)
            return {"stdout": out, "stderr": err, "exit_code": None, "timed_out": True,
                    "truncated": out_cut or err_cut, "seconds": round(time.monotonic() - started, 3)}, True
        except asyncio.CancelledError:
            # The client cancelled: Machine.run kills the command's process group when cancelled.
            run.cancel()
            try:
                await run
            except BaseException:
                pass
            raise
        out, out_cut = _clip(r.stdout, limit)
        err, err_cut = _clip(r.stderr, limit)
        return {"stdout": out, "stderr": err, "exit_code": r.returncode, "timed_out": False,
                "truncated": out_cut or err_cut, "seconds": round(time.monotonic() - started, 3)}

    async def _read_file(self, args: dict, progress):
        path = args["path"]
        data = await self.machine.read_file(path)
        encoding, content = _encode(data)
        return {"path": path, "size": len(data), "encoding": encoding, "content": content}

    async def _write_file(self, args: dict, progress):
        path = args["path"]
        if args.get("encoding", "utf-8") == "base64":
            try:
                data = base64.b64decode(args["content"], validate=True)
            except ValueError:
                raise ValueError("content is not valid base64") from None
        else:
            data = args["content"].encode()
        if args.get("make_parents"):
            parent = posixpath.dirname(path)
            if parent and parent != "/":
                await self.machine.run(["mkdir", "-p", "--", parent], timeout=60, check=True)
        await self.machine.write_file(path, data, int(args.get("mode", 0o644)))
        return {"path": path, "bytes": len(data)}

    async def _list_dir(self, args: dict, progress):
        path = args["path"]
        entries = await self.machine.list_dir(path)
        return {"path": path, "entries": [dataclasses.asdict(e) for e in entries]}

    async def _persist_sync(self, args: dict, progress):
        return dataclasses.asdict(await self.machine.persist.sync())

    async def _snapshot(self, args: dict, progress):
        info = await self.machine.snapshot(args.get("name"))
        return _snapshot_info(info)

    async def _restore(self, args: dict, progress):
        started = time.monotonic()
        await self.machine.restore(args["name"])
        return {"restored": args["name"], "seconds": round(time.monotonic() - started, 3)}

    async def _list_snapshots(self, args: dict, progress):
        from .. import snapshots

        return {"snapshots": [_snapshot_info(s) for s in await snapshots.list()]}

    # -- resources ---------------------------------------------------------------------
    async def list_resources(self) -> list[dict]:
        resources = [{"uri": CONSOLE_URI, "name": "console", "title": "Console transcript",
                      "description": "The last 256 KiB the VM's console printed (boot log, shell).",
                      "mimeType": "text/plain"}]
        if not self.machine.capabilities.files:
            return resources
        for directory in LISTED_DIRS:
            try:
                entries = await self.machine.list_dir(directory)
            except (PyapptronError, OSError):
                continue  # the directory need not exist
            for entry in entries:
                if entry.type == "file" and len(resources) <= LISTED_FILES_MAX:
                    path = posixpath.join(directory, entry.name)
                    resources.append({"uri": _file_uri(path), "name": path, "size": entry.size,
                                      "mimeType": mimetypes.guess_type(entry.name)[0] or "application/octet-stream"})
        return resources

    def resource_templates(self) -> list[dict]:
        if not self.machine.capabilities.files:
            return []
        return [{"uriTemplate": "file:///{+path}", "name": "guest-file", "title": "A file in the VM",
                 "description": "Any file in the guest by its absolute path, e.g. file:///etc/os-release."}]

    async def read_resource(self, uri: str) -> list[dict]:
        if uri == CONSOLE_URI:
            text = bytes(self.machine.console.transcript).decode("utf-8", "replace")
            return [{"uri": uri, "mimeType": "text/plain", "text": text}]
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise McpError(INVALID_PARAMS, f"unknown resource URI {uri!r}: use {CONSOLE_URI} or file:///absolute/path")
        if not self.machine.capabilities.files:
            raise McpError(RESOURCE_NOT_FOUND, "this VM has no file access (no guest agent)", {"uri": uri})
        path = urllib.parse.unquote(parts.path)
        try:
            data = await self.machine.read_file(path)
        except (PyapptronError, OSError) as exc:
            raise McpError(RESOURCE_NOT_FOUND, f"resource not found: {_describe(exc)}", {"uri": uri}) from None
        encoding, content = _encode(data)
        mime = mimetypes.guess_type(path)[0]
        if encoding == "utf-8":
            return [{"uri": uri, "mimeType": mime or "text/plain", "text": content}]
        return [{"uri": uri, "mimeType": mime or "application/octet-stream", "blob": content}]


# -- helpers ---------------------------------------------------------------------------
def _snapshot_info(info) -> dict:
    return {"name": info.name, "image": info.image, "created": info.created, "size": info.size,
            "state_bytes": info.state_bytes}


def _tool_error(message: str) -> dict:
    return {"content": [{"type": "text", "text": message}], "isError": True}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


def _encode(data: bytes) -> tuple[str, str]:
    try:
        return "utf-8", data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(data).decode()


def _clip(data: bytes, limit: int) -> tuple[str, bool]:
    """The stream as text, its middle cut out past `limit` bytes (errors tend to be at the end)."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace"), False
    half = limit // 2
    cut = len(data) - 2 * half
    return (data[:half].decode("utf-8", "replace") + f"\n[… {cut} bytes cut …]\n"
            + data[-half:].decode("utf-8", "replace")), True


def _file_uri(path: str) -> str:
    return "file://" + urllib.parse.quote(path)


_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
          "object": dict, "array": list, "null": type(None)}


def validate(schema: dict, value: Any, where: str = "arguments") -> list[str]:
    """Check `value` against the JSON Schema subset our tools use; returns the problems.

    (The full `jsonschema` package would add ~1 MB and three dependencies to every page
    load for the dozen keywords these schemas need.)
    """
    problems: list[str] = []
    if "anyOf" in schema:
        if all(validate(option, value, where) for option in schema["anyOf"]):
            kinds = " or ".join(_describe_schema(option) for option in schema["anyOf"])
            problems.append(f"{where} must be {kinds}")
        return problems
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where} must be one of {', '.join(map(json.dumps, schema['enum']))}"]
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is_type(value, kind) for kind in kinds):
            return [f"{where} must be {' or '.join(kinds)}, not {_json_type(value)}"]
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        problems.append(f"{where} must not be empty")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where} must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where} must be at most {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            problems.append(f"{where} must be more than {schema['exclusiveMinimum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append(f"{where} must have at least {schema['minItems']} item(s)")
        if "items" in schema:
            for i, item in enumerate(value):
                problems += validate(schema["items"], item, f"{where}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{where}.{key} is required")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                problems += validate(properties[key], item, f"{where}.{key}")
            elif extra is False:
                problems.append(f"{where}.{key} is not a known argument (known: {', '.join(properties)})")
            elif isinstance(extra, dict):
                problems += validate(extra, item, f"{where}.{key}")
    return problems


def _is_type(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, object))


def _json_type(value: Any) -> str:
    for kind in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, kind):
            return kind
    return type(value).__name__


def _describe_schema(schema: dict) -> str:
    kind = schema.get("type", "a value")
    return f"a non-empty {kind}" if kind in ("string", "array") else kind
