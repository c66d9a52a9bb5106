"""A register stream with symbolic buffer addresses, as the fidelity builders produce it.

A builder returns a `Stream`: the buffers the original driver allocates (by slot name: input, weights,
bias, output, regcmd, ...), their initial contents, and for every task the list of register entries in
the original driver's emission order. Register values that are buffer addresses are `Addr(slot, offset)`
until a test places the buffers: `stream.tasks(iovas)` resolves them and returns the 64-bit entries
(`target<<48 | value<<16 | offset`, packed by the one raw primitive `tinygrad_rocket.regs.entry.pack_entry`).

Nothing here knows register names or fields beyond what each builder writes next to each entry.
"""
from __future__ import annotations
from dataclasses import dataclass, field
from typing import Callable, Union
import numpy as np

from tinygrad_rocket.regs.entry import pack_entry

U32 = 0xFFFF_FFFF

def fld(value:int, lo:int, hi:int) -> int:
  """One register field the way Mesa's generated headers build it: `((val) << SHIFT) & MASK` (values that do
  not fit are silently masked, exactly as in C; negative values are two's complement first)."""
  mask = ((1 << (hi - lo + 1)) - 1) << lo
  return ((value & U32) << lo) & mask

def align(x:int, a:int) -> int: return (x + a - 1) // a * a
def ceil_div(a:int, b:int) -> int: return -(-a // b)

@dataclass(frozen=True)
class Addr:
  """A register value that is the IOVA of buffer `slot` plus `offset` bytes (32-bit, as every driver writes it)."""
  slot: str
  offset: int = 0

@dataclass(frozen=True)
class Reg:
  """One regcmd entry. `raw` is set for entries that are not register writes (all-zero padding, the 0x0041
  marker): the whole 64-bit word is given. `src` names where the value comes from."""
  target: int
  offset: int
  value: Union[int, Addr]
  name: str
  src: str = ""
  raw: int|None = None

  def resolve(self, iovas:dict[str, int]) -> int:
    if self.raw is not None: return self.raw
    v = self.value
    if isinstance(v, Addr):
      if v.slot not in iovas: raise KeyError(f"no IOVA given for buffer slot {v.slot!r} (register {self.name})")
      v = (iovas[v.slot] + v.offset) & U32
    return pack_entry(self.target, v & U32, self.offset)

def raw_entry(word:int, name:str, src:str="") -> Reg: return Reg(word >> 48, word & 0xFFFF, (word >> 16) & U32, name, src, raw=word)

@dataclass
class Buffer:
  """A buffer the original driver allocates. `size` is what that driver asks CREATE_BO for; `alloc_size`
  (>= size) additionally covers every byte the programmed DMA may touch (the drivers rely on page rounding or
  allocate slack for that, see each builder), so an emulator that bounds-checks DMA against a BO of
  `alloc_size` bytes faults only when the hardware would. `data` is the initial content (zero-extended)."""
  slot: str
  size: int
  data: bytes|None = None
  alloc_size: int = 0
  def __post_init__(self):
    self.alloc_size = max(self.alloc_size, self.size)
    if self.data is not None and len(self.data) > self.size: raise ValueError(f"{self.slot}: {len(self.data)} bytes > size {self.size}")

REGCMD_SLOT_ALIGN = 64  # Mesa compile_operation / rocket_hw.md §3.4: each task's list starts 64-byte aligned

@dataclass
class Stream:
  name: str
  source: str                         # which driver / files this reproduces
  buffers: dict[str, Buffer]          # slot -> Buffer, 'regcmd' included (its data comes from regcmd_bytes)
  task_regs: list[list[Reg]]          # per task, in emission order, tail included
  in_slots: tuple[str, ...]           # BO handles the original driver lists as job inputs
  out_slots: tuple[str, ...]          # ... and as job outputs
  output_slot: str
  decode: Callable[[bytes], np.ndarray]   # output buffer bytes -> result in the problem's own layout
  jobs: list[list[int]] = field(default_factory=list)  # task indices per job (default: one job with every task)
  meta: dict = field(default_factory=dict)

  def __post_init__(self):
    if not self.jobs: self.jobs = [list(range(len(self.task_regs)))]

  # ---- regcmd placement ----
  def task_offsets(self) -> list[int]:
    """Byte offset of every task's list inside the regcmd buffer (64-byte aligned slots, Mesa compile_operation)."""
    offs, o = [], 0
    for regs in self.task_regs:
      offs.append(o)
      o += align(8 * len(regs), REGCMD_SLOT_ALIGN)
    return offs
  @staticmethod
  def regcmd_size_for(counts:list[int]) -> int: return sum(align(8 * n, REGCMD_SLOT_ALIGN) for n in counts)

  def tasks(self, iovas:dict[str, int]) -> list[list[int]]:
    """Every task's 64-bit entries with buffer addresses filled in (`iovas`: slot -> IOVA; 'regcmd' is needed
    only by streams whose tail links to the next task)."""
    return [[r.resolve(iovas) for r in regs] for regs in self.task_regs]

  def regcmd_bytes(self, iovas:dict[str, int]) -> bytes:
    out = bytearray(self.buffers["regcmd"].size)
    for off, words in zip(self.task_offsets(), self.tasks(iovas)):
      out[off:off + 8 * len(words)] = np.array(words, dtype="<u8").tobytes()
    return bytes(out)

  def job_tasks(self, iovas:dict[str, int]) -> list[list[tuple[int, int]]]:
    """Per job, the (regcmd IOVA, regcmd_count) pairs of drm_rocket_task."""
    offs = self.task_offsets()
    return [[(iovas["regcmd"] + offs[i], len(self.task_regs[i])) for i in job] for job in self.jobs]

  def listing(self, iovas:dict[str, int]|None=None, task:int=0) -> str:
    """One line per entry: index, 64-bit word, name, source (addresses resolved with `iovas`, default all 0)."""
    iovas = iovas if iovas is not None else {slot: 0 for slot in self.buffers} | {"addend": 0, "nowhere": 0}
    return "\n".join(f"{i:3d} {w:016x} {r.name:28s} {r.src}" for i, (r, w) in
                     enumerate(zip(self.task_regs[task], self.tasks(iovas)[task])))

  def find(self, task:int, name:str) -> Reg:
    """The last entry named `name` in a task (registers Mesa writes twice keep their final value)."""
    hits = [r for r in self.task_regs[task] if r.name == name]
    if not hits: raise KeyError(f"task {task} has no entry {name}")
    return hits[-1]

  def replace(self, name:str, value:Union[int, Addr], task:int|None=None) -> "Stream":
    """A copy with every entry `name` (in one task or all) rewritten to `value`: used to build trap streams."""
    new_tasks = []
    for i, regs in enumerate(self.task_regs):
      if task is None or i == task:
        regs = [Reg(r.target, r.offset, value, r.name, r.src + " [rewritten]") if r.name == name and r.raw is None else r for r in regs]
      new_tasks.append(list(regs))
    return Stream(self.name + f"+{name}", self.source, dict(self.buffers), new_tasks, self.in_slots, self.out_slots,
                  self.output_slot, self.decode, [list(j) for j in self.jobs], dict(self.meta))
