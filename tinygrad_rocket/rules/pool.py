"""Max pooling on the PPU: any kernel whose value is REDUCE(MAX) of one load or of a value computed from loads (a ReLU
before the pool), as fp16 PPU pooling tasks.

tinygrad writes max_pool2d (any kernel, stride, dilation, padding, ceil_mode; 1-D pooling as max_pool2d with one
kernel axis) and max reductions (x.max(axis=(2, 3)), x.max()) this way; min is -max(-x), REDUCE(MAX) of a negated
load under a negation, and runs as a max of the negated values (negation is exact). Casts between float16 and float32
around the load or the reduction are allowed (monotonic, exact on fp16 values).

Roles are read off the load's affine index (analysis.py). A reduce loop k pairs with an output loop o when the index
moves by S times as much per o as per k (a window axis: position S*o + k, stride S); unpaired reduce loops are whole
reductions, unpaired output loops are lanes (the PPU's channels, pooled independently). Of the assignments that fit,
the one with the fewest tasks, then the fewest atoms read, is taken. Two ways to lay a window out on the PPU:
  - overlapping windows (S < K on some window axis): the packed cube holds each input position once, and one PPU
    pass slides the K_h x K_w window with stride S (each <= 16, the 4-bit POOLING_KERNEL_CFG fields);
  - otherwise every output owns a block of taps: the window's taps (all reduce loops, flattened) fill a bh x bw block
    per output, padded with the max identity, and passes of non-overlapping windows (kernel = stride <= 16) reduce
    the blocks; windows over 16 x 16 taps telescope (max of maxes is exact), every cube a pass reads from the previous
    pass at least 4 x 4 (rocket_fp16_ew_ppu.md §5, §6.C).
The CPU gather (program.Copy) packs the cube and does the padding: positions outside tinygrad's padding predicate get
the pad value (tinygrad pads max pooling with dtype.min, -inf for floats: packed as fp16 -inf, MAX_IDENTITY), so the
PPU pads nothing. A window with no valid tap at all (padding >= kernel) is -inf in tinygrad, as the PPU's max of -inf
taps is.

Numerics: fp16 operands (float32 rounded; rounding is monotonic, so the max of rounded values is the rounded max: the
result is exactly fl16(max), numerics.bound_select); the PPU's max is exact (GN, rocket_fp16_ew_ppu.md §5). -inf
operands of the max (data: a conv output tinygrad padded with -inf, masked scores; +inf of a min, negated) go to the
PPU as they are (MAX_IDENTITY); a finite value overflowing fp16, +inf (of a max) or NaN makes the runner take the
kernel's C code (tinygrad's NaN semantics kept).

A computed input (x.relu().max_pool2d(..), a clip, x*a + b: the conv rule's prologues, rules/conv.py _computed_input)
is evaluated by the packing in float64 from its operands and rounded to fp16 once, as a loaded float32 input is; at the
padding it holds tinygrad's pad value (-inf for max pooling: where(valid, f(x), -inf)). For a select (ReLU, clip) the
value is exactly one of the operands or constants. float16 operands only: the result is then the exact max, one of the
window's values (a float32 one would be rounded to fp16 and equal none of them: tinygrad's max backward compares the
two, and a computed input fused into the pool kernel is what its training graph reads back).

Not here: average pooling (REDUCE(ADD)): the PPU averages with fp16 reciprocal registers (65536/k rounded to fp16,
0.02-0.05% quantisation) and an fp32 window sum whose internal widths are not documented (docs/emulator.md PPU, ⚠ in
emu/ppu.py), so no error bound can be derived; avg_pool2d stays with the fallback (or a contraction rule).
"""
from __future__ import annotations
import itertools, math
from dataclasses import dataclass, replace
import numpy as np
from tinygrad_rocket import regs
from tinygrad_rocket._tg import Ops, dtypes
from tinygrad_rocket.analysis import LoopNest, Load, Reduce, Alu, Const, Affine, Valid
from tinygrad_rocket.rules.conv import Prologue, _computed_input
from tinygrad_rocket.rules.common import FLOATS, MAX_TASKS
from tinygrad_rocket.lower import NotApplicable
from tinygrad_rocket.program import NpuProgram, Copy, Var, Lin, Bound, SCRATCH
from tinygrad_rocket.ops.layout import Feature, Weights, ELEMENT_BYTES, ceil_div, align
from tinygrad_rocket.ops.matmul import MatmulTile, matmul_task, plan_tiles, K_ALIGN, N_ALIGN, MIN_ROWS
from tinygrad_rocket.ops.elementwise import flying_program, FLYING_ENABLE
from tinygrad_rocket.ops.pool import ppu_program, PPU_ENABLE, MAX_WINDOW, MAX_CUBE_DIM, MIN_CHAINED_DIM
from tinygrad_rocket.ops.program import entries, override
from tinygrad_rocket.rules.common import Grid, walk, strip_cast

