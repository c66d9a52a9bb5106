"""DPU-only element-wise tasks ("flying mode": DPU_RDMA feeds the DPU, no convolution), as register programs.

AB's mainline 6.18 register list written in full (rocket_fp16_ew_ppu.md §3.1), the EW stage configured per operation
(§3.2); the op-enable mask starts only the DPU and its reader (FLYING_ENABLE).
"""
from __future__ import annotations
from typing import Mapping
from tinygrad_rocket import regs
from tinygrad_rocket.ops.layout import ELEMENT_BYTES
from tinygrad_rocket.ops.program import Program, PREC

def flying_program(n:int, prec:str, slots:Mapping[str, int], ew_cfg:Mapping[str, int]|None=None,
                   operand:bool=True) -> Program:
  """A DPU-only element-wise op over a flat vector of n elements as a cube C = 16/bytes (one atom), W = n/C, H = 1
  (AB's 6.18 list, written in full, rocket_fp16_ew_ppu.md §3.1). fp16: MRDMA fp16->fp32, EW in fp32, fp16 out;
  integers: the whole precision bundle at `prec` (GN sdp-stage-precision.md). ew_cfg: EW_CFG fields (default ADD)."""
  c2 = 16 // ELEMENT_BYTES[prec]
  assert n % c2 == 0
  W = n // c2
  p = PREC[prec]
  fp = prec == "fp16"
  esize = {1: 1, 2: 2, 4: 3}[ELEMENT_BYTES[prec]]
  ew = dict(ew_cfg) if ew_cfg is not None else dict(EW_DATA_MODE=1, EDATA_SIZE=esize, EW_ALU_ALGO=2, EW_RELU_BYPASS=1,
                                                      EW_LUT_BYPASS=1, EW_OP_SRC=1)
  if not operand: ew = dict(EW_RELU_BYPASS=1, EW_OP_CVT_BYPASS=1, EW_LUT_BYPASS=1, EW_OP_BYPASS=1, EW_BYPASS=1)
  return {
    ("DPU", "S_POINTER"): dict(POINTER_PP_EN=1, EXECUTER_PP_EN=1, POINTER_PP_MODE=1),
    ("DPU", "FEATURE_MODE_CFG"): dict(BURST_LEN=15, OUTPUT_MODE=2, FLYING_MODE=1),
    ("DPU", "DATA_FORMAT"): dict(OUT_PRECISION=p, IN_PRECISION=p, PROC_PRECISION=p),
    ("DPU", "OFFSET_PEND"): {},
    ("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", slots["output"]),
    ("DPU", "DST_SURF_STRIDE"): dict(DST_SURF_STRIDE=W * 16),
    ("DPU", "DATA_CUBE_WIDTH"): dict(WIDTH=W - 1), ("DPU", "DATA_CUBE_HEIGHT"): {}, ("DPU", "DATA_CUBE_NOTCH_ADDR"): {},
    ("DPU", "DATA_CUBE_CHANNEL"): dict(ORIG_CHANNEL=c2 - 1, CHANNEL=c2 - 1),
    ("DPU", "BS_CFG"): dict(BS_RELU_BYPASS=1, BS_MUL_BYPASS=1, BS_ALU_BYPASS=1, BS_BYPASS=1),
    ("DPU", "BS_ALU_CFG"): {}, ("DPU", "BS_MUL_CFG"): {}, ("DPU", "BS_RELUX_CMP_VALUE"): {},
    ("DPU", "BS_OW_CFG"): dict(OD_BYPASS=1), ("DPU", "BS_OW_OP"): {},
    ("DPU", "WDMA_SIZE_0"): dict(CHANNEL_WDMA=c2 - 1), ("DPU", "WDMA_SIZE_1"): dict(WIDTH_WDMA=W - 1),
    ("DPU", "BN_CFG"): dict(BN_RELU_BYPASS=1, BN_MUL_BYPASS=1, BN_ALU_BYPASS=1, BN_BYPASS=1),
    ("DPU", "BN_ALU_CFG"): {}, ("DPU", "BN_MUL_CFG"): {}, ("DPU", "BN_RELUX_CMP_VALUE"): {},
    ("DPU", "EW_CFG"): ew,
    ("DPU", "EW_CVT_OFFSET_VALUE"): {}, ("DPU", "EW_CVT_SCALE_VALUE"): dict(EW_OP_CVT_SCALE=1), ("DPU", "EW_RELUX_CMP_VALUE"): {},
    ("DPU", "OUT_CVT_OFFSET"): {}, ("DPU", "OUT_CVT_SCALE"): dict(FP32TOFP16_EN=int(fp), OUT_CVT_SCALE=1),
    ("DPU", "OUT_CVT_SHIFT"): {},
    ("DPU", "SURFACE_ADD"): dict(SURF_ADD=W * 16), ("DPU", "UNDOC_40C4"): {},
    ("DPU_RDMA", "S_POINTER"): dict(POINTER_PP_EN=1, EXECUTER_PP_EN=1, POINTER_PP_MODE=1),
    ("DPU_RDMA", "DATA_CUBE_WIDTH"): dict(WIDTH=W - 1), ("DPU_RDMA", "DATA_CUBE_HEIGHT"): {},
    ("DPU_RDMA", "DATA_CUBE_CHANNEL"): dict(CHANNEL=c2 - 1),
    ("DPU_RDMA", "SRC_BASE_ADDR"): regs.address("DPU_RDMA", "SRC_BASE_ADDR", slots["input"]),
    ("DPU_RDMA", "BRDMA_CFG"): {}, ("DPU_RDMA", "BS_BASE_ADDR"): {}, ("DPU_RDMA", "NRDMA_CFG"): {}, ("DPU_RDMA", "BN_BASE_ADDR"): {},
    ("DPU_RDMA", "ERDMA_CFG"): dict(ERDMA_DATA_MODE=1, ERDMA_DATA_SIZE=esize) if operand else dict(ERDMA_DISABLE=1),
    ("DPU_RDMA", "EW_BASE_ADDR"): regs.address("DPU_RDMA", "EW_BASE_ADDR", slots["operand"]) if operand else {},
    ("DPU_RDMA", "EW_SURF_STRIDE"): {},
    ("DPU_RDMA", "FEATURE_MODE_CFG"): dict(IN_PRECISION=p, BURST_LEN=15, PROC_PRECISION=p, MRDMA_FP16TOFP32_EN=int(fp), FLYING_MODE=1),
    ("DPU_RDMA", "SRC_DMA_CFG"): {}, ("DPU_RDMA", "SURF_NOTCH"): {}, ("DPU_RDMA", "PAD_CFG"): {},
    ("DPU_RDMA", "WEIGHT"): dict(E_WEIGHT=1, N_WEIGHT=1, B_WEIGHT=1, M_WEIGHT=1), ("DPU_RDMA", "EW_SURF_NOTCH"): {},
  }

FLYING_ENABLE = regs.op_enable_mask("DPU", "DPU_RDMA")
