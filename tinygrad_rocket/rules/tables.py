"""Lookup tables for the lowering rules: which table a function of one argument gets (ops/lut.py builds and measures
them), the function evaluated from a kernel's expression tree, and the DPU-only tasks that apply a table; and the seeds of
1/x and 1/sqrt(x) that Newton steps refine (newton: derivation, measured error and domain), with a table's output bound.

Used by rules/elementwise.py (a function of a load or of a linear argument) and rules/contraction.py (an activation
applied to a contraction's result)."""
from __future__ import annotations
import functools, hashlib, math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator
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

# ---- range windows: one program per window of a guarded table's argument (lower.py lowers, device.py chains) ---------
# A rule asks for its tables without knowing of windows; lower.py lowers a kernel inside range_window(w) for w = 0, 1, ..
# while the tables it asked for depend on w, and the guarded tables of power functions (1/x, 1/sqrt(x), sqrt) and the
# Newton seeds answer for window w. A context variable, so that the rules (and what they call) need no parameter.
_window: ContextVar[int] = ContextVar("range_window", default=0)
_window_used: ContextVar[list[bool]|None] = ContextVar("range_window_used", default=None)

class NoWindow(Exception):
  """A table the kernel needs has no window of this index: the kernel has no program for it (lower.py stops there)."""

@contextmanager
def range_window(window:int) -> Iterator[list[bool]]:
  """Tables asked for inside answer for `window`; the list yielded is non-empty once one depended on it."""
  used: list[bool] = []
  tw, tu = _window.set(window), _window_used.set(used)
  try: yield used
  finally: _window.reset(tw); _window_used.reset(tu)

def _uses_window() -> None:
  if (used := _window_used.get()) is not None: used.append(True)

# The guarded table of a power function (f(4x) = 2^k f(x): sqrt, 1/x, 1/sqrt(x)) on window w is window 0's interval
# scaled by TABLE_SCALES[w]: powers of 4, so the scaled table is window 0's exactly (index scale and outputs move by
# powers of 2) while its index scale and output quantum stay in range (it is measured again, and used only if it meets
# LUT_MAX_ERROR like window 0's). sqrt on [0.25, 32] (a layernorm's var) becomes [4, 512], [1/64, 2], [64, 8192],
# [2^-10, 1/8] (its index scale capped at 65504: 255 segments, error 1.9e-4 within the bound's 6.9e-4): std 0.031 to 90.
# A logarithm (f(4x) = f(x) + c: log_softmax's log of its row sum) gets the same windows: its interpolation error
# h^2 / (8 x^2) is the same on a scaled interval and its outputs span the same width (only shifted by c), so each
# window's measured error is about window 0's. log on [1, 64] becomes [16, 1024], [1/16, 4], [256, 16384], [1/256, 1/4]:
# row sums of rows up to ~1000 elements, and just below 1 (a confident row whose max fp16 rounds up).
TABLE_SCALES = (1.0, 4.0 ** 2, 4.0 ** -2, 4.0 ** 4, 4.0 ** -4)
POWER_PROBES = np.geomspace(0.5, 2.0, 7)   # where fn(4x) / fn(x) (fn(4x) - fn(x)) is checked to be one power of 2 (constant)
LOG_SHIFT_RTOL = 2.0 ** -40   # fn(4x) - fn(x) equal at every probe up to float64's rounding of fn (a few ulps of 2^-52)

def _power_function(fn) -> bool:
  """Whether fn(4x) = 2^k fn(x) for an integer k (checked at POWER_PROBES, exactly as float64 gives it)."""
  with np.errstate(all="ignore"):
    try: r = np.asarray(fn(4 * POWER_PROBES), np.float64) / np.asarray(fn(POWER_PROBES), np.float64)
    except (NotTabulable, ValueError, FloatingPointError): return False
  if not (np.isfinite(r).all() and r[0] > 0 and (r == r[0]).all()): return False
  return float(r[0]) == 2.0 ** round(math.log2(float(r[0])))

