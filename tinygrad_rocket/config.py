"""User-facing switches, read when used (not at import) so a test or a script can change them at run time."""
from __future__ import annotations
import os

def fallback_allowed() -> bool:
  """ROCKET_FALLBACK=0 is strict mode: a kernel no NPU rule takes raises FallbackError instead of running on the CPU."""
  return os.environ.get("ROCKET_FALLBACK", "1") != "0"

def debug_level() -> int:
  """ROCKET_DEBUG=1 prints where each kernel ran (NPU or fallback) and why, the first time it runs; 2 prints every run."""
  try: return int(os.environ.get("ROCKET_DEBUG", "0") or 0)
  except ValueError: return 1

class FallbackError(RuntimeError):
  """Strict mode: this kernel would have run on the CPU fallback."""
  def __init__(self, kernel:str, reason:str):
    super().__init__(f"ROCKET strict mode (ROCKET_FALLBACK=0): kernel {kernel} has no NPU lowering: {reason}")
    self.kernel, self.reason = kernel, reason
  def __reduce__(self): return (FallbackError, (self.kernel, self.reason))
