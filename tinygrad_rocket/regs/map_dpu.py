"""DPU (NVDLA SDP: BS/BN/EW stages, LUT, output convert, write DMA) registers, 0x4000-0x412C.

Sources: Mesa registers.xml domain DPU; rocket_hw.md §4.3; rocket_fp16_ew_ppu.md §2-§4 (float use, LUT);
0x40C4 from Mesa's emitted list (rocket_hw.md §3.5) and mtx512 npu_hw.h ("not documented"). Target 0x1001.
"""
from __future__ import annotations
from tinygrad_rocket.regs.fields import Field, Register, register, whole
from tinygrad_rocket.regs.map_common import block_header
from tinygrad_rocket.regs.values import (PRECISION, CONV_MODE, EW_ALU_ALGO, XSTAGE_ALU_ALGO, EW_OP_TYPE, CVT_ORDER,
                                         ELEMENT_SIZE, EW_DATA_MODE, DPU_OUTPUT_MODE)

def R(name:str, offset:int, *fields:Field, doc:str="") -> Register: return register("DPU", name, offset, *fields, doc=doc)

def _xstage(p:str, base:int) -> tuple[Register, ...]:
  """BS (0x4040..) and BN (0x4060..) X-stages share one layout, field names prefixed BS_/BN_."""
  return (
    R(f"{p}_CFG", base,
      Field(f"{p}_ALU_ALGO", 16, 4, values=XSTAGE_ALU_ALGO), Field(f"{p}_ALU_SRC", 8, doc="1: operand from RDMA (BRDMA/NRDMA)"),
      Field(f"{p}_RELUX_EN", 7), Field(f"{p}_RELU_BYPASS", 6), Field(f"{p}_MUL_PRELU", 5), Field(f"{p}_MUL_BYPASS", 4),
      Field(f"{p}_ALU_BYPASS", 1), Field(f"{p}_BYPASS", 0),
      doc="Mesa BS 0x20150 (bias add from BRDMA), BN 0x53 (bypassed). ALU/MUL order disputed (fp16 doc §3.4)"),
    R(f"{p}_ALU_CFG", base + 0x4, whole(f"{p}_ALU_OPERAND", hex=True, doc="int32 in integer mode, fp32 bits in float mode")),
    R(f"{p}_MUL_CFG", base + 0x8,
      Field(f"{p}_MUL_OPERAND", 16, 16, hex=True, doc="uint16 in integer mode, fp16 bits in float mode"),
      Field(f"{p}_MUL_SHIFT_VALUE", 8, 6), Field(f"{p}_TRUNCATE_SRC", 1), Field(f"{p}_MUL_SRC", 0, doc="1: operand from RDMA")),
    R(f"{p}_RELUX_CMP_VALUE", base + 0xC, whole(f"{p}_RELUX_CMP_DAT", hex=True, doc="fp32 bits in float mode")),
  )

def _lut_slope(le_lo:str, offset:int) -> tuple[Register, ...]:
  return (
    R(f"LUT_{le_lo}_SLOPE_SCALE", offset,
      Field(f"LUT_{le_lo}_SLOPE_OFLOW_SCALE", 16, 16), Field(f"LUT_{le_lo}_SLOPE_UFLOW_SCALE", 0, 16),
      doc="slope beyond the table, integer, table units per index unit (GN)"),
    R(f"LUT_{le_lo}_SLOPE_SHIFT", offset + 0x4,
      Field(f"LUT_{le_lo}_SLOPE_OFLOW_SHIFT", 5, 5), Field(f"LUT_{le_lo}_SLOPE_UFLOW_SHIFT", 0, 5)),
  )