def _log_function(fn) -> bool:
  """Whether fn(4x) = fn(x) + c for a constant c != 0 (checked at POWER_PROBES up to LOG_SHIFT_RTOL): a logarithm."""
  with np.errstate(all="ignore"):
    try: f1, f4 = np.asarray(fn(POWER_PROBES), np.float64), np.asarray(fn(4 * POWER_PROBES), np.float64)
    except (NotTabulable, ValueError, FloatingPointError): return False
  d = f4 - f1
  if not (np.isfinite(d).all() and d[0] != 0): return False
  return bool((np.abs(d - d[0]) <= LOG_SHIFT_RTOL * (np.abs(f1) + np.abs(f4))).all())

# make_table's answer depends on fn only through fn's values at the points it evaluates, and those only on the interval
# and on earlier values: so fn's values at the points one call evaluated name the answer of any fn on that interval. A
# kernel lowered once per window asks for its other tables again (softmax: exp's 7 candidates, ~8 ms each), and so do
# kernels of the same function: per (name, interval), the points of the last call and the answers by digest of fn there.
_TABLE_MEMO: dict[tuple[str, float, float], tuple[np.ndarray, dict[bytes, LutTable|str]]] = {}
TABLE_MEMO_MAX = 256   # answers kept per interval (a process lowers a few distinct functions of one argument)
TABLE_MEMO_KEYS = 64   # (name, interval)s kept, the oldest dropped first: their points are ~0.4 MB each (measured)

def _digest(fn, xs:np.ndarray) -> bytes:
  with np.errstate(all="ignore"): return hashlib.sha256(np.broadcast_to(np.asarray(fn(xs), np.float64), xs.shape).tobytes()).digest()

def _make_table(fn, lo:float, hi:float, name:str) -> LutTable|str:
  """make_table(fn, lo, hi), memoized (see _TABLE_MEMO)."""
  memo = _TABLE_MEMO.get(key := (name, lo, hi))
  if memo is not None and (t := memo[1].get(_digest(fn, memo[0]))) is not None: return t
  points: list[np.ndarray] = []
  def recording(x):
    points.append(np.asarray(x, np.float64).ravel())
    return fn(x)
  with np.errstate(all="ignore"): t = make_table(recording, lo, hi, name=name)
  xs = np.concatenate(points) if points else np.zeros(0)
  if memo is None or not np.array_equal(memo[0], xs):
    if key not in _TABLE_MEMO and len(_TABLE_MEMO) >= TABLE_MEMO_KEYS: del _TABLE_MEMO[next(iter(_TABLE_MEMO))]
    memo = _TABLE_MEMO[key] = (xs, {})
  if len(memo[1]) < TABLE_MEMO_MAX: memo[1][_digest(fn, xs)] = t
  return t

def _tables(fn, name:str, intervals:tuple[tuple[float, float], ...]=LUT_INTERVALS):
  """The tables over `intervals` accurate to LUT_MAX_ERROR of fn's largest magnitude there, in interval order."""
  for lo, hi in intervals:
    try: t = _make_table(fn, lo, hi, name)
    except (NotTabulable, ValueError, FloatingPointError): continue
    if not isinstance(t, LutTable): continue
    with np.errstate(all="ignore"): peak = float(np.nanmax(np.abs(fn(np.linspace(lo, hi, 4097)))))
    if t.max_abs_error <= LUT_MAX_ERROR * peak: yield t

def full_line_table(fn, name:str) -> LutTable|None:
  """A table of fn exact on every input (its tails extrapolate within the bound): needs no guard."""
  return next((t for t in _tables(fn, name) if t.domain == (-math.inf, math.inf)), None)

