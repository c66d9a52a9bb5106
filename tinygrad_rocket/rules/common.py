"""What every lowering rule shares: the float dtypes the NPU paths take, the task budget, and expression helpers."""
from __future__ import annotations
from tinygrad_rocket._tg import Ops, dtypes
from tinygrad_rocket.analysis import Load, Alu

FLOATS = {dtypes.float32: "float32", dtypes.float16: "float16"}   # tinygrad dtype -> numpy dtype name
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
