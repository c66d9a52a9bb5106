"""One 64-bit register-command ("regcmd") entry: `target<<48 | value<<16 | offset`.

Source: ../shared/reference/rocket_hw.md §3.1 (TRM `pc_register_amounts`, Mesa `emit_raw`).
This is the only place that knows the bit layout; everything else packs and unpacks through it.
"""
from __future__ import annotations
from typing import NamedTuple

TARGET_SHIFT, VALUE_SHIFT = 48, 16
ENTRY_BYTES = 8  # one little-endian u64 per entry
TARGET_MASK, VALUE_MASK, OFFSET_MASK = 0xFFFF, 0xFFFF_FFFF, 0xFFFF

# Register-write targets: block bit (56+k) moved to bits 63:48, ORed with 0x1 as Mesa always does
# (the meaning of bit 48 is undocumented; rocket_hw.md §3.1 marks it uncertain).
TARGET_PC, TARGET_CNA, TARGET_CORE, TARGET_DPU = 0x0101, 0x0201, 0x0801, 0x1001
TARGET_DPU_RDMA, TARGET_PPU, TARGET_PPU_RDMA = 0x2001, 0x4001, 0x8001
# Control entries (TRM): the mandatory marker before op-enable, and op-enable itself.
TARGET_MARKER, TARGET_OP_ENABLE = 0x0041, 0x0081
OP_ENABLE_OFFSET = 0x0008  # op-enable entries address the blocks' OPERATION_ENABLE offset
MARKER_ENTRY = TARGET_MARKER << TARGET_SHIFT  # Mesa writes 0x0041000000000000

class Entry(NamedTuple):
  target: int
  value: int
  offset: int

def pack_entry(target:int, value:int, offset:int) -> int:
  if not 0 <= target <= TARGET_MASK: raise ValueError(f"regcmd target {target:#x} does not fit 16 bits")
  if not 0 <= value <= VALUE_MASK: raise ValueError(f"regcmd value {value:#x} does not fit 32 bits")
  if not 0 <= offset <= OFFSET_MASK: raise ValueError(f"regcmd offset {offset:#x} does not fit 16 bits")
  return (target << TARGET_SHIFT) | (value << VALUE_SHIFT) | offset

def unpack_entry(word:int) -> Entry:
  return Entry((word >> TARGET_SHIFT) & TARGET_MASK, (word >> VALUE_SHIFT) & VALUE_MASK, word & OFFSET_MASK)

def op_enable_entry(block_mask:int) -> int: return pack_entry(TARGET_OP_ENABLE, block_mask, OP_ENABLE_OFFSET)