def pick_table(fn, name:str, signed_ok:bool=False) -> LutTable|None:
  """A table exact on every input if there is one, else the one with the least absolute error (a wide interval of exp
  is accurate relative to its peak and useless below 1); the caller guards its domain. For a power function or a
  logarithm, the one of the window being lowered (range_window, TABLE_SCALES). signed_ok: the caller never feeds x ~ 0
  to the table (its padding gets a value inside the domain), so a window may have a signed decode where window 0's is
  unsigned."""
  good = list(_tables(fn, name))
  if (t := next((t for t in good if t.domain == (-math.inf, math.inf)), None)) is not None or not good: return t
  t = min(good, key=lambda t: t.max_abs_error)
  if not (_power_function(fn) or _log_function(fn)): return t
  _uses_window()
  if (w := _window.get()) == 0: return t
  if w >= len(TABLE_SCALES): raise NoWindow(f"{len(TABLE_SCALES)} table windows")
  c = TABLE_SCALES[w]
  if (tw := next(_tables(fn, name, ((t.lo * c, t.hi * c),)), None)) is None: raise NoWindow(f"{name} on window {w} misses LUT_MAX_ERROR")
  # a window stands in for window 0's table on the terms its caller accepted: a caller may feed x ~ 0 to an unsigned
  # table (padding it does not control), which a signed decode would meet with the spike (QUIRK 2, §4.6)
  if tw.signed and not t.signed and not signed_ok: raise NoWindow(f"{name} on window {w} needs a signed decode (window 0's is unsigned)")
  return tw

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
# Windows of the argument, tried in this order by the runner (device.py: one program per window, each guarding its own;
# a call whose argument leaves every window runs the C code). The seed's error grows with the square of a window's ratio
# (interpolation near its low end), so 3 steps (3 stages each) hold RECIP_MAX_REL_ERROR on a ratio of 1024 and no more
# (e0 = 0.33 -> 1.6e-4, against 2^-12 = 2.4e-4). Window 0 is the one used before windows existed (layernorm's std in
# [1/16, 64], softmax rows up to 63 elements); [63/64, 1008] holds every softmax row sum (>= 1: the max's own term) of
# rows up to 1006 elements (the guard pulls the window in by GUARD_MARGIN: placed at [1, 1024], a confident row's sum of
# 1.0 would fail it); then large sums and stds, small stds, and sums up to fp16's largest value (every result and
# intermediate fp16-normal, since the seed is scaled, Newton). The lowest window: the table's index scale is an fp16
# (<= 65504) spread over 16384 index units (rocket_fp16_ew_ppu.md §4.3), so a window narrower than 16384/65504 = 0.25
# uses fewer of the 512 segments and its seed misses the bound ([2^-14, 2^-4] has 128: e0 > 1/2).
RECIP_WINDOWS = ((2.0 ** -4, 2.0 ** 6), (63 / 64, 1008.0), (2.0 ** 4, 2.0 ** 14), (2.0 ** -12, 2.0 ** -2), (2.0 ** 6, 65504.0))
NEWTON_MAX_STEPS = 3
# The refined reciprocal is used only when its measured relative error is within half an fp16 rounding (2^-12): then it
# is as good as an fp16 operand, and the fp16 rounding of whatever consumes it dominates.
RECIP_MAX_REL_ERROR = 2.0 ** -12

# rsqrt (1/sqrt(x): layernorm's and RMSNorm's rsqrt(var + eps)) the same way, a step being y' = y (1 + (1 - x y^2)/2):
#   p = -x * y, q = y * p (y an fp16 main term: q = -x y^2, one fp32 rounding), e = 1 + q (exact) narrowed to fp16,
#   y' = (1 + e/2) y; with sqrt(x) y = 1 + d: x y^2 = (1 + d)^2, and sqrt(x) y' = 1 - 3/2 d^2 - 1/2 d^3 + rounding, so
#   |eps'| <= 3/2 eps^2 + 1/2 eps^3 + (1 + eps) (2 eps + eps^2) u16 / 2 + 4 u32 (+ u16 (1 + eps') when y' is narrowed to
#   fp16 for the next step: q needs y as a main term, and the step squares that rounding away).
# 4 stages per step. Its argument's window is the square of std's: [2^-6, 2^4] (std in [1/8, 4], window 0 as before
# windows existed) needs 3 steps; then std in [4, 128] (transformer residual streams), [2^-6, 1/2] (the lowest, as 1/x's),
# [2^-5, 1] (a tensor mixing small and unit stds) and [8, 256]. Windows shifted by an even power of 2 are the same table
# exactly.
RSQRT_WINDOWS = ((2.0 ** -6, 2.0 ** 4), (2.0 ** 4, 2.0 ** 14), (2.0 ** -12, 2.0 ** -2), (2.0 ** -10, 2.0 ** 0), (2.0 ** 6, 65504.0))