# A float32 max (min) on the PPU is fl16 of the max (rounding is monotone): within float32's documented fp16-operand
# precision, but no longer one of its inputs, and tinygrad's max backward finds the max by equality (mixin/gradient.py:
# src == max, divided by the count of equal elements): 0/0 gradients. So while tinygrad trains (TRAINING, which its
# optimizers require) a float32 max runs the C code, exact.
ROUNDED_MAX_REASON = ("a float32 max on the NPU is rounded to fp16 (no longer one of its inputs), and training's max "
                      "backward identifies the max by equality: the C code's exact max while TRAINING")
# fp16 holds float16 values exactly and rounds float32 ones monotonically
FP16 = "fp16"
EBYTES = ELEMENT_BYTES[FP16]
C2 = Feature(1, 1, 1, EBYTES).c2                 # lanes per fp16 atom; the PPU needs whole atoms (emu/ppu.py)
MAX_LANES = MAX_CUBE_DIM // C2 * C2              # channels per task: whole atoms within the 13-bit channel field
# ⚠ The PPU's max compares fp16 -inf operands exactly: its padding value for max pooling is fp16 -inf (0xFC00, bit-exact
# on hardware, GN: rocket_fp16_ew_ppu.md §5), and no source documents a NaN-from-max-with--inf quirk (§6.F). -inf as
# data read through PPU_RDMA (not as PADDING_VALUE) is the same compare but was not measured. The packed max identity:
# padding, a block's spare taps, and -inf operands (program.Copy.exact_inf) are this value.
MAX_IDENTITY = -math.inf
NEG_ONE = ("NEG", "float64", ("acc",))           # a Copy value: the slope -1 (packing -x, unpacking -max)
IN_SLOT = SCRATCH                # the packed input cube (the passes' outputs follow in SCRATCH + 1)
MAX_GROUP_POINTS = 1 << 16   # loops tied by a padding predicate are enumerated (as analysis.IndexContext does)
MAX_SCRATCH_BYTES = 1 << 30  # a packed copy beyond 1 GiB (a huge window duplicated per output) is not worth it

# ***** matching *****

@dataclass(frozen=True)
class MaxReduce:
  load: Load
  taps: tuple[int, ...]   # the REDUCE's loops
  sign_in: int            # -1: the reduction sees -load
  sign_out: int           # -1: the kernel stores -max
  pro: Prologue|None = None   # a computed input: `load` stands for its geometry (padding predicate, pad value)

def _unary(e) -> tuple[object, int]|str:
  """Strips float casts and negations (NEG, x * -1): (inner expression, sign), or why not."""
  sign = 1
  while isinstance(e, Alu):
    if e.op is Ops.CAST:
      if e.dtype not in FLOATS: return f"a cast to {e.dtype} (only float16/float32 casts keep the max exact)"
      e = e.src[0]
    elif e.op is Ops.NEG: sign, e = -sign, e.src[0]
    elif e.op is Ops.MUL and any(isinstance(s, Const) and s.value == -1 for s in e.src):
      sign, e = -sign, next(s for s in e.src if not (isinstance(s, Const) and s.value == -1))
    else: break
  return e, sign

def match(nest:LoopNest) -> MaxReduce|NotApplicable:
  if nest.out_dtype not in FLOATS: return NotApplicable(f"output dtype {nest.out_dtype} (float32/float16 only)")
  outer = _unary(nest.value)
  if isinstance(outer, str): return NotApplicable(outer)
  red, sign_out = outer
  reds = [r for r in walk(red) if isinstance(r, Reduce)]
  if (other := next((r for r in reds if r.op is not Ops.MAX), None)) is not None:
    summed = other.op is Ops.ADD and isinstance(_unary(other.src), tuple) and isinstance(_unary(other.src)[0], Load)
    return NotApplicable(f"REDUCE({other.op.name}), not a max" + (" (average pooling: the PPU's fp16-reciprocal average has no "
                         "documented error bound)" if summed else ""))
  if not reds: return NotApplicable("no reduction")
  if not isinstance(red, Reduce):
    return NotApplicable(f"an epilogue ({red.op.name if isinstance(red, Alu) else type(red).__name__}) follows the max")
  if set(red.ranges) != set(nest.reduce_ranges): return NotApplicable("reduce ranges outside the REDUCE")
  inner = _unary(red.src)
  if isinstance(inner, str): return NotApplicable(inner)
  ld, sign_in = inner
  pro = None
  if not isinstance(ld, Load):
    comp = _computed(ld, nest)
    if isinstance(comp, str): return NotApplicable(f"the reduced value is computed and the packing cannot compute it: {comp}")
    ld, pro = comp
    # a float32 operand: the PPU's max would be fl16 of the max, not one of the window's values (a pool over a plain
    # load has the same rounding; a fused computed input in tinygrad's training graph is read back by the max's backward,
    # which compares the result with the computed values for equality: every mask 0, gradients 0/0)
    if any(x.dtype != dtypes.float16 for x in pro.loads):
      return NotApplicable("a computed input of float32 operands (its max rounded to fp16 would equal none of its values)")
  if ld.dtype not in FLOATS: return NotApplicable(f"input dtype {ld.dtype} (float32/float16 only)")
  if ld.size < 0: return NotApplicable("input buffer of unknown size")
  if ld.dtype == dtypes.float32 and nest.precision == "fp32":
    return NotApplicable("ROCKET_PRECISION=fp32: float32 inputs would be rounded to fp16 (the max would be fl16(max))")
  return MaxReduce(ld, tuple(red.ranges), sign_in, sign_out, pro)

