"""Number formats and fixed-point arithmetic of the NPU datapath, vectorised over numpy arrays.

Every rounding rule the emulator uses lives here, each with its source. Facts are from
../shared/reference/rocket_hw.md §5.8, rocket_fp16_ew_ppu.md §1.7/§7, and gregordinary/rockchip-npu-notes
encodings/out-cvt-converter.md (GN, hardware sweeps on RK3588) where the reference marks a rule uncertain.
"""
from __future__ import annotations
import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

# ---- rounding right shifts (integer datapath) ------------------------------------------------------------------
HALF_EVEN, HALF_AWAY = "half_even", "half_away"

def rshift_round(x:np.ndarray, shift:int|np.ndarray, mode:str) -> np.ndarray:
  """x / 2**shift rounded to an integer (int64 in, int64 out). shift <= 0 is a left shift (exact).
  mode HALF_EVEN: ties to even; HALF_AWAY: ties away from zero."""
  x = np.asarray(x, dtype=np.int64)
  shift = np.asarray(shift, dtype=np.int64)
  if not shift.any(): return x.copy()
  pos = np.minimum(np.maximum(shift, 0), 62)       # |x| < 2**62: larger shifts round to 0 like 62 does
  left = x << np.maximum(-shift, 0)
  q = left >> pos                                   # floor
  rem = left - (q << pos)                           # in [0, 2**pos)
  half = np.where(pos > 0, np.int64(1) << np.maximum(pos - 1, 0), 0)
  up = rem > half
  tie = (rem == half) & (pos > 0)
  if mode == HALF_EVEN: up |= tie & ((q & 1) == 1)
  elif mode == HALF_AWAY: up |= tie & (x >= 0)      # floor already rounded a negative tie away from zero
  else: raise ValueError(mode)
  return q + up

def saturate(x:np.ndarray, lo:int, hi:int) -> np.ndarray: return np.clip(np.asarray(x, dtype=np.int64), lo, hi)
def sat32(x:np.ndarray) -> np.ndarray: return saturate(x, INT32_MIN, INT32_MAX)

# Rounding of the integer shifts, per field (one named choice each):
# - DPU OUT_CVT_SHIFT.CVT_ROUND: 0 half to even, 1 half away from zero. Measured by GN on RK3588 (out-cvt-converter.md,
#   "The CVT_ROUND tie rule", 128 tie elements per setting, both signs). The reference's "1 = half-up" (rocket_hw.md
#   §4.3, TRM text) did not match the measurement.
# - BS/BN MUL shift: half to even (GN, same note, "Per-channel requant on the BS multiplier").
# - CORE CLIP_TRUNCATE.ROUND_TYPE and CNA CVT_CON0.ROUND_TYPE: not measured. TRM: 0 "odd in, even not" = half to
#   even (rocket_hw.md §5.8 ⚠); 1 is taken to be half away from zero by analogy with the measured CVT_ROUND bit.
def round_mode(bit:int) -> str: return HALF_AWAY if bit else HALF_EVEN
XSTAGE_MUL_ROUND = HALF_EVEN

# ---- float formats ----------------------------------------------------------------------------------------------
def fp16_bits_to_f32(bits:int) -> np.float32:
  return np.float32(np.array([bits & 0xFFFF], dtype=np.uint16).view(np.float16)[0])

# Emulator speed, not semantics: every fp16 bit pattern's float32 value as numpy converts it (exact, NaN payloads
# kept); one table lookup per element is 2-4x faster than numpy's fp16 -> float32 cast on x86_64 (a scalar loop there).
FP16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
FP16_TO_F32.flags.writeable = False

def fp16_to_f32(raw:np.ndarray) -> np.ndarray:
  """fp16 elements (float16 or their uint16 bit patterns, any strides) -> float32, exact: numpy's conversion."""
  return np.take(FP16_TO_F32, np.asarray(raw).view(np.uint16))

def f32_bits_to_f32(bits:int) -> np.float32:
  return np.array([bits & 0xFFFF_FFFF], dtype=np.uint32).view(np.float32)[0]

def bf16_to_f32(raw:np.ndarray) -> np.ndarray:
  """uint16 bf16 patterns -> float32 (exact)."""
  return (np.asarray(raw, dtype=np.uint32) << 16).view(np.float32)

# tf32 operands (CNA precision 7, fp32 container): the low 13 mantissa bits are dropped. happyme531/rknpu2_matmul_open
# reports truncation on hardware (landscape.md §3.7); rocket_fp16_ew_ppu.md §7.3 assumed round-to-nearest (⚠).
TF32_TRUNCATE = True
def tf32_from_f32(x:np.ndarray) -> np.ndarray:
  b = np.asarray(x, dtype=np.float32).view(np.uint32)
  if TF32_TRUNCATE: b = b & np.uint32(0xFFFF_E000)
  else:
    b = b + np.uint32(0xFFF) + ((b >> np.uint32(13)) & np.uint32(1))
    b = b & np.uint32(0xFFFF_E000)
  return b.view(np.float32)

def to_fp16(x:np.ndarray) -> np.ndarray:
  """FP32TOFP16: float32 -> float16, round to nearest even, overflow to inf (numpy's conversion; the hardware rounding
  is assumed, rocket_fp16_ew_ppu.md §7.3 ⚠)."""
  with np.errstate(over="ignore", invalid="ignore"): return np.asarray(x, dtype=np.float32).astype(np.float16)

def f32(x) -> np.ndarray:
  with np.errstate(over="ignore", invalid="ignore"): return np.asarray(x, dtype=np.float32)

def signed_byte(b:int) -> int: return b - 256 if b & 0x80 else b
def signed16(v:int) -> int: v &= 0xFFFF; return v - 0x10000 if v & 0x8000 else v
def signed32(v:int) -> int: v &= 0xFFFF_FFFF; return v - (1 << 32) if v & 0x8000_0000 else v
