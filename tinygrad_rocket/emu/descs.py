"""Decoding the persistent register file into typed task descriptions, with the hardware's failure modes.

Every register field the emulator reads is read here, by name through tinygrad_rocket.regs, and only fields declared
in `DECODED_FIELDS` may be read (tests check that every declared field is exercised). Decoding raises:
- HangError (core.py) for register combinations the hardware hangs on (the job times out, nothing is written):
  rocket_fp16_ew_ppu.md §6.B and gregordinary/rockchip-npu-notes (GN) where cited;
- UnsupportedConfig for combinations whose hardware behaviour is unknown, or documented as computing wrong results
  that the emulator does not reproduce: the job fails with that explicit reason instead of a silently "fixed" answer.
"""
from __future__ import annotations
from dataclasses import dataclass
from typing import Mapping
from tinygrad_rocket.regs import read_field
from tinygrad_rocket.regs.values import PRECISION
from tinygrad_rocket.emu.core import BlockExecutionNotImplemented
from tinygrad_rocket.emu import layouts

class UnsupportedConfig(BlockExecutionNotImplemented):
  """The task's registers ask for something whose hardware result is unknown or known to be wrong (and not
  reproduced): the emulator fails the job with this reason rather than compute an answer the board would not give."""
  def __init__(self, reason:str):
    self.reason = reason
    super().__init__(0, reason)
  def __str__(self) -> str: return f"unsupported register configuration: {self.reason}"

PREC_NAME = dict(PRECISION)                      # code -> name
ELEMENT_BYTES = {"int8": 1, "int16": 2, "fp16": 2, "bf16": 2, "int32": 4, "fp32": 4, "tf32": 4}
FLOAT_PRECS = ("fp16", "bf16", "fp32", "tf32")
# rocket_fp16_ew_ppu.md §1.3: weight tile (NG kernels per group, KG channels per group) per CNA precision, and the
# depthwise channel group (fp16 32 [HW, GN], int8 64 [Mesa]; bf16 assumed like fp16: same element size ⚠).
WEIGHT_GROUPS = {"int8": (32, 32), "fp16": (16, 32), "bf16": (16, 32), "tf32": (16, 16)}
DW_GROUPS = {"int8": 64, "fp16": 32, "bf16": 32}
# DPU IN/PROC precision that goes with each CNA precision (tf32: DPU at fp32, §1.1 / §2.1)
DPU_PREC_FOR_CNA = {"int8": "int8", "fp16": "fp16", "bf16": "bf16", "tf32": "fp32"}

# --------------------------------------------------------------------------------------------------------------
# Field access
# --------------------------------------------------------------------------------------------------------------
def _f(block:str, reg:str, *fields:str) -> set[tuple[str, str, str]]: return {(block, reg, f) for f in fields}

