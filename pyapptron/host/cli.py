"""`python -m pyapptron serve | run | demo | mcp | lab` (CPython)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from ..errors import InvalidOption, PyapptronError, TimeoutExpired


def _browser_args(parser: argparse.ArgumentParser) -> None:
    from .. import DEFAULT_EMULATOR
    from ..backends import available_emulators, backend_class

    # From the registry, so that a new backend is never missing from the help.
    emulators = available_emulators()
    defaults = [f"{backend_class(e).default_image} for {e}" for e in emulators
                if not backend_class(e).default_image.startswith("(")]  # "(user build)": no image
    parser.add_argument("--emulator", default=DEFAULT_EMULATOR,
                        help=f"emulator backend: {', '.join(emulators)} (default {DEFAULT_EMULATOR})")
    parser.add_argument("--image", default=None, help=f"guest image (default: {', '.join(defaults)})")
    parser.add_argument("--memory", type=int, default=None, metavar="MIB", help="guest RAM in MiB")
    parser.add_argument("--browser-binary", default=None, help="Chromium executable")
    parser.add_argument("--remote", default=None, metavar="URL", help="remote WebDriver URL instead of a local Chromium")
    parser.add_argument("--profile", default=None, metavar="DIR", help="keep the browser profile in DIR")
    parser.add_argument("--persist", nargs="?", const="default", default=None, metavar="STORE",
                        help="keep /root, /persist and installed packages in the profile's IndexedDB "
                             "(store STORE, default 'default'); needs --profile")
    parser.add_argument("--cold", action="store_true",
                        help="boot the kernel instead of resuming the image's boot snapshot")
    add_network_flags(parser.add_argument)


def add_network_flags(add, prefix: str = "") -> None:
    """--{prefix}network and --{prefix}host-port, with add = an argparse parser's
    add_argument or a pytest option group's addoption (the same signature)."""
    add(f"--{prefix}network", nargs="?", const="on", default=None, choices=["on", "host-only"],
        help=f"give the guest a network through a relay on 127.0.0.1 (host-only: only the "
             f"--{prefix}host-port ports)")
    add(f"--{prefix}host-port", action="append", type=int, default=[], metavar="PORT",
        help=f"let the guest reach this port of the host's 127.0.0.1 as host.pyapptron.internal:PORT "
             f"(repeatable; alone it means --{prefix}network=host-only)")


def network_option(args) -> dict | None:
    """--network / --host-port as boot()'s network=."""
    from ..network import from_flags

    return from_flags(getattr(args, "network", None), getattr(args, "host_port", None))


@contextlib.contextmanager
def booted(args):
    """A served page in a headless browser with one VM booted: yields (session, vm)."""
    from .browser import Browser, BrowserConfig, RemoteSession
    from .server import PageServer, profile_port

    port = 0
    if getattr(args, "persist", None):
        if not args.profile:
            raise InvalidOption("--persist needs --profile DIR: the browser keeps the store (IndexedDB) in its profile")
        port = profile_port(args.profile)  # the store belongs to the page's origin, port included
    with PageServer(port) as server, Browser(BrowserConfig(
        binary=args.browser_binary, remote_url=args.remote, profile_dir=args.profile,
    )) as browser:
        session = RemoteSession(browser, server.url)
        options = {"memory_mib": args.memory} if args.memory else {}
        if getattr(args, "persist", None):
            options["persist"] = args.persist
        if getattr(args, "cold", False):
            options["cold"] = True
        network = network_option(args)
        if network is not None:
            options["network"] = network
        vm = session.boot(args.emulator, args.image, **options)
        try:
            yield session, vm
        finally:
            with contextlib.suppress(Exception):
                vm.shutdown()


def parse_mounts(specs: list[str]) -> dict[str, Path]:
    """serve --mount /qemu/=DIR ...: {"/qemu/": DIR}, checked."""
    mounts = {}
    for spec in specs:
        path, sep, directory = spec.partition("=")
        if not sep or not path.startswith("/") or path in ("/", "/web/", "/assets/", "/examples/"):
            raise SystemExit(f"pyapptron serve: --mount {spec!r}: write it as /URLPATH/=DIRECTORY, e.g. "
                             "--mount /qemu/=./qemu-build (not over /, /web/, /assets/ or /examples/)")
        if not Path(directory).is_dir():
            raise SystemExit(f"pyapptron serve: --mount {spec!r}: {directory} is not a directory")
        mounts[path.rstrip("/") + "/"] = Path(directory).resolve()
    return mounts


