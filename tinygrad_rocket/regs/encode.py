"""Encoder: named field values -> checked 32-bit register value -> 64-bit regcmd entry.

    value("DPU", "FEATURE_MODE_CFG", BURST_LEN=15, OUTPUT_MODE=2) == 0x1E4
    write("CNA", "CVT_CON0", DATA_SIGN=1, CVT_TYPE=1, CVT_BYPASS=1) == 0x0201_0000000B_104C
    write_raw("CNA", "FEATURE_DATA_ADDR", iova)   # a register written as a whole

Unknown names and values that do not fit are RegError (a ValueError) naming BLOCK.REGISTER.FIELD and the accepted
range; nothing is truncated. Fields not named are 0.
"""
from __future__ import annotations
from tinygrad_rocket.regs.database import find_register, get_block
from tinygrad_rocket.regs.entry import pack_entry
from tinygrad_rocket.regs.fields import REG_MASK, RegError

def value(block:str, reg:str, **fields:int) -> int:
  r = find_register(block, reg)
  v = 0
  for name, fv in fields.items(): v |= r.field(name).encode(fv, r.qualname)
  return v

def write(block:str, reg:str, **fields:int) -> int:
  r = find_register(block, reg)
  return pack_entry(get_block(r.block).target, value(block, reg, **fields), r.offset)

def write_raw(block:str, reg:str, raw:int) -> int:
  """An entry writing `raw` (0..2^32-1) to the whole register, bypassing the field layout."""
  r = find_register(block, reg)
  if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= REG_MASK:
    raise RegError(f"{r.qualname}: raw value {raw!r} is not a 32-bit unsigned int")
  return pack_entry(get_block(r.block).target, raw, r.offset)
