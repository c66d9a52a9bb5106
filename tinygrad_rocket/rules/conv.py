"""Convolutions on the NPU's convolution datapath: conv1d/conv2d, direct (groups 1) or depthwise (one output channel
per input channel), any batch, stride, dilation and zero padding, with their epilogues fused; no im2col.

Epilogues: those the contraction rule fuses but activations, s*acc + t then [ReLU | ReLU6 = clip(0, c)], found by its
analysis (rules/common.py affine_degree, sum_terms; `Epilogue` here): a bias, BatchNorm in eval form, a residual
add (any tensor indexed by the output's loops) and their combinations. In the conv's own tasks:
  - s (the terms holding the sum; per output channel only) multiplies each kernel's weights when packing, rounded to
    fp16 once (as the contraction rule and weight converters fold BatchNorm);
  - t constant: the BS stage's fp32 add (register operand), ReLU/ReLUX after it in the same stage;
  - t varying (a per-channel shift, a residual, both): evaluated in float64 from its operands when packing (the
    epilogue at acc = 0), rounded to fp16 once into a cube shaped like each task's output, which the EW stage adds
    (DPU_RDMA MRDMA+ERDMA, the conv-fed add GN validated, rocket_fp16_ew_ppu.md §2.3; ops/matmul.py ew_fields,
    ew_rdma), then the EW ReLU/ReLUX. Per-channel operands from BRDMA would keep t in fp32 without the per-pixel
    DMA, but their element format in float mode is not documented (the emulator refuses BRDMA in float mode), and
    the EW operand is at most 16 bits (landscape.md), so t + r is one fp16 rounding: the precision of the
    contraction rule's intercept and residual columns. An output plane under 12 pixels per task (the EW stage's
    floor, §6.C), a padded operand, a scale varying with more than the channel: the contraction rule's, with the reason.
Leaky ReLU with a constant slope after the conv (or a conv scaled per kernel) runs as two tasks per band (u, then the
band recomputed with the BS MUL by fp16(a) and the EW max with u: LEAKY_OPERAND_BYTES); after a shift it is the
contraction rule's, with the reason. int8 convolutions keep ReLU only (below).

Prologues: an op tinygrad fused into the input (an input normalization (x - mean)/std with per-channel tensors, x*a + b,
ReLU, clip, leaky ReLU: any float expression of loads and constants the packing evaluates) is applied by the CPU while
it gathers the input cube (`Prologue`): in float64 from its operands, rounded to fp16 once (the precision of a loaded
float32 input), the padding holding the computed value's own padding (where(valid, f(x), 0): 0; x.pad(..) + 1: 1). The
cube stays resident per version of every buffer the prologue reads. Other computed inputs are rejected with the reason
(the contraction rule may still take them, computing A on the NPU).

Numerics (DESIGN.md): fp16 operands (float32 inputs are rounded, float16 exact; weights scaled by s are rounded after
the multiply, t + r rounded to fp16), fp32 accumulation and fp32 epilogue arithmetic in the DPU, fp32 out (DPU OUT
fp32), then one rounding to the output dtype by the CPU: a sum of n + 1 fp16 products (t + r times 1), as
tests/test_conv_epilogue.py bounds it. An operand beyond fp16's range (x, w*s, t + r) takes the C path (the runner
checks when packing). Programs: ops/conv.py (GN's hardware-validated fp16 conv program, rocket_fp16_ew_ppu.md §2.2).

Matching reads the conv off the affine index maps (analysis.py). The kernel is [ReLU](epilogue(REDUCE(ADD, X * W))):
  - output loops only X reads are window rows/columns or images; the one only W reads is the kernel (direct); the
    one both read is the channel (depthwise); reduce loops are taps or input channels;
  - a window axis pairs an output loop o with a tap loop k: X's index moves by A per o and B per k, so along that axis
    it reads input element step * (o*stride + k*dilation) with step = gcd(A, B), stride = A/step, dilation =
    B/step. The packed input cube has one row (column) per such position, `step` input elements apart: the CPU
    gather builds it (an input stride the window does not need, e.g. a 1x1 stride-2 axis, costs no NPU work) and
    writes zero wherever the padding predicate fails, so the NPU convolves an unpadded cube (PAD_CON0 = 0, which also
    sidesteps the per-lane pad-value quirk, rocket_fp16_ew_ppu.md §6.C).
Every assignment of loops to roles that the predicates allow computes the same sums; the one whose tasks fit and have
the lowest modeled NPU time at mainline rocket's 200 MHz clock wins (`npu_seconds`: MAC-array cycles against the DMA
of input, weights and output, plus per-task overhead; a 3-channel input folds taps into its channels, which fills the
32-channel groups: all 49 taps of ResNet-18's 7x7 stem, 147 of 160 lanes). Without overlapping windows a convolution
is a matmul: taken here only when the input has two or more output loops of its own (1x1 and patch conv2d, conv1d of
several images); matmuls and a conv1d 1x1 of one image are left to the contraction rule, as is anything else that does
not fit, with the reason.

int8 convolutions (int8 input and weights summed in int32, as tinygrad writes int8 conv2d) run on the same datapath as
int8 conv tasks writing the int32 accumulator raw (ops/matmul.py INT8: exact, |sum| <= 2^29 per task), cast to the
kernel's output dtype when unpacking; ReLU of the int32 sum is fused. The depthwise datapath cannot write int32 (64
channels x 4 bytes per group need 16 atoms, more than SIZE_E holds: GN saw outputs at twice the stride,
rocket_fp16_ew_ppu.md §1.4), so an int8 depthwise convolution runs as direct ones, one per 32-channel group, each
reading its group's channels with block-diagonal weights (kernel c has tap weights at channel c only): the same sums,
one MAC-array step per pixel and tap like the depthwise datapath's, and one task per group and band where matmul
tiles take one per channel.

Work that does not fit the CBUF is split into output-row bands (ops.conv.row_split) and, when the weights are large,
into chunks of kernels; each image of a batch is its own set of tasks.
"""
from __future__ import annotations
import itertools, math
import numpy as np
from typing import Callable
from dataclasses import dataclass, replace
from tinygrad_rocket import regs
from tinygrad_rocket._tg import Ops, dtypes
from tinygrad_rocket.analysis import LoopNest, Load, Reduce, Alu, Const, Affine, Valid, Bound as Bound_
from tinygrad_rocket.rules.common import epilogue_loads, sum_terms, affine_degree, FLOATS, MAX_TASKS, strip_cast, uses, walk, is_zero, relu_form, leaky_arg, pexpr, Grid
from tinygrad_rocket.lower import NotApplicable
from tinygrad_rocket.program import NpuProgram, Copy, Var, Lin, Bound, SCRATCH, PEXPR_OPS, eval_pexpr
from tinygrad_rocket.ops.layout import Feature, Weights, DepthwiseWeights, align, ceil_div, c2, WEIGHT_GROUPS, DW_GROUPS, ELEMENT_BYTES, ATOM_BYTES
from tinygrad_rocket.ops.matmul import MAX_KERNEL_BYTES, MIN_ROWS, CBUF_BANKS, CBUF_BANK_BYTES, INT8, EW_MIN_PLANE_ATOMS, EwOperand, XStageOp
from tinygrad_rocket.ops.conv import (ConvSpec, conv_programs, row_split, kernel_chunks, input_height, overflow, in_rows, row_bytes,
                                      ew_tiles, ew_bytes)
from tinygrad_rocket.ops.program import entries, rebase, field_max, override

PRECISION, OUT_PRECISION = "fp16", "fp32"
# CNA field limits (register map): strides 3 bits, dilation-1 5 bits, kernel taps 5 bits, input/output width 11 bits.
# Output heights per task stay below the input's 11-bit height, so the DPU's 13-bit cube fields never bind.
MAX_STRIDE = field_max("CNA", "CONV_CON3", "CONV_X_STRIDE")
MAX_DILATION = field_max("CNA", "CONV_CON3", "ATROUS_X_DILATION") + 1
MAX_TAPS = field_max("CNA", "WEIGHT_SIZE2", "WEIGHT_WIDTH")
MAX_IN_WIDTH = field_max("CNA", "DATA_SIZE0", "DATAIN_WIDTH")
MAX_OUT_WIDTH = field_max("CNA", "DATA_SIZE2", "DATAOUT_WIDTH")
KERNEL_GROUP, CHANNEL_GROUP = WEIGHT_GROUPS[PRECISION]   # direct: kernels padded to 16, channels to 32 (§1.3, §2.2)
DW_GROUP = DW_GROUPS[PRECISION]                          # depthwise: channels padded to 32 (§1.3)
# ⚠ A depthwise task here carries all the channels (several 32-channel groups), as Mesa's int8 depthwise tasks carry
# several 64-channel groups and the emulator accepts; GN's validated fp16 tiling used one 32-channel chunk per task
# (rocket_fp16_ew_ppu.md §2.2). Not yet run on a board.
IN_BYTES, OUT_BYTES = ELEMENT_BYTES[PRECISION], ELEMENT_BYTES[OUT_PRECISION]

