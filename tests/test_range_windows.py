"""Range windows (rules/tables.py RANGE_WINDOWS; lower.py lowers a kernel once per window of its guarded tables, device.py
NpuRunner tries the programs in order): a kernel whose 1/x, 1/sqrt(x) or sqrt argument lies in any one window runs on the
NPU, within the bound of that window's measured error; an elementwise kernel (its elements numbered: NpuProgram.elements)
takes each element from the first window whose guards hold on it; beyond every window it runs the C code with the
guard's reason."""
from __future__ import annotations
import numpy as np
import pytest
from tinygrad import Tensor
import numerics as nm
from helpers import env, first_window
from tinygrad_rocket import report
from tinygrad_rocket.ops.lut import all_fp16
from tinygrad_rocket.program import GUARD_MARGIN
from tinygrad_rocket.device import AFTER_GUARD_REASON
from tinygrad_rocket.rules.tables import (newton, newton_model, NEWTON_FUNCTIONS, RECIP_MAX_REL_ERROR, RANGE_WINDOWS, TABLE_SCALES,
                                          LUT_MAX_ERROR, range_window, pick_table)
from test_blocks_on_npu import all_npu, softmax_bound, table_error, assert_layernorm_within, table_of_window, stated_tables
from test_elementwise_rule import leaf, mul, recip
from test_reciprocal import assert_on_npu_within, rsqrt_node
from test_elementwise_rule import sub

U16, U32 = nm.U16, nm.U32
WINDOWS = [(kind, w) for kind, (_, ws) in NEWTON_FUNCTIONS.items() for w in range(len(ws))]
RHO = max(newton(kind, w).rel_error for kind, w in WINDOWS)   # the largest measured error of any window

@pytest.mark.parametrize("kind, window", WINDOWS)
def test_scaled_by_a_row_value_in_each_window(kind, window):
  """x * recip(s) and x * rsqrt(s) for a per-row s spanning window `window` (both edges inside the guard's margin): on
  the NPU in strict mode, within the per-node bound of tests/test_reciprocal.py with the largest window error; each
  element came from the first window holding its s (rsqrt's window 3 lies within windows 0 and 2: never needed per
  element), as many elements from each as the record counts."""
  domains = NEWTON_FUNCTIONS[kind][1]
  lo, hi = domains[window]
  s = np.geomspace(lo * (1 + 2 * GUARD_MARGIN), hi * (1 - 2 * GUARD_MARGIN), 12)[:, None].astype(np.float32)
  x = (np.random.default_rng(window).standard_normal((12, 16)) * 3).astype(np.float32)
  xn, sn = leaf(0, x, "float32"), leaf(1, s, "float32")
  assert_on_npu_within(mul(xn, recip(sn, RHO) if kind == "reciprocal" else rsqrt_node(sn, RHO)), [x, s], "float32", 3)
  assert window_counts(report.records()[-1], kind) == element_counts(first_window(domains, np.broadcast_to(s, x.shape)))

def window_counts(rec:report.KernelRecord, kind:str) -> dict[int, int]:
  """{window: elements} of the one call `rec` recorded, read from the seeds its programs name (a call over one window
  records no counts: all of its elements)."""
  named = lambda summary: [w for w, d in enumerate(NEWTON_FUNCTIONS[kind][1]) if f"{kind}(seed on {d}" in summary]
  if rec.detail: return {w: n for summary, n in rec.detail.items() for w in named(summary)}
  (w,) = named(rec.reason)
  return {w: -1}

def element_counts(windows:np.ndarray) -> dict[int, int]:
  """{window: elements} as window_counts reads them (a single window: -1, all of them)."""
  ws, ns = np.unique(windows, return_counts=True)
  return {int(w): int(n) for w, n in zip(ws, ns)} if len(ws) > 1 else {int(ws[0]): -1}

def test_window_lists_fit_the_constant():
  assert all(len(ws) <= RANGE_WINDOWS for _, ws in NEWTON_FUNCTIONS.values()) and len(TABLE_SCALES) <= RANGE_WINDOWS

