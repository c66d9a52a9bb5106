"""log_softmax over the last axis with every kernel on the NPU (strict mode), within a bound composed from each kernel's
numerics, against tinygrad's CPU device; and the calls that leave the NPU, with their reasons.

The kernels tinygrad 0.14 makes of x.log_softmax(-1) for a 2-D or higher x: m = the row max (PPU: exactly fl16 of the
max), L = ln(sum(exp(x - m))) (a contraction with exp computed into its A tiles, the sum in fp32, then the log as a
lookup-table epilogue on the sum narrowed to fp16: rules/tables.py gives log range windows, so row sums from ~1/16 to ~16000
fit one; those below 1 have a signed decode), y = x - m - L (elementwise: one stage, fp16 operands, an fp32 sum of three exact products). log_softmax is
invariant to the shift, so the exact value is x - m - ln(sum(exp(x - m))) for the NPU's own m.

NPU bound, per element (d = x - m, s = sum(exp(d)), L = ln s):
  - the sum: |s~ - s| <= E_s (tests/test_blocks_on_npu.py softmax_bound: exp's argument from fp16 operands narrowed to
    fp16, the exp table's measured error and fp16 output, the fp32 sum);
  - the log: the table's measured error T_log holds for every real input as the NPU rounds it to fp16 (ops/lut.py
    LutTable.domain), so |L~ - ln s~| <= T_log, plus its fp16 output (u16 |L~|); ln is 1/s-Lipschitz above s - E_s;
  - the last kernel: x rounded to fp16 (float32 x), m and L~ exact (fp16 values), an fp32 sum of 3 terms
    (gamma(2)), the result rounded to float32 (u32) or float16 (u16, eta16).
CPU bound (tinygrad's C code, checked with DEBUG=4): float32: x - M, the argument times fp32 log2(e), exp2, the fp32
sum, log2 times fp32 ln 2, the two subtractions, each one fp32 rounding (the software exp2/log2 of tinygrad within a few
fp32 roundings: TRANSCENDENTAL_U32, measured); float16: x - m in fp16 (exp's argument and the output's first term both rounded to
fp16), the fp32 sum, L stored as fp16, the last subtraction in fp16."""
from __future__ import annotations
import importlib.util
from pathlib import Path
import numpy as np
import pytest
from tinygrad import Tensor
import numerics as nm
from test_blocks_on_npu import all_npu, table_error, table_of_window
from helpers import first_window
from tinygrad_rocket.program import GUARD_MARGIN
from tinygrad_rocket.rules.tables import (pick_table, range_window, RANGE_WINDOWS, NoWindow, TABLE_SCALES, LUT_MAX_ERROR, _log_function,
                                          _power_function)

U16, U32, ETA16 = nm.U16, nm.U32, nm.ETA16
LN2, LOG2E = 0.6931471805599453, 1.4426950408889634   # the constants tinygrad writes around LOG2 and EXP2
# The relative error of tinygrad's CPU exp2 / log2 (float32) in units of u32 = 2^-24, measured by
# scripts/transcendental_ulps.py against float64 numpy: over every fp16 input exp2 1.07, log2 1.94 (log = log2 * ln 2:
# 2.50); over 2^20 random float32 inputs exp2 1.10, log2 3.02 (log 3.16). The worst, rounded up to an integer;
# test_cpu_transcendentals_within_the_constant repeats the fp16 sweep.
TRANSCENDENTAL_U32 = 4

def log_fn(v): return np.log2(v) * LN2   # the epilogue's function as the kernel writes it: LOG2(sum) * ln 2

def log_window(w:int):
  """The log table of window w as the contraction's epilogue picks it (signed decodes allowed: rules/contraction.py
  keeps padding lanes off them)."""
  with range_window(w): return pick_table(log_fn, "mul", signed_ok=True)

def log_table_error(summaries:list[str]) -> float:
  """The largest measured error of a log window whose stated error (2 digits) is the one the program states: several
  windows print alike, so the bound takes the worst of them."""
  stated = f"lut(mul, error {table_error('mul', summaries):.2g})"
  errs = [t.max_abs_error for w in range(RANGE_WINDOWS) if f"lut(mul, error {(t := log_window(w)).max_abs_error:.2g})" == stated]
  assert errs, stated
  return max(errs)

