"""DPU (NVDLA SDP: BS and BN X-stages, EW stage, OUT_CVT, write DMA) and DPU_RDMA (BRDMA, NRDMA, ERDMA, MRDMA).

Datapath per output element (rocket_hw.md §4.3/§5.8, rocket_fp16_ew_ppu.md §1.4/§3/§7, GN notes where cited):
  main input (conv accumulator, or MRDMA in flying mode)
  -> CPEND (integer conv only): + OW_OP * S, S = window sum of the inputs (padding included)      [GN: signed 16-bit]
  -> CLIP_TRUNCATE (integer conv)                                                                 [CORE]
  -> BS stage: ALU (add / minus, operand from BS_ALU_CFG or BRDMA) then MUL then ReLU/ReLUX        [GN: (acc + A)*C]
  -> BN stage: MUL then ALU then ReLU/ReLUX                                                        [GN: x*MUL + ALU]
  -> EW stage: operand converter, ALU (max/min/add/minus/div) or MUL with the ERDMA operand, ReLU/ReLUX;
     or the LUT (EW_LUT_BYPASS = 0): interpolated table lookup of the BN output (rocket_fp16_ew_ppu.md §4)
  -> OUT_CVT: integer: round(v*SCALE >> SHIFT) + OFFSET, saturated; float: identity or (v + OFFSET)*2^-MINUS_EXP*SCALE
  -> FP32TOFP16 (float paths), write DMA.
Integer datapath when the DPU precisions are integer (int8 conv, all-integer flying ops), fp32 otherwise.
"""
from __future__ import annotations
from dataclasses import dataclass, field
import numpy as np
from tinygrad_rocket.emu import arith, layouts
from tinygrad_rocket.emu.core import HangError
from tinygrad_rocket.emu.descs import (ConvDesc, DpuDesc, RdmaDesc, XStage, UnsupportedConfig, ELEMENT_BYTES,
                                       WEIGHT_GROUPS, DW_GROUPS, DPU_PREC_FOR_CNA, _need)
from tinygrad_rocket.emu.memory import IovaSpace

# ⚠ Order inside the X-stages. BS: ALU then MUL, measured by GN on RK3588 ((acc + A)*C explains every element of the
# per-channel requant sweep, out-cvt-converter.md) and the TRM/NVDLA order. BN: MUL then ALU, measured by GN in float
# mode (LUT index bias added after the scale, rocket_fp16_ew_ppu.md §3.4). Each stage keeps its own measured order.
BS_ORDER = ("alu", "mul")
BN_ORDER = ("mul", "alu")
# ⚠ CPEND (BS_OW_OP * window sum) is added before CORE's CLIP_TRUNCATE (rocket_hw.md §5.4: uncertain; irrelevant when
# CLIP_TRUNCATE is 0; widgetii's QEMU model does the same, and Mesa's bias folding with truncate_bits = 1 is only
# consistent with it).
CPEND_BEFORE_CLIP_TRUNCATE = True
# ⚠ OUT_CVT_SCALE is a signed 16-bit multiplier: GN measured 0x8000 multiplying by -32768 (out-cvt-converter.md), which
# is what Mesa's carry bug produces for odd exponents. (The register database documents the field as unsigned.)
OUT_CVT_SCALE_SIGNED = True
# EW_OP_CVT_SCALE: every source writes values below 0x8000; its signedness is unknown, so larger values are refused.

INT_RANGES = {"int8": (-128, 127), "int16": (-(1 << 15), (1 << 15) - 1), "int32": (arith.INT32_MIN, arith.INT32_MAX)}
INT_DTYPES = {"int8": np.dtype(np.int8), "int16": np.dtype("<i2"), "int32": np.dtype("<i4")}
MAX_CUBE_DIM = 8191                       # 13-bit count-1 fields; exactly 8191 computes wrong tails (GN)
ERDMA_SIZE_BYTES = {1: 1, 2: 2, 3: 4}     # ERDMA_DATA_SIZE / EDATA_SIZE: 0 4-bit, 1 8-bit, 2 16-bit, 3 32-bit

@dataclass
class DpuResult:
  scatter: layouts.Scatter
  cube: np.ndarray                           # what the WDMA writes, (C, H, W) output elements (Scatter.commit_cube)
  read_bytes: dict[str, int] = field(default_factory=dict)
  read_ranges: list[tuple] = field(default_factory=list)
  brdma_use: int = 0
  ew: "EwPlan|None" = None

# --------------------------------------------------------------------------------------------------------------
# precision and mode checks
# --------------------------------------------------------------------------------------------------------------
def _check_precisions(d:DpuDesc, r:RdmaDesc|None, conv:ConvDesc|None, qd_en:int) -> None:
  for name, p in (("IN", d.in_prec), ("PROC", d.proc_prec), ("OUT", d.out_prec)):
    if p == "tf32": raise HangError(f"DPU DATA_FORMAT {name}_PRECISION = tf32 (7): the DPU writes nothing and the job times "
                                    "out (GN, rocket_fp16_ew_ppu.md §1.1/§6.B)")
  if conv is not None:
    want = DPU_PREC_FOR_CNA[conv.precision]
    _need(d.in_prec == want and d.proc_prec == want, f"DPU in/proc precision {d.in_prec}/{d.proc_prec} after a "
          f"{conv.precision} convolution (the validated programs use {want})")
    if conv.precision == "int8":
      if d.out_prec == "int16": raise HangError("DPU OUT_PRECISION int16 after an int8 convolution hangs the NPU "
                                                "(widgetii, rocket_fp16_ew_ppu.md §6.B)")
      _need(d.out_prec in ("int8", "int32", "fp32"), f"int8 convolution with {d.out_prec} output: not validated (GN: the "
            "fp16 writer is wrong beyond single tiles)")
      _need(not d.out.fp32tofp16, "FP32TOFP16_EN on the integer datapath is not documented")
      if d.out_prec == "int8": _need(qd_en == 1, "int8 output (OUT_CVT requant writer) with CORE QD_EN = 0 (GN: the "
                                     "requant writer requires QD_EN 1)")
      else: _need(d.od_bypass, f"CPEND (OD_BYPASS = 0) with {d.out_prec} output: GN measured every value wrong on the "
                  "int32-raw writer")
    else:
      _check_float_out(d, allow_fp16=conv.precision != "tf32")
  else:
    assert r is not None
    if r.in_prec == "fp16":
      _need(d.in_prec == d.proc_prec == "fp16", f"flying fp16 input with DPU in/proc {d.in_prec}/{d.proc_prec}")
      _need(d.out_prec == "fp16" and d.out.fp32tofp16, f"flying fp16 op with {d.out_prec} output (FP32TOFP16_EN "
            f"{int(d.out.fp32tofp16)}): only fp16 output is validated (AB; fp32 output hangs or needs untested geometry)")
      _need(r.fp16tofp32, "flying fp16 input without MRDMA_FP16TOFP32_EN (AB's FDIV variant, precision unknown)")
    elif r.in_prec in INT_RANGES:
      _need(d.in_prec == d.proc_prec == d.out_prec == r.in_prec == r.proc_prec, "integer flying op without the whole "
            f"precision bundle (DPU in/proc/out {d.in_prec}/{d.proc_prec}/{d.out_prec}, RDMA in/proc {r.in_prec}/"
            f"{r.proc_prec}): GN measured garbage unless every precision field says the same integer type")
      _need(not d.out.fp32tofp16, "FP32TOFP16_EN on the integer datapath is not documented")
    else: raise UnsupportedConfig(f"flying DPU input precision {r.in_prec} is not emulated")

