"""DPU LUT activations (EW-stage LUT): table generation, a numpy model of the lookup, the measured error, the task.

    t = make_table(sigmoid, -8.0, 8.0, name="sigmoid")      # LutTable, or a str saying why not
    t.max_abs_error, t.domain                                # measured over every fp16 input, see below
    progs = lut_programs(n, t, {"input": 0, "output": 1})    # flying DPU tasks (<= LUT_MAX_COLS columns each)

Hardware model (rocket_fp16_ew_ppu.md §4.2-§4.6, GN/AB [HW]), written here from the reference, independently of the
emulator (tests/test_lut.py checks the two agree bit for bit):
- index X = fp32(fp32(x) * fp16(BN_MUL)) + fp32(BN_ALU) (BN stage, MUL then ALU, §3.4/§4.3);
- LE covers X in [-16384, 0], LO [0, 16384], 513 entries each at INDEX_SELECT 5 (32 index units per segment), the only
  geometry any source ran; X = 0 reads LO (HYBRID_PRIORITY); linear interpolation; below the LE table
  LE[0] + (X + 16384) * UFLOW_SCALE / 2^UFLOW_SHIFT, above the LO table LO[512] + (X - 16384) * OFLOW_SCALE / 2^SHIFT;
- OUT_CVT (CVT_TYPE 1): (v + OFFSET) * 2^-MINUS_EXP * SCALE in fp32, then fp16 (§4.4).
How the quirks of §4.6 are avoided by construction:
- sign select (GN QUIRK 2's mechanism: LE/LO follows sign(x), not the index): the index X always has the sign of x on the
  domain (BN_ALU = -0.0 when [lo, hi] straddles 0; a one-sided interval is shifted to start (end) at X = 0 on its own
  side), so selecting by sign(x) or by X gives the same table;
- x ~ 0 spike (QUIRK 2): unsigned decode (OUT_CVT_OFFSET >= 0, GN's bias trick with out_lo >= 0) whenever fn >= 0 on the
  interval; a function with negative values gets a signed decode only when the interval keeps clear of x = 0
  (X0_CLEARANCE), otherwise make_table answers why not (use a [0, 1] gate and x * gate(x), §4.5);
- q = 0 entries (QUIRK 4): every entry is floored to q >= 1;
- flat runs (QUIRK 1): no run of FLAT_RUN equal entries (one entry of such a run moved by one quantum);
- max width (QUIRK 3): tasks of at most LUT_MAX_COLS columns (lut_programs splits).
"""
from __future__ import annotations
from dataclasses import dataclass, replace
from typing import Callable, Mapping
import numpy as np
from tinygrad_rocket import regs
from tinygrad_rocket.ops.elementwise import flying_program
from tinygrad_rocket.ops.program import Program, Set, Writes, WRITES, override

# ---- hardware constants (rocket_fp16_ew_ppu.md §4.2-§4.6) -----------------------------------------------------------
LUT_ENTRIES = 513                 # per table on RK3588 (§4.2)
INDEX_SELECT = 5                  # LUT_INFO LE/LO_INDEX_SELECT: the only value any source ran (§4.2)
STEP = 1 << INDEX_SELECT          # index units per segment
SPAN = 512 * STEP                 # 16384: LE_START = -SPAN, LO_END = SPAN (§4.3)
Q_ONE = 32768                     # Q0.15 (§4.3)
Q_MIN, Q_MAX = 1, 32767           # unsigned Q0.15, floored to 1 (QUIRK 4, §4.6)
FLAT_RUN = 3                      # QUIRK 1: no run this long (the emulator refuses such runs under a signed decode)
X0_CLEARANCE = 8.0                # QUIRK 2: a signed decode needs |x * BN_MUL| >= this many index units on the whole
                                  # domain (GN: the spike band is ~2 index units; the emulator refuses 4)
