"""Measures the error of tinygrad's CPU device exp2 / log2 / log (float32) against float64 numpy: over every finite fp16
input of each function's domain and 2^20 random float32 inputs (random bit patterns of the domain). The error is stated
in units of the float32 unit roundoff u32 = 2^-24 relative to the exact result, |y - f(x)| / (u32 |f(x)|) (how
tests/test_log_softmax.py TRANSCENDENTAL_ULPS enters the CPU's bounds), and in float32 ulps of f(x).

    PYTHONPATH=. python scripts/transcendental_ulps.py
"""
from __future__ import annotations
import numpy as np
from tinygrad import Tensor
import tinygrad_rocket  # noqa: F401  picks the clang tinygrad's CPU device compiles with (tinygrad_rocket/__init__.py)

U32 = 2.0 ** -24
RANDOM_INPUTS = 2 ** 20
# exp2's domain: results normal and finite in float32 (2^-126 .. 2^128)
EXP2_LO, EXP2_HI = -126.0, 128.0
FUNCTIONS = {  # name: (tinygrad op, float64 reference, domain test)
  "exp2": (lambda t: t.exp2(), np.exp2, lambda x: (x >= EXP2_LO) & (x < EXP2_HI)),
  "log2": (lambda t: t.log2(), np.log2, lambda x: x > 0),
  "log": (lambda t: t.log(), np.log, lambda x: x > 0),
}

def every_fp16() -> np.ndarray:
  v = np.arange(0x10000, dtype=np.uint32).astype(np.uint16).view(np.float16)
  return v[np.isfinite(v)].astype(np.float32)

def random_f32(n:int, seed:int=0) -> np.ndarray:
  """n random float32 bit patterns, finite (every binade equally likely)."""
  v = np.random.default_rng(seed).integers(0, 2 ** 32, n * 2, dtype=np.uint64).astype(np.uint32).view(np.float32)
  return v[np.isfinite(v)][:n]

def errors(name:str, x:np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(inputs in the domain, error in u32 relative units, error in float32 ulps of the exact result)."""
  op, ref, dom = FUNCTIONS[name]
  x = x[dom(x.astype(np.float64))]
  y = op(Tensor(x, device="CPU")).numpy().astype(np.float64)
  f = ref(x.astype(np.float64))
  err = np.abs(y - f)
  with np.errstate(divide="ignore", invalid="ignore"):
    rel = np.where(f == 0, np.where(err == 0, 0.0, np.inf), err / (U32 * np.abs(f)))
  ulp = np.spacing(np.abs(f).astype(np.float32)).astype(np.float64)
  return x, rel, err / ulp

def measure(x:np.ndarray) -> dict[str, tuple[float, float, float]]:
  """name -> (max relative error in u32, its input, max error in ulps)."""
  out = {}
  for name in FUNCTIONS:
    xs, rel, ulps = errors(name, x)
    i = int(np.argmax(rel))
    out[name] = (float(rel[i]), float(xs[i]), float(ulps.max()))
  return out

if __name__ == "__main__":
  for what, x in (("every fp16 input", every_fp16()), (f"{RANDOM_INPUTS} random float32 inputs", random_f32(RANDOM_INPUTS))):
    print(what)
    for name, (rel, at, ulps) in measure(x).items():
      print(f"  {name:5s} max |y - f| / (u32 |f|) = {rel:.3f} at x = {at!r}; max {ulps:.3f} float32 ulps")
