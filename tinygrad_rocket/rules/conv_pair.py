"""Two convolutions added in one kernel: the first basic block of a ResNet stage, (bn2(conv2(h)) + bnd(convd(x))).relu(),
which tinygrad fuses into one kernel with two reductions, [ReLU | ReLU6](s2*acc2 + t2 + s1*acc1 + t1) (casts allowed;
any terms of constants and per-channel or per-pixel operands).

One job, two stages (this module reuses the conv rule's matching, packing and tasks, rules/conv.py):
  1. conv 1 (the downsample: the smaller weights) with its scale s1 folded into its fp16 weights, and every term
     without a sum (its shift t1, the main branch's t2, a residual) as the conv rule's fp16 EW operand cube
     (fl16(t1 + t2), evaluated in float64 when packing), written in fp32 (DPU OUT fp32) into a scratch cube;
  2. conv 2 (the main conv) with s2 folded into its weights, its EW stage adding stage 1's fp32 cube as its per-pixel
     operand (EDATA_SIZE 32-bit, as the K-split partials: rocket_fp16_ew_ppu.md §2.3/§7.3), then the EW ReLU/ReLUX,
     fp32 out; the CPU rounds once to the output dtype when unpacking.
Stage 2 reads a plain cube per task (its kernel chunk x row band x width, surfaces one plane apart: ops/conv.py
ew_tiles), so stage 1 runs with stage 2's tiling: one task per stage-2 task, the same kernel chunk and output rows,
each writing its output as that task's operand cube (DST_BASE_ADDR at the tile's offset, DST_SURF_STRIDE and
SURFACE_ADD of the tile's plane, as the leaky ReLU's u tasks write theirs: rules/conv.py _leaky_programs). Both convs
must compute the same output grid with the same loops as images, rows, columns and kernels (stage 1 is matched among
the candidates that agree with stage 2's), and stage 1's input rows for each of stage 2's bands must fit the CBUF
next to its weights; else the kernel is refused with the reason.

Numerics: stage 1 is the conv rule's conv with an fp16 shift: a sum of n1 + 1 fp16 products (the shift times 1) in
fp32, its fp32 output exact (DPU OUT fp32); stage 2 a sum of n2 fp16 products in fp32, then the fp32 EW add of stage
1's value (one fp32 rounding), ReLU (exact), fp32 out, one rounding to the output dtype (tests/test_conv_pair.py
composes the bound).

Not here (the reason given): three or more reductions (a downsample block whose output is also averaged in the same
kernel: conv+sum refuses it too), a term holding both sums (a scale applied after the add), a leaky ReLU or another
activation after the add, int8 or depthwise convolutions (depthwise cubes pad channels to 32, direct ones to 16: the
operand cubes would not agree), tiles under the EW stage's 12-pixel plane.
"""
from __future__ import annotations
import math
from dataclasses import replace
from tinygrad_rocket import regs
from tinygrad_rocket.analysis import LoopNest, Reduce, Alu, Const
from tinygrad_rocket._tg import Ops
from tinygrad_rocket.lower import NotApplicable
from tinygrad_rocket.program import NpuProgram, SCRATCH
from tinygrad_rocket.rules import conv
from tinygrad_rocket.rules.common import sum_terms, subst, FLOATS, MAX_TASKS, strip_cast, walk, relu_form, leaky_arg
from tinygrad_rocket.ops.conv import conv_program, kernel_chunks, in_rows, overflow, ew_tiles, ew_bytes
from tinygrad_rocket.ops.layout import Feature, Weights, ATOM_BYTES
from tinygrad_rocket.ops.matmul import MIN_ROWS, EW_MIN_PLANE_ATOMS, EwOperand, XStageOp
from tinygrad_rocket.ops.program import override

MID_BYTES = 4   # stage 1's cube: fp32 (DPU OUT fp32), read by stage 2's EW stage as a 32-bit operand (EDATA_SIZE 3)
# scratch slots: stage 2 (conv_job) takes SCRATCH + 0..3, its EW operand slot conv.EW_SLOT being stage 1's output
WT1, IN1, EW1 = SCRATCH + 4, SCRATCH + 5, SCRATCH + 6
MID = conv.EW_SLOT

def _sum(terms:list, dtype):
  out = terms[0]
  for t in terms[1:]: out = Alu(Ops.ADD, (out, t), dtype)
  return out

def _stage_nest(nest:LoopNest, red:Reduce, value) -> LoopNest:
  """The kernel seen as one conv: its output loops and `red`'s reduce loops only, computing `value`."""
  ranges = {r: n for r, n in nest.ranges.items() if r in nest.output_ranges or r in red.ranges}
  return replace(nest, ranges=ranges, value=value)

