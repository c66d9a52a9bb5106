"""Elementwise kernels (no reduction) as chains of conv-fed DPU tasks with fp32 results.

Why conv-fed and not DPU-only ("flying") tasks: a flying task reads its main operand as fp16 and writes fp16 (fp32
output is unconfirmed, rocket_fp16_ew_ppu.md §3.2), which would round float32 results to fp16. Fed by the MAC array
instead, a task computes in fp32 and writes fp32 like every contraction (DESIGN.md, Numerics): the CORE forms a
linear combination of fp16 operands exactly (identity weight blocks scaled by the coefficients, fp32 accumulation),
the BS stage adds an fp32 constant and applies ReLU, and the EW stage combines the result with one more per-pixel
operand, an fp16 tensor or an earlier task's fp32 result (§2.3, GN [HW] bit-exact; §7.3).

The kernel's value is compiled bottom-up into such stages. A linear combination of loads stays symbolic (`Linear`);
a product, max or min of two varying values becomes a stage; a stage's result carries a pending affine map
(`Computed`: scale * result + shift) that the next stage folds into its own linear part, so constant scales and
offsets after a non-linear op cost no task:
  l + (s*m + d)      = s * (m + (l + d)/s)
  l * (s*m)          = s * (l * m)
  max(l, s*m + d)    = s * max((l - d)/s, m) + d      (min when s < 0)
Leaky ReLU with a constant slope, where(u < 0, a*u, u), is max(a*u, u) (min for a > 1; LEAKY_AS_MAX): for a linear u
one stage (a*u through the CORE, u the EW operand) or two (u computed first when it is not a plain load).
Two computed values meet in one stage (x * y, x + y, max(x, y)) by narrowing one of them to fp16 (the CORE reads only
fp16 operands): its stage writes fp16 straight into the A block of the one stage that reads it as a main term
(emit_stages), its pending map becoming that term's coefficient and the stage's constant; the other is the EW operand
(Compiler.meet says which side and what it costs). A narrowed value must be bounded within fp16 (a table's result, a
guarded reciprocal): an unbounded one could overflow to inf, and such kernels are not taken.
Comparisons of float16 values are exact 0/1 stages (STEP_EXACT; a bool result, or a mask), stored bools exact 0/1 loads
(STORED_BOOL), and where(c, p, q) on either, with p, q float16 loads or fp16 constants, an exact select (SELECT_EXACT).
1/x and 1/sqrt(x) are guarded table seeds refined by Newton steps as stages (Compiler.newton; rules/tables.py derives and measures
its error). Elements are laid out flat, 16 per output pixel (one 16-kernel group), rows split into tiles that fit the
CBUF.
"""
from __future__ import annotations
import math
import numpy as np
from dataclasses import dataclass, field, replace
from typing import Callable
from tinygrad_rocket import regs
from tinygrad_rocket._tg import Ops, dtypes
from tinygrad_rocket.analysis import LoopNest, Load, Const, Alu, Reduce
from tinygrad_rocket.lower import NotApplicable
from tinygrad_rocket.program import NpuProgram, Copy, Lin, Bound, Guard, SCRATCH, PExpr
from tinygrad_rocket.rules.common import FLOATS, MAX_TASKS, strip_cast, relu_arg, leaky_arg, prelu_arg, prelu_sum_arg, Grid
from tinygrad_rocket.ops.layout import Feature, align, ceil_div
from tinygrad_rocket.ops.lut import LutTable
from tinygrad_rocket.rules.tables import pick_table, eval_expr, lut_tasks, lut_bound, newton, window_newtons
from tinygrad_rocket.ops.matmul import (MatmulTile, matmul_task, plan_tiles, EwOperand, XStageOp, K_ALIGN, MAX_ROWS,
                                        EW_MIN_PLANE_ATOMS)

UNARY_TABULABLE = (Ops.EXP2, Ops.LOG2, Ops.SQRT, Ops.RECIPROCAL, Ops.SIN)
LANES = 16             # elements per output pixel: one 16-kernel group (fp16 N alignment, rocket_fp16_ew_ppu.md §1.6)
FP16_MAX = 65504.0     # a coefficient beyond it is inf in the fp16 weights
OUT_DTYPES = {**FLOATS, dtypes.bool: "bool"}   # result dtypes: bool only for comparisons (exact 0/1 values, STEP_EXACT)
NO_POINT = Bound(Lin((0,)), 1, None)   # 0 >= 1: no point is valid, so a Copy writes its fill everywhere

# LEAKY_AS_MAX: tinygrad's leaky ReLU where(x < 0, a*x, x) equals max(x, a*x) for a <= 1 and min(x, a*x) for a >= 1 on
# every finite x, in IEEE arithmetic too, for any rounding fl that is monotonic and leaves representable values alone
# (round to nearest, in fp16 or fp32):
#   x < 0, a <= 1: a*x >= x exactly, so fl(a*x) >= fl(x) = x and max(x, fl(a*x)) = fl(a*x), the WHERE's value;
#   x >= 0, a <= 1: a*x <= x, so fl(a*x) <= x and max(x, fl(a*x)) = x, the WHERE's value;
#   a >= 1: the same with the inequalities reversed, min. (x = -0 or +0: max/min may return the other zero, equal in
#   value; tests/test_leaky.py checks every fp16 x in fp16 and fp32 arithmetic.)
# Non-finite x differ (a = 0, x = +-inf: a*x is NaN; NaN: max may drop it), and never reach the NPU: a call with a
# non-finite operand runs the C code (device.py NONFINITE_OPERAND_REASON); stage results are finite (a bounded or
# guarded fp16 narrowing, fp32 sums of finite fp16 products).

# PRELU_SPLIT: PReLU with a slope tensor k (per channel, broadcast), where(u < 0, k*u, u) or max(u, 0) + k*min(u, 0)
# (common.py prelu_arg, prelu_sum_arg), has a regime per element (a slope in [0, 1] is a max, above 1 a min, a negative
# one neither), so it is not LEAKY_AS_MAX. Instead
#   where(u < 0, k*u, u) = relu(u) + (-k) * relu(-u)
# holds for every finite k and u in IEEE arithmetic, and on the NPU with no rounding but the output's for a plain load
# u and k: relu(-u) is -u or 0 exactly (the BS ReLU of an exact fp32 value); (-k) * relu(-u) is a product of two fp16
# values, exact in fp32 (11 + 11 significand bits), and k*u itself for u < 0, +-0 for u >= 0 (k finite); the final add
# has one zero term (relu(u) = 0 for u < 0; the product is +-0 for u >= 0), so it is exact: k*u or u, as the WHERE
# gives (u = +-0: a zero of either sign, equal in value). So the NPU's result is fp16(k) fp16(u) (or fp16(u)) rounded
# once to the output dtype. Three stages: relu(-u) (CORE -u, BS ReLU), times -k (CORE -k, EW mul), relu(u) plus that
# (CORE u, BS ReLU, EW add). Non-finite u or k never reach the NPU (device.py NONFINITE_OPERAND_REASON: k = inf, u = 0
# would be NaN here). tests/test_leaky.py checks every fp16 u against the CPU.

# NEG_INF_ARG: a -inf operand (softmax's masked scores, exp(x - max) with x = -inf) never reaches the NPU as inf (the
# table's index arithmetic on inf is not documented, rocket_fp16_ew_ppu.md §4). A load whose only use is the argument
# of a table (the load itself, or a term with a positive coefficient of the fp16 stage only that table reads) is packed
# where it holds -inf as the finite stand-in that puts the table's argument at NEG_INF_ARG (program.Copy.neg_inf: for
# exp(x - max), x = max - 2048 / log2(e)), if the table's function has reached its -inf limit there (Stage.saturates:
# exp2(-2048) is 0 in float64, and in tinygrad's float32 exp2 of anything below -150 is 0). Then the kernel's value at
# the stand-in equals its value at -inf exactly (the load enters the result only through that function), and the NPU
# computes it within the kernel's bound for a finite operand (the table's domain extends to -inf, its error bound holds
# there). A stand-in beyond fp16's range (max near -65504) and +inf/NaN operands still run the C code.
NEG_INF_ARG = -2048.0

