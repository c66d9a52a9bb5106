"""PPU_RDMA (pooling input reader) registers, 0x7000-0x7030. Not used by Mesa.

Sources: Mesa registers.xml domain PPU_RDMA (names prefixed RDMA_, dropped here; lookups accept both);
rocket_fp16_ew_ppu.md §5. Target 0x8001.
"""
from __future__ import annotations
from tinygrad_rocket.regs.fields import Field, Register, register, whole
from tinygrad_rocket.regs.map_common import block_header
from tinygrad_rocket.regs.values import ELEMENT_SIZE

def R(name:str, offset:int, *fields:Field, doc:str="") -> Register:
  return register("PPU_RDMA", name, offset, *fields, doc=doc, mesa_name="RDMA_" + name)

REGISTERS: tuple[Register, ...] = block_header("PPU_RDMA", 0x7000, mesa_prefix="RDMA_") + (
  R("CUBE_IN_WIDTH", 0x700C, Field("CUBE_IN_WIDTH", 0, 13, doc="count-1")),
  R("CUBE_IN_HEIGHT", 0x7010, Field("CUBE_IN_HEIGHT", 0, 13, doc="count-1")),
  R("CUBE_IN_CHANNEL", 0x7014, Field("CUBE_IN_CHANNEL", 0, 13, doc="count-1")),
  R("SRC_BASE_ADDR", 0x701C, whole("SRC_BASE_ADDR", address=True, hex=True), doc="input IOVA"),
  R("SRC_LINE_STRIDE", 0x7024, Field("SRC_LINE_STRIDE", 4, 28, aligned=True, doc="bytes (IW*16)")),
  R("SRC_SURF_STRIDE", 0x7028, Field("SRC_SURF_STRIDE", 4, 28, aligned=True, doc="bytes (IH*IW*16)")),
  R("DATA_FORMAT", 0x7030, Field("IN_PRECISION", 0, 2, values=ELEMENT_SIZE, doc="element-size code, not a precision code")),
)