DECODED_FIELDS: frozenset[tuple[str, str, str]] = frozenset().union(
  # CNA
  _f("CNA", "CONV_CON1", "NONALIGN_DMA", "GROUP_LINE_OFF", "DECONV", "ARGB_IN", "PROC_PRECISION", "IN_PRECISION", "CONV_MODE"),
  _f("CNA", "CONV_CON3", "NN_MODE", "ATROUS_Y_DILATION", "ATROUS_X_DILATION", "CONV_Y_STRIDE", "CONV_X_STRIDE"),
  _f("CNA", "DATA_SIZE0", "DATAIN_WIDTH", "DATAIN_HEIGHT"),
  _f("CNA", "DATA_SIZE1", "DATAIN_CHANNEL_REAL", "DATAIN_CHANNEL"),
  _f("CNA", "DATA_SIZE2", "DATAOUT_WIDTH"),
  _f("CNA", "DATA_SIZE3", "SURF_MODE", "DATAOUT_ATOMICS"),
  _f("CNA", "WEIGHT_SIZE0", "WEIGHT_BYTES"),
  _f("CNA", "WEIGHT_SIZE1", "WEIGHT_BYTES_PER_KERNEL"),
  _f("CNA", "WEIGHT_SIZE2", "WEIGHT_WIDTH", "WEIGHT_HEIGHT", "WEIGHT_KERNELS"),
  _f("CNA", "CBUF_CON0", "WEIGHT_REUSE", "DATA_REUSE", "FC_DATA_BANK", "WEIGHT_BANK", "DATA_BANK"),
  _f("CNA", "CBUF_CON1", "DATA_ENTRIES"),
  # the 1-channel pixel path converts channel 0 with the first converter set (CVT_CON1, CVT_TRUNCATE_0) [inf: Mesa
  # writes the 4 sets identically]; the other sets are not read
  _f("CNA", "CVT_CON0", "CVT_TRUNCATE_0", "DATA_SIGN", "ROUND_TYPE", "CVT_TYPE", "CVT_BYPASS"),
  _f("CNA", "CVT_CON1", "CVT_SCALE0", "CVT_OFFSET0"),
  _f("CNA", "CVT_CON5", "PER_CHANNEL_CVT_EN"),
  _f("CNA", "FC_CON0", "FC_SKIP_EN"),
  _f("CNA", "FC_CON1", "DATA_OFFSET"),
  _f("CNA", "FC_CON2", "WEIGHT_OFFSET"),
  _f("CNA", "PAD_CON0", "PAD_LEFT", "PAD_TOP"),
  _f("CNA", "PAD_CON1", "PAD_VALUE"),
  _f("CNA", "FEATURE_DATA_ADDR", "FEATURE_BASE_ADDR"),
  _f("CNA", "DMA_CON1", "LINE_STRIDE"),
  _f("CNA", "DMA_CON2", "SURF_STRIDE"),
  _f("CNA", "DCOMP_CTRL", "DECOMP_CONTROL"),
  _f("CNA", "DCOMP_ADDR0", "DECOMPRESS_ADDR0"),
  # CORE
  _f("CORE", "MISC_CFG", "PROC_PRECISION", "DW_EN", "QD_EN"),
  _f("CORE", "DATAOUT_SIZE_0", "DATAOUT_HEIGHT", "DATAOUT_WIDTH"),
  _f("CORE", "DATAOUT_SIZE_1", "DATAOUT_CHANNEL"),
  _f("CORE", "CLIP_TRUNCATE", "ROUND_TYPE", "CLIP_TRUNCATE"),
  _f("CORE", "UNDOC_3030", "VALUE"),
  # DPU
  _f("DPU", "FEATURE_MODE_CFG", "TP_EN", "CONV_MODE", "OUTPUT_MODE", "FLYING_MODE"),
  _f("DPU", "DATA_FORMAT", "OUT_PRECISION", "IN_PRECISION", "EW_TRUNCATE_NEG", "BN_MUL_SHIFT_VALUE_NEG",
     "BS_MUL_SHIFT_VALUE_NEG", "MC_SURF_OUT", "PROC_PRECISION"),
  _f("DPU", "DST_BASE_ADDR", "DST_BASE_ADDR"),
  _f("DPU", "DST_SURF_STRIDE", "DST_SURF_STRIDE"),
  _f("DPU", "DATA_CUBE_WIDTH", "WIDTH"),
  _f("DPU", "DATA_CUBE_HEIGHT", "MINMAX_CTL", "HEIGHT"),
  _f("DPU", "DATA_CUBE_NOTCH_ADDR", "NOTCH_ADDR_1", "NOTCH_ADDR_0"),
  _f("DPU", "DATA_CUBE_CHANNEL", "ORIG_CHANNEL", "CHANNEL"),
  *(_f("DPU", f"{p}_CFG", f"{p}_ALU_ALGO", f"{p}_ALU_SRC", f"{p}_RELUX_EN", f"{p}_RELU_BYPASS", f"{p}_MUL_PRELU",
       f"{p}_MUL_BYPASS", f"{p}_ALU_BYPASS", f"{p}_BYPASS") for p in ("BS", "BN")),
  *(_f("DPU", f"{p}_ALU_CFG", f"{p}_ALU_OPERAND") for p in ("BS", "BN")),
  *(_f("DPU", f"{p}_MUL_CFG", f"{p}_MUL_OPERAND", f"{p}_MUL_SHIFT_VALUE", f"{p}_TRUNCATE_SRC", f"{p}_MUL_SRC") for p in ("BS", "BN")),
  *(_f("DPU", f"{p}_RELUX_CMP_VALUE", f"{p}_RELUX_CMP_DAT") for p in ("BS", "BN")),
  _f("DPU", "BS_OW_CFG", "TP_ORG_EN", "SIZE_E_2", "SIZE_E_1", "SIZE_E_0", "OD_BYPASS", "OW_SRC"),
  _f("DPU", "BS_OW_OP", "OW_OP"),
  _f("DPU", "WDMA_SIZE_0", "TP_PRECISION", "CHANNEL_WDMA"),
  _f("DPU", "WDMA_SIZE_1", "HEIGHT_WDMA", "WIDTH_WDMA"),
  _f("DPU", "EW_CFG", "EW_CVT_TYPE", "EW_CVT_ROUND", "EW_DATA_MODE", "EDATA_SIZE", "EW_ALU_ALGO", "EW_RELUX_EN",
     "EW_RELU_BYPASS", "EW_OP_CVT_BYPASS", "EW_LUT_BYPASS", "EW_OP_SRC", "EW_MUL_PRELU", "EW_OP_TYPE", "EW_OP_BYPASS",
     "EW_BYPASS"),
  _f("DPU", "EW_CVT_OFFSET_VALUE", "EW_OP_CVT_OFFSET"),
  _f("DPU", "EW_CVT_SCALE_VALUE", "EW_TRUNCATE", "EW_OP_CVT_SHIFT", "EW_OP_CVT_SCALE"),
  _f("DPU", "EW_RELUX_CMP_VALUE", "EW_RELUX_CMP_DAT"),
  _f("DPU", "OUT_CVT_OFFSET", "OUT_CVT_OFFSET"),
  _f("DPU", "OUT_CVT_SCALE", "FP32TOFP16_EN", "OUT_CVT_SCALE"),
  _f("DPU", "OUT_CVT_SHIFT", "CVT_TYPE", "CVT_ROUND", "MINUS_EXP", "OUT_CVT_SHIFT"),
  _f("DPU", "SURFACE_ADD", "SURF_ADD"),
  _f("DPU", "UNDOC_40C4", "VALUE"),
  # DPU_RDMA
  _f("DPU_RDMA", "DATA_CUBE_WIDTH", "WIDTH"),
  _f("DPU_RDMA", "DATA_CUBE_HEIGHT", "EW_LINE_NOTCH_ADDR", "HEIGHT"),
  _f("DPU_RDMA", "DATA_CUBE_CHANNEL", "CHANNEL"),
  _f("DPU_RDMA", "SRC_BASE_ADDR", "SRC_BASE_ADDR"),
  _f("DPU_RDMA", "BRDMA_CFG", "BRDMA_DATA_USE"),
  _f("DPU_RDMA", "BS_BASE_ADDR", "BS_BASE_ADDR"),
  _f("DPU_RDMA", "NRDMA_CFG", "NRDMA_DATA_USE"),
  _f("DPU_RDMA", "ERDMA_CFG", "ERDMA_DATA_MODE", "ERDMA_SURF_MODE", "ERDMA_NONALIGN", "ERDMA_DATA_SIZE", "ERDMA_DISABLE"),
  _f("DPU_RDMA", "EW_BASE_ADDR", "EW_BASE_ADDR"),
  _f("DPU_RDMA", "EW_SURF_STRIDE", "EW_SURF_STRIDE"),
  _f("DPU_RDMA", "FEATURE_MODE_CFG", "IN_PRECISION", "COMB_USE", "PROC_PRECISION", "MRDMA_DISABLE", "MRDMA_FP16TOFP32_EN",
     "CONV_MODE", "FLYING_MODE"),
  _f("DPU_RDMA", "SRC_DMA_CFG", "LINE_NOTCH_ADDR", "POOLING_METHOD", "UNPOOLING_EN"),
  _f("DPU_RDMA", "SURF_NOTCH", "SURF_NOTCH_ADDR"),
  _f("DPU_RDMA", "EW_SURF_NOTCH", "EW_SURF_NOTCH"),
  # PPU / PPU_RDMA (ppu.py)
  *(_f("PPU", f"DATA_CUBE_{io}_{dim}", f"CUBE_{io}_{dim}") for io in ("IN", "OUT") for dim in ("WIDTH", "HEIGHT", "CHANNEL")),
  _f("PPU", "OPERATION_MODE_CFG", "INDEX_EN", "NOTCH_ADDR", "FLYING_MODE", "POOLING_METHOD"),
  _f("PPU", "POOLING_KERNEL_CFG", "KERNEL_STRIDE_HEIGHT", "KERNEL_STRIDE_WIDTH", "KERNEL_HEIGHT", "KERNEL_WIDTH"),
  _f("PPU", "RECIP_KERNEL_WIDTH", "RECIP_KERNEL_WIDTH"), _f("PPU", "RECIP_KERNEL_HEIGHT", "RECIP_KERNEL_HEIGHT"),
  _f("PPU", "POOLING_PADDING_CFG", "PAD_BOTTOM", "PAD_RIGHT", "PAD_TOP", "PAD_LEFT"),
  _f("PPU", "PADDING_VALUE_1_CFG", "PAD_VALUE_0"), _f("PPU", "PADDING_VALUE_2_CFG", "PAD_VALUE_1"),
  _f("PPU", "DST_BASE_ADDR", "DST_BASE_ADDR"), _f("PPU", "DST_SURF_STRIDE", "DST_SURF_STRIDE"),
  _f("PPU", "DATA_FORMAT", "DPU_FLYIN", "PROC_PRECISION"),
  _f("PPU", "MISC_CTRL", "MC_SURF_OUT"),
  *(_f("PPU_RDMA", f"CUBE_IN_{dim}", f"CUBE_IN_{dim}") for dim in ("WIDTH", "HEIGHT", "CHANNEL")),
  _f("PPU_RDMA", "SRC_BASE_ADDR", "SRC_BASE_ADDR"), _f("PPU_RDMA", "SRC_LINE_STRIDE", "SRC_LINE_STRIDE"),
  _f("PPU_RDMA", "SRC_SURF_STRIDE", "SRC_SURF_STRIDE"), _f("PPU_RDMA", "DATA_FORMAT", "IN_PRECISION"),
)

