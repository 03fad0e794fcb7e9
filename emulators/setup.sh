#!/usr/bin/env bash
# Set up a fresh Debian bookworm (amd64) machine for pyapptron, idempotently:
#   1. Debian packages (Chromium + chromedriver, guest build tools, i386 arch),
#   2. pip install -e ".[dev]",
#   3. python3 emulators/build.py (all assets into build/assets).
# Fast when everything is already there. Needs root (or sudo) for step 1.
#
#   emulators/setup.sh [--no-apt] [--no-pip] [--no-build] [build.py args...]
set -euo pipefail
exec </dev/null

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
DO_APT=1 DO_PIP=1 DO_BUILD=1
BUILD_ARGS=()
for a in "$@"; do
  case "$a" in
    --no-apt) DO_APT=0 ;;
    --no-pip) DO_PIP=0 ;;
    --no-build) DO_BUILD=0 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) BUILD_ARGS+=("$a") ;;
  esac
done

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# Debian packages the project needs (chromium for the page and tests; the rest
# builds the v86 guests from Debian i386 packages; debootstrap the agent image;
# Java runs the Selenium Grid that the pytest plugin's tests start; clang, lld,
# wasi-libc and the wasm32 C++ runtime build wasi_probe.c (Bochs builds with trixie's LLVM 19
# in a debootstrap chroot that build_bochs.py makes), nasm/mtools/syslinux
# the x86_64 guest's boot disk, squashfs-tools the agent-x86_64 root: emulators/c2w;
# emscripten the QEMU-Wasm stand-in:
# emulators/qemu_wasm; git the network tests' git daemon on the host).
APT_PACKAGES=(chromium chromium-driver gcc-multilib kmod cpio dpkg-dev zstd debootstrap default-jre-headless
              clang lld llvm wasi-libc libc++-14-dev-wasm32 libc++abi-14-dev-wasm32 libclang-rt-14-dev-wasm32
              patch nasm mtools syslinux syslinux-common squashfs-tools emscripten git)
# npm installs the MCP clients the tests run (build.py's tools step); a Node.js that
# already brings its own npm needs no Debian one.
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else SUDO=(__need_root__); fi
fi

pkg_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

if [ "$DO_APT" = 1 ]; then
  t0=$(now)
  command -v dpkg >/dev/null 2>&1 || die "dpkg not found: this script targets Debian bookworm"
  missing=()
  for p in "${APT_PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  need_i386=0
  dpkg --print-foreign-architectures | grep -qx i386 || need_i386=1
  if [ "${#missing[@]}" -eq 0 ] && [ "$need_i386" = 0 ]; then
    say "apt: all ${#APT_PACKAGES[@]} packages installed, i386 architecture present ($(since "$t0"))"
  else
    [ "${SUDO[0]:-}" = "__need_root__" ] && die "need root (or sudo) to install: ${missing[*]:-}$([ "$need_i386" = 1 ] && echo ' (and dpkg --add-architecture i386)')"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$need_i386" = 1 ]; then
      say "dpkg --add-architecture i386"
      "${SUDO[@]}" dpkg --add-architecture i386
    fi
    # The i386 bookworm-security index may fail to download: main is enough,
    # so an update error is reported but not fatal as long as installs work.
    say "apt-get update"
    "${SUDO[@]}" apt-get update -q || say "warning: apt-get update reported errors (continuing)"
    if [ "${#missing[@]}" -gt 0 ]; then
      say "apt-get install -y ${missing[*]}"
      "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    say "apt: done ($(since "$t0"))"
  fi
fi

if [ "$DO_PIP" = 1 ]; then
  t0=$(now)
  "$PY" -m pip --version >/dev/null 2>&1 || die "pip is missing for $PY: apt-get install -y python3-pip"
  # Skip when pyapptron is already installed editable from this checkout and
  # the dev extras import.
  # (run from / so that the checkout's own pyapptron.egg-info is not on sys.path)
  if (cd / && "$PY" - "$REPO") <<'EOF' >/dev/null 2>&1
import importlib.metadata as md, json, pathlib, re, sys, tomllib
repo = pathlib.Path(sys.argv[1]).resolve()
d = md.distribution("pyapptron")
url = json.loads(d.read_text("direct_url.json") or "{}")
assert url.get("dir_info", {}).get("editable"), "not editable"
assert pathlib.Path(url["url"].removeprefix("file://")).resolve() == repo, "other checkout"
project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
assert project["version"] == d.version, "version changed"
def name(req): return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9_.-]+)", req).group(1)).lower()
for group, entries in project.get("entry-points", {}).items():  # e.g. the pytest plugin
    installed = {ep.name: ep.value for ep in d.entry_points if ep.group == group}
    assert all(installed.get(k) == v for k, v in entries.items()), "entry points changed"
want = {name(r) for r in project.get("optional-dependencies", {}).get("dev", [])}
want |= {name(r) for r in project.get("dependencies", [])}
for n in want:
    md.distribution(n)  # raises if not installed
EOF
  then
    say "pip: pyapptron already installed editable with [dev] ($(since "$t0"))"
  else
    say "$PY -m pip install -e \".[dev]\""
    (cd "$REPO" && "$PY" -m pip install -q -e ".[dev]")
    say "pip: done ($(since "$t0"))"
  fi
fi

if [ "$DO_BUILD" = 1 ]; then
  t0=$(now)
  say "$PY emulators/build.py ${BUILD_ARGS[*]:-}"
  (cd "$REPO" && "$PY" emulators/build.py "${BUILD_ARGS[@]}") \
    || die "emulators/build.py failed (see above); rerun: $PY emulators/build.py ${BUILD_ARGS[*]:-}"
  say "build: done ($(since "$t0"))"
fi
say "ok"
