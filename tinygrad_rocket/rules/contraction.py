"""Contractions: out[batch, m, n] = sum_k A[batch, m, k] * B[batch, k, n], on the NPU as fp16 matmul tiles.

Any kernel whose value is REDUCE(ADD) of a product of two loads is one: matmul, batched matmul, linear layers,
conv1d/conv2d of any stride, padding, dilation and groups (packing gathers the im2col rows), and the weight and input
gradients of all of these. So is a sum of a computed value, or of a computed value times a load (softmax's sum of
exp(x - max), a variance, relu(x) @ w, attention's softmax @ V): A is then computed on the NPU by elementwise stages
(rules/elementwise.py) whose last one writes it in fp16 straight into A's tiles (_prologue), ahead of the matmul tasks. Which output loops are M (rows, only in A), N (kernels, only in B) or batch (in both) is
read off the affine index maps; the packing gathers A's rows and B's kernels into dense NPU tiles, so any affine
view is fine and the padding predicates become zero fill.

Epilogues fused into the same task. Any epilogue that is affine in the sum, s*acc + t, with s and t computed from
operands that vary only with the kernels (or only with the rows) — a bias, a scale, BatchNorm in eval form
((acc - mean) * gamma / sqrt(var + eps) + beta) — is folded into the packing, as weight converters fold BatchNorm:
each kernel's weights are packed multiplied by s (rounded to fp16 once, after the multiply) and t becomes one more K
column (ones on the other side), so the MAC array adds it in fp32 like the products. s and t are evaluated in float64
from the parameters when packing, once per version of those buffers. A residual add (a tensor varying with rows and
kernels, ResNet's skip connection) rides on the MAC array too: each tile's A gets the residual's n_t columns and B an
n_t x n_t identity block, so the sum gains exactly R[m, n] (R rounded to fp16 like any operand). ReLU runs in the
DPU's BS stage. Leaky ReLU / PReLU with a constant slope a, where(u < 0, a*u, u) of the affine u (tinygrad's
leaky_relu: YOLO's conv + BN + leaky(0.1)), is max(u, a*u) (min for a > 1) exactly (rules/elementwise.py LEAKY_AS_MAX):
each tile computes u in fp32, then recomputes it with the BS stage's MUL by fp16(a) and the EW stage's max with that u
(_leaky_tasks). Bound: the contraction's bound e_u on u, and on the negative branch |fp16(a)| e_u + |fp16(a) - a| |u|
+ u32 |a u| (the slope's fp16 rounding, none for float16 tensors, and one fp32 rounding); no lookup table, no guard.
PReLU with a slope tensor k (any load varying with the output loops: per channel, broadcast) is relu(u) + c*k relu(-u)
(rules/elementwise.py PRELU_SPLIT): the tile computes relu(-u) (BS MUL by -1, ReLU) times an fp32 slope tile (EW mul),
then is recomputed as relu(u) plus that (EW add), exact but fl32(k u) and the output rounding (_prelu_tasks).
A computed A's epilogue s*acc with s varying with the rows (BatchNorm's variance gradient: s = -1/(2 n sigma^3) per
channel) cannot fold s into A's packing (the NPU writes A): the tile's EW stage multiplies by an fp32 tile of s
evaluated when packing (row_scale: fl32(acc * fl32(s)), ReLU after it); an intercept there would need a second op.
Other activations (sigmoid, SiLU, GELU, ...) are lookup tables of u (_activation_table): exact on every input, or on an
interval u predictably stays in. Any other epilogue (a non-affine function of the sum) is rejected with its reason,
never dropped.

K that does not fit one task (fp16 weights of one kernel beyond a 32 KiB CBUF bank, or no room for 4 rows and 16
kernels next to each other) is split: K in chunks, one task per chunk (plan_k_split), and the partial sums accumulate
on the NPU: task j's DPU adds task j-1's fp32 partial (a 32-bit per-pixel EW operand, rocket_fp16_ew_ppu.md §2.3,
§7.3) and writes the sum to the other of two buffers (in-place accumulation corrupts, §2.3/§6). The epilogues stay in
the job: the affine one and the residual are K columns like any other (summed in whichever chunk holds them), ReLU
and clip run in the last task's EW stage after the add (the BS stage's ReLU would act before it, on a partial sum).

int8 contractions (both operands int8, products summed in int32 or int64, as tinygrad's `a.int8 @ b.int8`, int8
conv2d and `matmul(dtype=int32)` emit) run as int8 matmul tiles with int32 accumulation and output (ops/matmul.py INT8):
exact, since no task's sum can leave int32 (matmul.MAX_ABS_SUM); the result is cast to the kernel's output dtype when
unpacking (numpy's wrapping integer casts = C's on tinygrad's CPU device). Fused: ReLU of the int32 sum. Not fused,
with the reason: any other epilogue (a bias add in int32 wraps on the CPU where the DPU's adder saturates; float scales
round), K beyond one task (no integer partial-sum add on the DPU), uint8 operands (the MAC array is signed int8).

Numerics (DESIGN.md): fp16 operands (float32 inputs are rounded, float16 are exact), fp32 accumulation and fp32 out,
then one rounding to the output dtype; a split K adds one fp32 rounding per chunk boundary. An operand beyond fp16's
range cannot be represented: that call takes the CPU path instead (checked when packing), never a wrong answer.

ROCKET_PRECISION=fp32 (split precision, _split_tasks): every float32 value the tiles hold (operands, the folded
epilogue's scaled weights and intercept, a residual) is packed as two fp16 halves, hi and 2^-11 lo, and each output
tile is a chain of tasks: per chunk one task of 2*kc columns for the cross terms hi x lo + lo x hi (scaled back by the
BS stage's multiply) and one of kc columns for hi x hi, ~3x the MACs. Operands carry 22 significant bits; the result's
bound (tests/numerics.py bound_dot_split) is the CPU float32 one's fp32 accumulation term plus ~2^-21 of sum|x||y|.
Activation and leaky epilogues and computed operands are not split: under fp32 precision they fall back with the reason.
"""
from __future__ import annotations
import itertools, math
import numpy as np
from dataclasses import dataclass, field, replace
from tinygrad_rocket import regs
from tinygrad_rocket._tg import Ops, dtypes
from tinygrad_rocket.analysis import LoopNest, Load, Reduce, Alu, Const, Affine
from tinygrad_rocket.rules.common import epilogue_loads, sum_terms, affine_degree, subst, FLOATS, MAX_TASKS, strip_cast, uses, walk, relu_form, leaky_arg, prelu_arg, prelu_sum_arg, Grid
from tinygrad_rocket.lower import NotApplicable
from tinygrad_rocket.program import NpuProgram, Copy, Var, Lin, Bound, Guard, SCRATCH, eval_pexpr
from tinygrad_rocket.ops.layout import Feature, Weights, align, ceil_div
from tinygrad_rocket.ops.matmul import (MatmulTile, EwOperand, XStageOp, matmul_task, plan_tiles, K_ALIGN, N_ALIGN, CBUF_BANKS,
                                        CBUF_BANK_BYTES, MAX_KERNEL_BYTES, MAX_ROWS, MIN_ROWS, EW_MIN_PLANE_ATOMS)
from tinygrad_rocket.rules.tables import full_line_table, pick_table, eval_expr, lut_tasks
from tinygrad_rocket.ops.lut import all_fp16
from tinygrad_rocket.rules.elementwise import compile_operand, emit_stages, stage_ops, TileLayout, LANES, FP16_MAX
from tinygrad_rocket.rules.conv import LAYOUT_CLOCK_HZ, DMA_BYTES_PER_S, PER_TASK_OVERHEAD_S, INT8_OPERANDS, INT_RESULTS, int8_sum


