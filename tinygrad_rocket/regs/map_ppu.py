"""PPU (pooling, NVDLA PDP) registers, 0x6000-0x60DC. Not used by Mesa.

Sources: Mesa registers.xml domain PPU; rocket_fp16_ew_ppu.md §5 (GN's HW-validated pooling program). Target 0x4001.
"""
from __future__ import annotations
from tinygrad_rocket.regs.fields import Field, Register, register, whole
from tinygrad_rocket.regs.map_common import block_header
from tinygrad_rocket.regs.values import PRECISION, POOLING_METHOD

def R(name:str, offset:int, *fields:Field, doc:str="") -> Register: return register("PPU", name, offset, *fields, doc=doc)

REGISTERS: tuple[Register, ...] = block_header("PPU", 0x6000) + (
  *(R(f"DATA_CUBE_{io.upper()}_{dim}", off, Field(f"CUBE_{io.upper()}_{dim}", 0, 13, doc="count-1"))
    for io, base in (("in", 0x600C), ("out", 0x6018)) for dim, off in zip(("WIDTH", "HEIGHT", "CHANNEL"), range(base, base + 12, 4))),
  R("OPERATION_MODE_CFG", 0x6024,
    Field("INDEX_EN", 30), Field("NOTCH_ADDR", 16, 13), Field("USE_CNT", 5, 3),
    Field("FLYING_MODE", 4, doc="1: input from PPU_RDMA"), Field("POOLING_METHOD", 0, 2, values=POOLING_METHOD)),
  R("POOLING_KERNEL_CFG", 0x6034,
    Field("KERNEL_STRIDE_HEIGHT", 20, 4, doc="value-1"), Field("KERNEL_STRIDE_WIDTH", 16, 4, doc="value-1"),
    Field("KERNEL_HEIGHT", 8, 4, doc="value-1"), Field("KERNEL_WIDTH", 0, 4, doc="value-1")),
  R("RECIP_KERNEL_WIDTH", 0x6038, Field("RECIP_KERNEL_WIDTH", 0, 17, hex=True,
                                         doc="avg: fp16 bits of 65536/k (GN); 17-bit per registers.xml, bit 16 unexplained")),
  R("RECIP_KERNEL_HEIGHT", 0x603C, Field("RECIP_KERNEL_HEIGHT", 0, 17, hex=True)),
  R("POOLING_PADDING_CFG", 0x6040, Field("PAD_BOTTOM", 12, 3), Field("PAD_RIGHT", 8, 3), Field("PAD_TOP", 4, 3),
    Field("PAD_LEFT", 0, 3), doc="counts, not minus one"),
  R("PADDING_VALUE_1_CFG", 0x6044, whole("PAD_VALUE_0", hex=True, doc="pad value bits 31:0 (fp16 -inf 0xFC00 for max)")),
  R("PADDING_VALUE_2_CFG", 0x6048, Field("PAD_VALUE_1", 0, 3, doc="pad value bits 34:32")),
  R("DST_BASE_ADDR", 0x6070, Field("DST_BASE_ADDR", 4, 28, aligned=True, address=True), doc="output IOVA (16-byte aligned)"),
  R("DST_SURF_STRIDE", 0x607C, Field("DST_SURF_STRIDE", 4, 28, aligned=True, doc="bytes per output surface")),
  R("DATA_FORMAT", 0x6084, Field("INDEX_ADD", 4, 28, aligned=True, doc="bytes; GN writes OH*OW*16"),
    Field("DPU_FLYIN", 3, doc="1: input on the fly from the DPU"), Field("PROC_PRECISION", 0, 3, values=PRECISION)),
  R("MISC_CTRL", 0x60DC, Field("SURF_LEN", 16, 16), Field("MC_SURF_OUT", 8), Field("NONALIGN", 7), Field("BURST_LEN", 0, 4)),
)