def _check_float_out(d:DpuDesc, allow_fp16:bool) -> None:
  if d.out_prec == "fp32": _need(not d.out.fp32tofp16, "fp32 output with FP32TOFP16_EN is not documented")
  elif d.out_prec == "fp16" and allow_fp16: _need(d.out.fp32tofp16, "fp16 output without FP32TOFP16_EN is not documented")
  else: raise UnsupportedConfig(f"{d.out_prec} output from the {d.proc_prec} datapath is not emulated")

def out_group(d:DpuDesc, conv:ConvDesc|None, in_bytes:int) -> int:
  """Output channels per kernel group G_out (rocket_fp16_ew_ppu.md §1.4): the NG of the CNA precision, the depthwise
  channel group, or (flying) the channels of one input atom."""
  if conv is None: return 16 // in_bytes
  if conv.depthwise: return DW_GROUPS[conv.precision]
  return WEIGHT_GROUPS[conv.precision][0]

# --------------------------------------------------------------------------------------------------------------
# X-stages (BS, BN)
# --------------------------------------------------------------------------------------------------------------
@dataclass
class XOperands:
  alu: np.ndarray|None = None    # per channel, (C,) int64 or float32
  mul: np.ndarray|None = None
  cpend: np.ndarray|None = None

def _check_xstage(st:XStage, float_mode:bool) -> None:
  if st.bypass: return
  n = st.name
  _need(not st.prelu, f"{n}_MUL_PRELU: no RK3588 source exercised it")
  _need(not st.truncate_src, f"{n}_TRUNCATE_SRC is not documented")
  if not st.alu_bypass: _need(st.alu_algo in (2, 4), f"{n}_ALU_ALGO {st.alu_algo}: only 2 (add) and 4 (minus) are "
                               "documented (TRM; others reserved)")
  _need(not st.relux_en or not st.relu_bypass, f"{n}_RELUX_EN with {n}_RELU_BYPASS set is not documented")
  if float_mode:
    if not st.mul_bypass: _need(st.mul_shift == 0 and st.mul_shift_neg == 0, f"{n} MUL shift in float mode is not documented")
    _need(st.alu_bypass or not st.alu_src, f"{n} ALU operand from memory in float mode: element format not documented")
    _need(st.mul_bypass or not st.mul_src, f"{n} MUL operand from memory in float mode: element format not documented")

def _brdma_use(d:DpuDesc, r:RdmaDesc|None, rdma_on:bool) -> int:
  """Checks the BRDMA programming against what the BS stage consumes; returns BRDMA_DATA_USE (0: nothing read)."""
  bs = d.bs
  want_alu = not bs.bypass and not bs.alu_bypass and bool(bs.alu_src)
  want_mul = not bs.bypass and not bs.mul_bypass and bool(bs.mul_src)
  want_cpend = not d.od_bypass and bool(d.ow_src) and not d.float_mode
  use = r.brdma_use if (r is not None and rdma_on) else 0
  if not (want_alu or want_mul or want_cpend):
    _need(use == 0, f"BRDMA_DATA_USE {use} with no BS operand taken from memory: not documented")
    return 0
  _need(rdma_on and r is not None, "a BS operand from memory with DPU_RDMA not started (not in the op-enable mask)")
  for want, bit, what in ((want_alu, 1, "ALU"), (want_cpend, 2, "CPEND"), (want_mul, 4, "MUL")):
    _need(not want or use & bit, f"BS {what} operand from memory but BRDMA_DATA_USE {use} does not fetch it")
  _need(not use & 8, "BRDMA_DATA_USE TRT is not documented")
  return use

def _read_brdma(d:DpuDesc, r:RdmaDesc|None, use:int, mem:IovaSpace, res:DpuResult) -> XOperands:
  """Per-channel BS operands from BRDMA. BRDMA_DATA_USE 1: dense int32 per channel (Mesa bias). Any use with the CPEND
  or MUL bits: 64-byte groups of 8 channels, int32 A[8] at 0, int16 B[8] (CPEND) at 32, int16 C[8] (MUL) at 48 (GN HW
  sweep with use 7; the vendor capture [ALU][pad][MUL] of rocket_hw.md §5.7b is the same layout)."""
  if not use: return XOperands()
  assert r is not None
  C = d.channels
  if use == 1:
    raw = np.array(mem.ndarray(r.bs_base, "<i4", C, unit="BRDMA"))
    res.read_bytes["BRDMA"] = res.read_bytes.get("BRDMA", 0) + 4 * C
    res.read_ranges.append((r.bs_base, (), (), 4 * C))
    return XOperands(alu=raw.astype(np.int64))
  groups = layouts.ceil_div(C, 8)
  blob = np.array(mem.ndarray(r.bs_base, np.uint8, 64 * groups, unit="BRDMA")).reshape(groups, 64)
  res.read_bytes["BRDMA"] = res.read_bytes.get("BRDMA", 0) + 64 * groups
  res.read_ranges.append((r.bs_base, (), (), 64 * groups))
  A = blob[:, 0:32].copy().view("<i4").reshape(-1)[:C].astype(np.int64)
  B = blob[:, 32:48].copy().view("<i2").reshape(-1)[:C].astype(np.int64)
  Cm = blob[:, 48:64].copy().view("<i2").reshape(-1)[:C].astype(np.int64)
  return XOperands(alu=A if use & 1 else None, mul=Cm if use & 4 else None, cpend=B if use & 2 else None)

