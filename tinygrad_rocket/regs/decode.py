"""Decoder: 64-bit regcmd entries -> (kind, block, register, value, fields); field access for register files.

Never raises on a well-formed 64-bit word: unknown targets, offsets and target/offset mismatches come back as
EntryKind.UNKNOWN with `problem` saying why (an emulator decides what the hardware would do with them).
"""
from __future__ import annotations
import enum
from dataclasses import dataclass, field as dc_field
from types import MappingProxyType
from typing import Mapping
from tinygrad_rocket.regs.blocks import OP_ENABLE_KNOWN, enabled_blocks
from tinygrad_rocket.regs.database import BLOCK_BY_TARGET, block_at, find_register, register_at
from tinygrad_rocket.regs.entry import OP_ENABLE_OFFSET, TARGET_MARKER, TARGET_OP_ENABLE, unpack_entry
from tinygrad_rocket.regs.fields import Register

class EntryKind(enum.Enum):
  WRITE = "write"          # register write into a block
  MARKER = "marker"        # 0x0041..., required by the TRM before op-enable
  OP_ENABLE = "op_enable"  # 0x0081..., starts the blocks in its mask
  NOP = "nop"              # all-zero entry (padding, Mesa's single-task tail slot)
  UNKNOWN = "unknown"

@dataclass(frozen=True)
class DecodedEntry:
  word: int
  kind: EntryKind
  target: int
  value: int
  offset: int
  block: str|None = None
  register: str|None = None
  fields: Mapping[str, int] = dc_field(default_factory=lambda: MappingProxyType({}))  # every field, zero or not
  extra_bits: int = 0       # set bits outside every named field (reserved bits; unknown op-enable bits)
  enabled: tuple[str, ...] = ()  # OP_ENABLE: blocks started
  problem: str = ""         # why UNKNOWN, or what is odd about an otherwise decoded entry

  @property
  def qualname(self) -> str|None: return f"{self.block}.{self.register}" if self.register else None

def decode_value(block:str, reg:str, regval:int) -> dict[str, int]:
  """Every field of a register value (signed fields negative where so, aligned fields as byte values)."""
  r = find_register(block, reg)
  return {f.name: f.decode(regval) for f in r.fields}

def get_field(block:str, reg:str, field:str, regval:int) -> int:
  """One field out of a 32-bit register value, e.g. get_field("DPU", "EW_CFG", "EW_ALU_ALGO", 0x904202C0) == 2."""
  return find_register(block, reg).field(field).decode(regval)

def read_field(regfile:Mapping[int, int], block:str, reg:str, field:str, default:int=0) -> int:
  """One field out of a register file keyed by absolute offset (unwritten registers read as `default`)."""
  r = find_register(block, reg)
  return r.field(field).decode(regfile.get(r.offset, default))

def _write(word:int, target:int, value:int, offset:int) -> DecodedEntry:
  blk = BLOCK_BY_TARGET.get(target)
  if blk is None: return DecodedEntry(word, EntryKind.UNKNOWN, target, value, offset, problem=f"unknown target {target:#06x}")
  r: Register|None = register_at(offset)
  if r is None or r.block != blk.name:
    owner = f"{r.qualname}" if r is not None else (f"{b.name} (no register there)" if (b := block_at(offset)) else "no block")
    return DecodedEntry(word, EntryKind.UNKNOWN, target, value, offset, block=blk.name,
                        problem=f"target {blk.name} but offset {offset:#06x} is {owner}")
  return DecodedEntry(word, EntryKind.WRITE, target, value, offset, r.block, r.name,
                      MappingProxyType({f.name: f.decode(value) for f in r.fields}), value & ~r.used_mask)

def decode_entry(word:int) -> DecodedEntry:
  target, value, offset = unpack_entry(word)
  if word == 0: return DecodedEntry(0, EntryKind.NOP, 0, 0, 0)
  if target == TARGET_MARKER: return DecodedEntry(word, EntryKind.MARKER, target, value, offset)
  if target == TARGET_OP_ENABLE:
    return DecodedEntry(word, EntryKind.OP_ENABLE, target, value, offset, extra_bits=value & ~OP_ENABLE_KNOWN,
                        enabled=enabled_blocks(value),
                        problem="" if offset == OP_ENABLE_OFFSET else f"op-enable at offset {offset:#06x}, not {OP_ENABLE_OFFSET:#06x}")
  return _write(word, target, value, offset)
