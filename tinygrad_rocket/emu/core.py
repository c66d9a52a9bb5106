"""The emulated NPU: 3 cores, each a persistent MMIO register file and a PC (program controller) that fetches
a regcmd list over DMA, applies its register writes and, on the op-enable entry, runs the enabled blocks.

Hardware facts used (../shared/reference/):
- rocket_hw.md §2.3: the PC starts when OPERATION_ENABLE is written 1 and fetches (PC_DATA_AMOUNT+1)*2
  64-bit entries (16-byte beats) from BASE_ADDRESS; the low 4 bits of BASE_ADDRESS are PC_SEL.
- rocket_hw.md §3.1-§3.3: entry layout, targets, the 0x0041 marker, the 0x0081 op-enable entry (last).
- rocket_fp16_ew_ppu.md §6.D: the register file is not reset between jobs or processes, only by the
  kernel's reset after a timeout.
- rocket_fp16_ew_ppu.md §4.2: the DPU LUT (2 tables x 513 16-bit entries) is written through the LUT_ACCESS_CFG /
  LUT_ACCESS_DATA port inside the regcmd stream; it is one storage per core that persists across tasks and jobs
  (`LutStorage`). Every write of a list is applied in order, so the 1026 DATA writes of an upload all land.
Block execution (CNA/CORE/DPU/PPU with numpy) is NOT here: it is the pluggable executor,
by default `tinygrad_rocket.emu.blocks.execute(core, block_mask, mem)`, imported lazily.
"""
from __future__ import annotations
import importlib, sys, threading
from dataclasses import dataclass
from typing import Callable, Sequence
import numpy as np
from tinygrad_rocket.regs.entry import (Entry, ENTRY_BYTES, unpack_entry, TARGET_PC, TARGET_CNA, TARGET_CORE, TARGET_DPU,
                                        TARGET_DPU_RDMA, TARGET_PPU, TARGET_PPU_RDMA, TARGET_MARKER, TARGET_OP_ENABLE)
from tinygrad_rocket.emu.memory import IovaSpace

NUM_CORES = 3                 # RK3588: three rknn cores (rocket_hw.md §2.1)
U32_MASK = 0xFFFF_FFFF

# PC registers (offsets in the core's MMIO space, rocket_hw.md §2.3)
PC_OPERATION_ENABLE, PC_BASE_ADDRESS, PC_REGISTER_AMOUNTS = 0x0008, 0x0010, 0x0014
PC_INTERRUPT_MASK, PC_INTERRUPT_CLEAR, PC_TASK_CON, PC_TASK_DMA_BASE_ADDR = 0x0020, 0x0024, 0x0030, 0x0034
CNA_S_POINTER, CORE_S_POINTER = 0x1004, 0x3004

PC_BEAT_BYTES = 16            # the PC fetches two entries per beat; BASE_ADDRESS[3:0] is PC_SEL, not address

# Register-write targets and the MMIO window each may address (rocket_hw.md §3.2, 4 KiB per block).
BLOCK_WINDOWS: dict[int, tuple[str, int, int]] = {
  TARGET_PC: ("PC", 0x0000, 0x1000), TARGET_CNA: ("CNA", 0x1000, 0x2000), TARGET_CORE: ("CORE", 0x3000, 0x4000),
  TARGET_DPU: ("DPU", 0x4000, 0x5000), TARGET_DPU_RDMA: ("DPU_RDMA", 0x5000, 0x6000),
  TARGET_PPU: ("PPU", 0x6000, 0x7000), TARGET_PPU_RDMA: ("PPU_RDMA", 0x7000, 0x8000),
}

# ⚠ The TRM says the 0x0041 entry "must be set" before op-enable, and Mesa always emits it, but one
# [HW] report (rocket_fp16_ew_ppu.md §6.A) ran a 17-entry list without it. The project's contract is
# the strict reading; this is the one switch to relax it.
REQUIRE_MARKER_BEFORE_OP_ENABLE = True

# ⚠ A failed task is modelled as a hang: the kernel times the job out and asserts the core's resets
# (rocket_hw.md §2.5), which we take to clear the register file. Whether an IOMMU fault ends in that
# timeout (rather than the job completing with garbage) is not documented; we assume it does.
RESET_REGISTERS_ON_HANG = True

