"""Contractions: out[batch, m, n] = sum_k A[batch, m, k] * B[batch, k, n], on the NPU as fp16 matmul tiles.

Any kernel whose value is REDUCE(ADD) of a product of two loads is one: matmul, batched matmul, linear layers,
conv1d/conv2d of any stride, padding, dilation and groups (packing gathers the im2col rows), and the weight and input
gradients of all of these. Which output loops are M (rows, only in A), N (kernels, only in B) or batch (in both) is
read off the affine index maps; the packing gathers A's rows and B's kernels into dense NPU tiles, so any affine
view is fine and the padding predicates become zero fill.

Epilogues fused into the same task: a bias (any operand broadcast over the rows or over the kernels, e.g. conv and
linear bias) becomes one more K column, ones on one side and the bias on the other, so the MAC array adds it in fp32
exactly as it adds the products; ReLU runs in the DPU's BS stage. Any other epilogue is rejected with its reason,
never dropped.

Numerics (DESIGN.md): fp16 operands (float32 inputs are rounded, float16 are exact), fp32 accumulation and fp32 out,
then one rounding to the output dtype. An operand beyond fp16's range cannot be represented: that call takes the CPU
path instead (checked when packing), never a wrong answer.
"""
from __future__ import annotations
import itertools, math
from dataclasses import dataclass
from tinygrad_rocket import regs
from tinygrad_rocket._tg import Ops, dtypes
from tinygrad_rocket.analysis import LoopNest, Load, Reduce, Alu, Const, Affine
from tinygrad_rocket.lower import NotApplicable
from tinygrad_rocket.program import NpuProgram, Copy, Var, Lin, Bound, SCRATCH
from tinygrad_rocket.ops.layout import Feature, Weights, align
from tinygrad_rocket.ops.matmul import MatmulTile, matmul_task, plan_tiles, K_ALIGN, N_ALIGN, MIN_ROWS

FLOATS = {dtypes.float32: "float32", dtypes.float16: "float16"}
MAX_TASKS = 4096  # beyond this a single kernel's job is unreasonable; it falls back with the reason

def _walk(e):
  yield e
  for s in (e.src if isinstance(e, Alu) else (e.src,) if isinstance(e, Reduce) else ()): yield from _walk(s)

def _strip_cast(e):
  while isinstance(e, Alu) and e.op is Ops.CAST: e = e.src[0]
  return e

@dataclass
class Contraction:
  a: Load
  b: Load
  m_dims: list[int]      # output ranges only A reads
  n_dims: list[int]      # output ranges only B reads
  batch_dims: list[int]  # output ranges both (or neither) read
  k_dims: list[int]      # reduce ranges
  bias: Load|None = None # added to every product sum: folded in as one more K column
  bias_side: str = ""    # "b": the bias varies only with batch and N loops (kernels), "a": only with batch and M loops
  relu: bool = False

def _uses(ld:Load) -> set[int]:
  used = ld.index.ranges()
  for b in ld.valid: used |= b.expr.ranges()
  return used

def _is_zero(e) -> bool: return isinstance(e, Const) and e.value == 0

def _epilogue(e) -> tuple[Reduce, Load|None, bool]|str:
  """(reduction, bias load, relu) for value = [relu]([cast](reduce) [+ bias]), else why not."""
  relu = False
  e = _strip_cast(e)
  if isinstance(e, Alu) and e.op is Ops.MAX and any(_is_zero(s) for s in e.src):
    relu, e = True, _strip_cast(next(s for s in e.src if not _is_zero(s)))
  bias = None
  if isinstance(e, Alu) and e.op is Ops.ADD:
    red = [s for s in map(_strip_cast, e.src) if isinstance(s, Reduce)]
    other = [s for s in map(_strip_cast, e.src) if not isinstance(s, Reduce)]
    if len(red) != 1 or not isinstance(other[0], Load):
      return "the epilogue adds a computed value (only a loaded bias is fused)"
    e, bias = red[0], other[0]
  if not isinstance(e, Reduce):
    if not any(isinstance(x, Reduce) for x in _walk(e)): return "no reduction"
    return f"an epilogue ({e.op.name if isinstance(e, Alu) else type(e).__name__}) follows the reduction (only bias and ReLU are fused)"
  return e, bias, relu

