"""DPU_RDMA (readers feeding the DPU: MRDMA main, BRDMA bias/BS, NRDMA BN, ERDMA element-wise) registers, 0x5000-0x506C.

Sources: Mesa registers.xml domain DPU_RDMA (which prefixes every name with RDMA_; the names here drop it, the
block already says RDMA, and lookups accept both); rocket_hw.md §4.4; rocket_fp16_ew_ppu.md §2.3/§3. Target 0x2001.
"""
from __future__ import annotations
from tinygrad_rocket.regs.fields import Field, Register, register, whole
from tinygrad_rocket.regs.map_common import block_header
from tinygrad_rocket.regs.values import PRECISION, CONV_MODE, ELEMENT_SIZE, EW_DATA_MODE

def R(name:str, offset:int, *fields:Field, doc:str="") -> Register:
  return register("DPU_RDMA", name, offset, *fields, doc=doc, mesa_name="RDMA_" + name)

REGISTERS: tuple[Register, ...] = block_header("DPU_RDMA", 0x5000, mesa_prefix="RDMA_") + (
  R("DATA_CUBE_WIDTH", 0x500C, Field("WIDTH", 0, 13, doc="count-1")),
  R("DATA_CUBE_HEIGHT", 0x5010, Field("EW_LINE_NOTCH_ADDR", 16, 13), Field("HEIGHT", 0, 13, doc="count-1")),
  R("DATA_CUBE_CHANNEL", 0x5014, Field("CHANNEL", 0, 13, doc="count-1")),
  R("SRC_BASE_ADDR", 0x5018, whole("SRC_BASE_ADDR", address=True, hex=True), doc="MRDMA source IOVA"),
  R("BRDMA_CFG", 0x501C, Field("BRDMA_DATA_USE", 1, 4, doc="bit0 ALU operand (bias), bit1 CPEND, bit2 MUL, bit3 TRT")),
  R("BS_BASE_ADDR", 0x5020, whole("BS_BASE_ADDR", address=True, hex=True), doc="BRDMA source IOVA (bias)"),
  R("NRDMA_CFG", 0x5028, Field("NRDMA_DATA_USE", 1, 4)),
  R("BN_BASE_ADDR", 0x502C, whole("BN_BASE_ADDR", address=True, hex=True)),
  R("ERDMA_CFG", 0x5034,
    Field("ERDMA_DATA_MODE", 30, 2, values=EW_DATA_MODE), Field("ERDMA_SURF_MODE", 29), Field("ERDMA_NONALIGN", 28),
    Field("ERDMA_DATA_SIZE", 2, 2, values=ELEMENT_SIZE), Field("OV4K_BYPASS", 1), Field("ERDMA_DISABLE", 0),
    doc="Mesa: 0x1 (disabled); fused add 0x40000004 (per pixel, 8-bit)"),
  R("EW_BASE_ADDR", 0x5038, whole("EW_BASE_ADDR", address=True, hex=True),
    doc="ERDMA source IOVA; Mesa/GN point it one 16-byte-atom surface past SRC_BASE_ADDR (why is uncertain)"),
  R("EW_SURF_STRIDE", 0x5040, Field("EW_SURF_STRIDE", 4, 28, aligned=True, doc="bytes; Mesa max(W*H,12)*16")),
  R("FEATURE_MODE_CFG", 0x5044,
    Field("IN_PRECISION", 15, 3, values=PRECISION), Field("BURST_LEN", 11, 4),
    Field("COMB_USE", 8, 3, doc="bit0 MRDMA+ERDMA share data, bit1 -> MRDMA, bit2 -> ERDMA"),
    Field("PROC_PRECISION", 5, 3, values=PRECISION),
    Field("MRDMA_DISABLE", 4, doc="must be 1 when the DPU is fed by the conv and COMB_USE is 0, else MRDMA hangs"),
    Field("MRDMA_FP16TOFP32_EN", 3), Field("CONV_MODE", 1, 2, values=CONV_MODE), Field("FLYING_MODE", 0),
    doc="Mesa 0x7810 (burst 15, MRDMA disabled); fused add 0x7D00"),
  R("SRC_DMA_CFG", 0x5048,
    Field("LINE_NOTCH_ADDR", 19, 13), Field("POOLING_METHOD", 13), Field("UNPOOLING_EN", 12),
    Field("KERNEL_STRIDE_HEIGHT", 9, 3), Field("KERNEL_STRIDE_WIDTH", 6, 3), Field("KERNEL_HEIGHT", 3, 3),
    Field("KERNEL_WIDTH", 0, 3)),
  R("SURF_NOTCH", 0x504C, Field("SURF_NOTCH_ADDR", 4, 28, aligned=True, doc="bytes")),
  R("PAD_CFG", 0x5064, Field("PAD_VALUE", 16, 16, hex=True, doc="int16 or fp16 bits, unexercised (uncertain)"),
    Field("PAD_TOP", 4, 3), Field("PAD_LEFT", 0, 3)),
  R("WEIGHT", 0x5068, Field("E_WEIGHT", 24, 8), Field("N_WEIGHT", 16, 8), Field("B_WEIGHT", 8, 8), Field("M_WEIGHT", 0, 8),
    doc="arbiter weights of the four readers; Mesa 0x01010101"),
  R("EW_SURF_NOTCH", 0x506C, Field("EW_SURF_NOTCH", 4, 28, aligned=True, doc="bytes")),
)
