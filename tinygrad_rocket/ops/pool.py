"""PPU pooling tasks (max / min / average over fp16 windows), as register programs (rocket_fp16_ew_ppu.md §5).

The PPU reads its cube through PPU_RDMA and writes through its own WDMA; the op-enable mask starts only those two
(PPU_ENABLE).
"""
from __future__ import annotations
from typing import Mapping
import numpy as np
from tinygrad_rocket import regs
from tinygrad_rocket.ops.program import Program, PREC

PPU_ENABLE = regs.op_enable_mask("PPU", "PPU_RDMA")
# Limits (rocket_fp16_ew_ppu.md §1.6, §6.C): POOLING_KERNEL_CFG kernel and stride fields are 4 bits of value-1; cube
# dimensions are 13-bit value-1 fields and a dimension of exactly 8191 corrupts the tail (GN); a pass reading a cube
# the previous PPU pass wrote gets half the channels wrong unless it is at least 4x4 (GN; CPU-written cubes are fine).
MAX_WINDOW = 16
MAX_CUBE_DIM = 8190
MIN_CHAINED_DIM = 4

def ppu_program(C:int, H:int, W:int, method:str, k:tuple[int, int], stride:tuple[int, int], pad:tuple[int, int, int, int],
                slots:Mapping[str, int]) -> Program:
  """GN's fp16 pooling program (rocket_fp16_ew_ppu.md §5). k, stride: (h, w); pad: (top, bottom, left, right)."""
  pt, pb, pl, pr = pad
  OH, OW = (H + pt + pb - k[0]) // stride[0] + 1, (W + pl + pr - k[1]) // stride[1] + 1
  recip = lambda n: int(np.array([65536 / n], np.float16).view(np.uint16)[0]) if method == "avg" else 0
  padv = {"avg": 0, "max": 0xFC00, "min": 0x7C00}[method] if any(pad) else 0
  return {
    ("PPU", "S_POINTER"): dict(POINTER_PP_EN=1, EXECUTER_PP_EN=1, POINTER_PP_MODE=1),
    ("PPU_RDMA", "S_POINTER"): dict(POINTER_PP_EN=1, EXECUTER_PP_EN=1, POINTER_PP_MODE=1),
    ("PPU", "DATA_CUBE_IN_WIDTH"): dict(CUBE_IN_WIDTH=W - 1), ("PPU", "DATA_CUBE_IN_HEIGHT"): dict(CUBE_IN_HEIGHT=H - 1),
    ("PPU", "DATA_CUBE_IN_CHANNEL"): dict(CUBE_IN_CHANNEL=C - 1),
    ("PPU", "DATA_CUBE_OUT_WIDTH"): dict(CUBE_OUT_WIDTH=OW - 1), ("PPU", "DATA_CUBE_OUT_HEIGHT"): dict(CUBE_OUT_HEIGHT=OH - 1),
    ("PPU", "DATA_CUBE_OUT_CHANNEL"): dict(CUBE_OUT_CHANNEL=C - 1),
    ("PPU", "OPERATION_MODE_CFG"): dict(FLYING_MODE=1, POOLING_METHOD={"avg": 0, "max": 1, "min": 2}[method]),
    ("PPU", "POOLING_KERNEL_CFG"): dict(KERNEL_STRIDE_HEIGHT=stride[0] - 1, KERNEL_STRIDE_WIDTH=stride[1] - 1,
                                        KERNEL_HEIGHT=k[0] - 1, KERNEL_WIDTH=k[1] - 1),
    ("PPU", "RECIP_KERNEL_WIDTH"): dict(RECIP_KERNEL_WIDTH=recip(k[1])), ("PPU", "RECIP_KERNEL_HEIGHT"): dict(RECIP_KERNEL_HEIGHT=recip(k[0])),
    ("PPU", "POOLING_PADDING_CFG"): dict(PAD_BOTTOM=pb, PAD_RIGHT=pr, PAD_TOP=pt, PAD_LEFT=pl),
    ("PPU", "PADDING_VALUE_1_CFG"): dict(PAD_VALUE_0=padv), ("PPU", "PADDING_VALUE_2_CFG"): {},
    ("PPU", "DST_BASE_ADDR"): regs.address("PPU", "DST_BASE_ADDR", slots["output"]),
    ("PPU", "DST_SURF_STRIDE"): dict(DST_SURF_STRIDE=OH * OW * 16),
    ("PPU", "DATA_FORMAT"): dict(INDEX_ADD=OH * OW * 16, PROC_PRECISION=PREC["fp16"]),
    ("PPU", "MISC_CTRL"): dict(BURST_LEN=3),
    ("PPU_RDMA", "CUBE_IN_WIDTH"): dict(CUBE_IN_WIDTH=W - 1), ("PPU_RDMA", "CUBE_IN_HEIGHT"): dict(CUBE_IN_HEIGHT=H - 1),
    ("PPU_RDMA", "CUBE_IN_CHANNEL"): dict(CUBE_IN_CHANNEL=C - 1),
    ("PPU_RDMA", "SRC_BASE_ADDR"): regs.address("PPU_RDMA", "SRC_BASE_ADDR", slots["input"]),
    ("PPU_RDMA", "SRC_LINE_STRIDE"): dict(SRC_LINE_STRIDE=W * 16), ("PPU_RDMA", "SRC_SURF_STRIDE"): dict(SRC_SURF_STRIDE=H * W * 16),
    ("PPU_RDMA", "DATA_FORMAT"): dict(IN_PRECISION=2),
  }
