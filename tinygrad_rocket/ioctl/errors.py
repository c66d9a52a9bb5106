"""Exceptions of the ioctl layer: a failed ioctl, a job refused before SUBMIT, a job the device failed."""
from __future__ import annotations
import errno as _errno, os

def errno_text(code:int) -> str:
  """'EINVAL (Invalid argument)': the symbol is what people grep the kernel for, the text what they read."""
  return f"{_errno.errorcode.get(code, f'errno {code}')} ({os.strerror(code)})"

class RocketIoctlError(OSError):
  """An ioctl on the rocket device (or the emulator) failed; `.errno` is the kernel's errno."""
  def __init__(self, ioctl_name:str, code:int, detail:str|None=None):
    self.ioctl_name, self.detail = ioctl_name, detail
    super().__init__(code, os.strerror(code))
  def __str__(self) -> str:
    return f"{self.ioctl_name} failed: {errno_text(self.errno)}" + (f": {self.detail}" if self.detail else "")
  def __reduce__(self): return (type(self), (self.ioctl_name, self.errno, self.detail))

class RocketDeviceError(OSError):
  """The device the user asked for (ROCKET_DEVICE=...) cannot be used; we never fall back silently then."""

class JobValidationError(ValueError):
  """A job refused locally before SUBMIT: the real kernel would drop it silently and still return 0."""

class JobFailedError(RuntimeError):
  """The device reports a job as failed (the emulator answers PREP_BO on its output BO with EIO)."""
  def __init__(self, handle:int, reason:str|None):
    self.handle, self.reason = handle, reason
    super().__init__(f"NPU job writing BO {handle} failed: {reason or 'no reason given by the device'}")
  def __reduce__(self): return (type(self), (self.handle, self.reason))