# int8 contractions (here and in rules/contraction.py): int8 operands; the REDUCE's dtype, in which the exact sum fits
# (|sum| < 2^31, ops/matmul.py MAX_ABS_SUM); the dtypes the int32 sum may be cast to when unpacking (numpy's astype from
# int32 is C's conversion on tinygrad's CPU device: wrapping for narrower integers, round to nearest for float32)
INT8_OPERANDS = {dtypes.int8}
INT_SUMS = {dtypes.int32, dtypes.int64}
INT_RESULTS = {dtypes.int8: "int8", dtypes.int16: "int16", dtypes.int32: "int32", dtypes.int64: "int64", dtypes.uint8: "uint8",
               dtypes.uint16: "uint16", dtypes.uint32: "uint32", dtypes.uint64: "uint64", dtypes.float32: "float32"}

@dataclass(frozen=True)
class Prec:
  """One datapath's numbers: CNA precision, DPU output precision, the numpy dtypes of the packed operands and of the
  output cube, kernel / channel / depthwise groups (§1.3) and element bytes."""
  name: str
  out: str
  np_in: str
  np_out: str
  @property
  def kernel_group(self) -> int: return WEIGHT_GROUPS[self.name][0]
  @property
  def channel_group(self) -> int: return WEIGHT_GROUPS[self.name][1]
  @property
  def dw_group(self) -> int: return DW_GROUPS[self.name]
  @property
  def in_bytes(self) -> int: return ELEMENT_BYTES[self.name]
  @property
  def out_bytes(self) -> int: return ELEMENT_BYTES[self.out]
  @property
  def weights_dtype(self) -> str: return "int8" if self.name == "int8" else "float16"

FP16_PREC = Prec(PRECISION, OUT_PRECISION, "float16", "float32")
INT8_PREC = Prec("int8", INT8["out"], "int8", "int32")   # int8 x int8 -> raw int32 (ops/matmul.py INT8)

def _np(dt) -> str:
  """numpy dtype name of a kernel buffer's dtype."""
  return FLOATS.get(dt) or INT_RESULTS[dt]

# Choosing a layout: each candidate's tasks are timed with the emulator's first-order cost model (emu/cost.py; the
# rule keeps its own copy of the numbers, tests/test_conv_rule.py checks they agree): a task takes
# max(MAC-array cycles / clock, DMA bytes / bandwidth), every task after a job's first adds the per-task overhead.
# - LAYOUT_CLOCK_HZ: stock mainline rocket runs the NPU at 200 MHz and never changes it (no devfreq, the device tree
#   assigns 200 MHz; raising it needs an out-of-tree patch and a pinned 900 MHz hard-locked the board: landscape.md
#   §1.2 and §0 item 4, rocket_fp16_ew_ppu.md §6.E, GN perf/clock.md). This backend drives mainline rocket, so its
#   layouts are chosen for that clock. It matters for 3-channel stems: folding all taps into the channels fills the
#   MAC array (ResNet-18's 7x7 3->64: 147 of 160 lanes) but reads a 2.4x larger cube, which costs more than the MAC
#   cycles it saves at the 1 GHz TRM maximum and less at 200 MHz (docs/benchmarks.md, "3-channel stems").
# - DMA_BYTES_PER_S: 10.9 GB/s per core, the measured NPU weight-streaming bandwidth (landscape.md §1.3); DRAM-side,
#   so independent of the NPU clock.
# - PER_TASK_OVERHEAD_S: 29 us per further task on stock rocket (one IRQ round trip and the kernel kicking the next
#   task, 27-31 us: rocket_fp16_ew_ppu.md §6.E).
LAYOUT_CLOCK_HZ = 200_000_000
DMA_BYTES_PER_S = 10.9e9
PER_TASK_OVERHEAD_S = 29e-6

# ***** matching *****

@dataclass(frozen=True)
class Axis:
  """A window axis of the packed cube: position p = o*stride + k*dilation of output loop `out` and tap loop `tap`
  (None: one output / one tap) reads the input `step` elements per position."""
  out: int|None
  tap: int|None
  stride: int = 1
  dilation: int = 1
  step: int = 0

  def n_out(self, sz:dict[int, int]) -> int: return sz[self.out] if self.out is not None else 1
  def n_tap(self, sz:dict[int, int]) -> int: return sz[self.tap] if self.tap is not None else 1
  def extent(self, sz:dict[int, int]) -> int: return (self.n_out(sz) - 1) * self.stride + (self.n_tap(sz) - 1) * self.dilation + 1
  @property
  def loops(self) -> set[int]: return {r for r in (self.out, self.tap) if r is not None}
  def reuses(self, sz:dict[int, int]) -> bool:
    """Whether windows overlap: o1*stride + k1*dilation = o2*stride + k2*dilation for two different outputs. stride
    and dilation are coprime, so the closest such outputs are `dilation` apart with taps `stride` apart."""
    return self.dilation < self.n_out(sz) and self.stride < self.n_tap(sz)
  def scale(self, e:Affine) -> int|None:
    """t such that e's terms in this axis's loops are t * (o*stride + k*dilation), or None."""
    p, q = (e.coeff(r) if r is not None else 0 for r in (self.out, self.tap))
    if p % self.stride or q % self.dilation: return None
    if self.out is not None and self.tap is not None and p // self.stride != q // self.dilation: return None
    return p // self.stride if self.out is not None else q // self.dilation

def _span(x:Load, ax:Axis, sz:dict[int, int]) -> tuple[int, int]|None:
  """[lo, hi): the positions along `ax` that the padding predicates confined to its loops allow (tinygrad simplifies
  them to forms equivalent on the loops' ranges only, so they are evaluated there), or None if validity is not a
  function of the position or not one interval of the positions the windows use."""
  preds = [b for b in x.valid if b.expr.ranges() <= ax.loops]
  if not preds: return 0, ax.extent(sz)
  o, k = (a.reshape(-1) for a in np.indices((ax.n_out(sz), ax.n_tap(sz))))
  point = {r: v for r, v in ((ax.out, o), (ax.tap, k)) if r is not None}
  ok = np.ones(o.shape, bool)
  for b in preds:
    v = b.expr.const + sum(c * point[r] for r, c in b.expr.terms)
    if b.lo is not None: ok &= v >= b.lo
    if b.hi is not None: ok &= v < b.hi
  pos = o * ax.stride + k * ax.dilation
  valid, invalid = set(pos[ok].tolist()), set(pos[~ok].tolist())
  if valid & invalid: return None
  if not valid: return 0, 0
  lo, hi = min(valid), max(valid) + 1
  return None if any(lo <= p < hi for p in invalid) else (lo, hi)

@dataclass(frozen=True)
class Conv:
  x: Load                  # the input
  w: Load                  # the weights
  images: tuple[int, ...]  # output loops enumerated as separate images
  kernel: int|None         # output loop of the kernels (direct) or of the channels (depthwise); None: one
  channels: tuple[int, ...]  # reduce loops forming the input channel (direct; () for depthwise)
  ay: Axis
  ax: Axis
  span_y: tuple[int, int]  # [lo, hi) of the cube rows / columns that are input, not padding (`_span`)
  span_x: tuple[int, int]
  rest: tuple[Bound_, ...] # padding predicates over several axes, channels or images (linear in the cube's positions)
  depthwise: bool
  relu: bool
  prec: Prec = FP16_PREC
  clip: float|None = None      # with relu: results clamped to [0, clip] (ReLU6)
  epi: Epilogue|None = None    # an affine epilogue s*acc + t (fp16 path)
  pro: Prologue|None = None    # the input is computed from loads when packing (x is then its widest operand)
  leaky: float|None = None     # the result is where(u < 0, leaky*u, u), u the conv (scaled weights at most)
  @property
  def diagonal(self) -> bool:
    """A depthwise convolution run as direct ones per channel group with block-diagonal weights (int8: the DPU has no
    int32 depthwise writer)."""
    return self.depthwise and self.prec.name == "int8"

