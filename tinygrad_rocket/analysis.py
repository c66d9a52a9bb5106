"""Kernel analysis: a tinygrad kernel AST (a SINK) as a loop nest the NPU lowering rules can match.

What a rule needs to know about a kernel (DESIGN.md, Lowering): its output ranges and reduce ranges, each buffer
access as an affine map of the ranges (plus the padding predicate that guards it), and the scalar expression tree
between the loads and the store. Anything outside that form (non-affine indices such as `//` and `%`, several stores,
symbolic sizes) is reported with the reason, so the kernel falls back with an explanation.

AST shapes this reads (tinygrad 0.14, tinygrad_api.md §3):
  SINK(END(STORE(INDEX(PARAM, idx), value), *ranges))
  a load is INDEX(PARAM, idx) used as a value; a padded load is WHERE(valid, INDEX(PARAM, WHERE(valid, idx, Invalid)), 0)
  or WHERE(invalid, 0, INDEX(PARAM, WHERE(NOT invalid, idx, Invalid)))
  REDUCE(expr, *reduce_ranges, arg=(op, 0))
"""
from __future__ import annotations
import math
from dataclasses import dataclass, field
import numpy as np
from tinygrad_rocket._tg import UOp, Ops, AxisType, DType, Invalid, graph_rewrite, symbolic, dtypes
from tinygrad_rocket.program import PEXPR_SELECT_OPS

class NotAnalyzable(Exception):
  """The kernel is outside the loop-nest form; the message says where."""

# ***** affine index maps *****

@dataclass(frozen=True)
class Affine:
  """sum(coeff * range) + const over RANGE ids."""
  terms: tuple[tuple[int, int], ...]  # (range id, coefficient), sorted by id, no zero coefficients
  const: int = 0

  @staticmethod
  def of(coeffs:dict[int, int], const:int=0) -> Affine: return Affine(tuple(sorted((r, c) for r, c in coeffs.items() if c)), const)
  def coeff(self, rid:int) -> int: return dict(self.terms).get(rid, 0)
  def __add__(self, o:Affine) -> Affine:
    d = dict(self.terms)
    for r, c in o.terms: d[r] = d.get(r, 0) + c
    return Affine.of(d, self.const + o.const)
  def scale(self, k:int) -> Affine: return Affine.of({r: c*k for r, c in self.terms}, self.const*k)
  def ranges(self) -> set[int]: return {r for r, _ in self.terms}
  def eval(self, point:dict[int, int]) -> int: return self.const + sum(c*point[r] for r, c in self.terms)

