"""Task-list assembly: task bodies -> one regcmd buffer (64-byte slots, 4-entry PC tail), with relocations.

Layout (../shared/reference/rocket_hw.md §3.3, §3.4; Mesa rkt_ml.c compile_operation): task i's list is its body
followed by exactly 4 tail entries, and `regcmd_count` counts them. It starts at sum(align(8*n_j, 64)) for j < i;
the bytes between lists are zero.

  tail slot | last task (or the only one)             | non-last task of a chain
  n-4       | raw 0 if one task, else PC BASE_ADDRESS=0 | PC BASE_ADDRESS = IOVA of task i+1's list
  n-3       | PC REGISTER_AMOUNTS = 0                   | PC REGISTER_AMOUNTS = chain_amount(n_{i+1})
  n-2       | marker 0x0041000000000000                 | marker
  n-1       | op-enable(task mask)                      | op-enable(task mask)

Addresses are not known when a program is built: a body entry may be an AddressWrite ("this register holds the
IOVA of buffer slot k + offset"); assembly records it as a Relocation and `TaskList.bind` fills it in. The chain
links are relocations against the regcmd buffer itself (slot SELF).
"""
from __future__ import annotations
from dataclasses import dataclass
from typing import Mapping, Sequence, Union
import numpy as np
from tinygrad_rocket.regs.blocks import OP_ENABLE_KNOWN
from tinygrad_rocket.regs.database import find_register, get_block
from tinygrad_rocket.regs.decode import EntryKind, decode_entry
from tinygrad_rocket.regs.encode import write
from tinygrad_rocket.regs.entry import ENTRY_BYTES, MARKER_ENTRY, VALUE_SHIFT, op_enable_entry, pack_entry
from tinygrad_rocket.regs.fields import REG_MASK, Field, RegError, Register

SLOT_ALIGN = 64  # bytes; task lists start on 64-byte boundaries (Mesa ALIGN(size, 64))
TAIL_ENTRIES = 4
SELF = -1        # relocation slot meaning "the regcmd buffer itself" (PC chain links)
U64 = np.dtype("<u8")