# STEP_EXACT: x < y for float16 x, y as a stage value in {0, 1}, exactly: clamp(2^24 * fl32(y - x), 0, 1). The CORE forms
# STEP_CORE * (y - x) from the fp16 operands (identity weights +-STEP_CORE, fp32 products exact, one fp32 rounding of the
# sum, which is exact scaled by a power of 2); fp32 rounding is monotone and sign-preserving and y - x is a multiple of
# 2^-24 (fp16's smallest subnormal; both operands are), so fl32(y - x) is +-0 exactly when x == y (-0 and +0 too: not
# less, as in IEEE) and otherwise at least 2^-24 in magnitude. The BS MUL (fp16 operand STEP_BS) scales it by the rest
# of STEP_GAIN = 2^24 (|result| <= 2^24 * 2 * 65504 < 2^42: no fp32 overflow), ReLU and the ReLUX clamp at 1 give 0
# or 1. STEP_GAIN does not fit one fp16 multiplier (max 65504), hence the split; the BS ALU stays bypassed (its order
# with the MUL is ⚠ unconfirmed, XStageOp). x != y is step(x, y) + step(y, x) (the EW add of two exact 0/1 values),
# x == y and NOT c are 1 - that (a pending map). float32 operands would compare their fp16 roundings: not taken.
# SELECT_EXACT: where(c, p, q) with c such a 0/1 value r (or 1 - r: p and q swap) and p, q fp16 values (loads or
# constants) is r*p + (1 - r)*q, each term exact and one of them +-0 (Compiler.select, SELECT_FORMS for each form and
# its cost). (q + r*(p - q) would round p - q unless it is an fp16 value.)
# COMPARE_F32: x < k, x != k, x == k for a float32 load x and an fp16 constant k (ReLU's backward in float32,
# where(0 < x, g, 0); thresholds): rounding to nearest is monotone and keeps k, so x < k gives fl16(x) <= k and x > k
# gives fl16(x) >= k: the fp16 comparison agrees with x's wherever fl16(x) != k, and where fl16(x) == k it agrees
# exactly when x == k. The pack checks that no element rounds onto k without being k (program.Copy.distinct): a call
# where one does (0 < x < 2^-25 against 0, say) runs the C code with the reason. Two float32 loads stay refused (a pair
# rounding to one value would need a check across two operands).
# STORED_BOOL: a bool tensor (a dropout or padding mask, a realized comparison) holds 0 or 1 per one-byte element; the
# pack converts it to fp16 0.0/1.0 exactly (program.Copy: numpy's bool -> float16), so it is a 0/1 indicator as a load,
# no comparison stage needed: b*x and where(b, p, q) are SELECT_EXACT's forms with r the load, NOT b is 1 - b (the
# CORE's -b plus the BS constant 1), AND an EW mul and OR an EW max of two 0/1 values (0/1 again, exactly).
STEP_GAIN = 2.0 ** 24
STEP_CORE = 2.0 ** 12               # the CORE's identity weights (fp16)
STEP_BS = STEP_GAIN / STEP_CORE     # the BS MUL operand (fp16)

class Unsupported(Exception):
  """The expression is outside what these stages compute; the message says why."""

@dataclass(frozen=True)
class Linear:
  """sum(coeff * term) + const over the kernel's loads and narrowed stage results (a term appears once). A term is a
  Load (packed fp16) or an int: an earlier stage's fp16 result, which that stage writes into the reading stage's A
  block (Compiler.narrow)."""
  terms: tuple[tuple[Load|int, float], ...] = ()
  const: float = 0.0
  def scaled(self, k:float) -> Linear: return Linear(tuple((ld, c * k) for ld, c in self.terms if c * k != 0), self.const * k)
  def plus(self, o:Linear) -> Linear:
    d: dict[Load|int, float] = {}
    for ld, c in self.terms + o.terms: d[ld] = d.get(ld, 0.0) + c
    return Linear(tuple((ld, c) for ld, c in d.items() if c != 0), self.const + o.const)
  def shifted(self, k:float) -> Linear: return Linear(self.terms, self.const + k)
  @property
  def plain_load(self) -> Load|None:
    """The load itself when this is exactly one load (it can be the EW operand as it is)."""
    t = self.terms[0][0] if len(self.terms) == 1 and self.terms[0][1] == 1 and self.const == 0 else None
    return t if isinstance(t, Load) else None
  @property
  def over_loads(self) -> bool: return bool(self.terms) and all(isinstance(t, Load) for t, _ in self.terms)

@dataclass(frozen=True)
class Computed:
  """scale * (the fp32 result of stage `stage`) + shift."""
  stage: int
  scale: float = 1.0
  shift: float = 0.0

Value = Linear | Computed

@dataclass
class Stage:
  """One task per row tile: ew_op(relu?(main + const), operand); main through the CORE, const in the BS stage."""
  main: Linear
  relu: bool = False
  clip: float|None = None         # with relu: the ReLUX clamp at clip
  mul: float|None = None          # the BS MUL's fp16 multiplier (before relu; main.const must be 0: STEP_EXACT)
  ew_op: str|None = None
  operand: Load|int|None = None   # a load (packed fp16) or an earlier stage (its result)
  lut: tuple[Load|int, LutTable]|None = None  # instead: a DPU-only lookup-table task of a load or an fp16 stage result
  guard: Linear|None = None       # with lut: the argument (over loads) the runner checks against the table's domain
  out16: bool = False             # the result narrowed to fp16 (a table's argument, a main term of a later stage)
  bound: float|None = None        # a bound on |result| on every input the guards let through (None: unknown)
  guard16: bool = False           # with out16: a guard checks the result stays within fp16 (its bound is not known)
  saturates: bool = False         # with lut: the table's function is at its -inf limit at NEG_INF_ARG (a -inf argument
                                  # may be packed as NEG_INF_ARG)
  distinct: tuple[tuple[Load, float], ...] = ()   # float32 main-term loads compared with an fp16 constant: packed only
                                                  # where no element rounds onto it (COMPARE_F32, program.Copy.distinct)

  @property
  def out_bytes(self) -> int: return 2 if self.lut is not None or self.out16 else 4