MAX_SEXP = 15                     # MINUS_EXP = 15 - Sexp >= 0; GN validated Sexp 0..5 (S = 1..32)
SLOPE_SCALE_MAX, SLOPE_SHIFT_MAX = 0x7FFF, 31   # 16-bit scale (sign unknown above 0x7FFF), 5-bit shift (§4.2)
BN_ALU_NO_OP = 0x8000_0000        # fp32 -0.0: GN's "no bias" word (§4.2)
LUT_CFG = dict(LUT_HYBRID_PRIORITY=1, LUT_OFLOW_PRIORITY=1, LUT_LO_LE_MUX=2)   # 0x68, GN/AB (§4.2)
EW_CFG_LUT = dict(EW_RELU_BYPASS=1, EW_OP_CVT_BYPASS=1)                        # 0x300, GN's word (§4.2)
LUT_MAX_COLS = 4096               # QUIRK 3: cols = 8191 corrupts; GN tiles at 4096 cols (§4.6)
C2 = 8                            # fp16 elements per atom: the flat vector is a C = 8, H = 1 cube (§3.1)

F16_MAX = 65504.0
REL_MIN_QUANTA = 64               # max_rel_error is reported only where |fn| >= 64 LUT quanta on the whole interval

def _f16(bits:int) -> float: return float(np.array(bits, np.uint16).view(np.float16))
def _f32(bits:int) -> float: return float(np.array(bits & 0xFFFF_FFFF, np.uint32).view(np.float32))
def _bits16(v:float) -> int: return int(np.array(v, np.float16).view(np.uint16))
def _bits32(v:float) -> int: return int(np.array(v, np.float32).view(np.uint32))

def _fp16_down(v:float) -> np.float16:
  """The largest fp16 value <= v (beyond fp16's range the rounding gives inf, and the step back the largest finite)."""
  with np.errstate(over="ignore"): h = np.float16(v)
  return np.nextafter(h, np.float16(-np.inf)) if float(h) > v else h

def _fp16_up(v:float) -> np.float16:
  with np.errstate(over="ignore"): h = np.float16(v)
  return np.nextafter(h, np.float16(np.inf)) if float(h) < v else h

def all_fp16() -> np.ndarray:
  """Every finite fp16 value, ascending (-0.0 dropped: +0.0 stands for both)."""
  v = np.arange(0x10000, dtype=np.uint32).astype(np.uint16).view(np.float16)
  v = v[np.isfinite(v) & ~((v == 0) & np.signbit(v))]
  return np.sort(v)

