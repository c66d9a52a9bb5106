"""A convolution and a sum or mean of its output over its rows and/or columns in one kernel: tinygrad fuses a ResNet's
last basic block (conv + BatchNorm + residual + ReLU) with the global average pool `.mean((2, 3))` into one kernel,
c * REDUCE(ADD over y, x, epilogue(REDUCE(ADD, X * W))) (c = 1/(H*W) for a mean, 1 for a sum).

One job, two stages (this module reuses the conv rule's matching and tasks, rules/conv.py):
  1. the convolution with its fused epilogue, exactly as the conv rule runs it (`conv.match` on the kernel seen with
     the reduced loops as outputs), but writing its output cube in fp16 (DPU OUT fp16, FP32TOFP16_EN: the conv
     program's validated fp16 output, rocket_fp16_ew_ppu.md §2.2) to a scratch buffer;
  2. a depthwise convolution of that cube with ones (exact in fp16) over the reduced axes: a kernel as tall as the
     cube if the rows are reduced (else 1), as wide if the columns are, fp32 sums, fp32 output; the CPU multiplies
     by c while unpacking (float64 product, one rounding to the output dtype).
Stage 2 reads fp16 cubes only (the CNA's fp16 input), hence the fp16 intermediate. The PPU's average pooling is not
used: its fp16 reciprocal registers and undocumented window-sum widths give no error bound (rules/pool.py).

The conv's output is finite in fp16 only if every value is (|v| <= 65504: FP32TOFP16 overflows to inf beyond it); a
guard after the job checks the fp16 cube (the real channels, GUARD_MARGIN inside the range) and a call that fails it
runs the kernel's C code.

Numerics: the conv's value v per output element as the conv rule computes it (tests/numerics.py bound_dot, with the
epilogue's roundings), rounded once to fp16 (relative 2^-11, absolute 2^-25 below fp16's normal range); the n = H*W
(or H, or W) fp16 values summed in fp32 against exact ones (gamma(n-1) of the sum of their magnitudes); times c and
one rounding to the output dtype (tests/test_conv_reduce.py composes the bound).

Not here (the reason given): a residual computed by another reduction (a downsample branch's 1x1 conv + BN, which
tinygrad fuses in too: ResNet's first block of a stage; it would need that conv's fp32 cube as a 32-bit EW operand of
this conv's tasks), a reduction over the conv's channels or images (the depthwise ones-kernel sums within
a channel of one image), a leaky ReLU before the reduction (its u cube is written in the conv's output precision),
int8 convolutions, an output under MIN_ROWS rows with its rows reduced, windows over MAX_TAPS per axis, an epilogue
after the reduction other than a constant scale.
"""
from __future__ import annotations
import numpy as np
from dataclasses import replace
from tinygrad_rocket import regs
from tinygrad_rocket._tg import Ops
from tinygrad_rocket.analysis import LoopNest, Reduce, Alu, Const, Affine
from tinygrad_rocket.lower import NotApplicable
from tinygrad_rocket.program import NpuProgram, Copy, Lin, Guard, SCRATCH
from tinygrad_rocket.rules import conv
from tinygrad_rocket.rules.common import FLOATS, strip_cast, walk
from tinygrad_rocket.rules.elementwise import FP16_MAX
from tinygrad_rocket.ops.conv import ConvSpec, conv_programs, row_split, overflow
from tinygrad_rocket.ops.layout import Feature, DepthwiseWeights, align, ELEMENT_BYTES
from tinygrad_rocket.ops.matmul import MIN_ROWS

MID_PRECISION = "fp16"   # the conv's output cube, stage 2's input (the CNA reads fp16 features)
GUARD_LANES = 16         # a Guard reads 16 channels (two 8-channel fp16 surfaces) per row (program.Guard)

def _outer(nest:LoopNest) -> tuple[Reduce, float]|str:
  """(the outer sum, its constant scale c) of c * REDUCE(ADD, conv...) (casts allowed), or why the kernel is not one."""
  e, scale = strip_cast(nest.value), 1.0
  if (n := len(dict.fromkeys(x for x in walk(e) if isinstance(x, Reduce)))) < 2:
    return f"{n} reduction(s) in the kernel (a sum of a convolution has two or more)"
  if isinstance(e, Alu) and e.op is Ops.MUL and len(ks := [s for s in e.src if isinstance(strip_cast(s), Const)]) == 1:
    scale, e = float(strip_cast(ks[0]).value), strip_cast(next(s for s in e.src if s is not ks[0]))
  if not isinstance(e, Reduce):
    return f"an epilogue ({e.op.name if isinstance(e, Alu) else type(e).__name__}) after the outer sum (only a constant scale)"
  if e.op is not Ops.ADD: return f"an outer REDUCE({e.op.name}) (a sum or mean only)"
  if e.dtype not in FLOATS: return f"the outer sum in {e.dtype} (float32/float16 only)"
  if (n := len(dict.fromkeys(x for x in walk(e.src) if isinstance(x, Reduce)))) != 1:
    return (f"{n} reductions inside the outer sum (one convolution's: a residual that is itself a conv, a downsample "
            "branch, is not an operand the conv's epilogue takes)" if n else "no convolution inside the outer sum")
  return e, scale

