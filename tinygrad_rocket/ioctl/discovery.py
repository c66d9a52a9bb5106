"""Which device to use: a /dev/accel node whose DRM driver is "rocket", the one the user named, or the emulator.

Environment (DESIGN.md, ioctl layer):
  ROCKET_EMULATE=1               always use the emulator
  ROCKET_DEVICE=/dev/accel/accelN use exactly that node; failing to use it is an error, never a silent fallback
Nothing here prints; callers get a reason string and decide what to tell the user.
"""
from __future__ import annotations
import glob, os, re
from typing import Any
from tinygrad_rocket.ioctl.devfile import DeviceFile
from tinygrad_rocket.ioctl.driver import drm_driver_name
from tinygrad_rocket.ioctl.errors import RocketDeviceError, errno_text

ACCEL_DIR = "/dev/accel"            # DRM accel nodes (drivers/accel/drm_accel.c)
DRIVER_NAME = "rocket"              # drm_driver.name of drivers/accel/rocket (rocket_hw.md §1.1)

def _node_number(path:str) -> int:
  m = re.search(r"(\d+)$", path)
  return int(m.group(1)) if m else -1

def _driver_of(path:str) -> str:
  f = DeviceFile(path)
  try: return drm_driver_name(f)
  finally: f.close()

def find_rocket_node(accel_dir:str=ACCEL_DIR) -> tuple[str|None, str]:
  """(path, what was found) for the first node driven by rocket, else (None, why not)."""
  if not os.path.isdir(accel_dir): return None, f"no {accel_dir} directory (no DRM accel driver is loaded)"
  nodes = sorted(glob.glob(os.path.join(accel_dir, "accel*")), key=_node_number)
  if not nodes: return None, f"{accel_dir} has no accel* nodes"
  others: list[str] = []
  for path in nodes:
    try: name = _driver_of(path)
    except PermissionError: others.append(f"permission denied on {path} (check its group and your membership)")
    except OSError as e: others.append(f"{path}: {errno_text(e.errno) if e.errno else e}")
    else:
      if name == DRIVER_NAME: return path, f"{path} is driven by {DRIVER_NAME!r}"
      others.append(f"{path} is driven by {name!r}")
  return None, f"no {DRIVER_NAME} node: " + "; ".join(others)

def _open_named(path:str) -> DeviceFile:
  try: f = DeviceFile(path)
  except OSError as e:
    raise RocketDeviceError(e.errno, f"ROCKET_DEVICE={path}: cannot open: {errno_text(e.errno) if e.errno else e}") from None
  try: name = drm_driver_name(f)
  except OSError as e:
    f.close()
    raise RocketDeviceError(e.errno, f"ROCKET_DEVICE={path}: not a DRM device ({e})") from None
  if name != DRIVER_NAME:
    f.close()
    raise RocketDeviceError(f"ROCKET_DEVICE={path}: its DRM driver is {name!r}, not {DRIVER_NAME!r}")
  return f

def open_device() -> tuple[Any, str]:
  """(file object, reason): a DeviceFile on real hardware, else tinygrad_rocket.emu.EmuFile() and why."""
  if os.environ.get("ROCKET_EMULATE", "") == "1": return _emulator(), "ROCKET_EMULATE=1"
  if named := os.environ.get("ROCKET_DEVICE", ""): return _open_named(named), f"ROCKET_DEVICE={named}"
  path, why = find_rocket_node()
  if path is not None:
    try: return DeviceFile(path), path
    except OSError as e: why = f"{path} went away: {errno_text(e.errno) if e.errno else e}"
  return _emulator(), why

def _emulator() -> Any:
  from tinygrad_rocket.emu import EmuFile  # lazy: real hardware never loads the emulator
  return EmuFile()
