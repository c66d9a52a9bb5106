"""What every lowering rule shares: the float dtypes the NPU paths take, the task budget, expression helpers (walking,
ReLU / ReLU6 forms, the analysis of an epilogue around one reduction) and the Grid that turns loop-nest accesses into Copy gathers."""
from __future__ import annotations
from typing import Callable
from tinygrad_rocket._tg import Ops, dtypes
from tinygrad_rocket.analysis import Load, Alu, Const, Reduce, Affine, LoopNest
from tinygrad_rocket.program import Copy, Var, Lin, Bound, PExpr, PEXPR_OPS

FLOATS = {dtypes.float32: "float32", dtypes.float16: "float16"}   # tinygrad dtype -> numpy dtype name
# the dtypes a Copy gathers from: a stored bool is 0 or 1 (one byte), exact as an fp16 operand (a mask, SELECT_EXACT)
OPERANDS = {**FLOATS, dtypes.bool: "bool"}
MAX_TASKS = 4096  # beyond this a single kernel's job is unreasonable; it falls back with the reason

def strip_cast(e):
  """e without the casts around it."""
  while isinstance(e, Alu) and e.op is Ops.CAST: e = e.src[0]
  return e

def uses(ld:Load) -> set[int]:
  """The loop ranges a load's index or padding predicate depends on."""
  used = ld.index.ranges()
  for b in ld.valid: used |= b.expr.ranges()
  return used

def walk(e):
  yield e
  for s in (e.src if isinstance(e, Alu) else (e.src,) if isinstance(e, Reduce) else ()): yield from walk(s)

def is_zero(e) -> bool: return isinstance(e, Const) and e.value == 0

def relu_arg(e):
  """x for MAX(0, x), else None."""
  e = strip_cast(e)
  if isinstance(e, Alu) and e.op is Ops.MAX and any(is_zero(s) for s in e.src): return next(s for s in e.src if not is_zero(s))
  return None

def _slope(t, u) -> float|None:
  """k when t is k*u (or u*k, or u itself: k = 1) for a float constant k, else None."""
  t = strip_cast(t)
  if t == u: return 1.0
  if is_zero(t): return 0.0     # tinygrad folds 0*u to 0
  if not (isinstance(t, Alu) and t.op is Ops.MUL): return None
  for k, x in (t.src, t.src[::-1]):
    k = strip_cast(k)
    if isinstance(k, Const) and not isinstance(k.value, bool) and isinstance(k.value, (int, float)) and strip_cast(x) == u:
      return float(k.value)
  return None

def _leaky_branches(e) -> tuple[object, object, object]|None:
  """(u, negative branch, positive branch) for where(u < 0, neg, pos) or where(0 < u, pos, neg), else None."""
  e = strip_cast(e)
  if not (isinstance(e, Alu) and e.op is Ops.WHERE): return None
  cond, p, q = strip_cast(e.src[0]), e.src[1], e.src[2]
  if not (isinstance(cond, Alu) and cond.op is Ops.CMPLT): return None
  l, r = (strip_cast(s) for s in cond.src)
  if is_zero(r): return l, p, q      # u < 0: the first branch is the negative one
  if is_zero(l): return r, q, p      # 0 < u: the second
  return None

def leaky_arg(e) -> tuple[object, float]|None:
  """(u, a) for where(u < 0, a*u, u) (tinygrad's leaky_relu) or where(0 < u, u, a*u), a a float constant, else None.
  Both are max(u, a*u) for a <= 1 and min(u, a*u) for a >= 1 on finite u (rules/elementwise.py LEAKY_AS_MAX)."""
  if (br := _leaky_branches(e)) is None: return None
  u, neg, pos = br
  if _slope(pos, u) != 1.0 or (a := _slope(neg, u)) is None: return None
  return u, a

def prelu_arg(e) -> tuple[object, object]|None:
  """(u, k) for where(u < 0, k*u, u) or where(0 < u, u, k*u) with a slope k that is an expression (PReLU's per-channel
  slope tensor, broadcast), not a constant (leaky_arg) and not u itself, else None (rules/elementwise.py PRELU_SPLIT)."""
  if (br := _leaky_branches(e)) is None: return None
  u, neg, pos = br
  neg = strip_cast(neg)
  if _slope(pos, u) != 1.0 or _slope(neg, u) is not None or not (isinstance(neg, Alu) and neg.op is Ops.MUL): return None
  for k, x in (neg.src, neg.src[::-1]):
    if strip_cast(x) == u and strip_cast(k) != u: return u, k
  return None

def _factors(e) -> list:
  """The factors of a product (nested MULs flattened, casts stripped)."""
  e = strip_cast(e)
  return [f for s in e.src for f in _factors(s)] if isinstance(e, Alu) and e.op is Ops.MUL else [e]