# ---- the table -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LutTable:
  """One LUT activation: the 2 x 513 entries, the register fields that go with them, and the measured error.

  `domain` is the input interval on which |fn(x) - model(fl16(x))| <= max_abs_error holds for every real x (the NPU sees
  fl16(x); the output is model() rounded to fp16: add half an fp16 ulp of the output); -inf / inf mean every finite
  fp16 input on that side. `max_rel_error`: the same bound relative to |fn| on [lo, hi] (None where |fn| comes within
  REL_MIN_QUANTA LUT quanta of 0)."""
  name: str
  lo: float; hi: float
  entries_le: tuple[int, ...]; entries_lo: tuple[int, ...]
  bn_mul: int                   # fp16 bits of the index scale (BN_MUL_OPERAND)
  bn_alu: int                   # fp32 bits of the index bias (BN_ALU_OPERAND)
  le_uflow: tuple[int, int]     # (scale, shift) below the LE table
  lo_oflow: tuple[int, int]     # (scale, shift) above the LO table
  out_offset: int; out_minus_exp: int
  domain: tuple[float, float] = (0.0, 0.0)
  max_abs_error: float = float("inf")
  max_rel_error: float|None = None
  out_scale: int = 1
  index_select: int = INDEX_SELECT
  le_start: int = -SPAN; le_end: int = 0; lo_start: int = 0; lo_end: int = SPAN

  @property
  def scale(self) -> float: return _f16(self.bn_mul)
  @property
  def bias(self) -> float: return _f32(self.bn_alu)
  @property
  def signed(self) -> bool: return self.out_offset < 0
  @property
  def quantum(self) -> float: return 2.0 ** -self.out_minus_exp   # one table unit at the output (2^-15 * S)

  def registers(self) -> dict[tuple[str, str], dict[str, int]]:
    """Every DPU register field the LUT path needs (the whole register: apply with program.Set)."""
    return {
      ("DPU", "BN_CFG"): dict(BN_ALU_ALGO=2, BN_RELU_BYPASS=1),                  # 0x20040: x*MUL + ALU (§4.2)
      ("DPU", "BN_ALU_CFG"): dict(BN_ALU_OPERAND=self.bn_alu),
      ("DPU", "BN_MUL_CFG"): dict(BN_MUL_OPERAND=self.bn_mul),
      ("DPU", "EW_CFG"): dict(EW_CFG_LUT),
      ("DPU", "OUT_CVT_OFFSET"): dict(OUT_CVT_OFFSET=self.out_offset),
      ("DPU", "OUT_CVT_SCALE"): dict(FP32TOFP16_EN=1, OUT_CVT_SCALE=self.out_scale),
      ("DPU", "OUT_CVT_SHIFT"): dict(CVT_TYPE=1, MINUS_EXP=self.out_minus_exp),
      ("DPU", "LUT_CFG"): dict(LUT_CFG),
      ("DPU", "LUT_INFO"): dict(LUT_LO_INDEX_SELECT=self.index_select, LUT_LE_INDEX_SELECT=self.index_select),
      ("DPU", "LUT_LE_START"): dict(LUT_LE_START=self.le_start), ("DPU", "LUT_LE_END"): dict(LUT_LE_END=self.le_end),
      ("DPU", "LUT_LO_START"): dict(LUT_LO_START=self.lo_start), ("DPU", "LUT_LO_END"): dict(LUT_LO_END=self.lo_end),
      ("DPU", "LUT_LE_SLOPE_SCALE"): dict(LUT_LE_SLOPE_UFLOW_SCALE=self.le_uflow[0]),
      ("DPU", "LUT_LE_SLOPE_SHIFT"): dict(LUT_LE_SLOPE_UFLOW_SHIFT=self.le_uflow[1]),
      ("DPU", "LUT_LO_SLOPE_SCALE"): dict(LUT_LO_SLOPE_OFLOW_SCALE=self.lo_oflow[0]),
      ("DPU", "LUT_LO_SLOPE_SHIFT"): dict(LUT_LO_SLOPE_OFLOW_SHIFT=self.lo_oflow[1]),
    }

  def upload(self) -> Writes:
    """The 1026 + 2 port writes (§4.2): ACCESS_CFG (write, LE, address 0), 513 DATA, the same for LO."""
    w = []
    for table, entries in ((0, self.entries_le), (1, self.entries_lo)):
      w.append(("DPU", "LUT_ACCESS_CFG", dict(LUT_ACCESS_TYPE=1, LUT_TABLE_ID=table, LUT_ADDR=0)))
      w += [("DPU", "LUT_ACCESS_DATA", dict(LUT_ACCESS_DATA=int(q))) for q in entries]
    return Writes(w)

  def index(self, x:np.ndarray) -> np.ndarray:
    """X = fp32(x * BN_MUL) + BN_ALU, each operation rounded to fp32 (x: fp16 values)."""
    x32 = np.asarray(x, np.float16).astype(np.float32)
    with np.errstate(all="ignore"):
      return (x32 * np.float32(self.scale)).astype(np.float32) + np.float32(self.bias)

  def lookup(self, X:np.ndarray) -> np.ndarray:
    """The interpolated / extrapolated table value (table units) at index X, rounded once to fp32."""
    T = np.array([self.entries_le, self.entries_lo], np.float64)
    Xd = np.asarray(X, np.float64)
    lo_side = Xd >= 0                                   # X = 0 is in both tables: HYBRID_PRIORITY 1 reads LO
    pos = np.clip(np.where(lo_side, Xd, Xd + SPAN) / STEP, 0, 512)
    pos = np.where(np.isnan(pos), 0, pos)
    i = np.minimum(np.floor(pos).astype(np.int64), 511)
    t = lo_side.astype(np.int64)
    v = T[t, i] + (pos - i) * (T[t, i + 1] - T[t, i])
    with np.errstate(all="ignore"):
      v = np.where(Xd < -SPAN, T[0, 0] + (Xd + SPAN) * (self.le_uflow[0] / 2.0 ** self.le_uflow[1]), v)
      v = np.where(Xd > SPAN, T[1, 512] + (Xd - SPAN) * (self.lo_oflow[0] / 2.0 ** self.lo_oflow[1]), v)
    return np.where(np.isnan(Xd), np.nan, v).astype(np.float32)

  def model(self, x_fp16:np.ndarray) -> np.ndarray:
    """The fp32 value the DPU produces for fp16 inputs, before the final fp16 rounding."""
    v = self.lookup(self.index(x_fp16))
    with np.errstate(all="ignore"):
      y = ((v + np.float32(self.out_offset)).astype(np.float32) * np.float32(2.0 ** -self.out_minus_exp)).astype(np.float32)
      return (y * np.float32(self.out_scale)).astype(np.float32)

