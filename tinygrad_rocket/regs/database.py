"""The register map as one table, indexed by (block, name) and by offset, and checked for consistency at import."""
from __future__ import annotations
from types import MappingProxyType
from typing import Mapping
from tinygrad_rocket.regs.blocks import BLOCKS, BLOCK_WINDOW, Block
from tinygrad_rocket.regs.fields import RegError, Register
from tinygrad_rocket.regs import map_pc, map_cna, map_core, map_dpu, map_dpu_rdma, map_ppu, map_ppu_rdma

REGISTERS: tuple[Register, ...] = (map_pc.REGISTERS + map_cna.REGISTERS + map_core.REGISTERS + map_dpu.REGISTERS
                                   + map_dpu_rdma.REGISTERS + map_ppu.REGISTERS + map_ppu_rdma.REGISTERS)

BLOCK_BY_NAME: Mapping[str, Block] = MappingProxyType({b.name: b for b in BLOCKS})
BLOCK_BY_TARGET: Mapping[int, Block] = MappingProxyType({b.target: b for b in BLOCKS})

def _check(regs:tuple[Register, ...]) -> None:
  """The invariants every other module relies on (also asserted by tests/test_regs.py)."""
  seen: dict[int, Register] = {}
  for r in regs:
    b = BLOCK_BY_NAME.get(r.block)
    if b is None: raise RegError(f"{r.qualname}: unknown block")
    if not b.base <= r.offset < b.base + BLOCK_WINDOW or r.offset % 4:
      raise RegError(f"{r.qualname} @ {r.offset:#06x}: not a word offset inside {b.name}'s window")
    if (other := seen.get(r.offset)) is not None: raise RegError(f"{r.qualname} and {other.qualname} share {r.offset:#06x}")
    seen[r.offset] = r
    used = 0
    for f in r.fields:
      if used & f.mask: raise RegError(f"{r.qualname}.{f.name}{f.bits} overlaps another field")
      used |= f.mask
    if sum(f.address for f in r.fields) > 1: raise RegError(f"{r.qualname}: more than one address field")

_check(REGISTERS)

_BY_NAME: dict[tuple[str, str], Register] = {}
for _r in REGISTERS:
  _BY_NAME[(_r.block, _r.name)] = _r
  if _r.mesa_name is not None: _BY_NAME.setdefault((_r.block, _r.mesa_name), _r)  # registers.xml's spelling, too
_BY_OFFSET: dict[int, Register] = {r.offset: r for r in REGISTERS}

def get_block(name:str) -> Block:
  if (b := BLOCK_BY_NAME.get(name)) is None: raise RegError(f"unknown block {name!r}; blocks: {', '.join(BLOCK_BY_NAME)}")
  return b

def block_at(offset:int) -> Block|None:
  """The block whose window holds `offset` (None outside every modelled block)."""
  return next((b for b in BLOCKS if b.base <= offset < b.base + BLOCK_WINDOW), None)

def find_register(block:str, name:str) -> Register:
  """Register by block and name (ours, or registers.xml's where it differs, e.g. DPU_RDMA RDMA_ERDMA_CFG)."""
  if (r := _BY_NAME.get((block, name))) is None:
    get_block(block)
    raise RegError(f"{block} has no register {name!r}")
  return r

def register_at(offset:int) -> Register|None:
  """Register at an absolute offset, or None (offsets are unique across blocks)."""
  return _BY_OFFSET.get(offset)

def block_registers(block:str) -> tuple[Register, ...]:
  get_block(block)
  return tuple(r for r in REGISTERS if r.block == block)