def _computed(e, nest:LoopNest) -> tuple[Load, Prologue]|str:
  """(the geometry load with the padding value as its pad, the prologue) of a computed pooling input: tinygrad writes
  where(valid, f, -inf) when it pads f, or f alone. The conv rule's _computed_input reads f; the pad is where's."""
  pred, pad = None, None
  if isinstance(e, Alu) and e.op is Ops.WHERE and isinstance(e.src[0], Valid):
    if not isinstance(c := strip_cast(e.src[2]), Const): return "the padding is not a constant"
    pred, pad, e = tuple(e.src[0].bounds), float(c.value), e.src[1]
    # an inner where whose predicate the outer one implies (the padded f padded again) selects f wherever it is read
    while isinstance(e, Alu) and e.op is Ops.WHERE and isinstance(e.src[0], Valid) and set(e.src[0].bounds) <= set(pred): e = e.src[1]
  comp = _computed_input(e, nest)
  if isinstance(comp, str): return comp
  ld, pro = comp
  # where the pooled value's predicate holds its operands' do (theirs implied by it): they are read only there
  if pred is not None and not set(ld.valid) <= set(pred): return "its operands are padded unlike the pooled value"
  valid = tuple(dict.fromkeys(ld.valid + (pred or ())))
  return replace(ld, valid=valid, pad=(pad if pad is not None else pro.fill) if valid else None), pro

# ***** padding *****

def _fill(m:MaxReduce) -> float|str:
  """The packed value of a position outside the padding predicate: the pad as the reduction sees it."""
  if not m.load.valid: return MAX_IDENTITY
  if m.load.pad is None: return "a masked load without a pad value"
  pad = float(m.load.pad) * m.sign_in
  if pad == MAX_IDENTITY: return MAX_IDENTITY
  if math.isnan(pad) or pad == math.inf: return f"padding value {pad} (only -inf or finite pads)"
  f16 = float(np.float16(pad))
  if not math.isfinite(f16): return f"padding value {pad} beyond fp16's range"
  return f16

def _groups(bounds) -> list[list[int]]:
  """The loops of a padding predicate, grouped: two loops share a group when some bound reads both."""
  groups: list[set[int]] = []
  for b in bounds:
    rs = set(b.expr.ranges())
    for g in [g for g in groups if g & rs]:
      rs |= g
      groups.remove(g)
    groups.append(rs)
  return [sorted(g) for g in groups]

