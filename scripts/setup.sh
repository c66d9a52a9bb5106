#!/usr/bin/env bash
# Set-up shared by the README's two commands, for a fresh Debian 12 machine (or a board running Debian/Ubuntu):
# clang for tinygrad's CPU code (our fallback and tinygrad's CPU device), a virtualenv in .venv with the package.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() { as_root apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null; }

# tinygrad 0.14 needs clang >= 17 (Debian 12's default clang-14/15 crash or miscompile on some kernels)
have_clang=""
for c in clang-21 clang-20 clang-19 clang-18 clang-17; do command -v "$c" >/dev/null && have_clang=$c && break; done
if [ -z "$have_clang" ]; then echo "setup: installing clang-19" >&2; apt_install clang-19; fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || { echo "setup: installing python3-venv" >&2; apt_install python3-venv; python3 -m venv .venv; }
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# a regular (non-editable) install, so the .pth hook that makes DEV=ROCKET work without an import is installed too
.venv/bin/python -m pip install -q ".[test]"