# ---- generation ------------------------------------------------------------------------------------------------------
def _eval(fn:Callable[[np.ndarray], np.ndarray], x:np.ndarray) -> np.ndarray:
  with np.errstate(all="ignore"):
    return np.asarray(fn(np.asarray(x, np.float64)), np.float64) * np.ones(np.shape(x))

def _fill_nonfinite(v:np.ndarray) -> np.ndarray:
  """Non-finite samples (fn undefined there, outside the interval) take the nearest finite sample."""
  ok = np.isfinite(v)
  if ok.all() or not ok.any(): return np.where(ok, v, 0.0)
  idx = np.where(ok, np.arange(v.size), -1)
  left = np.maximum.accumulate(idx)
  right = np.minimum.accumulate(np.where(ok, np.arange(v.size), v.size)[::-1])[::-1]
  near = np.where(left >= 0, left, right)
  near = np.where((right < v.size) & ((left < 0) | (right - np.arange(v.size) < np.arange(v.size) - left)), right, near)
  return v[near]

def _break_runs(q:np.ndarray) -> np.ndarray:
  """No FLAT_RUN equal entries in a row: the middle one of three moves by one quantum (QUIRK 1)."""
  q = q.copy()
  for i in range(1, q.size - 1):
    if q[i - 1] == q[i] == q[i + 1]: q[i] = q[i] + 1 if q[i] < Q_MAX else q[i] - 1
  return q

def _slope_bits(slope:float) -> tuple[int, int]:
  """slope (table units per index unit, >= 0) as (scale, shift) with the most precision the fields allow."""
  if not slope > 0: return 0, 0
  shift = SLOPE_SHIFT_MAX
  while shift > 0 and round(slope * 2 ** shift) > SLOPE_SCALE_MAX: shift -= 1
  return min(int(round(slope * 2 ** shift)), SLOPE_SCALE_MAX), shift

def _tail_slope(g:Callable[[np.ndarray], np.ndarray], edge:float, out:float, q_edge:float, dX:float, reach:float) -> tuple[int, int]:
  """The extrapolation slope beyond a table end at index `edge` (`out` = +1 above, -1 below), in table units per index
  unit: fn's secant over the last segment, or 0, whichever follows fn better out to the last fp16 input (`reach` index
  units beyond the end): linear tails keep the secant, saturating ones the flat line. g: index -> fn in table units."""
  far = edge + out * np.geomspace(dX, reach, 256)
  gf = g(far)
  secant = (g(np.array([edge]))[0] - g(np.array([edge - out * dX]))[0]) / dX * out
  best, best_err = (0, 0), np.inf
  for cand in ((0, 0), _slope_bits(secant)):
    line = q_edge + (far - edge) * (cand[0] / 2.0 ** cand[1])
    err = np.nanmax(np.abs(line - gf)) if np.isfinite(gf).any() else 0.0
    if err < best_err: best, best_err = cand, err
  return best