# The DPU LUT registers (rocket_fp16_ew_ppu.md §4.2), read only by a task with EW_LUT_BYPASS = 0 (decode_lut); part of
# DECODED_FIELDS (their coverage entries live with the LUT tests, tests/test_lut.py::LUT_COVERAGE). The LUT_ACCESS_CFG /
# LUT_ACCESS_DATA port is not read here: its writes fill core.LutStorage as they arrive.
LUT_FIELDS: frozenset[tuple[str, str, str]] = frozenset().union(
  _f("DPU", "LUT_CFG", "LUT_CAL_SEL", "LUT_HYBRID_PRIORITY", "LUT_OFLOW_PRIORITY", "LUT_UFLOW_PRIORITY", "LUT_LO_LE_MUX",
     "LUT_EXPAND_EN", "LUT_ROAD_SEL"),
  _f("DPU", "LUT_INFO", "LUT_LO_INDEX_SELECT", "LUT_LE_INDEX_SELECT"),
  *(_f("DPU", f"LUT_{r}", f"LUT_{r}") for r in ("LE_START", "LE_END", "LO_START", "LO_END")),
  *(_f("DPU", f"LUT_{t}_SLOPE_SCALE", f"LUT_{t}_SLOPE_OFLOW_SCALE", f"LUT_{t}_SLOPE_UFLOW_SCALE") for t in ("LE", "LO")),
  *(_f("DPU", f"LUT_{t}_SLOPE_SHIFT", f"LUT_{t}_SLOPE_OFLOW_SHIFT", f"LUT_{t}_SLOPE_UFLOW_SHIFT") for t in ("LE", "LO")),
)

DECODED_FIELDS = DECODED_FIELDS | LUT_FIELDS

class Fields:
  """Reads fields of a register file by name; only declared fields (DECODED_FIELDS), so the coverage table is total."""
  def __init__(self, regs:Mapping[int, int]): self.regs = regs
  def __call__(self, block:str, reg:str, field:str) -> int:
    if (block, reg, field) not in DECODED_FIELDS:
      raise AssertionError(f"emulator bug: {block}.{reg}.{field} is read but not declared in DECODED_FIELDS")
    return read_field(self.regs, block, reg, field)

def _prec(code:int, where:str) -> str:
  return PREC_NAME.get(code, f"code {code}")

def _need(cond:bool, reason:str) -> None:
  if not cond: raise UnsupportedConfig(reason)

def _zero(F:Fields, block:str, reg:str, field:str, why:str) -> None:
  v = F(block, reg, field)
  if v: raise UnsupportedConfig(f"{block}.{reg}.{field} = {v:#x}: {why}")

def _require_zero(F:Fields, fields:tuple[tuple[str, str, str, str], ...]) -> None:
  for block, reg, field, why in fields: _zero(F, block, reg, field, why)