def split(nest:LoopNest) -> tuple[list[tuple[Reduce, LoopNest, LoopNest]], bool, float|None]|NotApplicable:
  """For each choice of stage 2 (the conv with the larger weights per kernel first): (stage 2's sum, its nest computing its terms,
  stage 1's nest computing the other conv's terms plus every term without a sum); the ReLU and clip; or why not."""
  if nest.out_dtype not in FLOATS: return NotApplicable(f"output dtype {nest.out_dtype} (float32/float16 only)")
  e, relu, clip = relu_form(strip_cast(nest.value))
  if not relu and leaky_arg(e) is not None: return NotApplicable("a leaky ReLU after the two convs (ReLU and ReLU6 only)")
  reds = list(dict.fromkeys(x for x in walk(e) if isinstance(x, Reduce)))
  if len(reds) != 2:
    return NotApplicable(f"{len(reds)} reductions in the kernel (a pair of convs has two"
                         f"{': a reduction of the added convs, e.g. a pool, is not taken' if len(reds) > 2 else ''})")
  held: dict[Reduce, list] = {r: [] for r in reds}
  rest = []
  for t in sum_terms(e):
    inside = [r for r in reds if any(x is r for x in walk(t))]
    if len(inside) == 2: return NotApplicable("a term holding both convs' sums (e.g. a scale after the add)")
    (held[inside[0]] if inside else rest).append(t)
  out = []   # both kernels' weights per output channel: taps x input channels, the product of the reduce loops
  for r2, r1 in sorted(((reds[0], reds[1]), (reds[1], reds[0])), key=lambda p: -math.prod(nest.ranges[x] for x in p[0].ranges)):
    # stage 2's own intercept (its terms at acc2 = 0: BatchNorm's -mean*s2 sits inside the scaled term) is added by
    # stage 1 too: stage 2's EW operand is stage 1's cube, so stage 2 keeps only its scale (_lower)
    e2 = _sum(held[r2], nest.out_dtype)
    t2 = [] if conv._vanishes(e2, r2) else [subst(e2, r2, Const(0.0, r2.dtype))]
    out.append((r2, _stage_nest(nest, r2, e2), _stage_nest(nest, r1, _sum(held[r1] + rest + t2, nest.out_dtype))))
  return out, relu, clip

def _agrees(c2:conv.Conv):
  """Whether a stage-1 candidate computes stage 2's output grid with the same loops in the same roles."""
  return lambda c1: (c1.images, c1.kernel, c1.ay.out, c1.ax.out) == (c2.images, c2.kernel, c2.ay.out, c2.ax.out)

def lower_conv_pair(nest:LoopNest) -> NpuProgram|NotApplicable:
  if isinstance(s := split(nest), NotApplicable): return s
  tries, relu, clip = s
  first = None
  for _, n2, n1 in tries:
    res = _lower(nest, n2, n1, relu, clip)
    if not isinstance(res, NotApplicable): return res
    first = first or res
  return first