def exp_table_error(summaries:list[str]) -> float:
  """The exp table's measured error: exp2 of the fp16 argument (d log2(e) computed into the A tiles), or of a load
  (a 1-D x: the sum kernel reads x - max itself and multiplies by log2(e) inside the table's function)."""
  stated = f"lut(exp2, error {table_error('exp2', summaries):.2g})"
  errs = [t.max_abs_error for fn in (np.exp2, lambda v: np.exp2(v * LOG2E)) if (t := pick_table(fn, "exp2")) is not None
          and f"lut(exp2, error {t.max_abs_error:.2g})" == stated]
  assert errs, stated
  return max(errs)

def npu_bound(x:np.ndarray, f16:bool, T_exp:float, T_log:float, e_d:tuple|None=None) -> tuple[np.ndarray, np.ndarray]:
  """(y, bound): the exact log_softmax for the NPU's m and the NPU's error bound (module docstring). e_d: a 1-D x's
  (error of d as exp's argument reads it, as the last kernel reads it): d is a stored kernel result there."""
  m = x.max(-1, keepdims=True) if f16 else x.max(-1, keepdims=True).astype(np.float16).astype(np.float64)
  d = x - m
  e = np.exp(d)
  s = e.sum(-1, keepdims=True)
  n = x.shape[-1]
  # exp's argument as softmax_bound: x and m rounded to fp16 (float32 x only: m is an fp16 value, float16 x exact), the
  # fp16 coefficient log2(e) and the argument narrowed to fp16 (3 u16 |d|)
  arg_err = (0.0 if f16 else U16 * (np.abs(x) + np.abs(m))) + 3 * U16 * np.abs(d) + ETA16 if e_d is None else e_d[0]
  e_exp = e * arg_err * 1.01 + T_exp + U16 * e
  E_s = e_exp.sum(-1, keepdims=True) + nm.gamma(n - 1, U32) * (e + e_exp).sum(-1, keepdims=True) + U32 * s
  assert (E_s < s / 2).all()
  L = np.log(s)
  e_ln = E_s / (s - E_s)                                                  # |ln s~ - ln s|
  e_L = e_ln + T_log + U16 * (np.abs(L) + e_ln + T_log) + ETA16
  y = d - L
  e_x = (0.0 if f16 else U16 * np.abs(x) + ETA16) if e_d is None else e_d[1]
  e = e_x + e_L + nm.gamma(2, U32) * (np.abs(x) + e_x + np.abs(m) + np.abs(L) + e_L)
  return y, e + (U16 * (np.abs(y) + e) + ETA16 if f16 else U32 * (np.abs(y) + e))

def cpu_bound(x:np.ndarray, f16:bool) -> np.ndarray:
  """The CPU's error bound against the exact log_softmax (module docstring)."""
  M = x.max(-1, keepdims=True)
  d = x - M
  s = np.exp(d).sum(-1, keepdims=True)
  L, n = np.log(s), x.shape[-1]
  ut = TRANSCENDENTAL_U32 * U32
  u_sub, eta = (U16, ETA16) if f16 else (U32, 0.0)
  # exp's argument: d rounded (u_sub), times log2(e) rounded to fp32 and the product rounded (2 u32)
  rel_s = (np.abs(d) * (u_sub + 2 * U32)).max(-1, keepdims=True) * 1.01 + ut + nm.gamma(n - 1, U32) * 1.01
  e_L = rel_s * 1.01 + ut * np.abs(L) + U32 * np.abs(L)
  if f16: e_L = e_L + U16 * (np.abs(L) + e_L) + ETA16                    # L stored as fp16
  e_d = u_sub * np.abs(d) + eta
  y = d - L
  return e_d + e_L + u_sub * (np.abs(y) + e_d + e_L) + eta

def check(x:np.ndarray, what:str) -> list[str]:
  f16 = x.dtype == np.float16
  X = Tensor(x, device="ROCKET").realize()
  r, summaries = all_npu(lambda: X.log_softmax(-1).numpy())
  c = Tensor(x, device="CPU").log_softmax(-1).numpy()
  xd = x.astype(np.float64)
  _, b = npu_bound(xd, f16, exp_table_error(summaries), log_table_error(summaries))
  nm.assert_within(r, c, b + cpu_bound(xd, f16), what)
  return summaries

def rows(rng, n:int, count:int, scale:float) -> np.ndarray: return rng.standard_normal((count, n)) * scale

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape, scale", [((1, 8), 1.0), ((4, 64), 1.0), ((8, 40), 3.0), ((2, 3, 16), 0.5), ((2, 2, 2, 24), 2.0),
                                          ((3, 1000), 0.5)])
