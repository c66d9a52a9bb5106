"""NpuProgram: what one tinygrad kernel becomes on the NPU, as data that pickles into the kernel's BINARY.

A program reads and writes only BOs of its own ("scratch" slots, in the NPU's layouts): the CPU packs the kernel's
operands into them before the job (a gather that also rounds to the operand precision) and unpacks the result after
it. So a job never lists one BO as both input and output (the hardware then "completes" it having run nothing:
rocket_fp16_ew_ppu.md §6.A), and any affine view tinygrad hands over (permuted, strided, broadcast, padded) costs
nothing extra: packing is a gather anyway.

Slots: kernel buffers keep their PARAM slot numbers (0..); scratch buffer i is slot SCRATCH + i; the regcmd buffer
is regs.SELF.
"""
from __future__ import annotations
import functools, math, pickle
from dataclasses import dataclass
from typing import Callable
import numpy as np
from tinygrad_rocket.regs import TaskList

SCRATCH = 1000  # slot number of scratch buffer 0

@dataclass(frozen=True)
class Var:
  """A value derived from the grid coordinates: ((const + sum(coord[d] * coeffs[d])) // div) % mod (mod 0: no
  modulo). Mixed-radix digits like this recover a kernel's loop indices from a linear position in an NPU tile."""
  coeffs: tuple[int, ...]
  const: int = 0
  div: int = 1
  mod: int = 0

@dataclass(frozen=True)
class Lin:
  """const + sum(v[j] * coeffs[j]) over the values v = (grid coordinates..., vars...)."""
  coeffs: tuple[int, ...]
  const: int = 0

@dataclass(frozen=True)
class Bound:
  """lo <= expr < hi (None: that side is unbounded)."""
  expr: Lin
  lo: int|None
  hi: int|None

# A small expression over per-point values, evaluated in float64 when packing: how an epilogue that is affine in the
# accumulator (s*acc + t: bias, scale, BatchNorm in eval form) is folded into the packed operands.
#   ("acc",) | ("const", v) | ("load", slot, numpy dtype, Lin index) | (op name, result dtype, *operands)
# At the top of Copy.value: ("slope", e) = e(acc=1) - e(acc=0) multiplies the copied values (without a source: is the
# value written); ("intercept", e) = e(acc=0) is the value written (the source is not read).
PExpr = tuple
PEXPR_OPS = {"ADD", "MUL", "NEG", "SUB", "RECIPROCAL", "SQRT", "EXP2", "LOG2", "MAX", "CAST", "FDIV"}
# also evaluated, for the values an output select writes (rules/common.py select_fills): a leaky ReLU or clip there;
# a comparison is 1.0 or 0.0, WHERE takes its first branch where the condition is not 0
PEXPR_SELECT_OPS = PEXPR_OPS | {"WHERE", "CMPLT", "CMPNE"}
# and for the points a mask of stored bools selects (Copy.where): 1.0 or 0.0 of operands read as bools (not 0)
MASK_TAGS = {"AND": np.logical_and, "OR": np.logical_or, "XOR": np.logical_xor}

def eval_pexpr(e:PExpr, load, acc:float) -> np.ndarray|float:
  """Evaluates e with the accumulator = acc; load(slot, dtype, Lin) returns the operand's values per point."""
  tag = e[0]
  if tag == "acc": return acc
  if tag == "const": return e[1]
  if tag == "load": return load(e[1], e[2], e[3])
  x = [eval_pexpr(a, load, acc) for a in e[2:]]
  with np.errstate(all="ignore"):
    if tag == "ADD": return x[0] + x[1]
    if tag == "SUB": return x[0] - x[1]
    if tag == "MUL": return x[0] * x[1]
    if tag == "FDIV": return x[0] / x[1]
    if tag == "NEG": return -x[0]
    if tag == "RECIPROCAL": return 1.0 / np.asarray(x[0], np.float64)
    if tag == "SQRT": return np.sqrt(x[0])
    if tag == "EXP2": return np.exp2(x[0])
    if tag == "LOG2": return np.log2(x[0])
    if tag == "MAX": return np.maximum(x[0], x[1])
    if tag == "CMPLT": return np.less(x[0], x[1]).astype(np.float64)
    if tag == "CMPNE": return np.not_equal(x[0], x[1]).astype(np.float64)
    if tag == "WHERE": return np.where(np.asarray(x[0]) != 0, x[1], x[2])
    if tag in MASK_TAGS: return MASK_TAGS[tag](np.asarray(x[0]) != 0, np.asarray(x[1]) != 0).astype(np.float64)
    if tag == "CAST": return np.asarray(x[0]).astype(e[1]).astype(np.float64) if e[1] in ("float32", "float16") else x[0]
  raise ValueError(f"unsupported epilogue op {tag}")