def _lower(nest:LoopNest, n2:LoopNest, n1:LoopNest, relu:bool, clip:float|None) -> NpuProgram|NotApplicable:
  if isinstance(m2 := conv.match(n2), NotApplicable): return NotApplicable(f"the main conv: {m2.reason}")
  c2, lay2 = m2
  # its intercept is in stage 1's value (split): the weights carry the scale, the EW operand is stage 1's cube
  c2 = replace(c2, relu=relu, clip=clip, epi=replace(c2.epi, shift=None, operand=False) if c2.epi is not None else None)
  if isinstance(m1 := conv.match(n1, _agrees(c2)), NotApplicable): return NotApplicable(f"the added conv: {m1.reason}")
  c1, lay1 = m1
  for c in (c1, c2):
    if c.prec is not conv.FP16_PREC: return NotApplicable("an int8 convolution (its int32 sums are not an fp32 cube)")
    if c.depthwise: return NotApplicable("a depthwise convolution (its cube pads channels to 32, a direct one's to 16)")
    if c.leaky is not None: return NotApplicable("a leaky ReLU inside a branch")
  sz = n2.ranges | n1.ranges
  spec2, kpt = lay2.spec, lay2.kernels_per_task
  tiles4, tiles2 = ew_tiles(spec2, kpt, MID_BYTES), ew_tiles(spec2, kpt, conv.EPILOGUE_OPERAND_BYTES)
  if (small := min((o1 - o0) * sub.OW for _, sub, (o0, o1), _ in tiles4)) < EW_MIN_PLANE_ATOMS:
    return NotApplicable(f"a task's output plane of {small} pixels: the EW stage's per-pixel operand needs >= {EW_MIN_PLANE_ATOMS} "
                         "(rocket_fp16_ew_ppu.md §2.3, §6.C)")
  # stage 1 with stage 2's kernel chunks and row bands: its cube keeps the rows the last band reads (MIN_ROWS)
  He1 = c1.ay.extent(sz)
  base1 = replace(lay1.spec, H=He1 + MIN_ROWS)
  chunks1 = dict(kernel_chunks(base1, kpt))
  assert chunks1.keys() == {k0 for k0, *_ in tiles4}, "direct convs of the same kernels chunk alike"
  for k0, _, band, _ in tiles4:
    if (why := overflow(chunks1[k0], [band])) is not None: return NotApplicable(f"the added conv on the main conv's row bands: {why}")
  spec1 = replace(base1, H=max(He1, *(in_rows(chunks1[k0], *band)[1] for k0, _, band, _ in tiles4)))
  chunks1 = dict(kernel_chunks(spec1, kpt))
  n_img = lay2.images
  if (ntasks := 2 * n_img * len(tiles4)) > MAX_TASKS: return NotApplicable(f"{ntasks} tasks (max {MAX_TASKS}): tiling too fine")
  job = conv.conv_job(nest, c2, replace(lay2, ew_nbytes=MID_BYTES), ew_from="the added conv's fp32 cube")
  if isinstance(job, NotApplicable): return job
  # stage 1: the conv rule's packing (weights scaled by s1, input, the fp16 shift cube per stage-2 tile) into its own slots
  K = sz[c1.kernel] if c1.kernel is not None else 1
  C1, (OH, OW) = spec1.channels_real, spec1.out_hw
  cube_in = Feature(spec1.C, spec1.H, spec1.W, spec1.ebytes)
  epi = c1.epi
  operand = epi is not None and epi.operand
  mid_img, t_img = ew_bytes(spec2, kpt, MID_BYTES), ew_bytes(spec2, kpt, conv.EPILOGUE_OPERAND_BYTES)
  pack = conv.pack_weights(c1, sz, K, C1, spec1.kh, spec1.kw, WT1)
  images = conv.image_points(c1, sz)
  for i, fixed in enumerate(images):
    pack.append(conv.pack_input(c1, sz, cube_in, fixed, IN1, i * cube_in.elems, C1))
    if operand: pack += [replace(cp, dst=EW1) for cp in conv.pack_operand(c1, sz, spec2, kpt, fixed, i * t_img, K)]
  bs = XStageOp(add=epi.shift if epi is not None else None)
  slots, bpk = dict(input=IN1, weights=WT1, output=MID), spec1.kh * spec1.kw * spec1.C * spec1.ebytes
  progs = []
  for (k0, _, (o0, o1), off), (*_, t_off) in zip(tiles4, tiles2, strict=True):
    sub = chunks1[k0]
    ew = EwOperand("add", EW1, t_off, conv.EPILOGUE_OPERAND_BYTES) if operand else None
    try: prog = conv_program(sub, slots, rows=(o0, o1), bs=bs, ew=ew)
    except regs.RegError as e: return NotApplicable(f"a register field does not hold the added conv: {e}")
    plane = (o1 - o0) * sub.OW * ATOM_BYTES
    progs.append(override(prog, {("CNA", "DCOMP_ADDR0"): regs.address("CNA", "DCOMP_ADDR0", WT1, k0 * bpk),
                                 ("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", MID, off),
                                 ("DPU", "DST_SURF_STRIDE"): dict(DST_SURF_STRIDE=plane),
                                 ("DPU", "SURFACE_ADD"): dict(SURF_ADD=plane * sub.atoms_per_group)}))
  tasks = [t for i in range(len(images)) for t in conv.image_tasks(progs, i, {IN1: cube_in.nbytes, MID: mid_img, EW1: t_img})]
  wbytes = Weights(spec1.kernels, spec1.C, spec1.kh, spec1.kw, c1.prec.weights_dtype).elems * spec1.ebytes
  scratch = (*job.scratch, wbytes, cube_in.nbytes * len(images)) + ((t_img * len(images),) if operand else ())
  fused = "".join(x for x, on in ((" +scale (weights)", epi is not None and not epi.unit), (" +shift (BS add)", epi is not None and epi.shift is not None),
                                  (" +shifts (fp16 EW operand)", operand)) if on)
  summary = (f"conv pair: conv (direct) {C1}->{K} {spec1.kh}x{spec1.kw} stride {c1.ay.stride}x{c1.ax.stride} on a "
             f"{He1}x{spec1.W} packed input -> {OH}x{OW}{fused} as {len(tasks)} fp16 conv task(s) on the main conv's tiles, "
             f"fp32 cube; then {job.summary}")
  return NpuProgram(nest.name, summary, scratch, regs.assemble(tasks + job.tasks), tuple(pack + job.pack), tuple(job.unpack),
                    macs=job.macs + len(images) * OH * OW * K * C1 * spec1.kh * spec1.kw)