def affine(u:UOp, ctx:"IndexContext|None"=None) -> Affine:
  """The affine map of an index expression. `ctx` (range sizes and the validity predicate guarding the index) lets a
  `%` or `//` by a constant through when, on every valid point, its operand stays within one period: tinygrad writes
  strided and dilated convolutions' padded indices as (affine + c) % buffer_size."""
  if ctx is not None and (f := ctx.fitted.get(u)) is not None: return f
  if u.op is Ops.RANGE: return Affine(((u.arg[0], 1),))
  if u.op is Ops.CONST and isinstance(u.arg, int) and not isinstance(u.arg, bool): return Affine((), u.arg)
  if u.op is Ops.ADD: return affine(u.src[0], ctx) + affine(u.src[1], ctx)
  if u.op is Ops.MUL:
    a, b = u.src
    if b.op is Ops.CONST: return affine(a, ctx).scale(b.arg)
    if a.op is Ops.CONST: return affine(b, ctx).scale(a.arg)
    raise NotAnalyzable("index multiplies two ranges")
  if u.op is Ops.CAST: return affine(u.src[0], ctx)
  if u.op in DIVMOD and u.src[1].op is Ops.CONST and u.src[1].arg > 0 and ctx is not None:
    x, m = affine(u.src[0], ctx), u.src[1].arg
    lo, hi = ctx.interval(x)
    if lo // m == hi // m and (lo >= 0 or u.op in (Ops.FLOORMOD, Ops.FLOORDIV)):  # C-style ops agree with floor on >= 0
      return x + Affine((), -(lo // m) * m) if u.op in (Ops.FLOORMOD, Ops.CMOD) else Affine((), lo // m)
    raise NotAnalyzable(f"index uses {u.op.name} over more than one period ({lo}..{hi} by {m})")
  raise NotAnalyzable(f"index uses {u.op.name} (not affine)")

DIVMOD = (Ops.FLOORMOD, Ops.FLOORDIV, Ops.CMOD, Ops.CDIV)

class IndexContext:
  """What is known about the ranges where an index is evaluated: their sizes and the validity predicate's bounds.

  interval() bounds an affine expression over the valid points exactly for the ranges the predicate ties together:
  those fall into small groups (a conv's output row with its kernel row), each enumerated; other ranges contribute
  their full span."""
  MAX_GROUP_POINTS = 1 << 16

  def __init__(self, sizes:dict[int, int], valid:list["Bound"]):
    self.sizes, self.valid = sizes, valid
    self.fitted: dict[UOp, Affine] = {}   # sub-indices found equal to an affine map on the valid points (fit_affine)
    parent: dict[int, int] = {}
    def find(r:int) -> int:
      while parent.setdefault(r, r) != r: r = parent[r]
      return r
    for b in valid:
      rs = sorted(b.expr.ranges())
      for r in rs[1:]: parent[find(r)] = find(rs[0])
    self.groups: dict[int, list[int]] = {}
    for r in parent: self.groups.setdefault(find(r), []).append(r)

  def _span(self, c:int, r:int) -> tuple[int, int]: return min(0, c*(self.sizes[r]-1)), max(0, c*(self.sizes[r]-1))

  def interval(self, x:Affine) -> tuple[int, int]:
    """Inclusive bounds of x over the valid points (sound; exact for enumerated groups)."""
    coeffs, lo, hi = dict(x.terms), x.const, x.const
    for rs in self.groups.values():
      pts = math.prod(self.sizes[r] for r in rs)
      bounds = [b for b in self.valid if b.expr.ranges() & set(rs)]
      if pts > self.MAX_GROUP_POINTS: continue
      grid = np.indices([self.sizes[r] for r in rs]).reshape(len(rs), -1)
      ok = np.ones(grid.shape[1], bool)
      for b in bounds:
        v = b.expr.const + sum(c * grid[rs.index(r)] for r, c in b.expr.terms)
        if b.lo is not None: ok &= v >= b.lo
        if b.hi is not None: ok &= v < b.hi
      if not ok.any(): continue  # no valid point at all: the index is never used
      v = sum(coeffs.get(r, 0) * grid[i] for i, r in enumerate(rs))[ok] if any(coeffs.get(r, 0) for r in rs) else np.zeros(1, np.int64)
      lo, hi = lo + int(v.min()), hi + int(v.max())
      for r in rs: coeffs.pop(r, None)
    for r, c in coeffs.items():
      slo, shi = self._span(c, r)
      lo, hi = lo + slo, hi + shi
    return lo, hi

# ***** predicates (padding) *****

@dataclass(frozen=True)
class Bound:
  """lo <= expr < hi over the ranges (either side may be None)."""
  expr: Affine
  lo: int|None
  hi: int|None

def predicate(u:UOp) -> list[Bound]:
  """A validity predicate as a conjunction of bounds on affine expressions."""
  if u.op is Ops.AND: return predicate(u.src[0]) + predicate(u.src[1])
  if u.op is Ops.CMPLT and u.src[1].op is Ops.CONST: return [Bound(affine(u.src[0]), None, u.src[1].arg)]
  # NOT(x < c) is written CMPNE(CMPLT(x, c), True)
  if u.op is Ops.CMPNE and u.src[1].op is Ops.CONST and u.src[1].arg is True and u.src[0].op is Ops.CMPLT and u.src[0].src[1].op is Ops.CONST:
    return [Bound(affine(u.src[0].src[0]), u.src[0].src[1].arg, None)]
  # a < b of two affine expressions (a triangle: tril's k < i + 1, causal attention's j < i + 1) is a - b < 0
  if u.op is Ops.CMPLT: return [Bound(affine(u.src[0]) + affine(u.src[1]).scale(-1), None, 0)]
  if u.op is Ops.CMPNE and u.src[1].op is Ops.CONST and u.src[1].arg is True and u.src[0].op is Ops.CMPLT:
    return [Bound(affine(u.src[0].src[0]) + affine(u.src[0].src[1]).scale(-1), 0, None)]
  if u.op is Ops.CONST and u.arg is True: return []
  raise NotAnalyzable(f"predicate uses {u.op.name}")

def position_predicate(u:UOp, sizes:dict[int, int]) -> list[Bound]:
  """An output select's condition (a where() over output positions) as a conjunction of bounds: what `predicate`
  reads, and also x != c with c at an end of x's range (a concatenation's channel half: c_hi != 0 on [0, 2) is
  c_hi >= 1)."""
  if u.op is Ops.AND: return position_predicate(u.src[0], sizes) + position_predicate(u.src[1], sizes)
  if u.op is Ops.CMPNE and u.src[1].op is Ops.CONST and not isinstance(u.src[1].arg, bool) and isinstance(c := u.src[1].arg, int):
    x = affine(u.src[0])
    lo, hi = IndexContext(sizes, []).interval(x)
    if c == lo: return [Bound(x, c + 1, None)]
    if c == hi: return [Bound(x, None, c)]
    if not lo <= c <= hi: return []
    raise NotAnalyzable(f"the select's condition x != {c} falls inside x's range {lo}..{hi} (not one interval)")
  return predicate(u)

# ***** the scalar expression tree *****

@dataclass(frozen=True)
class Load:
  slot: int                # PARAM slot of the buffer
  dtype: DType
  size: int                # elements in the buffer
  index: Affine
  valid: tuple[Bound, ...] = ()   # outside it the load reads `pad` instead (tinygrad's WHERE(valid, load, pad))
  pad: float|int|None = None

@dataclass(frozen=True)
class Const:
  value: float|int|bool
  dtype: DType

@dataclass(frozen=True)
class Reduce:
  op: Ops                  # Ops.ADD | Ops.MAX | Ops.MUL
  ranges: tuple[int, ...]
  src: "Expr"
  dtype: DType

@dataclass(frozen=True)
class Alu:
  op: Ops
  src: tuple["Expr", ...]
  dtype: DType

@dataclass(frozen=True)
class Valid:
  """1 where every bound holds, else 0: a padding predicate as a value. tinygrad pads a computed value v (an op fused
  into a padded input, `(x*2 + 1).conv2d(w, padding=1)`) as WHERE(valid, v, pad); when v at the loads' padding is not
  `pad`, the predicate stays in the expression as Alu(WHERE, (Valid, v, Const(pad))) (rules that do not read it
  reject the kernel with their reasons)."""
  bounds: tuple[Bound, ...]

Expr = Load | Const | Reduce | Alu | Valid

@dataclass
class LoopNest:
  name: str
  ranges: dict[int, int]             # range id -> size (output and reduce ranges)
  output_ranges: tuple[int, ...]     # in END order (outermost first)
  out_slot: int
  out_dtype: DType
  out_size: int
  out_index: Affine
  value: Expr
  loads: list[Load] = field(default_factory=list)
  precision: str = "default"         # what the kernel is compiled for (config.precision, set by the lowering)
  select: "Select|None" = None       # the kernel writes this nest's value only where a predicate holds (`Select`)

  @property
  def reduce_ranges(self) -> tuple[int, ...]: return tuple(r for r in self.ranges if r not in self.output_ranges)

def _scalar(v) -> float|int|bool:
  """A constant as a plain Python number (tinygrad wraps floats in ConstFloat, a float subclass). Anything else (the
  Invalid of a gated index reached as a value) is not a number the NPU can use."""
  if isinstance(v, (bool, int, float)): return v if isinstance(v, (bool, int)) else float(v)
  raise NotAnalyzable(f"constant {v!r} is not a number")

def _range_size(r:UOp) -> int:
  if r.src[0].op is not Ops.CONST: raise NotAnalyzable("symbolic range size")
  return r.src[0].arg

def _load(u:UOp, sizes:dict[int, int], valid:tuple[Bound, ...]=(), pad=None) -> Load:
  buf, idx = u.src[0], u.src[1]
  if buf.op is not Ops.PARAM: raise NotAnalyzable(f"load from {buf.op.name}, not a kernel parameter")
  if idx.op is Ops.WHERE and idx.src[2].op is Ops.CONST and idx.src[2].arg is Invalid:
    valid = valid or tuple(predicate(idx.src[0]))
    idx = idx.src[1]
  try: aff = affine(idx, IndexContext(sizes, list(valid)))
  except NotAnalyzable as e: aff = fit_affine(idx, sizes, list(valid), str(e))
  return Load(buf.arg.slot, buf.dtype, buf.src[0].arg if buf.src and buf.src[0].op is Ops.CONST else -1, aff, valid, pad)

# ***** indices that are affine only on their valid points *****
# tinygrad sometimes writes an affine access through nested // and % that span several periods (a strided conv's
# padded input after a fused op: ((r2+1)//2 + r5 + 6)//7 ...). Such an index is accepted if one affine map equals it
# wherever the padding predicate holds, checked point by point, but never over more loops than it must: each // and %
# (innermost first) is checked alone on the loops it reads closed under the predicate's ties (`_closure`: a bound
# reading two loops ties them, so the valid points of a closed set of loops are exactly the projections of the valid
# points of all loops, provided any point is valid at all, which an empty projection refutes), and one found affine
# there stands for its map in the enclosing expression. What is left is read by `affine` directly, or enumerated
# whole. A 224x224 stride-2 stem reads 7x112 points per // and % instead of all 1.8M of its loops. Enumeration is
# bounded per closure.
MAX_FIT_POINTS = 1 << 20   # ~100 MB of transient int64/float64 arrays at the cap (compile time, once per kernel)

_INT_OPS = {Ops.ADD: np.add, Ops.MUL: np.multiply, Ops.FLOORDIV: np.floor_divide, Ops.FLOORMOD: np.mod,
            Ops.CMPLT: np.less, Ops.CMPNE: np.not_equal, Ops.AND: np.logical_and, Ops.OR: np.logical_or, Ops.MAX: np.maximum,
            Ops.CDIV: lambda a, b: np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b)), Ops.CMOD: np.fmod}