def prelu_sum_arg(e) -> tuple[object, object, float]|None:
  """(u, k, c) for relu(u) + c * k * relu(-u), i.e. max(u, 0) + (-c k) * min(u, 0) (PReLU as the sum of its two
  branches; tinygrad writes min(u, 0) as -max(-u, -0)), k an expression that is not a constant, c a float constant;
  else None. The slope is -c k (rules/elementwise.py PRELU_SPLIT)."""
  e = strip_cast(e)
  if not (isinstance(e, Alu) and e.op is Ops.ADD): return None
  for p, q in (e.src, e.src[::-1]):
    if (u := relu_arg(p)) is None: continue
    u, fs = strip_cast(u), _factors(q)
    neg = [i for i, f in enumerate(fs) if (v := relu_arg(f)) is not None and _slope(v, u) == -1.0]
    if len(neg) != 1: continue
    rest = [f for i, f in enumerate(fs) if i != neg[0]]
    consts = [f for f in rest if isinstance(f, Const) and not isinstance(f.value, bool) and isinstance(f.value, (int, float))]
    ks = [f for f in rest if not any(f is c for c in consts)]
    if len(ks) != 1 or ks[0] == u: continue
    c = 1.0
    for f in consts: c *= float(f.value)
    return u, ks[0], c
  return None

def relu_clip(e) -> tuple[object, float]|None:
  """(x, c) for relu(x) - relu(x - c) with c > 0 (= clamp(x, 0, c); tinygrad's relu6), else None."""
  if not (isinstance(e, Alu) and e.op is Ops.ADD): return None
  for pos, neg in (e.src, e.src[::-1]):
    x, neg = relu_arg(pos), strip_cast(neg)
    if x is None or not (isinstance(neg, Alu) and neg.op is Ops.MUL): continue
    k = [s for s in neg.src if isinstance(s, Const)]
    y = relu_arg(next((s for s in neg.src if not isinstance(s, Const)), None)) if len(k) == 1 and k[0].value == -1 else None
    y = strip_cast(y) if y is not None else None
    if isinstance(y, Alu) and y.op is Ops.ADD:
      for a, b in (y.src, y.src[::-1]):
        if isinstance(b, Const) and b.value < 0 and strip_cast(a) == strip_cast(x): return x, -float(b.value)
  return None

def relu_form(e) -> tuple[object, bool, float|None]:
  """(x, relu, clip) for e = [ReLU | ReLU6 = clip(0, c)](x), casts stripped; (e, False, None) when it is neither."""
  if (rc := relu_clip(e)) is not None: return strip_cast(rc[0]), True, rc[1]
  if (x := relu_arg(e)) is not None: return strip_cast(x), True, None
  return e, False, None

# ---- epilogue analysis (an expression around one reduction: the contraction and conv rules) ----

def epilogue_loads(e) -> list[Load]:
  """The loads of an epilogue expression, not those inside its reduction."""
  if isinstance(e, Load): return [e]
  return [l for s in e.src for l in epilogue_loads(s)] if isinstance(e, Alu) else []

def sum_terms(e) -> list:
  """The terms of a top-level sum (through casts): x + y + z -> [x, y, z]."""
  s = strip_cast(e)
  return sum_terms(s.src[0]) + sum_terms(s.src[1]) if isinstance(s, Alu) and s.op is Ops.ADD else [e]

def affine_degree(e, red:Reduce) -> int|str:
  """Degree of e in the reduction (0 or 1), or why e is not affine in it."""
  if e is red: return 1
  if isinstance(e, (Load, Const)): return 0
  if isinstance(e, Reduce): return "a second reduction in the epilogue"
  degs = [affine_degree(s, red) for s in e.src]
  if (bad := next((d for d in degs if isinstance(d, str)), None)) is not None: return bad
  if e.op is Ops.MUL: return sum(degs) if sum(degs) <= 1 else "the epilogue multiplies the sum by itself"
  if e.op in (Ops.ADD, Ops.CAST): return max(degs)
  if e.op.name not in PEXPR_OPS: return f"the epilogue uses {e.op.name}"
  return 0 if max(degs) == 0 else f"the epilogue applies {e.op.name} to the sum (only affine epilogues and ReLU are fused)"

def subst(e, old, new):
  """e with every subtree equal to old replaced by new."""
  if e == old: return new
  return Alu(e.op, tuple(subst(x, old, new) for x in e.src), e.dtype) if isinstance(e, Alu) else e

def pexpr(e, index:Callable[[Affine], Lin]) -> PExpr:
  """An epilogue expression as a PExpr, each operand load at index(its affine index) over some Copy's values."""
  if isinstance(e, Reduce): return ("acc",)
  if isinstance(e, Const): return ("const", float(e.value))
  if isinstance(e, Load): return ("load", e.slot, OPERANDS[e.dtype], index(e.index))
  return (e.op.name, FLOATS.get(e.dtype, "float64"), *(pexpr(s, index) for s in e.src))