@dataclass
class Compiler:
  stages: list[Stage] = field(default_factory=list)
  indicators: set[int] = field(default_factory=set)   # stages whose result is exactly 0 or 1 (STEP_EXACT)

  def stage(self, st:Stage) -> Computed:
    for _, c in st.main.terms:
      if not abs(c) <= FP16_MAX: raise Unsupported(f"coefficient {c:g} is not finite in fp16")
    # a non-finite constant is exact only stored as it is (a fill); folded into other terms it could meet inf - inf
    if not math.isfinite(st.main.const) and (st.main.terms or st.ew_op or st.relu):
      raise Unsupported(f"constant {st.main.const:g} inside an expression")
    self.stages.append(st)
    return Computed(len(self.stages) - 1)

  def materialize(self, v:Value) -> Computed:
    """v as a stage result with no pending map."""
    if isinstance(v, Linear): return self.stage(Stage(v))
    if v.scale == 1 and v.shift == 0: return v
    m = v
    if v.scale != 1: m = self.stage(Stage(Linear(const=v.scale), ew_op="mul", operand=m.stage))
    if v.shift != 0: m = self.stage(Stage(Linear(const=v.shift), ew_op="add", operand=m.stage))
    return m

  def main_reader(self, si:int) -> int|None:
    """The stage that reads stage si's result as a main term, if one does."""
    return next((ci for ci, s in enumerate(self.stages) if any(t == si for t, _ in s.main.terms)), None)

  def narrow(self, v:Computed) -> Linear:
    """v as a main term: its stage's result in fp16, written into the reading stage's A block (emit_stages). A result
    another stage already reads as a main term gets a copy (a stage adding 0 to it: exact, one more task). Only a
    bounded result may be narrowed: fp16 overflow would turn a finite value into inf."""
    s = self.stages[v.stage]
    if s.bound is None or not s.bound <= FP16_MAX:
      # a product or sum of loads: the runner checks |result| <= 65504 from the packed operands (Guard with ew)
      if not self.guardable(v.stage): raise Unsupported("a computed value with no bound within fp16 (not a guardable op of loads) meets another one")
      s.guard16 = True
    si = v.stage
    # read elsewhere in fp32, or already a main term: a copy for this reader
    others = any(r.operand == si or (r.lut is not None and r.lut[0] == si) for r in self.stages) and s.out_bytes != 2
    if others or self.main_reader(si) is not None:
      if s.guard16 and s.bound is None: raise Unsupported("a guarded narrowed value read twice as a main term")
      si = self.stage(Stage(Linear(), ew_op="add", operand=si, out16=True, bound=s.bound)).stage
    else: s.out16 = True
    return Linear(((si, v.scale),), v.shift)

  def guardable(self, si:int) -> bool:
    """Whether a guard can bound stage si's result from its packed operands: an EW op of a linear form over loads and
    a load (Guard with ew)."""
    s = self.stages[si]
    return s.lut is None and (s.main.over_loads or not s.main.terms) and (s.operand is None or isinstance(s.operand, Load))

  def meet(self, x:Computed, y:Computed) -> tuple[Linear, Computed]:
    """Two computed values in one stage: (main term, EW operand). Narrowed is a side whose stage writes fp16 already (a
    table's result: no extra rounding, no extra task), else a bounded one whose pending shift would otherwise cost the
    EW operand a stage (an unbounded one only if a guard can check it); its fp16 rounding costs u16 relative to it (for a product: u16 relative to the product, either
    side alike; for softmax's exp(x - max) / sum the exp table's fp16 result is narrowed, costing nothing)."""
    def cost(v:Computed) -> tuple:
      s = self.stages[v.stage]
      return (s.bound is None and not self.guardable(v.stage), s.bound is None, s.out_bytes != 2 or self.main_reader(v.stage) is not None,
              v.shift == 0)
    n, o = sorted((x, y), key=cost)
    return self.narrow(n), o

  def operand(self, v:Value) -> tuple[Load|int, float, float]:
    """v as an EW operand (a load or a stage) and the affine map (a, b) with v = a * operand + b."""
    if isinstance(v, Computed): return v.stage, v.scale, v.shift
    if len(v.terms) == 1: return v.terms[0][0], v.terms[0][1], v.const
    return self.materialize(v).stage, 1.0, 0.0

  # value = op(l, a*x + b) with l linear and x the operand, as one stage and a pending map
  def add(self, x:Value, y:Value) -> Value:
    if isinstance(x, Linear) and isinstance(y, Linear): return x.plus(y)
    if isinstance(x, Computed) and isinstance(y, Computed): x, y = self.meet(x, y)
    l, m = (x, y) if isinstance(x, Linear) else (y, x)
    assert isinstance(l, Linear) and isinstance(m, Computed)
    if not l.terms: return replace(m, shift=m.shift + l.const)   # a constant offset: pending, no stage
    return Computed(self.stage(Stage(l.shifted(m.shift).scaled(1 / m.scale), ew_op="add", operand=m.stage)).stage, m.scale)

  def mul(self, x:Value, y:Value) -> Value:
    for a, b in ((x, y), (y, x)):
      if isinstance(b, Linear) and not b.terms:   # times a constant
        k = b.const
        if isinstance(a, Linear): return a.scaled(k)
        return Computed(a.stage, a.scale * k, a.shift * k) if k != 0 else Linear()
    if isinstance(x, Computed) and isinstance(y, Computed): x, y = self.meet(x, y)
    l, o = (x, y) if isinstance(x, Linear) else (y, x)
    assert isinstance(l, Linear)
    if isinstance(o, Linear) and o.plain_load is None and l.plain_load is not None: l, o = o, l
    src, a, b = self.operand(o)
    if b != 0: src, a, b = self.materialize(o).stage, 1.0, 0.0
    return Computed(self.stage(Stage(l, ew_op="mul", operand=src)).stage, a)

  def neg(self, x:Value) -> Value: return self.mul(x, Linear(const=-1.0))

  def max(self, x:Value, y:Value) -> Value:
    if isinstance(x, Computed) and isinstance(y, Computed): x, y = self.meet(x, y)
    if isinstance(x, Computed) or (isinstance(y, Linear) and not y.terms): x, y = y, x
    assert isinstance(x, Linear)       # x linear; y computed, or linear with terms unless both are constants
    if isinstance(y, Linear) and not x.terms:
      if not y.terms: return Linear(const=max(x.const, y.const))
      # max(l, c) = relu(l - c) + c: the BS stage's ReLU, c pending
      return Computed(self.stage(Stage(y.shifted(-x.const), relu=True)).stage, 1.0, x.const)
    src, a, b = self.operand(y)
    # max(l, a*o + b) = a * max((l - b)/a, o) + b, a min when a < 0
    return Computed(self.stage(Stage(x.shifted(-b).scaled(1 / a), ew_op="max" if a > 0 else "min", operand=src)).stage, a, b)

  def leaky(self, u:Value, a:float) -> Value:
    """where(u < 0, a*u, u): max(u, a*u) for a <= 1, min(u, a*u) for a >= 1 (LEAKY_AS_MAX). The EW operand is u itself
    (a load, or u computed by its own stage when it is any other linear form: no pending map to apply after the max),
    the main term a*u (the CORE's product of fp16 a and the fp16 operands, exact in fp32); a computed u meets a*u as
    any two computed values do (Compiler.meet narrows one)."""
    if not math.isfinite(a): raise Unsupported(f"a leaky ReLU of slope {a}")
    if a == 1: return u
    au = self.mul(u, Linear(const=a))
    if isinstance(u, Linear) and u.terms and u.plain_load is None: u = self.materialize(u)
    return self.max(au, u) if a < 1 else self.neg(self.max(self.neg(au), self.neg(u)))

  @staticmethod
  def linear(e) -> bool:
    """Whether e compiles to a linear form with terms (a scratch compiler: no stage is left behind)."""
    try: v = Compiler().value(e)
    except Unsupported: return False
    return isinstance(v, Linear) and bool(v.terms)

  def prelu(self, u:Value, k:Value) -> Value:
    """where(u < 0, k*u, u) for a varying slope k (PRELU_SPLIT): relu(u) + (-k) relu(-u), three stages. u and k linear
    forms: each stage reads them through the CORE (no narrowing of a computed value, which would round k*u twice)."""
    if not (isinstance(u, Linear) and u.terms and isinstance(k, Linear) and k.terms):
      raise Unsupported("a PReLU whose input or slope is a computed value (PRELU_SPLIT takes linear forms of loads)")
    neg = self.stage(Stage(u.scaled(-1.0), relu=True))                                  # relu(-u) = -min(u, 0)
    kneg = self.stage(Stage(k.scaled(-1.0), ew_op="mul", operand=neg.stage))            # k min(u, 0)
    return self.stage(Stage(u, relu=True, ew_op="add", operand=kneg.stage))             # relu(u) + k min(u, 0)

  def value(self, e) -> Value:
    e = strip_cast(e)
    if isinstance(e, Const):
      if isinstance(e.value, bool) or not isinstance(e.value, (int, float)): raise Unsupported(f"a {type(e.value).__name__} constant")
      return Linear(const=float(e.value))
    if isinstance(e, Load):
      if e.dtype == dtypes.bool: return Linear(((e, 1.0),))   # packed as fp16 0/1, exactly (a mask: STORED_BOOL)
      if e.dtype not in FLOATS: raise Unsupported(f"loads {e.dtype} (only float16/float32/bool operands)")
      if e.pad is not None and not math.isfinite(e.pad): raise Unsupported(f"padding value {e.pad}")
      return Linear(((e, 1.0),))
    if isinstance(e, Reduce): raise Unsupported("a reduction")
    assert isinstance(e, Alu)
    if e.dtype == dtypes.bool: return self.predicate(e)
    op, src = e.op, e.src
    # where(c, k1, k2) of two constants is typed weakfloat (tinygrad's untyped constants) and cast after: it selects a
    # constant, exactly the fp16 value fp16_side requires, which any float cast keeps
    weak_select = op is Ops.WHERE and e.dtype == dtypes.weakfloat and all(isinstance(strip_cast(x), Const) for x in src[1:])
    if e.dtype not in FLOATS and not weak_select: raise Unsupported(f"computes in {e.dtype}")
    if op is Ops.WHERE and isinstance(cond := strip_cast(src[0]), Alu) and cond.op is Ops.CMPLT:
      # clamp and relu: where(x < y, y, x) = max(x, y), where(x < y, x, y) = min(x, y) (NaN operands never reach the
      # NPU: the runner sends them to the C code)
      u, v = (strip_cast(s) for s in cond.src)
      p, q = strip_cast(src[1]), strip_cast(src[2])
      if (p, q) == (v, u): return self.max(self.value(u), self.value(v))
      if (p, q) == (u, v): return self.neg(self.max(self.neg(self.value(u)), self.neg(self.value(v))))
      if (lk := leaky_arg(e)) is not None: return self.leaky(self.value(lk[0]), lk[1])
      if (pk := prelu_arg(e)) is not None: return self.prelu(self.value(pk[0]), self.value(pk[1]))
      return self.select(cond, src[1], src[2])
    # any other condition (!=, ==, a stored bool, NOT, AND, OR): a select if it is one (a scratch compiler leaves no
    # stage behind), else the WHERE may still be a table of its one load (the select's reason if not)
    refused: Unsupported|None = None
    if op is Ops.WHERE:
      try: Compiler().select(strip_cast(src[0]), src[1], src[2])
      except Unsupported as ex: refused = ex
      else: return self.select(strip_cast(src[0]), src[1], src[2])
    if op is Ops.ADD and (clip := self.relu_difference(src[0], src[1])) is not None: return clip
    if op is Ops.ADD and (pk := prelu_sum_arg(e)) is not None and self.linear(pk[0]) and self.linear(pk[1]):
      return self.prelu(self.value(pk[0]), self.value(pk[1]).scaled(-pk[2]))
    if op is Ops.ADD: return self.add(self.value(src[0]), self.value(src[1]))
    if op is Ops.SUB: return self.add(self.value(src[0]), self.neg(self.value(src[1])))
    if op is Ops.MUL: return self.mul(self.value(src[0]), self.value(src[1]))
    if op is Ops.NEG: return self.neg(self.value(src[0]))
    if op is Ops.MAX: return self.max(self.value(src[0]), self.value(src[1]))
    # 1/x and 1/sqrt(x) refined by Newton steps before any plain table: 2^-12 relative where a table holds 2^-9 of its peak
    if op is Ops.RECIPROCAL and isinstance(a := strip_cast(src[0]), Alu) and a.op is Ops.SQRT and (r := self.newton("rsqrt", a.src[0])) is not None:
      return r
    if op is Ops.RECIPROCAL and (r := self.newton("reciprocal", src[0])) is not None: return r
    if (t := self.table(e)) is not None: return t
    if op in UNARY_TABULABLE and (t := self.table_of_linear(e)) is not None: return t
    if refused is not None: raise refused
    raise Unsupported(f"{op.name} (no DPU lowering for it here; not a tabulable function of one operand)")

  def indicator(self, v:Value) -> tuple[Load|int, bool]|None:
    """(r, negated) when v is exactly 0/1: r an exact 0/1 stage result (STEP_EXACT) or a stored bool (STORED_BOOL),
    v = r or (negated) v = 1 - r."""
    if isinstance(v, Linear) and len(v.terms) == 1 and isinstance(ld := v.terms[0][0], Load) and ld.dtype == dtypes.bool:
      if (v.terms[0][1], v.const) == (1.0, 0.0): return ld, False
      if (v.terms[0][1], v.const) == (-1.0, 1.0): return ld, True
      return None
    if not isinstance(v, Computed) or v.stage not in self.indicators: return None
    if (v.scale, v.shift) == (1.0, 0.0): return v.stage, False
    if (v.scale, v.shift) == (-1.0, 1.0): return v.stage, True
    return None

  def as_indicator(self, v:Value) -> Value:
    """v (a 0/1 value) with a stage result or a stored bool as its indicator: a pending map other than r or 1 - r is
    applied by stages first (exact: a 0/1 value times or plus a constant 0/1 value)."""
    if self.indicator(v) is not None: return v
    m = v if isinstance(v, Computed) and (v.scale, v.shift) in ((1.0, 0.0), (-1.0, 1.0)) else self.materialize(v)
    self.stages[m.stage].bound = 1.0   # its result is v or 1 - v: 0/1 as well (a bound: narrowing it needs no guard)
    self.indicators.add(m.stage)
    return m

  @staticmethod
  def exact16_load(e):
    """e without casts between float dtypes (a float16 value widened to float32 and back is itself)."""
    while isinstance(e, Alu) and e.op is Ops.CAST and e.dtype in FLOATS: e = e.src[0]
    return e

  @staticmethod
  def fp16_side(e) -> Linear:
    """A comparison's or select's operand as an exact fp16 value: a float16 load (widened to float32 or not), a stored
    bool (0/1, STORED_BOOL) or an fp16-representable constant."""
    if isinstance(ld := Compiler.exact16_load(e), Load) and ld.dtype in (dtypes.float16, dtypes.bool) and \
       (ld.pad is None or float(np.float16(ld.pad)) == ld.pad):
      return Linear(((ld, 1.0),))
    if isinstance(ld := strip_cast(e), Load) and ld.dtype == dtypes.float32:
      raise Unsupported("a comparison or where() of float32 operands (the NPU would compare and select their fp16 roundings)")
    if isinstance(e, Const) and not isinstance(e.value, bool) and isinstance(e.value, (int, float)):
      if abs(e.value) <= FP16_MAX and float(np.float16(e.value)) == e.value: return Linear(const=float(e.value))
      raise Unsupported(f"a comparison or where() operand that is not a float16 load or an fp16 constant ({e.value!r} is "
                        "not a finite fp16 value: the NPU would use its rounding)")
    raise Unsupported("a comparison or where() operand that is not a float16 load or an fp16 constant (STEP_EXACT, SELECT_EXACT)")

  def branch(self, e) -> Linear:
    """A select's branch as a linear form: an exact fp16 value (fp16_side), or a float32 load, packed rounded to fp16
    as every float32 operand of this rule is (2^-11 relative, as in add and mul; the selection itself adds nothing)."""
    if isinstance(ld := strip_cast(e), Load) and ld.dtype == dtypes.float32:
      v = self.value(ld)
      assert isinstance(v, Linear)
      return v
    return self.fp16_side(strip_cast(e))

  def exact16(self, v:Linear) -> Linear:
    """v (fp16_side) as a linear form with no constant: a nonzero constant becomes a main term, its own fp16 stage (the
    BS ALU would meet the step's MUL, whose order is unconfirmed)."""
    if v.terms or v.const == 0: return v
    return self.narrow(self.stage(Stage(Linear(const=v.const), bound=abs(v.const))))

  def compared(self, u, v) -> tuple[Linear, Linear, tuple[tuple[Load, float], ...]]:
    """A comparison's two sides as exact fp16 values (fp16_side), or a float32 load and an fp16 constant (COMPARE_F32:
    the load with the constant its packing must not round onto)."""
    for a, b, flip in ((u, v, False), (v, u, True)):
      if isinstance(ld := strip_cast(a), Load) and ld.dtype == dtypes.float32 and ld.pad is None and isinstance(b, Const):
        k = self.fp16_side(b)
        x = self.value(ld)
        assert isinstance(x, Linear)
        return (k, x, ((ld, k.const),)) if flip else (x, k, ((ld, k.const),))
    return self.fp16_side(u), self.fp16_side(v), ()

  def step(self, x:Linear, y:Linear, plus:int|None=None, distinct:tuple[tuple[Load, float], ...]=()) -> Computed:
    """x < y as exactly 0 or 1 (STEP_EXACT), plus the 0/1 stage `plus` through the EW add if given (x != y: at most one
    of the two steps is 1, so the sum is 0/1 too)."""
    d = self.exact16(y).plus(self.exact16(x).scaled(-1.0)).scaled(STEP_CORE)
    assert d.const == 0
    st = self.stage(Stage(d, relu=True, clip=1.0, mul=STEP_BS, ew_op="add" if plus is not None else None, operand=plus, bound=1.0,
                          distinct=distinct))
    self.indicators.add(st.stage)
    return st

  @staticmethod
  def negate(v:Value) -> Value:
    """1 - v."""
    return v.scaled(-1.0).shifted(1.0) if isinstance(v, Linear) else Computed(v.stage, -v.scale, 1.0 - v.shift)

  def predicate(self, e) -> Value:
    """A bool expression as an exact 0/1 value: a comparison of fp16 values (STEP_EXACT), a stored bool (STORED_BOOL),
    NOT (1 - r: a pending map), AND (r*s: an EW mul of 0/1 values) and OR (max(r, s)) of those."""
    if isinstance(e, Load) and e.dtype == dtypes.bool: return self.value(e)
    if isinstance(e, Alu) and e.op in (Ops.AND, Ops.OR):
      x, y = self.predicate(e.src[0]), self.predicate(e.src[1])
      return self.as_indicator(self.mul(x, y) if e.op is Ops.AND else self.max(x, y))
    if not (isinstance(e, Alu) and e.op in (Ops.CMPLT, Ops.CMPNE, Ops.CMPEQ)):
      raise Unsupported(f"a bool {e.op.name if isinstance(e, Alu) else type(e).__name__} (only comparisons of float16 values, "
                        "stored bools, and NOT/AND/OR of those)")
    u, v = e.src
    if e.op is not Ops.CMPLT and any(isinstance(s, Const) and s.dtype == dtypes.bool for s in (u, v)):   # NOT: c != True, c == False
      k, c = (u, v) if isinstance(u, Const) else (v, u)
      r = self.predicate(c)
      return r if bool(k.value) == (e.op is Ops.CMPEQ) else self.negate(r)
    x, y, dist = self.compared(u, v)
    if e.op is Ops.CMPLT: return self.step(x, y, distinct=dist)
    ne = self.step(y, x, plus=self.step(x, y, distinct=dist).stage, distinct=dist)   # (x < y) + (y < x)
    return ne if e.op is Ops.CMPNE else Computed(ne.stage, -1.0, 1.0)

  # SELECT_FORMS: where(c, p, q) for an exact 0/1 indicator r of c (1 - r swaps p and q) and p, q fp16 values (loads
  # or fp16 constants; a float32 load is its fp16 rounding, Compiler.branch), as the sum of
  #   gate(r, p) = r*p and gate_not(r, q) = (1 - r)*q:
  # at every element one of them is +-0 and the other p or q exactly, so their one fp32 add is exact.
  #   r*p, p a load: the EW mul of the fp16 p (through the CORE: times 1, exact) and r, so p or +-0.
  #   r*k, k a constant: a pending map of r's stage (or the CORE's k*r for a stored bool r): k*1 and k*0 are exact.
  #   (1 - r)*q, r a stored bool: the CORE's 1*(-r) plus the BS constant 1 is 1 or 0 exactly, times q (EW mul) or k
  #     (the CORE's -k*r plus k: k - k = 0 and k, exact).
  #   (1 - r)*q, r a stage: q - q*r, two stages (EW mul by r, then the EW add of q); q - q = 0 and q - 0 = q, exact.
  #   (1 - r)*k, r a stage: the pending map k - k*r (materialized: a mul and an add stage, each exact as above).
  # A zero branch drops its term (q = 0: r*p, one stage, a pending map for a constant p). Both constants: q + (p - q) r,
  # one stage (a pending map for a stage r) when p - q is an fp16 value: its CORE weight (or scale) is exact, and the
  # sum q + (p - q) = p is an fp16 value, which the fp32 add returns exactly. A branch whose constant is not an fp16
  # value (0.1, -inf: masked_fill(m, -inf)) is refused (fp16_side): the NPU would select its rounding. Zeros: where the
  # CPU selects +0 the NPU may give -0 (r*p with p < 0 and r = 0), equal in value, as the WHERE's own operands compare.
  # NaN/inf branches never reach the NPU (0 * inf is NaN): the runner sends such calls to the C code.
  def gate(self, r:Load|int, v:Linear) -> Value:
    """r*v exactly (SELECT_FORMS)."""
    if not v.terms: return Linear(((r, v.const),)) if isinstance(r, Load) else Computed(r, v.const)
    return self.stage(Stage(v, ew_op="mul", operand=r, bound=FP16_MAX))

  def gate_not(self, r:Load|int, v:Linear) -> Value:
    """(1 - r)*v exactly (SELECT_FORMS)."""
    if isinstance(r, Load):
      if not v.terms: return Linear(((r, -v.const),), v.const)
      return self.stage(Stage(Linear(((r, -1.0),), 1.0), ew_op="mul", operand=self.operand(v)[0], bound=FP16_MAX))
    if not v.terms: return Computed(r, -v.const, v.const)
    rq = self.stage(Stage(v.scaled(-1.0), ew_op="mul", operand=r))                       # -q*r
    return self.stage(Stage(v, ew_op="add", operand=rq.stage, bound=FP16_MAX))           # q - q*r

  def exact_sum(self, x:Value, y:Value) -> Computed:
    """x + y for two gated values (SELECT_FORMS: one of them is +-0 at every element) in one EW add: a linear one
    through the CORE, else one narrowed to fp16 (exact: it is a branch value or 0, bound by FP16_MAX)."""
    if isinstance(x, Computed) and isinstance(y, Linear): x, y = y, x
    if isinstance(x, Linear): return self.stage(Stage(x, ew_op="add", operand=self.materialize(y).stage))
    xs, ys = self.materialize(x), self.materialize(y)
    if self.stages[xs.stage].bound is None: self.stages[xs.stage].bound = FP16_MAX   # a constant branch times r
    return self.stage(Stage(self.narrow(xs), ew_op="add", operand=ys.stage))

  def select(self, cond, p, q) -> Value:
    """where(cond, p, q) for an exact 0/1 condition (SELECT_FORMS)."""
    ind = self.indicator(self.predicate(cond))
    if ind is None: raise Unsupported("a WHERE whose condition is not a comparison of float16 values or a stored bool")
    r, negated = ind
    pv, qv = self.branch(p), self.branch(q)
    if negated: pv, qv = qv, pv
    if not qv.terms and qv.const == 0: return self.gate(r, pv)
    if not pv.terms and pv.const == 0: return self.gate_not(r, qv)
    if not (pv.terms or qv.terms) and abs(d := pv.const - qv.const) <= FP16_MAX and float(np.float16(d)) == d:
      return Linear(((r, d),), qv.const) if isinstance(r, Load) else Computed(r, d, qv.const)   # q + (p - q) r
    return self.exact_sum(self.gate(r, pv), self.gate_not(r, qv))

  def table_of_linear(self, e:Alu) -> Computed|None:
    """op(l) for a linear l over loads, with a guarded table of op over l's range: l is computed to fp16 by one stage
    (the guard keeps it inside the table's domain, so it cannot overflow), then looked up."""
    arg = self.value(e.src[0])
    if not isinstance(arg, Linear) or not arg.over_loads: return None
    t = pick_table(lambda x: eval_expr(Alu(e.op, (Load(-1, e.dtype, 0, None),), e.dtype), Load(-1, e.dtype, 0, None), x), e.op.name.lower(),
                   signed_ok=arg.plain_load is not None)
    # an fp16 stage's padding elements hold its constant: only a table whose decode is unsigned (OUT_CVT_OFFSET >= 0)
    # takes any input; a signed one would meet the board's x ~ 0 spike there (rocket_fp16_ew_ppu.md §4.6)
    if t is None or (arg.plain_load is None and t.out_offset < 0): return None
    src: Load|int = arg.plain_load if arg.plain_load is not None else self.stage(Stage(arg, out16=True)).stage
    return self.stage(Stage(Linear(), lut=(src, t), guard=None if t.domain == (-math.inf, math.inf) else arg, bound=lut_bound(t),
                            saturates=_saturates(lambda x: eval_expr(Alu(e.op, (Load(-1, e.dtype, 0, None),), e.dtype), Load(-1, e.dtype, 0, None), x), t)))

  def newton(self, kind:str, x) -> Computed|None:
    """1/l ("reciprocal") or 1/sqrt(l) ("rsqrt") for a linear l over loads: a guarded table seed y0 (the guard keeps l in
    the seed's domain) and Newton steps, rules/tables.py (newton) for the derivation and the measured error. Per step:
      reciprocal: p = -l * y (fp32), e = 1 + p narrowed to fp16 (small: its rounding costs u16 |e|), y' = (1 + e) * y
                  (e a main term, y the EW operand: y stays fp32 from the second step on);
      rsqrt:      p = -l * y, q = y * p (y a main term: fp16, so the steps before the last narrow y'), e = 1 + q narrowed
                  to fp16, y' = (1 + e/2) * y.
    For l not a plain load, the seed reads l narrowed to fp16 while p reads l itself: the seed is off by one more fp16
    rounding, which the steps square away. The seed holds c y0 (c = the window's seed_scale, a power of 2): the first
    step's coefficients divide c out (p: -l/c, rsqrt -l/c^2; y': 1/c), exactly, so its roundings are those of c = 1."""
    try: probe = Compiler().value(x)   # a scratch compiler: a non-linear argument must leave no stage behind
    except Unsupported: return None
    if not isinstance(probe, Linear) or not probe.over_loads or (nt := newton(kind)) is None: return None
    arg = self.value(x)
    assert isinstance(arg, Linear)
    src: Load|int = arg.plain_load if arg.plain_load is not None else self.stage(Stage(arg, out16=True)).stage
    top = 1 / nt.domain[0] if kind == "reciprocal" else 1 / math.sqrt(nt.domain[0])   # the largest result
    y = self.stage(Stage(Linear(), lut=(src, nt.table), guard=arg, bound=lut_bound(nt.table)))
    for k in range(nt.steps):
      c = nt.seed_scale if k == 0 else 1.0
      k_p = -1.0 / (c if kind == "reciprocal" else c * c)
      if c != 1 and not all(_scales16(w, k_p) for _, w in arg.terms): raise Unsupported(f"{kind} seed scale {c:g}: a coefficient leaves fp16's normal range")
      p = self.stage(Stage(arg.scaled(k_p), ew_op="mul", operand=y.stage))
      if kind == "reciprocal":
        d = self.stage(Stage(Linear(const=1.0), ew_op="add", operand=p.stage, out16=True, bound=1.0))
        y = self.stage(Stage(Linear(((d.stage, 1.0 / c),), 1.0 / c), ew_op="mul", operand=y.stage, bound=top * (1 + nt.errors[k + 1])))
      else:
        q = self.stage(Stage(Linear(((y.stage, 1.0),)), ew_op="mul", operand=p.stage))
        d = self.stage(Stage(Linear(const=1.0), ew_op="add", operand=q.stage, out16=True, bound=1.0))
        y = self.stage(Stage(Linear(((d.stage, 0.5 / c),), 1.0 / c), ew_op="mul", operand=y.stage, out16=k < nt.steps - 1,
                             bound=top * (1 + nt.errors[k + 1])))
    return y

  def relu_difference(self, p, q) -> Computed|None:
    """relu(l) - relu(l - c) with l linear and c > 0 is clamp(l, 0, c): one stage with the BS ReLUX. tinygrad writes
    relu6 (and hardswish's) this way, with l - c's constants already folded, so the match is on the linear forms."""
    for a, b in ((p, q), (q, p)):
      x, neg = relu_arg(a), strip_cast(b)
      if x is None or not (isinstance(neg, Alu) and neg.op is Ops.MUL): continue
      ks = [t for t in neg.src if isinstance(strip_cast(t), Const)]
      if len(ks) != 1 or strip_cast(ks[0]).value != -1: continue
      y = relu_arg(next(t for t in neg.src if t is not ks[0]))
      if y is None: continue
      try: lx, ly = Compiler().value(x), Compiler().value(y)   # linear forms only: a scratch compiler adds no stage
      except Unsupported: continue
      if isinstance(lx, Linear) and isinstance(ly, Linear) and lx.terms and lx.terms == ly.terms and lx.const - ly.const > 0:
        return self.stage(Stage(lx, relu=True, clip=lx.const - ly.const))
    return None

  def table(self, e:Alu) -> Computed|None:
    """e as a lookup table of its only operand, if it has one and some interval gives a table exact on every input."""
    loads = set(_loads(e))
    if len(loads) != 1: return None
    ld = loads.pop()
    if ld.dtype not in FLOATS or ld.valid: return None
    t = pick_table(lambda x: eval_expr(e, ld, x), e.op.name.lower(), signed_ok=True)   # padding: a value inside (emit_stages)
    if t is None: return None
    return self.stage(Stage(Linear(), lut=(ld, t), guard=None if t.domain == (-math.inf, math.inf) else Linear(((ld, 1.0),)),
                            bound=lut_bound(t), saturates=_saturates(lambda x: eval_expr(e, ld, x), t)))