def chain_amount(n_next:int) -> int:
  """PC REGISTER_AMOUNTS for a chain link to a list of `n_next` entries (tail included): Mesa's
  ALIGN((n_next - 4) / 2, 2). It equals the kernel's (n+1)/2 - 1 for Mesa's 130-entry lists but is smaller for
  other sizes (e.g. 20 -> 8, kernel 9; GN's HW-validated chains use the kernel formula). Mainline rocket runs one
  task per kick (TASK_NUMBER=1), so the link is most likely never followed; the choice lives only here."""
  return -(-((n_next - TAIL_ENTRIES) // 2) // 2) * 2

@dataclass(frozen=True)
class AddressWrite:
  """A body entry writing the IOVA of buffer slot `slot` plus `offset` bytes into register block.register."""
  block: str
  register: str
  slot: int
  offset: int = 0

def address_field(r:Register) -> Field:
  f = next((f for f in r.fields if f.address), None)
  if f is None: raise RegError(f"{r.qualname} holds no address (no field marked address)")
  return f

def address(block:str, reg:str, slot:int, offset:int=0) -> AddressWrite:
  """Checked AddressWrite: the register must hold an address; slot is a buffer index (or SELF)."""
  address_field(find_register(block, reg))
  if not isinstance(slot, int) or slot < SELF: raise RegError(f"{block}.{reg}: bad buffer slot {slot!r}")
  if not isinstance(offset, int) or not 0 <= offset <= REG_MASK: raise RegError(f"{block}.{reg}: bad byte offset {offset!r}")
  return AddressWrite(block, reg, slot, offset)

BodyEntry = Union[int, AddressWrite]

@dataclass(frozen=True)
class Task:
  """One hardware task: register writes (packed entries or AddressWrites, no tail) and the blocks it starts."""
  entries: Sequence[BodyEntry]
  enable: int  # op-enable mask (blocks.OpEnable / op_enable_mask)

@dataclass(frozen=True)
class Relocation:
  index: int      # u64 word index in the buffer
  slot: int       # buffer slot (SELF: the regcmd buffer)
  offset: int     # bytes added to the slot's IOVA
  block: str
  register: str
  field: str

@dataclass(frozen=True)
class TaskRef:
  offset: int        # byte offset of the task's list in the regcmd buffer (add the buffer's IOVA)
  regcmd_count: int  # entries, tail included (drm_rocket_task.regcmd_count)

class TaskList:
  """An assembled regcmd buffer. `words` holds every entry with relocated values 0 until `bind`."""
  def __init__(self, words:np.ndarray, tasks:tuple[TaskRef, ...], relocations:tuple[Relocation, ...]) -> None:
    self.words, self.tasks, self.relocations = words, tasks, relocations
    n = len(relocations)
    self._idx = np.fromiter((r.index for r in relocations), np.intp, n)
    self._off = np.fromiter((r.offset for r in relocations), np.int64, n)
    self._base = self.words[self._idx].copy()  # the entry with its value bits 0: target | offset
    regs = [find_register(r.block, r.register) for r in relocations]
    fields = [r.field(rl.field) for r, rl in zip(regs, relocations)]
    # an address field is either a whole register or an aligned [31:lsb] field: register value == the address
    self._align = np.fromiter(((1 << f.lsb) - 1 if f.aligned else 0 for f in fields), np.int64, n)
    self._max = np.fromiter(((((1 << f.width) - 1) << f.lsb) if f.aligned else (1 << f.width) - 1 for f in fields), np.int64, n)
    self.slots: tuple[int, ...] = tuple(sorted({r.slot for r in relocations}))
    self._pos = np.fromiter((self.slots.index(r.slot) for r in relocations), np.intp, n)

  @property
  def nbytes(self) -> int: return self.words.nbytes
  def tobytes(self) -> bytes: return self.words.tobytes()

  def task_addresses(self, regcmd_iova:int) -> list[tuple[int, int]]:
    """(regcmd IOVA, regcmd_count) per task: the drm_rocket_task array for SUBMIT."""
    return [(regcmd_iova + t.offset, t.regcmd_count) for t in self.tasks]

  def bind(self, slot_iovas:Mapping[int, int]|Sequence[int], regcmd_iova:int, out:np.ndarray|None=None) -> np.ndarray:
    """Resolves every relocation: slot k's IOVA (slot_iovas[k]) + offset; SELF uses `regcmd_iova`. Writes only the
    relocated words, into `out` (a uint64 view that already holds `words`, e.g. the mapped BO) or into `words`.
    Raises RegError (nothing written) if an address is missing, negative, beyond the field or misaligned."""
    dst = self.words if out is None else out
    if dst.dtype != U64 or dst.shape != self.words.shape: raise RegError(f"bind target must be {self.words.shape} uint64")
    if not len(self.relocations): return dst
    iovas = np.empty(len(self.slots), np.int64)
    for i, s in enumerate(self.slots):
      try: iova = regcmd_iova if s == SELF else slot_iovas[s]
      except (KeyError, IndexError): raise RegError(f"no IOVA given for buffer slot {s}") from None
      if not isinstance(iova, (int, np.integer)) or not 0 <= iova <= REG_MASK:
        raise RegError(f"IOVA {iova!r} of buffer slot {s} is not a 32-bit address")
      iovas[i] = iova
    addr = iovas[self._pos] + self._off
    bad = (addr > self._max) | ((addr & self._align) != 0)
    if bad.any():
      k = int(np.argmax(bad)); r = self.relocations[k]
      why = "does not fit the field" if addr[k] > self._max[k] else f"is not {int(self._align[k]) + 1}-byte aligned"
      raise RegError(f"relocation at word {r.index}: {r.block}.{r.register}.{r.field} = slot {r.slot} + {r.offset:#x} "
                     f"= {int(addr[k]):#x} {why}")
    dst[self._idx] = self._base | (addr.astype(U64) << np.uint64(VALUE_SHIFT))
    return dst

def _tail(n_tasks:int, i:int, enable:int, next_offset:int|None, next_count:int|None) -> list[BodyEntry]:
  if next_offset is None:  # last (or only) task: no chain
    first: BodyEntry = 0 if n_tasks == 1 else write("PC", "BASE_ADDRESS")
    amount = write("PC", "REGISTER_AMOUNTS")
  else:
    first = AddressWrite("PC", "BASE_ADDRESS", SELF, next_offset)
    amount = write("PC", "REGISTER_AMOUNTS", PC_DATA_AMOUNT=chain_amount(next_count))  # type: ignore[arg-type]
  return [first, amount, MARKER_ENTRY, op_enable_entry(enable)]

def _check_task(i:int, t:Task) -> None:
  if not isinstance(t.enable, int) or t.enable <= 0 or t.enable & ~OP_ENABLE_KNOWN:
    raise RegError(f"task {i}: op-enable mask {t.enable!r} must be a non-empty subset of {OP_ENABLE_KNOWN:#x}")
  for j, e in enumerate(t.entries):
    if isinstance(e, AddressWrite):
      address(e.block, e.register, e.slot, e.offset)
      continue
    if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < 1 << 64:
      raise RegError(f"task {i} entry {j}: {e!r} is not a 64-bit entry")
    if decode_entry(e).kind in (EntryKind.OP_ENABLE, EntryKind.MARKER):
      raise RegError(f"task {i} entry {j}: {e:#018x} is a control entry; the tail is added by assemble()")

def assemble(tasks:Sequence[Task]) -> TaskList:
  if not tasks: raise RegError("no tasks")
  for i, t in enumerate(tasks): _check_task(i, t)
  counts = [len(t.entries) + TAIL_ENTRIES for t in tasks]
  offsets, off = [], 0
  for n in counts:
    offsets.append(off)
    off += -(-n * ENTRY_BYTES // SLOT_ALIGN) * SLOT_ALIGN
  words = np.zeros(off // ENTRY_BYTES, U64)
  relocs: list[Relocation] = []
  for i, t in enumerate(tasks):
    last = i == len(tasks) - 1
    full = list(t.entries) + _tail(len(tasks), i, t.enable, None if last else offsets[i + 1], None if last else counts[i + 1])
    w0 = offsets[i] // ENTRY_BYTES
    for j, e in enumerate(full):
      if isinstance(e, AddressWrite):
        r = find_register(e.block, e.register)
        relocs.append(Relocation(w0 + j, e.slot, e.offset, r.block, r.name, address_field(r).name))
        e = pack_entry(get_block(r.block).target, 0, r.offset)
      words[w0 + j] = e
  return TaskList(words, tuple(TaskRef(o, n) for o, n in zip(offsets, counts)), tuple(relocs))