@pytest.mark.parametrize("kind, window", WINDOWS)
def test_window_error_recurrence(kind, window):
  """Each window's seed and steps, measured over every fp16 argument of it (newton_errors), within the a-priori recurrence
  of rules/tables.py from the previous step's measured error, and within RECIP_MAX_REL_ERROR."""
  nt = newton(kind, window)
  assert nt.domain == NEWTON_FUNCTIONS[kind][1][window] and nt.errors[0] < 0.5
  for k, (e0, e1) in enumerate(zip(nt.errors, nt.errors[1:])):
    if kind == "reciprocal": assert e1 <= e0 ** 2 + e0 * U16 * (1 + e0) + 3 * U32 + U32 ** 2, (k, e0, e1)
    else:
      narrowed = U16 * (1 + e1) if k < nt.steps - 1 else 0
      assert e1 <= 1.5 * e0 ** 2 + 0.5 * e0 ** 3 + (1 + e0) * (2 * e0 + e0 ** 2) * U16 / 2 + 4 * U32 + narrowed, (k, e0, e1)
  assert nt.rel_error <= RECIP_MAX_REL_ERROR

@pytest.mark.parametrize("kind, window", [("reciprocal", 2), ("rsqrt", 1)])
def test_scaled_window_is_window_0_exactly(kind, window):
  """A window at a power-of-2 (rsqrt: 4) multiple of window 0 with its seed scaled back to window 0's outputs: every
  rounding is window 0's scaled, so the measured errors are equal (the derivation of Newton.seed_scale)."""
  assert newton(kind, window).errors == newton(kind, 0).errors

def test_sqrt_table_windows():
  """sqrt's guarded table on window w is window 0's interval times TABLE_SCALES[w] (powers of 4): within LUT_MAX_ERROR of
  its peak, and where neither index scale nor output quantum is clamped, window 0's error times sqrt(scale) exactly."""
  t0 = table_of_window(np.sqrt, "sqrt", 0)
  for w, c in enumerate(TABLE_SCALES):
    t = table_of_window(np.sqrt, "sqrt", w)
    assert (t.lo, t.hi) == (t0.lo * c, t0.hi * c) and t.max_abs_error <= LUT_MAX_ERROR * np.sqrt(t.hi)
    if t.scale == t0.scale / c: assert t.max_abs_error == t0.max_abs_error * np.sqrt(c), w

def test_window_zero_needs_no_context():
  """Outside lower.py's loop (no range_window), tables answer for window 0."""
  assert pick_table(np.sqrt, "sqrt") == table_of_window(np.sqrt, "sqrt", 0)
  with range_window(3): assert newton("reciprocal").domain == NEWTON_FUNCTIONS["reciprocal"][1][3]
  assert newton("reciprocal").domain == NEWTON_FUNCTIONS["reciprocal"][1][0]

@pytest.mark.parametrize("kind, window", [("reciprocal", 1), ("reciprocal", 3), ("rsqrt", 2)])
def test_every_fp16_input_of_a_window(kind, window):
  """1/x and 1/sqrt(x) of every fp16 argument of a window (inside the guard's margin) on the emulated NPU, in one call:
  each element from the first window holding it (this one for those beyond the earlier ones), and equal to that
  window's model of rules/tables.py bit for bit, the scaled seed included; so the measured error is the NPU's."""
  nt = newton(kind, window)
  xs = all_fp16()
  xs = xs[(xs >= nt.domain[0] * (1 + 2 * GUARD_MARGIN)) & (xs <= nt.domain[1] * (1 - 2 * GUARD_MARGIN))]
  report.reset()
  with env(ROCKET_FALLBACK="0"):
    t = Tensor(xs.astype(np.float32), device="ROCKET")
    r = (t.reciprocal() if kind == "reciprocal" else t.rsqrt()).numpy()
  recs = report.records()
  ws = first_window(NEWTON_FUNCTIONS[kind][1], xs)
  assert [rec.engine for rec in recs] == ["npu"] and window_counts(recs[0], kind) == element_counts(ws), recs
  assert (ws == window).any()
  for w in np.unique(ws):
    nw = newton(kind, int(w))
    np.testing.assert_array_equal(r[ws == w], newton_model(kind, nw.table, nw.steps, xs[ws == w], nw.seed_scale)[-1])