# How many windows a kernel with a guarded table of a power function gets (RECIP_WINDOWS, RSQRT_WINDOWS, TABLE_SCALES
# have at most this many): each is one more program lowered (compile time) and, for a call outside the earlier windows,
# one more packing and guard check before its job (run time); five cover fp16's positive normal range for 1/x and
# 1/sqrt(x) and softmax rows up to 1006 elements whatever their confidence.
RANGE_WINDOWS = 5

@dataclass(frozen=True)
class Newton:
  """A seed table for 1/x (kind "reciprocal") or 1/sqrt(x) ("rsqrt") and the Newton steps that bring it within
  `rel_error` of the function on `domain` (every fp16 x). The table holds `seed_scale` * f(x) (a power of 2): the seed of
  every window has the outputs of window 0's (a LUT's output quantum is at least 2^-15, rocket_fp16_ew_ppu.md §4.4, too
  coarse for 1/x near 2^-14), and the first step's coefficients divide the scale out exactly (Compiler.newton)."""
  kind: str
  table: LutTable
  steps: int
  domain: tuple[float, float]
  errors: tuple[float, ...]     # max |1 - y_k / f(x)| over every fp16 x in the domain, k = 0 (the seed) .. steps, measured
  seed_scale: float = 1.0
  @property
  def rel_error(self) -> float: return self.errors[-1]

NEWTON_FUNCTIONS = {"reciprocal": (lambda x: 1.0 / x, RECIP_WINDOWS), "rsqrt": (lambda x: 1.0 / np.sqrt(x), RSQRT_WINDOWS)}

def seed_scale(kind:str, lo:float) -> float:
  """The power of 2 that brings f on a window starting at lo to f on window 0 (the seed's outputs there)."""
  fn, windows = NEWTON_FUNCTIONS[kind]
  return 2.0 ** round(math.log2(fn(windows[0][0]) / fn(lo)))

def newton_model(kind:str, table:LutTable, steps:int, xs:np.ndarray, scale:float=1.0) -> list[np.ndarray]:
  """y_0 (the seed) .. y_steps for fp16 inputs xs, as float32, through the stages' exact roundings (see above). The
  table holds scale * f: the first step's CORE scales x by -1/scale (rsqrt: -1/scale^2) and its update by 1/scale."""
  x32 = np.asarray(xs, np.float16).astype(np.float32)
  seed = table.model(xs).astype(np.float16).astype(np.float32)   # the LUT task writes fp16
  ys = [seed / np.float32(scale)]                                # (exact: a power of 2, normal results)
  f32 = np.float32
  with np.errstate(all="ignore"):
    y, s = seed, f32(scale)
    for k in range(steps):
      if kind == "reciprocal":
        p = ((x32 * (f32(-1) / s)).astype(f32) * y).astype(f32)
        e = (p + f32(1)).astype(f32).astype(np.float16)
        y = ((e.astype(f32) * (f32(1) / s) + f32(1) / s).astype(f32) * y).astype(f32)
      else:
        p = ((x32 * (f32(-1) / (s * s))).astype(f32) * y).astype(f32)
        e = ((y * p).astype(f32) + f32(1)).astype(f32).astype(np.float16)
        y = ((e.astype(f32) * (f32(0.5) / s) + f32(1) / s).astype(f32) * y).astype(f32)
        if k < steps - 1: y = y.astype(np.float16).astype(f32)   # narrowed: the next step's main term
      ys.append(y)
      s = f32(1)
  return ys