# Fields a convolution task must leave 0 (block, register, field, why): modes nobody documented or validated.
CONV_MUST_BE_ZERO: tuple[tuple[str, str, str, str], ...] = (
  ("CNA", "CONV_CON1", "DECONV", "deconvolution mode is not emulated"),
  ("CNA", "CONV_CON3", "NN_MODE", "multi-core co-work MAC modes are not emulated (rocket_hw.md §6.3)"),
  ("CNA", "FC_CON0", "FC_SKIP_EN", "FC skip mode is not documented"),
  ("CNA", "FC_CON1", "DATA_OFFSET", "FC data offset is not documented"),
  ("CNA", "FC_CON2", "WEIGHT_OFFSET", "FC weight offset is not documented"),
  ("CNA", "DATA_SIZE3", "SURF_MODE", "CNA SURF_MODE is not documented"),
  ("CNA", "DCOMP_CTRL", "DECOMP_CONTROL", "weight decompression (NVDLA CWT/WMB) is not emulated"),
  ("CNA", "CBUF_CON0", "DATA_REUSE", "feature-data reuse across tasks is not emulated"),
  ("CNA", "CBUF_CON0", "FC_DATA_BANK", "the hardware corrupts 64-75% of the outputs with FC_DATA_BANK != 0 "
   "(GN, rocket_fp16_ew_ppu.md §1.5/§6.C)"),
  ("CORE", "UNDOC_3030", "VALUE", "CORE 0x3030 must be 0 (allbilly: otherwise the next run is corrupted)"),
)

# The same for a DPU task.
DPU_MUST_BE_ZERO: tuple[tuple[str, str, str, str], ...] = (
  ("DPU", "FEATURE_MODE_CFG", "TP_EN", "the DPU transpose mode is not emulated"),
  ("DPU", "DATA_FORMAT", "MC_SURF_OUT", "MC_SURF_OUT is not documented"),
  ("DPU", "DATA_CUBE_HEIGHT", "MINMAX_CTL", "MINMAX_CTL is not documented"),
  ("DPU", "DATA_CUBE_NOTCH_ADDR", "NOTCH_ADDR_0", "write notches are not documented"),
  ("DPU", "DATA_CUBE_NOTCH_ADDR", "NOTCH_ADDR_1", "write notches are not documented"),
  ("DPU", "BS_OW_CFG", "TP_ORG_EN", "the transposed int16 writer (GN output-transpose-int16) is not emulated"),
  ("DPU", "WDMA_SIZE_0", "TP_PRECISION", "the transposed int16 writer is not emulated"),
  ("DPU", "UNDOC_40C4", "VALUE", "DPU 0x40C4 must be 0 (allbilly: otherwise the next run is corrupted)"),
)

# The same for DPU_RDMA.
RDMA_MUST_BE_ZERO: tuple[tuple[str, str, str, str], ...] = (
  ("DPU_RDMA", "SRC_DMA_CFG", "LINE_NOTCH_ADDR", "MRDMA line notches are not documented"),
  ("DPU_RDMA", "SRC_DMA_CFG", "POOLING_METHOD", "DPU_RDMA pooling is not documented"),
  ("DPU_RDMA", "SRC_DMA_CFG", "UNPOOLING_EN", "DPU_RDMA unpooling is not documented"),
  ("DPU_RDMA", "DATA_CUBE_HEIGHT", "EW_LINE_NOTCH_ADDR", "ERDMA line notches are not documented"),
)

# The same for an armed ERDMA.
ERDMA_MUST_BE_ZERO: tuple[tuple[str, str, str, str], ...] = (
  ("DPU_RDMA", "ERDMA_CFG", "ERDMA_SURF_MODE", "ERDMA_SURF_MODE is not documented"),
  ("DPU_RDMA", "ERDMA_CFG", "ERDMA_NONALIGN", "ERDMA_NONALIGN is not documented"),
)

def signed(v:int, bits:int) -> int: return v - (1 << bits) if v & (1 << (bits - 1)) else v

# --------------------------------------------------------------------------------------------------------------
# CNA + CORE
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelCvt:
  """CNA input converter of the pixel (ARGB_IN) path: per channel k, y = cvt(x) (CVT_CON0..5)."""
  bypass: bool
  cvt_type: int          # 0 multiply then add offset, 1 add offset then multiply
  round_type: int
  data_sign: int         # 1: pixels are signed
  scale: int             # channel 0's set: CVT_SCALE0 / CVT_OFFSET0 / CVT_TRUNCATE_0
  offset: int
  truncate: int
  enable: int            # PER_CHANNEL_CVT_EN bit mask (bit 0: channel 0)

@dataclass(frozen=True)
class ConvDesc:
  precision: str         # CNA input (= processing) precision
  depthwise: bool
  base: int
  width: int; height: int; channels: int; channels_real: int
  pixel: bool            # ARGB_IN pixel path (1 channel per pixel) instead of packed NC1HWC2
  row_pitch: int; surf_pitch: int
  cvt: PixelCvt|None
  pad_top: int; pad_left: int; pad_raw: int
  stride_x: int; stride_y: int; dil_x: int; dil_y: int
  out_w: int; out_h: int; out_c: int
  kw: int; kh: int; kernels: int
  weight_base: int; weight_bytes: int; weight_reuse: bool
  clip_shift: int; clip_round: int
  data_bank: int; weight_bank: int
  @property
  def ebytes(self) -> int: return ELEMENT_BYTES[self.precision]
  @property
  def c2(self) -> int: return 16 // self.ebytes
  @property
  def surfaces(self) -> int: return layouts.ceil_div(self.channels, self.c2)

# ⚠ A packed CNA input of fewer than 4 rows computes wrong on the hardware for every dtype (GN, rocket_fp16_ew_ppu.md
# §1.6/§6.C: IH = 2, 3 fail at every IC; the 4-row block of `layouts.cna_pitches`): refused.
CNA_MIN_PACKED_HEIGHT = 4
# GN (rocket_fp16_ew_ppu.md §6.C): an int8 feature of width 1 that fills its last data bank to 97.6-99.8 % computes the
# last output rows wrong; fp16 is immune. Refused above this fill (only measured at width 1).
INT8_EXACT_FIT = 0.976