def cmd_serve(args) -> int:
    from .server import PageServer

    server = PageServer(args.port, isolated=not args.no_isolation, host=args.host,
                        extra_roots=parse_mounts(args.mount))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"pyapptron: the page and its assets are served to the network on {args.host} "
              "(for browsers on other machines, e.g. a Selenium Grid's nodes)", file=sys.stderr)
    print(f"pyapptron: serving on {server.url}  (open it in a browser; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_run(args) -> int:
    command = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("pyapptron run: give a command after --, e.g. `python -m pyapptron run -- uname -a`", file=sys.stderr)
        return 2
    stdin = None
    if args.input_file:
        with open(args.input_file, "rb") as f:
            stdin = f.read()
    try:
        with booted(args) as (_, vm):
            if args.verbose:
                print(f"pyapptron run: {booted_how(vm)}", file=sys.stderr, flush=True)
            try:
                r = vm.run(command, timeout=args.timeout, input=stdin)
            except TimeoutExpired as exc:
                sys.stdout.buffer.write(exc.stdout or b"")
                sys.stderr.buffer.write(exc.stderr or b"")
                sys.stdout.flush()
                sys.stderr.flush()
                return 124
    except PyapptronError as exc:  # first: a missing asset is also a FileNotFoundError
        print(f"pyapptron run: {exc}", file=sys.stderr)
        return 125
    except FileNotFoundError as exc:  # the program (or cwd) does not exist in the guest
        print(f"pyapptron run: {exc}", file=sys.stderr)
        return 127
    sys.stdout.buffer.write(r.stdout)
    sys.stderr.buffer.write(r.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    return r.returncode if r.returncode >= 0 else 128 - r.returncode


def booted_how(vm) -> str:
    how = (f"resumed from its {vm.resumed_from}; --cold boots the kernel" if vm.resumed_from
           else "a cold boot of the kernel")
    return f"booted {vm.emulator}/{vm.image} in {vm.boot_seconds:.1f} s ({how})"


def cmd_demo(args) -> int:
    """Boot a VM in headless Chromium and show it working."""
    started = time.monotonic()
    try:
        with booted(args) as (_, vm):
            print(f"{booted_how(vm)}\ncapabilities: {vm.capabilities.as_dict()}")
            r = vm.run("uname -a")
            print(f"$ uname -a\n{r.stdout.decode()}", end="")
            vm.write_file("/root/hello.txt", b"hello from the host\n")
            print("$ cat /root/hello.txt   (written from Python)")
            print(vm.run(["cat", "/root/hello.txt"]).stdout.decode(), end="")
            vm.run("echo 'written in the guest' > /root/reply.txt")
            print(f"read back from the guest: {vm.read_file('/root/reply.txt')!r}")
            r = vm.run("for tool in zsh tmux git python3 node npm gcc claude bun gemini; do command -v $tool "
                       ">/dev/null && printf '%s ' $tool; done", timeout=60)
            tools = r.stdout.decode().split()
            print(f"tools in this image: {' '.join(tools) or 'busybox only'}")
            # The agent tools of the x86_64 image (a first start reads the tool from the lazily
            # loaded root: seconds; gemini's first start takes minutes, so it is left out here).
            for tool in ("node", "claude", "bun"):
                if tool in tools and "claude" in tools:
                    t = time.monotonic()
                    r = vm.run([tool, "--version"], timeout=600)
                    print(f"$ {tool} --version   ({time.monotonic() - t:.1f} s)\n{r.stdout.decode().strip()}")
            r = vm.run("echo out; echo err >&2; exit 7")
            print(f"$ echo out; echo err >&2; exit 7\n  stdout={r.stdout!r} stderr={r.stderr!r} returncode={r.returncode}")
    except PyapptronError as exc:
        print(f"pyapptron demo: {exc}", file=sys.stderr)
        return 1
    print(f"demo finished in {time.monotonic() - started:.1f} s. "
          "Open the terminal page with `python -m pyapptron serve`.")
    return 0


def cmd_lab(args) -> int:
    """Build the JupyterLite site (offline, cached) and serve it with the assets."""
    from .lab import build_site, notebook_url
    from .server import PageServer

    try:
        site = build_site(force=args.rebuild)
    except PyapptronError as exc:
        print(f"pyapptron lab: {exc}", file=sys.stderr)
        return 1
    if args.build_only:
        print(site)
        return 0
    server = PageServer(args.port, extra_roots={"/lab/": site})
    print(f"pyapptron: JupyterLite on {notebook_url(server.url)}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_mcp(args) -> int:
    """A stdio MCP server (for desktop agents) bridged to the VM in a page."""
    try:
        from .mcp_bridge import main as bridge_main
    except ImportError as exc:
        print(f"pyapptron mcp: {exc}: pip install 'pyapptron[host]'", file=sys.stderr)
        return 1
    try:
        return bridge_main(args)
    except PyapptronError as exc:
        print(f"pyapptron mcp: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyapptron", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="serve the terminal page and the assets on localhost")
    p.add_argument("--port", type=int, default=8086)
    p.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 serves the network, for a Selenium Grid)")
    p.add_argument("--no-isolation", action="store_true", help="do not send COOP/COEP headers")
    p.add_argument("--mount", action="append", default=[], metavar="/PATH/=DIR",
                   help="also serve DIR at /PATH/ (with the same headers), e.g. a QEMU-Wasm build: "
                        "--mount /qemu/=./build-dir, then boot('qemu-wasm', build='/qemu/', ...)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("lab", help="build (offline) and serve a JupyterLite site whose notebooks boot VMs")
    p.add_argument("--port", type=int, default=8087)
    p.add_argument("--rebuild", action="store_true", help="build the site again even if nothing changed")
    p.add_argument("--build-only", action="store_true", help="build the site, print its directory, do not serve")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("run", help="boot a VM in headless Chromium and run one command in it")
    _browser_args(p)
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="kill the command after S seconds (exit 124)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr how the VM booted (resumed from a snapshot or cold) and how long it took")
    p.add_argument("--input-file", default=None, metavar="F", help="feed F to the command's stdin")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="boot a VM headless and show uname -a and a file round trip")
    _browser_args(p)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("mcp", help="an MCP server for AI agents (stdio, or Streamable HTTP with --http), "
                                    "bridged to a VM in a browser page",
                       description="Speak MCP on stdin/stdout (start it from an MCP client's config), or over "
                                   "Streamable HTTP with --http PORT. The VM runs in a page that connects back "
                                   "over a loopback WebSocket; --headless opens that page in headless Chromium, "
                                   "otherwise the page URL is printed on stderr.")
    _browser_args(p)
    p.add_argument("--headless", action="store_true", help="open the page in headless Chromium (no window needed)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend option for the page's boot; qemu-wasm: build=URL, packages=load-rom.js,load-kernel.js, "
                        "kernel=, initrd=, disk=, append=, main=")
    p.add_argument("--mount", action="append", default=[], metavar="/PATH/=DIR",
                   help="also serve DIR at /PATH/ beside the page (a QEMU-Wasm build directory)")
    p.add_argument("--port", type=int, default=0, help="WebSocket port on 127.0.0.1 (default: any free port)")
    p.add_argument("--page-port", type=int, default=0, help="port the page is served on (default: any free port)")
    p.add_argument("--connect-timeout", type=float, default=120.0, metavar="S",
                   help="how long a request waits for the page before it is refused (default 120)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="another page origin allowed to connect to the bridge's WebSocket (repeatable)")
    p.add_argument("--max-message-bytes", type=int, default=None, metavar="N",
                   help="refuse larger JSON-RPC messages with an error (default 64 MiB)")
    p.add_argument("--http", type=int, default=None, metavar="PORT",
                   help="serve MCP Streamable HTTP at http://127.0.0.1:PORT/mcp instead of stdio (0: any free port); "
                        "the URL, key included, is printed on stderr")
    p.add_argument("--key", default=None, metavar="KEY",
                   help="with --http: the key every request must carry (Authorization: Bearer KEY or ?key=KEY); "
                        "default $PYAPPTRON_MCP_KEY, else a random one per run")
    p.add_argument("--http-allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="with --http: a web client's origin allowed to call the endpoint (CORS; repeatable)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                   help="with --http: the address to listen on (default 127.0.0.1; another address also drops the "
                        "Host check, so the key is the only guard)")
    p.set_defaults(func=cmd_mcp)
    args = parser.parse_args(argv)
    return args.func(args)