@dataclass(frozen=True)
class Copy:
  """For every coordinate of `grid`: dst[dst_index] = src[src_index] if every bound holds, else `fill` (None: leave
  dst alone there), converted to dst_dtype. Packs an operand into an NPU layout (rounding float32 to the NPU's fp16
  operands; padding gets `fill`) and unpacks results (padding rows and kernels are skipped)."""
  src: int|None           # None: every point gets `fill` (a constant column, e.g. the ones a bias multiplies)
  src_dtype: str          # numpy dtype name of the source elements
  dst: int
  dst_dtype: str
  grid: tuple[int, ...]
  vars: tuple[Var, ...]
  src_index: Lin
  dst_index: Lin
  bounds: tuple[Bound, ...] = ()
  fill: float|None = 0.0
  value: PExpr|None = None         # ("slope", e) / ("intercept", e): see PExpr
  params: tuple[int, ...] = ()     # kernel buffer slots `value` reads
  exact_inf: float|None = None     # packing: the one infinity (after `value`'s slope) this operand may hold, from an
                                   # infinite source value: the NPU consumes it exactly (rules/pool.py MAX_IDENTITY)
  neg_inf: PExpr|None = None       # packing: the finite value packed where the source holds -inf (the kernel's result
                                   # is the same for both: rules/elementwise.py NEG_INF_ARG)
  distinct: float|None = None      # packing: no source value other than this one may round onto it (the constant a
                                   # float32 operand is compared with: rules/elementwise.py COMPARE_F32)
  element: Lin|None = None         # unpacking: each point's element in the program's numbering (NpuProgram.elements),
                                   # so a call can unpack each element from the job of a window that holds it
  where: PExpr|None = None         # an output select's fill: written only at the points where this is not 0 (a stored
                                   # bool mask's load, or its NOT), evaluated at each call (device.py NpuRunner._fill)

  def indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray|None, "Callable[[Lin], np.ndarray]"]:
    """(src element indices, dst element indices, validity mask or None, Lin -> per-point values), flat over the
    grid; with fill None, only the valid points (and no mask)."""
    coords = np.indices(self.grid, dtype=np.int64).reshape(len(self.grid), -1)
    vals = list(coords)
    for v in self.vars:
      x = v.const + sum((c * k for c, k in zip(coords, v.coeffs) if k), np.zeros(coords.shape[1], np.int64))
      x = x // v.div
      vals.append(x % v.mod if v.mod else x)
    def lin(e:Lin) -> np.ndarray: return e.const + sum((vals[j] * k for j, k in enumerate(e.coeffs) if k), np.zeros(coords.shape[1], np.int64))
    valid = None
    for b in self.bounds:
      x = lin(b.expr)
      ok = np.ones(x.shape, dtype=bool)
      if b.lo is not None: ok &= x >= b.lo
      if b.hi is not None: ok &= x < b.hi
      valid = ok if valid is None else valid & ok
    src, dst = lin(self.src_index), lin(self.dst_index)
    if valid is None: return src, dst, None, lin
    if self.fill is None: return src[valid], dst[valid], None, lambda e: lin(e)[valid]
    return np.where(valid, src, 0), dst, valid, lambda e: np.where(valid, lin(e), 0)

@dataclass(frozen=True)
class Guard:
  """A precondition checked before the job (after it with `after`, on values the NPU computed): lo <= const + sum(coeff * x) <= hi for every valid element, x the fp16 cubes
  packed at the terms' byte offsets into scratch `slot`, each `rows` x 16 elements as two 8-lane surfaces (element
  16*row + 8*surface + lane, valid while < count and 8*surface + lane < lanes). A lookup table's measured error holds only on its domain: a call
  whose argument leaves it runs the kernel's C code. The sum is narrowed to fp16 as the NPU narrows the table's input;
  the bounds are pulled in by GUARD_MARGIN of their magnitude so the NPU's fp32 rounding cannot step over them.
  With `ew` (op, byte offset of an fp16 operand cube in the slot) the checked value is a bound on |op(sum, operand)|
  instead: |sum| * |operand| (mul), |sum| + |operand| (add, sub), max(|sum|, |operand|) (max, min): a stage result that
  is narrowed to fp16 (rules/elementwise.py) stays finite there, whatever ReLU the stage applies before the op."""
  slot: int
  rows: int
  count: int
  terms: tuple[tuple[int, float], ...]   # (byte offset in slot, fp16 coefficient)
  const: float
  lo: float
  hi: float
  what: str
  ew: tuple[str, int]|None = None
  after: bool = False   # checked after the job, on values the NPU computed (before any result is unpacked)
  lanes: int = 16       # of each row's 16 elements, the first `lanes` are checked (a tile's real kernels)
  first: int|None = None   # element e (16*row + 8*surface + lane) of the cube is the program's element first + e
                           # (NpuProgram.elements); None: the checked values are not the program's elements (an operand
                           # several of them read), so the check holds for all of them or for none

  @functools.cached_property
  def positions(self) -> tuple[np.ndarray, np.ndarray]:
    """(the cube positions holding elements, the element at each): computed once per program, not per call."""
    pos = np.arange(self.rows * 16)
    surface, row, lane = pos // (self.rows * 8), (pos % (self.rows * 8)) // 8, pos % 8
    element = 16 * row + 8 * surface + lane
    valid = (element < self.count) & (8 * surface + lane < self.lanes)
    return np.flatnonzero(valid), element[valid]

  def failing(self, mem:np.ndarray) -> np.ndarray:
    """The elements (16*row + 8*surface + lane) whose checked value lies outside [lo, hi]. mem: the slot's bytes (uint8)."""
    n = self.rows * 16
    v = np.full(n, self.const, np.float64)
    for off, coeff in self.terms: v += coeff * np.frombuffer(mem, np.float16, n, off).astype(np.float64)
    if self.ew is not None:
      op, off = self.ew
      o = np.abs(np.frombuffer(mem, np.float16, n, off).astype(np.float64))
      v = np.abs(v) * o if op == "mul" else np.abs(v) + o if op in ("add", "sub") else np.maximum(np.abs(v), o)
    pos, element = self.positions
    with np.errstate(over="ignore"): v = v[pos].astype(np.float16).astype(np.float64)
    lo = self.lo + GUARD_MARGIN * abs(self.lo) if math.isfinite(self.lo) else -math.inf
    hi = self.hi - GUARD_MARGIN * abs(self.hi) if math.isfinite(self.hi) else math.inf
    return element[~((v >= lo) & (v <= hi))]   # (NaN fails too)

  def mask(self, mem:np.ndarray, n:int) -> np.ndarray:
    """Per element of a program with n of them (n = 1: the call as a whole) whether the check holds there (failing)."""
    bad = self.failing(mem)
    if self.first is None: return np.full(n, not len(bad))
    ok = np.ones(n, bool)
    ok[self.first + bad] = False
    return ok