def test_log_softmax(shape, scale, dtype):
  """Rows of 8 to 1000 elements, 2-D to 4-D: every kernel on the NPU, within the composed bound. Rows of 1000 at scale
  0.5 have sums of ~300: the log's window [16, 1024] (the summary states which table ran)."""
  x = (np.random.default_rng(len(shape) * 100 + shape[-1]).standard_normal(shape) * scale).astype(dtype)
  summaries = check(x, f"log_softmax {shape} x{scale} {np.dtype(dtype).name}")
  if shape[-1] == 1000:   # every row sum beyond window 0's table [1, 64]: the window [16, 1024] ran
    assert (np.exp(x - x.max(-1, keepdims=True).astype(np.float16)).sum(-1) > 65).all()
  assert any("lut(mul" in s for s in summaries) and any("max pooling" in s for s in summaries)

@pytest.mark.parametrize("n", [100, 1000])
def test_confident_and_large_rows_float16(n):
  """Large magnitudes (logits of std 100: every row confident, its sum within a few table floors of 1) and a confident
  row among flat ones would not share a window; rows of one kind per call: float16 (the max exact in fp16, so every sum
  is >= 1 plus the exp table's floor on the other n - 1 terms, 2^-15 each: inside the log's window [1, 64] for n >= 65)."""
  rng = np.random.default_rng(n)
  big = rows(rng, n, 3, 100.0).astype(np.float16)
  check(big, f"log_softmax large {n}")
  peaked = np.stack([np.r_[40.0, rng.standard_normal(n - 1)], np.r_[-10.0, rng.standard_normal(n - 1) * 3 - 30],
                     np.r_[rng.standard_normal(n - 1), 25.0]]).astype(np.float16)
  check(peaked, f"log_softmax confident {n}")

def test_confident_float32_with_an_fp16_max():
  """float32 confident rows whose max is an fp16 value (m exact): all-NPU like float16."""
  rng = np.random.default_rng(3)
  x = np.stack([np.r_[12.5, rng.standard_normal(199)], np.r_[rng.standard_normal(199) - 20, -3.0]]).astype(np.float32)
  check(x, "log_softmax confident float32")

SHORT_CONFIDENT = {
  # float32 rows whose max rounds up in fp16 (m > max: its own term exp(max - m) < 1), the other terms vanishing: sum < 1
  "max rounds up": np.array([[1.00049, -30, -30, -30], [2.0015, -40, -35, -50]], np.float32),
  # float16 rows (m exact) of 8: sum = 1 + 7 table floors (2^-15 each) < 1 + GUARD_MARGIN, where the guard starts
  "short float16": np.array([[9, 0, 0, 0, 0, 0, 0, 0], [-12, -12, -12, 3, -12, -12, -12, -12]], np.float16),
}

def a_signed_window_ran(summaries:list[str]) -> bool:
  """Whether the log table the program states is one of a window below 1 (a signed decode)."""
  return any(f"lut(mul, error {(t := log_window(w)).max_abs_error:.2g})" in s and t.signed
             for s in summaries for w in range(RANGE_WINDOWS) if TABLE_SCALES[w] < 1)

@pytest.mark.parametrize("case", list(SHORT_CONFIDENT))
def test_sum_below_the_first_log_window(case):
  """Row sums below 1 (or within the guard's margin above it) leave window 0 of log ([1, 64], unsigned decode): the
  window [1/16, 4] has a signed decode (log < 0 below 1), whose x ~ 0 spike (QUIRK 2) no lane meets: the sum kernel's
  padding kernels repeat its real one and its padding rows are not tabulated (rules/contraction.py). Every kernel on the
  NPU, within the composed bound, the stated table error that of a window below 1."""
  x = SHORT_CONFIDENT[case]
  m = x.max(-1).astype(np.float16).astype(np.float64)
  assert (np.exp(x - m[:, None]).sum(-1) < 1 + GUARD_MARGIN).all()   # the guard pulls the domain's 1 in by this
  summaries = check(x, f"log_softmax {case}")
  assert a_signed_window_ran(summaries), summaries