def _eval_index(u:UOp, env:dict[int, np.ndarray], fitted:dict[UOp, Affine]|None=None):
  if fitted and (a := fitted.get(u)) is not None: return a.const + sum((c * env[r] for r, c in a.terms), np.int64(0))
  if u.op is Ops.RANGE: return env[u.arg[0]]
  if u.op is Ops.CONST and isinstance(u.arg, (int, bool)): return u.arg
  if u.op is Ops.CAST: return _eval_index(u.src[0], env, fitted)
  if u.op is Ops.WHERE: return np.where(*(_eval_index(x, env, fitted) for x in u.src))
  if u.op in _INT_OPS: return _INT_OPS[u.op](*(_eval_index(x, env, fitted) for x in u.src))
  raise NotAnalyzable(f"index uses {u.op.name} (not affine)")

def _closure(rs:set[int], valid:list[Bound]) -> list[int]:
  """The loops rs together with every loop a bound ties to them, transitively."""
  out, grew = set(rs), True
  while grew:
    grew = False
    for b in valid:
      if (br := b.expr.ranges()) & out and not br <= out: out, grew = out | br, True
  return sorted(out)

def _fit_on(u:UOp, rs:list[int], sizes:dict[int, int], valid:list[Bound], fitted:dict[UOp, Affine]) -> Affine|None:
  """The affine map equal to u on the valid points of the (closed) loops rs, or None. No valid point: u is never
  evaluated (nor is the whole index), any map does."""
  grid = np.indices([sizes[r] for r in rs]).reshape(len(rs), -1).astype(np.int64) if rs else np.zeros((0, 1), np.int64)
  env = dict(zip(rs, grid))
  v = np.broadcast_to(np.asarray(_eval_index(u, env, fitted), np.int64), grid.shape[1:])
  ok = np.ones(grid.shape[1], bool)
  for b in valid:
    if not b.expr.ranges() <= set(rs): continue
    x = b.expr.const + sum((c * env[r] for r, c in b.expr.terms), np.zeros(grid.shape[1], np.int64))
    if b.lo is not None: ok &= x >= b.lo
    if b.hi is not None: ok &= x < b.hi
  if not ok.any(): return Affine((), 0)   # never read
  A = np.concatenate([grid[:, ok].T, np.ones((int(ok.sum()), 1), np.int64)], axis=1).astype(np.float64)
  coef = np.rint(np.linalg.lstsq(A, v[ok].astype(np.float64), rcond=None)[0]).astype(np.int64)
  if not np.array_equal(grid[:, ok].T @ coef[:-1] + coef[-1], v[ok]): return None
  return Affine.of({r: int(c) for r, c in zip(rs, coef[:-1])}, int(coef[-1]))