# ***** prologues *****
# An op tinygrad fused into the conv's input (an input normalization (x - mean)/std, x*2 + 1, ReLU, a clip) is applied
# by the CPU while it packs the input cube anyway: the value is evaluated in float64 from its operands (each read at
# its own index: a per-channel mean at the cube's channel, x at the pixel) and rounded to fp16 once, exactly as a
# loaded float32 input is. The cube's padding (where the padding predicate fails) holds the computed value's own
# padding (tinygrad pads the computed value: where(valid, f(x), 0) is 0 there, x.pad(..) + 1 is 1); the channels
# past the input's are that value too, which the zero weights of those channels cancel. Its operands' versions key
# the packed cube like the input's (Copy.params: device.py repacks when mean or std change).

@dataclass(frozen=True)
class Prologue:
  """The conv's input as an expression of loads and constants (`expr`: its value where the padding predicate holds),
  with `fill` at the padding."""
  expr: object
  loads: tuple[Load, ...]
  fill: float

def _at_padding(e, pred:frozenset) -> float|str:
  """e's value where the predicate fails, each padded load reading its padding (a gated load without one reads 0, as
  tinygrad's code does), or why it is not a constant."""
  pads: dict[tuple[int, Affine], float] = {}
  for ld in (x for x in walk(e) if isinstance(x, Load)):
    if frozenset(ld.valid) != pred: return "an operand of the computed input is not padded like the input"
    pads[(ld.slot, ld.index)] = float(ld.pad) if ld.pad is not None else 0.0
  return float(eval_pexpr(pexpr(e, lambda a: a), lambda slot, _, index: pads[(slot, index)], 0.0))

def _factors(e) -> list:
  """The factors of a product (through casts): (x + c) * 4 * w -> [x + c, 4, w]."""
  e = strip_cast(e)
  return [f for s in e.src for f in _factors(s)] if isinstance(e, Alu) and e.op is Ops.MUL else [e]

def _selects(e):
  """e with tinygrad's selects written as max: where(u < v, v, u) = max(u, v), where(u < v, u, v) = min(u, v) =
  -max(-u, -v) (clamp, clip, hardtanh), and the leaky ReLU where(u < 0, a*u, u) = max(u, a*u) for a <= 1, min for
  a >= 1 (rules/elementwise.py LEAKY_AS_MAX); equal on finite values, and a non-finite computed value sends the call to
  the C code (the packing's check)."""
  if not isinstance(e, Alu): return e
  neg = lambda x: Alu(Ops.NEG, (x,), x.dtype if isinstance(x, Alu) else e.dtype)
  mx = lambda u, v: Alu(Ops.MAX, (u, v), e.dtype)
  if e.op is Ops.WHERE and isinstance(cond := strip_cast(e.src[0]), Alu) and cond.op is Ops.CMPLT:
    u, v = (strip_cast(s) for s in cond.src)
    p, q = strip_cast(e.src[1]), strip_cast(e.src[2])
    if (p, q) == (v, u): return mx(_selects(u), _selects(v))
    if (p, q) == (u, v): return neg(mx(neg(_selects(u)), neg(_selects(v))))
    if (lk := leaky_arg(e)) is not None:
      u, au = _selects(strip_cast(lk[0])), Alu(Ops.MUL, (_selects(strip_cast(lk[0])), Const(lk[1], e.dtype)), e.dtype)
      return mx(u, au) if lk[1] <= 1 else neg(mx(neg(u), neg(au)))
  return Alu(e.op, tuple(_selects(s) for s in e.src), e.dtype)

def _computed_input(e, nest:LoopNest) -> tuple[Load, Prologue]|str:
  """(a load standing for the input's geometry: its widest operand with the padding predicate, the prologue) of a
  computed conv input, or why the packing cannot compute it."""
  pred: frozenset|None = None
  if isinstance(e, Alu) and e.op is Ops.WHERE and isinstance(e.src[0], Valid):   # where(valid, f, pad): f(padding) != pad
    if not isinstance(c := strip_cast(e.src[2]), Const): return "the computed input's padding is not a constant"
    pred, fill, e = frozenset(e.src[0].bounds), float(c.value), e.src[1]
  e = _selects(e)
  for x in walk(e):
    if isinstance(x, (Reduce, Valid)): return "the conv's input is computed by a reduction or a nested padding"
    if isinstance(x, Alu) and (x.op.name not in PEXPR_OPS or x.dtype not in FLOATS):
      return f"the computed input uses {x.op.name} in {x.dtype} (the packing evaluates float ADD/MUL/MAX/reciprocal/sqrt/exp2/log2)"
  loads = tuple(dict.fromkeys(x for x in walk(e) if isinstance(x, Load)))
  if not loads: return "the conv's input is a constant"
  for ld in loads:
    if ld.dtype not in FLOATS: return f"the computed input reads {ld.dtype} (float32/float16 only)"
    if ld.size < 0: return "an operand of the computed input has a buffer of unknown size"
  padded = {frozenset(ld.valid) for ld in loads if ld.valid}
  if pred is None:   # padded loads (f(padding) is the value there): all alike, the value a constant
    if len(padded) > 1: return "the computed input's operands are padded differently"
    pred = next(iter(padded), frozenset())
    fill = 0.0
    if pred and isinstance(fill := _at_padding(e, pred), str): return fill
  elif padded - {pred}: return "an operand of the computed input is padded differently from the input"
  wide = [ld for ld in loads if all(x.index.ranges() <= ld.index.ranges() | {r for b in pred for r in b.expr.ranges()} for x in loads)]
  if not wide: return "no operand of the computed input varies with all of its loops"
  if not math.isfinite(fill): return f"the computed input's padding is {fill} (not finite in fp16)"
  return replace(wide[0], valid=tuple(dict.fromkeys(sorted(pred, key=repr))), pad=None), Prologue(e, loads, fill)

def _prologue_axes(c:Conv) -> str|None:
  """Why some operand of c's computed input cannot be read at the packed cube's positions, or None: along each window
  axis its index must move as t * (o*stride + k*dilation) (x: t = step; a per-channel mean: t = 0)."""
  assert c.pro is not None
  if any(ax.scale(ld.index) is None for ld in c.pro.loads for ax in (c.ay, c.ax)):
    return "an operand of the computed input does not follow the window's rows and columns"
  return None

# ***** epilogues *****
# The per-pixel epilogue operand (t: a bias, BatchNorm's shift, a residual, summed on the CPU in float64) is read as
# fp16 (EDATA_SIZE 16-bit): the conv-fed EW add GN validated bit-exact (rocket_fp16_ew_ppu.md §2.3), within the
# "EW operand DMA <= 16-bit" of landscape.md; the 32-bit reads of the K-split partials (§7.3) would keep t in fp32 at
# twice the operand DMA. So t + r is rounded to fp16 once, as the contraction rule's intercept and residual columns are.
EPILOGUE_OPERAND_BYTES = 2
OUT_SLOT = SCRATCH + 2  # the output cubes' scratch buffer
EW_SLOT = SCRATCH + 3   # the operand cubes' scratch buffer (a leaky ReLU's u cubes)
# Leaky ReLU, where(u < 0, a*u, u) with a constant slope a (tinygrad's leaky_relu), as the contraction rule runs it
# (rules/contraction.py _leaky_tasks; README "leaky ReLU / PReLU"): per band two tasks, the first writes u in fp32 as a
# plain cube (the EW operand geometry, ew_tiles), the second recomputes the band (the same fp16 operands and fp32 sums:
# the same u) with the BS stage's MUL by fp16(a) and its EW stage's max with u (min for a > 1; LEAKY_AS_MAX in
# rules/elementwise.py), u read as a 32-bit operand (§2.3/§7.3). The DPU's MUL_PRELU is not used (untested on RK3588,
# §6.F). A shift (bias, BatchNorm's shift, a residual) would need the BS add in both tasks, a*t in the second; not done:
# such kernels are the contraction rule's (t a K column there).
LEAKY_OPERAND_BYTES = 4