def test_log_of_a_matmul_with_padding_lanes():
  """(x @ w).log() with every u in (1/16, 4), so a signed-decode window: 37 rows (tiles of 40: padding rows) and 20
  kernels (tiles of 32: 12 padding kernels across two surfaces) meet the signed table only as repeats of a real kernel.
  Bound: the contraction's own (numerics.bound_dot, fp32 result) through ln's slope 1/u, the table's measured error T
  (its claim holds for the real u as the NPU narrows it to fp16), the fp16 output; the CPU's float32 dot and log."""
  rng = np.random.default_rng(5)
  x, w = rng.uniform(0.1, 1.0, (37, 48)).astype(np.float32), rng.uniform(0.005, 0.09, (48, 20)).astype(np.float32)
  X, W = Tensor(x, device="ROCKET").realize(), Tensor(w, device="ROCKET").realize()
  r, summaries = all_npu(lambda: (X @ W).log().numpy())
  c = (Tensor(x, device="CPU") @ Tensor(w, device="CPU")).log().numpy()
  xd, wd = x.astype(np.float64), w.astype(np.float64)
  u, S = xd @ wd, np.abs(xd) @ np.abs(wd)
  assert u.min() > 1 / 16 and u.max() < 4 and u.min() < 1, (u.min(), u.max())
  T = log_table_error(summaries)
  assert a_signed_window_ran(summaries), summaries
  amax = np.abs(xd).max() + np.abs(wd).max()
  p = nm.rocket("float32")
  e_u = nm.bound_dot(nm.Precision(p.u_in, p.eta_in, p.u_acc, U32, 0.0), S, 48, amax)
  L = np.log(u)
  e_L = e_u / (u - e_u) + T
  b = e_L + U16 * (np.abs(L) + e_L) + ETA16
  e_c = nm.bound_dot(nm.cpu("float32"), S, 48, amax)
  b_cpu = e_c / (u - e_c) + TRANSCENDENTAL_U32 * U32 * np.abs(np.log2(u)) * LN2 + U32 * np.abs(L)
  nm.assert_within(r, c, b + b_cpu, "log(x @ w) below 1")

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_one_d(dtype):
  """A 1-D x: tinygrad fuses the max into the subtraction d = x - max(x) (a REDUCE inside an elementwise kernel): the
  PPU's max broadcast by a matmul (rules/pool.py _lower_broadcast_max), d~ = fl32(fl16(x) - m) in float32 (fl16 in
  float16); the sum kernel reads d~ through its table (the table's claim holds for d~ as it rounds it), the last kernel
  d~ rounded to fp16 (float32). Every kernel on the NPU, within the composed bound with those d errors (npu_bound e_d)."""
  x = (np.random.default_rng(4).standard_normal(100)).astype(dtype)
  f16 = dtype == np.float16
  X = Tensor(x, device="ROCKET").realize()
  r, summaries = all_npu(lambda: X.log_softmax(-1).numpy())
  assert len(summaries) == 3 and "its max broadcast" in summaries[0], summaries
  c = Tensor(x, device="CPU").log_softmax(-1).numpy()
  xd = x.astype(np.float64)[None]
  m = xd.max(-1, keepdims=True) if f16 else xd.max(-1, keepdims=True).astype(np.float16).astype(np.float64)
  d = xd - m
  e1 = 0.0 if f16 else U16 * np.abs(xd) + ETA16                            # x rounded to fp16, m exact
  e2 = e1 + (U16 * (np.abs(d) + e1) + ETA16 if f16 else U32 * (np.abs(d) + e1))   # d~ stored in the dtype
  e3 = e2 if f16 else e2 + U16 * (np.abs(d) + e2) + ETA16                  # the last kernel's fp16 read of d~
  b = npu_bound(xd, f16, exp_table_error(summaries), log_table_error(summaries), e_d=(e2, e3))[1][0]
  nm.assert_within(r, c, b + cpu_bound(xd, f16)[0], f"log_softmax 1-D {np.dtype(dtype).name}")

def test_log_is_windowed():
  """rules/tables.py _log_function: ln and log2 (and tinygrad's log2(x) ln 2) shift by a constant under x -> 4x; powers,
  exp and the identity do not."""
  assert all(_log_function(f) for f in (np.log, np.log2, log_fn))
  assert not any(_log_function(f) for f in (np.sqrt, np.exp, lambda v: v, lambda v: np.log(v) + 0.1 * v))
  assert not _power_function(np.log)

