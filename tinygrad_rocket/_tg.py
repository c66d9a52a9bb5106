"""Every tinygrad internal this project touches, in one place.

tinygrad's backend interfaces are private and change roughly monthly (../shared/reference/tinygrad_api.md §7), so
the package pins tinygrad exactly (checked in __init__.py) and a tinygrad upgrade only has to touch this file.
"""
from __future__ import annotations
from tinygrad.device import Compiled, LRUAllocator, BufferSpec, TinyELF, Device, Buffer  # noqa: F401
from tinygrad.dtype import dtypes, DType, AddrSpace, Invalid  # noqa: F401
from tinygrad.helpers import to_mv, mv_address, Target, TRAINING  # noqa: F401
from tinygrad.renderer.cstyle import ClangRenderer  # noqa: F401
from tinygrad.runtime.ops_cpu import CPUProgram  # noqa: F401
from tinygrad.runtime.support.elf import elf_loader  # noqa: F401
from tinygrad.runtime.autogen import libc  # noqa: F401
from tinygrad.uop.ops import Ops, UOp, KernelInfo, ProgramInfo, AxisType, graph_rewrite  # noqa: F401
from tinygrad.uop.symbolic import symbolic  # noqa: F401
from tinygrad.codegen import do_to_program
from tinygrad.engine import realize as _realize

def install_to_program_hook(applies, hook) -> None:
  """Route the compile of every kernel for which `applies(renderer)` holds through `hook(ast, renderer)`.

  `lower_and_compile` calls the name `to_program` looked up in tinygrad.engine.realize (also inside the spawned compile
  workers, which import the module defining our renderer when they unpickle it, and so install this hook too). That
  caller does the caching (to_program_cache), so the hook compiles uncached.
  """
  if getattr(_realize.to_program, "_rocket_hook", False): return
  orig = _realize.to_program
  def to_program(ast:UOp, renderer) -> UOp: return hook(ast, renderer) if applies(renderer) and ast.op is Ops.SINK else orig(ast, renderer)
  to_program._rocket_hook = True  # type: ignore[attr-defined]
  _realize.to_program = to_program

def program_with_binary(prg:UOp, binary:bytes) -> UOp:
  """The compiled PROGRAM `prg` (SINK, LINEAR, SOURCE, BINARY) with its BINARY replaced."""
  assert prg.op is Ops.PROGRAM and prg.src[3].op is Ops.BINARY, f"not a compiled PROGRAM: {prg.op}"
  return prg.replace(src=prg.src[:3] + (UOp(Ops.BINARY, arg=binary),))

def compile_to_c(ast:UOp, renderer) -> UOp:
  """tinygrad's own lowering of a kernel AST to a compiled C PROGRAM (no caching)."""
  return do_to_program(ast, renderer)

def kernel_name(ast:UOp) -> str: return ast.arg.name if isinstance(ast.arg, KernelInfo) else "kernel"