@pytest.mark.parametrize("n", [100, 197, 1000])
def test_softmax_flat_and_peaked_rows(n):
  """Rows of one tensor whose sums lie from 1 (a confident row: the other terms underflow) to n (flat logits): all-NPU in
  strict mode, the final kernel on the window [63/64, 1008], within the composed bound of tests/test_blocks_on_npu.py
  with the largest window error."""
  rng = np.random.default_rng(n)
  x = np.stack([rng.standard_normal(n) * 0.01, rng.standard_normal(n) * 3, np.r_[40.0, rng.standard_normal(n - 1)],
                rng.standard_normal(n) * 0.1]).astype(np.float32)
  X = Tensor(x, device="ROCKET").realize()
  r, summaries = all_npu(lambda: X.softmax(-1).numpy())
  assert any(f"seed on {NEWTON_FUNCTIONS['reciprocal'][1][1]}" in s for s in summaries), summaries
  c = Tensor(x, device="CPU").softmax(-1).numpy()
  p, b = softmax_bound(x.astype(np.float64), table_error("exp2", summaries), RHO)
  nm.assert_within(r, c, b + 8 * U32 * p + nm.gamma(n + 8, U32) * p, "softmax")

@pytest.mark.parametrize("std", [20.0, 0.05])
def test_layernorm_std_outside_window_0(std):
  """Rows of std 20 (var 400: sqrt on [4, 512]) and 0.05 (sqrt on [2^-10, 1/4], 1/x on [2^-12, 1/4]): all-NPU within the
  layernorm bound of tests/test_blocks_on_npu.py, with the window's sqrt table and the largest Newton error."""
  z = np.random.default_rng(5).standard_normal((4, 64))
  z = (z - z.mean(-1, keepdims=True)) / z.std(-1, keepdims=True)
  assert_layernorm_within((z * std + 3 * std).astype(np.float32), RHO)

def final_kernel_record() -> report.KernelRecord:
  recs = report.records()
  assert len(recs) == 1, recs   # one record per call: alternatives tried before it are not reported
  return recs[0]

def test_reciprocal_beyond_every_window_takes_the_c_code():
  """1/1e-6 (below the lowest window, 2^-12) is the CPU's answer, with the last window's guard as the reason."""
  x = np.linspace(-3, 3, 8, dtype=np.float32).reshape(2, 4)
  s = np.array([[1e-6], [2e-6]], np.float32)
  X, S = Tensor(x, device="ROCKET").realize(), Tensor(s, device="ROCKET").realize()
  report.reset()
  r = (X / S).numpy()
  rec = final_kernel_record()
  assert rec.engine == "fallback" and f"in its domain {NEWTON_FUNCTIONS['reciprocal'][1][-1]}" in rec.reason, rec
  np.testing.assert_array_equal(r, x / s)

def test_softmax_row_sums_near_1_and_2000():
  """A confident row (sum ~1: the exp table's floor, a quantum 2^-15 per term, adds 0.06) and a flat row of 2000 (sum
  2000) in one tensor: no window of ratio 1024 holds both, so the final kernel takes the confident row's elements from
  window 0 and the flat row's from [16, 16384], in one call recorded once; all-NPU in strict mode, within the composed
  softmax bound of tests/test_blocks_on_npu.py with the largest window error."""
  n = 2000
  x = np.zeros((2, n), np.float32)
  x[0, 0] = 40.0
  X = Tensor(x, device="ROCKET").realize()
  r, summaries = all_npu(lambda: X.softmax(-1).numpy())
  final = [rec for rec in report.records() if "Newton" in rec.reason]
  assert len(final) == 1 and final[0].runs == 1, report.records()
  assert window_counts(final[0], "reciprocal") == {0: n, 2: n}, final[0]
  c = Tensor(x, device="CPU").softmax(-1).numpy()
  p, b = softmax_bound(x.astype(np.float64), table_error("exp2", summaries), RHO)
  nm.assert_within(r, c, b + 8 * U32 * p + nm.gamma(n + 8, U32) * p, "softmax")

def test_reciprocal_over_windows_in_one_call():
  """1/x for x from 0.1 to 5000 in one tensor (windows 0, 1 and 2 of 1/x): on the NPU in
  strict mode, each element from the first window holding it, within Newton's largest window error, the operand's fp16
  rounding and the fp32 output's."""
  x = np.geomspace(0.1, 5000, 16 * 24).astype(np.float32).reshape(24, 16)
  X = Tensor(x, device="ROCKET").realize()
  r, _ = all_npu(lambda: X.reciprocal().numpy())
  ws = first_window(NEWTON_FUNCTIONS["reciprocal"][1], x)
  assert window_counts(report.records()[-1], "reciprocal") == element_counts(ws) and len(np.unique(ws)) == 3, report.records()
  c = Tensor(x, device="CPU").reciprocal().numpy().astype(np.float64)
  # fp16(x) = x (1 + d), |d| <= U16: 1/fp16(x) = c / (1 + d); Newton's relative error; the fp32 result and the CPU's
  bound = np.abs(c) * ((U16 + RHO) / (1 - U16) + 2 * U32)
  nm.assert_within(r, c, bound, "1/x over windows")