def _check_nrdma(d:DpuDesc, r:RdmaDesc|None, rdma_on:bool) -> None:
  bn = d.bn
  want_alu = not bn.bypass and not bn.alu_bypass and bn.alu_src
  want_mul = not bn.bypass and not bn.mul_bypass and bn.mul_src
  use = r.nrdma_use if (r is not None and rdma_on) else 0
  if want_alu and want_mul and use == 7:
    raise HangError("BN ALU and MUL operands from NRDMA (NRDMA_DATA_USE 7): every task hung to the watchdog (GN "
                    "out-cvt-converter.md, 'BN stage per-channel multiplier')")
  _need(not (want_alu or want_mul), "BN operands from memory (NRDMA): not established on the hardware (GN)")
  _need(use == 0, f"NRDMA_DATA_USE {use} with no BN operand taken from memory: not documented")

def _xstage_int(v:np.ndarray, st:XStage, ops:XOperands, order:tuple[str, str]) -> np.ndarray:
  if st.bypass: return v
  shape = (-1,) + (1,) * (v.ndim - 1)
  A = ops.alu.reshape(shape) if ops.alu is not None else arith.signed32(st.alu_operand)
  M = ops.mul.reshape(shape) if ops.mul is not None else arith.signed16(st.mul_operand)
  for step in order:
    if step == "alu" and not st.alu_bypass:
      v = arith.sat32(v + A if st.alu_algo == 2 else v - A)
    elif step == "mul" and not st.mul_bypass:
      p = v * M                                   # held wide, shifted by sign, rounded half to even, saturated (GN)
      v = arith.sat32(arith.rshift_round(p, np.where(p >= 0, st.mul_shift, st.mul_shift_neg), arith.XSTAGE_MUL_ROUND))
  if not st.relu_bypass:
    v = np.maximum(v, 0)
    if st.relux_en: v = np.minimum(v, arith.signed32(st.relux_cmp))
  return v

def _xstage_float(v:np.ndarray, st:XStage, order:tuple[str, str]) -> np.ndarray:
  if st.bypass: return v
  A = arith.f32_bits_to_f32(st.alu_operand)
  M = arith.fp16_bits_to_f32(st.mul_operand)
  with np.errstate(all="ignore"):
    for step in order:
      if step == "alu" and not st.alu_bypass: v = arith.f32(v + A if st.alu_algo == 2 else v - A)
      elif step == "mul" and not st.mul_bypass: v = arith.f32(v * M)
    if not st.relu_bypass:
      v = np.maximum(v, np.float32(0))
      if st.relux_en: v = np.minimum(v, arith.f32_bits_to_f32(st.relux_cmp))
  return arith.f32(v)

# --------------------------------------------------------------------------------------------------------------
# EW stage
# --------------------------------------------------------------------------------------------------------------
def ew_active(d:DpuDesc) -> bool:
  """Whether the EW stage consumes an ERDMA operand (the LUT path does not: its op stage is GN's no-op, _check_lut)."""
  return not d.ew.bypass and not d.ew.op_bypass and d.ew.lut_bypass

def _check_ew(d:DpuDesc, r:RdmaDesc|None, rdma_on:bool, flying:bool) -> None:
  ew = d.ew
  if ew.bypass: return
  if not ew.lut_bypass: return _check_lut(d)
  _need(not ew.relux_en or not ew.relu_bypass, "EW_RELUX_EN with EW_RELU_BYPASS set is not documented")
  if ew.op_bypass: return
  if ew.op_src == 1 and (not rdma_on or r is None or r.erdma_disable):
    raise HangError("EW operand armed (EW not bypassed, EW_OP_SRC = 1) but ERDMA is disabled or DPU_RDMA not started: "
                    "the DPU waits for the operand forever (GN, rocket_fp16_ew_ppu.md §6.B)")
  _need(ew.op_src == 1, "EW operand from EW_OP_VALUE registers (EW_OP_SRC = 0): no source exercised it")
  assert r is not None
  _need(not ew.prelu, "EW_MUL_PRELU: no source exercised it")
  _need(ew.truncate == 0 and ew.truncate_neg == 0, "EW_TRUNCATE / EW_TRUNCATE_NEG other than 0 are not documented")
  _need(ew.data_mode == r.erdma_mode, f"EW_DATA_MODE {ew.data_mode} differs from ERDMA_DATA_MODE {r.erdma_mode}")
  _need(ew.edata_size == r.erdma_size, f"EDATA_SIZE {ew.edata_size} differs from ERDMA_DATA_SIZE {r.erdma_size}")
  _need(r.erdma_mode == 1, f"ERDMA_DATA_MODE {r.erdma_mode}: only per-pixel operands (1) are validated; per-channel "
        "and per-channel-by-pixel layouts are not documented")
  _need(r.erdma_size in ERDMA_SIZE_BYTES, "4-bit EW operands are not emulated")
  if ew.op_type == 0: _need(ew.alu_algo in (0, 1, 2, 3, 4), f"EW_ALU_ALGO {ew.alu_algo}: no source exercised algos 5-8")
  if d.float_mode:
    is_mul, is_div = ew.op_type == 1, ew.op_type == 0 and ew.alu_algo == 3
    if is_mul and not ew.cvt_bypass:
      raise HangError("fp16 EW MUL with the EW input converter live times out (GN sdp-stage-precision.md)")
    _need(is_mul or is_div or not ew.cvt_bypass, "fp16 EW ALU op with the EW input converter bypassed: the hardware "
          "passes the main operand through on about half the elements (GN sdp-stage-precision.md)")
    _need(not is_div, "EW DIV: computed without the fp32 conversions, precision unknown (AB, atol 0.1)")
    if not ew.cvt_bypass:
      _need(ew.cvt_offset == 0 and ew.cvt_scale == 1 and ew.cvt_shift == 0, "a non-identity EW input converter in float "
            "mode is not documented (validated programs: offset 0, scale 1, shift 0)")
    _need(r.erdma_size in (2, 3), f"{8 * ERDMA_SIZE_BYTES[r.erdma_size]}-bit EW operand in float mode is not documented")
  else:
    _need(not (ew.op_type == 0 and ew.alu_algo == 3), "integer EW DIV is not documented")
    if flying: _need(ERDMA_SIZE_BYTES[r.erdma_size] == ELEMENT_BYTES[r.in_prec], f"{8 * ERDMA_SIZE_BYTES[r.erdma_size]}-bit "
                     f"EW operand on a {r.in_prec} flying op: GN's integer EW needs the whole precision bundle, element sizes included")
    if not flying: _need(r.erdma_size == 1, f"{8 * ERDMA_SIZE_BYTES[r.erdma_size]}-bit integer EW operand on a conv-fed DPU: "
                         "only Mesa's 8-bit add is validated (GN saw garbage from its int32 probes, sdp-stage-precision.md)")
    if not ew.cvt_bypass: _need(ew.cvt_scale < 0x8000, f"EW_OP_CVT_SCALE {ew.cvt_scale:#x}: sign of the field unknown")