@dataclass(frozen=True)
class Epilogue:
  """An epilogue affine in the sum, s*acc + t (rules/common.py's epilogue analysis: affine_degree, sum_terms; a
  residual is one more term of t). s, from the terms holding the sum (`scaled`), must vary with the kernels only: it
  multiplies each kernel's weights when packing (rounded to fp16 once, as the contraction rule folds it). t is a
  constant (`shift`: the BS stage's fp32 add; None with `operand` False: t = 0) or varies per output element
  (`operand`: an fp16 cube per task, evaluated from the epilogue's operands when packing, that the EW stage adds)."""
  expr: object         # the whole epilogue, the Reduce in it
  scaled: object       # its sum terms holding the Reduce: s = scaled(acc=1) - scaled(acc=0)
  unit: bool           # s is 1: the weights are packed as they are
  shift: float|None
  operand: bool
  loads: tuple[Load, ...]        # the epilogue's operands (not the sum's)
  scale_loads: tuple[Load, ...]  # those of `scaled`

def _vanishes(e, red:Reduce) -> bool:
  """Whether e is 0 at acc = 0 whatever its operands (conv * s: no shift)."""
  if e == red: return True
  if isinstance(e, Const): return e.value == 0
  if not isinstance(e, Alu): return False
  if e.op is Ops.MUL: return any(_vanishes(x, red) for x in e.src)
  if e.op in (Ops.ADD, Ops.CAST): return all(_vanishes(x, red) for x in e.src)
  return False

def _epilogue(e, red:Reduce, nest:LoopNest) -> Epilogue|NotApplicable:
  """The affine epilogue e of the sum `red`, or why the conv datapath does not take it."""
  if isinstance(deg := affine_degree(e, red), str): return NotApplicable(deg)
  if deg != 1: return NotApplicable("the epilogue does not depend on the sum")
  terms = sum_terms(e)
  held = [t for t in terms if affine_degree(t, red) == 1]
  rest = [t for t in terms if affine_degree(t, red) != 1]
  scaled = held[0]
  for t in held[1:]: scaled = Alu(Ops.ADD, (scaled, t), nest.out_dtype)
  loads = epilogue_loads(e)
  for ld in loads:
    if ld.dtype not in FLOATS: return NotApplicable(f"epilogue operand dtype {ld.dtype} (float32/float16 only)")
    if ld.valid: return NotApplicable("a padded epilogue operand (the contraction rule gathers it with its predicate)")
    if not uses(ld) <= set(nest.output_ranges): return NotApplicable("an epilogue operand varies with a reduce loop")
  operand = any(epilogue_loads(t) for t in rest) or (bool(epilogue_loads(scaled)) and not _vanishes(scaled, red))
  shift = None
  if not operand:   # t is a constant: the terms without the sum, and the scaled part at acc = 0 (0 if it has operands)
    t = sum(float(eval_pexpr(pexpr(x, lambda a: None), None, 0.0)) for x in rest)
    if not epilogue_loads(scaled): t += float(eval_pexpr(pexpr(scaled, lambda a: None), None, 0.0))
    shift = t if t != 0 else None
  return Epilogue(e, scaled, strip_cast(scaled) == red, shift, operand, tuple(loads), tuple(epilogue_loads(scaled)))

