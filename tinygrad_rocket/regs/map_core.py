"""CORE (MAC array, accumulator truncation) registers, 0x3000-0x3030.

Sources: Mesa registers.xml domain CORE; rocket_hw.md §4.2; 0x3030 from Mesa's emitted list (rocket_hw.md §3.5),
mtx512/rk3588-npu npu_hw.h ("doesn't seem to be documented"). Target 0x0801.
"""
from __future__ import annotations
from tinygrad_rocket.regs.fields import Field, Register, register, whole
from tinygrad_rocket.regs.map_common import block_header
from tinygrad_rocket.regs.values import PRECISION

def R(name:str, offset:int, *fields:Field, doc:str="") -> Register: return register("CORE", name, offset, *fields, doc=doc)

REGISTERS: tuple[Register, ...] = block_header("CORE", 0x3000) + (
  R("MAC_GATING", 0x300C, Field("SLCG_OP_EN", 0, 27), doc="not written by Mesa"),
  R("MISC_CFG", 0x3010, Field("SOFT_GATING", 14, 6), Field("PROC_PRECISION", 8, 3, values=PRECISION),
    Field("DW_EN", 1), Field("QD_EN", 0, doc="'quantify feature data'; Mesa 1")),
  R("DATAOUT_SIZE_0", 0x3014, Field("DATAOUT_HEIGHT", 16, 16, doc="count-1"), Field("DATAOUT_WIDTH", 0, 16, doc="count-1")),
  R("DATAOUT_SIZE_1", 0x3018, Field("DATAOUT_CHANNEL", 0, 16, doc="count-1")),
  R("CLIP_TRUNCATE", 0x301C,
    Field("ROUND_TYPE", 6, doc="TRM: 0 'odd in, even not' (half-even?), 1 half-up; uncertain"),
    Field("CLIP_TRUNCATE", 0, 5, doc="accumulator right shift")),
  # Not in registers.xml. Mesa writes 0 every task; allbilly: "must be 0 or the next run is corrupted".
  R("UNDOC_3030", 0x3030, whole("VALUE", hex=True), doc="undocumented; always write 0"),
)