@pytest.mark.parametrize("stds", [(10.0, 80.0), (10.0, 30.0, 80.0)])
def test_layernorm_rows_over_two_windows(stds):
  """Rows of std 10 and 80 in one tensor: the variance kernel's sqrt holds them in one window ([64, 8192]) and the
  final kernel's 1/std takes the std-10 rows from window 0 and the std-80 ones from [63/64, 1008]: all-NPU in strict
  mode within the layernorm bound of tests/test_blocks_on_npu.py with the largest window error."""
  z = np.random.default_rng(7).standard_normal((len(stds) * 2, 64))
  z = (z - z.mean(-1, keepdims=True)) / z.std(-1, keepdims=True) * np.repeat(stds, 2)[:, None]
  assert_layernorm_within(z.astype(np.float32), RHO)
  final = next(rec for rec in report.records() if "reciprocal(seed" in rec.reason)
  assert sorted(window_counts(final, "reciprocal")) == [0, 1], final

def test_layernorm_final_kernel_over_three_windows():
  """(x - mean) / std for rows of std 0.05, 3 and 300 (1/x windows 3, 0 and 1), its statistics realized first: the
  final kernel on the NPU in strict mode, each element from its row's window, within the per-node bound of
  tests/test_reciprocal.py with the largest window error."""
  stds = np.array([0.05, 3.0, 300.0])
  z = np.random.default_rng(8).standard_normal((6, 32))
  x = ((z - z.mean(-1, keepdims=True)) / z.std(-1, keepdims=True) * np.repeat(stds, 2)[:, None] + 1.0).astype(np.float32)
  X = Tensor(x, device="ROCKET").realize()
  mean = X.mean(-1, keepdim=True).realize()
  std = ((X - mean).square().mean(-1, keepdim=True) + 1e-5).sqrt().realize()
  n = mul(sub(leaf(0, x, "float32"), leaf(1, mean.numpy(), "float32")), recip(leaf(2, std.numpy(), "float32"), RHO))
  assert_on_npu_within(n, [x, mean.numpy(), std.numpy()], "float32", 3)
  assert window_counts(report.records()[-1], "reciprocal") == {3: 64, 0: 64, 1: 64}, report.records()

def test_an_element_beyond_every_window_takes_the_c_code():
  """1/x over the windows as above but one element 1e-6 (below the lowest window): the whole call runs the C code, the
  CPU's answer exactly, reported once with the guard's reason (the other elements' windows do not make it partial)."""
  x = np.geomspace(0.1, 5000, 64).astype(np.float32).reshape(4, 16)
  x[2, 5] = 1e-6
  X = Tensor(x, device="ROCKET").realize()
  report.reset()
  r = X.reciprocal().numpy()
  rec = final_kernel_record()
  assert rec.engine == "fallback" and "outside the table's domain" in rec.reason and not rec.detail, rec
  np.testing.assert_array_equal(r, Tensor(x, device="CPU").reciprocal().numpy())

def test_a_guard_every_window_shares_reports_its_reason():
  """exp's argument beyond its table (x - m > 0: m below the row max) fails a guard every alternative has: after the last
  one the call runs the C code (the CPU's answer exactly), reported once, with exp's guard as the reason."""
  x = np.random.default_rng(6).standard_normal((4, 16)).astype(np.float32)
  X = Tensor(x, device="ROCKET").realize()
  m = (X.max(-1, keepdim=True) - 1).realize()
  s = (X - m).exp().sum(-1, keepdim=True).realize()   # <= 16 e: window 0 of 1/x
  _assert_final_kernel_is_the_c_code(X, m, s, "lut(exp2")