def _axis(x:Load, out:int|None, tap:int|None) -> Axis|str:
  A, B = (x.index.coeff(r) if r is not None else 0 for r in (out, tap))
  if out is not None and tap is not None:
    if A == B == 0:  # an input one element wide: tinygrad folds the position into the padding predicate
      A, B = next(((b.expr.coeff(out), b.expr.coeff(tap)) for b in x.valid if b.expr.coeff(out) and b.expr.coeff(tap)), (1, 1))
      zero = True
    else: zero = False
    if A == 0 or B == 0 or (A > 0) != (B > 0): return f"loops {out} and {tap} do not step the input the same way"
    step = math.gcd(A, B) * (1 if A > 0 else -1)
    ax = Axis(out, tap, A // step, B // step, 0 if zero else step)
  else: ax = Axis(out, tap, 1, 1, A or B)
  if ax.stride > MAX_STRIDE: return f"stride {ax.stride} > {MAX_STRIDE} (CONV_STRIDE field)"
  if ax.dilation > MAX_DILATION: return f"dilation {ax.dilation} > {MAX_DILATION} (ATROUS_DILATION field)"
  return ax

def _roles(nest:LoopNest, x:Load, w:Load) -> tuple[list[int], int|None, bool]|str:
  """(output loops only X reads, the kernel/channel loop, depthwise) or why X and W are not a convolution's."""
  ux, uw = uses(x), uses(w)
  outs = nest.output_ranges
  if any(r not in ux and r not in uw for r in outs): return "an output loop is read by neither operand (broadcast output)"
  if any(r not in ux or r not in uw for r in nest.reduce_ranges): return "a reduce loop is read by only one operand"
  x_only = [r for r in outs if r not in uw]
  w_only = [r for r in outs if r not in ux]
  shared = [r for r in outs if r in ux and r in uw]
  if len(shared) > 1: return "several output loops read by both operands (grouped or per-image weights)"
  if shared and w_only: return "grouped convolution with several kernels per group (groups != 1 and != channels)"
  if len(w_only) > 1: return "several kernel loops"
  return x_only, (shared or w_only or [None])[0], bool(shared)

def _candidates(nest:LoopNest, x:Load, w:Load, relu:bool, pr:Prec=FP16_PREC, padded_prologue:bool=False) -> tuple[list[tuple[tuple, float, Conv]], list[str]]:
  """Every assignment of loops to window axes that fits, with its tie-break key and a lower bound of its modeled NPU
  time; why others do not. `padded_prologue`: x is a computed input with padding."""
  roles = _roles(nest, x, w)
  if isinstance(roles, str): return [], [roles]
  x_only, kernel, dw = roles
  sz, red = nest.ranges, nest.reduce_ranges
  found, why = [], []
  outs, taps = [None, *x_only], [None, *red]
  # without overlapping windows a convolution is a matmul: taken here only if the input has a convolution's loops
  # (images, rows and columns: two or more), else (a matmul, a conv1d 1x1 of one image) it is the contraction rule's --
  # unless the input is computed and padded: the contraction rule computes prologues in DPU stages, which cannot give
  # the padding the computed value's own value (a padded conv with one output position, e.g. 4x4 input, k3 d2 s2 p1)
  windowless = len(x_only) >= 2 or padded_prologue
  for oy, ox, ky, kx in itertools.product(outs, outs, taps, taps):
    if (oy is not None and oy == ox) or (ky is not None and ky == kx): continue
    ay, ax = _axis(x, oy, ky), _axis(x, ox, kx)
    if isinstance(ay, str) or isinstance(ax, str):
      why.append(ay if isinstance(ay, str) else ax)
      continue
    if not (windowless or ay.reuses(sz) or ax.reuses(sz)): continue
    channels = tuple(r for r in red if r not in (ky, kx))
    if dw and channels:
      why.append("depthwise with several input channels per group (grouped convolution)")
      continue
    spans = _span(x, ay, sz), _span(x, ax, sz)
    rest = tuple(b for b in x.valid if not (b.expr.ranges() <= ay.loops or b.expr.ranges() <= ax.loops))
    if spans[0] is None or spans[1] is None or any(ay.scale(b.expr) is None or ax.scale(b.expr) is None for b in rest):
      why.append("a padding predicate does not follow the window's rows and columns")
      continue
    images = tuple(r for r in x_only if r not in (oy, ox))
    C = sz[kernel] if dw else math.prod(sz[r] for r in channels)
    n_img = math.prod(sz[r] for r in images)
    # ties in NPU time (`npu_seconds`) go to the smaller packed input: the CPU gathers it on every call
    cube = n_img * align(C, pr.dw_group if dw else pr.channel_group) * max(ay.extent(sz), MIN_ROWS) * ax.extent(sz) * pr.in_bytes
    # a lower bound of npu_seconds, to skip planning candidates that cannot win: its sum of per-task maxima is at
    # least the max of the sums; the weights are read at least once, every cube row at least once per image; a task
    # holds at most CBUF_BANKS - 1 banks of weights (one is the input's) and as many of input rows
    K = sz[kernel] if kernel is not None else 1
    Cp, Kp = (align(C, pr.dw_group),) * 2 if dw else (align(C, pr.channel_group), align(K, pr.kernel_group))
    pixels, taps = n_img * ay.n_out(sz) * ax.n_out(sz), ay.n_tap(sz) * ax.n_tap(sz)
    cycles = pixels * taps * (Cp // pr.dw_group if dw else Cp // pr.channel_group * Kp // pr.kernel_group)
    wbytes = taps * Cp * (1 if dw else Kp) * pr.in_bytes
    nbytes = cube + wbytes + pixels * ceil_div(Kp, c2(pr.out_bytes)) * ATOM_BYTES
    tasks = n_img * max(1, ceil_div(max(wbytes, cube // n_img), (CBUF_BANKS - 1) * CBUF_BANK_BYTES))
    bound = max(cycles / LAYOUT_CLOCK_HZ, nbytes / DMA_BYTES_PER_S) + (tasks - 1) * PER_TASK_OVERHEAD_S
    found.append(((cube, n_img, abs(ax.step)), bound, Conv(x, w, images, kernel, channels, ay, ax, *spans, rest, dw, relu, pr)))
  if not found and not why:
    why.append("no overlapping kernel windows and one output loop of the input: a matmul (the contraction rule's)")
  return found, why

@dataclass(frozen=True)
class Layout:
  """How a candidate runs: the task spec its tasks share (cube rows cover what the last band reads), the kernels per
  task (None: all) and the number of images (each its own set of tasks)."""
  spec: ConvSpec
  kernels_per_task: int|None
  images: int
  ew_nbytes: int = 0     # bytes per element of a per-pixel EW operand each task reads (0: none)

def layout(c:Conv, sz:dict[int, int]) -> Layout|str:
  """The tasks of candidate `c`, or why its cube or weights do not fit the CNA's fields and the CBUF."""
  K = sz[c.kernel] if c.kernel is not None else 1
  C = K if c.depthwise else math.prod(sz[r] for r in c.channels)
  pr = c.prec
  dw = c.depthwise and not c.diagonal   # the depthwise datapath
  Cp = align(C, pr.dw_group if dw else pr.channel_group)
  if c.diagonal: C, Cp = min(C, pr.channel_group), pr.channel_group   # each task: one group's channels (conv_programs)
  KH, KW = c.ay.n_tap(sz), c.ax.n_tap(sz)
  He, We = c.ay.extent(sz), c.ax.extent(sz)
  OW = c.ax.n_out(sz)
  if max(KH, KW) > MAX_TAPS: return f"kernel {KH}x{KW} (max {MAX_TAPS} taps per axis)"
  if We > MAX_IN_WIDTH: return f"input rows of {We} (max {MAX_IN_WIDTH}: width splitting not implemented)"
  if OW > MAX_OUT_WIDTH: return f"output rows of {OW} (max {MAX_OUT_WIDTH})"
  if not dw and KH * KW * Cp * pr.in_bytes > MAX_KERNEL_BYTES:
    return (f"{KH * KW * Cp * pr.in_bytes} weight bytes per kernel (max {MAX_KERNEL_BYTES}, one CBUF bank): "
            "channel splitting not implemented")
  # the cube gets MIN_ROWS spare zero rows for the bands' planning; the packed cube keeps what the last band reads
  assert not c.diagonal or pr.channel_group == pr.kernel_group
  base = ConvSpec(pr.name, Cp, He + MIN_ROWS, We, Cp if dw else align(K, pr.kernel_group), KH, KW,
                  (c.ay.stride, c.ax.stride), (0, 0), (c.ay.dilation, c.ax.dilation), dw, pr.out,
                  out_hw=(c.ay.n_out(sz), OW), channels_real=C)
  kpt = plan(base) if not c.diagonal else pr.kernel_group if base.kernels > pr.kernel_group else None
  if c.diagonal and (why := next((w for _, sub in kernel_chunks(base, kpt) if (w := overflow(sub, row_split(sub)))), None)): return why
  if isinstance(kpt, str): return kpt
  n_img = math.prod(sz[r] for r in c.images)
  if (ntasks := n_img * sum(len(row_split(sub)) for _, sub in kernel_chunks(base, kpt)) * (2 if c.leaky is not None else 1)) > MAX_TASKS:
    return f"{ntasks} tasks (max {MAX_TASKS}): tiling too fine"
  spec = replace(base, H=max(He, input_height(base, kpt)))
  if c.leaky is not None: nbytes = LEAKY_OPERAND_BYTES
  elif c.epi is None or not c.epi.operand: return Layout(spec, kpt, n_img)
  else: nbytes = EPILOGUE_OPERAND_BYTES
  if (small := min((o1 - o0) * sub.OW for _, sub, (o0, o1), _ in ew_tiles(spec, kpt, nbytes))) < EW_MIN_PLANE_ATOMS:
    return (f"a task's output plane of {small} pixels: the EW stage's per-pixel operand needs >= {EW_MIN_PLANE_ATOMS} "
            "(rocket_fp16_ew_ppu.md §2.3, §6.C)")
  return Layout(spec, kpt, n_img, nbytes)

def npu_seconds(l:Layout) -> float:
  """Modeled NPU time of a layout's tasks at LAYOUT_CLOCK_HZ, as the emulator's cost model (emu/cost.py) times them:
  MAC-array cycles (one kernel group x channel group, or one depthwise channel group, per output pixel and tap,
  rocket_fp16_ew_ppu.md §1.3) against the task's DMA (its input rows, its weights, its fp32 output, an epilogue's
  per-pixel operand), plus the per-task overhead. The regcmd fetch (under 2 KiB a task) is left out."""
  busy, n = 0.0, 0
  for _, s in kernel_chunks(l.spec, l.kernels_per_task):
    groups = ceil_div(s.C, s.group) if s.depthwise else ceil_div(s.C, WEIGHT_GROUPS[s.precision][1]) * ceil_div(s.kernels, s.group)
    for o0, o1 in row_split(s):
      top, bottom = in_rows(s, o0, o1)
      cycles = (o1 - o0) * s.OW * s.kh * s.kw * groups
      nbytes = (bottom - top) * row_bytes(s) + s.weight_bytes + (o1 - o0) * s.OW * ceil_div(s.OC, c2(s.out_bytes)) * ATOM_BYTES
      if l.ew_nbytes: nbytes += (o1 - o0) * s.OW * ceil_div(s.OC, c2(l.ew_nbytes)) * ATOM_BYTES
      busy += max(cycles / LAYOUT_CLOCK_HZ, nbytes / DMA_BYTES_PER_S)
      n += 1
  return l.images * busy + (l.images * n - 1) * PER_TASK_OVERHEAD_S

def int8_sum(nest:LoopNest) -> tuple[Reduce, bool]|NotApplicable:
  """(the REDUCE, relu) of [CAST](REDUCE(ADD)) or [CAST](MAX(REDUCE, 0)) summing in int32/int64: the forms both rules
  fuse for int8 operands (the sum is exact on the NPU, int32 out, so the cast to the output dtype is the CPU's; a cast
  inside the MAX narrows before the ReLU and is not fused)."""
  if nest.out_dtype not in INT_RESULTS: return NotApplicable(f"integer contraction with output dtype {nest.out_dtype}")
  e = nest.value
  if isinstance(e, Alu) and e.op is Ops.CAST: e = e.src[0]
  relu = False
  if isinstance(e, Alu) and e.op is Ops.MAX and any(is_zero(s) for s in e.src):
    relu, e = True, next(s for s in e.src if not is_zero(s))
    while isinstance(e, Alu) and e.op is Ops.CAST and e.dtype in INT_SUMS: e = e.src[0]   # widening: max commutes with it
  if isinstance(e, Alu) and e.op is Ops.CAST and isinstance(strip_cast(e), Reduce):
    return NotApplicable(f"a chain of casts of the integer sum (to {e.dtype}, then {nest.out_dtype}): one cast is fused "
                         "(the unpack converts once)")
  if not isinstance(e, Reduce):
    what = e.op.name if isinstance(e, Alu) else type(e).__name__
    return NotApplicable(f"integer contraction with an epilogue ({what}): only ReLU of the int32 sum and one cast are fused "
                         "(an int32 bias add wraps on the CPU where the DPU's adder saturates; float scales round)")
  if e.dtype not in INT_SUMS: return NotApplicable(f"integer products summed in {e.dtype} (int32/int64 only)")
  return e, relu

def match(nest:LoopNest, agree:Callable[[Conv], bool]|None=None) -> tuple[Conv, Layout]|NotApplicable:
  """The conv (the fitting candidate with the lowest modeled NPU time; with `agree`, among those it accepts: a second
  conv of rules/conv_pair.py on the first one's output grid) and its layout, or why none."""
  pr = INT8_PREC if any(isinstance(x, Reduce) and dtypes.is_int(x.dtype) for x in walk(nest.value)) else FP16_PREC
  if pr is INT8_PREC:
    if isinstance(iv := int8_sum(nest), NotApplicable): return iv
    e, relu = iv
  clip, epi, leaky = None, None, None
  if pr is FP16_PREC:   # [ReLU | ReLU6](affine epilogue(REDUCE)), the forms the contraction rule fuses (but activations)
    if nest.out_dtype not in FLOATS: return NotApplicable(f"output dtype {nest.out_dtype} (float32/float16 only)")
    e, relu, clip = relu_form(strip_cast(nest.value))
    if not relu and (lk := leaky_arg(e)) is not None and any(isinstance(x, Reduce) for x in walk(lk[0])):
      with np.errstate(over="ignore"): finite = bool(np.isfinite(np.float16(lk[1])))
      if not finite: return NotApplicable(f"a leaky ReLU of slope {lk[1]} (not finite in fp16, the BS multiplier)")
      e, relu, leaky = strip_cast(lk[0]), lk[1] == 0, (lk[1] if lk[1] not in (0, 1) else None)
    if not isinstance(e, Reduce):
      reds = list(dict.fromkeys(x for x in walk(e) if isinstance(x, Reduce)))
      if len(reds) != 1: return NotApplicable(f"{len(reds)} reductions in the kernel (a convolution has one)")
      if isinstance(epi := _epilogue(e, reds[0], nest), NotApplicable): return epi
      if leaky is not None and (epi.shift is not None or epi.operand):
        return NotApplicable("a leaky ReLU after a shifted epilogue (a bias, BatchNorm's shift, a residual): the EW stage "
                             "is the max's, the shift would have no stage in the recomputing task")
      e = reds[0]
  if not isinstance(e, Reduce): return NotApplicable(f"an epilogue ({e.op.name if isinstance(e, Alu) else type(e).__name__}) follows the reduction")
  if e.op is not Ops.ADD: return NotApplicable(f"REDUCE({e.op.name}) is not a convolution")
  if set(e.ranges) != set(nest.reduce_ranges): return NotApplicable("reduce ranges outside the REDUCE")
  factors = _factors(e.src)
  if len(rest := [f for f in factors if not isinstance(f, Const)]) != 2:
    return NotApplicable("the reduced value is not a product of two operands" if len(rest) < 2 else
                         "a product of more than two operands (which factors are the weights is not told)")
  a, b = rest
  pro, consts = None, [f for f in factors if isinstance(f, Const)]
  if not (isinstance(a, Load) and isinstance(b, Load)) or consts:   # a computed input (the weights are a load)
    if pr is INT8_PREC: return NotApplicable("an int8 operand is computed (only loaded int8 operands are exact)")
    if isinstance(b, Load) and not isinstance(a, Load): a, b = b, a
    if not isinstance(a, Load): return NotApplicable("both factors of the reduced product are computed (the weights must be loaded)")
    if isinstance(b, Load): return NotApplicable("a constant factor in the product of two loaded operands")
    for k in consts: b = Alu(Ops.MUL, (b, k), nest.out_dtype)   # (x + c)*4 * w as tinygrad folds (x + c)/0.25 * w
    if isinstance(comp := _computed_input(b, nest), str): return NotApplicable(comp)
    b, pro = comp
    if nest.precision == "fp32" and any(ld.dtype == dtypes.float32 for ld in pro.loads):
      return NotApplicable("ROCKET_PRECISION=fp32: the computed float32 input would be rounded to fp16")
  for ld in (a, b):
    if pr is INT8_PREC:
      if ld.dtype not in INT8_OPERANDS: return NotApplicable(f"integer operand dtype {ld.dtype} (int8 only)")
    elif ld.dtype not in FLOATS: return NotApplicable(f"operand dtype {ld.dtype} (float32/float16 only)")
    if ld.dtype == dtypes.float32 and nest.precision == "fp32":
      return NotApplicable("ROCKET_PRECISION=fp32: float32 operands would be rounded to fp16")
    if ld.valid and ld.pad not in (0, 0.0, None): return NotApplicable(f"padding value {ld.pad} (only zero padding)")
    if ld.size < 0: return NotApplicable("operand buffer of unknown size")
  found, why = [], []   # why: the reasons of orientations whose loops have a convolution's roles first
  for x, w in ((a, b), (b, a)):
    if w.valid: why.append((2, "the weights are padded")); continue
    if pro is not None and w is b: why.append((2, "the weights are computed (only the input may be)")); continue
    f, reasons = _candidates(nest, x, w, relu, pr, padded_prologue=pro is not None and x is b and bool(x.valid))
    found += f
    why += [(int(isinstance(_roles(nest, x, w), str)), r) for r in reasons]
  if not found: return NotApplicable("; ".join(dict.fromkeys(r for _, r in sorted(why, key=lambda t: t[0]))))
  # every candidate computes the same sums: the one with the lowest modeled NPU time that fits wins
  best, unfit = None, []
  for key, bound, c in sorted(found, key=lambda t: (t[1], t[0])):
    if best is not None and bound > best[0][0]: break
    c = replace(c, clip=clip, epi=epi, pro=pro, leaky=leaky)
    if agree is not None and not agree(c): unfit.append("no assignment of its loops agrees with the other conv's output grid"); continue
    if pro is not None and (why_pro := _prologue_axes(c)) is not None: unfit.append(why_pro); continue
    if epi is not None and not all(uses(ld) <= {c.kernel} - {None} for ld in epi.scale_loads):
      unfit.append("the epilogue's scale varies with more than the output channel (only per-kernel scales fold into the weights)")
      continue
    l = layout(c, nest.ranges)
    if isinstance(l, str): unfit.append(l); continue
    score = (npu_seconds(l), *key)
    if best is None or score < best[0]: best = (score, c, l)
  if best is None: return NotApplicable(unfit[0])
  return best[1], best[2]

# ***** packing and tasks *****

class Points:
  """The values of one Copy: its grid coordinates, then Vars appended by `var`."""
  def __init__(self, grid:tuple[int, ...]): self.grid, self.vars = grid, []
  def var(self, coeffs:tuple[int, ...], const:int=0, div:int=1, mod:int=0) -> int:
    self.vars.append(Var(coeffs, const, div, mod))
    return len(self.grid) + len(self.vars) - 1
  def digits(self, loops:tuple[int, ...], sz:dict[int, int], coeffs:tuple[int, ...]) -> dict[int, int]:
    """Value index of each loop recovered (row-major, last fastest) from the linear value sum(coord * coeffs)."""
    pos, below = {}, 1
    for r in reversed(loops):
      pos[r] = self.var(coeffs, 0, below, sz[r])
      below *= sz[r]
    return pos

def lin(terms:dict[int, int], const:int) -> Lin:
  n = max(terms, default=-1) + 1
  return Lin(tuple(terms.get(i, 0) for i in range(n)), const)

def affine_terms(e:Affine, pos:dict[int, int], fixed:dict[int, int], skip:set[int]) -> tuple[dict[int, int], int]:
  """e over a Copy's values: loop r is value pos[r], or the constant fixed[r]; loops in `skip` are left out."""
  terms, const = {}, e.const
  for r, k in e.terms:
    if r in skip: continue
    if r in fixed: const += k * fixed[r]
    else: terms[pos[r]] = terms.get(pos[r], 0) + k
  return terms, const

def pack_input(c:Conv, sz:dict[int, int], cube:Feature, fixed:dict[int, int], dst:int, base:int, C:int) -> Copy:
  """Image `fixed` of X into the NC1HWC2 cube (C1, rows, columns, C2) at element `base`: zero in channel padding,
  past the window rows (rows the 4-row minimum adds) and wherever the padding predicate fails."""
  pts = Points(cube.grid())
  ch_lin = (cube.c2, 0, 0, 1)
  ch = pts.var(ch_lin)
  pos = {c.kernel: ch} if c.depthwise else pts.digits(c.channels, sz, ch_lin)
  axes = c.ay.loops | c.ax.loops
  def with_axes(e:Affine, ty:int, tx:int) -> Lin:
    terms, const = affine_terms(e, pos, fixed, axes)
    terms[1], terms[2] = terms.get(1, 0) + ty, terms.get(2, 0) + tx
    return lin(terms, const)
  at = lambda e: with_axes(e, c.ay.scale(e), c.ax.scale(e))   # an index over the cube's positions (`_prologue_axes`)
  bounds = [Bound(lin({ch: 1}, 0), None, C), Bound(lin({1: 1}, 0), *c.span_y), Bound(lin({2: 1}, 0), *c.span_x)]
  bounds += [Bound(at(b.expr), b.lo, b.hi) for b in c.rest]
  # never read outside a buffer (a guard, not a semantic)
  bounds += [Bound(at(ld.index), 0, ld.size) for ld in (c.pro.loads if c.pro is not None else (c.x,))]
  dst_index = Lin(cube.grid_strides(), base)
  if c.pro is not None:   # the computed input, from its operands (no source read), fill at the padding
    return Copy(None, "float64", dst, c.prec.np_in, pts.grid, tuple(pts.vars), Lin((0,)), dst_index, tuple(bounds), c.pro.fill,
                value=("intercept", pexpr(c.pro.expr, at)), params=tuple(sorted({ld.slot for ld in c.pro.loads})))
  return Copy(c.x.slot, _np(c.x.dtype), dst, c.prec.np_in, pts.grid, tuple(pts.vars), at(c.x.index), dst_index, tuple(bounds), 0.0)

def pack_weights(c:Conv, sz:dict[int, int], K:int, C:int, KH:int, KW:int, dst:int) -> list[Copy]:
  """W into kernel groups (direct: Weights grid (K1, C1, KH, KW, 16, 32)) or channel groups (depthwise:
  DepthwiseWeights grid (C1, KH, KW, 32)), zero in the padding kernels and channels. Diagonal (int8 depthwise as direct
  convolutions per 32-channel group): per group a 32-kernel x 32-channel block (Weights grid (C1, 1, KH, KW, 32, 32)),
  zeroed, then kernel c's taps at its own lane c2 = c % 32: element ((c1*KH + kh)*KW + kw)*32*32 + c2*33."""
  if c.diagonal:
    ng, kg = WEIGHT_GROUPS[c.prec.name]
    assert ng == kg
    wt = Weights(align(C, ng), kg, KH, KW, c.prec.weights_dtype)
    zero = Copy(None, "float64", dst, c.prec.np_in, (wt.elems,), (), Lin((0,)), Lin((1,)), (), 0.0)
    pts = Points((wt.oc_padded // ng, KH, KW, kg))
    ch = pts.var((kg, 0, 0, 1))
    src = lin(*affine_terms(c.w.index, {c.kernel: ch, **{r: i for r, i in {c.ay.tap: 1, c.ax.tap: 2}.items() if r is not None}}, {}, set()))
    diag = Copy(c.w.slot, _np(c.w.dtype), dst, c.prec.np_in, pts.grid, tuple(pts.vars), src,
                Lin((KH * KW * ng * kg, KW * ng * kg, ng * kg, kg + 1), 0),
                (Bound(lin({ch: 1}, 0), None, C), Bound(src, 0, c.w.size)), fill=None)
    return [zero, diag]
  if c.depthwise:
    wt = DepthwiseWeights(C, KH, KW, c.prec.name)
    pts = Points(wt.grid())
    pos = {c.kernel: pts.var((wt.group, 0, 0, 1))}
    taps, bounds = {c.ay.tap: 1, c.ax.tap: 2}, [Bound(lin({pos[c.kernel]: 1}, 0), None, C)]
  else:
    wt = Weights(align(K, c.prec.kernel_group), C, KH, KW, c.prec.weights_dtype)
    pts = Points(wt.grid())
    ng, kg = wt.group
    oc, ic_lin = pts.var((ng, 0, 0, 0, 1, 0)), (0, kg, 0, 0, 0, 1)
    ic = pts.var(ic_lin)
    pos = pts.digits(c.channels, sz, ic_lin) | ({c.kernel: oc} if c.kernel is not None else {})
    taps, bounds = {c.ay.tap: 2, c.ax.tap: 3}, [Bound(lin({oc: 1}, 0), None, K), Bound(lin({ic: 1}, 0), None, C)]
  pos |= {r: i for r, i in taps.items() if r is not None}
  src = lin(*affine_terms(c.w.index, pos, {}, set()))
  bounds.append(Bound(src, 0, c.w.size))
  return [Copy(c.w.slot, _np(c.w.dtype), dst, c.prec.np_in, pts.grid, tuple(pts.vars), src, Lin(wt.grid_strides(), 0),
               tuple(bounds), 0.0, **_scaled(c, pos))]

def _scaled(c:Conv, pos:dict[int, int]) -> dict:
  """The weight Copy's arguments that multiply each kernel's weights by the epilogue's slope s (before the rounding
  to fp16, as the contraction rule folds it); none when s is 1."""
  if c.epi is None or c.epi.unit: return {}
  return dict(value=("slope", pexpr(c.epi.scaled, lambda a: lin(*affine_terms(a, pos, {}, set())))),
              params=tuple(sorted({ld.slot for ld in c.epi.scale_loads})))

def pack_operand(c:Conv, sz:dict[int, int], spec:ConvSpec, kpt:int|None, fixed:dict[int, int], base:int, K:int) -> list[Copy]:
  """Image `fixed`'s per-pixel epilogue operand t = the epilogue at acc = 0 (a bias, BatchNorm's shift, a residual:
  evaluated in float64 from its operands when packing, rounded to fp16 once) into each task's cube (ops.conv.ew_tiles)
  from byte `base` of EW_SLOT; 0 in the padding channels."""
  assert c.epi is not None and EPILOGUE_OPERAND_BYTES == 2, "Grid.copy writes fp16"
  params, ch = tuple(sorted({ld.slot for ld in c.epi.loads})), c2(EPILOGUE_OPERAND_BYTES)
  out = []
  for k0, sub, (o0, o1), off in ew_tiles(spec, kpt, EPILOGUE_OPERAND_BYTES):
    H, W = o1 - o0, sub.OW
    g = Grid((ceil_div(sub.OC, ch), H, W, ch), sz, fixed)
    for coeffs, const, r, n in (((ch, 0, 0, 1), k0, c.kernel, K), ((0, 1, 0, 0), o0, c.ay.out, c.ay.n_out(sz)),
                                ((0, 0, 1, 0), 0, c.ax.out, c.ax.n_out(sz))):
      g.linear(coeffs, const, [r] if r is not None else [], n)
    out.append(g.copy(None, EW_SLOT, Lin((H * W * ch, W * ch, ch, 1), (base + off) // EPILOGUE_OPERAND_BYTES), fill=0.0,
                      value=("intercept", g.pexpr(c.epi.expr)), params=params))
  return out

def unpack_output(c:Conv, nest:LoopNest, cube:Feature, fixed:dict[int, int], src:int, base:int, K:int) -> Copy:
  """The fp32 output cube (K1, OH, OW, 4) of image `fixed` at element `base` into the kernel's output (real kernels
  only)."""
  pts = Points(cube.grid())
  k = pts.var((cube.c2, 0, 0, 1))
  pos = {r: i for r, i in ((c.kernel, k), (c.ay.out, 1), (c.ax.out, 2)) if r is not None}
  dst = lin(*affine_terms(nest.out_index, pos, fixed, set()))
  return Copy(src, c.prec.np_out, nest.out_slot, _np(nest.out_dtype), pts.grid, tuple(pts.vars), Lin(cube.grid_strides(), base),
              dst, (Bound(lin({k: 1}, 0), None, K),), fill=None)

def plan(s:ConvSpec) -> int|None|str:
  """Kernels per task (None: all) giving the fewest tasks whose bands fit the CBUF (fewer kernels per task leave
  more banks to the input, so fewer bands), or why none does."""
  why = overflow(s, row_split(s))
  best: tuple[int, int|None]|None = (len(row_split(s)), None) if why is None else None   # (tasks, kernels per task)
  if s.depthwise: return why if best is None else None
  for n in range(2, s.kernels // s.group + 1):   # n kernel chunks
    if best is not None and n >= best[0]: break
    chunks = kernel_chunks(s, kpt := align(ceil_div(s.kernels, n), s.group))
    if any(overflow(sub, row_split(sub)) for _, sub in chunks): continue
    tasks = sum(len(row_split(sub)) for _, sub in chunks)
    if best is None or tasks < best[0]: best = (tasks, kpt)
  return why if best is None else best[1]

@dataclass(frozen=True)
class ConvJob:
  """A matched convolution's job before assembly (rules/conv_reduce.py appends tasks reading its output cube,
  rules/conv_pair.py puts tasks writing its EW operand cube before it)."""
  tasks: list[regs.Task]
  pack: list[Copy]
  unpack: list[Copy]
  scratch: tuple[int, ...]   # byte sizes of the scratch buffers (slots SCRATCH + i; the output cubes at OUT_SLOT)
  summary: str
  macs: int

def lower_conv(nest:LoopNest) -> NpuProgram|NotApplicable:
  m = match(nest)
  if isinstance(m, NotApplicable): return m
  if isinstance(job := conv_job(nest, *m), NotApplicable): return job
  return NpuProgram(nest.name, job.summary, job.scratch, regs.assemble(job.tasks), tuple(job.pack), tuple(job.unpack), macs=job.macs)

def image_points(c:Conv, sz:dict[int, int]) -> list[dict[int, int]]:
  """The values of c's image loops for each image in turn (one conv per image; cubes lie one image after another)."""
  return [dict(zip(c.images, vals)) for vals in itertools.product(*(range(sz[r]) for r in c.images))]

def image_tasks(progs:list, i:int, strides:dict[int, int]) -> list[regs.Task]:
  """progs' tasks for image i: each slot's addresses moved by i times its per-image size in bytes."""
  return [regs.Task(entries(rebase(prg, {slot: i * n for slot, n in strides.items()})), regs.MESA_CONV_ENABLE) for prg in progs]

def conv_job(nest:LoopNest, c:Conv, lay:Layout, ew_from:str|None=None) -> ConvJob|NotApplicable:
  """The tasks, packing and unpacking of convolution c laid out as `lay` (its spec's output precision: the cube's).
  `ew_from`: the per-pixel EW operand (lay.ew_nbytes per element) is written into EW_SLOT by earlier tasks of the job
  (what they compute, for the summary), not packed from the epilogue."""
  sz = nest.ranges
  spec, kpt = lay.spec, lay.kernels_per_task
  K = sz[c.kernel] if c.kernel is not None else 1
  C, Cp = (K, align(K, spec.C)) if c.diagonal else (spec.channels_real, spec.C)   # diagonal: spec.C is one group's
  KH, KW, (OH, OW), He, We = spec.kh, spec.kw, spec.out_hw, c.ay.extent(sz), spec.W
  images = image_points(c, sz)
  pr = c.prec
  cube_in, cube_out = Feature(Cp, spec.H, We, pr.in_bytes), Feature(spec.OC, OH, OW, spec.out_bytes)
  WT, IN, OUT = SCRATCH, SCRATCH + 1, OUT_SLOT
  slots = dict(input=IN, weights=WT, output=OUT)
  # the epilogue: s in the weights; t the BS stage's fp32 add (a constant) or the EW stage's add of a per-pixel operand,
  # ReLU / clip after it in the same stage
  epi, ew_img = c.epi, ew_bytes(spec, kpt, lay.ew_nbytes) if lay.ew_nbytes else 0
  ew = EwOperand("add", EW_SLOT, 0, lay.ew_nbytes, relu=c.relu, clip=c.clip) if ew_img and c.leaky is None else None
  stages = (dict(relu=c.relu) if pr is INT8_PREC else
            dict(bs=XStageOp(mul=c.leaky), ew=EwOperand("max" if c.leaky < 1 else "min", EW_SLOT, 0, LEAKY_OPERAND_BYTES)) if c.leaky is not None else
            dict(bs=XStageOp(add=epi.shift if epi is not None else None, relu=c.relu and ew is None, clip=c.clip if ew is None else None), ew=ew))
  try:
    progs = conv_programs(spec, slots, kernels_per_task=kpt, diagonal=c.diagonal, **stages)
    bands = len(progs)
    if c.leaky is not None: progs = _leaky_programs(spec, slots, kpt, c.diagonal, progs)
  except regs.RegError as e: return NotApplicable(f"a register field does not hold this convolution: {e}")
  tasks, pack, unpack = [], pack_weights(c, sz, K, C, KH, KW, WT), []
  for i, fixed in enumerate(images):
    pack.append(pack_input(c, sz, cube_in, fixed, IN, i * cube_in.elems, C))
    if ew is not None and ew_from is None: pack += pack_operand(c, sz, spec, kpt, fixed, i * ew_img, K)
    unpack.append(unpack_output(c, nest, cube_out, fixed, OUT, i * cube_out.elems, K))
    tasks += image_tasks(progs, i, {IN: cube_in.nbytes, OUT: cube_out.nbytes, EW_SLOT: ew_img})
  wbytes = (DepthwiseWeights(C, KH, KW, pr.name).elems if spec.depthwise else Weights(spec.kernels, spec.C, KH, KW, pr.weights_dtype).elems) * pr.in_bytes
  kind = "depthwise as direct per 32-channel group, block-diagonal weights" if c.diagonal else "depthwise" if c.depthwise else "direct"
  n_chunks = 1 if kpt is None else ceil_div(spec.kernels, kpt)
  pro_ops = sorted({x.op.name.lower() for x in walk(c.pro.expr) if isinstance(x, Alu) and x.op is not Ops.CAST}) if c.pro is not None else []
  fused = "".join(x for x, on in ((f" +computed input (packed: {', '.join(pro_ops) or 'cast'}; padding {c.pro.fill:g})" if c.pro else "", c.pro is not None),
                                  (" +scale (weights)", epi is not None and not epi.unit),
                                  (" +shift (BS add)", epi is not None and epi.shift is not None),
                                  (f" +{ew_from} (fp{8 * lay.ew_nbytes} EW operand)" if ew_from is not None else
                                   f" +{'residual' if epi and any(uses(ld) - {c.kernel} for ld in epi.loads) else 'per-channel shift'}"
                                   " (fp16 EW operand)", ew is not None),
                                  (" +relu" if c.clip is None else f" +clip(0, {c.clip:g})", c.relu),
                                  (f" +leaky({'max' if (c.leaky or 0) < 1 else 'min'}(u, {c.leaky:g}*u), two tasks per band)" if c.leaky is not None else "",
                                   c.leaky is not None)) if on)
  summary = (f"conv ({kind}) {C}->{K} {KH}x{KW} stride {c.ay.stride}x{c.ax.stride} dilation {c.ay.dilation}x{c.ax.dilation} "
             f"on a {He}x{We} packed input -> {OH}x{OW}, {len(images)} image(s){fused} as {len(tasks)} {pr.name} "
             f"conv task(s) ({bands // n_chunks} row band(s) x {n_chunks} kernel chunk(s) per image)")
  macs = len(images) * OH * OW * KH * KW * K * (1 if c.depthwise else C)
  return ConvJob(tasks, pack, unpack, (wbytes, cube_in.nbytes * len(images), cube_out.nbytes * len(images)) +
                 ((ew_img * len(images),) if ew_img else ()), summary, macs)

def _leaky_programs(spec:ConvSpec, slots:dict[str, int], kpt:int|None, diagonal:bool, progs:list) -> list:
  """Before each band's task (`progs`: BS MUL by a, EW max/min with u) the task computing its u: the same band with
  the stages bypassed, its fp32 output written as the plain cube the EW stage reads (ew_tiles: the band's surfaces
  one plane apart at the task's offset in EW_SLOT)."""
  u_progs = conv_programs(spec, slots, kernels_per_task=kpt, diagonal=diagonal, bs=XStageOp())
  out = []
  for u, prg, (_, sub, (o0, o1), off) in zip(u_progs, progs, ew_tiles(spec, kpt, LEAKY_OPERAND_BYTES), strict=True):
    plane = (o1 - o0) * sub.OW * ATOM_BYTES
    out += [override(u, {("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", EW_SLOT, off),
                         ("DPU", "DST_SURF_STRIDE"): dict(DST_SURF_STRIDE=plane),
                         ("DPU", "SURFACE_ADD"): dict(SURF_ADD=plane * sub.atoms_per_group)}), prg]
  return out
