"""Register programs built with our own encoder (tinygrad_rocket.regs), and a runner: for the emulator's tests and
scripts/bench_emu.py. They follow the hardware-validated programs field by field (gregordinary's fp16 conv/matmul
program and Mesa's int8 convolution, rocket_hw.md §4 and rocket_fp16_ew_ppu.md §2) so that tests can move one field at
a time away from a known-good program (`overrides`).

A program is an ordered dict {(block, register): {field: value} | AddressWrite}; `entries()` turns it into regcmd
entries through regs.write / regs.address. Layout helpers pack numpy arrays into the NPU's layouts (via the same index
functions as the emulator's layouts.py; fidelity with the hardware is what tests/fidelity checks, independently).
"""
from __future__ import annotations
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence
import numpy as np
from tinygrad_rocket import regs
from tinygrad_rocket.emu import layouts
from tinygrad_rocket.emu.descs import WEIGHT_GROUPS, DW_GROUPS, ELEMENT_BYTES

PREC = {"int8": 0, "int16": 1, "fp16": 2, "bf16": 3, "int32": 4, "fp32": 5, "int4": 6, "tf32": 7}
NP_DTYPE = {"int8": np.dtype(np.int8), "fp16": np.dtype("<f2"), "bf16": np.dtype("<u2"), "tf32": np.dtype("<f4"),
            "fp32": np.dtype("<f4"), "int32": np.dtype("<i4"), "int16": np.dtype("<i2")}
Program = dict  # {(block, reg): dict of fields | regs.AddressWrite}

def entries(prog:Program) -> list:
  out = []
  for (block, reg), v in prog.items():
    out.append(v if isinstance(v, regs.AddressWrite) else regs.write(block, reg, **v))
  return out

class Set(dict):
  """An override that replaces a register's fields instead of merging into them."""

def override(prog:Program, changes:Mapping[tuple[str, str], Any]|None) -> Program:
  """A copy with some registers changed: {..} fields merged into the register's fields, Set({..}) the register's
  fields replaced, an AddressWrite the register made an address, None the entry removed (left to earlier jobs)."""
  p = dict(prog)
  for k, v in (changes or {}).items():
    if v is None: p.pop(k, None)
    elif isinstance(v, (Set, regs.AddressWrite)) or isinstance(p.get(k), regs.AddressWrite): p[k] = dict(v) if isinstance(v, Set) else v
    else: p[k] = {**p.get(k, {}), **v}
  return p

# ---- layouts ------------------------------------------------------------------------------------------------------
def to_storage(x:np.ndarray, prec:str) -> np.ndarray:
  """Values -> the stored element type (bf16 stored as its top 16 bits, truncated; tf32 as fp32)."""
  if prec == "bf16": return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)
  return np.asarray(x).astype(NP_DTYPE[prec])

def pack_cube(x:np.ndarray, prec:str, surface_pitch:int|None=None) -> bytes:
  """(C, H, W) -> NC1HWC2 bytes, C zero-padded to whole atoms; surfaces `surface_pitch` bytes apart (default dense)."""
  st = to_storage(x, prec)
  C, H, W = st.shape
  c2 = 16 // st.dtype.itemsize
  full = np.zeros((layouts.ceil_div(C, c2) * c2, H, W), st.dtype)
  full[:C] = st
  atoms = layouts.cube_to_atoms(full, st.dtype)
  if surface_pitch is None: return atoms.tobytes()
  out = bytearray(surface_pitch * (atoms.shape[0] - 1) + H * W * 16)
  for s in range(atoms.shape[0]): out[s * surface_pitch:s * surface_pitch + H * W * 16] = atoms[s].tobytes()
  return bytes(out)

def unpack_cube(raw:bytes, prec:str, C:int, H:int, W:int, surface_pitch:int|None=None, base:int=0) -> np.ndarray:
  dt = NP_DTYPE[prec]
  c2 = 16 // dt.itemsize
  S = layouts.ceil_div(C, c2)
  pitch = surface_pitch if surface_pitch is not None else H * W * 16
  buf = np.frombuffer(raw, np.uint8)
  atoms = np.stack([buf[base + s * pitch:base + s * pitch + H * W * 16] for s in range(S)]).reshape(S, H, W, 16)
  return layouts.atoms_to_cube(atoms, dt, C).copy()

def pack_weights(w:np.ndarray, prec:str, depthwise:bool=False) -> bytes:
  """Direct (K, C, kh, kw) or depthwise (C, kh, kw) weights in the kernel-group layout of `prec`."""
  st = to_storage(w, prec)
  out = np.zeros(st.size, st.dtype)
  if depthwise:
    C, kh, kw = st.shape
    out[layouts.weight_index_depthwise(C, kh, kw, DW_GROUPS[prec])] = st
  else:
    K, C, kh, kw = st.shape
    out[layouts.weight_index_direct(K, C, kh, kw, *WEIGHT_GROUPS[prec])] = st
  return out.tobytes()