def _saturates(fn, t:LutTable) -> bool:
  """Whether fn (float64) equals its finite limit at -inf already at NEG_INF_ARG, inside the table's domain."""
  with np.errstate(all="ignore"): v = np.asarray(fn(np.array([NEG_INF_ARG, -math.inf])), np.float64)
  return bool(t.domain[0] <= NEG_INF_ARG and np.isfinite(v).all() and v[0] == v[1])

def _neg_inf_args(stages:list[Stage]) -> dict[tuple[int, Load], Linear]:
  """(stage, load) -> the table argument (a Linear with a positive coefficient of the load) for each load packed with a
  -inf stand-in (NEG_INF_ARG): used only there, as a saturating table's argument or a term of it."""
  uses: dict[Load, list[int]] = {}
  for si, s in enumerate(stages):
    for x in [t for t, _ in s.main.terms] + [s.operand, s.lut[0] if s.lut else None]:
      if isinstance(x, Load): uses.setdefault(x, []).append(si)
  out: dict[tuple[int, Load], Linear] = {}
  for si, s in enumerate(stages):
    if s.lut is None or not s.saturates: continue
    src = s.lut[0]
    if isinstance(src, Load): cands = [(si, src, Linear(((src, 1.0),)))]
    else:
      arg = stages[src]
      readers = [r for r in stages if r.operand == src or (r.lut is not None and r.lut[0] == src) or any(t == src for t, _ in r.main.terms)]
      if not (arg.out16 and arg.operand is None and not arg.relu and arg.main.over_loads and len(readers) == 1): continue
      cands = [(src, ld, arg.main) for ld, c in arg.main.terms if c > 0]
    for st, ld, lin in cands:
      if uses[ld] == [st] and all(not t.valid for t, _ in lin.terms if t != ld): out[(st, ld)] = lin
  return out

