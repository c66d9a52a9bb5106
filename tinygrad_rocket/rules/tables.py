"""Lookup tables for the lowering rules: which table a function of one argument gets (ops/lut.py builds and measures
them), the function evaluated from a kernel's expression tree, and the DPU-only tasks that apply a table; and the seeds of
1/x and 1/sqrt(x) that Newton steps refine (newton: derivation, measured error and domain), with a table's output bound.

Used by rules/elementwise.py (a function of a load or of a linear argument) and rules/contraction.py (an activation
applied to a contraction's result)."""
from __future__ import annotations
import functools, math
from dataclasses import dataclass, replace
import numpy as np
from tinygrad_rocket import regs
from tinygrad_rocket._tg import Ops
from tinygrad_rocket.analysis import Load, Const, Alu
from tinygrad_rocket.rules.common import FLOATS
from tinygrad_rocket.ops.elementwise import FLYING_ENABLE
from tinygrad_rocket.ops.lut import LutTable, make_table, lut_programs, all_fp16
from tinygrad_rocket.ops.program import entries, override

# Intervals tried, in order, when a function of one argument is tabulated for the DPU lookup table (ops/lut.py). A table
# whose measured bound holds on the whole real line needs nothing more; one that holds on an interval only (exp, log,
# sqrt, 1/x) comes with a guard: before the job the runner checks the argument (from the packed fp16 operands) lies in
# the table's domain, and a call where it does not runs the C code.
LUT_INTERVALS = ((-16.0, 16.0), (-8.0, 8.0), (-16.0, 0.0), (-24.0, 0.0), (0.25, 32.0), (1.0, 64.0), (0.5, 64.0))
# A table is used only if its worst error is within 2^-9 of the function's largest magnitude on the interval: a few
# fp16 ulps, what the rest of an fp16-operand pipeline costs anyway (uniform grids fail this near a pole: 1/x on
# [0.25, 32] is off by 0.046, docs/lut.md).
LUT_MAX_ERROR = 2.0 ** -9

class NotTabulable(Exception):
  """The expression holds an op the table's function cannot be evaluated through."""

def _tables(fn, name:str):
  """The tables over LUT_INTERVALS accurate to LUT_MAX_ERROR of fn's largest magnitude there, in interval order."""
  for lo, hi in LUT_INTERVALS:
    try:
      with np.errstate(all="ignore"): t = make_table(fn, lo, hi, name=name)
    except (NotTabulable, ValueError, FloatingPointError): continue
    if not isinstance(t, LutTable): continue
    with np.errstate(all="ignore"): peak = float(np.nanmax(np.abs(fn(np.linspace(lo, hi, 4097)))))
    if t.max_abs_error <= LUT_MAX_ERROR * peak: yield t

def full_line_table(fn, name:str) -> LutTable|None:
  """A table of fn exact on every input (its tails extrapolate within the bound): needs no guard."""
  return next((t for t in _tables(fn, name) if t.domain == (-math.inf, math.inf)), None)

def pick_table(fn, name:str) -> LutTable|None:
  """A table exact on every input if there is one, else the one with the least absolute error (a wide interval of exp
  is accurate relative to its peak and useless below 1); the caller guards its domain."""
  good = list(_tables(fn, name))
  return next((t for t in good if t.domain == (-math.inf, math.inf)), None) or min(good, key=lambda t: t.max_abs_error, default=None)

_NP_UNARY = {Ops.EXP2: np.exp2, Ops.LOG2: np.log2, Ops.SQRT: np.sqrt, Ops.SIN: np.sin, Ops.RECIPROCAL: lambda x: 1.0 / x,
             Ops.NEG: np.negative, Ops.TRUNC: np.trunc}
_NP_BINARY = {Ops.ADD: np.add, Ops.SUB: np.subtract, Ops.MUL: np.multiply, Ops.MAX: np.maximum, Ops.CMPLT: np.less,
              Ops.CMPNE: np.not_equal, Ops.FDIV: np.divide}

def eval_expr(e, ld:Load, x:np.ndarray) -> np.ndarray:
  """e in float64 with the load's value x (what the table tabulates)."""
  if isinstance(e, Load): return x
  if isinstance(e, Const): return np.full_like(x, float(e.value))
  if isinstance(e, Alu):
    v = [eval_expr(s, ld, x) for s in e.src]
    with np.errstate(all="ignore"):
      if e.op is Ops.CAST: return v[0] if e.dtype in FLOATS or e.dtype.name == "bool" else np.trunc(v[0])
      if e.op in _NP_UNARY: return _NP_UNARY[e.op](v[0])
      if e.op in _NP_BINARY: return _NP_BINARY[e.op](v[0], v[1]).astype(np.float64)
      if e.op is Ops.WHERE: return np.where(v[0] != 0, v[1], v[2])
  raise NotTabulable(f"{getattr(e, 'op', e)} in a tabulated function")