def _assert_final_kernel_is_the_c_code(X:Tensor, m:Tensor, s:Tensor, reason:str) -> None:
  """softmax's final kernel exp(X - m) / s ran as a reported fallback whose reason names `reason`, and its result is
  the CPU device's exactly (the C code is the same kernel)."""
  report.reset()
  r = ((X - m).exp() / s).numpy()
  rec = final_kernel_record()
  assert rec.engine == "fallback" and reason in rec.reason, rec
  np.testing.assert_array_equal(r, ((X.to("CPU") - m.to("CPU")).exp() / s.to("CPU")).numpy())

def test_table_memo_tells_functions_apart():
  """Lowering once per window asks for the same tables again (rules/tables.py _make_table memoizes make_table by fn's
  values at the points it evaluates): two functions under one name and interval get their own tables, each equal to
  make_table's, and asking again gives the memoized one."""
  from tinygrad_rocket.ops.lut import make_table
  from tinygrad_rocket.rules.tables import _make_table
  f, g = (lambda x: np.exp2(x * 0.5)), (lambda x: np.exp2(x * 0.5) + 2.0 ** -12 * (x > 3))   # g: f but one step near 3
  for fn in (f, g, f):
    t = _make_table(fn, -8.0, 8.0, "memo_probe")
    assert t == make_table(fn, -8.0, 8.0, name="memo_probe")
  assert _make_table(f, -8.0, 8.0, "memo_probe") is _make_table(f, -8.0, 8.0, "memo_probe")
  assert _make_table(f, -8.0, 8.0, "memo_probe") != _make_table(g, -8.0, 8.0, "memo_probe")

def test_in_place_over_windows(monkeypatch):
  """x.assign(1/x) twice: tinygrad's kernel reads and writes one buffer, and every window's job packs it before any
  window's result is unpacked into it, so each element is 1/x of the input. Step k's relative error from the exact
  value: the operand's fp16 rounding, Newton's largest window error, on top of the previous step's b:
  (1 + RHO) / ((1 - U16) (1 - b)) - 1 (the fp32 result is Newton's own)."""
  from tinygrad_rocket.device import NpuRunner
  calls = []
  def spy(self, *bufs, **kw):
    calls.append(len(bufs))
    return run(self, *bufs, **kw)
  run = NpuRunner.__call__
  monkeypatch.setattr(NpuRunner, "__call__", spy)
  x = np.geomspace(0.3, 3000, 64).astype(np.float32).reshape(4, 16)
  X = Tensor(x, device="ROCKET").realize()
  b, want = 0.0, x.astype(np.float64)
  for _ in range(2):
    report.reset()
    with env(ROCKET_FALLBACK="0"): r = X.assign(X.reciprocal()).numpy().astype(np.float64)
    b, want = (1 + RHO) / ((1 - U16) * (1 - b)) - 1, 1 / want
    assert len(report.records()[-1].detail) >= 2, report.records()
    nm.assert_within(r, want, b * np.abs(want), "in-place 1/x")
  assert calls == [1, 1]   # one buffer: the kernel's input is its output

SQRT_DOMAINS = [table_of_window(np.sqrt, "sqrt", w).domain for w in range(RANGE_WINDOWS)]

def program_counts(rec:report.KernelRecord) -> dict[int, int]:
  """{window program index: results} of the one call `rec` recorded over several windows (report.py KernelRecord.detail)."""
  assert rec.runs == 1 and len(rec.detail) >= 2, rec
  return {int(k[1:].split("]")[0]): n for k, n in rec.detail.items()}

def test_layernorm_rows_over_every_sqrt_window():
  """Full layernorm, rows of std 0.05, 30, 3, 10 and 0.3 interleaved (var + eps in sqrt windows 4, 3, 0, 1, 2): the
  variance kernel (a contraction, its sqrt table checked after the job) takes each row's result from the first window
  whose table holds that row's u (rules/contraction.py _element), in one call; all-NPU in strict mode within the
  layernorm bound of tests/test_blocks_on_npu.py (per row the worst stated sqrt window meeting its u)."""
  stds = np.array([0.05, 30.0, 3.0, 0.05, 10.0, 0.3, 30.0, 3.0, 0.3, 10.0])
  z = np.random.default_rng(9).standard_normal((len(stds), 64))
  x = ((z - z.mean(-1, keepdims=True)) / z.std(-1, keepdims=True) * stds[:, None]).astype(np.float32)
  assert_layernorm_within(x, RHO)
  var = next(rec for rec in report.records() if "lut(sqrt" in rec.reason)
  u = x.astype(np.float64).var(-1) + 1e-5
  assert program_counts(var) == element_counts(first_window(SQRT_DOMAINS, u)) and len(var.detail) == RANGE_WINDOWS, var