def _neg_inf_standin(ld:Load, arg:Linear, pexpr) -> PExpr:
  """The value of `ld` that puts `arg` at NEG_INF_ARG: (NEG_INF_ARG - const - sum of the other terms) / ld's coefficient."""
  c = next(k for t, k in arg.terms if t == ld)
  e: PExpr = ("const", (NEG_INF_ARG - arg.const) / c)
  for t, k in arg.terms:
    if t != ld: e = ("ADD", "float64", e, ("MUL", "float64", ("const", -k / c), pexpr(t)))
  return e

def _scales16(w:float, k:float) -> bool:
  """Whether the fp16 weight of coefficient w times the power of 2 k is the fp16 weight of w k (both normal): then the
  CORE's product is the unscaled one times k, exactly."""
  w16, wk16 = float(np.float16(w)), float(np.float16(w * k))
  return w16 * k == wk16 and all(v == 0 or 2.0 ** -14 <= abs(v) <= FP16_MAX for v in (w16, wk16))

def _loads(e) -> list[Load]:
  if isinstance(e, Load): return [e]
  return [ld for s in e.src for ld in _loads(s)] if isinstance(e, Alu) else []

def compile_stages(nest:LoopNest) -> list[Stage]|str:
  c = Compiler()
  try:
    if nest.out_dtype not in OUT_DTYPES: return f"writes {nest.out_dtype} (only float16/float32/bool results)"
    out = c.value(nest.value)
    last = c.materialize(out)
    assert last.stage == len(c.stages) - 1
  except Unsupported as e: return str(e)
  return c.stages

