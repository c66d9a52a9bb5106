"""Lookup tables for the lowering rules: which table a function of one argument gets (ops/lut.py builds and measures
them), the function evaluated from a kernel's expression tree, and the DPU-only tasks that apply a table.

Used by rules/elementwise.py (a function of a load or of a linear argument) and rules/contraction.py (an activation
applied to a contraction's result)."""
from __future__ import annotations
import math
import numpy as np
from tinygrad_rocket import regs
from tinygrad_rocket._tg import Ops
from tinygrad_rocket.analysis import Load, Const, Alu
from tinygrad_rocket.rules.common import FLOATS
from tinygrad_rocket.ops.elementwise import FLYING_ENABLE
from tinygrad_rocket.ops.lut import LutTable, make_table, lut_programs
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
