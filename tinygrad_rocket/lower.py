"""Lowering: every ROCKET kernel is offered to the NPU rules first; what no rule takes runs as tinygrad's C code.

The kernel is analysed into a loop nest (analysis.py); each rule looks at it and answers with an NpuProgram, or
NotApplicable with the reason. The reasons end up in the fallback binary, so strict mode (ROCKET_FALLBACK=0) and
ROCKET_DEBUG can say why a kernel did not run on the NPU. An NPU binary carries the C code too: a call whose operands
the NPU cannot represent (fp16 overflow) takes it instead.
"""
from __future__ import annotations
import dataclasses, traceback
from dataclasses import dataclass
from typing import Callable, TYPE_CHECKING
from tinygrad_rocket._tg import UOp, Ops, compile_to_c, program_with_binary
from tinygrad_rocket.blob import fallback_blob, npu_blob
from tinygrad_rocket.config import debug_level
from tinygrad_rocket.analysis import analyze, NotAnalyzable, LoopNest
from tinygrad_rocket.rules.tables import range_window, NoWindow, RANGE_WINDOWS
if TYPE_CHECKING: from tinygrad_rocket.program import NpuProgram

@dataclass(frozen=True)
class NotApplicable:
  reason: str

# A rule returns the NPU program for a kernel, or NotApplicable. Rules are tried in order.
Rule = Callable[[LoopNest], "NpuProgram | NotApplicable"]
RULES: list[tuple[str, Rule]] = []
INTERNAL_ERROR_REASON = "internal error while lowering this kernel"

def describe_kernel(ast:UOp) -> str:
  """A short description of what a kernel computes, for the reasons given to the user."""
  reduces = [u for u in ast.toposort() if u.op is Ops.REDUCE]
  stores = sum(1 for u in ast.toposort() if u.op is Ops.STORE)
  kinds = sorted({u.arg[0].name for u in reduces})
  what = f"reduce ({'/'.join(kinds)})" if reduces else "elementwise"
  return f"{what} kernel with {stores} output{'s' if stores != 1 else ''}"

def lower_kernel(ast:UOp, precision:str="default") -> NpuProgram | NotApplicable:
  """`precision` (config.precision, carried by the renderer) travels on the loop nest to the rules. A program whose
  guarded tables have windows (rules/tables.py range_window: 1/x, 1/sqrt(x), sqrt, log) carries the kernel lowered for each
  further window as its alternatives, in window order."""
  try: nest = analyze(ast)
  except NotAnalyzable as e: return NotApplicable(f"{describe_kernel(ast)}: {e}")
  nest.precision = precision
  with range_window(0) as windowed: res = _lower_nest(nest, ast)
  if nest.select is not None: res = _with_select(res, nest)
  if isinstance(res, NotApplicable) or not windowed: return res
  alternatives = []
  for w in range(1, RANGE_WINDOWS):
    try:
      with range_window(w): alt = _lower_nest(nest, ast)
    except NoWindow: continue   # a table of the kernel has no such window
    if not isinstance(alt, NotApplicable): alternatives.append(_with_select(alt, nest) if nest.select is not None else alt)
  return dataclasses.replace(res, alternatives=tuple(alternatives))

def _with_select(res:NpuProgram|NotApplicable, nest:LoopNest) -> NpuProgram|NotApplicable:
  """A program for the computed part of an output select (analysis.Select) with the other value's fills."""
  from tinygrad_rocket.rules.common import select_fills
  if isinstance(res, NotApplicable): return NotApplicable(f"the kernel's computed part, where its output select writes it: {res.reason}")
  if isinstance(fills := select_fills(nest), str): return NotApplicable(fills)
  other = "constant" if not nest.select.loads else "computed from loads on the CPU"
  where = "elsewhere" if nest.select.mask is None else "where a stored bool mask says"
  return dataclasses.replace(res, fills=fills, summary=f"{res.summary} +output select ({other} {where}, {len(fills)} piece(s))")

def _lower_nest(nest:LoopNest, ast:UOp) -> NpuProgram | NotApplicable:
  """The first rule's program, or why none applies."""
  reasons = []
  for name, rule in RULES:
    if not isinstance(res:=rule(nest), NotApplicable): return res
    reasons.append(f"{name}: {res.reason}")
  return NotApplicable("; ".join(reasons) if reasons else f"no NPU lowering rule exists yet for this {describe_kernel(ast)}")

def to_program(ast:UOp, renderer) -> UOp:
  """The to_program hook for the ROCKET renderer: an NPU program if a rule takes the kernel, else tinygrad's C code."""
  prg = compile_to_c(ast, renderer)  # the PROGRAM's SINK/LINEAR carry the buffer slots and names tinygrad expects
  try: res = lower_kernel(ast, getattr(renderer, "precision", "default"))
  except Exception as e:   # a bug of ours must not stop the user's program: the kernel runs its C code, reported as such
    res = NotApplicable(f"{INTERNAL_ERROR_REASON} ({type(e).__name__}: {e}); please report it with ROCKET_DEBUG=1's output")
    if debug_level() >= 1: traceback.print_exc()
  elf = prg.src[3].arg
  if not isinstance(res, NotApplicable) and (gone := res.kernel_slots() - set(prg.arg.globals)):
    res = NotApplicable(f"tinygrad's code for this kernel no longer takes buffer(s) {sorted(gone)} the NPU program uses "
                        "(its simplification dropped them)")
  if isinstance(res, NotApplicable): return program_with_binary(prg, fallback_blob(res.reason, elf))
  # the kernel's name as tinygrad shows it (the AST's KernelInfo name is assigned during codegen); its buffers come in
  # the order of the program's globals
  named = lambda p: dataclasses.replace(p, name=prg.arg.function_name, globals=prg.arg.globals)
  return program_with_binary(prg, npu_blob(dataclasses.replace(named(res), alternatives=tuple(map(named, res.alternatives))).to_bytes(), elf))

from tinygrad_rocket.rules.contraction import lower_contraction  # noqa: E402  (rules import NotApplicable from here)
RULES.append(("contraction", lower_contraction))
from tinygrad_rocket.rules.conv import lower_conv; RULES.insert(0, ("conv", lower_conv))  # noqa: E402,E702  before contraction
from tinygrad_rocket.rules.conv_reduce import lower_conv_reduce; RULES.insert(1, ("conv+sum", lower_conv_reduce))  # noqa: E402,E702
from tinygrad_rocket.rules.conv_pair import lower_conv_pair; RULES.insert(2, ("conv+conv", lower_conv_pair))  # noqa: E402,E702
from tinygrad_rocket.rules.pool import lower_pool; RULES.append(("pool", lower_pool))  # noqa: E402,E702
from tinygrad_rocket.rules.elementwise import lower_elementwise; RULES.append(("elementwise", lower_elementwise))  # noqa: E402,E702