@dataclass(frozen=True)
class TileLayout:
  """Which kernel element each position of a stage tile holds. A tile is a cube of 16 fp16/fp32 lanes per row (two 8-lane
  surfaces of `rows` rows, the stage matmul's output); as memory it is `surfaces` 8-lane surfaces of `height` rows back
  to back (surfaces * height = 2 * rows), and `grid(t)` is a Grid over (surfaces, height, 8) whose values recover the
  kernel's loop indices at each position of tile t. The elementwise rule lays elements out flat (2 surfaces of `rows`,
  16 consecutive elements per row); a contraction's computed operand uses its A tile's own surfaces, so the last stage
  writes that A tile as it is."""
  rows: int
  tiles: int
  surfaces: int
  grid: Callable[[int], Grid]
  count: Callable[[int], int]   # elements of tile t that a guard checks: positions s*height*8 + h*8 + lane below it
  first: Callable[[int], int]|None = None   # the program's element (NpuProgram.elements) at tile t's position 0, when
                                # tile positions are the program's elements (the flat layout: each is one output element)

  @property
  def height(self) -> int: return 2 * self.rows // self.surfaces

@dataclass
class StageCode:
  """The tasks, packing and guards of a list of stages over the tiles of a layout, in scratch slots of their own."""
  tasks: list                    # per tile: its tasks
  pack: list[Copy]
  guards: list[Guard]
  scratch: tuple[int, int, int]  # byte sizes of the A, B and C slots
  c_off: Callable[[int, int], int]   # (tile, stage) -> byte offset of the stage's result in the C slot

