"""Convolution tasks (direct and depthwise, fp16/bf16/tf32/int8) as register programs.

The programs follow the hardware-validated ones field by field: gregordinary's fp16 conv/matmul program
(rocket_fp16_ew_ppu.md §2.1/§2.2) and Mesa's int8 convolution (rocket_hw.md §4) where the precision is int8, so that
a test can move one field at a time away from a known-good program (ops.program.override). A layer whose input does
not fit the CBUF next to its weights is split into row bands (`row_split`, Mesa's split addressing, rocket_hw.md
§5.6) and, when the weights are large, into kernel chunks (`conv_programs`).

int8 with int32 output (the exact path, ops/matmul.py INT8) takes that table's QD_EN and one CBUF bank of input slack;
its SIZE_E / SURFACE_ADD follow from the output group (8 atoms).

Epilogues (conv_program's bs / ew): the BS stage's constant fp32 add, ReLU and ReLUX clip (ops/matmul.py bs_fields), and
a per-pixel EW operand each task reads as a plain cube of its own output's shape (`ew_tiles`: the GN conv-fed add,
rocket_fp16_ew_ppu.md §2.3, programmed by ops/matmul.py ew_fields / ew_rdma as for matmul tiles).

Layouts (ops/layout.py): the input is an NC1HWC2 cube (W the contiguous axis), the weights kernel groups (direct) or
channel groups (depthwise), the output an NC1HWC2 cube of the output precision.
"""
from __future__ import annotations
from dataclasses import dataclass, replace
from typing import Mapping
from tinygrad_rocket import regs
from tinygrad_rocket.ops.layout import ceil_div, ELEMENT_BYTES, WEIGHT_GROUPS, DW_GROUPS
from tinygrad_rocket.ops.matmul import CBUF_BANKS, CBUF_BANK_BYTES, MIN_ROWS, INT8, EwOperand, XStageOp, bs_fields, ew_fields, ew_rdma
from tinygrad_rocket.ops.program import Program, PREC, override, field_max

@dataclass
class ConvSpec:
  """One convolution task (W is the contiguous axis). channels: the CNA's DATAIN_CHANNEL (padded); kernels: WEIGHT_KERNELS;
  out_c: CORE/DPU channels (a whole number of the precision's kernel groups)."""
  precision: str = "fp16"
  C: int = 32; H: int = 8; W: int = 8
  kernels: int = 16; kh: int = 3; kw: int = 3
  stride: tuple[int, int] = (1, 1)     # (y, x)
  pad: tuple[int, int] = (0, 0)        # (top, left); bottom/right implied by the output size
  dilation: tuple[int, int] = (1, 1)
  depthwise: bool = False
  out: str = "fp32"                    # fp32, fp16 (float); int8, int32, fp32 (int8)
  out_c: int|None = None
  out_hw: tuple[int, int]|None = None
  channels_real: int|None = None
  pad_value: int = 0                   # PAD_CON1 (raw 32-bit)
  @property
  def eff(self) -> tuple[int, int]: return ((self.kh - 1) * self.dilation[0] + 1, (self.kw - 1) * self.dilation[1] + 1)
  @property
  def OH(self) -> int: return self.out_hw[0] if self.out_hw else (self.H + 2 * self.pad[0] - self.eff[0]) // self.stride[0] + 1
  @property
  def OW(self) -> int: return self.out_hw[1] if self.out_hw else (self.W + 2 * self.pad[1] - self.eff[1]) // self.stride[1] + 1
  @property
  def OC(self) -> int:
    if self.out_c is not None: return self.out_c
    g = self.group
    return ceil_div(self.C if self.depthwise else self.kernels, g) * g
  @property
  def group(self) -> int: return DW_GROUPS[self.precision] if self.depthwise else WEIGHT_GROUPS[self.precision][0]
  @property
  def ebytes(self) -> int: return ELEMENT_BYTES[self.precision]
  @property
  def out_bytes(self) -> int: return ELEMENT_BYTES[self.out]
  @property
  def atoms_per_group(self) -> int: return self.group * self.out_bytes // 16
  @property
  def weight_bytes(self) -> int: return self.kh * self.kw * self.C * self.ebytes * (1 if self.depthwise else self.kernels)

