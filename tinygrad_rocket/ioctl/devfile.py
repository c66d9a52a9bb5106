"""The real device file: a thin wrapper over an fd with the same two methods the emulator's file has."""
from __future__ import annotations
import fcntl, mmap, os
from tinygrad_rocket.ioctl.errors import RocketIoctlError
from tinygrad_rocket.ioctl.uapi import ioctl_name

class DeviceFile:
  def __init__(self, path:str):
    self.path = path
    self.fd: int|None = os.open(path, os.O_RDWR | os.O_CLOEXEC)

  def _fileno(self) -> int:
    if self.fd is None: raise ValueError(f"{self.path} is closed")
    return self.fd

  def ioctl(self, request:int, arg) -> int:
    """`arg` is a mutable buffer (ctypes struct or bytearray) the kernel reads and fills in place."""
    try: return fcntl.ioctl(self._fileno(), request, arg, True)
    except OSError as e: raise RocketIoctlError(ioctl_name(request), e.errno) from None

  def mmap(self, length:int, offset:int) -> mmap.mmap:
    return mmap.mmap(self._fileno(), length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)

  def close(self) -> None:
    if self.fd is not None: os.close(self.fd)
    self.fd = None

  def __repr__(self) -> str: return f"DeviceFile({self.path!r}, fd={self.fd})"