def emit_stages(sizes:dict[int, int], stages:list[Stage], lay:TileLayout, slots:tuple[int, int, int],
                out:Callable[[int], tuple[int, int]]|None=None) -> StageCode:
  """Conv-fed DPU tasks for `stages` over every tile of `lay`. Per stage and tile: its A tile (one 16-lane fp16 block per
  main term) and fp16 EW operand in slot A, its fp32 (or fp16) result in slot C; per stage its identity blocks in slot
  B. `out(t)`: (slot, byte offset) where tile t's last stage writes its result in fp16 instead of its C region.
  A stage whose fp16 result a later stage reads as main term i (Linear terms that are ints) writes it straight into that
  stage's A block at source i (the CNA reads it there); its other readers (EW operand, table input) read it there too."""
  rows, ntiles = lay.rows, lay.tiles
  K = align(max(LANES * max(len(s.main.terms) for s in stages), 1), K_ALIGN)
  tile = MatmulTile(rows, K, LANES)
  a_f, b_w, c_f = tile.a, tile.b, tile.c
  e_f = Feature(LANES, rows, 1, 2)
  A, B, C = slots
  a_sz, e_sz, b_sz, c_sz = a_f.nbytes, e_f.nbytes, b_w.elems * 2, c_f.nbytes
  per_tile = a_sz + e_sz
  c_off = lambda t, si: (t * len(stages) + si) * c_sz
  a_off = lambda t, si: (t * len(stages) + si) * per_tile
  mains: dict[int, tuple[int, int]] = {}   # stage -> (the stage reading it as a main term, which term)
  for ci, s in enumerate(stages):
    for i, (src, _) in enumerate(s.main.terms):
      if isinstance(src, int):
        assert src < ci and src not in mains and stages[src].out_bytes == 2, f"stage {src}: one fp16 result per main-term reader"
        mains[src] = (ci, i)
  def home(t:int, si:int) -> tuple[int, int]:
    """(slot, byte offset) of stage si's result in tile t."""
    if si in mains: return A, a_off(t, mains[si][0]) + 2 * mains[si][1] * rows * 16
    return C, c_off(t, si)
  pack: list[Copy] = []
  ng, kg = b_w.group
  st = b_w.grid_strides()
  for si, s in enumerate(stages):
    if s.lut is not None: continue
    # B: kernel j is coefficient c_i at channel 16*i + j (an identity block per source), zero elsewhere
    g = Grid((b_w.oc_padded // ng, b_w.ic_padded // kg, ng, kg), sizes, {})
    dst = Lin(st[:2] + st[4:], si * b_w.elems)
    pack.append(Copy(None, "float64", B, "float16", g.grid, (), Lin((0,)), dst, (NO_POINT,), fill=0.0))
    for i, (_, coeff) in enumerate(s.main.terms):
      diag = Bound(Lin((-ng, kg, -1, 1), -LANES * i), 0, 1)   # k - n == 16*i, k = 32*k1 + k2, n = 16*n1 + n2
      pack.append(Copy(None, "float64", B, "float16", g.grid, (), Lin((0,)), dst, (diag,), fill=None, value=("intercept", ("const", coeff))))
  neg_inf = _neg_inf_args(stages)
  def gather(ld:Load, t:int, off:int, si:int, fill:float|None=None) -> Copy:
    """Load `ld` (read by stage si) over tile t's positions as an fp16 cube at byte `off` of slot A, with the checks and
    stand-ins its stage asks for (COMPARE_F32, NEG_INF_ARG)."""
    g = lay.grid(t)
    c = replace(g.copy(ld, A, Lin((lay.height * 8, 8, 1), off // 2)),
                fill=fill if fill is not None else float(ld.pad) if ld.pad is not None else 0.0, distinct=dict(stages[si].distinct).get(ld))
    if (arg := neg_inf.get((si, ld))) is None: return c
    return replace(c, neg_inf=_neg_inf_standin(ld, arg, g.pexpr), params=tuple(sorted({x.slot for x, _ in arg.terms if x != ld})))
  tasks: list[list] = []
  guards: list[Guard] = []
  first = lambda t: lay.first(t) if lay.first is not None else None   # a guard's elements are tile t's positions, laid out as the gathers' cubes
  for t in range(ntiles):
    tt: list = []
    for si, s in enumerate(stages):
      a_o = a_off(t, si)
      last = si == len(stages) - 1 and out is not None
      dst_slot, dst_off = out(t) if last else home(t, si)
      if s.lut is not None:   # x as the tile's 16-lane fp16 cube; the table is elementwise, so the result is too
        src, table = s.lut
        if isinstance(src, Load):   # padding elements get a value inside the table's interval
          pack.append(gather(src, t, a_o, si, fill=_inside(table.lo, table.hi)))
          x_slot, x_off = A, a_o
        else: x_slot, x_off = home(t, src)
        tt += lut_tasks(rows * LANES, table, x_slot, x_off, dst_slot, dst_off)
        if s.guard is not None:   # the argument's operands: the load itself, or the fp16 stage's A columns
          g_off = a_o if isinstance(src, Load) else a_off(t, src)
          terms = ((g_off, 1.0),) if isinstance(src, Load) else \
                  tuple((g_off + 2 * i * rows * 16, float(np.float16(c))) for i, (_, c) in enumerate(s.guard.terms))
          guards.append(Guard(A, rows, lay.count(t), terms, 0.0 if isinstance(src, Load) else s.guard.const,
                              table.domain[0], table.domain[1], f"the argument of lut({table.name}) in its domain {table.domain}",
                              first=first(t)))
        continue
      for i, (ld, _) in enumerate(s.main.terms):   # source i: A channels 16*i + lane, surfaces 2i, 2i+1
        if isinstance(ld, Load): pack.append(gather(ld, t, a_o + 2 * i * rows * 16, si))   # (an int: its stage writes it)
      if not s.main.terms:  # a constant stage: the CORE multiplies zeros
        g = Grid((a_f.c1, rows, a_f.c2), sizes, {})
        pack.append(Copy(None, "float64", A, "float16", g.grid, (), Lin((0,)), Lin((rows * a_f.c2, a_f.c2, 1), a_o // 2),
                         (NO_POINT,), fill=0.0))
      ew = None
      if isinstance(s.operand, Load):
        e_off = a_o + a_sz
        pack.append(gather(s.operand, t, e_off, si))
        ew = EwOperand(s.ew_op, A, e_off, 2)
      elif s.operand is not None:
        ew = EwOperand(s.ew_op, *home(t, s.operand), stages[s.operand].out_bytes)
      if s.guard16:   # its fp16 result must be finite: |result| from the packed operands (Guard with ew)
        guards.append(Guard(A, rows, lay.count(t), tuple((a_o + 2 * i * rows * 16, float(np.float16(c))) for i, (_, c) in enumerate(s.main.terms)),
                            s.main.const, -FP16_MAX, FP16_MAX, f"stage {si}'s result narrowed to fp16 within its range",
                            ew=(s.ew_op, a_o + a_sz) if isinstance(s.operand, Load) else None, first=first(t)))
      assert s.mul is None or s.main.const == 0, "the BS ALU and MUL together: order unconfirmed (XStageOp)"
      bs = XStageOp(mul=s.mul, add=s.main.const if s.main.const != 0 else None, relu=s.relu, clip=s.clip)
      tt.append(matmul_task(tile, A, a_o, B, si * b_sz, dst_slot, dst_off, bs=bs, ew=ew, out_fp16=s.out16 or last))
    tasks.append(tt)
  return StageCode(tasks, pack, guards, (ntiles * len(stages) * per_tile, len(stages) * b_sz, ntiles * len(stages) * c_sz), c_off)

def _inside(lo:float, hi:float) -> float:
  """A value well inside [lo, hi] (0 if it is in it): padding elements of a table's input, which a guard over a layout
  with padding (a contraction's computed operand) checks too, so not on an edge the guard pulls in."""
  if lo <= 0.0 <= hi: return 0.0
  return (lo + hi) / 2 if math.isfinite(lo) and math.isfinite(hi) else lo + 1.0 if math.isfinite(lo) else hi - 1.0

def stage_ops(stages:list[Stage]) -> str:
  """What the stages do, for a program's summary."""
  nts = window_newtons()
  named = lambda t: next((f"{nt.kind}(seed on {nt.domain} + {nt.steps} Newton steps, rel error {nt.rel_error:.2g})" for nt in nts if t == nt.table), None)
  ops = [named(s.lut[1]) or f"lut({s.lut[1].name}, error {s.lut[1].max_abs_error:.2g})" for s in stages if s.lut] + [f"{s.ew_op}" for s in stages if s.ew_op] + \
        [f"clip(0, {s.clip:g})" if s.clip is not None else "relu" for s in stages if s.relu]
  return ", ".join(ops)

def compile_operand(e) -> list[Stage]|str:
  """Stages computing e (an elementwise expression of loads) whose last one's result is e in fp16: a contraction's
  computed operand (emit_stages with `out` writes it into the operand's tiles)."""
  c = Compiler()
  try: c.materialize(c.value(e))
  except Unsupported as ex: return str(ex)
  return c.stages

def lower_elementwise(nest:LoopNest) -> NpuProgram|NotApplicable:
  if nest.reduce_ranges: return NotApplicable("a reduction (not elementwise)")
  # a copy (movement ops: contiguous, slices, permutes, casts) moves data only: the C code does it exactly, where the
  # NPU would round float32 to its fp16 operands
  if isinstance(strip_cast(nest.value), Load): return NotApplicable("a copy or cast: exact as the C code")
  if nest.precision == "fp32" and (nest.out_dtype == dtypes.float32 or any(ld.dtype == dtypes.float32 for ld in nest.loads)):
    return NotApplicable("ROCKET_PRECISION=fp32: float32 operands would be rounded to fp16 (the C code gives float32 accuracy)")
  stages = compile_stages(nest)
  if isinstance(stages, str): return NotApplicable(stages)
  sz = nest.ranges
  n = math.prod(sz[r] for r in nest.output_ranges)
  rows_total = ceil_div(n, LANES)
  K = align(max(LANES * max(len(s.main.terms) for s in stages), 1), K_ALIGN)
  plan = plan_tiles(max(rows_total, EW_MIN_PLANE_ATOMS), K, LANES)
  if isinstance(plan, str): return NotApplicable(plan)
  rows = max(min(plan[0], MAX_ROWS), EW_MIN_PLANE_ATOMS)
  tiles = ceil_div(rows_total, rows)
  if (ntasks := tiles * len(stages)) > MAX_TASKS: return NotApplicable(f"{ntasks} tasks (max {MAX_TASKS})")
  lay = TileLayout(rows, tiles, 2, lambda t: _flat_grid(nest, rows, t, n), lambda t: min(n - t * rows * LANES, rows * LANES),
                   lambda t: t * rows * LANES)
  code = emit_stages(sz, stages, lay, (SCRATCH, SCRATCH + 1, SCRATCH + 2))
  unpack = tuple(_scatter(nest, SCRATCH + 2, code.c_off(t, len(stages) - 1), rows, t, n, stages[-1].out_bytes) for t in range(tiles))
  ops = stage_ops(stages)
  summary = (f"elementwise over {n} elements: {len(stages)} stage(s) x {tiles} tile(s) of {rows}x{LANES} as DPU "
             f"tasks (fp32 results{'; ' + ops if ops else ''})")
  return NpuProgram(nest.name, summary, code.scratch, regs.assemble([x for tt in code.tasks for x in tt]), tuple(code.pack), unpack,
                    macs=0, guards=tuple(code.guards), elements=n)

def _element(rows:int, tile:int, c2:int) -> Lin:
  """The element (16*row + c2*surface + lane, + the tile's first element) at each point of tile `tile`'s cube (16/c2
  surfaces, rows, c2 lanes: 8 fp16, 4 fp32): the output elements, output ranges row-major. Guards number a tile's
  positions the same way (16*row + 8*surface + lane: program.Guard), so tile t's guard element e is element t*rows*16 + e."""
  return Lin((c2, LANES, 1), tile * rows * LANES)

def _flat_grid(nest:LoopNest, rows:int, tile:int, n:int, c2:int=8) -> Grid:
  """A grid over one tile's cube whose linear position (_element) enumerates the output elements and recovers each
  output range."""
  g = Grid((LANES // c2, rows, c2), nest.ranges, {})
  e = _element(rows, tile, c2)
  g.linear(e.coeffs, e.const, list(nest.output_ranges), n)
  return g

def _scatter(nest:LoopNest, src:int, off:int, rows:int, tile:int, n:int, nbytes:int) -> Copy:
  """A tile's result cube (16 channels, rows, 1; fp32 or a table's fp16) at byte `off` of `src` -> the kernel's output."""
  f = Feature(LANES, rows, 1, nbytes)
  g = _flat_grid(nest, rows, tile, n, f.c2)
  return replace(g.copy(None, nest.out_slot, g.lin(nest.out_index), fill=None), src=src, src_dtype="float32" if nbytes == 4 else "float16",
                 dst_dtype=OUT_DTYPES[nest.out_dtype], src_index=Lin((rows * f.c2, f.c2, 1), off // nbytes), element=_element(rows, tile, f.c2))
