"""fp16 matmul and fp16 conv2d register streams, rebuilt from the hardware-validated third-party programming.

  * build_matmul_fp16(variant="gn")   gregordinary/rocket-userspace src/npu_regcmd.c gen_matmul_fp16 + gen_matmul_task
                                      (mtx512's generator as copied by gregordinary for mainline `rocket`: the DPU_RDMA
                                      block with MRDMA disabled, op-enable 0x1D; 126 entries). Optional fused fp16
                                      element-wise ADD of an addend tensor (gregordinary's "K-accumulation" path).
  * build_matmul_fp16(variant="mtx")  mtx512/rk3588-npu src/npu_matmul.c gen_matmul_fp16 + gen_matmul_task as written
                                      for the vendor driver (108 entries, no DPU_RDMA writes, op-enable 0x0D).
  * build_conv2d_fp16                 gregordinary src/npu_regcmd.c gen_conv2d_fill/gen_conv2d_task (direct and depthwise;
                                      HW-validated bit-exact over kernel sizes, strides, padding, dilation, non-square),
                                      with the host-side preparation of src/rocket_conv.c conv2d_run/conv2d_one_job
                                      (IC zero-padded to 32, OC to 16, input height to >= 4 rows, depthwise group G = 32).

Layouts per precision (rocket_fp16_ew_ppu.md §1.2-§1.4): features NC1HWC2 with 16-byte atoms, C2 = 16/element
bytes (fp16: 8), W the contiguous axis (NVDLA convention, no H/W swap: non-square shapes are fine); weights in
kernel-group tiles [OC/NG][IC/KG][KH][KW][NG][KG] (fp16: NG 16, KG 32); depthwise [C/G][KH][KW][G] with G = 32
for fp16; outputs NC1HWC2 with C2 = 16/output element bytes (fp32: 4, fp16: 8).

Sources read: gregordinary/rocket-userspace @e0677862 (src/npu_regcmd.c, src/rocket_conv.c, include/rocket_conv.h,
include/npu_hw.h, src/rocket_matmul.c K-accumulation), mtx512/rk3588-npu @4723947 (src/npu_matmul.c,
include/npu_hw.h). Register values and formulas reproduced; no code copied.
"""
from __future__ import annotations
from dataclasses import dataclass
import numpy as np

from .stream import Addr, Buffer, Reg, Stream, align, ceil_div, raw_entry, U32

GN_SOURCE = "gregordinary/rocket-userspace src/npu_regcmd.c (gen_matmul_fp16/gen_matmul_task, gen_conv2d_fill/gen_conv2d_task), src/rocket_conv.c"
MTX_SOURCE = "mtx512/rk3588-npu src/npu_matmul.c gen_matmul_fp16/gen_matmul_task (vendor rknpu driver)"
GN_TASK_SRC = "gregordinary npu_regcmd.c gen_matmul_task/gen_conv2d_task"
MTX_TASK_SRC = "mtx512 npu_matmul.c gen_matmul_task"

# npu_hw.h (both projects): targets are BLOCK | PC_OP_01, the marker OP_40 = 0x41, op-enable OP_ENABLE = 0x81
T_PC, T_CNA, T_CORE, T_DPU, T_RDMA = 0x0101, 0x0201, 0x0801, 0x1001, 0x2001
T_MARKER, T_OP_ENABLE = 0x0041, 0x0081
PRECISION = {"int8": 0, "int16": 1, "fp16": 2, "bf16": 3, "int32": 4, "fp32": 5, "int4": 6, "tf32": 7}   # §1.1
CBUF_BANK_SIZE, CBUF_BANKS = 32768, 12
DW_GROUP_FP16 = 32    # rocket_conv.c conv_dw_group(): HW-confirmed G = 32 for fp16 (64 fails)
CONV_MIN_DATAIN_H = 4 # rocket_conv.c: a sub-input with fewer than 4 rows computes wrong on HW
GN_BO_SLACK = CBUF_BANK_SIZE  # rocket_conv.c conv_bo_ensure(..., bytes + CBUF_BANK): feature-DMA over-read slack

# ----------------------------------------------------------------------------------------------------------
# Layouts (rocket_fp16_ew_ppu.md §1)
# ----------------------------------------------------------------------------------------------------------

ELEMENT_BYTES = {"int4": 0.5, "int8": 1, "int16": 2, "fp16": 2, "bf16": 2, "tf32": 4, "fp32": 4, "int32": 4}
# §1.3 weight tile per input precision: (NG kernels per group, KG channels per group)
WEIGHT_GROUPS = {"int8": (32, 32), "int4": (64, 32), "fp16": (16, 32), "bf16": (16, 32), "int16": (16, 32), "tf32": (16, 16)}
DW_GROUPS = {"fp16": 32, "int8": 64}   # §1.3 depthwise channel group

def feature_c2(dtype:str) -> int:
  """Channels per 16-byte atom: 16 / element bytes (int4 32, int8 16, 16-bit 8, 32-bit 4)."""
  return int(16 / ELEMENT_BYTES[dtype])