def decode_conv(F:Fields) -> ConvDesc:
  C = "CNA"
  _require_zero(F, CONV_MUST_BE_ZERO)

  in_p = _prec(F(C, "CONV_CON1", "IN_PRECISION"), "CNA in")
  proc_p = _prec(F(C, "CONV_CON1", "PROC_PRECISION"), "CNA proc")
  core_p = _prec(F("CORE", "MISC_CFG", "PROC_PRECISION"), "CORE proc")
  _need(in_p == proc_p == core_p, f"CNA in/proc precision {in_p}/{proc_p} and CORE precision {core_p} differ")
  _need(in_p in WEIGHT_GROUPS, f"CNA precision {in_p} is not emulated (int8, fp16, bf16, tf32 are)")

  mode = F(C, "CONV_CON1", "CONV_MODE")
  dw_en = F("CORE", "MISC_CFG", "DW_EN")
  _need(mode in (0, 3), f"CNA CONV_MODE {mode}: only 0 (direct) and 3 (depthwise) are documented")
  depthwise = mode == 3
  _need(bool(dw_en) == depthwise, f"CNA CONV_MODE {mode} with CORE DW_EN {dw_en}: the hardware computes channel-"
        "plausible but wrong output unless every depthwise mode bit is set (GN depthwise-conv.md)")
  if depthwise: _need(in_p in DW_GROUPS, f"depthwise at {in_p} is not documented")

  width, height = F(C, "DATA_SIZE0", "DATAIN_WIDTH"), F(C, "DATA_SIZE0", "DATAIN_HEIGHT")
  channels, channels_real = F(C, "DATA_SIZE1", "DATAIN_CHANNEL"), F(C, "DATA_SIZE1", "DATAIN_CHANNEL_REAL") + 1
  _need(width > 0 and height > 0 and channels > 0, f"empty input cube {channels}x{height}x{width}")
  _need(channels_real <= channels, f"DATAIN_CHANNEL_REAL+1 = {channels_real} > DATAIN_CHANNEL = {channels}")
  base = F(C, "FEATURE_DATA_ADDR", "FEATURE_BASE_ADDR")
  line, surf = F(C, "DMA_CON1", "LINE_STRIDE"), F(C, "DMA_CON2", "SURF_STRIDE")

  argb = F(C, "CONV_CON1", "ARGB_IN")
  nonalign, group_line_off = F(C, "CONV_CON1", "NONALIGN_DMA"), F(C, "CONV_CON1", "GROUP_LINE_OFF")
  cvt_bypass = F(C, "CVT_CON0", "CVT_BYPASS")
  cvt = None
  if argb:
    _need(argb == 8, f"ARGB_IN {argb}: only the 1-channel pixel path (8, Mesa) is emulated; the stride unit of the "
          "2-4 channel paths is not documented")
    _need(nonalign and group_line_off, "the pixel path (ARGB_IN) without NONALIGN_DMA|GROUP_LINE_OFF is not documented")
    _need(in_p == "int8", f"the pixel path at {in_p} is not documented (Mesa: int8)")
    cvt = PixelCvt(bool(cvt_bypass), F(C, "CVT_CON0", "CVT_TYPE"), F(C, "CVT_CON0", "ROUND_TYPE"), F(C, "CVT_CON0", "DATA_SIGN"),
                   F(C, "CVT_CON1", "CVT_SCALE0"), F(C, "CVT_CON1", "CVT_OFFSET0"), F(C, "CVT_CON0", "CVT_TRUNCATE_0"),
                   F(C, "CVT_CON5", "PER_CHANNEL_CVT_EN"))
    row_pitch, surf_pitch = layouts.pixel_row_pitch(line), 0
  else:
    _need(not nonalign and not group_line_off, "NONALIGN_DMA/GROUP_LINE_OFF without the pixel path is not documented")
    _need(cvt_bypass == 1, "the CNA input converter on packed (NC1HWC2) input is not documented (CVT_BYPASS = 0)")
    _need(line % 4 == 0, f"LINE_STRIDE {line} is not a whole number of 4-row blocks of atoms")
    _need(height >= CNA_MIN_PACKED_HEIGHT, f"DATAIN_HEIGHT {height} < {CNA_MIN_PACKED_HEIGHT}: the hardware computes "
          "garbage for packed inputs under 4 rows (GN, rocket_fp16_ew_ppu.md §1.6/§6.C)")
    row_pitch, surf_pitch = layouts.cna_pitches(line, surf)
    # GN (rocket_fp16_ew_ppu.md §1.5/§6.C): DATA_ENTRIES must be the row size in 64-byte units for the dtype; other
    # values compute wrong rows or read inf.
    ebytes = ELEMENT_BYTES[in_p]
    need_entries = layouts.ceil_div(width * layouts.ceil_div(channels, 16 // ebytes) * 16, 64)
    entries = F(C, "CBUF_CON1", "DATA_ENTRIES")
    _need(entries == need_entries, f"DATA_ENTRIES {entries} != {need_entries} (= ceil(W*C*bytes/64)): the hardware "
          "computes wrong rows (GN, rocket_fp16_ew_ppu.md §1.5/§6.C)")

  data_bank, weight_bank = F(C, "CBUF_CON0", "DATA_BANK"), F(C, "CBUF_CON0", "WEIGHT_BANK")
  _need(data_bank + weight_bank <= 12, f"DATA_BANK {data_bank} + WEIGHT_BANK {weight_bank} > the 12 CBUF banks")
  if not argb:
    feat_bytes = height * width * layouts.ceil_div(channels, 16 // ELEMENT_BYTES[in_p]) * 16
    need_banks = layouts.ceil_div(feat_bytes, 32768)
    _need(data_bank >= need_banks, f"the {feat_bytes}-byte input needs {need_banks} CBUF banks, DATA_BANK is {data_bank}")
    if in_p == "int8" and width == 1:
      _need(feat_bytes <= INT8_EXACT_FIT * data_bank * 32768, f"int8 input of width 1 filling its {data_bank} DATA_BANK "
            f"banks to {feat_bytes / (data_bank * 32768):.1%}: the hardware computes the last rows wrong (GN "
            "cbuf-bank-slack, rocket_fp16_ew_ppu.md §6.C: give it one more bank)")

  out_w = F("CORE", "DATAOUT_SIZE_0", "DATAOUT_WIDTH") + 1
  out_h = F("CORE", "DATAOUT_SIZE_0", "DATAOUT_HEIGHT") + 1
  out_c = F("CORE", "DATAOUT_SIZE_1", "DATAOUT_CHANNEL") + 1
  _need(F(C, "DATA_SIZE2", "DATAOUT_WIDTH") == out_w, "CNA DATAOUT_WIDTH differs from CORE DATAOUT_WIDTH+1")
  _need(F(C, "DATA_SIZE3", "DATAOUT_ATOMICS") == out_w * out_h, "CNA DATAOUT_ATOMICS differs from the CORE output size")

  kw, kh = F(C, "WEIGHT_SIZE2", "WEIGHT_WIDTH"), F(C, "WEIGHT_SIZE2", "WEIGHT_HEIGHT")
  kernels = F(C, "WEIGHT_SIZE2", "WEIGHT_KERNELS")
  _need(kw > 0 and kh > 0 and kernels > 0, f"empty kernel {kernels}x{kh}x{kw}")
  ebytes = ELEMENT_BYTES[in_p]
  bpk, wbytes = F(C, "WEIGHT_SIZE1", "WEIGHT_BYTES_PER_KERNEL"), F(C, "WEIGHT_SIZE0", "WEIGHT_BYTES")
  _need(bpk == kw * kh * channels * ebytes, f"WEIGHT_BYTES_PER_KERNEL {bpk} != {kw}*{kh}*{channels}*{ebytes}")
  _need(wbytes == bpk * kernels, f"WEIGHT_BYTES {wbytes} != WEIGHT_BYTES_PER_KERNEL*WEIGHT_KERNELS = {bpk * kernels}")
  if depthwise: _need(kernels == 1, f"depthwise with WEIGHT_KERNELS {kernels} (the hardware needs 1, GN depthwise-conv.md)")
  else: _need(kernels <= out_c, f"WEIGHT_KERNELS {kernels} > CORE DATAOUT_CHANNEL+1 = {out_c}")

  sx, sy = F(C, "CONV_CON3", "CONV_X_STRIDE"), F(C, "CONV_CON3", "CONV_Y_STRIDE")
  _need(sx > 0 and sy > 0, f"convolution stride {sx}x{sy}")
  clip, clip_round = F("CORE", "CLIP_TRUNCATE", "CLIP_TRUNCATE"), F("CORE", "CLIP_TRUNCATE", "ROUND_TYPE")
  if in_p != "int8": _need(clip == 0, f"CLIP_TRUNCATE {clip} on the {in_p} datapath is not documented")
  return ConvDesc(precision=in_p, depthwise=depthwise, base=base, width=width, height=height, channels=channels,
                  channels_real=channels_real, pixel=bool(argb), row_pitch=row_pitch, surf_pitch=surf_pitch, cvt=cvt,
                  pad_top=F(C, "PAD_CON0", "PAD_TOP"), pad_left=F(C, "PAD_CON0", "PAD_LEFT"),
                  pad_raw=F(C, "PAD_CON1", "PAD_VALUE") & 0xFFFF_FFFF,
                  stride_x=sx, stride_y=sy, dil_x=F(C, "CONV_CON3", "ATROUS_X_DILATION") + 1,
                  dil_y=F(C, "CONV_CON3", "ATROUS_Y_DILATION") + 1, out_w=out_w, out_h=out_h, out_c=out_c,
                  kw=kw, kh=kh, kernels=kernels, weight_base=F(C, "DCOMP_ADDR0", "DECOMPRESS_ADDR0"), weight_bytes=wbytes,
                  weight_reuse=bool(F(C, "CBUF_CON0", "WEIGHT_REUSE")), clip_shift=clip, clip_round=clip_round,
                  data_bank=data_bank, weight_bank=weight_bank)

def conv_qd_en(F:Fields) -> int: return F("CORE", "MISC_CFG", "QD_EN")

# --------------------------------------------------------------------------------------------------------------
# DPU
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class XStage:
  """BS (0x4040..) or BN (0x4060..) stage: ALU, MUL, ReLU/ReLUX."""
  name: str
  bypass: bool; alu_bypass: bool; mul_bypass: bool; relu_bypass: bool; relux_en: bool; prelu: bool
  alu_algo: int; alu_src: int; alu_operand: int
  mul_src: int; mul_operand: int; mul_shift: int; mul_shift_neg: int; truncate_src: int
  relux_cmp: int

def _xstage(F:Fields, p:str) -> XStage:
  D = "DPU"
  return XStage(p, bool(F(D, f"{p}_CFG", f"{p}_BYPASS")), bool(F(D, f"{p}_CFG", f"{p}_ALU_BYPASS")),
                bool(F(D, f"{p}_CFG", f"{p}_MUL_BYPASS")), bool(F(D, f"{p}_CFG", f"{p}_RELU_BYPASS")),
                bool(F(D, f"{p}_CFG", f"{p}_RELUX_EN")), bool(F(D, f"{p}_CFG", f"{p}_MUL_PRELU")),
                F(D, f"{p}_CFG", f"{p}_ALU_ALGO"), F(D, f"{p}_CFG", f"{p}_ALU_SRC"), F(D, f"{p}_ALU_CFG", f"{p}_ALU_OPERAND"),
                F(D, f"{p}_MUL_CFG", f"{p}_MUL_SRC"), F(D, f"{p}_MUL_CFG", f"{p}_MUL_OPERAND"),
                F(D, f"{p}_MUL_CFG", f"{p}_MUL_SHIFT_VALUE"), F(D, "DATA_FORMAT", f"{p}_MUL_SHIFT_VALUE_NEG"),
                F(D, f"{p}_MUL_CFG", f"{p}_TRUNCATE_SRC"), F(D, f"{p}_RELUX_CMP_VALUE", f"{p}_RELUX_CMP_DAT"))

@dataclass(frozen=True)
class EwStage:
  bypass: bool; op_bypass: bool; op_src: int; op_type: int; alu_algo: int
  cvt_bypass: bool; cvt_type: int; cvt_round: int; cvt_offset: int; cvt_scale: int; cvt_shift: int
  truncate: int; truncate_neg: int
  relu_bypass: bool; relux_en: bool; relux_cmp: int; lut_bypass: bool; prelu: bool
  data_mode: int; edata_size: int

@dataclass(frozen=True)
class OutCvt:
  offset: int; scale: int; shift: int; cvt_type: int; cvt_round: int; minus_exp: int; fp32tofp16: bool

@dataclass(frozen=True)
class DpuDesc:
  flying: bool
  in_prec: str; proc_prec: str; out_prec: str
  width: int; height: int; channels: int; orig_channels: int
  dst_base: int; dst_surf_stride: int; surface_add: int; size_e: int
  od_bypass: bool; ow_src: int; ow_op: int
  bs: XStage; bn: XStage; ew: EwStage; out: OutCvt
  conv_mode: int
  lut: LutDesc|None = None   # decoded only when the EW stage runs its LUT (EW_BYPASS 0, EW_LUT_BYPASS 0)
  @property
  def float_mode(self) -> bool: return self.proc_prec in FLOAT_PRECS
  @property
  def out_bytes(self) -> int: return ELEMENT_BYTES[self.out_prec]

def decode_dpu(F:Fields) -> DpuDesc:
  D = "DPU"
  _require_zero(F, DPU_MUST_BE_ZERO)
  _need(F(D, "FEATURE_MODE_CFG", "OUTPUT_MODE") == 2, "DPU OUTPUT_MODE other than 2 (memory only): the on-the-fly "
        "DPU->PPU path is not emulated")
  in_code, proc_code, out_code = (F(D, "DATA_FORMAT", k) for k in ("IN_PRECISION", "PROC_PRECISION", "OUT_PRECISION"))
  se = (F(D, "BS_OW_CFG", "SIZE_E_0"), F(D, "BS_OW_CFG", "SIZE_E_1"), F(D, "BS_OW_CFG", "SIZE_E_2"))
  _need(se[0] == se[1] == se[2], f"BS_OW_CFG SIZE_E_0/1/2 = {se} differ (every validated program sets them equal)")
  width, height = F(D, "DATA_CUBE_WIDTH", "WIDTH") + 1, F(D, "DATA_CUBE_HEIGHT", "HEIGHT") + 1
  channels = F(D, "DATA_CUBE_CHANNEL", "CHANNEL") + 1
  _need(F(D, "WDMA_SIZE_0", "CHANNEL_WDMA") + 1 == channels, "WDMA CHANNEL_WDMA differs from DATA_CUBE_CHANNEL")
  _need(F(D, "WDMA_SIZE_1", "WIDTH_WDMA") + 1 == width and F(D, "WDMA_SIZE_1", "HEIGHT_WDMA") + 1 == height,
        "WDMA_SIZE_1 differs from the DPU data cube")
  ew = EwStage(bool(F(D, "EW_CFG", "EW_BYPASS")), bool(F(D, "EW_CFG", "EW_OP_BYPASS")), F(D, "EW_CFG", "EW_OP_SRC"),
               F(D, "EW_CFG", "EW_OP_TYPE"), F(D, "EW_CFG", "EW_ALU_ALGO"), bool(F(D, "EW_CFG", "EW_OP_CVT_BYPASS")),
               F(D, "EW_CFG", "EW_CVT_TYPE"), F(D, "EW_CFG", "EW_CVT_ROUND"), F(D, "EW_CVT_OFFSET_VALUE", "EW_OP_CVT_OFFSET"),
               F(D, "EW_CVT_SCALE_VALUE", "EW_OP_CVT_SCALE"), F(D, "EW_CVT_SCALE_VALUE", "EW_OP_CVT_SHIFT"),
               F(D, "EW_CVT_SCALE_VALUE", "EW_TRUNCATE"), F(D, "DATA_FORMAT", "EW_TRUNCATE_NEG"),
               bool(F(D, "EW_CFG", "EW_RELU_BYPASS")), bool(F(D, "EW_CFG", "EW_RELUX_EN")),
               F(D, "EW_RELUX_CMP_VALUE", "EW_RELUX_CMP_DAT"), bool(F(D, "EW_CFG", "EW_LUT_BYPASS")),
               bool(F(D, "EW_CFG", "EW_MUL_PRELU")), F(D, "EW_CFG", "EW_DATA_MODE"), F(D, "EW_CFG", "EDATA_SIZE"))
  out = OutCvt(F(D, "OUT_CVT_OFFSET", "OUT_CVT_OFFSET"), F(D, "OUT_CVT_SCALE", "OUT_CVT_SCALE"),
               F(D, "OUT_CVT_SHIFT", "OUT_CVT_SHIFT"), F(D, "OUT_CVT_SHIFT", "CVT_TYPE"), F(D, "OUT_CVT_SHIFT", "CVT_ROUND"),
               F(D, "OUT_CVT_SHIFT", "MINUS_EXP"), bool(F(D, "OUT_CVT_SCALE", "FP32TOFP16_EN")))
  return DpuDesc(flying=bool(F(D, "FEATURE_MODE_CFG", "FLYING_MODE")), in_prec=_prec(in_code, "DPU in"),
                 proc_prec=_prec(proc_code, "DPU proc"), out_prec=_prec(out_code, "DPU out"),
                 width=width, height=height, channels=channels, orig_channels=F(D, "DATA_CUBE_CHANNEL", "ORIG_CHANNEL") + 1,
                 dst_base=F(D, "DST_BASE_ADDR", "DST_BASE_ADDR"), dst_surf_stride=F(D, "DST_SURF_STRIDE", "DST_SURF_STRIDE"),
                 surface_add=F(D, "SURFACE_ADD", "SURF_ADD"), size_e=se[0],
                 od_bypass=bool(F(D, "BS_OW_CFG", "OD_BYPASS")), ow_src=F(D, "BS_OW_CFG", "OW_SRC"), ow_op=F(D, "BS_OW_OP", "OW_OP"),
                 bs=_xstage(F, "BS"), bn=_xstage(F, "BN"), ew=ew, out=out, conv_mode=F(D, "FEATURE_MODE_CFG", "CONV_MODE"),
                 lut=decode_lut(F) if not ew.bypass and not ew.lut_bypass else None)

@dataclass(frozen=True)
class LutDesc:
  """The EW-stage LUT programming (rocket_fp16_ew_ppu.md §4.2-§4.3): LUT_CFG fields, the two index selects, the four
  table bounds (index-domain integers) and the extrapolation slopes (scale, shift) beyond each end of each table."""
  cal_sel: int; hybrid_priority: int; oflow_priority: int; uflow_priority: int; lo_le_mux: int; expand_en: int; road_sel: int
  le_index_select: int; lo_index_select: int
  le_start: int; le_end: int; lo_start: int; lo_end: int
  le_uflow: tuple[int, int]; le_oflow: tuple[int, int]; lo_uflow: tuple[int, int]; lo_oflow: tuple[int, int]
  storage: object = None   # the core's core.LutStorage (None: a register file without LUT RAM, e.g. a test's dict)

def decode_lut(F:Fields) -> LutDesc:
  D = "DPU"
  cfg = {k: F(D, "LUT_CFG", f"LUT_{k.upper()}") for k in ("cal_sel", "hybrid_priority", "oflow_priority", "uflow_priority",
                                                           "lo_le_mux", "expand_en", "road_sel")}
  def slope(t:str, end:str) -> tuple[int, int]:
    return F(D, f"LUT_{t}_SLOPE_SCALE", f"LUT_{t}_SLOPE_{end}_SCALE"), F(D, f"LUT_{t}_SLOPE_SHIFT", f"LUT_{t}_SLOPE_{end}_SHIFT")
  return LutDesc(**cfg, le_index_select=F(D, "LUT_INFO", "LUT_LE_INDEX_SELECT"), lo_index_select=F(D, "LUT_INFO", "LUT_LO_INDEX_SELECT"),
                 le_start=F(D, "LUT_LE_START", "LUT_LE_START"), le_end=F(D, "LUT_LE_END", "LUT_LE_END"),
                 lo_start=F(D, "LUT_LO_START", "LUT_LO_START"), lo_end=F(D, "LUT_LO_END", "LUT_LO_END"),
                 le_uflow=slope("LE", "UFLOW"), le_oflow=slope("LE", "OFLOW"), lo_uflow=slope("LO", "UFLOW"),
                 lo_oflow=slope("LO", "OFLOW"), storage=getattr(F.regs, "lut", None))

# --------------------------------------------------------------------------------------------------------------
# DPU_RDMA
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RdmaDesc:
  width: int; height: int; channels: int
  src_base: int; brdma_use: int; bs_base: int; nrdma_use: int
  erdma_mode: int; erdma_size: int; erdma_disable: bool
  ew_base: int; ew_surf_stride: int; surf_notch: int; ew_surf_notch: int
  in_prec: str; proc_prec: str; comb_use: int; mrdma_disable: bool; fp16tofp32: bool; conv_mode: int; flying: bool

def decode_rdma(F:Fields) -> RdmaDesc:
  R = "DPU_RDMA"
  _require_zero(F, RDMA_MUST_BE_ZERO)
  return RdmaDesc(width=F(R, "DATA_CUBE_WIDTH", "WIDTH") + 1, height=F(R, "DATA_CUBE_HEIGHT", "HEIGHT") + 1,
                  channels=F(R, "DATA_CUBE_CHANNEL", "CHANNEL") + 1, src_base=F(R, "SRC_BASE_ADDR", "SRC_BASE_ADDR"),
                  brdma_use=F(R, "BRDMA_CFG", "BRDMA_DATA_USE"), bs_base=F(R, "BS_BASE_ADDR", "BS_BASE_ADDR"),
                  nrdma_use=F(R, "NRDMA_CFG", "NRDMA_DATA_USE"),
                  erdma_mode=F(R, "ERDMA_CFG", "ERDMA_DATA_MODE"), erdma_size=F(R, "ERDMA_CFG", "ERDMA_DATA_SIZE"),
                  erdma_disable=bool(F(R, "ERDMA_CFG", "ERDMA_DISABLE")), ew_base=F(R, "EW_BASE_ADDR", "EW_BASE_ADDR"),
                  ew_surf_stride=F(R, "EW_SURF_STRIDE", "EW_SURF_STRIDE"), surf_notch=F(R, "SURF_NOTCH", "SURF_NOTCH_ADDR"),
                  ew_surf_notch=F(R, "EW_SURF_NOTCH", "EW_SURF_NOTCH"),
                  in_prec=_prec(F(R, "FEATURE_MODE_CFG", "IN_PRECISION"), "RDMA in"),
                  proc_prec=_prec(F(R, "FEATURE_MODE_CFG", "PROC_PRECISION"), "RDMA proc"),
                  comb_use=F(R, "FEATURE_MODE_CFG", "COMB_USE"), mrdma_disable=bool(F(R, "FEATURE_MODE_CFG", "MRDMA_DISABLE")),
                  fp16tofp32=bool(F(R, "FEATURE_MODE_CFG", "MRDMA_FP16TOFP32_EN")),
                  conv_mode=F(R, "FEATURE_MODE_CFG", "CONV_MODE"), flying=bool(F(R, "FEATURE_MODE_CFG", "FLYING_MODE")))

def erdma_checks(F:Fields) -> None: _require_zero(F, ERDMA_MUST_BE_ZERO)