# DPU LUT access port (rocket_fp16_ew_ppu.md §4.2; field layout in regs/map_dpu.py).
LUT_ACCESS_CFG, LUT_ACCESS_DATA = 0x4100, 0x4104
LUT_ENTRIES = 513             # per table on RK3588 (GN, AB [HW]; NVDLA has 65/257)
LUT_TABLES = ("LE", "LO")     # TABLE_ID 0 / 1

class LutStorage:
  """The LUT RAM of one core: two tables of 513 16-bit entries, written through the access port.

  An ACCESS_CFG write selects the table (TABLE_ID) and sets the address to its ADDR field (every source writes 0;
  NVDLA: the start address of the access); each ACCESS_DATA write stores DATA[15:0] at the address and increments it
  (GN, AB). Bits 31:16 of DATA are read-only per the TRM (AB writes 0xFFFF there for negative entries): ignored.
  `written` marks the entries whose content is known: none after power-on or a reset. Port uses no source documents
  make what they may have touched unknown again, so only a later full upload makes a LUT task acceptable: a DATA write
  in read mode (ACCESS_TYPE 0; GN's matmul list writes ACCESS_CFG 0 then DATA 0) forgets the addressed entry, a write
  past entry 512 forgets both tables."""
  def __init__(self) -> None:
    self.entries = np.zeros((2, LUT_ENTRIES), np.int64)
    self.written = np.zeros((2, LUT_ENTRIES), bool)
    self.table, self.addr, self.write_mode = 0, 0, False
    self.data_writes = 0                 # DATA writes since reset (tests check that uploads land in stream order)

  def reset(self) -> None: self.__init__()

  def write(self, offset:int, value:int) -> None:
    if offset == LUT_ACCESS_CFG:
      self.write_mode = bool(value >> 17 & 1)          # LUT_ACCESS_TYPE
      self.table, self.addr = value >> 16 & 1, value & 0x3FF   # LUT_TABLE_ID, LUT_ADDR
    elif offset == LUT_ACCESS_DATA:
      self.data_writes += 1
      if self.addr >= LUT_ENTRIES: self.written[:] = False
      elif not self.write_mode: self.written[self.table, self.addr] = False
      else:
        self.entries[self.table, self.addr] = value & 0xFFFF
        self.written[self.table, self.addr] = True
      self.addr += 1

class RegisterFile(dict):
  """The MMIO register file of a core (offset -> u32). It also carries the core's LUT RAM, which is written through two
  of its registers, so that whoever decodes the register file (descs.Fields) sees the tables too."""
  def __init__(self) -> None:
    super().__init__()
    self.lut = LutStorage()
    # Emulator speed: task descriptions decoded from this file's contents, keyed by the contents (blocks.py); the
    # registers are the decoder's only input (the LUT RAM is referenced, not copied, by a decoded LUT description)
    self.decoded: dict = {}

class HangError(Exception):
  """The task would hang the core (malformed list, no op-enable, ...): the real kernel times the job out after
  500 ms and resets the core; the emulator fails it at once."""

class BlockExecutionNotImplemented(NotImplementedError):
  def __init__(self, block_mask:int, detail:str=""):
    self.block_mask, self.detail = block_mask, detail
    super().__init__(f"block execution not implemented (mask {block_mask:#x})" + (f": {detail}" if detail else ""))

@dataclass
class Counters:
  jobs_completed: int = 0
  jobs_failed: int = 0
  tasks_completed: int = 0
  tasks_failed: int = 0