@dataclass
class Contraction:
  a: Load
  b: Load|Const          # a Const: every element of B is that value (a plain sum: ones)
  m_dims: list[int]      # output ranges only A reads
  n_dims: list[int]      # output ranges only B reads
  batch_dims: list[int]  # output ranges both (or neither) read
  k_dims: list[int]      # reduce ranges
  epilogue: object = None  # the affine epilogue's expression tree (analysis Expr with the Reduce in it), or None
  epilogue_side: str = "b" # "b": its operands vary only with batch and N loops (kernels), "a": batch and M loops (rows)
  params: list[Load] = field(default_factory=list)
  residual: Load|None = None  # added to the result, varying with rows and kernels: identity-block K columns
  relu: bool = False
  clip: float|None = None     # with relu: results clamped to [0, clip] (tinygrad's relu6 is relu(x) - relu(x - 6))
  activation: tuple[object, bool]|None = None  # (LutTable g, multiply): the result is g(e) or e * g(e), e the epilogue
  prologue: list|None = None  # A is computed (`a` its expression): these elementwise stages write its fp16 tiles
  precision: str = "fp16"     # "int8": int8 operands, int32 sums (no epilogue but ReLU)
  leaky: float|None = None    # the result is where(e < 0, leaky*e, e) = max(e, leaky*e) (min for leaky > 1), e the epilogue
  split: bool = False         # ROCKET_PRECISION=fp32: every operand as fp16 hi + lo halves, three fp16 products (_split_tasks)
  prelu: tuple[Load, float]|None = None  # (k, c): the result is relu(e) + c*k relu(-e), e the epilogue (_prelu_tasks)
  row_scale: bool = False     # a computed A's epilogue s*acc with s varying with the rows: the EW stage multiplies by an s tile

def _loads_of(e) -> list[Load]:
  return [x for x in walk(e) if isinstance(x, Load)]

def uses_expr(e) -> set[int]:
  """The loop ranges an operand (a load, a constant or an expression of loads) depends on."""
  return set().union(*(uses(ld) for ld in _loads_of(e)))

def _affine_parts(e, red:Reduce) -> list:
  """The outermost subtrees of e that are affine in the reduction and contain it."""
  if affine_degree(e, red) == 1: return [e]
  return [u for x in (e.src if isinstance(e, Alu) else ()) for u in _affine_parts(x, red)]

def _activation(e) -> tuple[object, object, bool]|str|None:
  """(u, g, multiply) when the epilogue is g(u) or u * g(u) for one affine-in-the-sum u and a g that is not affine
  (an activation: sigmoid, SiLU, GELU, tanh, ...); None when the epilogue is affine; else why not."""
  reds = {x for x in walk(e) if isinstance(x, Reduce)}
  if len(reds) != 1: return None
  red = reds.pop()
  if affine_degree(e, red) == 1: return None
  us = _affine_parts(e, red)
  if not us or any(u != us[0] for u in us): return "the epilogue applies different functions of the sum"
  u = us[0]
  if isinstance(e, Alu) and e.op is Ops.MUL:
    for x, y in (e.src, e.src[::-1]):
      if strip_cast(x) == u and affine_degree(y, red) != 1: return u, y, True
  return u, e, False

def _activation_table(u, g):
  """A lookup table of g as a function of u, exact on every input (the argument is the NPU's own result: no guard)."""
  x = Load(-1, dtypes.float32, 0, Affine(()))   # stands for u
  g = subst(g, u, x)
  if any(isinstance(t, (Load, Reduce)) and t is not x for t in walk(g)): return None
  fn, name = (lambda v: eval_expr(g, x, v)), g.op.name.lower() if isinstance(g, Alu) else "gate"
  # exact on every input, else on an interval (sqrt, 1/x, log of a statistic): then a check after the job sends a call
  # whose u left the table's domain to the C code
  if (t := full_line_table(fn, name)) is not None: return t
  # signed_ok: no padding lane feeds the table x ~ 0 under a signed decode (lower_contraction: padding kernels repeat a
  # real kernel, padding rows are not tabulated)
  t = pick_table(fn, name, signed_ok=True)
  return t if t is not None and _domain_predictable(fn, t.domain) else None

def _domain_predictable(fn, domain:tuple[float, float]) -> bool:
  """Whether a guarded table's domain is one the epilogue's u can be expected to stay in: it holds 0 (u of either sign
  near 0: exp on [-16, 16]), or fn itself is undefined (not finite) at some fp16 value outside it (sqrt, log, 1/x: u is
  then a statistic of one sign). A function finite on the whole line but tabulated on one side of 0 (a WHERE's branch,
  a kink at 0 on (0.25, 32)) would fail its after-job check on any u of the other sign: a wasted job and the C code on
  every call, so no table."""
  lo, hi = domain
  if lo <= 0.0 <= hi: return True
  xs = all_fp16().astype(np.float64)
  xs = xs[(xs < lo) | (xs > hi)]
  with np.errstate(all="ignore"): return not bool(np.isfinite(fn(xs)).all())

# ***** int8 *****
def _is_int8_contraction(nest:LoopNest) -> bool:
  """Whether the kernel sums in an integer dtype (then the int8 rules decide, never the float path)."""
  return any(isinstance(x, Reduce) and dtypes.is_int(x.dtype) for x in walk(nest.value))

def _match_int8(nest:LoopNest) -> Contraction|NotApplicable:
  """[CAST](REDUCE(ADD, a*b)) or [CAST](MAX(REDUCE, 0)) with int8 a, b (either may be an int8 constant), summed in int32
  or int64: the sum is exact on the NPU (int32 out), so the cast to the output dtype is the CPU's."""
  if isinstance(res := int8_sum(nest), NotApplicable): return res
  e, relu = res
  if e.op is not Ops.ADD: return NotApplicable(f"REDUCE({e.op.name}) is not a contraction")
  if set(e.ranges) != set(nest.reduce_ranges): return NotApplicable("reduce ranges outside the REDUCE")
  body = strip_cast(e.src)
  if isinstance(body, Load): body = Alu(Ops.MUL, (body, Const(1, body.dtype)), body.dtype)
  if not (isinstance(body, Alu) and body.op is Ops.MUL): return NotApplicable("reduced value is not a product of two operands")
  a, b = (strip_cast(s) for s in body.src)
  if isinstance(a, Const): a, b = b, a
  if not (isinstance(a, Load) and isinstance(b, (Load, Const))):
    return NotApplicable("a product operand is computed, not loaded (prologue fusion not implemented yet)")
  for ld in (a, b) if isinstance(b, Load) else (a,):
    if ld.dtype == dtypes.uint8:
      return NotApplicable("uint8 operands: the MAC array multiplies signed int8 (values above 127 do not fit; Mesa's shift "
                           "by 128 needs a zero-point correction the exact int32 writer cannot apply)")
    if ld.dtype not in INT8_OPERANDS: return NotApplicable(f"integer operand dtype {ld.dtype} (int8 only)")
    if ld.valid and ld.pad not in (0, 0.0): return NotApplicable(f"padding value {ld.pad} (only zero padding)")
    if ld.size < 0: return NotApplicable("operand buffer of unknown size")
  if isinstance(b, Const) and not (float(b.value).is_integer() and -128 <= b.value <= 127):
    return NotApplicable(f"constant operand {b.value} is not an int8 value")
  ua, ub = uses(a), uses(b) if isinstance(b, Load) else set()
  outs = nest.output_ranges
  m = [r for r in outs if r in ua and r not in ub]
  n = [r for r in outs if r in ub and r not in ua]
  batch = [r for r in outs if r not in m and r not in n]
  size = lambda rs: math.prod(nest.ranges[r] for r in rs)
  if size(m) < size(n) and isinstance(b, Load): a, b, m, n = b, a, n, m
  return Contraction(a, b, m, n, batch, list(e.ranges), relu=relu, precision="int8")