def test_sqrt_of_a_matmul_per_element_over_windows():
  """sqrt(x @ w), u = x @ w from rows scaled by 1, 0.05, 0.005, 100 and columns by 1, 1, 10 (u in every sqrt window,
  varying along both output axes), M = 1100 and N = 70: two row tiles (the last partial), five 16-kernel guard blocks
  per tile (the last with 6 kernels). Each element from the first window whose table holds its u, all on the NPU in
  strict mode. Bound: u from fp16 operands in fp32 (e_u, numerics.bound_matmul), the window's table within its
  measured error T on its domain (the NPU's u lies there: its guard held) and its fp16 output; sqrt moves an input error
  e by at most e / sqrt(u); the CPU's fp32 dot likewise, then its sqrt rounded once. T per element: the worst stated
  window whose domain meets [u - e_u, u + e_u]."""
  rng = np.random.default_rng(3)
  M, K, N = 1100, 32, 70
  x = (rng.uniform(0.5, 1.5, (M, K)) * np.resize([1.0, 0.05, 0.005, 100.0, 1.0], M)[:, None] / K).astype(np.float32)
  w = (rng.uniform(0.5, 1.5, (K, N)) * np.resize([1.0, 1.0, 10.0], N)[None, :]).astype(np.float32)
  X, W = Tensor(x, device="ROCKET").realize(), Tensor(w, device="ROCKET").realize()
  r, summaries = all_npu(lambda: (X @ W).sqrt().numpy())
  xd, wd = x.astype(np.float64), w.astype(np.float64)
  u = xd @ wd
  assert program_counts(report.records()[-1]) == element_counts(first_window(SQRT_DOMAINS, u)), report.records()
  e_u, e_c = nm.bound_matmul(nm.rocket("float32"), xd, wd), nm.bound_matmul(nm.cpu("float32"), xd, wd)
  T = np.full(u.shape, -np.inf)
  for t in stated_tables(np.sqrt, "sqrt", summaries):
    T = np.where((u + e_u >= t.domain[0]) & (u - e_u <= t.domain[1]), np.maximum(T, t.max_abs_error), T)
  assert np.isfinite(T).all()
  bound = T + U16 * (np.sqrt(u + e_u) + T) + nm.ETA16 + (e_u + e_c) / np.sqrt(u) + U32 * np.sqrt(u + e_c)
  nm.assert_within(r, (X.to("CPU") @ W.to("CPU")).sqrt().numpy(), bound, "sqrt(x @ w) over windows")

@pytest.mark.parametrize("std, why", [(0.01, f"the argument of lut(sqrt) in its domain {SQRT_DOMAINS[-1]}"),
                                      (200.0, "the computed operand finite in fp16")])
def test_a_row_beyond_every_sqrt_window_takes_the_c_code(std, why):
  """The std kernel sqrt(mean((x - mean)^2) + eps) with rows of std 0.05 and 3 (windows 4 and 0) and one of std `std`:
  0.01 (u ~ 1.1e-4, below window 4's 2^-10: no window holds that row) or 200 (squares beyond fp16 in the computed A,
  which every row's result reads: a check over operands, all or nothing). The whole call runs the C code (the CPU's
  answer exactly), reported once with the failing after-job guard of the last window as the reason (the other rows'
  windows do not make it partial)."""
  stds = np.array([0.05, 3.0, std, 3.0])
  z = np.random.default_rng(10).standard_normal((len(stds), 64))
  x = ((z - z.mean(-1, keepdims=True)) / z.std(-1, keepdims=True) * stds[:, None] + 1.0).astype(np.float32)
  X = Tensor(x, device="ROCKET").realize()
  mean = X.mean(-1, keepdim=True).realize()
  sd = lambda X, mean: ((X - mean).square().mean(-1, keepdim=True) + 1e-5).sqrt()
  report.reset()
  r = sd(X, mean).numpy()
  rec = final_kernel_record()
  assert rec.engine == "fallback" and rec.reason == f"{AFTER_GUARD_REASON}: {why}" and not rec.detail, rec
  np.testing.assert_array_equal(r, sd(X.to("CPU"), mean.to("CPU")).numpy())
