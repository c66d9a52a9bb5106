"""Meanings of encoded field values shared by several registers (names shown by listings, usable by ops).

Sources: ../shared/reference/rocket_fp16_ew_ppu.md §1.1 (precision codes and element-size codes),
§3.2/§5 (EW and pooling algorithms); rocket_hw.md §4 (conv mode, ERDMA data mode, CVT types).
"""
from __future__ import annotations
from types import MappingProxyType

def _names(**kw:int) -> MappingProxyType: return MappingProxyType({v: k for k, v in kw.items()})

# 3-bit precision code: CNA CONV_CON1, CORE MISC_CFG, DPU DATA_FORMAT, DPU_RDMA FEATURE_MODE_CFG, PPU DATA_FORMAT.
# Not every code is valid everywhere (tf32 only in CNA/CORE; int32/fp32 only as DPU output or DPU proc for tf32).
PRECISION = _names(int8=0, int16=1, fp16=2, bf16=3, int32=4, fp32=5, int4=6, tf32=7)
# 2-bit element size: EW_CFG.EDATA_SIZE, ERDMA_CFG.ERDMA_DATA_SIZE, PPU_RDMA DATA_FORMAT.IN_PRECISION.
ELEMENT_SIZE = _names(bits4=0, bits8=1, bits16=2, bits32=3)
# CONV_MODE (CNA 4-bit, DPU/DPU_RDMA 2-bit): only these two are exercised by any source.
CONV_MODE = _names(direct=0, depthwise=3)
# EW_ALU_ALGO (TRM list; 5..8 never exercised by any source, uncertain).
EW_ALU_ALGO = _names(max=0, min=1, add=2, div=3, minus=4, abs=5, neg=6, floor=7, ceil=8)
# BS/BN_ALU_ALGO: TRM documents only add and minus (x - operand); others "reserved".
XSTAGE_ALU_ALGO = _names(add=2, minus=4)
EW_OP_TYPE = _names(alu=0, mul=1)
# 0 = multiply then add, 1 = add (offset) then multiply (CNA CVT_CON0.CVT_TYPE, DPU EW_CFG.EW_CVT_TYPE, OUT_CVT_SHIFT.CVT_TYPE).
CVT_ORDER = _names(mul_first=0, add_first=1)
# ERDMA_DATA_MODE; EW_CFG.EW_DATA_MODE uses the same encoding (Mesa and GN: 1 with per-pixel ERDMA).
EW_DATA_MODE = _names(per_channel=0, per_pixel=1, per_channel_by_pixel=2)
POOLING_METHOD = _names(average=0, max=1, min=2)
# DPU FEATURE_MODE_CFG.OUTPUT_MODE: bit0 -> PPU (on the fly), bit1 -> memory (WDMA).
DPU_OUTPUT_MODE = _names(ppu=1, memory=2, ppu_and_memory=3)