def fit_affine(idx:UOp, sizes:dict[int, int], valid:list[Bound], why:str) -> Affine:
  """The affine map equal to idx on every valid point, or NotAnalyzable(why)."""
  ctx = IndexContext(sizes, valid)
  for u in idx.toposort():   # operands before the ops that read them
    if u.op not in DIVMOD: continue
    try: affine(u, ctx)
    except NotAnalyzable:
      rs = _closure({x.arg[0] for x in u.toposort() if x.op is Ops.RANGE}, valid)
      if math.prod(sizes[r] for r in rs) <= MAX_FIT_POINTS and (a := _fit_on(u, rs, sizes, valid, ctx.fitted)) is not None: ctx.fitted[u] = a
  try: return affine(idx, ctx)
  except NotAnalyzable: pass
  rs = _closure({u.arg[0] for u in idx.toposort() if u.op is Ops.RANGE} | {r for b in valid for r in b.expr.ranges()}, valid)
  if math.prod(sizes[r] for r in rs) > MAX_FIT_POINTS or (a := _fit_on(idx, rs, sizes, valid, ctx.fitted)) is None: raise NotAnalyzable(why)
  return a

def _guarded_by_not(ld:UOp, cond:UOp) -> bool:
  """Whether load ld's index is WHERE(NOT cond, idx, Invalid) (NOT x is written CMPNE(x, True))."""
  g = ld.src[1]
  return (g.op is Ops.WHERE and g.src[2].op is Ops.CONST and g.src[2].arg is Invalid and g.src[0].op is Ops.CMPNE and
          g.src[0].src[0] is cond and g.src[0].src[1].op is Ops.CONST and g.src[0].src[1].arg is True)

def _not(c:UOp) -> UOp: return c.src[0] if c.op is Ops.CMPNE and c.src[1].op is Ops.CONST and c.src[1].arg is True else c.ne(True)

def _reads_data(cond:UOp) -> bool:
  """Whether a WHERE's condition reads a buffer: then it selects by data (relu's backward where(0 < x, g, 0), a stored
  bool mask), not a padding predicate over loop positions, and the WHERE is an ordinary op of the value."""
  return any(x.op in (Ops.INDEX, Ops.PARAM) for x in cond.toposort())

def _padded_load_form(u:UOp) -> UOp:
  """tinygrad writes a load padded with a non-zero value (max pooling's -inf) as WHERE(c, WHERE(c, load, 0), pad), or
  with the condition inverted, WHERE(!c, pad, WHERE(!c, 0, load)); both mean WHERE(c, load, pad), which _expr reads."""
  if u.op is not Ops.WHERE or _reads_data(u.src[0]): return u
  c, a, b = u.src
  if a.op is Ops.CONST and b.op is not Ops.CONST: c, a, b = _not(c), b, a
  if a.op is Ops.WHERE and (inner := _padded_load_form(a)).src[0] is c and inner.src[1].op is Ops.INDEX: a = inner.src[1]
  return u.replace(src=(c, a, b)) if a.op is Ops.INDEX and b.op is Ops.CONST else u

_AT_PAD = {Ops.ADD: lambda a, b: a + b, Ops.MUL: lambda a, b: a * b, Ops.MAX: max, Ops.CAST: lambda a: a}

