"""Register and field descriptions: the vocabulary of the register map (no register data here).

A Field is a bit range `[lsb, lsb+width)` of a 32-bit register. Three kinds of value exist:
- plain: an unsigned integer stored in the field as is;
- signed: two's complement within the field (negative values allowed, decoded back as negative);
- aligned: the field is given the byte value itself (an address or a byte stride/count) whose low
  `lsb` bits must be 0. These are the `[31:4]` fields of registers.xml (DST_SURF_STRIDE, SURF_ADD,
  PC_SOURCE_ADDR, ...): the register value equals the byte count/address
  (../shared/reference/rocket_fp16_ew_ppu.md, header notes; rocket_hw.md §3.4).
"""
from __future__ import annotations
from dataclasses import dataclass, field as dc_field
from types import MappingProxyType
from typing import Mapping

REG_BITS = 32
REG_MASK = (1 << REG_BITS) - 1

class RegError(ValueError):
  """Any misuse of the register map: unknown block/register/field, a value that does not fit."""

def to_signed(value:int, width:int) -> int:
  """Reads `value` (width bits) as two's complement."""
  return value - (1 << width) if value & (1 << (width - 1)) else value

@dataclass(frozen=True)
class Field:
  name: str
  lsb: int
  width: int = 1
  signed: bool = False
  aligned: bool = False  # value is given in bytes: the low `lsb` bits must be 0, stored as value >> lsb
  address: bool = False  # holds an IOVA: the target of relocations (tasklist.py)
  hex: bool = False      # display hint for listings (bit patterns: fp16/fp32 operands, masks)
  values: Mapping[int, str]|None = None  # names of encoded values, for listings and docs
  doc: str = ""

  def __post_init__(self) -> None:
    if self.width < 1 or self.lsb < 0 or self.lsb + self.width > REG_BITS:
      raise RegError(f"field {self.name} [{self.lsb}+{self.width}] does not lie within {REG_BITS} bits")
    if self.aligned and (self.signed or self.lsb == 0): raise RegError(f"field {self.name}: aligned needs lsb > 0 and unsigned")

  @property
  def msb(self) -> int: return self.lsb + self.width - 1
  @property
  def mask(self) -> int: return ((1 << self.width) - 1) << self.lsb
  @property
  def bits(self) -> str: return f"[{self.msb}:{self.lsb}]" if self.width > 1 else f"[{self.lsb}]"

  def value_range(self) -> tuple[int, int]:
    """Smallest and largest value `encode` accepts (for aligned fields: byte values, multiples of 1<<lsb)."""
    if self.signed: return -(1 << (self.width - 1)), (1 << (self.width - 1)) - 1
    if self.aligned: return 0, ((1 << self.width) - 1) << self.lsb
    return 0, (1 << self.width) - 1

  def encode(self, value:int, where:str) -> int:
    """The field's bits in place within the register; `where` names the field in errors (BLOCK.REG)."""
    if isinstance(value, bool) or not isinstance(value, int):
      raise RegError(f"{where}.{self.name}: value must be an int, got {type(value).__name__}")
    lo, hi = self.value_range()
    if not lo <= value <= hi:
      raise RegError(f"{where}.{self.name}{self.bits}: {value} ({value:#x}) outside [{lo}, {hi}]"
                     + ("" if self.signed or value >= 0 else " (field is unsigned)"))
    if self.aligned:
      if value & ((1 << self.lsb) - 1):
        raise RegError(f"{where}.{self.name}{self.bits}: byte value {value:#x} must be a multiple of {1 << self.lsb}")
      return value
    return (value & ((1 << self.width) - 1)) << self.lsb

  def decode(self, regval:int) -> int:
    """The field's value out of a 32-bit register value (signed/aligned as declared)."""
    raw = (regval >> self.lsb) & ((1 << self.width) - 1)
    if self.signed: return to_signed(raw, self.width)
    return raw << self.lsb if self.aligned else raw

@dataclass(frozen=True)
class Register:
  block: str
  name: str
  offset: int  # absolute offset within a core's MMIO space (what a regcmd entry carries)
  fields: tuple[Field, ...]
  doc: str = ""
  mesa_name: str|None = None  # registers.xml's name where it differs (DPU_RDMA/PPU_RDMA use an RDMA_ prefix)
  by_name: Mapping[str, Field] = dc_field(init=False, repr=False, compare=False)

  def __post_init__(self) -> None:
    object.__setattr__(self, "by_name", MappingProxyType({f.name: f for f in self.fields}))
    if len(self.by_name) != len(self.fields): raise RegError(f"{self.qualname}: duplicate field names")

  @property
  def qualname(self) -> str: return f"{self.block}.{self.name}"
  @property
  def used_mask(self) -> int:
    m = 0
    for f in self.fields: m |= f.mask
    return m

  def field(self, name:str) -> Field:
    if (f := self.by_name.get(name)) is None:
      raise RegError(f"{self.qualname} has no field {name!r}; fields: {', '.join(self.by_name) or '(none)'}")
    return f

def register(block:str, name:str, offset:int, *fields:Field, doc:str="", mesa_name:str|None=None) -> Register:
  """Table helper: fields listed most significant first, as registers.xml lists them."""
  return Register(block, name, offset, tuple(fields), doc, mesa_name)

def whole(name:str, **kw) -> Field:
  """A field covering the whole register (addresses, 32-bit operands)."""
  return Field(name, 0, REG_BITS, **kw)