def match(nest:LoopNest) -> Contraction|NotApplicable:
  if nest.out_dtype not in FLOATS: return NotApplicable(f"output dtype {nest.out_dtype} (float32/float16 only)")
  ep = _epilogue(nest.value)
  if isinstance(ep, str): return NotApplicable(ep)
  v, bias, relu = ep
  if v.op is not Ops.ADD: return NotApplicable(f"REDUCE({v.op.name}) is not a contraction")
  body = _strip_cast(v.src)
  if not (isinstance(body, Alu) and body.op is Ops.MUL): return NotApplicable("reduced value is not a product of two operands")
  a, b = (_strip_cast(s) for s in body.src)
  if not (isinstance(a, Load) and isinstance(b, Load)):
    return NotApplicable("a product operand is computed, not loaded (prologue fusion not implemented yet)")
  for ld in (a, b):
    if ld.dtype not in FLOATS: return NotApplicable(f"operand dtype {ld.dtype} (float32/float16 only)")
    if ld.valid and ld.pad not in (0, 0.0): return NotApplicable(f"padding value {ld.pad} (only zero padding)")
    if ld.size < 0: return NotApplicable("operand buffer of unknown size")
  if set(v.ranges) != set(nest.reduce_ranges): return NotApplicable("reduce ranges outside the REDUCE")
  ua, ub = _uses(a), _uses(b)
  outs = nest.output_ranges
  m = [r for r in outs if r in ua and r not in ub]
  n = [r for r in outs if r in ub and r not in ua]
  batch = [r for r in outs if r not in m and r not in n]
  # A gives the rows (feature cube), B the kernels: B is the side with fewer exclusive output elements (kernels are
  # padded to 16, rows only to 4), which puts convolution weights in B.
  size = lambda rs: math.prod(nest.ranges[r] for r in rs)
  if size(m) < size(n): a, b, m, n = b, a, n, m
  side = ""
  if bias is not None:
    if bias.dtype not in FLOATS: return NotApplicable(f"bias dtype {bias.dtype} (float32/float16 only)")
    if bias.valid: return NotApplicable("padded bias")
    ub = _uses(bias)
    side = "b" if ub <= set(n) | set(batch) else "a" if ub <= set(m) | set(batch) else ""
    if not side: return NotApplicable("the added operand varies with both rows and kernels (residual add fusion not implemented yet)")
  return Contraction(a, b, m, n, batch, list(v.ranges), bias, side, relu)

def _digits(dims:list[int], sizes:dict[int, int], linear:tuple[int, ...], const:int, nvals:int) -> list[tuple[int, Var]]:
  """Vars recovering each range in `dims` (row-major, last fastest) from the linear value const + sum(coord*linear)."""
  out, below = [], 1
  for r in reversed(dims):
    out.append((r, Var(linear + (0,) * (nvals - len(linear)), const, below, sizes[r])))
    below *= sizes[r]
  return out[::-1]