class Grid:
  """The values a Copy computes per grid point: the grid coordinates, then linear positions (e.g. k = 8*k1 + k2) and
  the digits that recover each kernel loop index from them."""
  def __init__(self, grid:tuple[int, ...], sizes:dict[int, int], fixed:dict[int, int]):
    self.grid, self.sizes, self.fixed = grid, sizes, fixed
    self.vars: list[Var] = []
    self.pos: dict[int, int] = {}      # loop range id -> index into the values
    self.bounds: list[Bound] = []

  @property
  def nvals(self) -> int: return len(self.grid) + len(self.vars)
  def var(self, v:Var) -> int:
    """Appends a derived value; returns its index among the values."""
    self.vars.append(v)
    return self.nvals - 1
  _var = var
  def unit(self, j:int) -> Lin: return Lin(tuple(1 if i == j else 0 for i in range(j + 1)))

  def linear(self, coeffs:tuple[int, ...], const:int, dims:list[int], limit:int) -> None:
    """A linear position const + sum(coord*coeffs) enumerating the loops `dims` (row-major), bounded by `limit`."""
    lin = self._var(Var(coeffs, const))
    self.bounds.append(Bound(self.unit(lin), None, limit))
    below = 1
    for r in reversed(dims):
      self.pos[r] = self._var(Var(coeffs, const, below, self.sizes[r]))
      below *= self.sizes[r]

  def lin(self, aff:Affine) -> Lin:
    c, const = [0] * self.nvals, aff.const
    for r, k in aff.terms:
      if r in self.fixed: const += k * self.fixed[r]
      else: c[self.pos[r]] += k
    return Lin(tuple(c), const)

  def pexpr(self, e) -> PExpr:
    """An epilogue expression as a PExpr over this grid's values (its operand loads indexed through the digits)."""
    return pexpr(e, self.lin)

  def copy(self, src:Load|None, dst:int, dst_index:Lin, fill:float|None=0.0, value:PExpr|None=None, params:tuple[int, ...]=()) -> Copy:
    pad = lambda l: Lin(l.coeffs + (0,) * (self.nvals - len(l.coeffs)), l.const)
    bounds = [Bound(pad(b.expr), b.lo, b.hi) for b in self.bounds]
    src_index = Lin((0,))
    if src is not None:
      src_index = self.lin(src.index)
      bounds += [Bound(self.lin(b.expr), b.lo, b.hi) for b in src.valid]
      bounds.append(Bound(src_index, 0, src.size))  # never read outside the buffer (a guard, not a semantic)
    return Copy(None if src is None else src.slot, OPERANDS[src.dtype] if src is not None else "float64", dst, "float16",
                self.grid, tuple(self.vars), src_index, pad(dst_index), tuple(bounds), fill, value, params)

def select_fills(nest:LoopNest) -> tuple[Copy, ...]|str:
  """The Copies writing an output select's other value (analysis.Select) into the kernel's output, one per disjoint
  piece of its region, or why they cannot. Over the kernel's own output loops (the grid coordinates), no source read:
  the value is evaluated in float64 from its operands and rounded once to the output dtype (a constant, -inf included,
  exactly), on the CPU at call time; the NPU program's results are written first, so these overwrite what it computed
  where the select writes the other value (a causal mask's upper triangle). A select decided by a stored bool mask
  (an attention padding mask) writes only where the mask, read at each call, selects the other value (Copy.where)."""
  sel = nest.select
  assert sel is not None
  if nest.out_dtype not in FLOATS: return f"an output select into {nest.out_dtype} (float32/float16 only)"
  col = {rid: i for i, (rid, _) in enumerate(sel.ranges)}
  lin = lambda a: Lin(tuple(a.coeff(rid) for rid, _ in sel.ranges), a.const)
  for ld in sel.loads:
    if ld.dtype not in FLOATS: return f"the value outside an output select reads {ld.dtype} (float32/float16 only)"
    if ld.size < 0 or not ld.index.ranges() <= set(col): return "the value outside an output select reads a buffer of unknown size"
  where: PExpr|None = None
  if sel.mask is not None:   # the points a mask of stored bools selects, read at each call (Copy.where)
    if any(ld.dtype != dtypes.bool or ld.size < 0 or not ld.index.ranges() <= set(col) for ld in sel.mask_loads):
      return "an output select's mask is not stored bools over the output positions"
    where = pexpr(sel.mask, lin)
  reads = (*sel.loads, *sel.mask_loads)
  value = ("intercept", pexpr(sel.other, lin))
  params = tuple(sorted({ld.slot for ld in reads}))
  grid = tuple(n for _, n in sel.ranges)
  return tuple(Copy(None, "float64", nest.out_slot, FLOATS[nest.out_dtype], grid, (), Lin((0,)), lin(sel.out_index),
                    tuple(Bound(lin(b.expr), b.lo, b.hi) for b in piece) + tuple(Bound(lin(ld.index), 0, ld.size) for ld in reads),
                    None, value, params, where=where) for piece in sel.region)