def _at_pad(e:Expr) -> float|None:
  """e's value where every load reads its padding (only loads that carry a padding predicate; None if unknown)."""
  if isinstance(e, Load): return (e.pad if e.pad is not None else 0.0) if e.valid else None
  if isinstance(e, Const): return e.value
  if isinstance(e, Alu) and e.op in _AT_PAD:
    args = [_at_pad(x) for x in e.src]
    return None if any(a is None for a in args) else _AT_PAD[e.op](*args)
  return None

def _padded_value(u:UOp, ranges:dict[int, int], loads:list[Load], sizes:dict[int, int]) -> Expr|None:
  """WHERE(valid, f(padded loads), c): tinygrad wraps an op fused into a padded input (relu(x).conv2d(w, padding=1))
  this way; the loads inside carry the same predicate on their indices. With f(padding) == c it is f itself; else the
  predicate is kept as a Valid operand of the WHERE."""
  try: bounds = predicate(u.src[0])
  except NotAnalyzable: return None
  inner: list[Load] = []
  try: e = _expr(u.src[1], ranges, inner, sizes)
  except NotAnalyzable: return None
  if not inner: return None
  loads.extend(inner)
  if _at_pad(e) == _scalar(u.src[2].arg): return e
  return Alu(Ops.WHERE, (Valid(tuple(bounds)), e, _expr(u.src[2], ranges, loads, sizes)), u.dtype)

def _expr(u:UOp, ranges:dict[int, int], loads:list[Load], sizes:dict[int, int]) -> Expr:
  u = _padded_load_form(u)
  if u.op is Ops.INDEX:
    loads.append(ld:=_load(u, sizes))
    return ld
  if u.op is Ops.WHERE and _reads_data(u.src[0]): return Alu(u.op, tuple(_expr(s, ranges, loads, sizes) for s in u.src), u.dtype)
  if u.op is Ops.WHERE and u.src[1].op is Ops.INDEX and u.src[2].op is Ops.CONST:
    # padded load: WHERE(valid, INDEX(p, WHERE(valid, idx, Invalid)), pad)
    loads.append(ld:=_load(u.src[1], sizes, tuple(predicate(u.src[0])), _scalar(u.src[2].arg)))
    return ld
  if u.op is Ops.WHERE and u.src[2].op is Ops.INDEX and u.src[1].op is Ops.CONST and _guarded_by_not(u.src[2], u.src[0]):
    # the same the other way round: WHERE(invalid, pad, INDEX(p, WHERE(NOT invalid, idx, Invalid))); the index's own
    # guard is the validity predicate
    loads.append(ld:=_load(u.src[2], sizes, (), _scalar(u.src[1].arg)))
    return ld
  if u.op is Ops.WHERE and u.src[2].op is Ops.CONST and (padded := _padded_value(u, ranges, loads, sizes)) is not None:
    return padded
  if u.op is Ops.CONST: return Const(_scalar(u.arg), u.dtype)
  if u.op is Ops.REDUCE:
    rs = tuple(r.arg[0] for r in u.src[1:])
    for r in u.src[1:]: ranges[r.arg[0]] = _range_size(r)
    return Reduce(u.arg[0], rs, _expr(u.src[0], ranges, loads, sizes), u.dtype)
  if u.op is Ops.RANGE: raise NotAnalyzable(POSITION_DEPENDENT_REASON)
  if u.op in (Ops.PARAM, Ops.STORE, Ops.END): raise NotAnalyzable(f"{u.op.name} inside the value expression")
  return Alu(u.op, tuple(_expr(s, ranges, loads, sizes) for s in u.src), u.dtype)

# a loop position used as a value: a where() on indices that is not the padding of one input
POSITION_DEPENDENT_REASON = ("the value depends on the output position through a where() the analysis does not read as an "
                             "input's padding (a mask such as causal attention's, a concatenation, an output padded with a "
                             "constant, or a padded index too large to check point by point)")

# ***** range splitting *****

MAX_RANGE_SPLITS = 8   # a reshape chain splits a range a few times at most; more means something else is going on

def _divided_range(ast:UOp) -> tuple[UOp, int]|None:
  """A range r that some index takes r // m or r % m of, with m dividing its size (a merged axis: tinygrad loops once
  over what a reshape made of two axes, e.g. attention's heads x head_dim after a transpose), or None."""
  for u in ast.toposort():
    if u.op in DIVMOD and u.src[0].op is Ops.RANGE and u.src[1].op is Ops.CONST and isinstance(m := u.src[1].arg, int) \
       and not isinstance(m, bool) and 0 < m < (n := _range_size(u.src[0])) and n % m == 0: return u.src[0], m
  return None