def make_table(fn:Callable[[np.ndarray], np.ndarray], lo:float, hi:float, *, name:str) -> LutTable|str:
  """A LUT for fn (a float64 numpy function) covering [lo, hi], or why not (str). The error is measured (measure())."""
  lo, hi = float(lo), float(hi)
  if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi): return f"{name}: interval [{lo}, {hi}] is not a finite interval"
  if max(abs(lo), abs(hi)) > F16_MAX: return f"{name}: [{lo}, {hi}] reaches beyond fp16 inputs"
  # index geometry: X has the sign of x on the interval (sign select), the interval spans <= 512 segments
  if lo < 0 < hi: width, anchor = max(-lo, hi), 0.0                  # BN_ALU -0.0: X = x * M
  elif lo >= 0: anchor = float(_fp16_down(lo)); width = hi - anchor    # X = (x - anchor) * M >= 0: LO
  else: anchor = float(_fp16_up(hi)); width = anchor - lo              # X = (x - anchor) * M <= 0: LE
  M = _fp16_down(SPAN / width)
  if not (np.isfinite(M) and float(M) >= 2 ** -14):
    return f"{name}: an index scale of {SPAN / width:.6g} is outside the fp16 normal range (interval width {width:.6g})"
  Mf = float(M)
  bn_alu = BN_ALU_NO_OP if anchor == 0.0 else _bits32(-anchor * Mf)  # anchor * M is exact in fp32 (11 x 11 bits)
  A = _f32(bn_alu)
  # table sample points: the exact preimages of the grid nodes X = -16384 + 32 i (LE), 32 i (LO)
  nodes = STEP * np.arange(LUT_ENTRIES, dtype=np.float64)
  x_le, x_lo = (nodes - SPAN - A) / Mf, (nodes - A) / Mf
  dx = STEP / Mf
  # output range over [lo, hi] and the segments touching it
  grid = all_fp16().astype(np.float64)
  inner = grid[(grid >= lo) & (grid <= hi)]
  near = np.concatenate([x_le, x_lo])
  near = near[(near > lo - dx) & (near < hi + dx)]                     # ends of the segments that meet [lo, hi]
  f_in = _eval(fn, np.concatenate([inner, near, [lo, hi]]))
  if not np.isfinite(f_in).all(): return f"{name}: fn is not finite on [{lo}, {hi}]"
  fmin, fmax = float(f_in.min()), float(f_in.max())
  if fmin < 0:
    clearance = min(abs(lo), abs(hi)) * Mf if not lo < 0 < hi else 0.0
    if clearance < X0_CLEARANCE:
      return (f"{name}: fn < 0 on [{lo}, {hi}] needs a signed decode (negative OUT_CVT_OFFSET), and the interval comes "
              f"within {X0_CLEARANCE:g} index units of x = 0, where a signed decode spikes +64..+128 (GN QUIRK 2, "
              "rocket_fp16_ew_ppu.md §4.6): use a [0, 1] gate and x * gate(x) (§4.5), or an interval clear of 0")
  # output decode (bias trick, §4.4): out = (q + OFFSET) * S / 32768, S = 2^Sexp the smallest that holds the range
  for sexp in range(MAX_SEXP + 1):
    S = 2.0 ** sexp
    offset = int(np.floor(fmin * Q_ONE / S)) - 1                        # fmin maps to q >= 1: the floor costs nothing
    if fmin >= 0: offset = max(offset, 0)                                 # ... unless that needed a signed decode
    if (fmax - offset * S / Q_ONE) * Q_ONE / S <= Q_ONE: break            # 1.0 -> 32768 clips to 32767: one quantum
  else: return f"{name}: output range [{fmin:.6g}, {fmax:.6g}] wider than 2^{MAX_SEXP}"
  to_q = lambda f: (f - offset * S / Q_ONE) * Q_ONE / S
  def entries(xs:np.ndarray) -> np.ndarray:
    q = np.round(to_q(_fill_nonfinite(_eval(fn, xs))))
    return _break_runs(np.clip(q, Q_MIN, Q_MAX).astype(np.int64))
  le, lo_t = entries(x_le), entries(x_lo)
  g = lambda X: to_q(_eval(fn, (np.asarray(X, np.float64) - A) / Mf))
  reach = F16_MAX * Mf + abs(A)                                         # |X| of the largest fp16 input
  table = LutTable(name=name, lo=lo, hi=hi, entries_le=tuple(int(v) for v in le), entries_lo=tuple(int(v) for v in lo_t),
                   bn_mul=_bits16(float(M)), bn_alu=bn_alu, out_offset=offset, out_minus_exp=15 - sexp,
                   le_uflow=_tail_slope(g, -SPAN, -1, float(le[0]), STEP, reach),
                   lo_oflow=_tail_slope(g, SPAN, +1, float(lo_t[-1]), STEP, reach))
  return measure(table, fn)