def lut_tasks(n:int, table:LutTable, x_slot:int, x_off:int, y_slot:int, y_off:int) -> list[regs.Task]:
  """The table's DPU-only tasks over n fp16 elements at byte x_off of x_slot, results at y_off of y_slot (each address
  moved on its own: the two may share a buffer)."""
  out = []
  for p in lut_programs(n, table, {"input": x_slot, "output": y_slot}):
    src, dst = p[("DPU_RDMA", "SRC_BASE_ADDR")], p[("DPU", "DST_BASE_ADDR")]
    p = override(p, {("DPU_RDMA", "SRC_BASE_ADDR"): regs.address("DPU_RDMA", "SRC_BASE_ADDR", x_slot, src.offset + x_off),
                     ("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", y_slot, dst.offset + y_off)})
    out.append(regs.Task(entries(p), FLYING_ENABLE))
  return out

# ---- reciprocal: a guarded table seed refined by Newton steps (rules/elementwise.py Compiler.reciprocal) --------------
# A uniform grid cannot hold 1/x to LUT_MAX_ERROR over a useful range (1/x on [1, 64]: 0.0036), and the EW DIV is
# unvalidated (rocket_fp16_ew_ppu.md §3.2, AB atol 0.1). So 1/x is a table seed y0 on an interval, then Newton steps
#   p = -x * y      (CORE: x times -1, exact; EW mul by y: fp32. x, y fp16: a 22-bit product, exact in fp32)
#   e = 1 + p       (BS constant 1, EW add: fp32, exact by Sterbenz while |e| <= 1/2), narrowed to fp16
#   y' = (1 + e) y  (CORE: e as a main term, BS adds 1: fp32; EW mul by y: fp32)
# each of which squares the relative error eps = 1 - x y: with |d1| <= u16 (e's fp16 rounding, applied to the small
# correction e, not to y) and |d2|, |d3| <= u32 (the BS add and the EW product),
#   x y' = (1 - eps) (1 + eps (1 + d1)) (1 + d2) (1 + d3) = (1 - eps^2 + eps d1 (1 - eps)) (1 + d2) (1 + d3)
#   |eps'| <= eps^2 + |eps| u16 (1 + |eps|) + 2 u32 + u32^2 (+ u32 when y is fp32 and p rounds: steps after the first)
# so the seed's error e0 (its table error, relative, plus its fp16 output rounding) falls to ~e0^2 per step, and what
# the roundings add is u16 times the shrinking eps, not u16 times the result. The measured bound (every fp16 x of the
# domain through exactly these fp16/fp32 roundings) is what the rule states; the a-priori recurrence above is checked
# against it in tests/test_reciprocal.py.
# Intervals tried, widest first: the softmax denominator (a row sum of exp(x - max), in [1, row length]) and layernorm's
# std (sqrt(var + eps) of activations) both lie in [2^-4, 2^6] for rows up to 64 elements and typical activations; the
# seed's error grows with the square of the interval's ratio (interpolation near the low end), so a wider interval needs
# more steps: [2^-4, 2^6] has e0 = 0.33 and needs 3 (3 stages each), [2^-4, 2^4] 2. Calls outside take the C code.
RECIP_INTERVALS = ((2.0 ** -4, 2.0 ** 6), (2.0 ** -4, 2.0 ** 4), (1.0, 64.0))
NEWTON_MAX_STEPS = 3
# The refined reciprocal is used only when its measured relative error is within half an fp16 rounding (2^-12): then it
# is as good as an fp16 operand, and the fp16 rounding of whatever consumes it dominates.
RECIP_MAX_REL_ERROR = 2.0 ** -12

# rsqrt (1/sqrt(x): layernorm's and RMSNorm's rsqrt(var + eps)) the same way, a step being y' = y (1 + (1 - x y^2)/2):
#   p = -x * y, q = y * p (y an fp16 main term: q = -x y^2, one fp32 rounding), e = 1 + q (exact) narrowed to fp16,
#   y' = (1 + e/2) y; with sqrt(x) y = 1 + d: x y^2 = (1 + d)^2, and sqrt(x) y' = 1 - 3/2 d^2 - 1/2 d^3 + rounding, so
#   |eps'| <= 3/2 eps^2 + 1/2 eps^3 + (1 + eps) (2 eps + eps^2) u16 / 2 + 4 u32 (+ u16 (1 + eps') when y' is narrowed to
#   fp16 for the next step: q needs y as a main term, and the step squares that rounding away).
# 4 stages per step. Its argument's interval is the square of std's: [2^-6, 2^4] (std in [1/8, 4]) needs 3 steps.
RSQRT_INTERVALS = ((2.0 ** -6, 2.0 ** 4), (2.0 ** -4, 2.0 ** 4))