def decode_regcmd(words:Sequence[int]) -> list[Entry]:
  """Validate a fetched list the way the hardware would fail on it, return its entries (trailing no-ops dropped)."""
  entries = [unpack_entry(int(w)) for w in words]
  n = len(entries)
  # All-zero entries are no-ops: the padding entry of an odd count, or zero slots after op-enable, change nothing.
  while n and words[n-1] == 0: n -= 1
  if n == 0 or entries[n-1].target != TARGET_OP_ENABLE:
    raise HangError("regcmd list does not end in op-enable")
  for i in range(n):
    if words[i] == 0: continue
    e = entries[i]
    if (win := BLOCK_WINDOWS.get(e.target)) is not None:
      name, lo, hi = win
      if not lo <= e.offset < hi:
        raise HangError(f"entry {i} ({int(words[i]):#018x}): {name} register write to offset {e.offset:#06x}, "
                        f"outside the {name} block {lo:#06x}-{hi-1:#06x}")
    elif e.target == TARGET_OP_ENABLE:
      if REQUIRE_MARKER_BEFORE_OP_ENABLE and (i == 0 or entries[i-1].target != TARGET_MARKER):
        raise HangError(f"op-enable entry {i} is not directly preceded by the 0x0041 marker")
    elif e.target != TARGET_MARKER:
      raise HangError(f"entry {i} ({int(words[i]):#018x}): unknown target {e.target:#06x}")
  return entries[:n]

# Emulator speed, not semantics: a regcmd list (its bytes) validated and split into runs of register writes between its
# op-enable entries, kept for lists fetched again (every call of a program fetches the same lists). The bytes are the key,
# so the steps are exactly what decode_regcmd makes of them; a list that fails validation is not kept (it fails again).
REGCMD_CACHE_ENTRIES = 4096
_regcmd_cache: dict[bytes, tuple] = {}
_LUT_PORT = (LUT_ACCESS_CFG, LUT_ACCESS_DATA)

def _compiled_regcmd(raw:bytes) -> tuple:
  """Steps of a fetched list: (offsets, values, touches the LUT port) per run of writes, an int block mask per op-enable."""
  if (hit := _regcmd_cache.get(raw)) is not None: return hit
  steps: list = []
  offs: list[int] = []
  vals: list[int] = []
  for e in decode_regcmd(np.frombuffer(raw, dtype="<u8").tolist()):
    if e.target in BLOCK_WINDOWS: offs.append(e.offset); vals.append(e.value)
    elif e.target == TARGET_OP_ENABLE:
      if offs: steps.append((tuple(offs), tuple(vals), any(o in _LUT_PORT for o in offs)))
      offs, vals = [], []
      steps.append(e.value)
    # the marker and zero entries have no effect of their own
  if offs: steps.append((tuple(offs), tuple(vals), any(o in _LUT_PORT for o in offs)))
  if len(_regcmd_cache) >= REGCMD_CACHE_ENTRIES: _regcmd_cache.pop(next(iter(_regcmd_cache)))   # oldest first
  _regcmd_cache[raw] = out = tuple(steps)
  return out

Executor = Callable[["Core", int, IovaSpace], None]

def default_executor(core:Core, block_mask:int, mem:IovaSpace) -> None:
  """Run the enabled blocks with tinygrad_rocket/emu/blocks.py (written separately): `execute(core, block_mask, mem)`."""
  blocks = sys.modules.get("tinygrad_rocket.emu.blocks")   # (imported once; import_module per task costs ~40 us)
  if blocks is None:
    try: blocks = importlib.import_module("tinygrad_rocket.emu.blocks")
    except ModuleNotFoundError as e:
      if e.name != "tinygrad_rocket.emu.blocks": raise
      raise BlockExecutionNotImplemented(block_mask) from None
  execute = getattr(blocks, "execute", None)
  if execute is None: raise BlockExecutionNotImplemented(block_mask, "tinygrad_rocket.emu.blocks has no execute()")
  execute(core, block_mask, mem)