def _gather(ld:Load, sizes:dict[int, int], grid:tuple[int, ...], lin_vars:list[tuple[tuple[int, ...], int, list[int], int]],
            fixed:dict[int, int], dst:int, dst_dtype:str, dst_index:Lin) -> Copy:
  """A Copy reading load `ld` over `grid`. lin_vars: (coeffs over grid, const, dims it enumerates, bound) per linear
  position (e.g. k = 8*k1 + k2 enumerating the K loops, bounded by their product); fixed: ranges held constant."""
  nd = len(grid)
  vars_: list[Var] = []
  pos: dict[int, int] = {}          # range id -> index into values
  bounds: list[Bound] = []
  for coeffs, const, dims, limit in lin_vars:
    vars_.append(Var(coeffs, const)); lin_pos = nd + len(vars_) - 1
    bounds.append(Bound(Lin(tuple(1 if j == lin_pos else 0 for j in range(lin_pos + 1))), None, limit))
    for r, var in _digits(dims, sizes, coeffs, const, nd):
      vars_.append(var); pos[r] = nd + len(vars_) - 1
  nvals = nd + len(vars_)
  def lin_of(aff:Affine) -> Lin:
    c = [0] * nvals
    const = aff.const
    for r, k in aff.terms:
      if r in fixed: const += k * fixed[r]
      elif r in pos: c[pos[r]] += k
      else: raise AssertionError(f"range {r} not enumerated")
    return Lin(tuple(c), const)
  bounds = [Bound(Lin(b.expr.coeffs + (0,) * (nvals - len(b.expr.coeffs)), b.expr.const), b.lo, b.hi) for b in bounds]
  bounds += [Bound(lin_of(b.expr), b.lo, b.hi) for b in ld.valid]
  bounds.append(Bound(lin_of(ld.index), 0, ld.size))  # never read outside the buffer (a guard, not a semantic)
  di = Lin(dst_index.coeffs + (0,) * (nvals - len(dst_index.coeffs)), dst_index.const)
  return Copy(ld.slot, FLOATS[ld.dtype], dst, dst_dtype, grid, tuple(vars_), lin_of(ld.index), di, tuple(bounds), 0.0)

