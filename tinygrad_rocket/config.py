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

PRECISIONS = ("default", "fp32")

def precision() -> str:
  """ROCKET_PRECISION: "default" (float32 computed with fp16 operands, fp32 accumulation and results, DESIGN.md) or
  "fp32" (float32-accurate results: float32 contractions run on the NPU in split precision, each value as fp16 hi +
  2^-11 lo halves, rules/contraction.py _split_tasks; float32 kernels no split covers run the C code, with the reason).
  Read when the device opens: it picks the renderer, so compiled kernels of one precision are never reused for the
  other (tinygrad caches compiled kernels per renderer type)."""
  v = os.environ.get("ROCKET_PRECISION", "default").lower() or "default"
  if v not in PRECISIONS: raise ValueError(f"ROCKET_PRECISION={v!r}: expected one of {PRECISIONS}")
  return v
