"""Running one tinygrad computation on ROCKET and on tinygrad's CPU device, from the same numpy inputs."""
from __future__ import annotations
import contextlib, os
import numpy as np
from tinygrad import Tensor

def on(device:str, fn, *arrays:np.ndarray, **kw) -> np.ndarray:
  return fn(*[Tensor(a, device=device) for a in arrays], **kw).numpy()

def rocket_and_cpu(fn, *arrays:np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:
  return on("ROCKET", fn, *arrays, **kw), on("CPU", fn, *arrays, **kw)

@contextlib.contextmanager
def env(**kv:str):
  old = {k: os.environ.get(k) for k in kv}
  os.environ.update(kv)
  try: yield
  finally:
    for k, v in old.items():
      if v is None: os.environ.pop(k, None)
      else: os.environ[k] = v

def conv_case(k:int, stride:int, dilation:int, padding:int, extra:int, min_size:int) -> tuple[int, int]:
  """(input size, output size) of a hypothesis conv case, rejecting (hypothesis.assume) the index forms tinygrad writes
  that analysis.py does not read: gaps between windows (kernel < stride, dilation 1: a % over several periods) and an
  output whose window lies wholly in the padding (tinygrad hoists the predicate out of the reduction). The input is at
  least `min_size`, wider than its padding and than the dilated kernel."""
  from hypothesis import assume
  eff = (k - 1) * dilation + 1
  size = max(min_size, padding + 1, eff - 2 * padding) + extra
  out = (size + 2 * padding - eff) // stride + 1
  assume(not (dilation == 1 and k < stride))
  assume(all(any(0 <= o * stride + j * dilation - padding < size for j in range(k)) for o in range(out)))
  return size, out

def first_window(domains, x) -> np.ndarray:
  """Per value of x as the NPU packs it (rounded to fp16), the index of the first domain whose guard holds on it (each
  edge pulled in by GUARD_MARGIN of its magnitude: program.Guard), -1 for none: the range window a call takes that
  element from (device.py NpuRunner)."""
  from tinygrad_rocket.program import GUARD_MARGIN
  v = np.asarray(x, np.float32).astype(np.float16).astype(np.float64)
  out = np.full(v.shape, -1)
  for w, (lo, hi) in reversed(list(enumerate(domains))):
    out = np.where((v >= lo + GUARD_MARGIN * abs(lo)) & (v <= hi - GUARD_MARGIN * abs(hi)), w, out)
  return out