# ---- programs -----------------------------------------------------------------------------------------------------
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
    return layouts.ceil_div(self.C if self.depthwise else self.kernels, g) * g
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

def row_split(s:ConvSpec, max_data_banks:int|None=None) -> list[tuple[int, int]]:
  """Output-row bands [o0, o1) such that each task's input rows fit the CBUF next to the weights (Mesa splits the same
  way, rocket_hw.md §5.6): the weights take ceil(bytes/32 KiB) banks, the feature the rest of the 12."""
  c2 = 16 // s.ebytes
  row_bytes = s.W * layouts.ceil_div(s.C, c2) * 16
  banks = max_data_banks or (12 - layouts.ceil_div(s.weight_bytes, 32768))
  max_rows = banks * 32768 // row_bytes
  bands, o0 = [], 0
  while o0 < s.OH:
    o1 = s.OH
    while o1 > o0 + 1 and _in_rows(s, o0, o1)[1] - _in_rows(s, o0, o1)[0] > max_rows: o1 -= 1
    bands.append((o0, o1))
    o0 = o1
  return bands

def _in_rows(s:ConvSpec, o0:int, o1:int) -> tuple[int, int]:
  top = max(0, o0 * s.stride[0] - s.pad[0])
  bottom = min(s.H, (o1 - 1) * s.stride[0] - s.pad[0] + s.eff[0])
  return top, bottom

def conv_program(s:ConvSpec, slots:Mapping[str, int], bias:bool=False, relu:bool=False, out_cvt:tuple[int, int, int]=(1, 0, 0),
                 ow_op:int|None=None, rows:tuple[int, int]|None=None) -> Program:
  """The validated convolution program (GN fp16 conv/matmul; Mesa int8 values where the precision is int8).
  slots: buffer slot of 'input', 'weights', 'output' (+ 'bias' for int8 bias from BRDMA).
  out_cvt: (scale, shift, offset) of OUT_CVT. ow_op: BS_OW_OP (CPEND on when given, int8).
  rows: compute only output rows [o0, o1) (one task of a row split; Mesa's split addressing: the input/output base
  moves by whole rows, the surface strides stay those of the whole tensors)."""
  p = PREC[s.precision]
  c2 = 16 // s.ebytes
  OH_full, OW, OC = s.OH, s.OW, s.OC
  o0, o1 = rows or (0, OH_full)
  OH = o1 - o0
  top, bottom = _in_rows(s, o0, o1)
  H = bottom - top
  pad_top = max(0, s.pad[0] - o0 * s.stride[0])
  fd = H * s.W * layouts.ceil_div(s.C, c2) * 16
  banks = layouts.ceil_div(fd, 32768)
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
    ("CNA", "CBUF_CON0"): dict(WEIGHT_BANK=12 - banks, DATA_BANK=banks),
    ("CNA", "CBUF_CON1"): dict(DATA_ENTRIES=layouts.ceil_div(s.W * layouts.ceil_div(s.C, c2) * 16, 64)),
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
    ("CORE", "MISC_CFG"): dict(PROC_PRECISION=p, DW_EN=int(dw), QD_EN=1),
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
    ("DPU", "BS_CFG"): (dict(BS_ALU_ALGO=2, BS_ALU_SRC=1, BS_RELU_BYPASS=0 if relu else 1, BS_MUL_BYPASS=1) if bias else
                        dict(BS_ALU_BYPASS=1, BS_MUL_BYPASS=1) if relu else
                        dict(BS_RELU_BYPASS=1, BS_MUL_BYPASS=1, BS_ALU_BYPASS=1, BS_BYPASS=1)),
    ("DPU", "BS_ALU_CFG"): {}, ("DPU", "BS_MUL_CFG"): {}, ("DPU", "BS_RELUX_CMP_VALUE"): {},
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
  return prog

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
PPU_ENABLE = regs.op_enable_mask("PPU", "PPU_RDMA")

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

# ---- runner -------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
  out: dict[int, bytes]            # slot -> whole BO contents after the job(s)
  failure: str|None
  stats: list = field(default_factory=list)   # cost.JobStats per job
  iovas: dict[int, int] = field(default_factory=dict)