def feature_index(c:int, h:int, w:int, H:int, W:int, c2:int) -> int:
  """Element index of (c, h, w) in an NC1HWC2 cube (gregordinary/mtx512 feature_data, 0-based)."""
  return (c // c2) * H * W * c2 + (h * W + w) * c2 + c % c2

def pack_feature(x:np.ndarray, dtype:str="fp16", channels:int|None=None, height:int|None=None) -> np.ndarray:
  """(C, H, W) -> flat NC1HWC2 element array with C zero-padded to `channels` (a multiple of C2) and H to `height`."""
  C, H, W = x.shape
  c2 = feature_c2(dtype)
  Cp = align(channels if channels is not None else C, c2)
  Hp = height if height is not None else H
  cube = np.zeros((Cp, Hp, W), dtype=x.dtype)
  cube[:C, :H] = x
  return np.ascontiguousarray(cube.reshape(Cp // c2, c2, Hp, W).transpose(0, 2, 3, 1)).reshape(-1)

def unpack_feature(flat:np.ndarray, C:int, H:int, W:int, dtype:str="fp16", height:int|None=None) -> np.ndarray:
  """Inverse of pack_feature: flat NC1HWC2 (cube height `height`, default H) -> (C, H, W)."""
  c2 = feature_c2(dtype)
  Cp, Hp = align(C, c2), height if height is not None else H
  cube = np.asarray(flat)[:Cp * Hp * W].reshape(Cp // c2, Hp, W, c2).transpose(0, 3, 1, 2).reshape(Cp, Hp, W)
  return cube[:C, :H].copy()

def weight_index(oc:int, ic:int, kh:int, kw:int, IC:int, KH:int, KW:int, NG:int, KG:int) -> int:
  """§1.3 (gregordinary weight_conv_fp16 / Mesa's reorder): ((((oc/NG)*ceil(IC/KG) + ic/KG)*KH + kh)*KW + kw)*NG*KG
  + (oc%NG)*KG + ic%KG, with IC the padded channel count."""
  return ((((oc // NG) * ceil_div(IC, KG) + ic // KG) * KH + kh) * KW + kw) * NG * KG + (oc % NG) * KG + ic % KG

def pack_weights_grouped(w:np.ndarray, NG:int, KG:int, OCp:int, ICp:int) -> np.ndarray:
  """(OC, IC, KH, KW) -> flat [OCp/NG][ICp/KG][KH][KW][NG][KG] with zero padding."""
  OC, IC, KH, KW = w.shape
  full = np.zeros((OCp, ICp, KH, KW), dtype=w.dtype)
  full[:OC, :IC] = w
  t = full.reshape(OCp // NG, NG, ICp // KG, KG, KH, KW).transpose(0, 2, 4, 5, 1, 3)
  return np.ascontiguousarray(t).reshape(-1)

def unpack_weights_grouped(flat:np.ndarray, OC:int, IC:int, KH:int, KW:int, NG:int, KG:int, OCp:int, ICp:int) -> np.ndarray:
  t = np.asarray(flat)[:OCp * ICp * KH * KW].reshape(OCp // NG, ICp // KG, KH, KW, NG, KG).transpose(0, 4, 1, 5, 2, 3)
  return t.reshape(OCp, ICp, KH, KW)[:OC, :IC].copy()

def dw_weight_index(c:int, kh:int, kw:int, KH:int, KW:int, G:int) -> int:
  """gregordinary weight_conv_dw_fp16 (0-based): ((c/G*KH + kh)*KW + kw)*G + c%G."""
  return ((c // G * KH + kh) * KW + kw) * G + c % G

def pack_weights_dw(w:np.ndarray, G:int, Cp:int) -> np.ndarray:
  """(C, KH, KW) -> flat [Cp/G][KH][KW][G]."""
  C, KH, KW = w.shape
  full = np.zeros((Cp, KH, KW), dtype=w.dtype)
  full[:C] = w
  return np.ascontiguousarray(full.reshape(Cp // G, G, KH, KW).transpose(0, 2, 3, 1)).reshape(-1)

def unpack_weights_dw(flat:np.ndarray, C:int, KH:int, KW:int, G:int, Cp:int) -> np.ndarray:
  t = np.asarray(flat)[:Cp * KH * KW].reshape(Cp // G, KH, KW, G).transpose(0, 3, 1, 2)
  return t.reshape(Cp, KH, KW)[:C].copy()

# ----------------------------------------------------------------------------------------------------------
# The register emitters (gen_matmul_task / gen_conv2d_task: identical sequences; mtx512's is the 108-entry original)
# ----------------------------------------------------------------------------------------------------------

@dataclass
class Desc:
  """The union of gregordinary's npu_cna_desc / npu_core_desc / npu_dpu_desc fields these generators set."""
  conv_mode: int; in_precision: int; proc_precision: int
  feature_grains: int; conv_x_stride: int; conv_y_stride: int; atrous_x: int; atrous_y: int
  datain_width: int; datain_height: int; datain_channel: int; dataout_width: int; dataout_height: int
  weight_width: int; weight_height: int; weight_kernels: int; weight_bytes_per_kernel: int; weight_bytes: int
  weight_bank: int; data_bank: int; data_entries: int
  pad_left: int; pad_top: int; line_stride: int; surf_stride: int
  dw_en: int; out_precision: int; fp32tofp16: int; size_e: int; od_bypass: int; bs_ow_op: int; surf_add: int
  dst_surf_stride: int
  weight_kernels_out: int = 0   # OC the CORE/DPU produce (kernels of the direct conv, channels of the depthwise)
  # gregordinary's K-accumulation (conv-fed fp16 EW add): None = plain path
  accumulate: bool = False
  ew_cfg: int = 0x108202C0; erdma_cfg: int = 0x40000008; rdma_fmc: int = 0x17D40
  ew_surf_stride: int = 0; ew_surf_notch: int = 0; ew_base_offset: int = 0

def _npuop(R:list[Reg], target:int, value, off:int, name:str, src:str):
  R.append(Reg(target, off, value if isinstance(value, Addr) else value & U32, name, src))

def gn_task_entries(d:Desc, src:str, input_slot="input", weights_slot="weights", output_slot="output", addend_slot="addend") -> list[Reg]:
  """gregordinary gen_matmul_task / gen_conv2d_task (same sequence; the conv one adds the ATROUS fields to
  CONV_CON3, DW_EN to CORE_MISC_CFG and conv_mode to DPU_RDMA FEATURE_MODE_CFG, all 0 for the matmul): 126 entries."""
  R: list[Reg] = []
  E = lambda t, v, o, n, why="": _npuop(R, t, v, o, n, src + (f"; {why}" if why else ""))
  E(T_DPU, 0xE, 0x4004, "DPU_S_POINTER", "0xE")
  E(T_RDMA, 0xE, 0x5004, "DPU_RDMA_S_POINTER", "0xE: arms DPU_RDMA (the MRDMA-trap fix)")
  E(T_CNA, (d.proc_precision & 7) << 7 | (d.in_precision & 7) << 4 | (d.conv_mode & 0xF), 0x100C, "CNA_CONV_CON1", "PROC fp16 | IN fp16 | CONV_MODE (3 dw)")
  assert d.feature_grains <= 0x3FF, "feature_grains exceeds the 10-bit field (generator refuses)"
  E(T_CNA, (d.feature_grains & 0x3FF) << 4, 0x1010, "CNA_CONV_CON2", "FEATURE_GRAINS (matmul M+1, conv IH+1, dw 50+sy+1); KERNEL_GROUP 0")
  E(T_CNA, (d.atrous_y & 0x1F) << 21 | (d.atrous_x & 0x1F) << 16 | (d.conv_y_stride & 7) << 3 | (d.conv_x_stride & 7), 0x1014,
    "CNA_CONV_CON3", "ATROUS_Y/X = dilation-1 | CONV_Y/X_STRIDE")
  E(T_CNA, (d.datain_width & 0x7FF) << 16 | (d.datain_height & 0x7FF), 0x1020, "CNA_DATA_SIZE0", "DATAIN_WIDTH (contiguous axis) | DATAIN_HEIGHT")
  E(T_CNA, ((d.datain_channel - 1) & 0xFFFF) << 16 | (d.datain_channel & 0xFFFF), 0x1024, "CNA_DATA_SIZE1", "(IC-1)<<16 | IC (padded)")
  E(T_CNA, d.dataout_width & 0x7FF, 0x1028, "CNA_DATA_SIZE2")
  E(T_CNA, (d.dataout_width * d.dataout_height) & 0x3FFFF, 0x102C, "CNA_DATA_SIZE3", "DATAOUT_ATOMICS")
  E(T_CNA, d.weight_bytes, 0x1030, "CNA_WEIGHT_SIZE0", "total weight bytes (unmasked)")
  E(T_CNA, d.weight_bytes_per_kernel & 0x7FFFF, 0x1034, "CNA_WEIGHT_SIZE1", "bytes per kernel = KW*KH*IC*2")
  E(T_CNA, (d.weight_width & 0x1F) << 24 | (d.weight_height & 0x1F) << 16 | (d.weight_kernels & 0x3FFF), 0x1038, "CNA_WEIGHT_SIZE2")
  E(T_CNA, (d.weight_bank & 0xF) << 4 | (d.data_bank & 0xF), 0x1040, "CNA_CBUF_CON0", "WEIGHT_BANK = 12 - data banks | DATA_BANK")
  E(T_CNA, d.data_entries & 0x1FFF, 0x1044, "CNA_CBUF_CON1", "DATA_ENTRIES = ceil(W*IC/32) for fp16")
  E(T_CNA, 1 << 3 | 1 << 1 | 1, 0x104C, "CNA_CVT_CON0", "DATA_SIGN|CVT_TYPE|CVT_BYPASS = 0xB")
  for k, off in enumerate((0x1050, 0x1054, 0x1058, 0x105C)): E(T_CNA, 1 << 16, off, f"CNA_CVT_CON{k + 1}", "CVT_SCALE 1")
  E(T_CNA, 0, 0x1060, "CNA_FC_CON0")
  E(T_CNA, 0, 0x1064, "CNA_FC_CON1")
  E(T_CNA, (d.pad_left & 0xF) << 4 | (d.pad_top & 0xF), 0x1068, "CNA_PAD_CON0", "PAD_LEFT | PAD_TOP (symmetric; bottom/right implied)")
  E(T_CNA, Addr(input_slot), 0x1070, "CNA_FEATURE_DATA_ADDR", "input IOVA")
  E(T_CNA, 0, 0x1074, "CNA_FC_CON2")
  E(T_CNA, 0xF << 16 | 0xF, 0x1078, "CNA_DMA_CON0", "burst 15/15")
  E(T_CNA, d.line_stride & 0xFFFFFFF, 0x107C, "CNA_DMA_CON1", "LINE_STRIDE = 4*W")
  E(T_CNA, d.surf_stride & 0xFFFFFFF, 0x1080, "CNA_DMA_CON2", "SURF_STRIDE = max(W*(H-4), 0)")
  E(T_CNA, (d.datain_width & 0x7FF) << 16 | (d.datain_height & 0x7FF), 0x1084, "CNA_FC_DATA_SIZE0", "DMA_WIDTH | DMA_HEIGHT")
  E(T_CNA, d.datain_channel & 0xFFFF, 0x1088, "CNA_FC_DATA_SIZE1", "DMA_CHANNEL")
  E(T_CNA, 0, 0x1100, "CNA_DCOMP_CTRL")
  E(T_CNA, 0, 0x1104, "CNA_DCOMP_REGNUM")
  E(T_CNA, Addr(weights_slot), 0x1110, "CNA_DCOMP_ADDR0", "weights IOVA")
  for k in range(16): E(T_CNA, 0, 0x1140 + 4 * k, f"CNA_DCOMP_AMOUNT{k}")
  E(T_CNA, 0, 0x1180, "CNA_CVT_CON5")
  E(T_CNA, 0, 0x1184, "CNA_PAD_CON1", "pad value 0 = fp16 +0.0")
  E(T_CORE, (d.proc_precision & 7) << 8 | (d.dw_en & 1) << 1 | 1, 0x3010, "CORE_MISC_CFG", "PROC fp16 | DW_EN | QD_EN: 0x201 / 0x203")
  E(T_CORE, ((d.dataout_height - 1) & 0xFFFF) << 16 | ((d.dataout_width - 1) & 0xFFFF), 0x3014, "CORE_DATAOUT_SIZE_0")
  E(T_CORE, (d.weight_kernels_out - 1) & 0xFFFF, 0x3018, "CORE_DATAOUT_SIZE_1", "OC - 1")
  E(T_CORE, 0, 0x301C, "CORE_CLIP_TRUNCATE")
  E(T_CORE, 0, 0x3030, "CORE_3030", "undocumented, must be 0")
  E(T_DPU, 0xF << 5 | (d.conv_mode & 3) << 3 | 2 << 1, 0x400C, "DPU_FEATURE_MODE_CFG", "BURST 15 | CONV_MODE | OUTPUT_MODE 2: 0x1E4 / 0x1FC")
  E(T_DPU, (d.out_precision & 7) << 29 | (d.in_precision & 7) << 26 | (d.proc_precision & 7), 0x4010, "DPU_DATA_FORMAT",
    "OUT fp32 0xA8000002 / fp16 0x48000002")
  E(T_DPU, 0, 0x4014, "DPU_OFFSET_PEND")
  E(T_DPU, Addr(output_slot), 0x4020, "DPU_DST_BASE_ADDR", "output IOVA")
  E(T_DPU, (d.dst_surf_stride & 0xFFFFFFF) << 4, 0x4024, "DPU_DST_SURF_STRIDE", "field OH*OW")
  E(T_DPU, (d.dataout_width - 1) & 0x1FFF, 0x4030, "DPU_DATA_CUBE_WIDTH")
  E(T_DPU, (d.dataout_height - 1) & 0x1FFF, 0x4034, "DPU_DATA_CUBE_HEIGHT")
  E(T_DPU, 0, 0x4038, "DPU_DATA_CUBE_NOTCH_ADDR")
  ch = (d.weight_kernels_out - 1) & 0x1FFF
  E(T_DPU, ch << 16 | ch, 0x403C, "DPU_DATA_CUBE_CHANNEL", "(OC-1)<<16 | (OC-1)")
  E(T_DPU, 1 << 6 | 1 << 4 | 1 << 1 | 1, 0x4040, "DPU_BS_CFG", "all bypassed = 0x53")
  E(T_DPU, 0, 0x4044, "DPU_BS_ALU_CFG")
  E(T_DPU, 0, 0x4048, "DPU_BS_MUL_CFG")
  E(T_DPU, 0, 0x404C, "DPU_BS_RELUX_CMP_VALUE")
  se = d.size_e & 7
  E(T_DPU, se << 8 | se << 5 | se << 2 | (d.od_bypass & 1) << 1, 0x4050, "DPU_BS_OW_CFG",
    "SIZE_E 3 fp32 / 1 fp16 / 3 dw | OD_BYPASS (0 dw): 0x36E / 0x126 / 0x36C")
  E(T_DPU, d.bs_ow_op & 0xFFFF, 0x4054, "DPU_BS_OW_OP", "0, dw 0x80")
  E(T_DPU, (d.weight_kernels_out - 1) & 0x1FFF, 0x4058, "DPU_WDMA_SIZE_0", "CHANNEL_WDMA = OC - 1")
  E(T_DPU, ((d.dataout_height - 1) & 0x1FFF) << 16 | ((d.dataout_width - 1) & 0x1FFF), 0x405C, "DPU_WDMA_SIZE_1")
  E(T_DPU, 1 << 6 | 1 << 4 | 1 << 1 | 1, 0x4060, "DPU_BN_CFG", "all bypassed = 0x53")
  E(T_DPU, 0, 0x4064, "DPU_BN_ALU_CFG")
  E(T_DPU, 0, 0x4068, "DPU_BN_MUL_CFG")
  E(T_DPU, 0, 0x406C, "DPU_BN_RELUX_CMP_VALUE")
  E(T_DPU, d.ew_cfg if d.accumulate else (1 << 9 | 1 << 8 | 1 << 7 | 1 << 1 | 1), 0x4070, "DPU_EW_CFG",
    "bypassed 0x383; K-accumulation ADD 0x108202C0 (per-pixel 16-bit operand from ERDMA)")
  E(T_DPU, 0, 0x4074, "DPU_EW_CVT_OFFSET_VALUE")
  E(T_DPU, 1, 0x4078, "DPU_EW_CVT_SCALE_VALUE", "EW_OP_CVT_SCALE 1 (identity)")
  E(T_DPU, 0, 0x407C, "DPU_EW_RELUX_CMP_VALUE")
  E(T_DPU, 0, 0x4080, "DPU_OUT_CVT_OFFSET")
  E(T_DPU, (d.fp32tofp16 & 1) << 16 | 1, 0x4084, "DPU_OUT_CVT_SCALE", "scale 1 (| FP32TOFP16_EN for fp16 out): 0x1 / 0x10001")
  E(T_DPU, 0, 0x4088, "DPU_OUT_CVT_SHIFT")
  for k in range(8): E(T_DPU, 0, 0x4090 + 4 * k, f"DPU_EW_OP_VALUE_{k}")
  E(T_DPU, (d.surf_add & 0xFFFFFFF) << 4, 0x40C0, "DPU_SURFACE_ADD", "field OH*OW*4 fp32 / *2 fp16 (dw *2 more)")
  E(T_DPU, 0, 0x40C4, "DPU_40C4", "undocumented, 0")
  for name, off in (("DPU_LUT_ACCESS_CFG", 0x4100), ("DPU_LUT_ACCESS_DATA", 0x4104), ("DPU_LUT_CFG", 0x4108), ("DPU_LUT_INFO", 0x410C),
                    ("DPU_LUT_LE_START", 0x4110), ("DPU_LUT_LE_END", 0x4114), ("DPU_LUT_LO_START", 0x4118), ("DPU_LUT_LO_END", 0x411C),
                    ("DPU_LUT_LE_SLOPE_SCALE", 0x4120), ("DPU_LUT_LE_SLOPE_SHIFT", 0x4124), ("DPU_LUT_LO_SLOPE_SCALE", 0x4128),
                    ("DPU_LUT_LO_SLOPE_SHIFT", 0x412C)):
    E(T_DPU, 0, off, name)
  E(T_RDMA, (d.dataout_width - 1) & 0x1FFF, 0x500C, "DPU_RDMA_DATA_CUBE_WIDTH")
  E(T_RDMA, (d.dataout_height - 1) & 0x1FFF, 0x5010, "DPU_RDMA_DATA_CUBE_HEIGHT")
  E(T_RDMA, (d.weight_kernels_out - 1) & 0x1FFF, 0x5014, "DPU_RDMA_DATA_CUBE_CHANNEL")
  E(T_RDMA, Addr(addend_slot) if d.accumulate else 0, 0x5018, "DPU_RDMA_SRC_BASE_ADDR", "MRDMA: addend IOVA when accumulating, else 0")
  E(T_RDMA, 0, 0x501C, "DPU_RDMA_BRDMA_CFG", "no bias read")
  E(T_RDMA, 0, 0x5020, "DPU_RDMA_BS_BASE_ADDR")
  E(T_RDMA, 0, 0x5028, "DPU_RDMA_NRDMA_CFG")
  E(T_RDMA, 0, 0x502C, "DPU_RDMA_BN_BASE_ADDR")
  if d.accumulate:
    E(T_RDMA, d.erdma_cfg, 0x5034, "DPU_RDMA_ERDMA_CFG", "per pixel, 16-bit: 0x40000008")
    E(T_RDMA, Addr(addend_slot, d.ew_base_offset), 0x5038, "DPU_RDMA_EW_BASE_ADDR", "addend IOVA + one surface (OW*OH*16)")
    E(T_RDMA, d.ew_surf_stride, 0x5040, "DPU_RDMA_EW_SURF_STRIDE", "field max(OW*OH, 12)")
    fmc = d.rdma_fmc
  else:
    E(T_RDMA, 1, 0x5034, "DPU_RDMA_ERDMA_CFG", "ERDMA_DISABLE")
    E(T_RDMA, 0, 0x5038, "DPU_RDMA_EW_BASE_ADDR")
    E(T_RDMA, 0, 0x5040, "DPU_RDMA_EW_SURF_STRIDE")
    fmc = 0xF << 11 | 1 << 4 | ((1 << 3) if d.fp32tofp16 else 0) | (d.conv_mode & 3) << 1
  E(T_RDMA, fmc, 0x5044, "DPU_RDMA_FEATURE_MODE_CFG",
    "BURST 15 | MRDMA_DISABLE (| MRDMA_FP16TOFP32 fp16 out | CONV_MODE dw): 0x7810/0x7818/0x781E; accumulate 0x17D40")
  E(T_RDMA, 0, 0x5048, "DPU_RDMA_SRC_DMA_CFG")
  E(T_RDMA, d.ew_surf_notch if d.accumulate else 0, 0x504C, "DPU_RDMA_SURF_NOTCH")
  E(T_RDMA, 0, 0x5064, "DPU_RDMA_PAD_CFG")
  E(T_RDMA, 1 << 24 | 1 << 16 | 1 << 8 | 1, 0x5068, "DPU_RDMA_WEIGHT", "0x01010101")
  E(T_RDMA, d.ew_surf_notch if d.accumulate else 0, 0x506C, "DPU_RDMA_EW_SURF_NOTCH")
  R.append(raw_entry(0, "PC_TAIL_NOP", src + "; NPUOP(OP_NONE, 0, 0)"))
  E(T_PC, 0, 0x0014, "PC_REGISTER_AMOUNTS", "0: no chained task")
  R.append(raw_entry(T_MARKER << 48, "PC_MARKER_0041", src + "; NPUOP(OP_40, 0, 0)"))
  E(T_OP_ENABLE, 0x1D, 0x0008, "PC_OPERATION_ENABLE", "0x1D = CNA|CORE|DPU|DPU_RDMA")
  assert len(R) == 126, len(R)
  return R

def mtx_task_entries(d:Desc, src:str=MTX_TASK_SRC) -> list[Reg]:
  """mtx512 gen_matmul_task (vendor driver): 108 entries, no DPU_RDMA writes at all, op-enable 0x0D
  (PC_ENABLE_DPU | PC_ENABLE_CNA | PC_ENABLE: bit3 DPU, bit2 CORE, bit0 CNA; DPU_RDMA not started)."""
  gn = gn_task_entries(d, src)
  keep = [r for r in gn if r.target != T_RDMA and r.name not in ("PC_OPERATION_ENABLE",)]
  keep.append(Reg(T_OP_ENABLE, 0x0008, 0x0D, "PC_OPERATION_ENABLE", src + "; PC_ENABLE_DPU|PC_ENABLE_CNA|PC_ENABLE = 0x0D"))
  assert len(keep) == 108, len(keep)
  return keep

# ----------------------------------------------------------------------------------------------------------
# fp16 matmul (gen_matmul_fp16): C[M, N] = A[M, K] @ B[N, K]^T
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class MatmulProblem:
  a: np.ndarray                 # (M, K) float16
  b: np.ndarray                 # (N, K) float16: N kernels of 1x1xK
  out_fp16: bool = False        # False: fp32 output (DPU OUT fp32); True: FP32TOFP16_EN
  addend: np.ndarray|None = None  # (M, N) float16: gregordinary's fused EW ADD (fp16 output only)

  def __post_init__(self):
    object.__setattr__(self, "a", np.ascontiguousarray(self.a, dtype=np.float16))
    object.__setattr__(self, "b", np.ascontiguousarray(self.b, dtype=np.float16))
    assert self.a.ndim == 2 and self.b.ndim == 2 and self.a.shape[1] == self.b.shape[1]
    if self.addend is not None:
      object.__setattr__(self, "addend", np.ascontiguousarray(self.addend, dtype=np.float16))
      assert self.out_fp16 and self.addend.shape == (self.M, self.N), "the K-accumulation ADD is programmed for fp16 output"
  M = property(lambda s: s.a.shape[0]); K = property(lambda s: s.a.shape[1]); N = property(lambda s: s.b.shape[0])
  # hardware alignment (§1.6): M %4 (height < 4 computes wrong), K %32, N %16; the host zero-pads
  Mp = property(lambda s: max(align(s.M, 4), 4)); Kp = property(lambda s: align(s.K, 32)); Np = property(lambda s: align(s.N, 16))

def _matmul_desc(p:MatmulProblem) -> Desc:
  """gen_matmul_fp16 for m = Mp, k = Kp, n = Np."""
  m, k, n = p.Mp, p.Kp, p.Np
  fd_bytes = 1 * m * k * 2
  fd_banks = ceil_div(fd_bytes, CBUF_BANK_SIZE)
  if fd_banks > CBUF_BANKS - 1: raise ValueError(f"feature {fd_bytes} B needs {fd_banks} CBUF banks > 11 (generator returns -1)")
  if k * 2 > CBUF_BANK_SIZE: raise ValueError("one kernel exceeds a CBUF bank (generator returns -2)")
  d = Desc(conv_mode=0, in_precision=2, proc_precision=2, feature_grains=m + 1, conv_x_stride=1, conv_y_stride=1,
           atrous_x=0, atrous_y=0, datain_width=1, datain_height=m, datain_channel=k, dataout_width=1, dataout_height=m,
           weight_width=1, weight_height=1, weight_kernels=n, weight_bytes_per_kernel=k * 2, weight_bytes=k * 2 * n,
           weight_bank=CBUF_BANKS - fd_banks, data_bank=fd_banks, data_entries=ceil_div(1 * k, 32), pad_left=0, pad_top=0,
           line_stride=1 * 4, surf_stride=max(4 * (m // 4 - 1), 0), dw_en=0,
           out_precision=PRECISION["fp16" if p.out_fp16 else "fp32"], fp32tofp16=int(p.out_fp16),
           size_e=1 if p.out_fp16 else 3, od_bypass=1, bs_ow_op=0, surf_add=m * (2 if p.out_fp16 else 4), dst_surf_stride=m * 1)
  d.weight_kernels_out = n
  if p.addend is not None:   # src/npu_regcmd.c gen_matmul_fp16 accumulate block (output_w = 1, output_h = M)
    hw = m
    ew_stride = max(hw, 12)
    d.accumulate, d.ew_base_offset = True, hw * 16
    d.ew_surf_stride, d.ew_surf_notch = ew_stride << 4, ew_stride << 4
    d.ew_cfg, d.erdma_cfg = 0x108202C0, 0x40000008
    d.rdma_fmc = (15 << 11) | (5 << 8) | (PRECISION["fp16"] << 15) | (PRECISION["fp16"] << 5)   # 0x17D40
  return d

def decode_matmul(p:MatmulProblem, buf:bytes) -> np.ndarray:
  """Output cube W=1, H=Mp, C=Np: fp32 [Np/4][Mp][4], fp16 [Np/8][Mp][8] -> float32 (M, N)."""
  dt = np.float16 if p.out_fp16 else np.float32
  flat = np.frombuffer(buf, dtype=dt)
  out = unpack_feature(flat, p.Np, p.Mp, 1, "fp16" if p.out_fp16 else "fp32")[:, :, 0]   # (Np, Mp)
  return out[:p.N, :p.M].T.astype(np.float32)

def build_matmul_fp16(p:MatmulProblem, variant:str="gn") -> Stream:
  assert variant in ("gn", "mtx")
  if variant == "mtx": assert p.addend is None, "mtx512's generator has no EW path"
  if p.addend is not None: assert p.Mp >= 12, "gregordinary: the EW surface-stride floor max(M, 12) needs M >= 12"
  d = _matmul_desc(p)
  regs = gn_task_entries(d, GN_TASK_SRC) if variant == "gn" else mtx_task_entries(d)
  a = pack_feature(p.a.T[:, :, None], "fp16", channels=p.Kp, height=p.Mp)          # A as cube W=1, H=M, C=K
  w = pack_weights_grouped(p.b[:, :, None, None], *WEIGHT_GROUPS["fp16"], p.Np, p.Kp)  # weight_fp16 [N/16][K/32][16][32]
  out_bytes = p.Np * p.Mp * (2 if p.out_fp16 else 4)
  bufs = {"input": Buffer("input", a.size * 2, a.astype("<f2").tobytes(), alloc_size=a.size * 2 + GN_BO_SLACK),
          "weights": Buffer("weights", w.size * 2, w.astype("<f2").tobytes(), alloc_size=w.size * 2 + GN_BO_SLACK),
          "output": Buffer("output", out_bytes, None, alloc_size=out_bytes + GN_BO_SLACK),
          "regcmd": Buffer("regcmd", Stream.regcmd_size_for([len(regs)]))}
  in_slots = ("input", "weights", "regcmd")
  if p.addend is not None:
    e = pack_feature(p.addend.T[:, :, None], "fp16", channels=p.Np, height=p.Mp)
    bufs["addend"] = Buffer("addend", e.size * 2, e.astype("<f2").tobytes(), alloc_size=e.size * 2 + GN_BO_SLACK)
    in_slots += ("addend",)
  return Stream(name=f"{variant}_matmul_fp16_{p.M}x{p.K}x{p.N}_{'f16' if p.out_fp16 else 'f32'}{'_add' if p.addend is not None else ''}",
                source=GN_SOURCE if variant == "gn" else MTX_SOURCE, buffers=bufs, task_regs=[regs], in_slots=in_slots,
                out_slots=("output",), output_slot="output", decode=lambda b, p=p: decode_matmul(p, b),
                meta=dict(problem=p, desc=d, variant=variant))

# ----------------------------------------------------------------------------------------------------------
# fp16 conv2d (gen_conv2d_fill), direct and depthwise
# ----------------------------------------------------------------------------------------------------------

def conv_out_dim(n:int, k:int, stride:int, pad:int, dil:int) -> int:
  """include/rocket_conv.h rocket_conv_out_dim: (in + 2*pad - (dil*(k-1)+1)) / stride + 1 (symmetric pad)."""
  return (n + 2 * pad - (dil * (k - 1) + 1)) // stride + 1

@dataclass(frozen=True, eq=False)
class Fp16ConvProblem:
  """input (IC, IH, IW) fp16; weights (OC, IC, KH, KW) fp16, depthwise (C, 1, KH, KW) or (C, KH, KW) with OC == C.
  Padding is gregordinary's symmetric pad_top/pad_left (bottom/right implied by the output size)."""
  input: np.ndarray
  weights: np.ndarray
  stride: tuple[int, int] = (1, 1)    # (y, x)
  pad: tuple[int, int] = (0, 0)       # (top, left)
  dilation: tuple[int, int] = (1, 1)  # (y, x)
  depthwise: bool = False
  out_fp16: bool = True               # rocket_conv.c always runs fp32tofp16 = 1; fp32 out is the generator's other branch

  def __post_init__(self):
    object.__setattr__(self, "input", np.ascontiguousarray(self.input, dtype=np.float16))
    w = np.asarray(self.weights, dtype=np.float16)
    if self.depthwise and w.ndim == 4: assert w.shape[1] == 1; w = w[:, 0]
    object.__setattr__(self, "weights", np.ascontiguousarray(w))
    if self.depthwise:
      assert w.ndim == 3 and w.shape[0] == self.IC, "depthwise weights (C, KH, KW)"
      assert self.out_fp16, "depthwise fp32 output is not covered by the sources (gregordinary validated fp16 out only)"
    else: assert w.ndim == 4 and w.shape[1] == self.IC
    assert self.OH > 0 and self.OW > 0
  IC = property(lambda s: s.input.shape[0]); IH = property(lambda s: s.input.shape[1]); IW = property(lambda s: s.input.shape[2])
  OC = property(lambda s: s.IC if s.depthwise else s.weights.shape[0])
  KH = property(lambda s: s.weights.shape[-2]); KW = property(lambda s: s.weights.shape[-1])
  OH = property(lambda s: conv_out_dim(s.IH, s.KH, s.stride[0], s.pad[0], s.dilation[0]))
  OW = property(lambda s: conv_out_dim(s.IW, s.KW, s.stride[1], s.pad[1], s.dilation[1]))
  # host-side padding (rocket_conv.c): direct IC -> %32, OC -> %16; depthwise C -> %G (gregordinary requires C%32 == 0,
  # we zero-pad it: the stream is then that of a validated C%32 == 0 depthwise conv); input rows -> >= 4
  ICp = property(lambda s: align(s.IC, DW_GROUP_FP16 if s.depthwise else 32))
  OCp = property(lambda s: s.ICp if s.depthwise else align(s.OC, 16))
  IHj = property(lambda s: max(s.IH, CONV_MIN_DATAIN_H))

def _conv_desc(p:Fp16ConvProblem) -> Desc:
  """gen_conv2d_fill(params, depthwise) with ic = ICp, ih = IHj, oc = OCp (what conv2d_one_job passes)."""
  IC, IH, IW, OC, OH, OW, KH, KW = p.ICp, p.IHj, p.IW, p.OCp, p.OH, p.OW, p.KH, p.KW
  sy, sx = p.stride
  dy, dx = p.dilation
  fd_bytes = IW * IH * IC * 2
  fd_banks = ceil_div(fd_bytes, CBUF_BANK_SIZE)
  if fd_banks > CBUF_BANKS - 1: raise ValueError(f"feature needs {fd_banks} banks > 11 (generator returns -1; the host tiles)")
  if p.depthwise:
    G = DW_GROUP_FP16
    cpad = ceil_div(IC, G) * G
    kernels, bpk, wbytes = 1, KW * KH * IC * 2, cpad * KH * KW * 2
    if fd_banks + ceil_div(wbytes, CBUF_BANK_SIZE) > CBUF_BANKS: raise ValueError("depthwise weights do not fit (returns -2)")
  else:
    kernels, bpk = OC, KW * KH * IC * 2
    wbytes = bpk * kernels
    if bpk > CBUF_BANK_SIZE: raise ValueError("one kernel exceeds a CBUF bank (returns -2)")
  fp16_out = p.out_fp16
  d = Desc(conv_mode=3 if p.depthwise else 0, in_precision=2, proc_precision=2,
           feature_grains=(50 + sy + 1) if p.depthwise else IH + 1, conv_x_stride=sx, conv_y_stride=sy,
           atrous_x=dx - 1, atrous_y=dy - 1, datain_width=IW, datain_height=IH, datain_channel=IC,
           dataout_width=OW, dataout_height=OH, weight_width=KW, weight_height=KH, weight_kernels=kernels,
           weight_bytes_per_kernel=bpk, weight_bytes=wbytes, weight_bank=CBUF_BANKS - fd_banks, data_bank=fd_banks,
           data_entries=ceil_div(IW * IC, 32), pad_left=p.pad[1], pad_top=p.pad[0], line_stride=IW * 4,
           surf_stride=max(IW * 4 * (IH - 4) // 4, 0), dw_en=int(p.depthwise),
           out_precision=PRECISION["fp16" if fp16_out else "fp32"], fp32tofp16=int(fp16_out),
           size_e=1 if fp16_out else 3, od_bypass=1, bs_ow_op=0, surf_add=OH * OW * (2 if fp16_out else 4), dst_surf_stride=OH * OW)
  d.weight_kernels_out = OC
  if p.depthwise:   # "Depthwise output-writer fixes": size_e 3, OD_BYPASS 0, surf_add *2, grains 50+sy+1, BS_OW_OP 0x80
    d.size_e, d.od_bypass, d.bs_ow_op = 3, 0, 0x80
    d.surf_add *= 2
  return d

def pack_conv_input(p:Fp16ConvProblem) -> np.ndarray:
  return pack_feature(p.input, "fp16", channels=p.ICp, height=p.IHj)

def pack_conv_weights(p:Fp16ConvProblem) -> np.ndarray:
  if p.depthwise: return pack_weights_dw(p.weights, DW_GROUP_FP16, p.ICp)
  return pack_weights_grouped(p.weights, *WEIGHT_GROUPS["fp16"], p.OCp, p.ICp)

def decode_conv(p:Fp16ConvProblem, buf:bytes) -> np.ndarray:
  """Output cube (OCp, OH, OW) NC1HWC2 (fp16 C2 8 / fp32 C2 4) -> float32 (OC, OH, OW)."""
  dt = np.float16 if p.out_fp16 else np.float32
  flat = np.frombuffer(buf, dtype=dt)
  return unpack_feature(flat, p.OCp, p.OH, p.OW, "fp16" if p.out_fp16 else "fp32")[:p.OC].astype(np.float32)

def build_conv2d_fp16(p:Fp16ConvProblem) -> Stream:
  d = _conv_desc(p)
  regs = gn_task_entries(d, GN_TASK_SRC)
  x, w = pack_conv_input(p), pack_conv_weights(p)
  out_bytes = p.OCp * p.OH * p.OW * (2 if p.out_fp16 else 4)
  bufs = {"input": Buffer("input", x.size * 2, x.astype("<f2").tobytes(), alloc_size=x.size * 2 + GN_BO_SLACK),
          "weights": Buffer("weights", w.size * 2, w.astype("<f2").tobytes(), alloc_size=w.size * 2 + GN_BO_SLACK),
          "output": Buffer("output", out_bytes, None, alloc_size=out_bytes + GN_BO_SLACK),
          "regcmd": Buffer("regcmd", Stream.regcmd_size_for([len(regs)]))}
  kind = "dw" if p.depthwise else "conv"
  return Stream(name=f"gn_{kind}2d_fp16_{p.IC}x{p.IH}x{p.IW}_k{p.KH}x{p.KW}_s{p.stride[0]}{p.stride[1]}_p{p.pad[0]}{p.pad[1]}"
                     f"_d{p.dilation[0]}{p.dilation[1]}_oc{p.OC}_{'f16' if p.out_fp16 else 'f32'}",
                source=GN_SOURCE, buffers=bufs, task_regs=[regs], in_slots=("input", "weights", "regcmd"), out_slots=("output",),
                output_slot="output", decode=lambda b, p=p: decode_conv(p, b), meta=dict(problem=p, desc=d))

# ----------------------------------------------------------------------------------------------------------
# Trap streams (rocket_fp16_ew_ppu.md §6.B): must fail (hang -> job timeout), not compute
# ----------------------------------------------------------------------------------------------------------

def mrdma_trap(stream:Stream) -> Stream:
  """MRDMA trap (gregordinary "THE DPU_RDMA / MRDMA TRAP", §6.B): DPU fed by the conv (FLYING_MODE 0), DPU_RDMA in the
  op-enable mask (0x1D), DPU_RDMA FEATURE_MODE_CFG.MRDMA_DISABLE = 0 and no COMB_USE -> MRDMA waits forever."""
  reg = stream.find(0, "DPU_RDMA_FEATURE_MODE_CFG")
  return stream.replace("DPU_RDMA_FEATURE_MODE_CFG", reg.value & ~(1 << 4) & ~(7 << 8))

def mtx_list_with_rdma_enabled(p:MatmulProblem) -> Stream:
  """mtx512's 108-entry list (no DPU_RDMA writes) with op-enable 0x1D instead of 0x0D, run on a fresh register file
  (DPU_RDMA registers 0: MRDMA enabled, no COMB_USE): what gregordinary hit first on mainline -> hang."""
  s = build_matmul_fp16(p, "mtx")
  return s.replace("PC_OPERATION_ENABLE", 0x1D)

def ew_armed_erdma_disabled(p:MatmulProblem) -> Stream:
  """§6.B: EW operand path armed (EW not bypassed, OP_SRC = 1, COMB_USE 5) but ERDMA disabled -> hang."""
  assert p.addend is not None
  return build_matmul_fp16(p, "gn").replace("DPU_RDMA_ERDMA_CFG", 0x1)