def measure(table:LutTable, fn:Callable[[np.ndarray], np.ndarray]) -> LutTable:
  """max_abs_error, max_rel_error and domain, measured: model() at every finite fp16 input against fn in float64, plus
  the input rounding (a real x reaches the NPU as fl16(x): within a cell [x_k, x_k+1] of neighbouring fp16 values,
  |fn(x) - fn(fl16(x))| <= the largest secant slope of the cell and its neighbours times half the cell)."""
  xs = all_fp16()
  x = xs.astype(np.float64)
  y = table.model(xs).astype(np.float64)
  f = _eval(fn, x)
  with np.errstate(all="ignore"): err = np.abs(y - f)
  err = np.where(np.isfinite(err), err, np.inf)
  if table.signed: err = np.where(np.abs(x * table.scale) < X0_CLEARANCE, np.inf, err)   # QUIRK 2: never claimed
  # where the index and x differ in sign, selecting the table by X (emulator) or by sign(x) (GN's QUIRK 2 reading)
  # disagree: never claimed either
  X = table.index(xs).astype(np.float64)
  err = np.where((x != 0) & ((X >= 0) != (x > 0)), np.inf, err)
  gap = np.diff(x)
  with np.errstate(all="ignore"): slope = np.abs(np.diff(f)) / gap
  slope = np.where(np.isfinite(slope), slope, np.inf)
  s3 = np.maximum(slope, np.maximum(np.concatenate([[0], slope[:-1]]), np.concatenate([slope[1:], [0]])))
  cell = np.maximum(err[:-1], err[1:]) + s3 * gap / 2                  # bound for every real x in [x_k, x_k+1]
  inside = (x[1:] > table.lo) & (x[:-1] < table.hi)                    # cells that meet [lo, hi]
  bound = float(cell[inside].max())
  k0, k1 = np.flatnonzero(inside)[[0, -1]]
  while k0 > 0 and cell[k0 - 1] <= bound: k0 -= 1
  while k1 < cell.size - 1 and cell[k1 + 1] <= bound: k1 += 1
  dom = (-np.inf if k0 == 0 else float(x[k0]), np.inf if k1 == cell.size - 1 else float(x[k1 + 1]))
  fmin = np.minimum(np.abs(f[:-1]), np.abs(f[1:]))[inside]
  # relative error where it means something: |fn| stays above REL_MIN_QUANTA LUT quanta on [lo, hi]
  rel = float((cell[inside] / fmin).max()) if fmin.min() >= REL_MIN_QUANTA * table.quantum else None
  return replace(table, domain=dom, max_abs_error=bound, max_rel_error=rel)

# ---- tasks -----------------------------------------------------------------------------------------------------------
def lut_program(n:int, table:LutTable, slots:Mapping[str, int], out_prec:str="fp16") -> Program:
  """One flying DPU task applying `table` to a flat vector of n fp16 elements (n a multiple of 8, at most
  LUT_MAX_COLS * 8), the table upload (WRITES) first (GN's gen_lut_activation_fp16, rocket_fp16_ew_ppu.md §4.1-§4.2).
  slots: buffer slots of "input" and "output"."""
  if out_prec != "fp16": raise ValueError(f"LUT output {out_prec}: only fp16 (FP32TOFP16_EN) is validated (§4.2)")
  if n <= 0 or n % C2: raise ValueError(f"{n} elements: the LUT task takes whole {C2}-element atoms")
  if n // C2 > LUT_MAX_COLS:
    raise ValueError(f"{n // C2} columns > {LUT_MAX_COLS} (cols = 8191 corrupts, §4.6 QUIRK 3): use lut_programs")
  prog = flying_program(n, "fp16", slots, operand=False)
  prog = override(prog, {k: Set(v) for k, v in table.registers().items()})
  return {WRITES: table.upload(), **prog}