def lower_contraction(nest:LoopNest) -> NpuProgram|NotApplicable:
  c = match(nest)
  if isinstance(c, NotApplicable): return c
  sz = nest.ranges
  M, N, K = (math.prod(sz[r] for r in ds) for ds in (c.m_dims, c.n_dims, c.k_dims))
  K_eff = K + (c.bias is not None)  # the bias is one more K column
  plan = plan_tiles(M, K_eff, N)
  if isinstance(plan, str): return NotApplicable(plan)
  rows, n_t = plan
  Kp = align(K_eff, K_ALIGN)
  m_tiles, n_tiles = -(-M // rows), -(-N // n_t)
  batches = list(itertools.product(*(range(sz[r]) for r in c.batch_dims)))
  if (ntasks := len(batches) * m_tiles * n_tiles) > MAX_TASKS: return NotApplicable(f"{ntasks} tasks (max {MAX_TASKS}): tiling too fine")
  tile = MatmulTile(rows, Kp, n_t)
  a_f, b_w, c_f = tile.a, tile.b, tile.c
  a_sz, b_sz, c_sz = a_f.nbytes, b_w.elems * 2, c_f.nbytes
  # scratch: A tiles (per batch, m tile), B tiles (per batch, n tile), C tiles (per batch, m tile, n tile)
  scratch = (a_sz * len(batches) * m_tiles, b_sz * len(batches) * n_tiles, c_sz * len(batches) * m_tiles * n_tiles)
  A, B, C = SCRATCH, SCRATCH + 1, SCRATCH + 2
  out_dtype = FLOATS[nest.out_dtype]
  tasks, pack, unpack = [], [], []
  for bi, bvals in enumerate(batches):
    fixed = dict(zip(c.batch_dims, bvals))
    for mt in range(m_tiles):
      # A tile: Feature(K, rows, 1) fp16 = grid (K1, rows, 8): k = 8*k1 + k2, m = m0 + row
      g = (a_f.c1, rows, a_f.c2)
      off = (bi * m_tiles + mt) * a_f.elems
      pack.append(_gather(c.a, sz, g, [((a_f.c2, 0, 1), 0, c.k_dims, K), ((0, 1, 0), mt * rows, c.m_dims, M)], fixed,
                          A, "float16", Lin((rows * a_f.c2, a_f.c2, 1), off)))
      if c.bias is not None:  # column K of this A tile: the bias per row, or ones
        col = Lin((a_f.c2,), off + (K // a_f.c2) * rows * a_f.c2 + K % a_f.c2)
        if c.bias_side == "a": pack.append(_gather(c.bias, sz, (rows,), [((1,), mt * rows, c.m_dims, M)], fixed, A, "float16", col))
        else: pack.append(Copy(None, "float16", A, "float16", (rows,), (), Lin((0,)), col, (), 1.0))
    for nt in range(n_tiles):
      # B tile: Weights(n_t, Kp) = grid (N1, K1, 16, 32): n = n0 + 16*n1 + n2, k = 32*k1 + k2 (1x1 taps)
      ng, kg = b_w.group
      g = (b_w.oc_padded // ng, b_w.ic_padded // kg, ng, kg)
      off = (bi * n_tiles + nt) * b_w.elems
      st = b_w.grid_strides()
      pack.append(_gather(c.b, sz, g, [((0, kg, 0, 1), 0, c.k_dims, K), ((ng, 0, 1, 0), nt * n_t, c.n_dims, N)], fixed,
                          B, "float16", Lin(st[:2] + st[4:], off)))
      if c.bias is not None:  # channel K of every kernel of this B tile: the bias per kernel, or ones
        row = Lin((st[0], st[4]), off + (K // kg) * st[1] + K % kg)
        g2 = (g[0], ng)
        if c.bias_side == "b": pack.append(_gather(c.bias, sz, g2, [((ng, 1), nt * n_t, c.n_dims, N)], fixed, B, "float16", row))
        else: pack.append(Copy(None, "float16", B, "float16", g2, (), Lin((0, 0)), row, (), 1.0))
    for mt, nt in itertools.product(range(m_tiles), range(n_tiles)):
      a_off = (bi * m_tiles + mt) * a_sz
      b_off = (bi * n_tiles + nt) * b_sz
      ci = (bi * m_tiles + mt) * n_tiles + nt
      tasks.append(matmul_task(tile, A, a_off, B, b_off, C, ci * c_sz, relu=c.relu))
      # C tile: Feature(n_t, rows, 1) fp32 = grid (N1, rows, 4) -> out[batch, m, n]
      g = (c_f.c1, rows, c_f.c2)
      nd = len(g)
      vars_ = [Var((c_f.c2, 0, 1), nt * n_t), Var((0, 1, 0), mt * rows)]
      pos, vs = {}, list(vars_)
      for dims, lin_idx in ((c.n_dims, nd), (c.m_dims, nd + 1)):
        for r, var in _digits(dims, sz, vars_[lin_idx - nd].coeffs, vars_[lin_idx - nd].const, nd):
          vs.append(var); pos[r] = nd + len(vs) - 1
      nvals = nd + len(vs)
      oc = [0] * nvals
      oconst = nest.out_index.const
      for r, k in nest.out_index.terms:
        if r in fixed: oconst += k * fixed[r]
        else: oc[pos[r]] += k
      unit = lambda j: tuple(1 if i == j else 0 for i in range(nvals))
      unpack.append(Copy(C, "float32", nest.out_slot, out_dtype, g, tuple(vs),
                         Lin((rows * c_f.c2, c_f.c2, 1) + (0,) * (nvals - nd), ci * c_f.elems), Lin(tuple(oc), oconst),
                         (Bound(Lin(unit(nd)), None, N), Bound(Lin(unit(nd + 1)), None, M)), fill=None))
  fused = "".join(x for x, on in ((" +bias", c.bias is not None), (" +relu", c.relu)) if on)
  summary = f"contraction M={M} K={K} N={N} batch={len(batches)}{fused} as {len(tasks)} fp16 matmul task(s) of {rows}x{Kp}x{n_t}"
  return NpuProgram(nest.name, summary, scratch, regs.assemble(tasks), tuple(pack), tuple(unpack), macs=len(batches)*M*N*K)