def match(nest:LoopNest) -> Contraction|NotApplicable:
  if _is_int8_contraction(nest): return _match_int8(nest)
  if nest.out_dtype not in FLOATS: return NotApplicable(f"output dtype {nest.out_dtype} (float32/float16 only)")
  e, relu, clip = relu_form(strip_cast(nest.value))
  activation, leaky = None, None
  if not relu and (lk := leaky_arg(e)) is not None and any(isinstance(x, Reduce) for x in walk(lk[0])):
    if not abs(lk[1]) <= FP16_MAX: return NotApplicable(f"a leaky ReLU of slope {lk[1]} (not finite in fp16, the BS multiplier)")
    e, leaky = strip_cast(lk[0]), (lk[1] if lk[1] not in (0, 1) else None)
    relu = lk[1] == 0     # max(u, 0*u): the BS stage's ReLU
  prelu = None
  if not relu and leaky is None and (pr := _prelu(e)) is not None:
    if isinstance(pr, str): return NotApplicable(pr)
    e, prelu = pr
  if not relu and prelu is None and isinstance(act := _activation(e), str): return NotApplicable(act)
  if not relu and prelu is None and act is not None:
    u, g, multiply = act
    if (table := _activation_table(u, g)) is None:
      return NotApplicable("the epilogue applies a function of the sum no lookup table covers accurately")
    e, activation = strip_cast(u), (table, multiply)
  reds = [x for x in walk(e) if isinstance(x, Reduce)]
  if not reds: return NotApplicable("no reduction")
  v = reds[0]
  if v.op is not Ops.ADD: return NotApplicable(f"REDUCE({v.op.name}) is not a contraction")
  terms = sum_terms(e)  # a residual is a loaded term of the top-level sum; which one is decided once M and N are known
  epilogue = None
  if e is not v:
    if isinstance(deg := affine_degree(e, v), str): return NotApplicable(deg)
    if deg != 1: return NotApplicable("the epilogue does not depend on the sum")
    epilogue = e
  body = strip_cast(v.src)
  # a plain sum is a contraction with a constant operand (ones, or the constant a sum of x*c multiplies by): the MAC
  # array reduces, and the sum's epilogue (e.g. mean's 1/n) folds like any other
  if not (isinstance(body, Alu) and body.op is Ops.MUL): body = Alu(Ops.MUL, (body, Const(1.0, body.dtype)), body.dtype)
  a, b = (strip_cast(s) for s in body.src)
  if isinstance(a, Const) or (isinstance(a, Load) and not isinstance(b, (Load, Const))): a, b = b, a
  outs = nest.output_ranges
  if not isinstance(a, Load):
    # a computed operand (a prologue: softmax's exp(x - max), a variance's (x - mean)^2, relu(x) into a conv) becomes A,
    # computed on the NPU by elementwise stages straight into A's tiles; the other factor stays B when it is a load
    # (output loops both read are batch loops: attention's heads), unless those batch loops would outnumber A's own
    # rows (sum((x - mean) * x) over rows: then the whole product is A and B is ones)
    size = lambda rs: math.prod(nest.ranges[r] for r in rs)
    shared = uses_expr(a) & uses_expr(b) & set(outs)
    if not isinstance(b, (Load, Const)) or (shared and size(shared) > size((uses_expr(a) - uses_expr(b)) & set(outs))):
      a, b = strip_cast(v.src), Const(1.0, body.dtype)
    if nest.precision == "fp32" and (nest.out_dtype == dtypes.float32 or any(ld.dtype == dtypes.float32 for ld in _loads_of(a))):
      return NotApplicable("ROCKET_PRECISION=fp32: a computed operand's float32 values would be rounded to fp16 (the C "
                           "code gives float32 accuracy)")
    if isinstance(stages := compile_operand(a), str): return NotApplicable(f"computed operand: {stages}")
  for ld in [x for x in (a, b) if isinstance(x, Load)]:
    if ld.dtype not in FLOATS: return NotApplicable(f"operand dtype {ld.dtype} (float32/float16 only)")
    if ld.valid and ld.pad not in (0, 0.0): return NotApplicable(f"padding value {ld.pad} (only zero padding)")
    if ld.size < 0: return NotApplicable("operand buffer of unknown size")
  if set(v.ranges) != set(nest.reduce_ranges): return NotApplicable("reduce ranges outside the REDUCE")
  ua, ub = uses_expr(a), uses_expr(b)
  m = [r for r in outs if r in ua and r not in ub]
  n = [r for r in outs if r in ub and r not in ua]
  batch = [r for r in outs if r not in m and r not in n]
  # A gives the rows (feature cube), B the kernels: B is the side with fewer exclusive output elements (kernels are
  # padded to 16, rows only to 4), which puts convolution weights in B. A computed operand is always A.
  size = lambda rs: math.prod(nest.ranges[r] for r in rs)
  if size(m) < size(n) and isinstance(a, Load) and isinstance(b, Load): a, b, m, n = b, a, n, m
  residual = None
  both = lambda ld: not (uses(ld) <= set(n) | set(batch) or uses(ld) <= set(m) | set(batch))
  res = [t for t in terms if isinstance(strip_cast(t), Load) and both(strip_cast(t))]
  if len(res) > 1: return NotApplicable("more than one residual operand in the epilogue")
  if res:
    residual = strip_cast(res[0])
    if residual.dtype not in FLOATS: return NotApplicable(f"residual dtype {residual.dtype} (float32/float16 only)")
    if residual.valid and residual.pad not in (0, 0.0): return NotApplicable(f"residual padding value {residual.pad}")
    rest = [t for t in terms if t is not res[0]]
    epilogue = rest[0]
    for t in rest[1:]: epilogue = Alu(Ops.ADD, (epilogue, t), nest.out_dtype)
    if strip_cast(epilogue) is v: epilogue = None
  params = epilogue_loads(epilogue) if epilogue is not None else []
  side = "b"
  if params:
    for p in params:
      if p.dtype not in FLOATS: return NotApplicable(f"epilogue operand dtype {p.dtype} (float32/float16 only)")
      if p.valid: return NotApplicable("padded epilogue operand")
    used = set().union(*(uses(p) for p in params))
    side = "b" if used <= set(n) | set(batch) else "a" if used <= set(m) | set(batch) else ""
    if not side: return NotApplicable("the epilogue's operands vary with both rows and kernels (residual add fusion not implemented yet)")
  if prelu is not None and not uses(prelu[0]) <= set(outs): return NotApplicable("a PReLU slope varying with the reduction's loops")
  if not isinstance(a, Load):
    if residual is not None: return NotApplicable("a residual add with a computed operand (not implemented)")
    if params and side == "a" and not _pure_scale(epilogue, v):
      return NotApplicable("an epilogue varying with the rows of a computed operand with an intercept (its slope is the EW "
                           "stage's multiply; the intercept would need a second op)")
  # ROCKET_PRECISION=fp32: a float32 value anywhere (operands, epilogue parameters, result) is carried as two fp16 halves
  split = nest.precision == "fp32" and (nest.out_dtype == dtypes.float32 or
                                        any(ld.dtype == dtypes.float32 for ld in [*_loads_of(a), *_loads_of(b), *params, *([residual] if residual else [])]))
  if split and (why := "an activation epilogue (its lookup table is fp16-accurate)" if activation is not None else
                       "a leaky ReLU epilogue (its two-task form is not split)" if leaky is not None else
                       "a PReLU epilogue (its two-task form is not split)" if prelu is not None else
                       "a computed operand (its stages compute in fp16)" if not isinstance(a, Load) else None):
    return NotApplicable(f"ROCKET_PRECISION=fp32: {why} is not computed in split precision; the C code gives float32 accuracy")
  return Contraction(a, b, m, n, batch, list(v.ranges), epilogue, side, params, residual, relu, clip, activation,
                     None if isinstance(a, Load) else stages, leaky=leaky, split=split, prelu=prelu,
                     row_scale=not isinstance(a, Load) and bool(params) and side == "a")

def _int8_copy(g:Grid, ld:Load|Const, dst:int, index:Lin) -> Copy:
  """An int8 operand tile: the loaded int8 values (or the int8 constant) at the valid points, 0 in the padding. Grid.copy
  names only float dtypes, so the copy is built as a float one and retyped (the gather itself is dtype-blind)."""
  if isinstance(ld, Const): return replace(g.copy(None, dst, index, fill=0.0, value=("intercept", ("const", float(ld.value)))), dst_dtype="int8")
  return replace(g.copy(replace(ld, dtype=dtypes.float32), dst, index), src_dtype="int8", dst_dtype="int8")

# Planning a K split: the modeled NPU time of rules/conv.py (the emulator's cost model, emu/cost.py, at mainline's clock)
KC_MAX = MAX_KERNEL_BYTES // 2   # fp16 K columns of one kernel within one CBUF bank (rocket_fp16_ew_ppu.md §1.6)