def _split_range(ast:UOp, r:UOp, m:int) -> UOp:
  """The kernel with range r (size n) replaced by two nested ranges, hi (n / m) and lo (m), r = hi*m + lo: a loop
  nest over the same points in the same order, whose r // m and r % m are hi and lo (tinygrad's symbolic rules fold
  them), so the indices become affine."""
  nid = max(u.arg[0] for u in ast.toposort() if u.op is Ops.RANGE) + 1
  size = lambda k: UOp(Ops.CONST, r.src[0].dtype, arg=k)
  hi = UOp(Ops.RANGE, r.dtype, (size(_range_size(r) // m),), (nid, *r.arg[1:]))
  lo = UOp(Ops.RANGE, r.dtype, (size(m),), (nid + 1, *r.arg[1:]))
  memo: dict[UOp, UOp] = {r: hi * m + lo}
  def sub(u:UOp) -> UOp:
    if (done := memo.get(u)) is not None: return done
    loops = u.op in (Ops.REDUCE, Ops.END)   # their src[1:] list loops: r becomes hi, lo there
    src = tuple(x for i, s in enumerate(u.src) for x in ((hi, lo) if loops and i > 0 and s is r else (sub(s),)))
    new = u if src == u.src else u.replace(src=src)
    if new is not u and new.op in DIVMOD: new = graph_rewrite(new, symbolic)
    memo[u] = new
    return new
  return sub(ast)

def split_divided_ranges(ast:UOp) -> UOp:
  """The kernel with every range that an index divides (r // m, r % m, m | size) split into its two axes."""
  for _ in range(MAX_RANGE_SPLITS):
    if (found := _divided_range(ast)) is None: return ast
    ast = _split_range(ast, *found)
  return ast

# ***** output selects *****
# A kernel that writes its contraction only at some output positions and another value elsewhere: out =
# E(where(P, V, O)), P a condition over output positions only (affine bounds), V holding the kernel's reduction, O not
# (a constant such as max pooling's -inf padding of a conv's output, or loads: the other half of a concatenation), E
# elementwise (a sigmoid after the concatenation). It is read as two kernels: E(V) on the output positions where V is
# written (the output ranges narrowed to P's interval where P bounds one range alone; the rules lower it like any
# kernel), and E(O) written by the CPU everywhere else (`Select`: in float64 from its operands, one rounding to the
# output dtype; a constant exactly). Causal attention adds its mask, s + where(j <= i, 0, -inf): that is
# where(j <= i, s + 0, -inf) for every finite s, and s is finite on both devices whenever the NPU runs the call: its
# operands and folded epilogue factors are finite fp16 values (else the call runs the C code), so |s| stays far below
# fp32's range on the NPU and in the CPU's float32.
# P may also be a mask of stored bools over output positions (attention's padding mask: scaled_dot_product_attention
# with a bool attn_mask adds where(m, 0, -inf); masked_fill(~m, -inf)): then V is computed at every output position and
# the CPU writes E(O) where the mask, read at each call before any result lands, selects it (Select.mask).

@dataclass(frozen=True)
class Select:
  """Where the kernel writes `other` instead of the nest's value: `region` (disjoint conjunctions of bounds over the
  kernel's own output ranges `ranges`, at `out_index`), `other` an expression of constants and loads over them; with
  `mask`, only where that expression of stored bools holds (read at each call: the points depend on the data)."""
  ranges: tuple[tuple[int, int], ...]   # (range id, size) of the kernel's output loops, in END order
  out_index: Affine
  region: tuple[tuple[Bound, ...], ...]
  other: Expr
  loads: tuple[Load, ...]
  mask: Expr|None = None                # bool loads over the output ranges (an attention padding mask), NOT, AND, OR, XOR
  mask_loads: tuple[Load, ...] = ()


def _has_reduce(u:UOp) -> bool: return any(x.op is Ops.REDUCE for x in u.toposort())

def _position_only(u:UOp, outs:set[int]) -> bool:
  """Whether condition u reads only output loop positions (no loads, no reductions, no reduce loops)."""
  return all(x.op not in (Ops.INDEX, Ops.PARAM, Ops.REDUCE) and (x.op is not Ops.RANGE or x.arg[0] in outs) for x in u.toposort())

MASK_OPS = (Ops.AND, Ops.OR, Ops.XOR)   # (NOT is x != True)

def _is_mask(u:UOp, outs:set[int]) -> bool:
  """Whether condition u is a mask of stored bools: bool loads indexed by output positions only (a padding mask,
  broadcast over heads and rows or not), combined by NOT (x != True), AND, OR, XOR."""
  if u.op is Ops.INDEX: return u.dtype == dtypes.bool and u.src[0].op is Ops.PARAM and _position_only(u.src[1], outs)
  if u.op is Ops.CMPNE and u.src[1].op is Ops.CONST and u.src[1].arg is True: return _is_mask(u.src[0], outs)
  return u.op in MASK_OPS and all(_is_mask(x, outs) for x in u.src)

def _select_cond(u:UOp, outs:set[int]) -> bool:
  """Whether u can decide an output select: a predicate on output positions, or a stored bool mask over them. A
  condition that reads other data (a non-bool mask cast or compared in the kernel, a comparison of values) is refused
  with the reason: no rule computes a select of the reduction by data."""
  if _position_only(u, outs) or _is_mask(u, outs): return True
  if _reads_data(u) and not _has_reduce(u):
    data = sorted({x.dtype.name for x in u.toposort() if x.op is Ops.INDEX})
    raise NotAnalyzable(f"the reduction is selected by a condition that reads {'/'.join(data)} data but is not a stored bool "
                        "mask indexed by output positions only (what an output select reads as a mask: bool loads, NOT, AND, OR, XOR)")
  return False

def _select_node(u:UOp, outs:set[int]) -> tuple[UOp, UOp, UOp, UOp]|None:
  """(node, P, then value, else value) of the outermost select on u's elementwise ops: a WHERE on an output-position
  condition or a stored bool mask (_select_cond) with the reduction in exactly one branch, or a mask added to the
  reduction's value, x + where(P, c1, c2) with c2 (or c1) infinite: where(P, x + c1, c2) (exact for finite x; an
  infinite constant is only ever written)."""
  if u.op is Ops.WHERE and _has_reduce(u.src[1]) != _has_reduce(u.src[2]) and _select_cond(u.src[0], outs): return u, *u.src
  if u.op is Ops.ADD:
    for x, m in (u.src, u.src[::-1]):
      w = m.src[0] if m.op is Ops.CAST else m
      if not (w.op is Ops.WHERE and _has_reduce(x) and
              all(c.op is Ops.CONST and isinstance(c.arg, (int, float)) and not isinstance(c.arg, bool) for c in w.src[1:])): continue
      c1, c2 = (float(c.arg) for c in w.src[1:])
      if math.isinf(c1) == math.isinf(c2) or not _select_cond(w.src[0], outs): continue
      if math.isinf(c2): return u, w.src[0], x + x.const_like(c1), x.const_like(c2)
      return u, w.src[0], x.const_like(c1), x + x.const_like(c2)
  if u.op in (Ops.REDUCE, Ops.INDEX, Ops.RANGE, Ops.CONST, Ops.PARAM): return None
  return next((found for s in u.src if (found := _select_node(s, outs)) is not None), None)

def _fails(b:Bound) -> list[Bound]:
  """b's complement as disjoint bounds (one per side it has)."""
  return [x for x in (Bound(b.expr, None, b.lo) if b.lo is not None else None, Bound(b.expr, b.hi, None) if b.hi is not None else None) if x]

def complement(bounds:list[Bound]) -> list[tuple[Bound, ...]]:
  """Where the conjunction `bounds` fails, as disjoint conjunctions: bound i fails while bounds 0..i-1 hold."""
  return [(*bounds[:i], f) for i, b in enumerate(bounds) for f in _fails(b)]

def _atoms(p:UOp) -> list[UOp]: return _atoms(p.src[0]) + _atoms(p.src[1]) if p.op is Ops.AND else [p]

def _narrowed(ast:UOp, keep:dict[UOp, tuple[int, int]]) -> UOp:
  """The kernel with each output range r in `keep` running over [lo, hi) only: r becomes r' + lo, r' a range of
  hi - lo (the constant lo when that is 1: the loop disappears)."""
  memo: dict[UOp, UOp] = {}
  new: dict[UOp, UOp|None] = {}
  for r, (lo, hi) in keep.items():
    new[r] = UOp(Ops.RANGE, r.dtype, (UOp(Ops.CONST, r.src[0].dtype, arg=hi - lo),), r.arg) if hi - lo > 1 else None
    memo[r] = new[r] + lo if new[r] is not None else UOp(Ops.CONST, r.dtype, arg=lo)
  def sub(u:UOp) -> UOp:
    if (done := memo.get(u)) is not None: return done
    src = tuple(x for i, s in enumerate(u.src) for x in (((new[s],) if new[s] is not None else ()) if u.op is Ops.END and i > 0 and s in new else (sub(s),)))
    memo[u] = out = u if src == u.src else u.replace(src=src)
    return out
  return sub(ast)

def _output_select(ast:UOp, end:UOp, store:UOp, out_rs:tuple[UOp, ...], sizes:dict[int, int]) -> LoopNest|None:
  """The nest of a kernel with an output select (see above), or None when its value has none."""
  outs = {r.arg[0] for r in out_rs}
  if (found := _select_node(store.src[1], outs)) is None: return None
  node, cond, a, b = found
  v_then = _has_reduce(a)
  value = store.src[1].substitute({node: a if v_then else b})
  other = store.src[1].substitute({node: b if v_then else a})
  if _has_reduce(other): raise NotAnalyzable("the value written outside an output select still reads the reduction")
  mask: Expr|None = None
  mask_loads: list[Load] = []
  if _is_mask(cond, outs):   # decided by data: the other value's points are read at each call, where the mask holds
    mask = _expr(cond if not v_then else _not(cond), {r.arg[0]: _range_size(r) for r in out_rs}, mask_loads, sizes)
    if any(ld.valid for ld in mask_loads): raise NotAnalyzable("an output select's bool mask is padded (the select reads a stored mask as it is)")
  bounds = position_predicate(cond, sizes) if mask is None else []
  # disjoint conjunctions: where the reduction's value is written, and where the other value is (a mask's select: both
  # everywhere, the mask deciding per point at each call)
  where_v = [bounds] if v_then or mask is not None else complement(bounds)
  where_o = [bounds] if not v_then or mask is not None else complement(bounds)
  # what the value's branch knows: its own condition (then: each of its atoms; else: the condition is false)
  known = {x: UOp(Ops.CONST, dtypes.bool, arg=True) for x in _atoms(cond)} if v_then else {cond: UOp(Ops.CONST, dtypes.bool, arg=False)}
  value = value.substitute(known)
  # narrow the output ranges a bound of one range confines (a padded output's border is never computed)
  keep: dict[UOp, tuple[int, int]] = {}
  if len(where_v) == 1:
    for r in out_rs:
      n, rid = _range_size(r), r.arg[0]
      ok = np.ones(n, bool)
      for bd in where_v[0]:
        if bd.expr.ranges() != {rid}: continue
        v = bd.expr.const + bd.expr.coeff(rid) * np.arange(n)
        if bd.lo is not None: ok &= v >= bd.lo
        if bd.hi is not None: ok &= v < bd.hi
      if not ok.any(): raise NotAnalyzable("an output select whose reduction is never written")
      lo, hi = int(np.argmax(ok)), n - int(np.argmax(ok[::-1]))
      if (lo, hi) != (0, n): keep[r] = (lo, hi)
  inner = _narrowed(ast.replace(src=(end.replace(src=(store.replace(src=(store.src[0], value)), *end.src[1:])),)), keep)
  # simplified on the narrowed ranges: the known conditions fold away, and so do the % and // tinygrad wrote for an index
  # that spanned several periods on the full ranges (a strided conv's padded input)
  st = inner.src[0].src[0]
  inner = inner.replace(src=(inner.src[0].replace(src=(st.replace(src=(st.src[0], graph_rewrite(st.src[1], symbolic))), *inner.src[0].src[1:])),))
  nest = analyze(inner)
  if nest.select is not None: raise NotAnalyzable("two output selects")
  loads: list[Load] = []
  o = _expr(other, {r.arg[0]: _range_size(r) for r in out_rs}, loads, sizes)
  if (bad := next((x.op.name for x in _walk(o) if isinstance(x, Alu) and x.op.name not in PEXPR_SELECT_OPS), None)) is not None:
    raise NotAnalyzable(f"the value written outside an output select uses {bad} (the CPU evaluates {', '.join(sorted(PEXPR_SELECT_OPS))})")
  if any(isinstance(x, (Reduce, Valid)) for x in _walk(o)) or any(ld.valid for ld in loads):
    raise NotAnalyzable("the value written outside an output select reads a padded operand")
  if (dt := next((x.dtype for x in _walk(o) if isinstance(x, (Alu, Load)) and not (dtypes.is_float(x.dtype) or x.dtype == dtypes.bool)), None)) is not None:
    raise NotAnalyzable(f"the value written outside an output select computes in {dt} (the CPU evaluates float values)")
  nest.select = Select(tuple((r.arg[0], _range_size(r)) for r in out_rs), affine(store.src[0].src[1], IndexContext(sizes, [])),
                       tuple(tuple(x) for x in where_o), o, tuple(loads), mask, tuple(mask_loads))
  return nest

def _walk(e:Expr):
  yield e
  for s in (e.src if isinstance(e, Alu) else (e.src,) if isinstance(e, Reduce) else ()): yield from _walk(s)

def analyze(ast:UOp) -> LoopNest:
  """The loop nest of a single-output kernel, or NotAnalyzable."""
  if ast.op is not Ops.SINK: raise NotAnalyzable(f"not a kernel SINK ({ast.op.name})")
  ast = split_divided_ranges(ast)
  stores = [u for u in ast.toposort() if u.op is Ops.STORE]
  if len(stores) != 1: raise NotAnalyzable(f"{len(stores)} stores (one output expected)")
  if len(ast.src) != 1 or ast.src[0].op not in (Ops.END, Ops.STORE): raise NotAnalyzable("kernel body is not END(STORE)")
  end = ast.src[0]
  store = end.src[0] if end.op is Ops.END else end
  out_rs = tuple(r for r in end.src[1:]) if end.op is Ops.END else ()
  if any(r.op is not Ops.RANGE or r.arg[1] is AxisType.REDUCE for r in out_rs): raise NotAnalyzable("unexpected output loop")
  ranges = {r.arg[0]: _range_size(r) for r in out_rs}
  all_sizes = {u.arg[0]: _range_size(u) for u in ast.toposort() if u.op is Ops.RANGE}
  idx, value = store.src[0], store.src[1]
  if idx.op is not Ops.INDEX or idx.src[0].op is not Ops.PARAM: raise NotAnalyzable("store is not to a kernel parameter")
  out = idx.src[0]
  if (selected := _output_select(ast, end, store, out_rs, all_sizes)) is not None: return selected
  loads: list[Load] = []
  expr = _expr(value, ranges, loads, all_sizes)
  name = ast.arg.name if hasattr(ast.arg, "name") else "kernel"
  return LoopNest(name, ranges, tuple(r.arg[0] for r in out_rs), out.arg.slot, out.dtype,
                  out.src[0].arg if out.src and out.src[0].op is Ops.CONST else -1, affine(idx.src[1], IndexContext(all_sizes, [])), expr, loads)