def _ew_operand_dtype(d:DpuDesc, size:int) -> np.dtype:
  nbytes = ERDMA_SIZE_BYTES[size]
  if d.float_mode: return np.dtype("<f2") if nbytes == 2 else np.dtype("<f4")
  return {1: np.dtype(np.int8), 2: np.dtype("<i2"), 4: np.dtype("<i4")}[nbytes]

@dataclass(frozen=True)
class EwPlan:
  base: int; pitch: int; surfaces: int; dtype: np.dtype; mrdma_bytes: int; erdma_bytes: int

def _ew_plan(d:DpuDesc, r:RdmaDesc, flying:bool) -> EwPlan:
  """Where the per-pixel EW operand cube (C, H, W) is read from.

  Conv-fed (the HW-validated Mesa add_tensor / GN K-accumulation geometry): COMB_USE 5, MRDMA fetches the operand's even
  surfaces from SRC_BASE_ADDR and ERDMA the odd ones from EW_BASE_ADDR = SRC_BASE_ADDR + P; each reader steps by
  (W*H*16 + its notch) bytes after a surface, which both programs make 2P; EW_SURF_STRIDE = P. So the operand is a plain
  NC1HWC2 cube with surface pitch P at SRC_BASE_ADDR [inf: rocket_hw.md §4.4 "+1 surface" hypothesis]. Other values
  (e.g. Mesa's max(W*H, 12) floor at W*H < 12, or a zero notch, which GN saw broadcast atom 0) are refused: the hardware
  mis-strides them. Flying (DPU-only, AB): ERDMA alone from EW_BASE_ADDR, one surface."""
  W, H, C = d.width, d.height, d.channels
  dt = _ew_operand_dtype(d, r.erdma_size)
  c2 = 16 // dt.itemsize
  S = layouts.ceil_div(C, c2)
  plane = W * H * layouts.ATOM
  if flying:
    _need(r.comb_use in (0, 4), f"flying EW with COMB_USE {r.comb_use}")
    _need(S == 1 and C == c2, f"flying EW operand of {C} channels: only one full atom per pixel ({c2} channels) is validated")
    return EwPlan(r.ew_base, plane, 1, dt, 0, plane)
  _need(r.comb_use == 5, f"conv-fed EW operand with COMB_USE {r.comb_use}: only 5 (MRDMA+ERDMA share the operand, "
        "Mesa/GN) is validated")
  _need(not r.mrdma_disable, "COMB_USE 5 with MRDMA disabled is not documented")
  P = r.ew_base - r.src_base
  _need(P >= plane, f"EW_BASE_ADDR - SRC_BASE_ADDR = {P}: the operand's second surface must follow the first")
  for name, notch in (("SURF_NOTCH", r.surf_notch), ("EW_SURF_NOTCH", r.ew_surf_notch)):
    _need(plane + notch == 2 * P, f"{name} {notch}: the reader would step {plane + notch} bytes per surface, not 2*{P}; "
          "the hardware mis-strides (e.g. Mesa's max(W*H,12) floor when W*H < 12, GN k-accumulation.md)")
  _need(r.ew_surf_stride == P, f"EW_SURF_STRIDE {r.ew_surf_stride} != the operand surface pitch {P} (GN: per-pixel "
        "mode, stride/notch and base must all match)")
  return EwPlan(r.src_base, P, S, dt, (S + 1) // 2 * plane, S // 2 * plane)

def _read_ew_operand(d:DpuDesc, p:EwPlan, mem:IovaSpace, res:DpuResult) -> np.ndarray:
  W, H = d.width, d.height
  row = W * layouts.ATOM
  atoms = layouts.gather(mem, p.base, (p.surfaces, H), (p.pitch, row), row, "ERDMA")
  res.read_ranges.append((p.base, (p.surfaces, H), (p.pitch, row), row))
  for unit, n in (("MRDMA", p.mrdma_bytes), ("ERDMA", p.erdma_bytes)):
    if n: res.read_bytes[unit] = res.read_bytes.get(unit, 0) + n
  return layouts.atoms_to_cube(atoms.reshape(p.surfaces, H, W, layouts.ATOM), p.dtype, d.channels)

def _ew_cvt_int(e:np.ndarray, ew) -> np.ndarray:
  """EW input converter (integer): add-first ((e + OFFSET)*SCALE) >> SHIFT, or mul-first (e*SCALE >> SHIFT) + OFFSET
  (rocket_hw.md §5.8 step 4, Mesa's fused ADD programming)."""
  if ew.cvt_bypass: return e
  mode = arith.round_mode(ew.cvt_round)
  if ew.cvt_type == 1: return arith.rshift_round((e + ew.cvt_offset) * ew.cvt_scale, ew.cvt_shift, mode)
  return arith.rshift_round(e * ew.cvt_scale, ew.cvt_shift, mode) + ew.cvt_offset

def _ew_int(v:np.ndarray, e:np.ndarray, ew) -> np.ndarray:
  if ew.op_type == 1 and e.dtype.itemsize == 4:
    e = e.astype(np.int64) & 0xFFFF                            # GN: an int32 MUL reads its operand as signed int16
    e = np.where(e >= 0x8000, e - 0x10000, e)
  e = _ew_cvt_int(e.astype(np.int64), ew)
  if ew.op_type == 1: return arith.sat32(v * e)
  algo = ew.alu_algo
  if algo == 0: return np.maximum(v, e)
  if algo == 1: return np.minimum(v, e)
  if algo == 2: return arith.sat32(v + e)
  return arith.sat32(v - e)                                    # 4: main minus operand

def _ew_float(v:np.ndarray, e:np.ndarray, ew) -> np.ndarray:
  e = arith.fp16_to_f32(e) if e.dtype == np.float16 else e.astype(np.float32)
  with np.errstate(all="ignore"):
    if ew.op_type == 1: return arith.f32(v * e)
    algo = ew.alu_algo
    if algo == 0: return np.maximum(v, e)
    if algo == 1: return np.minimum(v, e)
    if algo == 2: return arith.f32(v + e)
    return arith.f32(v - e)

def _ew_relu(v:np.ndarray, ew, float_mode:bool) -> np.ndarray:
  if ew.relu_bypass: return v
  v = np.maximum(v, np.float32(0) if float_mode else 0)
  if ew.relux_en: v = np.minimum(v, arith.f32_bits_to_f32(ew.relux_cmp) if float_mode else arith.signed32(ew.relux_cmp))
  return v


# --------------------------------------------------------------------------------------------------------------
# EW-stage LUT (rocket_fp16_ew_ppu.md §4; NVDLA SDP "LE/LO hybrid" as RK3588 has it: 2 x 513 entries)
# --------------------------------------------------------------------------------------------------------------
# The only LUT programming any source ran (GN gen_lut_activation_fp16 [HW]; AB silu.py [HW-weak]), §4.2: LUT_CFG 0x68
# (HYBRID_PRIORITY 1, OFLOW_PRIORITY 1, LO_LE_MUX 2; CAL_SEL / UFLOW_PRIORITY / EXPAND_EN / ROAD_SEL 0), INDEX_SELECT 5
# on both tables, LE = [-16384, 0] and LO = [0, 16384] in index units (LE_END / LO_START left 0). Anything else
# (exponent tables, EXPAND_EN, other steps or bounds) is refused: no source measured it.
LUT_CFG_VALIDATED = dict(cal_sel=0, hybrid_priority=1, oflow_priority=1, uflow_priority=0, lo_le_mux=2, expand_en=0, road_sel=0)
LUT_INDEX_SELECT = 5
LUT_STEP = 1 << LUT_INDEX_SELECT                     # index units per table segment
LUT_SPAN = 512 * LUT_STEP                            # 16384: 512 segments per table
LUT_LE_RANGE, LUT_LO_RANGE = (-LUT_SPAN, 0), (0, LUT_SPAN)
LUT_ENTRY_MAX = 0x7FFF                               # GN: unsigned Q0.15 entries; the sign of 0x8000.. is unknown (AB
                                                     # stored int16 [HW-weak]): refused when read
# ⚠ Table choice. §4.3 (GN "QUIRK 2") says LE/LO follows sign(x) of the pre-BN value, not the index. GN's own measured
# shifted single tables contradict that as a rule for the whole domain: exp on [-16, 0] (x < 0 everywhere, whole
# domain in the LO half via BN_ALU, LE filled flat with LO[0]) reads 5.5e-4 [HW]; the shifted tanh with BN_ALU 8192 reads
# ACC 0.0007 [HW]; shifted ELU/Abs work. With sign(x) selection all of them would read the flat LE. So the emulator
# selects by the index as NVDLA's hit logic does (X in the LE range -> LE, in the LO range -> LO, both (X = 0) ->
# HYBRID_PRIORITY = LO, below both -> UFLOW_PRIORITY = LE underflow, above both -> OFLOW_PRIORITY = LO overflow), and
# treats sign(x) as what GN saw it to be: the trigger of the x ~ 0 spike (LUT_X0_SPIKE_INDEX_UNITS). For tables whose
# index has the sign of x on every input (BN_ALU = -0.0, or a shift that keeps a one-sided domain on its own side, as
# ops/lut.py builds them), both readings give the same result.
# ⚠ Arithmetic: X = fp32(fp32(x) * fp16(BN_MUL)) + fp32(BN_ALU) (the BN stage, fp32); inside a table
# v = T[i] + f*(T[i+1] - T[i]) with i, f the integer and fraction of (X - START) / 2^INDEX_SELECT, and beyond the ends
# v = T[0] + (X - START)*SCALE/2^SHIFT (underflow) or T[512] + (X - END)*SCALE/2^SHIFT (overflow) (§4.3); computed
# exactly and rounded once to fp32 (the reference's "linear interpolation in fp32", §7.3; the fraction width is not
# documented). No clamp of the extrapolated value is documented: none is applied.
# ⚠ QUIRK 4 (§4.6, GN [HW]): a q = 0 entry decodes to ~4.0 instead of 0. Measured with OUT_CVT_OFFSET 0 (exp without the
# q >= 1 floor: every x whose table value is 0 read ~4.0). Reproduced there: an interpolated value of exactly 0 with
# OFFSET 0 outputs LUT_QZERO_OUTPUT. With another OFFSET (GN suspects the fault in the sigmoid LE deep tail, unmeasured)
# a zero table value is refused.
LUT_QZERO_OUTPUT = 4.0
# ⚠ QUIRK 2 (§4.6, GN [HW]): with a signed decode (negative OUT_CVT_OFFSET) inputs within ~R/8192 of x = 0 (R the table's
# input half-range, i.e. ~2 index units; ELU probe: ~±5e-4) read a discrete +64..+128 error. Magnitude and band are not
# precise enough to reproduce: a task with a negative OFFSET and any input with |x * BN_MUL| below twice GN's band is
# refused.
LUT_X0_SPIKE_INDEX_UNITS = 4.0
# ⚠ QUIRK 1 (§4.6, GN [HW]): exactly-constant runs (HardSwish x <= -3, ReLU's zero branch) and a flat underflow tail
# (HardSwish knee table) spike +16..+128, magnitude not reproducible. Every reported case has a signed decode or q = 0
# entries; GN's validated unsigned tables read long constant runs cleanly (exp: ~190 entries of q = 1 at OFFSET 0,
# 5.5e-4; sigmoid: the flat LO overflow at OFFSET 1, 0.00146), and its tanh (OFFSET -16384) reads pairs of equal
# entries and a flat LO overflow cleanly (0.0034). Refused: with a negative OFFSET, an input interpolated inside a run of
# LUT_FLAT_RUN or more equal entries, or extrapolated below the LE table with slope 0.
LUT_FLAT_RUN = 3

def _check_lut(d:DpuDesc) -> None:
  """The LUT path as GN/AB programmed it (§4.1-§4.2); everything else is refused with the reason."""
  ew, lut = d.ew, d.lut
  assert lut is not None
  _need(d.float_mode and d.proc_prec == "fp16", f"the LUT at DPU precision {d.proc_prec}: only fp16 (flying or after an "
        "fp16 conv, GN) is validated")
  _need(d.out_prec == "fp16" and d.out.fp32tofp16, f"LUT with {d.out_prec} output: only fp16 output (FP32TOFP16_EN) is validated")
  _need(d.bs.bypass, "LUT with an active BS stage: not validated (the x ~ 0 quirk is defined on the BN input)")
  bn = d.bn
  _need(not bn.bypass and not bn.mul_bypass and not bn.alu_bypass and bn.relu_bypass and bn.alu_algo == 2,
        "LUT without the BN index stage x*BN_MUL + BN_ALU (BN_CFG 0x20040: MUL and ALU add active, ReLU bypassed, GN/AB)")
  _need(ew.relu_bypass and not ew.relux_en, "EW ReLU after the LUT: not validated (EW_RELU_BYPASS 1 in GN/AB)")
  _need(ew.cvt_bypass, "LUT with the EW operand converter live: not validated (EW_OP_CVT_BYPASS 1 in GN/AB)")
  # GN writes EW_CFG 0x300: EW_OP_BYPASS 0 with the ALU max of an EW_OP_VALUE register operand, and its sigmoid's
  # negative half is right, so that op does not clamp the index [inf]; AB's SiLU bypasses it (0x302). Both accepted,
  # the op taken as having no effect; any other op setting is refused.
  if not ew.op_bypass:
    _need(ew.op_src == 0 and ew.op_type == 0 and ew.alu_algo == 0 and not ew.prelu, "LUT with an EW ALU/MUL operation: "
          "only GN's word (EW_CFG 0x300: OP_SRC 0, ALU max, converter bypassed) and AB's (OP_BYPASS) are validated")
  got = {k: getattr(lut, k) for k in LUT_CFG_VALIDATED}
  _need(got == LUT_CFG_VALIDATED, f"LUT_CFG {got}: only 0x68 (HYBRID 1, OFLOW 1, LO_LE_MUX 2, the rest 0; GN, AB) is "
        "validated (exponent tables, EXPAND_EN, ROAD_SEL, CAL_SEL, other priorities: no source)")
  _need(lut.le_index_select == lut.lo_index_select == LUT_INDEX_SELECT, f"LUT INDEX_SELECT LE {lut.le_index_select} / LO "
        f"{lut.lo_index_select}: only {LUT_INDEX_SELECT} (GN, AB) is validated")
  bounds = (lut.le_start, lut.le_end), (lut.lo_start, lut.lo_end)
  _need(bounds == (LUT_LE_RANGE, LUT_LO_RANGE), f"LUT LE [{lut.le_start}, {lut.le_end}] / LO [{lut.lo_start}, {lut.lo_end}]: "
        f"only LE {list(LUT_LE_RANGE)} / LO {list(LUT_LO_RANGE)} (513 entries at step {LUT_STEP}, GN, AB) are validated")
  st = lut.storage
  _need(st is not None, "no LUT RAM attached to this register file")
  _need(bool(st.written.all()), f"LUT task with {st.written.size - int(st.written.sum())} of the {st.written.size} table "
        "entries unknown (never written since reset, or touched by an undocumented port access): contents unknown")

def _flat_segments(T:np.ndarray) -> np.ndarray:
  """(2, 512): whether segment k of each table lies in a run of >= LUT_FLAT_RUN equal entries."""
  out = np.zeros((T.shape[0], T.shape[1] - 1), bool)
  for t in range(T.shape[0]):
    run_id = np.concatenate([[0], np.cumsum(T[t, 1:] != T[t, :-1])])
    run_len = np.bincount(run_id)[run_id]
    out[t] = (T[t, 1:] == T[t, :-1]) & (run_len[:-1] >= LUT_FLAT_RUN)
  return out

def _slope(scale_shift:tuple[int, int], what:str) -> float:
  scale, shift = scale_shift
  _need(scale < 0x8000, f"{what} slope scale {scale:#x}: the sign of the 16-bit field is unknown (every source < 0x8000)")
  return scale / float(1 << shift)

def _lut(d:DpuDesc, X:np.ndarray, x:np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The LUT output for index values X (fp32, after BN) of inputs x (the BN input); also the mask of outputs QUIRK 4
  replaces. Refuses the data-dependent quirks it does not reproduce (QUIRK 1 and 2, above)."""
  lut, off = d.lut, d.out.offset
  assert lut is not None
  T = lut.storage.entries                                # (2, 513): LE, LO
  Xd = X.astype(np.float64)
  _need(not np.isnan(Xd).any(), "NaN reaching the LUT: its behaviour is not documented")
  under, over = Xd < LUT_LE_RANGE[0], Xd > LUT_LO_RANGE[1]
  use_lo = Xd >= 0                                       # X = 0 hits both tables: HYBRID_PRIORITY 1 = LO
  start = np.where(use_lo, LUT_LO_RANGE[0], LUT_LE_RANGE[0])
  pos = np.clip((Xd - start) / LUT_STEP, 0, 512)
  i = np.minimum(np.floor(pos).astype(np.int64), 511)
  t = use_lo.astype(np.int64)
  lo_e, hi_e = T[t, i], T[t, i + 1]
  inside = ~(under | over)
  used = np.zeros(T.shape, bool)                          # entries an interpolation reads
  used[t[inside], i[inside]] = used[t[inside], i[inside] + 1] = True
  if under.any(): used[0, 0] = True
  if over.any(): used[1, 512] = True
  _need(not (T[used] > LUT_ENTRY_MAX).any(), f"LUT entries above {LUT_ENTRY_MAX:#x} read: signed (AB) or unsigned (GN) "
        "16-bit entries, not established")
  v = lo_e + (pos - i) * (hi_e - lo_e)
  if under.any(): v = np.where(under, T[0, 0] + (Xd - LUT_LE_RANGE[0]) * _slope(lut.le_uflow, "LE underflow"), v)
  if over.any(): v = np.where(over, T[1, 512] + (Xd - LUT_LO_RANGE[1]) * _slope(lut.lo_oflow, "LO overflow"), v)
  if off < 0:
    M = arith.fp16_bits_to_f32(d.bn.mul_operand)
    near0 = np.abs(x.astype(np.float64) * float(M)) < LUT_X0_SPIKE_INDEX_UNITS
    _need(not near0.any(), f"LUT with a signed decode (OUT_CVT_OFFSET {off}) and {int(near0.sum())} input(s) within "
          f"{LUT_X0_SPIKE_INDEX_UNITS:g} index units of x = 0: the hardware spikes +64..+128 there (GN QUIRK 2, "
          "rocket_fp16_ew_ppu.md §4.6); not reproduced")
    hit_flat = inside & _flat_segments(T)[t, i]
    hit_flat |= under & (lut.le_uflow[0] == 0)
    _need(not hit_flat.any(), f"LUT with a signed decode (OUT_CVT_OFFSET {off}) reading an exactly flat region "
          f"({int(hit_flat.sum())} input(s): a run of >= {LUT_FLAT_RUN} equal entries, or the LE underflow with slope 0): "
          "the hardware's mux spikes +16..+128 there (GN QUIRK 1, rocket_fp16_ew_ppu.md §4.6); not reproduced")
  zero = v == 0
  if zero.any(): _need(off == 0, f"LUT value 0 with OUT_CVT_OFFSET {off}: the q = 0 fault (GN QUIRK 4) is measured only "
                       "with OFFSET 0")
  return arith.f32(v), zero

# --------------------------------------------------------------------------------------------------------------
# OUT_CVT
# --------------------------------------------------------------------------------------------------------------
def _out_cvt(d:DpuDesc, v:np.ndarray) -> np.ndarray:
  o = d.out
  scale = arith.signed16(o.scale) if OUT_CVT_SCALE_SIGNED else o.scale
  if not d.float_mode:
    # GN out-cvt-converter.md: sat(round(acc*SCALE >> SHIFT) + OFFSET); MINUS_EXP and CVT_TYPE are no-ops here
    y = arith.rshift_round(v * scale, o.shift, arith.round_mode(o.cvt_round)) + o.offset
    if d.out_prec in INT_RANGES: return arith.saturate(y, *INT_RANGES[d.out_prec]).astype(INT_DTYPES[d.out_prec])
    return arith.sat32(y).astype(np.float32)                 # fp32 output: exact cast of the int32 (GN)
  _need(o.shift == 0, f"OUT_CVT_SHIFT {o.shift} on the float datapath is not documented")
  with np.errstate(all="ignore"):
    if o.cvt_type == 0:
      _need(scale == 1 and o.offset == 0 and o.minus_exp == 0, "float OUT_CVT with CVT_TYPE 0 and a non-identity "
            "scale/offset/MINUS_EXP is not documented")
      y = arith.f32(v)
    else:   # GN dpu-lut-activation / out-cvt-converter: (v + OFFSET) * 2^-MINUS_EXP * SCALE, in fp32
      y = arith.f32(arith.f32(v + np.float32(o.offset)) * np.float32(2.0 ** -o.minus_exp))
      y = arith.f32(y * np.float32(scale))
  return arith.to_fp16(y) if d.out_prec == "fp16" else y.astype(np.float32, copy=False)

# --------------------------------------------------------------------------------------------------------------
# the whole DPU task
# --------------------------------------------------------------------------------------------------------------
def _read_mrdma_main(d:DpuDesc, r:RdmaDesc, mem:IovaSpace, res:DpuResult) -> np.ndarray:
  """Flying-mode main input: one NC1HWC2 surface (C == C2) of W x H pixels at SRC_BASE_ADDR (AB/GN flying ops)."""
  dt = {"fp16": np.dtype("<f2"), **INT_DTYPES}[r.in_prec]
  c2 = 16 // dt.itemsize
  W, H = d.width, d.height
  atoms = layouts.gather(mem, r.src_base, (1, H), (0, W * layouts.ATOM), W * layouts.ATOM, "MRDMA")
  res.read_bytes["MRDMA"] = res.read_bytes.get("MRDMA", 0) + W * H * layouts.ATOM
  res.read_ranges.append((r.src_base, (1, H), (0, W * layouts.ATOM), W * layouts.ATOM))
  cube = layouts.atoms_to_cube(atoms.reshape(1, H, W, layouts.ATOM), dt, c2)
  return arith.fp16_to_f32(cube) if r.in_prec == "fp16" else cube.astype(np.int64)

@dataclass(frozen=True)
class DpuPlan:
  """What prepare derives from the descriptions alone: the WDMA block and the operand plans."""
  dst_base: int; shape: tuple[int, int]; strides: tuple[int, int]; row: int
  brdma_use: int; ew: "EwPlan|None"

def prepare(d:DpuDesc, r:RdmaDesc|None, rdma_on:bool, conv:ConvDesc|None, qd_en:int, mem:IovaSpace,
            pl:DpuPlan|None=None) -> DpuResult:
  """Every check of the DPU/DPU_RDMA programming (hangs, unsupported combinations) and the write plan (the whole
  destination checked against the IOVA map). Reads nothing. pl: plan(...) of the same descriptions, if already made."""
  if pl is None: pl = plan(d, r, rdma_on, conv, qd_en)
  if d.lut is not None: _check_lut(d)     # the LUT RAM's state is not in the registers: checked every task
  res = DpuResult(None, None, brdma_use=pl.brdma_use, ew=pl.ew)  # type: ignore[arg-type]
  res.scatter = layouts.plan_scatter(mem, pl.dst_base, pl.shape, pl.strides, pl.row, "WDMA")
  return res

def plan(d:DpuDesc, r:RdmaDesc|None, rdma_on:bool, conv:ConvDesc|None, qd_en:int) -> DpuPlan:
  """prepare's checks and geometry that depend on the descriptions only (a function of the registers)."""
  flying = conv is None
  if flying:
    if not d.flying: raise HangError("DPU started without CNA/CORE and without FLYING_MODE: it waits for convolution data forever")
    _need(rdma_on and r is not None, "flying DPU op without DPU_RDMA in the op-enable mask (no MRDMA input)")
    _need(r.flying, "DPU FLYING_MODE without DPU_RDMA FLYING_MODE")
    _need(not r.mrdma_disable, "flying DPU op with MRDMA disabled: no main input")
    if r.comb_use & 1: raise HangError(f"flying DPU op with COMB_USE {r.comb_use} (bit 0 set) never completes "
                                       "(GN sdp-stage-precision.md)")
  else:
    _need(not d.flying, "DPU FLYING_MODE with the convolution running: the conv result would go nowhere")
    if rdma_on:
      assert r is not None
      _need(not r.flying, "DPU_RDMA FLYING_MODE with a convolution-fed DPU")
      if not r.mrdma_disable and r.comb_use == 0:
        raise HangError("MRDMA trap: conv-fed DPU with DPU_RDMA started, MRDMA_DISABLE = 0 and COMB_USE 0, the MRDMA waits "
                        "forever (GN, rocket_fp16_ew_ppu.md §6.B)")
  _check_precisions(d, r, conv, qd_en)
  for name, n in (("width", d.width), ("height", d.height), ("channels", d.channels)):
    _need(n != MAX_CUBE_DIM, f"a DPU cube {name} of exactly {MAX_CUBE_DIM}: the hardware corrupts ~54 tail positions (GN, "
          "rocket_fp16_ew_ppu.md §1.6)")
  if rdma_on:
    assert r is not None
    _need((r.width, r.height, r.channels) == (d.width, d.height, d.channels), f"DPU_RDMA cube {r.channels}x{r.height}x"
          f"{r.width} differs from the DPU cube {d.channels}x{d.height}x{d.width}")
  if flying:
    assert r is not None
    _need(d.orig_channels == d.channels, f"flying op with ORIG_CHANNEL+1 = {d.orig_channels} != CHANNEL+1 = {d.channels}: "
          "the hardware gets only some lanes of each atom right (GN sdp-stage-precision.md)")
    _need(d.conv_mode == 0 and r.conv_mode == 0, "flying op with a depthwise CONV_MODE")
  else:
    assert conv is not None
    _need((d.width, d.height, d.channels) == (conv.out_w, conv.out_h, conv.out_c), f"DPU cube {d.channels}x{d.height}x"
          f"{d.width} differs from the CORE output {conv.out_c}x{conv.out_h}x{conv.out_w}")
    want_mode = 3 if conv.depthwise else 0
    _need(d.conv_mode == want_mode and (not rdma_on or r.conv_mode == want_mode), f"DPU/DPU_RDMA CONV_MODE "
          f"{d.conv_mode}/{r.conv_mode if rdma_on and r else '-'} with a {'depthwise' if conv.depthwise else 'direct'} "
          "convolution: the hardware computes channel-plausible but wrong output (GN depthwise-conv.md)")
  float_mode = d.float_mode
  _check_xstage(d.bs, float_mode); _check_xstage(d.bn, float_mode)
  _check_nrdma(d, r, rdma_on)
  _check_ew(d, r, rdma_on, flying)
  if rdma_on: _need(r.erdma_disable or ew_active(d), "ERDMA enabled with no EW operand consumer is not documented")

  if flying:
    c2 = 16 // ELEMENT_BYTES[r.in_prec]
    _need(d.channels == c2, f"flying input of {d.channels} channels: only one full atom per pixel ({c2} channels) is "
          "validated; the MRDMA surface pitch is not documented")
  # ---- output geometry (validated before any computation) ----
  in_bytes = ELEMENT_BYTES[r.in_prec] if flying else ELEMENT_BYTES[conv.precision]
  g_out = out_group(d, conv, in_bytes)
  atoms_per_group = g_out * d.out_bytes // 16
  _need(atoms_per_group <= 8, f"{g_out} channels of {d.out_prec} per group need {atoms_per_group} atoms: more than "
        "SIZE_E can express (GN: the hardware writes at the wrong stride)")
  _need(d.size_e == atoms_per_group - 1, f"SIZE_E {d.size_e} with {g_out} {d.out_prec} channels per group (needs "
        f"{atoms_per_group - 1}, rocket_fp16_ew_ppu.md §1.4): the hardware leaves surfaces unwritten or mis-strides")
  _need(d.channels % g_out == 0, f"{d.channels} output channels are not whole {g_out}-channel groups: the hardware "
        "writes garbage (GN, rocket_fp16_ew_ppu.md §6.C)")
  c2o = 16 // d.out_bytes
  n_surf, n_groups = d.channels // c2o, d.channels // g_out
  plane = d.width * d.height * layouts.ATOM
  if n_groups > 1:
    _need(d.surface_add == atoms_per_group * d.dst_surf_stride, f"SURFACE_ADD {d.surface_add} != {atoms_per_group} * "
          f"DST_SURF_STRIDE {d.dst_surf_stride}: the hardware mis-strides the kernel groups (rocket_fp16_ew_ppu.md §1.4)")
  if n_surf > 1:
    _need(d.dst_surf_stride >= plane, f"DST_SURF_STRIDE {d.dst_surf_stride} < one {plane}-byte surface: surfaces overlap")
  row = d.width * layouts.ATOM
  if float_mode: _need(not (rdma_on and r and r.brdma_use), "BRDMA in float mode: element format not documented")
  brdma_use = _brdma_use(d, r, rdma_on)
  ew = _ew_plan(d, r, flying) if ew_active(d) else None
  if not d.od_bypass and not float_mode: _need(not flying, "CPEND (OD_BYPASS = 0) on a flying op: no window sum")
  return DpuPlan(d.dst_base, (n_surf, d.height), (d.dst_surf_stride, row), row, brdma_use, ew)

def compute(res:DpuResult, d:DpuDesc, r:RdmaDesc|None, rdma_on:bool, conv:ConvDesc|None, acc:np.ndarray|None,
            window_sum:np.ndarray|None, mem:IovaSpace) -> None:
  """Reads the DPU_RDMA operands and runs the datapath; leaves the WDMA's elements in res.cube (written by the caller
  after every DMA read of the task succeeded)."""
  flying, float_mode = conv is None, d.float_mode
  # ---- operands ----
  bs_ops = _read_brdma(d, r, res.brdma_use, mem, res)
  e = _read_ew_operand(d, res.ew, mem, res) if res.ew is not None else None

  # ---- datapath ----
  if flying: v = _read_mrdma_main(d, r, mem, res)
  elif float_mode: v = acc.astype(np.float32, copy=False)   # (the stages below make new arrays: acc is not modified)
  else: v = acc.astype(np.int64)
  if not float_mode:
    cpend = None
    if not d.od_bypass:
      assert window_sum is not None
      op = bs_ops.cpend.reshape(-1, 1, 1) if d.ow_src else d.ow_op
      cpend = op * (window_sum if window_sum.ndim == 3 else window_sum[None])
    if conv is not None:
      mode = arith.round_mode(conv.clip_round)
      if cpend is not None and CPEND_BEFORE_CLIP_TRUNCATE: v = arith.rshift_round(v + cpend, conv.clip_shift, mode)
      else:
        v = arith.rshift_round(v, conv.clip_shift, mode)
        if cpend is not None: v = v + cpend
    v = arith.sat32(v)
    v = _xstage_int(v, d.bs, bs_ops, BS_ORDER)
    v = _xstage_int(v, d.bn, XOperands(), BN_ORDER)
    if not d.ew.bypass:
      if e is not None: v = _ew_int(v, e, d.ew)
      v = _ew_relu(v, d.ew, False)
  qzero = None
  if float_mode:
    x_bn = v = _xstage_float(v, d.bs, BS_ORDER)
    v = _xstage_float(v, d.bn, BN_ORDER)
    if not d.ew.bypass and not d.ew.lut_bypass: v, qzero = _lut(d, v, x_bn)
    elif not d.ew.bypass:
      if e is not None: v = _ew_float(v, e, d.ew)
      v = _ew_relu(v, d.ew, True)
  out = _out_cvt(d, v)
  if qzero is not None and qzero.any(): out = np.where(qzero, out.dtype.type(LUT_QZERO_OUTPUT), out)   # QUIRK 4
  res.cube = out
  return res