class Core:
  def __init__(self, index:int):
    self.index = index
    self.regs = RegisterFile()           # MMIO offset -> u32 (+ the LUT RAM); persists across jobs and files
    self.lock = threading.Lock()         # one job at a time per core (drm_sched credit_limit 1, §2.2)
    self.executor: Executor = default_executor  # runs the enabled blocks on op-enable; tests plug fakes here
    self.mem: IovaSpace|None = None      # the address space attached while a job runs (the fd's IOMMU domain)
    self.counters = Counters()
    self.cbuf: dict = {}                 # CBUF contents that outlive a task (weights for WEIGHT_REUSE), blocks.py
    self.job_stats = None                # cost.JobStats of the running job, set by the kernel driver (kernel.py)
    self.fetch_bytes = 0                 # bytes of the regcmd list the PC fetched for the running task

  @property
  def lut(self) -> LutStorage: return self.regs.lut   # the DPU LUT RAM: persists across tasks and jobs like the registers
  def attach(self, mem:IovaSpace) -> None: self.mem = mem
  def detach(self) -> None: self.mem = None
  def reset(self) -> None:
    """Soft reset after a timeout: every register back to its reset value, CBUF contents lost."""
    self.regs.clear()
    self.cbuf.clear()
    self.lut.reset()                     # ⚠ LUT RAM after the kernel's reset: undocumented, taken as unknown

  def mmio_read(self, offset:int) -> int: return self.regs.get(offset, 0)
  def mmio_write(self, offset:int, value:int) -> None:
    """A CPU (kernel) register write. Writing 1 to PC OPERATION_ENABLE runs the PC to completion right here."""
    self._write_reg(offset, value & U32_MASK)
    if offset == PC_OPERATION_ENABLE and value & 1: self._run_pc()

  def _write_reg(self, offset:int, value:int) -> None:
    self.regs[offset] = value
    if offset in (LUT_ACCESS_CFG, LUT_ACCESS_DATA): self.lut.write(offset, value)   # the port has side effects

  def _run_pc(self) -> None:
    if self.mem is None: raise HangError("PC started with no IOMMU domain attached")
    base = self.regs.get(PC_BASE_ADDRESS, 0)
    if base % PC_BEAT_BYTES:
      # ⚠ low bits select slave mode (PC_SEL) / are undefined: the PC fetches nothing and no interrupt comes
      raise HangError(f"regcmd IOVA {base:#x} is not {PC_BEAT_BYTES}-byte aligned (BASE_ADDRESS[3:0] is PC_SEL)")
    count = (self.regs.get(PC_REGISTER_AMOUNTS, 0) + 1) * (PC_BEAT_BYTES // ENTRY_BYTES)
    raw = self.mem.read(base, count * ENTRY_BYTES, unit="PC")
    self.fetch_bytes = count * ENTRY_BYTES   # for the task's DMA counters (blocks.py): the tail may rewrite REGISTER_AMOUNTS
    # The whole list is validated before any of it takes effect, so a malformed list changes nothing. Entries then
    # apply in order; an op-enable before the last one (each needs its marker) runs the blocks to completion first.
    for step in _compiled_regcmd(raw):
      if isinstance(step, int): self._execute(step)
      elif step[2]:                            # a run touching the LUT port: every write in order, with its side effect
        for off, val in zip(step[0], step[1]): self._write_reg(off, val)
      else: self.regs.update(zip(step[0], step[1]))   # in order: a register written twice keeps its last value

  def _execute(self, block_mask:int) -> None:
    assert self.mem is not None
    try: self.executor(self, block_mask, self.mem)
    except BlockExecutionNotImplemented: raise
    except NotImplementedError as e: raise BlockExecutionNotImplemented(block_mask, str(e)) from e

class Npu:
  """The device: its cores and the round-robin choice of a core for each newly opened file."""
  def __init__(self, num_cores:int=NUM_CORES):
    self.cores = [Core(i) for i in range(num_cores)]
    self._next, self._lock = 0, threading.Lock()

  def pick_core(self) -> Core:
    # Simplification: drm_sched load-balances an fd's entity across all cores while it has no queued jobs
    # (rocket_hw.md §2.2); we pin each file to one core, chosen round-robin at open.
    with self._lock:
      core = self.cores[self._next]
      self._next = (self._next + 1) % len(self.cores)
      return core

  def set_executor(self, executor:Executor|None) -> list[Executor]:
    """Plug one executor into every core (None: the default); returns the previous ones (for restore_executors)."""
    old = [c.executor for c in self.cores]
    for c in self.cores: c.executor = executor or default_executor
    return old

  def restore_executors(self, old:Sequence[Executor]) -> None:
    for c, ex in zip(self.cores, old): c.executor = ex

NPU = Npu()  # module-level: like the hardware, shared by every open file in the process