GUARD_MARGIN = 2.0 ** -9

@dataclass(frozen=True)
class NpuProgram:
  name: str
  summary: str                       # what the NPU computes, for ROCKET_DEBUG and reports
  scratch: tuple[int, ...]           # byte sizes of the program's own BOs (slots SCRATCH + i)
  tasks: TaskList
  pack: tuple[Copy, ...]             # kernel buffers -> scratch, before the job
  unpack: tuple[Copy, ...]           # scratch -> kernel buffers, after it
  macs: int = 0                      # useful multiply-accumulates (for estimates)
  guards: tuple[Guard, ...] = ()     # checked after packing, before the job, or after it (Guard.after); a call that
                                     # fails one runs the C code
  split: int = 0                     # > 0: tasks [0, split) are one job and the rest a second one, submitted once the
                                     # after-job guards hold on the first job's values (0: one job, guards after it)
  globals: tuple[int, ...] = ()      # the kernel's PARAM slots in the order tinygrad passes their buffers (its program's
                                     # globals: buffers its own simplification dropped are not passed); () = 0, 1, ...
  training_reason: str|None = None   # set: while tinygrad trains (TRAINING), calls run the kernel's C code for this reason
  alternatives: tuple[NpuProgram, ...] = ()   # the same kernel for other windows of its tables' arguments (rules/tables.py
                                     # range_window), tried in order by a call that fails one of this program's guards
  fills: tuple[Copy, ...] = ()       # an output select's other value (rules/common.py select_fills): computed from the
                                     # kernel buffers when the job is submitted, written after the unpack of its results
  elements: int = 0                  # > 0: the program's results are its elements 0..elements-1, each unpacked from one
                                     # place (Copy.element; numbers no unpack uses are padding) and checked only by guards
                                     # of its own (Guard.first) or of all (first None): a call whose elements lie in
                                     # different windows of its tables takes each from the first window whose guards hold
                                     # on it (device.py NpuRunner)

  def kernel_slots(self) -> set[int]:
    """The kernel buffers (PARAM slots) the program or an alternative reads or writes."""
    return ({c.src for c in self.pack if c.src is not None and c.src < SCRATCH} | {p for c in self.pack + self.unpack + self.fills for p in c.params} |
            {c.dst for c in self.unpack + self.fills if c.dst < SCRATCH}).union(*(a.kernel_slots() for a in self.alternatives))

  def to_bytes(self) -> bytes: return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)
  @staticmethod
  def from_bytes(b:bytes) -> NpuProgram:
    prg = pickle.loads(b)
    if not isinstance(prg, NpuProgram): raise TypeError(f"not an NpuProgram: {type(prg).__name__}")
    return prg

  def written_scratch(self) -> tuple[int, ...]:
    """Scratch slots the NPU writes: those the unpack reads, and those nobody packs (the job's own intermediates, e.g. a
    computed operand's tiles)."""
    packed = {c.dst for c in self.pack}
    return tuple(sorted({c.src for c in self.unpack if c.src >= SCRATCH} |
                        {SCRATCH + i for i in range(len(self.scratch)) if SCRATCH + i not in packed}))
