"""tinygrad-rocket: the ROCKET tinygrad device for the Rockchip RK3588 NPU (mainline `rocket` accel driver).

`import tinygrad_rocket` registers the device, so `Tensor(...).to("ROCKET")` works; with the package installed,
`DEV=ROCKET python script.py` works with no import at all (tinygrad_rocket_autoload.pth).
"""
from __future__ import annotations
import os, sys, shutil, importlib.metadata

TINYGRAD_VERSION = "0.14.0"  # every tinygrad internal we use is private API (see _tg.py): pinned exactly

def _check_tinygrad() -> None:
  try: have = importlib.metadata.version("tinygrad")
  except importlib.metadata.PackageNotFoundError: raise ImportError(f"tinygrad-rocket needs tinygrad=={TINYGRAD_VERSION}; tinygrad is not installed") from None
  if have != TINYGRAD_VERSION:
    raise ImportError(f"tinygrad-rocket needs tinygrad=={TINYGRAD_VERSION} exactly (it uses tinygrad internals), found {have}: "
                      f"pip install tinygrad=={TINYGRAD_VERSION}")

# tinygrad's CPU code (our fallback, and its CPU device) is compiled by `clang`, or by $CC. Debian 12 ships a recent
# clang only as clang-NN (clang-15 and older miscompile or crash on some kernels: tinygrad_api.md, environment gotcha).
CLANG_CANDIDATES = ("clang", "clang-21", "clang-20", "clang-19", "clang-18", "clang-17")
def find_c_compiler() -> str|None:
  if "CC" in os.environ: return os.environ["CC"]
  return next((c for c in CLANG_CANDIDATES if shutil.which(c)), None)

_check_tinygrad()
if "CC" not in os.environ and (_cc:=find_c_compiler()) is not None: os.environ["CC"] = _cc

from tinygrad_rocket import cpu_loader  # noqa: E402
cpu_loader.install()   # before any kernel loads: see cpu_loader.py
from tinygrad_rocket import device  # noqa: E402
from tinygrad_rocket.device import RocketDevice  # noqa: E402,F401
from tinygrad_rocket.config import FallbackError  # noqa: E402,F401
from tinygrad_rocket import report  # noqa: E402,F401

# tinygrad looks a device up as the module tinygrad.runtime.ops_<name> with a class <Name>Device (tinygrad_api.md §1)
sys.modules.setdefault("tinygrad.runtime.ops_rocket", device)