@dataclass(frozen=True)
class Newton:
  """A seed table for 1/x (kind "reciprocal") or 1/sqrt(x) ("rsqrt") and the Newton steps that bring it within
  `rel_error` of the function on `domain` (every fp16 x)."""
  kind: str
  table: LutTable
  steps: int
  domain: tuple[float, float]
  errors: tuple[float, ...]     # max |1 - y_k / f(x)| over every fp16 x in the domain, k = 0 (the seed) .. steps, measured
  @property
  def rel_error(self) -> float: return self.errors[-1]

NEWTON_FUNCTIONS = {"reciprocal": (lambda x: 1.0 / x, RECIP_INTERVALS), "rsqrt": (lambda x: 1.0 / np.sqrt(x), RSQRT_INTERVALS)}

def newton_model(kind:str, table:LutTable, steps:int, xs:np.ndarray) -> list[np.ndarray]:
  """y_0 (the seed) .. y_steps for fp16 inputs xs, as float32, through the stages' exact roundings (see above)."""
  x32 = np.asarray(xs, np.float16).astype(np.float32)
  ys = [table.model(xs).astype(np.float16).astype(np.float32)]   # the LUT task writes fp16
  f32 = np.float32
  with np.errstate(all="ignore"):
    for k in range(steps):
      y = ys[-1]
      p = (x32 * -y).astype(f32)
      if kind == "reciprocal":
        e = (p + f32(1)).astype(f32).astype(np.float16)
        ys.append(((e.astype(f32) + f32(1)).astype(f32) * y).astype(f32))
      else:
        e = ((y * p).astype(f32) + f32(1)).astype(f32).astype(np.float16)
        y = ((e.astype(f32) * f32(0.5) + f32(1)).astype(f32) * y).astype(f32)
        ys.append(y.astype(np.float16).astype(f32) if k < steps - 1 else y)   # narrowed: the next step's main term
  return ys

def newton_errors(kind:str, table:LutTable, steps:int, lo:float, hi:float) -> list[float]:
  """max |1 - y_k / f(x)| over every fp16 x in [lo, hi], k = 0..steps."""
  xs = all_fp16()
  xs = xs[(xs >= lo) & (xs <= hi)]
  f = NEWTON_FUNCTIONS[kind][0](xs.astype(np.float64))
  with np.errstate(all="ignore"):
    return [float(np.nan_to_num(np.abs(1 - y.astype(np.float64) / f), nan=np.inf).max()) for y in newton_model(kind, table, steps, xs)]

@functools.cache
def newton(kind:str) -> Newton|None:
  """The widest interval for `kind` whose seed reaches RECIP_MAX_REL_ERROR within NEWTON_MAX_STEPS, with the fewest steps."""
  fn, intervals = NEWTON_FUNCTIONS[kind]
  for lo, hi in intervals:
    t = make_table(fn, lo, hi, name=f"{kind}_seed")
    if not isinstance(t, LutTable) or not (t.domain[0] <= lo and hi <= t.domain[1]): continue
    errs = newton_errors(kind, t, NEWTON_MAX_STEPS, lo, hi)
    if errs[0] >= 0.5: continue      # the seed too far off: Newton's steps would not converge within their exact range
    for k, err in enumerate(errs):
      # the table's claim narrowed to the interval: the guard keeps the argument there (beyond it the seed's flat tail
      # leaves Newton's basin)
      if k and err <= RECIP_MAX_REL_ERROR: return Newton(kind, replace(t, domain=(lo, hi)), k, (lo, hi), tuple(errs[:k + 1]))
  return None

def newton_reciprocal() -> Newton|None: return newton("reciprocal")
def newton_reciprocal_model(table:LutTable, steps:int, xs:np.ndarray) -> list[np.ndarray]: return newton_model("reciprocal", table, steps, xs)
def newton_reciprocal_errors(table:LutTable, steps:int, lo:float, hi:float) -> list[float]:
  return newton_errors("reciprocal", table, steps, lo, hi)

@functools.cache
def lut_bound(table:LutTable) -> float:
  """The largest |output| of a table over every fp16 input of its domain (what the LUT task can write there)."""
  xs = all_fp16()
  xs = xs[(xs >= table.domain[0]) & (xs <= table.domain[1])]
  with np.errstate(all="ignore"): return float(np.abs(table.model(xs).astype(np.float16).astype(np.float64)).max())