REGISTERS: tuple[Register, ...] = block_header("DPU", 0x4000) + (
  R("FEATURE_MODE_CFG", 0x400C,
    Field("COMB_USE", 31), Field("TP_EN", 30), Field("RGP_TYPE", 26, 4), Field("NONALIGN", 25), Field("SURF_LEN", 9, 16),
    Field("BURST_LEN", 5, 4), Field("CONV_MODE", 3, 2, values=CONV_MODE),
    Field("OUTPUT_MODE", 1, 2, values=DPU_OUTPUT_MODE), Field("FLYING_MODE", 0, doc="1: main input from MRDMA, not the conv"),
    doc="Mesa 0x1E4 (BURST_LEN 15, OUTPUT_MODE 2), depthwise 0x1FC"),
  R("DATA_FORMAT", 0x4010,
    Field("OUT_PRECISION", 29, 3, values=PRECISION), Field("IN_PRECISION", 26, 3, values=PRECISION),
    Field("EW_TRUNCATE_NEG", 16, 10), Field("BN_MUL_SHIFT_VALUE_NEG", 10, 6), Field("BS_MUL_SHIFT_VALUE_NEG", 4, 6),
    Field("MC_SURF_OUT", 3), Field("PROC_PRECISION", 0, 3, values=PRECISION)),
  R("OFFSET_PEND", 0x4014, Field("OFFSET_PEND", 0, 16, doc="value of extra channels")),
  # registers.xml: DST_BASE_ADDR is a plain [31:0] field here (rocket_fp16_ew_ppu.md's header lists "DST_BASE_ADDR"
  # among the [31:4] fields: that holds for the PPU's DST_BASE_ADDR at 0x6070, not for this one).
  R("DST_BASE_ADDR", 0x4020, whole("DST_BASE_ADDR", address=True, hex=True), doc="output IOVA"),
  R("DST_SURF_STRIDE", 0x4024, Field("DST_SURF_STRIDE", 4, 28, aligned=True, doc="bytes per output surface (W*H*16)")),
  R("DATA_CUBE_WIDTH", 0x4030, Field("WIDTH", 0, 13, doc="count-1")),
  R("DATA_CUBE_HEIGHT", 0x4034, Field("MINMAX_CTL", 22, 3), Field("HEIGHT", 0, 13, doc="count-1")),
  R("DATA_CUBE_NOTCH_ADDR", 0x4038, Field("NOTCH_ADDR_1", 16, 13), Field("NOTCH_ADDR_0", 0, 13)),
  R("DATA_CUBE_CHANNEL", 0x403C, Field("ORIG_CHANNEL", 16, 13, doc="count-1"), Field("CHANNEL", 0, 13, doc="aligned count-1")),
  *_xstage("BS", 0x4040),
  R("BS_OW_CFG", 0x4050,
    Field("RGP_CNTER", 28, 4), Field("TP_ORG_EN", 27),
    Field("SIZE_E_2", 8, 3), Field("SIZE_E_1", 5, 3),
    Field("SIZE_E_0", 2, 3, doc="TRM: 8-channel groups per row - 1; data fit atoms-per-kernel-group - 1 (fp16 doc §1.4)"),
    Field("OD_BYPASS", 1, doc="bypass CPEND (BS_OW_OP)"), Field("OW_SRC", 0),
    doc="Mesa 0x124, depthwise 0x36C"),
  R("BS_OW_OP", 0x4054, Field("OW_OP", 0, 16, signed=True,
                              doc="CPEND operand, Mesa 0x80-zw; signedness inferred from that formula (uncertain)")),
  R("WDMA_SIZE_0", 0x4058, Field("TP_PRECISION", 27), Field("SIZE_C_WDMA", 16, 11), Field("CHANNEL_WDMA", 0, 13, doc="count-1")),
  R("WDMA_SIZE_1", 0x405C, Field("HEIGHT_WDMA", 16, 13, doc="count-1"), Field("WIDTH_WDMA", 0, 13, doc="count-1")),
  *_xstage("BN", 0x4060),
  R("EW_CFG", 0x4070,
    Field("EW_CVT_TYPE", 31, values=CVT_ORDER), Field("EW_CVT_ROUND", 30), Field("EW_DATA_MODE", 28, 2, values=EW_DATA_MODE),
    Field("EDATA_SIZE", 22, 2, values=ELEMENT_SIZE),
    Field("EW_EQUAL_EN", 21, doc="meaning unknown"), Field("EW_BINARY_EN", 20, doc="meaning unknown"),
    Field("EW_ALU_ALGO", 16, 4, values=EW_ALU_ALGO), Field("EW_RELUX_EN", 10), Field("EW_RELU_BYPASS", 9),
    Field("EW_OP_CVT_BYPASS", 8), Field("EW_LUT_BYPASS", 7), Field("EW_OP_SRC", 6, doc="1: operand from ERDMA"),
    Field("EW_MUL_PRELU", 5), Field("EW_OP_TYPE", 2, values=EW_OP_TYPE), Field("EW_OP_BYPASS", 1), Field("EW_BYPASS", 0),
    doc="Mesa: 0x383 (bypassed); fused add 0x904202C0"),
  R("EW_CVT_OFFSET_VALUE", 0x4074, whole("EW_OP_CVT_OFFSET", signed=True, doc="Mesa add: 0x80-z_add")),
  R("EW_CVT_SCALE_VALUE", 0x4078, Field("EW_TRUNCATE", 22, 10), Field("EW_OP_CVT_SHIFT", 16, 6), Field("EW_OP_CVT_SCALE", 0, 16)),
  R("EW_RELUX_CMP_VALUE", 0x407C, whole("EW_RELUX_CMP_DAT", hex=True)),
  R("OUT_CVT_OFFSET", 0x4080, whole("OUT_CVT_OFFSET", signed=True, doc="Mesa zo-0x80; float mode: added before the shift")),
  R("OUT_CVT_SCALE", 0x4084, Field("FP32TOFP16_EN", 16), Field("OUT_CVT_SCALE", 0, 16, doc="unsigned multiplier")),
  R("OUT_CVT_SHIFT", 0x4088,
    Field("CVT_TYPE", 31, values=CVT_ORDER),
    Field("CVT_ROUND", 30, doc="TRM: 0 round-half-even, 1 half-up; GN measured floor on int32 output (uncertain)"),
    Field("MINUS_EXP", 12, 8), Field("OUT_CVT_SHIFT", 0, 12)),
  *(R(f"EW_OP_VALUE_{k}", 0x4090 + 4 * k, whole(f"EW_OPERAND_{k}", hex=True), doc="EW operand with EW_OP_SRC=0 (unused by any source)")
    for k in range(8)),
  R("SURFACE_ADD", 0x40C0, Field("SURF_ADD", 4, 28, aligned=True, doc="DST_SURF_STRIDE bytes * atoms per kernel group")),
  # Not in registers.xml. Mesa writes 0 every task; allbilly: "must be 0 or the next run is corrupted".
  R("UNDOC_40C4", 0x40C4, whole("VALUE", hex=True), doc="undocumented; always write 0"),
  R("LUT_ACCESS_CFG", 0x4100, Field("LUT_ACCESS_TYPE", 17, doc="1 = write"), Field("LUT_TABLE_ID", 16, doc="0 LE, 1 LO"),
    Field("LUT_ADDR", 0, 10), doc="a write resets the LUT_ACCESS_DATA auto-increment address"),
  R("LUT_ACCESS_DATA", 0x4104, Field("LUT_ACCESS_DATA", 0, 16, hex=True,
                                     doc="one table entry per write (513 per table on RK3588); Q0.15 (GN), AB wrote int16")),
  R("LUT_CFG", 0x4108, Field("LUT_CAL_SEL", 7), Field("LUT_HYBRID_PRIORITY", 6), Field("LUT_OFLOW_PRIORITY", 5),
    Field("LUT_UFLOW_PRIORITY", 4), Field("LUT_LO_LE_MUX", 2, 2), Field("LUT_EXPAND_EN", 1), Field("LUT_ROAD_SEL", 0)),
  R("LUT_INFO", 0x410C, Field("LUT_LO_INDEX_SELECT", 16, 8), Field("LUT_LE_INDEX_SELECT", 8, 8)),
  R("LUT_LE_START", 0x4110, whole("LUT_LE_START", signed=True, doc="index-domain integer (GN); AB wrote fp32 bits (uncertain)")),
  R("LUT_LE_END", 0x4114, whole("LUT_LE_END", signed=True)),
  R("LUT_LO_START", 0x4118, whole("LUT_LO_START", signed=True)),
  R("LUT_LO_END", 0x411C, whole("LUT_LO_END", signed=True)),
  *_lut_slope("LE", 0x4120),
  *_lut_slope("LO", 0x4128),
)