def test_log_windows():
  """log's window w is window 0's interval times TABLE_SCALES[w], measured again: where its decode stays unsigned (log >= 0
  on it, as on window 0's [1, 64]) it is a table within LUT_MAX_ERROR of its peak whose error is about window 0's (the
  interpolation error h^2 / (8 x^2) is scale-free: within 10%); windows below 1 need a signed decode: NoWindow unless the
  caller keeps x ~ 0 off the table (signed_ok: the contraction epilogue, log_window), then within LUT_MAX_ERROR too."""
  t0 = table_of_window(log_fn, "mul", 0)
  assert t0.domain[0] == 1.0 and not t0.signed
  for w, c in enumerate(TABLE_SCALES):
    if c < 1:
      with pytest.raises(NoWindow, match="signed decode"): table_of_window(log_fn, "mul", w)
      t = log_window(w)
      assert t.signed and t.domain[0] <= t0.lo * c and t.max_abs_error <= LUT_MAX_ERROR * abs(np.log(t.lo)), (w, t.domain)
      continue
    t = table_of_window(log_fn, "mul", w)
    assert (t.lo, t.hi) == (t0.lo * c, t0.hi * c) and t.domain[0] == t.lo and not t.signed, (w, t.domain)
    assert t.max_abs_error <= LUT_MAX_ERROR * np.log(t.hi) and abs(t.max_abs_error / t0.max_abs_error - 1) < 0.1, (w, t.max_abs_error)

def log2_windows() -> list[tuple[float, float, float]]:
  """(lo, hi, error) of the log2 table of each window, as the elementwise rule picks it for a plain load (its padding is
  filled inside the domain, so a signed decode may serve: signed_ok)."""
  out = []
  for w in range(RANGE_WINDOWS):
    with range_window(w): t = pick_table(np.log2, "log2", signed_ok=True)
    out.append((*t.domain, t.max_abs_error))
  return out

@pytest.mark.parametrize("window", range(RANGE_WINDOWS))
def test_elementwise_log_in_each_window(window):
  """x.log() (LOG2(x) * ln 2: a table stage, then a multiply by fp16(ln 2)) over a geometric spread of one window's domain
  (its guard's margin kept, and beyond window 0's): on the NPU in strict mode, each element from the first window
  holding it (window 4's lower part lies in window 2), within that window's measured table error T (log2 units, for
  every real x as the NPU rounds it), the table's fp16 output, fp16(ln 2) and the fp32 product; the CPU's software log
  within TRANSCENDENTAL_U32."""
  wins = log2_windows()
  lo, hi, _ = wins[window]
  x = np.geomspace(lo * 1.01, hi * 0.99, 200).astype(np.float32)
  if window: x = x[(x < wins[0][0] * 0.99) | (x > wins[0][1] * 1.01)]   # not all inside window 0
  X = Tensor(x, device="ROCKET").realize()
  r, summaries = all_npu(lambda: X.log().numpy())
  ws = first_window([w[:2] for w in wins], x)
  assert (ws >= 0).all() and (ws == window).any()
  stated = sorted(f"{float(p.split('lut(log2, error ')[1].split(')')[0]):.2g}" for p in summaries[-1].split(" | "))
  assert stated == sorted(f"{wins[w][2]:.2g}" for w in np.unique(ws)), (summaries, ws)
  T = np.array([wins[w][2] for w in ws])
  c = Tensor(x, device="CPU").log().numpy()
  xd = x.astype(np.float64)
  l2, ln = np.log2(xd), np.log(xd)
  e_l2 = T + U16 * (np.abs(l2) + T) + ETA16
  e = LN2 * e_l2 * (1 + U16) + U16 * np.abs(ln) + U32 * (np.abs(ln) + LN2 * e_l2) * (1 + U16)
  nm.assert_within(r, c, e + TRANSCENDENTAL_U32 * U32 * np.abs(ln) + U32 * np.abs(l2), f"log window {window}")

def test_cpu_transcendentals_within_the_constant():
  """tinygrad's CPU exp2 and log2 over every fp16 input of their domains: relative errors within TRANSCENDENTAL_U32 u32
  (scripts/transcendental_ulps.py, which also samples 2^20 float32 inputs), and not far below it (the measured worst is
  what the constant was set from)."""
  spec = importlib.util.spec_from_file_location("transcendental_ulps", Path(__file__).parents[1] / "scripts" / "transcendental_ulps.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  got = {name: mod.measure(mod.every_fp16())[name][0] for name in ("exp2", "log2")}
  assert all(v <= TRANSCENDENTAL_U32 for v in got.values()) and max(got.values()) > TRANSCENDENTAL_U32 / 4, got