def _valid_points(bounds, rs:list[int], sz:dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """(every point of the loops rs, as rows of a (len(rs), n) grid; whether the bounds on them hold there)."""
  grid = np.indices([sz[r] for r in rs]).reshape(len(rs), -1)
  ok = np.ones(grid.shape[1], bool)
  for b in bounds:
    if not b.expr.ranges() <= set(rs): continue
    v = b.expr.const + sum((c * grid[rs.index(r)] for r, c in b.expr.terms), np.zeros(grid.shape[1], np.int64))
    if b.lo is not None: ok &= v >= b.lo
    if b.hi is not None: ok &= v < b.hi
  return grid, ok

def _reads_input(m:MaxReduce, sz:dict[int, int]) -> str|None:
  """Why the kernel reads no input, or None: some tap must be valid (each group of the predicate's loops, _groups,
  enumerated alone). Windows entirely in the padding need nothing more: their packed taps are all MAX_IDENTITY."""
  for rs in _groups(m.load.valid):
    if (n := math.prod(sz[r] for r in rs)) > MAX_GROUP_POINTS:
      return f"a padding predicate ties {len(rs)} loops of {n} points together (max {MAX_GROUP_POINTS})"
    if not _valid_points(m.load.valid, rs, sz)[1].any():
      return "every window lies in the padding (tinygrad's code reads no input; its buffer is not passed)"
  return None

def _shares_consistently(m:MaxReduce, sz:dict[int, int], o:int, k:int, S:int) -> bool:
  """Overlapping windows share packed positions S*o + k: the padding predicate must agree on every (o, k) that meets
  at one position (the index does, by the pairing)."""
  if any(b.expr.ranges() & {o, k} and not b.expr.ranges() <= {o, k} for b in m.load.valid): return False
  grid, ok = _valid_points(m.load.valid, [o, k], sz)
  pos = S * grid[0] + grid[1]
  seen_valid, seen_padding = np.zeros(pos.max() + 1, bool), np.zeros(pos.max() + 1, bool)
  seen_valid[pos[ok]] = True
  seen_padding[pos[~ok]] = True
  return not (seen_valid & seen_padding).any()

# ***** plans *****

@dataclass(frozen=True)
class Axis:
  """One spatial axis of the packed cube: n_out outputs (output loop `out`, None: one) whose windows of `block`
  positions start `step` positions apart."""
  out: int|None
  n_out: int
  step: int
  block: int
  def size(self, n_out:int) -> int: return (n_out - 1) * self.step + self.block
  def max_outputs(self) -> int: return (MAX_CUBE_DIM - self.block) // self.step + 1

NO_AXIS = Axis(None, 1, 1, 1)

@dataclass(frozen=True)
class Pass:
  kernel: tuple[int, int]   # (h, w)
  stride: tuple[int, int]

@dataclass(frozen=True)
class Plan:
  lanes: tuple[int, ...]    # output loops enumerated as channels
  y: Axis
  x: Axis
  taps: tuple[int, ...]     # reduce loops, flattened row-major into each output's block (block width x.block)
  passes: tuple[Pass, ...]
  n_lanes: int
  strides: int              # the window axes' index strides summed: smaller is the tensor's own axis (a tie-break)
  summary: str

  def tiles(self) -> list[tuple[int, int, int, int]]:
    """Output tiles (oy0, oh, ox0, ow) whose packed cube fits the 13-bit dimension fields."""
    ty, tx = self.y.max_outputs(), self.x.max_outputs()
    return [(y0, min(ty, self.y.n_out - y0), x0, min(tx, self.x.n_out - x0))
            for y0 in range(0, self.y.n_out, ty) for x0 in range(0, self.x.n_out, tx)]
  def chunks(self) -> list[tuple[int, int]]:
    return [(l0, min(MAX_LANES, self.n_lanes - l0)) for l0 in range(0, self.n_lanes, MAX_LANES)]
  def cubes(self, lanes:int, oh:int, ow:int) -> list[Feature]:
    """The packed input cube, then each pass's output."""
    fs = [Feature(align(lanes, C2), self.y.size(oh), self.x.size(ow), EBYTES)]
    for p in self.passes:
      f = fs[-1]
      fs.append(Feature(f.C, (f.H - p.kernel[0]) // p.stride[0] + 1, (f.W - p.kernel[1]) // p.stride[1] + 1, EBYTES))
    return fs
  def work(self) -> tuple[int, int, int]:
    """(tasks, atoms the passes read, scratch bytes)."""
    tasks = atoms = nbytes = 0
    for _, n in self.chunks():
      for _, oh, _, ow in self.tiles():
        fs = self.cubes(n, oh, ow)
        tasks += len(self.passes)
        atoms += sum(f.c1 * f.H * f.W for f in fs[:-1])
        nbytes += sum(f.nbytes for f in fs)
    return tasks, atoms, nbytes

def _split(n:int, m:int) -> list[int]|None:
  """n as m pass factors (first pass first), each <= MAX_WINDOW, or None. With m > 1 the last is at least
  MIN_CHAINED_DIM: every later pass reads a cube at least that large (the product of the factors after it)."""
  if m == 1: return [n] if n <= MAX_WINDOW else None
  for last in range(min(n, MAX_WINDOW), MIN_CHAINED_DIM - 1, -1):
    if n % last: continue
    head, rest = [], n // last
    for _ in range(m - 1):  # the earlier factors: any, each <= MAX_WINDOW
      f = next(f for f in range(min(rest, MAX_WINDOW), 0, -1) if rest % f == 0)
      head, rest = head + [f], rest // f
    if rest == 1: return head[::-1] + [last]
  return None

def _block_passes(T:int, natural:tuple[int, int]|None) -> tuple[tuple[int, int], tuple[Pass, ...]]|str:
  """A bh x bw block holding T taps (bh*bw >= T) and the passes that reduce it to one value, kernel = stride <= 16.
  The natural block (the window's own shape) if both its sides split into the same number of passes; else one pass if
  T fits 16 x 16 (the smallest block), or m passes of factor f per axis (f^2m >= T, the first pass's height cut to
  what T needs): every later pass reads a block of f >= 5 (T > 256^(m-1) gives f > 16^((m-1)/m))."""
  m = 1
  while MAX_WINDOW ** (2 * m) < T: m += 1
  if natural is not None:
    for mm in range(m, m + 2):
      hs, ws = _split(natural[0], mm), _split(natural[1], mm)
      if hs is not None and ws is not None: return natural, tuple(Pass((h, w), (h, w)) for h, w in zip(hs, ws))
  if m == 1:
    bh, bw = min(((ceil_div(T, bw), bw) for bw in range(1, MAX_WINDOW + 1) if ceil_div(T, bw) <= MAX_WINDOW),
                 key=lambda b: (b[0] * b[1], -b[1]))
    return (bh, bw), (Pass((bh, bw), (bh, bw)),)
  f = 2
  while f ** (2 * m) < T: f += 1
  assert f > MIN_CHAINED_DIM
  hs, ws = [ceil_div(T, f ** (2 * m - 1))] + [f] * (m - 1), [f] * m
  bh, bw = math.prod(hs), math.prod(ws)
  if max(bh, bw) > MAX_CUBE_DIM: return f"a window of {T} taps (a {bh}x{bw} block exceeds the 13-bit cube fields)"
  return (bh, bw), tuple(Pass((h, w), (h, w)) for h, w in zip(hs, ws))

def plan(m:MaxReduce, nest:LoopNest, pairs:dict[int, int], fill:float) -> Plan|str:
  """The plan for one assignment of reduce loops to output loops (pairs: tap -> out), or why it does not fit. `fill`
  is what the packing writes outside the padding predicate, and also in a block's spare taps."""
  sz, ld = nest.ranges, m.load
  if len(pairs) > 2: return f"{len(pairs)} window axes (the PPU pools two)"
  axes = sorted(((o, k, ld.index.coeff(o) // ld.index.coeff(k)) for k, o in pairs.items()),
                key=lambda a: -abs(ld.index.coeff(a[0])))  # outer loop first: y, then x
  axes = [None] * (2 - len(axes)) + axes
  # overlapping windows share packed positions S*o + k: a computed input's operands must move with them as the input does
  if m.pro is not None and any(x.index.coeff(a[0]) != a[2] * x.index.coeff(a[1]) for x in m.pro.loads for a in axes
                               if a is not None and a[2] < sz[a[1]]):
    return "an operand of the computed input moves along a window axis unlike the input (not a function of the position)"
  lanes = tuple(r for r in nest.output_ranges if r not in pairs.values())
  whole = [k for k in m.taps if k not in pairs]
  n_lanes = math.prod(sz[r] for r in lanes)
  overlapping = [a for a in axes if a is not None and a[2] < sz[a[1]]]
  if overlapping:
    if whole: return "overlapping windows together with a whole-axis reduction"
    ay, ax = (NO_AXIS if a is None else Axis(a[0], sz[a[0]], min(a[2], sz[a[1]]), sz[a[1]]) for a in axes)
    if max(ay.block, ax.block) > MAX_WINDOW:
      return f"a {ay.block}x{ax.block} window with overlapping windows (max {MAX_WINDOW}: stride-1 pass chains not implemented)"
    if any(not _shares_consistently(m, sz, *a) for a in overlapping):
      return "the padding predicate differs between windows sharing a position"
    taps = tuple(a[1] for a in axes if a is not None)
    passes = (Pass((ay.block, ax.block), (ay.step, ax.step)),)
    what = f"{ay.block}x{ax.block} windows, stride {ay.step}x{ax.step}"
  else:
    taps = tuple(a[1] for a in axes if a is not None) + tuple(whole)
    T = math.prod(sz[k] for k in taps)
    # the natural block: the window's own rows and columns (no whole-axis taps), or for a whole reduction alone its
    # innermost loop as the block's rows
    natural = ((sz[axes[0][1]] if axes[0] else 1, sz[axes[1][1]] if axes[1] else 1) if not whole else
               (T // sz[whole[-1]], sz[whole[-1]]) if not pairs else None)
    blk = _block_passes(T, natural)
    if isinstance(blk, str): return blk
    (bh, bw), passes = blk
    if fill != MAX_IDENTITY and bh * bw != T:
      return f"finite padding value {fill} with windows re-blocked for the PPU (their spare taps need the max identity)"
    ay, ax = (Axis(None, 1, b, b) if a is None else Axis(a[0], sz[a[0]], b, b) for a, b in zip(axes, (bh, bw)))
    what = f"windows of {T} taps in {bh}x{bw} blocks, {len(passes)} pass(es)"
  if ay.block > MAX_CUBE_DIM or ax.block > MAX_CUBE_DIM: return f"a {ay.block}x{ax.block} window exceeds the 13-bit cube fields"
  strides = sum(a[2] for a in axes if a is not None)
  p = Plan(lanes, ay, ax, taps, passes, n_lanes, strides, f"{n_lanes} lane(s) x {ay.n_out}x{ax.n_out} outputs, {what}")
  if len(p.passes) > 1 and any(min(f.H, f.W) < MIN_CHAINED_DIM for _, n in p.chunks() for _, oh, _, ow in p.tiles()
                               for f in p.cubes(n, oh, ow)[1:-1]):
    return f"a pass would read a cube under {MIN_CHAINED_DIM}x{MIN_CHAINED_DIM} written by the previous pass"
  tasks, _, nbytes = p.work()
  if tasks > MAX_TASKS: return f"{tasks} tasks (max {MAX_TASKS}): tiling too fine"
  if nbytes > MAX_SCRATCH_BYTES: return f"{nbytes} scratch bytes (max {MAX_SCRATCH_BYTES}): windows duplicated too often"
  return p

def candidates(m:MaxReduce, nest:LoopNest) -> list[dict[int, int]]:
  """Every injective assignment of reduce loops to output loops whose index steps are whole multiples (stride S >= 1),
  none assigned included."""
  c = m.load.index.coeff
  opts = [[None] + [o for o in nest.output_ranges if c(k) and c(o) % c(k) == 0 and c(o) // c(k) >= 1] for k in m.taps]
  out = []
  for choice in itertools.product(*opts):
    picked = [o for o in choice if o is not None]
    if len(set(picked)) == len(picked): out.append({k: o for k, o in zip(m.taps, choice) if o is not None})
  return out

# ***** program *****

def _ppu_task(f_in:Feature, p:Pass, src:tuple[int, int], dst:tuple[int, int]) -> regs.Task:
  """One PPU max pass over the cube at (slot, byte offset) src into dst."""
  prg = ppu_program(f_in.C, f_in.H, f_in.W, "max", p.kernel, p.stride, (0, 0, 0, 0), {"input": src[0], "output": dst[0]})
  prg = override(prg, {("PPU_RDMA", "SRC_BASE_ADDR"): regs.address("PPU_RDMA", "SRC_BASE_ADDR", *src),
                       ("PPU", "DST_BASE_ADDR"): regs.address("PPU", "DST_BASE_ADDR", *dst)})
  return regs.Task(entries(prg), PPU_ENABLE)

def _pack(g:Grid, m:MaxReduce, dst:Lin, fill:float) -> Copy:
  """The packing of the input cube: the load (negated for a min), or the computed input evaluated from its operands
  (each in range; `fill` where the padding predicate fails)."""
  if m.pro is None: return g.copy(m.load, IN_SLOT, dst, fill=fill, value=("slope", NEG_ONE) if m.sign_in < 0 else None)
  c = g.copy(m.load, IN_SLOT, dst, fill=fill)
  expr = g.pexpr(m.pro.expr)
  if m.sign_in < 0: expr = ("NEG", "float64", expr)
  in_range = tuple(Bound(g.lin(x.index), 0, x.size) for x in m.pro.loads)
  return replace(c, src=None, src_dtype="float64", src_index=Lin((0,)), bounds=c.bounds + in_range, value=("intercept", expr),
                 params=tuple(sorted({x.slot for x in m.pro.loads})))

def lower_pool(nest:LoopNest) -> NpuProgram|NotApplicable:
  if (bc := _broadcast_max(nest)) is not None: return _lower_broadcast_max(nest, *bc)
  job = _pool_job(nest)
  if isinstance(job, NotApplicable): return job
  summary, tasks, pack, unpack, scratch, _ = job
  rounded = any(isinstance(x, Load) and x.dtype != dtypes.float16 for x in walk(nest.value))   # the max's operands
  return NpuProgram(nest.name, summary, scratch, regs.assemble(tasks), tuple(pack), tuple(unpack),
                    training_reason=ROUNDED_MAX_REASON if rounded else None)

def _pool_job(nest:LoopNest) -> tuple[str, list[regs.Task], list[Copy], list[Copy], tuple[int, int], list[int]]|NotApplicable:
  """(summary, tasks, pack, unpack, scratch sizes of IN and OUT, byte offset in OUT of each tile's result cube)."""
  m = match(nest)
  if isinstance(m, NotApplicable): return m
  sz, ld = nest.ranges, m.load
  fill = _fill(m)
  if isinstance(fill, str): return NotApplicable(fill)
  if ld.valid and (why_not := _reads_input(m, sz)) is not None: return NotApplicable(why_not)
  plans, why = [], []
  for pairs in candidates(m, nest):
    p = plan(m, nest, pairs, fill)
    if isinstance(p, str): why.append((-len(pairs), p))
    else: plans.append(((*p.work()[:2], -len(pairs), p.strides), p))
  if not plans: return NotApplicable("; ".join(dict.fromkeys(r for _, r in sorted(why, key=lambda t: t[0]))))
  p = min(plans, key=lambda t: t[0])[1]
  bw = p.x.block
  IN, OUT = IN_SLOT, SCRATCH + 1
  in_bytes = out_bytes = 0
  tasks, pack, unpack, results = [], [], [], []
  for l0, nl in p.chunks():
    for oy0, oh, ox0, ow in p.tiles():
      fs = p.cubes(nl, oh, ow)
      cube = fs[0]
      # pack: grid (C1, C2, oy, by, ox, bx) -> row step_y*oy + by, column step_x*ox + bx of the cube
      g = Grid((cube.c1, C2, oh, p.y.block, ow, bw), sz, {})
      g.linear((C2, 1, 0, 0, 0, 0), l0, list(p.lanes), p.n_lanes)
      for a, coord, o0 in ((p.y, 2, oy0), (p.x, 4, ox0)):
        if a.out is not None: g.pos[a.out] = g.var(Var(tuple(int(i == coord) for i in range(6)), o0))
      g.linear((0, 0, 0, bw, 0, 1), 0, list(p.taps), math.prod(sz[k] for k in p.taps))
      dst = Lin((cube.surface_elems, 1, p.y.step * cube.W * C2, cube.W * C2, p.x.step * C2, C2), in_bytes // EBYTES)
      pack.append(replace(_pack(g, m, dst, fill), exact_inf=MAX_IDENTITY))
      # passes: packed cube -> pass outputs, one after the other in OUT
      src, off = (IN, in_bytes), out_bytes
      for i, pa in enumerate(p.passes):
        tasks.append(_ppu_task(fs[i], pa, src, (OUT, off)))
        src, off = (OUT, off), off + fs[i + 1].nbytes
      res = fs[-1]
      results.append(src[1])
      # unpack: grid (C1, C2, oy, ox) of the last pass's output -> the kernel's output (real lanes only)
      g = Grid((res.c1, C2, oh, ow), sz, {})
      g.linear((C2, 1, 0, 0), l0, list(p.lanes), p.n_lanes)
      for a, coord, o0 in ((p.y, 2, oy0), (p.x, 3, ox0)):
        if a.out is not None: g.pos[a.out] = g.var(Var(tuple(int(i == coord) for i in range(4)), o0))
      cp = g.copy(None, nest.out_slot, g.lin(nest.out_index), fill=None)
      unpack.append(Copy(OUT, "float16", nest.out_slot, FLOATS[nest.out_dtype], cp.grid, cp.vars,
                         Lin((res.surface_elems, 1, ow * C2, C2), src[1] // EBYTES), cp.dst_index, cp.bounds, fill=None,
                         value=("slope", NEG_ONE) if m.sign_out < 0 else None))
      in_bytes += cube.nbytes
      out_bytes = off
  kind = {(1, 1): "max", (-1, -1): "min", (-1, 1): "max (of the negated input)", (1, -1): "max (negated)"}[(m.sign_in, m.sign_out)]
  summary = f"{kind} pooling: {p.summary} as {len(tasks)} fp16 PPU task(s)"
  return summary, tasks, pack, unpack, (in_bytes, out_bytes), results

# ***** a whole max broadcast into an elementwise sum: x - max(x) of a 1-D x *****
# tinygrad fuses a full max reduction into the kernel that uses it when that kernel's loops are the reduced ones' (1-D
# log_softmax: out[i] = x[i] - max(x)). The PPU computes the max (exactly fl16(max), as above) into its result atom;
# no float path broadcasts an NPU-computed value to every element (BRDMA in float mode and per-channel EW operands are
# undocumented, rocket_fp16_ew_ppu.md §2, emu/dpu.py), but a matmul does: with the max as a weight, out[i] = A[i] . B[:, 0],
# A[i] = (c, 0 x 7, L[i], 0..) packed, B's kernel 0 = (m, 0 x 7, 1, 0..). B is written by the NPU alone (a packed slot
# is read-only to its job): a DPU flying copy of a packed image of B (the 1 and zeros), then one of the max's atom over
# its first 8 entries (lanes 1..7 of the PPU's cube are packed 0, so they stay 0). fp16 products, exact in fp32, and one
# fp32 rounding of c m + L: the numerics of the elementwise x - m with m an fp16 value (rules/elementwise.py).
BCAST_L_COL = C2    # A's column of L (the second atom); column 0 holds the max's coefficient

def _broadcast_max(nest:LoopNest) -> tuple[Load, int, float, object]|None:
  """(L, s, c, mx) for a kernel s * L[out] + c * mx, mx a max reduction over loops no output loop enters (one value), L
  a load of the output loops, s = +-1, c a constant; else None."""
  v = nest.value
  while isinstance(v, Alu) and v.op is Ops.CAST and v.dtype in FLOATS: v = v.src[0]
  if not (isinstance(v, Alu) and v.op is Ops.ADD): return None
  for p, q in (v.src, v.src[::-1]):
    L, c = _unary(p), 1.0
    if isinstance(L, str) or not isinstance(L[0], Load) or L[0].index.ranges() - set(nest.output_ranges): continue
    if isinstance(q, Alu) and q.op is Ops.MUL and (k := next((x for x in q.src if isinstance(x, Const)), None)) is not None:
      c, q = float(k.value), next(x for x in q.src if x is not k)
    if not any(isinstance(r, Reduce) and r.op is Ops.MAX for r in walk(q)): continue
    if any(isinstance(ld, Load) and ld.index.ranges() & set(nest.output_ranges) for ld in walk(q)): continue
    return L[0], L[1], c, q
  return None

def _lower_broadcast_max(nest:LoopNest, L:Load, sign:int, c:float, mx) -> NpuProgram|NotApplicable:
  if L.dtype not in FLOATS or L.valid: return NotApplicable(f"the max is added to a load of dtype {L.dtype}{' with padding' if L.valid else ''}")
  reduce = nest.reduce_ranges
  sub = replace(nest, ranges={r: nest.ranges[r] for r in reduce}, output_ranges=(), out_index=Affine((), 0), out_size=1, value=mx)
  job = _pool_job(sub)
  if isinstance(job, NotApplicable): return NotApplicable(f"the max added to a load: {job.reason}")
  summary, tasks, pack, _, (in_bytes, out_bytes), results = job
  coeff = c * match(sub).sign_out            # the PPU holds max(sign_in x); mx is sign_out times it
  if not (math.isfinite(coeff) and float(np.float16(coeff)) == coeff and coeff != 0):
    return NotApplicable(f"the max's coefficient {c} is not an fp16 value")
  M = math.prod(nest.ranges[r] for r in nest.output_ranges)
  plan = plan_tiles(M, BCAST_L_COL + 1, 1)
  if isinstance(plan, str): return NotApplicable(plan)
  rows = max(plan[0], MIN_ROWS)
  tile = MatmulTile(rows, K_ALIGN, N_ALIGN)
  m_tiles = ceil_div(M, rows)
  if len(tasks) + 2 + m_tiles > MAX_TASKS: return NotApplicable(f"{len(tasks) + 2 + m_tiles} tasks (max {MAX_TASKS})")
  IN, OUT, PAT, B, A, C = (SCRATCH + i for i in range(6))
  w = Weights(N_ALIGN, K_ALIGN, 1, 1, "float16")
  a_f, c_f = Feature(K_ALIGN, rows, 1, EBYTES), tile.c
  # the PPU cube's lanes 1..7 (past the one lane) packed 0, not the max identity: they become B's entries 1..7
  pack.append(Copy(None, "float64", IN, "float16", (in_bytes // (C2 * EBYTES), C2 - 1), (), Lin((0,)), Lin((C2, 1), 1), fill=0.0))
  pack += [_zeros(PAT, w.elems), Copy(None, "float64", PAT, "float16", (1,), (), Lin((0,)), Lin((0,), BCAST_L_COL), fill=1.0),
           _zeros(A, a_f.elems * m_tiles)]   # B's image: kernel 0, k = 8 is 1; A: zeros under its two columns
  # B = the image (zeros, its 1), then the max's atom over kernel 0's first 8 entries
  tasks += [_dpu_copy(w.elems, (PAT, 0), (B, 0)), _dpu_copy(C2, (OUT, results[0]), (B, 0))]
  unpack = []
  for mt in range(m_tiles):
    a_off, c_off = mt * a_f.nbytes, mt * c_f.nbytes
    g = Grid((rows,), nest.ranges, {})
    g.linear((1,), mt * rows, list(nest.output_ranges), M)
    pack.append(g.copy(None, A, Lin((C2,), a_off // EBYTES), fill=0.0, value=("intercept", ("const", coeff))))
    pack.append(g.copy(L, A, Lin((C2,), a_off // EBYTES + rows * C2), value=("slope", NEG_ONE) if sign < 0 else None))   # column 8
    tasks.append(matmul_task(tile, A, a_off, B, 0, C, c_off))
    cp = g.copy(None, nest.out_slot, g.lin(nest.out_index), fill=None)   # kernel 0 of each row: surface 0, lane 0
    unpack.append(Copy(C, "float32", nest.out_slot, FLOATS[nest.out_dtype], cp.grid, cp.vars, Lin((c_f.c2,), c_off // c_f.elem_bytes),
                       cp.dst_index, cp.bounds, fill=None))
  summary = f"{summary}, its max broadcast into {'-' if sign < 0 else ''}{L.slot}[i] {'+' if coeff > 0 else '-'} {abs(coeff):g}*max by 2 DPU copies and {m_tiles} fp16 matmul task(s) of {rows}x{K_ALIGN}x{N_ALIGN}"
  return NpuProgram(nest.name, summary, (in_bytes, out_bytes, w.elems * EBYTES, w.elems * EBYTES, a_f.nbytes * m_tiles, c_f.nbytes * m_tiles),
                    regs.assemble(tasks), tuple(pack), tuple(unpack), macs=M * K_ALIGN)

def _zeros(slot:int, n:int) -> Copy: return Copy(None, "float64", slot, "float16", (n,), (), Lin((0,)), Lin((1,)), fill=0.0)

def _dpu_copy(n:int, src:tuple[int, int], dst:tuple[int, int]) -> regs.Task:
  """A flying DPU task copying n fp16 values (every stage bypassed: fp16 -> fp32 -> fp16, exact)."""
  prg = flying_program(n, "fp16", {"input": src[0], "output": dst[0]}, operand=False)
  prg = override(prg, {("DPU_RDMA", "SRC_BASE_ADDR"): regs.address("DPU_RDMA", "SRC_BASE_ADDR", *src),
                       ("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", *dst)})
  return regs.Task(entries(prg), FLYING_ENABLE)