def match(nest:LoopNest) -> tuple[conv.Conv, conv.Layout, LoopNest, Reduce, float]|NotApplicable:
  """The conv (its candidate and layout, as the conv rule matches the kernel with the reduced loops as outputs), that
  kernel, the outer sum and its scale; or why not."""
  if nest.out_dtype not in FLOATS: return NotApplicable(f"output dtype {nest.out_dtype} (float32/float16 only)")
  if isinstance(outer := _outer(nest), str): return NotApplicable(outer)
  red, scale = outer
  inner = LoopNest(nest.name, dict(nest.ranges), nest.output_ranges + red.ranges, -1, red.dtype, -1, Affine((), 0), red.src,
                   nest.loads, nest.precision)
  if isinstance(m := conv.match(inner), NotApplicable): return NotApplicable(f"the summed value is not the conv rule's: {m.reason}")
  c, lay = m
  if c.prec is not conv.FP16_PREC: return NotApplicable("an int8 convolution (its int32 sums are not an fp16 cube stage 2 reads)")
  if c.leaky is not None: return NotApplicable("a leaky ReLU before the sum (its u cube takes the conv's output precision)")
  axes = {r for r in (c.ay.out, c.ax.out) if r is not None}
  if (other := [r for r in red.ranges if r not in axes]):
    what = "channels" if c.kernel in other else "images"
    return NotApplicable(f"a sum over the conv's {what} (the ones-kernel sums rows and columns within a channel)")
  return c, lay, inner, red, scale

def lower_conv_reduce(nest:LoopNest) -> NpuProgram|NotApplicable:
  m = match(nest)
  if isinstance(m, NotApplicable): return m
  c, lay, inner, red, scale = m
  sz = nest.ranges
  spec = replace(lay.spec, out=MID_PRECISION)
  OH, OW = spec.out_hw
  rows, cols = c.ay.out in red.ranges, c.ax.out in red.ranges
  KH, KW = OH if rows else 1, OW if cols else 1
  if max(KH, KW) > conv.MAX_TAPS: return NotApplicable(f"a {KH}x{KW} sum (max {conv.MAX_TAPS} taps per axis of the ones-kernel)")
  if rows and OH < MIN_ROWS:
    return NotApplicable(f"{OH} conv output rows summed: the ones-kernel's input needs >= {MIN_ROWS} (a CNA input under 4 rows "
                         "computes wrong, rocket_fp16_ew_ppu.md §6.C)")
  K = sz[c.kernel] if c.kernel is not None else 1
  Cr = align(K, conv.DW_GROUP)
  rspec = ConvSpec(MID_PRECISION, Cr, OH, OW, Cr, KH, KW, depthwise=True, out=conv.OUT_PRECISION,
                   out_hw=(1 if rows else OH, 1 if cols else OW), channels_real=K)
  if (why := overflow(rspec, row_split(rspec))) is not None: return NotApplicable(f"the sum's ones-kernel task: {why}")
  if isinstance(job := conv.conv_job(inner, c, replace(lay, spec=spec)), NotApplicable): return job
  # the conv's cubes (spec.OC channels) are read as Cr-channel cubes: channels past spec.OC are the next image's (or
  # the buffer's spare surfaces, zero); the depthwise sums keep each channel apart and only the K real ones unpack
  mid, mid_read = Feature(spec.OC, OH, OW, spec.out_bytes), Feature(Cr, OH, OW, spec.out_bytes)
  out = Feature(Cr, *rspec.out_hw, rspec.out_bytes)
  ONES, RED = SCRATCH + len(job.scratch), SCRATCH + len(job.scratch) + 1
  ones = DepthwiseWeights(Cr, KH, KW, MID_PRECISION)
  images = conv.image_points(c, sz)
  scratch = list(job.scratch)
  scratch[conv.OUT_SLOT - SCRATCH] += mid_read.nbytes - mid.nbytes
  progs = conv_programs(rspec, dict(input=conv.OUT_SLOT, weights=ONES, output=RED))
  tasks, unpack, guards = list(job.tasks), [], []
  slope = ("slope", ("MUL", "float64", ("acc",), ("const", scale)))
  for i, fixed in enumerate(images):
    tasks += conv.image_tasks(progs, i, {conv.OUT_SLOT: mid.nbytes, RED: out.nbytes})
    u = conv.unpack_output(c, nest, out, fixed, RED, i * out.elems, K)
    unpack.append(replace(u, value=slope) if scale != 1 else u)
    guards += [Guard(conv.OUT_SLOT, OH * OW, OH * OW * GUARD_LANES, ((i * mid.nbytes + g * GUARD_LANES * OH * OW * spec.out_bytes, 1.0),), 0.0,
                     -FP16_MAX, FP16_MAX, "the conv's output finite in fp16 (the sum's operand)", after=True,
                     lanes=min(GUARD_LANES, K - g * GUARD_LANES)) for g in range((K + GUARD_LANES - 1) // GUARD_LANES)]
  pack = list(job.pack) + [Copy(None, "float64", ONES, "float16", (ones.elems,), (), Lin((0,)), Lin((1,)), (), 1.0)]
  what = "mean" if np.float32(scale) == np.float32(1 / (KH * KW)) else "sum" if scale == 1 else f"sum x {scale:g}"   # tinygrad's fp32 1/n
  summary = (f"{job.summary}, fp16 out; then a {what} over its {'rows and columns' if rows and cols else 'rows' if rows else 'columns'} "
             f"as {len(progs) * len(images)} depthwise {KH}x{KW} ones-kernel task(s)")
  return NpuProgram(nest.name, summary, (*scratch, ones.elems * ELEMENT_BYTES[MID_PRECISION], out.nbytes * len(images)), regs.assemble(tasks), tuple(pack),
                    tuple(unpack), macs=job.macs, guards=tuple(guards))