def _split_seconds(rows:int, kc:int, n_t:int, n_k:int, tiles:int) -> float:
  """Modeled NPU time of `tiles` output tiles of rows x n_t, each n_k tasks of kc columns: MAC cycles (one 16-kernel x
  32-channel tile per row and cycle) against each task's DMA (its A and B chunks, the fp32 partial it writes, and but
  for the first the partial it reads), plus the per-task overhead."""
  cycles = rows * (kc // K_ALIGN) * (n_t // N_ALIGN) / LAYOUT_CLOCK_HZ
  io = rows * kc * 2 + n_t * kc * 2 + rows * n_t * 4
  tile = max(cycles, io / DMA_BYTES_PER_S) + (n_k - 1) * max(cycles, (io + rows * n_t * 4) / DMA_BYTES_PER_S)
  return tiles * tile + (tiles * n_k - 1) * PER_TASK_OVERHEAD_S

def plan_k_split(M:int, K:int, N:int, residual:bool, batches:int, split:bool=False) -> tuple[int, int, int]|str:
  """(rows, kernels, K columns) per task when K does not fit one task (plan_tiles): K in n_k chunks of kc columns (a
  multiple of K_ALIGN), each chunk a task whose DPU adds the previous chunk's fp32 partial (EW ADD of a 32-bit
  per-pixel operand, rocket_fp16_ew_ppu.md §2.3, §7.3). A task's weights take at most one bank per kernel and its
  feature and weights fit the CBUF together (GN's budget, as plan_tiles); it has at least EW_MIN_PLANE_ATOMS rows
  (the EW stage's plane floor, §6.C). Of those tilings the one with the lowest modeled NPU time within MAX_TASKS;
  smaller chunks give bigger tiles (fewer tasks) but more partial-sum traffic. `residual`: every task's tile carries
  n_t more K columns (plan_tiles). `split` (ROCKET_PRECISION=fp32, _split_tasks): each chunk is two tasks, one over
  2*kc columns (the cross terms) and one over kc (hi x hi); the wider one must fit."""
  best: tuple[float, int, int, int]|None = None
  widths = (2, 1) if split else (1,)   # K columns of a chunk's tasks, in units of kc
  for n_t in dict.fromkeys((align(N, N_ALIGN), 512, 256, 128, 64, 32, 16)):
    if n_t > align(N, N_ALIGN): continue
    Kp = align(K + (n_t if residual else 0), K_ALIGN)
    kcs = dict.fromkeys(align(ceil_div(Kp, n_k), K_ALIGN) for n_k in range(ceil_div(Kp, KC_MAX // widths[0]), Kp // K_ALIGN + 1))
    for kc in kcs:
      kt = widths[0] * kc   # the widest task's K
      wb = ceil_div(n_t * kt * 2, CBUF_BANK_BYTES)
      if wb >= CBUF_BANKS: continue
      rows = min((CBUF_BANKS - wb) * CBUF_BANK_BYTES // (kt * 2), MAX_ROWS) // MIN_ROWS * MIN_ROWS
      rows = min(rows, align(max(M, EW_MIN_PLANE_ATOMS), MIN_ROWS))
      if rows < EW_MIN_PLANE_ATOMS: continue
      n_k, tiles = ceil_div(Kp, kc), batches * ceil_div(M, rows) * ceil_div(N, n_t)
      if tiles * n_k * len(widths) > MAX_TASKS: continue
      t = sum(_split_seconds(rows, w * kc, n_t, n_k, tiles) for w in widths)
      if best is None or t < best[0]: best = (t, rows, n_t, kc)
  if best is None: return f"K={K} split over tasks: no tiling of {EW_MIN_PLANE_ATOMS}+ rows fits the CBUF within {MAX_TASKS} tasks"
  return best[1:]

def lower_contraction(nest:LoopNest) -> NpuProgram|NotApplicable:
  c = match(nest)
  if isinstance(c, NotApplicable): return c
  sz = nest.ranges
  M, N, K = (math.prod(sz[r] for r in ds) for ds in (c.m_dims, c.n_dims, c.k_dims))
  # the epilogue's intercept is one more K column (the residual block follows it). A computed A is written by the NPU
  # alone, so there a constant intercept is the BS stage's fp32 add on each tile's first task instead
  icpt = None
  if c.prologue is not None and c.epilogue is not None:
    if c.params and not c.row_scale:
      return NotApplicable("an epilogue with operands after a computed operand (only constant scales and shifts, and scales "
                           "varying with the rows)")
    if not c.row_scale: icpt = float(eval_pexpr(Grid((1,), sz, {}).pexpr(c.epilogue), None, 0.0))
  K_r = K + (c.epilogue is not None and c.prologue is None)
  batches = list(itertools.product(*(range(sz[r]) for r in c.batch_dims)))
  i8 = c.precision == "int8"
  plan = plan_tiles(M, K_r, N, residual=c.residual is not None, precision=c.precision)
  if i8 and isinstance(plan, str):
    return NotApplicable(f"int8 {plan}: the int32 partial sums of a split K would need an integer EW add, and the DPU's EW "
                         "ALU is float-only (rocket_fp16_ew_ppu.md §6.C)")
  # K does not fit one task, or its tiles are too small to stay within MAX_TASKS (rows and kernels shrink as K grows):
  # chunks of kc columns, partial sums accumulated on the NPU
  # split precision: each chunk's cross-term task is 2*kc wide and every tile adds partials (EW rows), so it always plans here
  if c.split or isinstance(plan, str) or len(batches) * ceil_div(M, plan[0]) * ceil_div(N, plan[1]) > MAX_TASKS:
    if i8: return NotApplicable(f"{len(batches) * ceil_div(M, plan[0]) * ceil_div(N, plan[1])} int8 tasks (max {MAX_TASKS})")
    split = plan_k_split(M, K_r, N, c.residual is not None, len(batches), c.split)
    if isinstance(split, str): return NotApplicable(split)
    rows, n_t, kc = split
  else: (rows, n_t), kc = plan, None
  if c.activation is not None:
    if kc is not None: return NotApplicable("an activation epilogue with K split over tasks (not implemented)")
    if c.activation[0].signed and c.residual is not None:
      return NotApplicable("a signed-decode table after a residual add (its padding kernels would not repeat a real kernel)")
  # a signed decode spikes at x ~ 0 (QUIRK 2, rocket_fp16_ew_ppu.md §4.6): its table meets no padding lane holding 0.
  # Padding kernels repeat kernel N-1 (B's column; the guard has checked that u), padding rows are not tabulated
  repeat = c.activation is not None and c.activation[0].signed
  if c.leaky is not None:
    if kc is not None: return NotApplicable("a leaky ReLU epilogue with K split over tasks (not implemented: the last "
                                            "chunk's EW stage adds the partial sum)")
    if icpt is not None: return NotApplicable("a leaky ReLU epilogue after a computed operand with a constant intercept "
                                              "(the BS stage's MUL/ALU order is unconfirmed, rocket_fp16_ew_ppu.md §3.4)")
  if c.prelu is not None:
    if kc is not None: return NotApplicable("a PReLU epilogue with K split over tasks (not implemented: the last chunk's "
                                            "EW stage adds the partial sum)")
    if icpt is not None: return NotApplicable("a PReLU epilogue after a computed operand with a constant intercept (the BS "
                                              "stage's MUL/ALU order is unconfirmed, rocket_fp16_ew_ppu.md §3.4)")
  if c.row_scale and (kc is not None or c.activation is not None or c.leaky is not None or c.prelu is not None):
    return NotApplicable("a computed operand's row scale with K split over tasks or another epilogue (its EW stage is taken)")
  if c.activation is not None or c.prologue is not None or c.leaky is not None or c.prelu is not None:
    rows = max(rows, EW_MIN_PLANE_ATOMS)   # the result's EW multiply / the stages' EW ops (rocket_fp16_ew_ppu.md §2.3)
  K_eff = K_r + (n_t if c.residual is not None else 0)
  kc = kc or align(K_eff, K_ALIGN)
  n_k = ceil_div(K_eff, kc)
  Kp = n_k * kc      # A and B hold n_k chunks of kc columns; columns past K_eff are zero
  m_tiles, n_tiles = -(-M // rows), -(-N // n_t)
  tiles = len(batches) * m_tiles * n_tiles
  # tasks per tile in one chain of partial sums: a chunk's task, or with split precision its cross-term and hi x hi tasks
  chain_len = n_k * (2 if c.split else 1)
  if (ntasks := tiles * chain_len) > MAX_TASKS: return NotApplicable(f"{ntasks} tasks (max {MAX_TASKS}): tiling too fine")
  tile = MatmulTile(rows, kc, n_t, c.precision)   # one task: one chunk of K
  eb = tile.ebytes
  # where each chunk's operand parts lie (_split_tasks): A chunk j = [hi | lo] surfaces, B chunk j = a Weights(n_t, 2kc)
  # block [lo | hi] for the cross terms, then a Weights(n_t, kc) block of hi; without split only hi
  w_kc = Weights(n_t, kc, 1, 1, "int8" if i8 else "float16")
  (ng, kg), n_tp = w_kc.group, w_kc.oc_padded
  a_views = ((0, False), (kc * rows, True)) if c.split else ((0, False),)                  # (element offset, lo)
  b_views = (((0, 2 * kc, True), (kc * ng, 2 * kc, False), (2 * n_tp * kc, kc, False)) if c.split else
             ((0, kc, False),))                                                            # (element offset, K width, lo)
  a_chunk, b_chunk = len(a_views) * kc * rows, (3 if c.split else 1) * n_tp * kc            # elements per chunk
  a_f, c_f = Feature(len(a_views) * Kp, rows, 1, eb), tile.c
  a_sz, b_sz, c_sz = a_f.nbytes, n_k * b_chunk * eb, c_f.nbytes
  # scratch: A tiles (per batch, m tile, and n tile when a residual fills columns per n tile), B tiles (per batch, n
  # tile), C tiles (per batch, m tile, n tile; with a K split a second set for the partials, ping-pong)
  a_per_n = n_tiles if c.residual is not None else 1
  # with an activation a tile's C region also holds u in fp16 (the table's input) and g(u) (fp16, the table's output)
  u_f = Feature(n_t, rows, 1, 2)
  # with a leaky ReLU it holds u in fp32 (the EW operand of the task that recomputes the tile)
  # with a PReLU it holds c*k relu(-u) in fp32 (the EW operand of the task that adds relu(u))
  per_c = c_sz + (2 * u_f.nbytes if c.activation is not None else c_sz if c.leaky is not None or c.prelu is not None else 0)
  # an EW operand tile (a PReLU's slope c*k, a computed operand's row scale s): fp32, shaped like the result tile, one per
  # output tile (per batch and n tile when it does not vary with the rows), after the B tiles in B's buffer
  ew_tile = c.prelu is not None or c.row_scale
  ew_rows = ew_tile and bool(set().union(*(uses(p) for p in ([c.prelu[0]] if c.prelu else c.params))) & set(c.m_dims))
  ew_tiles = (m_tiles if ew_rows else 1) * n_tiles * len(batches) if ew_tile else 0
  b_all = b_sz * len(batches) * n_tiles
  scratch = (a_sz * len(batches) * m_tiles * a_per_n, b_all + ew_tiles * c_sz, per_c * tiles * (2 if chain_len > 1 else 1))
  A, B, C = SCRATCH, SCRATCH + 1, SCRATCH + 2
  params = tuple(sorted({p.slot for p in c.params}))
  # B tile: n_k chunks, each of Weights(n_t, width) = (N1, width/32, 16, 32) blocks: a task's weights are contiguous.
  # grid (n_k, N1, kc/32, 16, 32): n = n0 + 16*n1 + n2, k = kc*chunk + 32*k1 + k2
  b_grid = (n_k, n_tp // ng, kc // kg, ng, kg)
  b_st = lambda width: (b_chunk, width * ng, ng * kg, kg, 1)
  b_col = lambda k: (k // kc) * b_chunk + (k % kc) // kg * ng * kg + k % kg   # element of column k in kernel 0 of a block
  # A tile: n_k chunks of [hi | lo] Feature(kc, rows, 1) cubes, grid (n_k, kc/8, rows, 8): k = kc*chunk + 8*k1 + k2
  a_col = lambda k: (k // kc) * a_chunk + (k % kc) // a_f.c2 * rows * a_f.c2 + k % a_f.c2   # element of column k in row 0
  # tasks: the job; late: tasks after the tables' arguments exist (a second job when values the NPU computed are checked
  # first: a NaN must never reach a table, rocket_fp16_ew_ppu.md §4.6; an overflowed computed operand could make one)
  tasks, late, pack, unpack, guards = [], [], [], [], []
  # an activation's results are the program's elements (NpuProgram.elements, _element): 16-kernel blocks of each output
  # tile, as its guards check u (whatever the window's table: alternatives number their elements alike)
  blocks = ceil_div(n_t, LANES)
  elements = tiles * blocks * rows * LANES if c.activation is not None else 0
  a_tiles: list[tuple[dict[int, int], int, int]] = []   # a computed A's tiles: (batch loops, m tile, element offset)
  for bi, bvals in enumerate(batches):
    fixed = dict(zip(c.batch_dims, bvals))
    def operand(ld:Load|Const, side:str, g:Grid, dst:int, index:Lin) -> Copy:
      """The main copy of one tile; scaled by the epilogue's slope when the epilogue lives on this side."""
      if i8: return _int8_copy(g, ld, dst, index)
      if isinstance(ld, Const):  # the constant at every valid point, 0 in the padding
        v = ("const", float(ld.value))
        if c.epilogue is None or c.epilogue_side != side: return g.copy(None, dst, index, fill=0.0, value=("intercept", v))
        return g.copy(None, dst, index, fill=0.0, value=("slope", ("MUL", "float64", v, g.pexpr(c.epilogue))), params=params)
      if c.epilogue is None or c.epilogue_side != side: return g.copy(ld, dst, index)
      return g.copy(ld, dst, index, value=("slope", g.pexpr(c.epilogue)), params=params)
    def column(side:str, g:Grid, dst:int, index:Lin) -> Copy:
      """Column K of a tile: the epilogue's intercept on its side, ones on the other."""
      if c.epilogue_side == side: return g.copy(None, dst, index, fill=None, value=("intercept", g.pexpr(c.epilogue)), params=params)
      return g.copy(None, dst, index, fill=1.0)
    for mt, an in itertools.product(range(m_tiles), range(a_per_n)):
      # A tile: Feature(Kp, rows, 1) fp16 = grid (K1, rows, 8): k = 8*k1 + k2, m = m0 + row; a chunk of kc columns is
      # kc/8 whole surfaces, so chunk j is the cube Feature(kc, rows, 1) at surface j*kc/8
      off = ((bi * m_tiles + mt) * a_per_n + an) * a_f.elems
      if c.prologue is None:
        g = Grid((n_k, kc // a_f.c2, rows, a_f.c2), sz, fixed)
        g.linear((kc, a_f.c2, 0, 1), 0, c.k_dims, K); g.linear((0, 0, 1, 0), mt * rows, c.m_dims, M)
        pack += [_part(operand(c.a, "a", g, A, Lin((a_chunk, rows * a_f.c2, a_f.c2, 1), off + v)), lo) for v, lo in a_views]
      else: a_tiles.append((fixed, mt, off))
      if c.epilogue is not None and c.prologue is None:
        g = Grid((rows,), sz, fixed)
        g.linear((1,), mt * rows, c.m_dims, M)
        pack += [_part(column("a", g, A, Lin((a_f.c2,), off + v + a_col(K))), lo) for v, lo in a_views]
      if c.residual is not None:  # columns K_r + j: R[m, n0 + j]
        g = Grid((rows, n_t), sz, fixed)
        g.linear((1, 0), mt * rows, c.m_dims, M); g.linear((0, 1), an * n_t, c.n_dims, N)
        ch, k1, k2 = g.var(Var((0, 1), K_r, kc)), g.var(Var((0, 1), K_r, a_f.c2, kc // a_f.c2)), g.var(Var((0, 1), K_r, 1, a_f.c2))
        idx = [0] * g.nvals
        idx[0], idx[ch], idx[k1], idx[k2] = a_f.c2, a_chunk, rows * a_f.c2, 1
        pack += [_part(g.copy(c.residual, A, Lin(tuple(idx), off + v)), lo) for v, lo in a_views]
    for nt in range(n_tiles):
      off = (bi * n_tiles + nt) * n_k * b_chunk
      g = Grid(b_grid, sz, fixed)
      g.linear((kc, 0, kg, 0, 1), 0, c.k_dims, K); g.linear((0, ng, 0, 1, 0), nt * n_t, c.n_dims, N)
      pack += [_part(operand(c.b, "b", g, B, Lin(b_st(w), off + v)), lo) for v, w, lo in b_views]
      if repeat and (nt + 1) * n_t > N:   # the tile's padding kernels get kernel N-1's weights (written over the zeros)
        g = Grid(b_grid, sz, fixed)
        g.linear((kc, 0, kg, 0, 1), 0, c.k_dims, K); g.linear((0,) * 5, N - 1, c.n_dims, N)
        g.bounds.append(Bound(g.unit(g.var(Var((0, ng, 0, 1, 0), nt * n_t))), N, None))
        pack += [replace(operand(c.b, "b", g, B, Lin(b_st(w), off + v)), fill=None) for v, w, _ in b_views]
      if c.epilogue is not None and c.prologue is None:
        g = Grid(b_grid[1:4:2], sz, fixed)
        g.linear((ng, 1), nt * n_t, c.n_dims, N)
        pack += [_part(column("b", g, B, Lin((b_st(w)[1], kg), off + v + b_col(K))), lo) for v, w, lo in b_views]
        if repeat and (nt + 1) * n_t > N and c.epilogue_side == "b":
          g = Grid(b_grid[1:4:2], sz, fixed)
          g.linear((0, 0), N - 1, c.n_dims, N)
          g.bounds.append(Bound(g.unit(g.var(Var((ng, 1), nt * n_t))), N, None))
          pack += [replace(column("b", g, B, Lin((b_st(w)[1], kg), off + v + b_col(K))), fill=None) for v, w, _ in b_views]
      if c.residual is not None:  # an identity block: kernel j has 1 at channel K_r + j
        g = Grid(b_grid[1:4:2], sz, fixed)
        ch, k1, k2 = (g.var(Var((ng, 1), K_r, d, m)) for d, m in ((kc, 0), (kg, kc // kg), (1, kg)))
        for v, w, lo in b_views:
          idx = [0] * g.nvals
          idx[0], idx[1], idx[ch], idx[k1], idx[k2] = b_st(w)[1], kg, b_chunk, ng * kg, 1
          pack.append(_part(g.copy(None, B, Lin(tuple(idx), off + v), fill=1.0), lo))
    for mt, nt in itertools.product(range(m_tiles), range(n_tiles)):
      a_off = ((bi * m_tiles + mt) * a_per_n + (nt if a_per_n > 1 else 0)) * a_sz
      b_off = (bi * n_tiles + nt) * b_sz
      ci = (bi * m_tiles + mt) * n_tiles + nt
      # chunk j's task adds the partial of chunks < j (an fp32 per-pixel EW operand) and writes the sum; the partials
      # alternate between the tile's two buffers (in-place accumulation corrupts, rocket_fp16_ew_ppu.md §2.3/§6) so
      # that the last task writes the result tile. ReLU/clip: on the last task after the add (the EW ReLU; the BS
      # stage's would act before it); the affine epilogue and the residual are K columns, in the sums like products.
      dst = lambda t: (ci + (tiles if (chain_len - 1 - t) % 2 else 0)) * per_c
      if c.split:   # the chain of _split_tasks, alternating between the tile's two buffers; the last writes the result
        (cross, _, _), _, (hi, _, _) = b_views
        tasks += _split_tasks(rows, kc, n_t, [(a_off + j * a_chunk * eb, b_off + (j * b_chunk + cross) * eb, b_off + (j * b_chunk + hi) * eb)
                                              for j in range(n_k)], A, B, C, [dst(t) for t in range(chain_len)], c.relu, c.clip)
      if c.activation is not None:   # u = the epilogue's value narrowed to fp16 -> g(u) by table -> g(u), or u * g(u) by
        table, multiply = c.activation    # the same tile recomputed in fp32 times g(u) in the EW stage
        u_off, g_off = ci * per_c + c_sz, ci * per_c + c_sz + u_f.nbytes
        tasks.append(matmul_task(tile, A, a_off, B, b_off, C, u_off, bs=XStageOp(add=icpt), out_fp16=True))
        if not repeat: late += lut_tasks(rows * n_t, table, C, u_off, C, g_off)
        else:   # each 8-kernel surface's real rows (rows x 8 fp16 each, Feature(n_t, rows, 1))
          m_real, surf = min(rows, M - mt * rows), u_f.surface_elems * u_f.elem_bytes
          for s in range(ceil_div(min(n_t, N - nt * n_t), u_f.c2)):
            late += lut_tasks(m_real * u_f.c2, table, C, u_off + s * surf, C, g_off + s * surf)
        if table.domain != (-math.inf, math.inf):   # u of the tile's real rows and kernels, one guard per 16 kernels
          # each u is one result's (its element, _element): a call takes each result from the first window whose table
          # holds its u. A signed decode's job would meet out-of-window u near 0 (QUIRK 2, rocket_fp16_ew_ppu.md §4.6,
          # which the emulator refuses): its guards hold for the whole call or for none
          guards += [Guard(C, rows, min(rows, M - mt * rows) * LANES, ((u_off + gi * rows * LANES * 2, 1.0),), 0.0, *table.domain,
                           f"the argument of lut({table.name}) in its domain {table.domain}", after=True,
                           lanes=min(LANES, N - nt * n_t - gi * LANES), first=None if table.signed else _element(ci, blocks, rows, 0, gi * LANES))
                     for gi in range(ceil_div(min(n_t, N - nt * n_t), LANES))]
        if multiply: late.append(matmul_task(tile, A, a_off, B, b_off, C, dst(0), bs=XStageOp(add=icpt), ew=EwOperand("mul", C, g_off, 2)))
      if c.leaky is not None:   # u in fp32, then the tile recomputed: max(a*u, u) (min for a > 1), _leaky_tasks
        tasks += _leaky_tasks(tile, c.leaky, icpt, (A, a_off), (B, b_off), (C, ci * per_c + c_sz), (C, dst(0)))
      if ew_tile:
        e_off = b_all + ((bi * m_tiles + mt if ew_rows else bi) * n_tiles + nt) * c_sz
        if ew_rows or mt == 0:
          g = Grid((c_f.c1, rows, c_f.c2), sz, fixed)
          g.linear((c_f.c2, 0, 1), nt * n_t, c.n_dims, N); g.linear((0, 1, 0), mt * rows, c.m_dims, M)
          idx = Lin((rows * c_f.c2, c_f.c2, 1), e_off // c_f.elem_bytes)
          cp = (g.copy(c.prelu[0], B, idx, value=("slope", ("MUL", "float64", ("acc",), ("const", c.prelu[1])))) if c.prelu else
                g.copy(None, B, idx, value=("slope", g.pexpr(c.epilogue)), params=params))
          pack.append(replace(cp, dst_dtype="float32"))
      if c.prelu is not None:   # c*k relu(-u), then relu(u) plus it (_prelu_tasks)
        tasks += _prelu_tasks(tile, (A, a_off), (B, b_off), (B, e_off), (C, ci * per_c + c_sz), (C, dst(0)))
      for j in range(n_k if c.activation is None and c.leaky is None and c.prelu is None and not c.split else 0):
        last = j == n_k - 1
        ew = None if j == 0 else EwOperand("add", C, dst(j - 1), 4, relu=last and c.relu, clip=c.clip if last else None)
        bs = XStageOp(add=icpt if j == 0 else None, relu=c.relu and n_k == 1, clip=c.clip if n_k == 1 else None)
        if c.row_scale:   # fl32(acc * s) in the EW stage, its ReLU after (n_k = 1)
          ew, bs = EwOperand("mul", B, e_off, 4, relu=c.relu, clip=c.clip), XStageOp()
        tasks.append(matmul_task(tile, A, a_off + j * a_chunk * eb, B, b_off + j * b_chunk * eb, C, dst(j), bs=bs, ew=ew))
      # C tile: Feature(n_t, rows, 1) fp32 = grid (N1, rows, 4) -> out[batch, m, n]; padding rows/kernels skipped
      r_f, r_off, r_dt = (u_f, g_off, "float16") if c.activation is not None and not c.activation[1] else (c_f, dst(chain_len - 1), "int32" if i8 else "float32")
      g = Grid((r_f.c1, rows, r_f.c2), sz, fixed)
      g.linear((r_f.c2, 0, 1), nt * n_t, c.n_dims, N); g.linear((0, 1, 0), mt * rows, c.m_dims, M)
      element = _element_lin(g, r_f.c2, ci, blocks, rows) if elements else None
      cp = g.copy(None, nest.out_slot, g.lin(nest.out_index), fill=None)
      unpack.append(Copy(C, r_dt, nest.out_slot, INT_RESULTS[nest.out_dtype] if i8 else FLOATS[nest.out_dtype], cp.grid, cp.vars,
                         Lin((rows * r_f.c2, r_f.c2, 1), r_off // r_f.elem_bytes), cp.dst_index, cp.bounds, fill=None, element=element))
  if c.prologue is not None:   # the computed A's stages run first, each tile's last stage writing its A tile in fp16
    pro = _prologue(c, sz, a_tiles, rows, K, M, (SCRATCH + 3, SCRATCH + 4, SCRATCH + 5))
    if isinstance(pro, NotApplicable): return pro
    tasks, scratch, guards = pro.tasks + tasks, scratch + pro.scratch, pro.guards + guards
  checked = any(g.after for g in guards) and late
  first_job, tasks = len(tasks) if checked else 0, tasks + late
  n_pro = len(pro.tasks) if c.prologue is not None else 0
  pro_ops = stage_ops(c.prologue) if c.prologue is not None else ""
  fused = "".join(x for x, on in ((f" +computed A ({len(c.prologue or ())} stage(s) in {n_pro} task(s){': ' + pro_ops if pro_ops else ''})", c.prologue is not None),
                                  (" +affine epilogue", c.epilogue is not None), (" +residual", c.residual is not None),
                                  (" +relu" if c.clip is None else f" +clip(0, {c.clip:g})", c.relu),
                                  (f" +leaky({'max' if c.leaky < 1 else 'min'}(u, {c.leaky:g}*u))" if c.leaky is not None else "", c.leaky is not None),
                                  (" +prelu(relu(u) + c*k*relu(-u), k per element)", c.prelu is not None),
                                  (" +row scale (EW mul by an fp32 tile)", c.row_scale),
                                  (f" +{'u*' if c.activation and c.activation[1] else ''}lut({c.activation[0].name}, error "
                                   f"{c.activation[0].max_abs_error:.2g})" if c.activation else "", c.activation is not None)) if on)
  split = f", K in {n_k} chunks of {kc} accumulated on the NPU (fp32 partials, EW add)" if n_k > 1 else ""
  kind = "int8 matmul task(s) (int32 sums, exact)" if i8 else "fp16 matmul task(s)"
  shape = f"{rows}x{kc}x{n_t}"
  if c.split:
    kind, shape = "split-precision fp16 matmul task(s)", f"{rows}x{2 * kc}x{n_t} (hi+lo cross terms) and {shape} (hi x hi)"
    split = f", K in {n_k} chunk(s) of {kc}: float32 operands as fp16 hi + 2^-{SPLIT_SHIFT} lo halves, fp32 partials (EW add)"
  summary = f"contraction M={M} K={K} N={N} batch={len(batches)}{fused} as {len(tasks) - n_pro} {kind} of {shape}{split}"
  return NpuProgram(nest.name, summary, scratch, regs.assemble(tasks), tuple(pack) + (tuple(pro.pack) if c.prologue else ()),
                    tuple(unpack), macs=len(batches)*M*N*K, guards=tuple(guards), split=first_job, elements=elements)

def _element(ci:int, blocks:int, rows:int, row:int, n:int) -> int:
  """The program's element at row `row`, kernel n of output tile ci (of `blocks` 16-kernel blocks): the numbering of
  the tile's guards over u (program.Guard: 16*row + 8*surface + lane for kernel 16*gi + 8*surface + lane, block gi's
  guard starting at element _element(ci, blocks, rows, 0, 16*gi)). Padding rows and kernels have numbers no result
  uses."""
  return (ci * blocks + n // LANES) * rows * LANES + LANES * row + n % LANES

def _element_lin(g:Grid, c2:int, ci:int, blocks:int, rows:int) -> Lin:
  """_element at each point (c1, row, lane) of output tile ci's result cube grid (kernel n = c2*c1 + lane), with the
  digits n // 16 and n % 16 as Vars of the grid: _element is affine in (row, n // 16, n % 16), so its steps in each
  are its coefficients (one formula for the guards and the unpack)."""
  block, lane = g.var(Var((c2, 0, 1), 0, LANES)), g.var(Var((c2, 0, 1), 0, 1, LANES))
  at = lambda row, n: _element(ci, blocks, rows, row, n)
  coeffs = [0] * g.nvals
  coeffs[1], coeffs[block], coeffs[lane] = at(1, 0) - at(0, 0), at(0, LANES) - at(0, 0), at(0, 1) - at(0, 0)
  return Lin(tuple(coeffs), at(0, 0))

# ***** split precision (ROCKET_PRECISION=fp32) *****
# A float32 value x (an operand, a folded epilogue's scaled weight or intercept, a residual) is packed as two fp16 halves
# hi = fp16(x) and lo = fp16((x - hi) * 2^SPLIT_SHIFT), so x ~ hi + 2^-SPLIT_SHIFT lo to 22 significant bits
# (tests/numerics.py rocket_split: hi holds 11 of x's 24, lo 11 of the remaining 13). x - hi is exact (computed in
# float64 when packing). SPLIT_SHIFT = 11 = -log2(fp16 unit roundoff): for hi normal, |x - hi| <= 2^-11 |x|, so the
# scaled residual is at most |x| <= 65504 (finite in fp16; 12 would overflow for x near 65504, whose residual reaches 16)
# and it lies in x's own binade range, not among fp16's subnormals unless x is near them too.
SPLIT_SHIFT = 11
SPLIT_SCALE = 2.0 ** -SPLIT_SHIFT   # the BS multiplier undoing the shift: fp16 0x1000, a normal power of two

def _at(e:tuple, acc:float) -> tuple:
  """A PExpr with the accumulator fixed at acc."""
  if e[0] == "acc": return ("const", acc)
  return e if e[0] in ("const", "load") else (*e[:2], *(_at(x, acc) for x in e[2:]))

def _exact_value(cp:Copy) -> tuple:
  """What a packing Copy writes before its rounding to fp16, as a PExpr over its grid (program.py Copy.value)."""
  if cp.src is not None:
    v = ("load", cp.src, cp.src_dtype, cp.src_index)
    if cp.value is None: return v
    assert cp.value[0] == "slope", cp.value
    return ("MUL", "float64", v, ("SUB", "float64", _at(cp.value[1], 1.0), _at(cp.value[1], 0.0)))
  if cp.value is None: return ("const", cp.fill)
  tag, e = cp.value
  return _at(e, 0.0) if tag == "intercept" else ("SUB", "float64", _at(e, 1.0), _at(e, 0.0))

def _part(cp:Copy, lo:bool) -> Copy:
  """The hi half of a packed operand is the Copy as it is (rounded to fp16 when written); its lo half writes
  fp16((x - fp16(x)) * 2^SPLIT_SHIFT) of the same value x, read through the same index and bounds. The lo Copy reads the
  source as a parameter, so the packed lo half stays resident by the source's version like the hi half."""
  if not lo: return cp
  assert cp.fill is None or float(np.float16(cp.fill)) == cp.fill, "padding fills are fp16 values: their lo half is 0"
  x = _exact_value(cp)
  lo_value = ("MUL", "float64", ("SUB", "float64", x, ("CAST", "float16", x)), ("const", 2.0 ** SPLIT_SHIFT))
  return replace(cp, src=None, fill=None if cp.fill is None else 0.0, value=("intercept", lo_value),
                 params=tuple(dict.fromkeys(cp.params + ((cp.src,) if cp.src is not None else ()))))

def _split_tasks(rows:int, kc:int, n_t:int, chunks:list[tuple[int, int, int]], A:int, B:int, C:int, dsts:list[int],
                 relu:bool, clip:float|None) -> list[regs.Task]:
  """One output tile of a split-precision contraction: sum_k x_k w_k ~ sum hi_x hi_w + 2^-S sum (hi_x lo_w + lo_x hi_w)
  (S = SPLIT_SHIFT; the lo_x lo_w term, <= 2^-22 of |x||w|, is dropped). Per chunk (a_off, cross B offset, hi B offset):
  the A chunk is [hi | lo] (2*kc columns) and its cross B block [lo | hi], so ONE task of 2*kc columns sums both cross
  terms (exact fp16 products, fp32 accumulation) and its BS stage multiplies by SPLIT_SCALE (exact: a power of two on
  an fp32 sum of fp16 products, whose nonzero magnitudes >= 2^-48 stay far from fp32's subnormals); a task of kc columns
  (A's hi half, B's hi block) sums hi x hi. The tasks form one chain of fp32 partials (each adds the previous one in its
  EW stage, rocket_fp16_ew_ppu.md §2.3/§7.3, alternating between the buffers of `dsts`): all cross chunks first, then
  the hi chunks, so the small cross total enters the big sum once, at the first hi task; ReLU/clip run in the last
  task's EW stage after its add. ⚠ the BS MUL is taken to produce fl32(fp16(m) * acc) as in _leaky_tasks (§3.4
  "scale / negate" recipe, [HW-weak]); for m a power of two that is exact."""
  wide, narrow = MatmulTile(rows, 2 * kc, n_t), MatmulTile(rows, kc, n_t)
  steps = [(wide, a, b, XStageOp(mul=SPLIT_SCALE)) for a, b, _ in chunks] + [(narrow, a, b, XStageOp()) for a, _, b in chunks]
  tasks = []
  for t, (tile, a, b, bs) in enumerate(steps):
    last = t == len(steps) - 1
    ew = None if t == 0 else EwOperand("add", C, dsts[t - 1], 4, relu=last and relu, clip=clip if last else None)
    tasks.append(matmul_task(tile, A, a, B, b, C, dsts[t], bs=bs, ew=ew))
  return tasks

def _leaky_tasks(tile:MatmulTile, a:float, icpt:float|None, A:tuple[int, int], B:tuple[int, int], U:tuple[int, int],
                 out:tuple[int, int]) -> list[regs.Task]:
  """where(u < 0, a*u, u) of a tile's u (the affine epilogue of the sum) in two tasks: the tile computes u in fp32 into U,
  then recomputes it (the same fp16 operands and fp32 sums: the same u) with the BS stage's MUL by a (an fp16
  multiplier, rocket_fp16_ew_ppu.md §3.4 "scale / negate" recipe: fl32(fp16(a) * u)) and its EW stage takes the max
  (min for a > 1) with u (a 32-bit per-pixel operand, §2.3/§7.3), writing the result to `out`. GN's PReLU is this EW
  max (bit-exact, §3.4 "PReLU / LeakyReLU"); MUL_PRELU is not used (untested, §6.F). By LEAKY_AS_MAX
  (rules/elementwise.py) the max is the WHERE exactly, for the slope fp16(a):
    |result - leaky_a(u_exact)| <= max(e_u, |fp16(a)| e_u + |fp16(a) - a| |u| + u32 |fp16(a) u|)
  (max is 1-Lipschitz in each argument), e_u the contraction's bound on u: beyond it only the slope's fp16 rounding
  (<= u16 |a|, none for a float16 tensor's slope, which tinygrad already rounds to half) and one fp32 rounding of a*u,
  on the negative branch. No narrowing of u: the brief's fp16 a*u operand would add u16 |a u|."""
  ops = EwOperand("max" if a < 1 else "min", *U, 4)
  return [matmul_task(tile, *A, *B, *U, bs=XStageOp(add=icpt)),
          matmul_task(tile, *A, *B, *out, bs=XStageOp(mul=a), ew=ops)]

def _prelu_tasks(tile:MatmulTile, A:tuple[int, int], B:tuple[int, int], K:tuple[int, int], V:tuple[int, int],
                 out:tuple[int, int]) -> list[regs.Task]:
  """relu(u) + c*k relu(-u) of a tile's u (PReLU with a slope tensor k, rules/elementwise.py PRELU_SPLIT) in two tasks
  that each compute u (the same fp16 operands and fp32 sums: the same u): the first's BS stage multiplies by -1 and
  applies ReLU (relu(-u), exact: rocket_fp16_ew_ppu.md §3.4 "scale / negate") and its EW stage multiplies by the fp32
  slope tile at K (c*k per element, a 32-bit per-pixel operand, §2.3/§7.3): fl32(c k relu(-u)), into V; the second's
  BS ReLU gives relu(u) and its EW stage adds V. One of the two terms is zero, so the add is exact: the result is u
  or fl32(c k |u|) (c k as an fp32 value: exact for float32 or float16 k and c = +-1), the only rounding beyond u's own
  being that product's and the output dtype's. The multiply is the EW stage's, not MUL_PRELU (untested, §6.F)."""
  return [matmul_task(tile, *A, *B, *V, bs=XStageOp(mul=-1.0, relu=True), ew=EwOperand("mul", *K, 4)),
          matmul_task(tile, *A, *B, *out, bs=XStageOp(relu=True), ew=EwOperand("add", *V, 4))]

def _pure_scale(e, red:Reduce) -> bool:
  """Whether e is s * red for an s not depending on red (products and casts only: e is 0 where the sum is)."""
  e = strip_cast(e)
  if e is red: return True
  return isinstance(e, Alu) and e.op is Ops.MUL and any(_pure_scale(x, red) and affine_degree(y, red) == 0 for x, y in (e.src, e.src[::-1]))

def _prelu(e) -> tuple[object, tuple[Load, float]]|str|None:
  """(u, (k, c)) when e is a PReLU of an expression u of the sum with a loaded slope k, as relu(u) + c*k relu(-u)
  (where(u < 0, k*u, u): c = -1); why not when the slope is computed; None when e is no PReLU of the sum."""
  if (pa := prelu_arg(e)) is not None: u, k, c = pa[0], pa[1], -1.0
  elif (ps := prelu_sum_arg(e)) is not None: u, k, c = ps
  else: return None
  if not any(isinstance(x, Reduce) for x in walk(u)): return None
  if not isinstance(k := strip_cast(k), Load): return "a PReLU slope that is computed, not loaded"
  if k.dtype not in FLOATS or k.valid: return f"a PReLU slope of dtype {k.dtype}{' with padding' if k.valid else ''}"
  return strip_cast(u), (k, c)

@dataclass
class Prologue:
  tasks: list
  pack: list[Copy]
  guards: list[Guard]
  scratch: tuple[int, ...]

def _prologue(c:Contraction, sz:dict[int, int], a_tiles:list[tuple[dict[int, int], int, int]], rows:int, K:int, M:int,
              slots:tuple[int, int, int]) -> Prologue|NotApplicable:
  """The elementwise stages of a computed A, written into A's tiles. A tile Feature(Kp, rows, 1) is Kp/8 surfaces of
  rows x 8 fp16 lanes; the first S = 2*ceil(K/16) of them are split into stage tiles of 2q surfaces each, and a stage
  tile's 16-lane result cube (2 surfaces of q*rows rows) is, byte for byte, those 2q surfaces: its position (surface s,
  height h, lane l) holds A[m0 + h, 8*(s0 + s) + l]. Padding positions (k >= K, rows past M) compute the stages on
  their loads' fill values; B is zero on those columns and the padding rows are never unpacked. A value beyond fp16's
  range would be inf in A: a check after the job sends such a call to the C code."""
  stages = c.prologue
  pairs = ceil_div(K, LANES)
  k_stage = align(LANES * max(len(s.main.terms) for s in stages), K_ALIGN) if any(s.main.terms for s in stages) else K_ALIGN
  fit = plan_tiles(MAX_ROWS, k_stage, LANES)
  if isinstance(fit, str): return NotApplicable(f"computed operand: {fit}")
  q = max((d for d in range(1, pairs + 1) if pairs % d == 0 and d * rows <= fit[0]), default=None)
  if q is None: return NotApplicable(f"computed operand: a stage tile of {rows} rows does not fit the CBUF")
  per = pairs // q
  if (ntasks := len(a_tiles) * per * len(stages)) > MAX_TASKS: return NotApplicable(f"computed operand: {ntasks} stage tasks (max {MAX_TASKS})")
  def grid(t:int) -> Grid:
    fixed, mt, _ = a_tiles[t // per]
    g = Grid((2 * q, rows, 8), sz, fixed)
    g.linear((8, 0, 1), 2 * q * (t % per) * 8, c.k_dims, K); g.linear((0, 1, 0), mt * rows, c.m_dims, M)
    return g
  lay = TileLayout(q * rows, len(a_tiles) * per, 2 * q, grid, lambda t: q * rows * LANES)
  out = lambda t: (SCRATCH, 2 * (a_tiles[t // per][2] + 2 * q * (t % per) * rows * 8))
  code = emit_stages(sz, stages, lay, slots, out)
  finite = [Guard(SCRATCH, q * rows, q * rows * LANES, ((out(t)[1], 1.0),), 0.0, -FP16_MAX, FP16_MAX,
                  "the computed operand finite in fp16", after=True) for t in range(lay.tiles)]
  return Prologue([x for tt in code.tasks for x in tt], code.pack, code.guards + finite, code.scratch)