def newton_errors(kind:str, table:LutTable, steps:int, lo:float, hi:float, scale:float=1.0) -> list[float]:
  """max |1 - y_k / f(x)| over every fp16 x in [lo, hi], k = 0..steps."""
  xs = all_fp16()
  xs = xs[(xs >= lo) & (xs <= hi)]
  f = NEWTON_FUNCTIONS[kind][0](xs.astype(np.float64))
  with np.errstate(all="ignore"):
    return [float(np.nan_to_num(np.abs(1 - y.astype(np.float64) / f), nan=np.inf).max()) for y in newton_model(kind, table, steps, xs, scale)]

@functools.cache
def newton_window(kind:str, window:int) -> Newton|None:
  """The seed on window `window` of `kind` and the fewest steps (<= NEWTON_MAX_STEPS) that reach RECIP_MAX_REL_ERROR on
  every fp16 argument of it; None if none do."""
  fn, windows = NEWTON_FUNCTIONS[kind]
  lo, hi = windows[window]
  s = seed_scale(kind, lo)
  t = make_table(lambda x: s * fn(x), lo, hi, name=f"{kind}_seed")
  if not isinstance(t, LutTable) or not (t.domain[0] <= lo and hi <= t.domain[1]): return None
  errs = newton_errors(kind, t, NEWTON_MAX_STEPS, lo, hi, s)
  if errs[0] >= 0.5: return None      # the seed too far off: Newton's steps would not converge within their exact range
  for k, err in enumerate(errs):
    # the table's claim narrowed to the window: the guard keeps the argument there (beyond it the seed's flat tail
    # leaves Newton's basin)
    if k and err <= RECIP_MAX_REL_ERROR: return Newton(kind, replace(t, domain=(lo, hi)), k, (lo, hi), tuple(errs[:k + 1]), s)
  return None

def newton(kind:str, window:int|None=None) -> Newton|None:
  """The Newton seed of `kind` for `window` (default: the window the lowering builds for, range_window). Window 0 may be
  None (no program refines `kind`); a later window without a seed that meets the bound has no program (NoWindow)."""
  if window is None:
    window = _window.get()
    _uses_window()
  if window >= len(NEWTON_FUNCTIONS[kind][1]): raise NoWindow(f"{kind} has {len(NEWTON_FUNCTIONS[kind][1])} windows")
  nt = newton_window(kind, window)
  if nt is None and window > 0: raise NoWindow(f"{kind}'s window {window} does not reach RECIP_MAX_REL_ERROR")
  return nt

def window_newtons() -> list[Newton]:
  """The Newton seeds of the window being lowered (to name them in a program's summary)."""
  w = _window.get()
  return [nt for kind, (_, ws) in NEWTON_FUNCTIONS.items() if w < len(ws) and (nt := newton_window(kind, w)) is not None]

def newton_reciprocal() -> Newton|None: return newton("reciprocal", 0)
def newton_reciprocal_model(table:LutTable, steps:int, xs:np.ndarray) -> list[np.ndarray]: return newton_model("reciprocal", table, steps, xs)
def newton_reciprocal_errors(table:LutTable, steps:int, lo:float, hi:float) -> list[float]:
  return newton_errors("reciprocal", table, steps, lo, hi)

@functools.cache
def lut_bound(table:LutTable) -> float:
  """The largest |output| of a table over every fp16 input of its domain (what the LUT task can write there)."""
  xs = all_fp16()
  xs = xs[(xs >= table.domain[0]) & (xs <= table.domain[1])]
  with np.errstate(all="ignore"): return float(np.abs(table.model(xs).astype(np.float16).astype(np.float64)).max())