def lut_programs(n:int, table:LutTable, slots:Mapping[str, int], out_prec:str="fp16") -> list[Program]:
  """The whole vector as tasks of at most LUT_MAX_COLS * 8 elements, each uploading the tables (the LUT RAM is per core:
  a task must not rely on another job's upload)."""
  per = LUT_MAX_COLS * C2
  out = []
  for start in range(0, n, per):
    prog = lut_program(min(per, n - start), table, slots, out_prec)
    out.append(override(prog, {("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", slots["output"], 2 * start),
                               ("DPU_RDMA", "SRC_BASE_ADDR"): regs.address("DPU_RDMA", "SRC_BASE_ADDR", slots["input"], 2 * start)}))
  return out

# ---- the functions studied (docs/lut.md, scripts/lut_error.py, tests/test_lut.py) -------------------------------------
_erf = np.vectorize(__import__("math").erf, otypes=[np.float64])
def sigmoid(x:np.ndarray) -> np.ndarray: return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))
def gelu_gate_erf(x:np.ndarray) -> np.ndarray: return 0.5 * (1.0 + _erf(np.asarray(x, np.float64) / np.sqrt(2.0)))
def gelu_gate_tanh(x:np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
def hardswish_gate(x:np.ndarray) -> np.ndarray: return np.clip(np.asarray(x, np.float64) + 3.0, 0.0, 6.0) / 6.0

@dataclass(frozen=True)
class Function:
  fn: Callable[[np.ndarray], np.ndarray]
  lo: float; hi: float
  note: str
  smooth: bool = True          # C2 on [lo, hi] (the a-priori interpolation bound applies)

FUNCTIONS: dict[str, Function] = {
  "exp": Function(np.exp, -16.0, 0.0, "softmax numerator after the row max is subtracted (GN's domain)"),
  "exp2": Function(np.exp2, -24.0, 0.0, "softmax in base 2"),
  "sigmoid": Function(sigmoid, -16.0, 16.0, "also the SiLU gate: silu(x) = x * sigmoid(x), two passes (§4.5)"),
  "sigmoid_2x": Function(lambda x: sigmoid(2.0 * np.asarray(x, np.float64)), -8.0, 8.0,
                         "tanh(x) = 2 * sigmoid(2x) - 1 (the affine in a second pass): a signed single-pass tanh spikes at x ~ 0"),
  "tanh": Function(np.tanh, -4.0, 4.0, "single pass: refused (signed output across x = 0, QUIRK 2)"),
  "gelu_gate_erf": Function(gelu_gate_erf, -8.0, 8.0, "GELU(x) = x * Phi(x), two passes (GN's route)"),
  "gelu_gate_tanh": Function(gelu_gate_tanh, -8.0, 8.0, "tanh-form GELU gate"),
  "softplus": Function(lambda x: np.logaddexp(0.0, np.asarray(x, np.float64)), -16.0, 16.0, "log(1 + e^x), linear upper tail"),
  "hardswish_gate": Function(hardswish_gate, -4.0, 4.0, "hardswish(x) = x * relu6(x + 3)/6: kinks at +-3 on table nodes",
                             smooth=False),
  "reciprocal": Function(lambda x: 1.0 / np.asarray(x, np.float64), 0.25, 32.0, "GN's default domain"),
  "sqrt": Function(np.sqrt, 0.25, 64.0, "GN's default domain"),
  "rsqrt": Function(lambda x: 1.0 / np.sqrt(np.asarray(x, np.float64)), 0.5, 64.0, "GN's default domain"),
  "log": Function(np.log, 0.25, 32.0, "signed decode, clear of x = 0"),
  "log2": Function(np.log2, 0.25, 32.0, "signed decode, clear of x = 0"),
}

def standard_table(name:str) -> LutTable|str:
  f = FUNCTIONS[name]
  return make_table(f.fn, f.lo, f.hi, name=name)