# Input rows per task: at least MIN_ROWS (a CNA input under 4 rows computes wrong, rocket_fp16_ew_ppu.md §1.6/§6.C: a
# band that needs fewer reads rows past its last window, which the output size leaves unused); at most what
# FEATURE_GRAINS = rows + 1 holds for a direct convolution (10 bits, §1.5/§1.6) or DATAIN_HEIGHT for a depthwise one
# (its grains are 50 + stride + 1 whatever the height, §1.5).
MAX_DIRECT_ROWS = field_max("CNA", "CONV_CON2", "FEATURE_GRAINS") - 1
MAX_INPUT_ROWS = field_max("CNA", "DATA_SIZE0", "DATAIN_HEIGHT")

def max_band_rows(s:ConvSpec) -> int: return MAX_INPUT_ROWS if s.depthwise else MAX_DIRECT_ROWS
def row_bytes(s:ConvSpec) -> int: return s.W * ceil_div(s.C, 16 // s.ebytes) * 16
def slack_banks(s:ConvSpec) -> int:
  """CBUF banks an input gets beyond what it fills: int8 features need one (ops/matmul.py INT8, GN cbuf-bank-slack)."""
  return INT8["data_bank_slack"] if s.precision == "int8" else 0
def data_banks(s:ConvSpec) -> int:
  """CBUF banks the input may fill next to the weights (all 12 when none are left: the caller checks `overflow`)."""
  return CBUF_BANKS - ceil_div(s.weight_bytes, CBUF_BANK_BYTES) - slack_banks(s)

def row_split(s:ConvSpec, max_data_banks:int|None=None) -> list[tuple[int, int]]:
  """Output-row bands [o0, o1) such that each task's input rows fit the CBUF next to the weights (Mesa splits the same
  way, rocket_hw.md §5.6): the weights take ceil(bytes/32 KiB) banks, the feature the rest of the 12. A band of one
  output row is returned even if it does not fit (`overflow` says so)."""
  banks = max_data_banks or data_banks(s)
  max_rows = min(banks * CBUF_BANK_BYTES // row_bytes(s), max_band_rows(s))
  bands, o0 = [], 0
  while o0 < s.OH:
    o1 = s.OH
    while o1 > o0 + 1 and in_rows(s, o0, o1)[1] - in_rows(s, o0, o1)[0] > max_rows: o1 -= 1
    bands.append((o0, o1))
    o0 = o1
  return bands

def in_rows(s:ConvSpec, o0:int, o1:int) -> tuple[int, int]:
  """Input rows [top, bottom) the task computing output rows [o0, o1) reads."""
  top = max(0, o0 * s.stride[0] - s.pad[0])
  bottom = min(s.H, max((o1 - 1) * s.stride[0] - s.pad[0] + s.eff[0], top + MIN_ROWS))
  return top, bottom

def overflow(s:ConvSpec, bands:list[tuple[int, int]]) -> str|None:
  """Why the tasks of these bands do not fit the CBUF or the height fields, or None."""
  if (wb := ceil_div(s.weight_bytes, CBUF_BANK_BYTES)) >= CBUF_BANKS:
    return f"{s.weight_bytes} weight bytes need {wb} of the {CBUF_BANKS} CBUF banks (at least one is the input's)"
  for o0, o1 in bands:
    top, bottom = in_rows(s, o0, o1)
    if (rows := bottom - top) * row_bytes(s) > data_banks(s) * CBUF_BANK_BYTES:
      return (f"output rows {o0}..{o1} need {rows} input rows of {row_bytes(s)} bytes, more than the "
              f"{data_banks(s)} CBUF banks the weights leave")
    if rows > max_band_rows(s): return f"{rows} input rows in one task (max {max_band_rows(s)})"
  return None

def conv_program(s:ConvSpec, slots:Mapping[str, int], bias:bool=False, relu:bool=False, out_cvt:tuple[int, int, int]=(1, 0, 0),
                 ow_op:int|None=None, rows:tuple[int, int]|None=None, bs:XStageOp|None=None, ew:EwOperand|None=None) -> Program:
  """The validated convolution program (GN fp16 conv/matmul; Mesa int8 values where the precision is int8).
  slots: buffer slot of 'input', 'weights', 'output' (+ 'bias' for int8 bias from BRDMA).
  out_cvt: (scale, shift, offset) of OUT_CVT. ow_op: BS_OW_OP (CPEND on when given, int8).
  rows: compute only output rows [o0, o1) (one task of a row split; Mesa's split addressing: the input/output base
  moves by whole rows, the surface strides stay those of the whole tensors).
  bs: the BS stage (ops/matmul.py XStageOp: a constant fp32 add, ReLU, ReLUX clip) instead of `relu`. ew: a per-pixel
  operand cube of this task's output (its channels x rows [o0, o1) x width, surfaces one plane apart) the EW stage
  combines with the result, as the GN conv-fed add (rocket_fp16_ew_ppu.md §2.3; ops/matmul.py ew_fields, ew_rdma)."""
  assert bs is None or not (bias or relu), "relu/bias or bs, not both"
  p = PREC[s.precision]
  c2 = 16 // s.ebytes
  OH_full, OW, OC = s.OH, s.OW, s.OC
  o0, o1 = rows or (0, OH_full)
  OH = o1 - o0
  top, bottom = in_rows(s, o0, o1)
  H = bottom - top
  pad_top = max(0, s.pad[0] - o0 * s.stride[0])
  fd = H * s.W * ceil_div(s.C, c2) * 16
  banks = ceil_div(fd, CBUF_BANK_BYTES) + slack_banks(s)
  dw = s.depthwise
  prog: Program = {
    ("DPU", "S_POINTER"): dict(POINTER_PP_EN=1, EXECUTER_PP_EN=1, POINTER_PP_MODE=1),
    ("DPU_RDMA", "S_POINTER"): dict(POINTER_PP_EN=1, EXECUTER_PP_EN=1, POINTER_PP_MODE=1),
    ("CNA", "CONV_CON1"): dict(PROC_PRECISION=p, IN_PRECISION=p, CONV_MODE=3 if dw else 0),
    ("CNA", "CONV_CON2"): dict(FEATURE_GRAINS=(50 + s.stride[0] + 1) if dw else H + 1),
    ("CNA", "CONV_CON3"): dict(ATROUS_Y_DILATION=s.dilation[0] - 1, ATROUS_X_DILATION=s.dilation[1] - 1,
                               CONV_Y_STRIDE=s.stride[0], CONV_X_STRIDE=s.stride[1]),
    ("CNA", "DATA_SIZE0"): dict(DATAIN_WIDTH=s.W, DATAIN_HEIGHT=H),
    ("CNA", "DATA_SIZE1"): dict(DATAIN_CHANNEL_REAL=(s.channels_real or s.C) - 1, DATAIN_CHANNEL=s.C),
    ("CNA", "DATA_SIZE2"): dict(DATAOUT_WIDTH=OW),
    ("CNA", "DATA_SIZE3"): dict(DATAOUT_ATOMICS=OW * OH),
    ("CNA", "WEIGHT_SIZE0"): dict(WEIGHT_BYTES=s.weight_bytes),
    ("CNA", "WEIGHT_SIZE1"): dict(WEIGHT_BYTES_PER_KERNEL=s.kh * s.kw * s.C * s.ebytes),
    ("CNA", "WEIGHT_SIZE2"): dict(WEIGHT_WIDTH=s.kw, WEIGHT_HEIGHT=s.kh, WEIGHT_KERNELS=1 if dw else s.kernels),
    ("CNA", "CBUF_CON0"): dict(WEIGHT_BANK=CBUF_BANKS - banks, DATA_BANK=banks),
    ("CNA", "CBUF_CON1"): dict(DATA_ENTRIES=ceil_div(s.W * ceil_div(s.C, c2) * 16, 64)),
    ("CNA", "CVT_CON0"): dict(DATA_SIGN=1, CVT_TYPE=1, CVT_BYPASS=1),
    **{("CNA", f"CVT_CON{k + 1}"): {f"CVT_SCALE{k}": 1} for k in range(4)},
    ("CNA", "FC_CON0"): {}, ("CNA", "FC_CON1"): {},
    ("CNA", "PAD_CON0"): dict(PAD_LEFT=s.pad[1], PAD_TOP=pad_top),
    ("CNA", "FEATURE_DATA_ADDR"): regs.address("CNA", "FEATURE_DATA_ADDR", slots["input"], top * s.W * 16),
    ("CNA", "FC_CON2"): {},
    ("CNA", "DMA_CON0"): dict(WEIGHT_BURST_LEN=15, DATA_BURST_LEN=15),
    ("CNA", "DMA_CON1"): dict(LINE_STRIDE=4 * s.W),
    ("CNA", "DMA_CON2"): dict(SURF_STRIDE=max(s.W * (s.H - 4), 0)),
    ("CNA", "FC_DATA_SIZE0"): dict(DMA_WIDTH=s.W, DMA_HEIGHT=H),
    ("CNA", "FC_DATA_SIZE1"): dict(DMA_CHANNEL=s.C),
    ("CNA", "DCOMP_CTRL"): {}, ("CNA", "DCOMP_REGNUM"): {},
    ("CNA", "DCOMP_ADDR0"): regs.address("CNA", "DCOMP_ADDR0", slots["weights"]),
    **{("CNA", f"DCOMP_AMOUNT{k}"): {} for k in range(16)},
    ("CNA", "CVT_CON5"): {},
    ("CNA", "PAD_CON1"): dict(PAD_VALUE=regs.to_signed(s.pad_value & 0xFFFF_FFFF, 32)),
    ("CORE", "MISC_CFG"): dict(PROC_PRECISION=p, DW_EN=int(dw), QD_EN=INT8["qd_en"] if s.out == INT8["out"] else 1),
    ("CORE", "DATAOUT_SIZE_0"): dict(DATAOUT_HEIGHT=OH - 1, DATAOUT_WIDTH=OW - 1),
    ("CORE", "DATAOUT_SIZE_1"): dict(DATAOUT_CHANNEL=OC - 1),
    ("CORE", "CLIP_TRUNCATE"): {}, ("CORE", "UNDOC_3030"): {},
    ("DPU", "FEATURE_MODE_CFG"): dict(BURST_LEN=15, CONV_MODE=3 if dw else 0, OUTPUT_MODE=2),
    ("DPU", "DATA_FORMAT"): dict(OUT_PRECISION=PREC[s.out], IN_PRECISION=p if s.precision != "tf32" else PREC["fp32"],
                                 PROC_PRECISION=p if s.precision != "tf32" else PREC["fp32"]),
    ("DPU", "OFFSET_PEND"): {},
    ("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", slots["output"], o0 * OW * 16),
    ("DPU", "DST_SURF_STRIDE"): dict(DST_SURF_STRIDE=OH_full * OW * 16),
    ("DPU", "DATA_CUBE_WIDTH"): dict(WIDTH=OW - 1),
    ("DPU", "DATA_CUBE_HEIGHT"): dict(HEIGHT=OH - 1),
    ("DPU", "DATA_CUBE_NOTCH_ADDR"): {},
    ("DPU", "DATA_CUBE_CHANNEL"): dict(ORIG_CHANNEL=OC - 1, CHANNEL=OC - 1),
    **({("DPU", "BS_CFG"): dict(BS_ALU_ALGO=2, BS_ALU_SRC=1, BS_RELU_BYPASS=0 if relu else 1, BS_MUL_BYPASS=1),
        ("DPU", "BS_ALU_CFG"): {}, ("DPU", "BS_MUL_CFG"): {}, ("DPU", "BS_RELUX_CMP_VALUE"): {}} if bias else
       {("DPU", k): v for k, v in bs_fields(bs if bs is not None else XStageOp(relu=relu)).items()}),
    ("DPU", "BS_OW_CFG"): dict(SIZE_E_2=s.atoms_per_group - 1, SIZE_E_1=s.atoms_per_group - 1, SIZE_E_0=s.atoms_per_group - 1,
                               OD_BYPASS=0 if ow_op is not None else 1),
    ("DPU", "BS_OW_OP"): dict(OW_OP=ow_op or 0),
    ("DPU", "WDMA_SIZE_0"): dict(CHANNEL_WDMA=OC - 1),
    ("DPU", "WDMA_SIZE_1"): dict(HEIGHT_WDMA=OH - 1, WIDTH_WDMA=OW - 1),
    ("DPU", "BN_CFG"): dict(BN_RELU_BYPASS=1, BN_MUL_BYPASS=1, BN_ALU_BYPASS=1, BN_BYPASS=1),
    ("DPU", "BN_ALU_CFG"): {}, ("DPU", "BN_MUL_CFG"): {}, ("DPU", "BN_RELUX_CMP_VALUE"): {},
    ("DPU", "EW_CFG"): dict(EW_RELU_BYPASS=1, EW_OP_CVT_BYPASS=1, EW_LUT_BYPASS=1, EW_OP_BYPASS=1, EW_BYPASS=1),
    ("DPU", "EW_CVT_OFFSET_VALUE"): {}, ("DPU", "EW_CVT_SCALE_VALUE"): dict(EW_OP_CVT_SCALE=1), ("DPU", "EW_RELUX_CMP_VALUE"): {},
    ("DPU", "OUT_CVT_OFFSET"): dict(OUT_CVT_OFFSET=out_cvt[2]),
    ("DPU", "OUT_CVT_SCALE"): dict(FP32TOFP16_EN=int(s.out == "fp16"), OUT_CVT_SCALE=out_cvt[0] & 0xFFFF),
    ("DPU", "OUT_CVT_SHIFT"): dict(OUT_CVT_SHIFT=out_cvt[1]),
    **{("DPU", f"EW_OP_VALUE_{k}"): {} for k in range(8)},
    ("DPU", "SURFACE_ADD"): dict(SURF_ADD=OH_full * OW * 16 * s.atoms_per_group),
    ("DPU", "UNDOC_40C4"): {},
    ("DPU_RDMA", "DATA_CUBE_WIDTH"): dict(WIDTH=OW - 1),
    ("DPU_RDMA", "DATA_CUBE_HEIGHT"): dict(HEIGHT=OH - 1),
    ("DPU_RDMA", "DATA_CUBE_CHANNEL"): dict(CHANNEL=OC - 1),
    ("DPU_RDMA", "SRC_BASE_ADDR"): {},
    ("DPU_RDMA", "BRDMA_CFG"): dict(BRDMA_DATA_USE=1 if bias else 0),
    ("DPU_RDMA", "BS_BASE_ADDR"): regs.address("DPU_RDMA", "BS_BASE_ADDR", slots["bias"]) if bias else {},
    ("DPU_RDMA", "NRDMA_CFG"): {}, ("DPU_RDMA", "BN_BASE_ADDR"): {},
    ("DPU_RDMA", "ERDMA_CFG"): dict(ERDMA_DISABLE=1),
    ("DPU_RDMA", "EW_BASE_ADDR"): {}, ("DPU_RDMA", "EW_SURF_STRIDE"): {},
    ("DPU_RDMA", "FEATURE_MODE_CFG"): dict(BURST_LEN=15, MRDMA_DISABLE=1, MRDMA_FP16TOFP32_EN=int(s.out == "fp16"),
                                           CONV_MODE=3 if dw else 0),
    ("DPU_RDMA", "SRC_DMA_CFG"): {}, ("DPU_RDMA", "SURF_NOTCH"): {}, ("DPU_RDMA", "PAD_CFG"): {},
    ("DPU_RDMA", "WEIGHT"): dict(E_WEIGHT=1, N_WEIGHT=1, B_WEIGHT=1, M_WEIGHT=1),
    ("DPU_RDMA", "EW_SURF_NOTCH"): {},
  }
  if ew is not None:
    prog |= {("DPU", k): v for k, v in ew_fields(ew).items()}
    prog |= {("DPU_RDMA", k): v for k, v in ew_rdma(ew, OH * OW * 16, 3 if dw else 0).items()}
  return prog

def kernel_chunks(s:ConvSpec, kernels_per_task:int|None=None) -> list[tuple[int, ConvSpec]]:
  """(first kernel, spec) of each chunk of `kernels_per_task` kernels (a multiple of the kernel group; None, or a
  depthwise convolution: one chunk of all)."""
  if kernels_per_task is None or s.depthwise or kernels_per_task >= s.kernels: return [(0, s)]
  assert kernels_per_task % s.group == 0
  return [(k0, replace(s, kernels=min(kernels_per_task, s.kernels - k0), out_c=None)) for k0 in range(0, s.kernels, kernels_per_task)]

def input_height(s:ConvSpec, kernels_per_task:int|None=None) -> int:
  """Rows of the input cube the tasks of `conv_programs` read (a band may read past the window, MIN_ROWS)."""
  return max(in_rows(sub, *band)[1] for _, sub in kernel_chunks(s, kernels_per_task) for band in row_split(sub))

def ew_tiles(s:ConvSpec, kernels_per_task:int|None, nbytes:int) -> list[tuple[int, ConvSpec, tuple[int, int], int]]:
  """(first kernel, spec, row band, byte offset) of each task's per-pixel EW operand, in `conv_programs`' task order:
  each task's cube (its channels x band rows x width, `nbytes` per element) packed whole, one after the other (a task
  reads a plain cube whose surfaces are one plane apart, the geometry GN validated, rocket_fp16_ew_ppu.md §2.3)."""
  out, off = [], 0
  for k0, sub in kernel_chunks(s, kernels_per_task):
    for o0, o1 in row_split(sub):
      out.append((k0, sub, (o0, o1), off))
      off += ceil_div(sub.OC, 16 // nbytes) * (o1 - o0) * sub.OW * 16
  return out

def ew_bytes(s:ConvSpec, kernels_per_task:int|None, nbytes:int) -> int:
  """Bytes of all of one image's EW operand cubes (`ew_tiles`)."""
  *_, (k0, sub, (o0, o1), off) = ew_tiles(s, kernels_per_task, nbytes)
  return off + ceil_div(sub.OC, 16 // nbytes) * (o1 - o0) * sub.OW * 16

def conv_programs(s:ConvSpec, slots:Mapping[str, int], kernels_per_task:int|None=None, diagonal:bool=False,
                  ew:EwOperand|None=None, **kw) -> list[Program]:
  """The whole convolution as tasks: one per row band of `row_split` and, with `kernels_per_task` (a multiple of the
  kernel group), per chunk of kernels (weights at the chunk's first kernel group, output at its first surface).
  `diagonal`: chunk k reads only its own s.C input channels (a depthwise convolution run as direct ones with
  block-diagonal weights: the input at the chunk's first channel surface, the cube's surface pitch unchanged).
  `ew`: a per-pixel EW operand whose task cubes start at ew.off (`ew_tiles`)."""
  chunks = kernel_chunks(s, kernels_per_task)
  ews = iter([replace(ew, off=ew.off + off) for *_, off in ew_tiles(s, kernels_per_task, ew.nbytes)] if ew is not None else [])
  if len(chunks) == 1: return [conv_program(s, slots, rows=band, ew=next(ews, None), **kw) for band in row_split(s)]
  out, c2o = [], 16 // s.out_bytes
  bpk = s.kh * s.kw * s.C * s.ebytes
  for k0, sub in chunks:
    for band in row_split(sub):
      prog = conv_program(sub, slots, rows=band, ew=next(ews, None), **kw)
      ch = {("CNA", "DCOMP_ADDR0"): regs.address("CNA", "DCOMP_ADDR0", slots["weights"], k0 * bpk),
            **({("CNA", "FEATURE_DATA_ADDR"): regs.address("CNA", "FEATURE_DATA_ADDR", slots["input"], in_rows(sub, *band)[0] * s.W * 16
                                                           + (k0 // (16 // s.ebytes)) * s.H * s.W * 16)} if diagonal else {}),
            ("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", slots["output"],
                                                   band[0] * s.OW * 16 + (k0 // c2o) * s.OH * s.OW * 16)}
      if "bias" in slots and kw.get("bias"): ch[("DPU_RDMA", "BS_BASE_ADDR")] = regs.address("DPU_RDMA", "BS_BASE_ADDR", slots["bias"], 4 * k0)
      out.append(override(prog, ch))
  return out