class Session:
  """One emulated open file with numbered buffer slots; runs task lists as jobs. Keeps its Npu, so register state
  persists between runs like on the hardware (`npu` shared on purpose in persistence tests)."""
  def __init__(self, npu=None):
    from tinygrad_rocket.emu import EmuFile, Npu
    from tinygrad_rocket.ioctl import RocketDriver
    self.npu = npu if npu is not None else Npu()
    self.file = EmuFile(self.npu)
    self.drv = RocketDriver(self.file)
    self.bos: dict[int, Any] = {}

  def close(self) -> None: self.drv.close()
  def __enter__(self) -> Session: return self
  def __exit__(self, *exc) -> None: self.close()

  def buffer(self, slot:int, data:bytes|int, fill:int=0) -> Any:
    """Create (or rewrite) buffer `slot` with `data` (bytes, or a size to zero/fill)."""
    size = data if isinstance(data, int) else len(data)
    bo = self.bos.get(slot)
    if bo is None or bo.size < size:
      bo = self.bos[slot] = self.drv.create_bo(max(size, 1))
    self.drv.prep_bo(bo.handle)
    bo.view[:] = bytes([fill]) * len(bo.view)
    if not isinstance(data, int): bo.view[:len(data)] = data
    self.drv.fini_bo(bo.handle)
    return bo

  def iovas(self) -> dict[int, int]: return {s: b.dma_address for s, b in self.bos.items()}

  def run(self, tasks:Sequence[regs.Task], outs:Sequence[int], jobs:Sequence[Sequence[int]]|None=None,
          extra_iovas:Mapping[int, int]|None=None, raw_enable:int|None=None) -> RunResult:
    """raw_enable: patch every op-enable entry to this mask after assembly (to test masks the encoder refuses)."""
    from tinygrad_rocket.ioctl import Job, JobFailedError
    tl = regs.assemble(list(tasks))
    rc = self.drv.create_bo(tl.nbytes)
    iovas = self.iovas() | dict(extra_iovas or {})
    words = tl.bind(iovas, rc.dma_address)
    if raw_enable is not None:
      op = (words >> np.uint64(48)) == np.uint64(regs.TARGET_OP_ENABLE)
      words[op] = np.uint64(regs.op_enable_entry(raw_enable))
    self.drv.prep_bo(rc.handle); rc.view[:tl.nbytes] = words.tobytes(); self.drv.fini_bo(rc.handle)
    addrs = tl.task_addresses(rc.dma_address)
    groups = jobs or [list(range(len(addrs)))]
    n0 = len(self.file.job_stats)
    self.drv.submit([Job([addrs[i] for i in g], [b.handle for s, b in self.bos.items() if s not in outs],
                         [self.bos[s].handle for s in outs]) for g in groups])
    failure = None
    for s in outs:
      try: self.drv.prep_bo(self.bos[s].handle)
      except JobFailedError as e: failure = failure or str(e.reason)
    self.drv.close_bo(rc)
    return RunResult({s: bytes(self.bos[s].view) for s in outs}, failure, list(self.file.job_stats)[n0:], iovas)

def conv_programs(s:ConvSpec, slots:Mapping[str, int], kernels_per_task:int|None=None, **kw) -> list[Program]:
  """The whole convolution as tasks: one per row band of `row_split` and, with `kernels_per_task` (a multiple of the
  kernel group), per chunk of kernels (weights at the chunk's first kernel group, output at its first surface)."""
  if kernels_per_task is None or s.depthwise or kernels_per_task >= s.kernels:
    return [conv_program(s, slots, rows=band, **kw) for band in row_split(s)]
  assert kernels_per_task % s.group == 0
  out, c2o = [], 16 // s.out_bytes
  bpk = s.kh * s.kw * s.C * s.ebytes
  for k0 in range(0, s.kernels, kernels_per_task):
    sub = replace(s, kernels=min(kernels_per_task, s.kernels - k0), out_c=None)
    for band in row_split(sub):
      prog = conv_program(sub, slots, rows=band, **kw)
      ch = {("CNA", "DCOMP_ADDR0"): regs.address("CNA", "DCOMP_ADDR0", slots["weights"], k0 * bpk),
            ("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", slots["output"],
                                                   band[0] * s.OW * 16 + (k0 // c2o) * s.OH * s.OW * 16)}
      if "bias" in slots and kw.get("bias"): ch[("DPU_RDMA", "BS_BASE_ADDR")] = regs.address("DPU_RDMA", "BS_BASE_ADDR", slots["bias"], 4 * k0)
      out.append(override(prog, ch))
  return out

def run_program(progs:Sequence[Program]|Program, buffers:Mapping[int, bytes|int], outs:Sequence[int], enable:int|None=None,
                npu=None, jobs=None, extra_iovas=None, fill:int=0, raw_enable:int|None=None) -> RunResult:
  """Convenience: a fresh Session (or one on `npu`), buffers created in slot order, the programs as tasks of one job."""
  if isinstance(progs, dict): progs = [progs]
  with Session(npu) as s:
    for slot in sorted(buffers): s.buffer(slot, buffers[slot], fill=fill if slot in outs else 0)
    tasks = [regs.Task(entries(p), enable if enable is not None else regs.MESA_CONV_ENABLE) for p in progs]
    return s.run(tasks, outs, jobs, extra_iovas, raw_enable)
