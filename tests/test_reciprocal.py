"""1/x on the NPU (a guarded table seed + Newton steps, rules/tables.py newton_reciprocal) and two computed values
meeting in one stage (rules/elementwise.py Compiler.meet), in strict mode against tinygrad's CPU device, within bounds
derived per node (the Node algebra of tests/test_elementwise_rule.py, extended by `recip` and `meet` there).

Outside every window of the seed's domain (tests/test_range_windows.py), and for non-finite operands, a call runs the
kernel's C code: its result is the CPU's."""
from __future__ import annotations
import numpy as np
import pytest
from hypothesis import given, strategies as st
from tinygrad import Tensor
import tinygrad_rocket  # noqa: F401
from tinygrad_rocket import report
from tinygrad_rocket.ops.lut import all_fp16
from tinygrad_rocket.rules.tables import newton_reciprocal, newton_reciprocal_model, newton, newton_model, RECIP_MAX_REL_ERROR, NEWTON_FUNCTIONS
from tinygrad_rocket.program import GUARD_MARGIN
from helpers import env
from test_elementwise_rule import U16, U32, ETA16, Node, leaf, mul, add, sub, maximum, recip, cpu_bound, run

NR = newton_reciprocal()
LO, HI = NR.domain
# the guard pulls the domain in by GUARD_MARGIN (program.Guard); arguments drawn inside it run on the NPU
IN_LO, IN_HI = LO * (1 + 2 * GUARD_MARGIN), HI * (1 - 2 * GUARD_MARGIN)

def npu_records() -> list:
  return [r for r in report.records() if r.engine == "npu"]

def assert_on_npu_within(n:Node, arrays:list, dtype:str, depth:int) -> None:
  """Node n's kernel on the NPU (strict run by `run`) within its derived bound (+ the fp16 output rounding) and the
  CPU's own (`depth` roundings)."""
  report.reset()
  r, c = run(n, arrays, dtype)
  assert npu_records(), report.records()
  bound = n.e + (U16 * np.abs(n.v) + ETA16 if dtype == "float16" else 0) + cpu_bound(n, dtype, depth)
  err = np.abs(r.astype(np.float64) - c.astype(np.float64))
  assert (err <= bound).all(), f"err {err.max():.3g}, bound at worst {bound.ravel()[np.argmax(err - bound)]:.3g}"

def test_newton_error_recurrence():
  """The measured error of each step is within the a-priori recurrence of rules/tables.py from the previous step's
  measured error: eps' <= eps^2 + eps u16 (1 + eps) + 3 u32 + u32^2; the seed is inside (0, 2/x); the result is within
  RECIP_MAX_REL_ERROR (half an fp16 rounding)."""
  errs = NR.errors
  assert errs[0] < 1 and len(errs) == NR.steps + 1
  for e0, e1 in zip(errs, errs[1:]): assert e1 <= e0 ** 2 + e0 * U16 * (1 + e0) + 3 * U32 + U32 ** 2, (e0, e1)
  assert NR.rel_error <= RECIP_MAX_REL_ERROR

def test_rsqrt_error_recurrence():
  """rsqrt's steps within their a-priori recurrence (rules/tables.py), the narrowing of y between steps included."""
  nt = newton("rsqrt")
  errs = nt.errors
  for k, (e0, e1) in enumerate(zip(errs, errs[1:])):
    narrowed = U16 * (1 + e1) if k < nt.steps - 1 else 0
    assert e1 <= 1.5 * e0 ** 2 + 0.5 * e0 ** 3 + (1 + e0) * (2 * e0 + e0 ** 2) * U16 / 2 + 4 * U32 + narrowed, (k, e0, e1)
  assert nt.rel_error <= RECIP_MAX_REL_ERROR

def test_rsqrt_every_fp16_input_of_the_domain():
  nt = newton("rsqrt")
  lo, hi = nt.domain
  xs = all_fp16()
  xs = xs[(xs >= lo * (1 + 2 * GUARD_MARGIN)) & (xs <= hi * (1 - 2 * GUARD_MARGIN))]
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = Tensor(xs.astype(np.float32), device="ROCKET").rsqrt().numpy()
  assert npu_records() and "rsqrt(seed" in npu_records()[-1].reason
  np.testing.assert_array_equal(r, newton_model("rsqrt", nt.table, nt.steps, xs)[-1])

def rsqrt_node(a:Node, rel:float) -> Node:
  """1/sqrt(a) for a linear a: a' = a (1 + d), |d| <= a.e/|a|; y = (1 + r)/sqrt(a'), |r| <= rel:
  |y sqrt(a) - 1| <= (1 + rel)/sqrt(1 - |d|) - 1."""
  d = a.e / np.abs(a.v)
  v = 1.0 / np.sqrt(a.v)
  return Node(lambda ts: a.build(ts).rsqrt(), v, np.abs(v) * ((1 + rel) / np.sqrt(1 - d) - 1) + 8 * U32 * np.abs(v), np.abs(v), False)

@given(rows=st.integers(1, 30), cols=st.sampled_from([1, 16, 50]), seed=st.integers(0, 2 ** 16), dtype=st.sampled_from(["float32", "float16"]))
def test_rmsnorm_final_kernel(rows, cols, seed, dtype):
  """x * rsqrt(ms + eps) with the mean square realized (RMSNorm's and, with x - mean, layernorm's final kernel when the
  variance is realized): strict on the NPU within the per-node bound."""
  nt = newton("rsqrt")
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal((rows, cols)) * 2).astype(dtype)
  ms = np.exp(rng.uniform(np.log(nt.domain[0] * 1.01), np.log(nt.domain[1] * 0.99), (rows, 1))).astype(dtype)
  xn, mn = leaf(0, x, dtype), leaf(1, ms, dtype)
  arg = add(mn, Node(lambda ts: 1e-5, np.float64(1e-5), 0.0, np.float64(1e-5), True))
  n = mul(xn, rsqrt_node(arg, nt.rel_error))
  assert_on_npu_within(n, [x, ms], dtype, 4)

def test_every_fp16_input_of_the_domain():
  """1/x on the emulated NPU for every fp16 x of the domain equals the model of rules/tables.py bit for bit (the same
  fp16/fp32 roundings), so the measured error is the NPU's."""
  xs = all_fp16()
  xs = xs[(xs >= IN_LO) & (xs <= IN_HI)]
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = Tensor(xs.astype(np.float32), device="ROCKET").reciprocal().numpy()
  assert npu_records() and "Newton" in npu_records()[-1].reason
  np.testing.assert_array_equal(r, newton_reciprocal_model(NR.table, NR.steps, xs)[-1])
  assert np.abs(1 - r.astype(np.float64) / (1.0 / xs.astype(np.float64))).max() <= NR.rel_error

@given(rows=st.integers(1, 40), cols=st.sampled_from([1, 3, 16, 77]), seed=st.integers(0, 2 ** 16),
       dtype=st.sampled_from(["float32", "float16"]), edge=st.sampled_from(["any", "lo", "hi"]))
def test_division_by_a_loaded_row_value(rows, cols, seed, dtype, edge):
  """x / s[row] (a per-row statistic, as the final kernels of softmax and layernorm read it): x * recip(s), bounded per
  node (the reciprocal's input rounding and measured Newton error, the product's first-order terms)."""
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal((rows, cols)) * 4).astype(dtype)
  s = np.exp(rng.uniform(np.log(IN_LO), np.log(IN_HI), (rows, 1)))
  if edge == "lo": s[0] = IN_LO
  if edge == "hi": s[-1] = IN_HI
  s = s.astype(dtype)
  xn, sn = leaf(0, x, dtype), leaf(1, s, dtype)
  n = mul(xn, recip(sn, NR.rel_error))
  assert_on_npu_within(n, [x, s], dtype, 3)

@pytest.mark.parametrize("s", [LO * 0.9, HI * 1.5, HI * (1 + GUARD_MARGIN / 4)])
def test_outside_window_0_takes_another_window(s):
  """An argument outside window 0's domain (its edge within the guard's margin included) next to ones inside it: that
  row's elements come from another window's program in the same call (two windows recorded), within the per-node bound
  with the largest error of the windows."""
  x = np.linspace(-3, 3, 40, dtype=np.float32).reshape(4, 10)
  sv = np.array([[2.0], [s], [0.5], [3.0]], np.float32)
  rho = max(newton("reciprocal", w).rel_error for w in range(len(NEWTON_FUNCTIONS["reciprocal"][1])))
  assert_on_npu_within(mul(leaf(0, x, "float32"), recip(leaf(1, sv, "float32"), rho)), [x, sv], "float32", 3)
  assert sorted(report.records()[-1].detail.values()) == [10, 30], report.records()

@pytest.mark.parametrize("s", [1e-6, 3e-8, -2.0, 0.0, 1e5, np.inf, -np.inf, np.nan])
def test_outside_the_domain_gives_the_cpu_answer(s):
  """Arguments outside every window of the seed's domain (subnormal, negative, zero) and non-finite ones take the C
  code: the CPU's answer exactly, with the guard's or the non-finite operand's reason."""
  x = np.linspace(-3, 3, 40, dtype=np.float32).reshape(4, 10)
  sv = np.array([[2.0], [s], [0.5], [3.0]], np.float32)
  report.reset()
  r = (Tensor(x, device="ROCKET") / Tensor(sv, device="ROCKET")).numpy()
  c = (Tensor(x, device="CPU") / Tensor(sv, device="CPU")).numpy()
  np.testing.assert_array_equal(r, c)
  rec = report.records()[-1]
  assert rec.engine == "fallback" and ("outside the table's domain" in rec.reason or "not finite" in rec.reason), rec

def test_nonfinite_numerator_gives_the_cpu_answer():
  x = np.array([[1.0, np.inf, np.nan, 2e-8, -7e4, 3.0]], np.float32)
  s = np.array([[2.5]], np.float32)
  r = (Tensor(x, device="ROCKET") / Tensor(s, device="ROCKET")).numpy()
  np.testing.assert_array_equal(r, (Tensor(x, device="CPU") / Tensor(s, device="CPU")).numpy())

# ---- the final kernels of softmax and layernorm, their statistics realized first (tinygrad 0.14's kernels) -------------
def softmax_parts(x:Tensor) -> tuple[Tensor, Tensor]:
  m = x.max(-1, keepdim=True).realize()
  return m, (x - m).exp().sum(-1, keepdim=True).realize()

@pytest.mark.parametrize("shape, scale", [((4, 64), 1.0), ((3, 50), 3.0), ((40, 16), 0.3), ((2, 7), 8.0)])
def test_softmax_final_kernel_strict(shape, scale):
  """exp2((x - max) log2e) * recip(sum): the exp table's fp16 result is the narrowed main term (no extra rounding), the
  refined reciprocal the fp32 EW operand. Bound: exp's (argument rounding, table error, its fp16 output) times 1/s, plus
  exp times 1/s's (s rounded to fp16, Newton's measured error), plus fp32 roundings on both sides."""
  x = (np.random.default_rng(3).standard_normal(shape) * scale).astype(np.float32)
  X = Tensor(x, device="ROCKET").realize()
  m, s = softmax_parts(X)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = ((X - m).exp() / s).numpy().astype(np.float64)
  rec = report.records()[-1]
  assert rec.engine == "npu" and "lut(exp2" in rec.reason and "Newton" in rec.reason, rec
  table_err = float(rec.reason.split("lut(exp2, error ")[1].split(")")[0])
  mm, ss = m.numpy().astype(np.float64), s.numpy().astype(np.float64)
  d = x - mm
  ex = np.exp(d)
  arg_err = U16 * (np.abs(x) + np.abs(mm)) + 3 * U16 * np.abs(d) + ETA16        # as test_elementwise_rule's guarded exp
  e_exp = ex * arg_err * 1.01 + table_err + U16 * ex                             # + the table's fp16 output
  d_s = U16 + ETA16 / ss                                                          # s rounded to fp16, relative
  e_rec = (d_s + NR.rel_error) / (1 - d_s) / ss
  ref = ex / ss
  bound = e_exp / ss + ex * e_rec + e_exp * e_rec + 8 * U32 * ref
  c = ((Tensor(x, device="CPU") - Tensor(mm.astype(np.float32), device="CPU")).exp() / Tensor(ss.astype(np.float32), device="CPU")).numpy()
  c = c.astype(np.float64)
  assert (np.abs(r - c) <= bound + 8 * U32 * np.abs(c)).all(), np.abs(r - c).max()

@pytest.mark.parametrize("shape, scale", [((4, 64), 1.0), ((6, 33), 20.0), ((16, 8), 0.2)])
def test_layernorm_final_kernel_strict(shape, scale):
  """(x - mean) * recip(std), std = sqrt(var + eps) realized: the difference is the linear main part, the reciprocal
  the EW operand. Bound per node: x and mean rounded to fp16, std rounded to fp16 and Newton's error, fp32 roundings."""
  x = (np.random.default_rng(4).standard_normal(shape) * scale).astype(np.float32)
  X = Tensor(x, device="ROCKET").realize()
  mean = X.mean(-1, keepdim=True).realize()
  std = ((X - mean).square().mean(-1, keepdim=True) + 1e-5).sqrt().realize()
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = ((X - mean) / std).numpy()
  rec = report.records()[-1]
  assert rec.engine == "npu" and "Newton" in rec.reason, rec
  n = mul(sub(leaf(0, x, "float32"), leaf(1, mean.numpy(), "float32")), recip(leaf(2, std.numpy(), "float32"), NR.rel_error))
  c = ((Tensor(x, device="CPU") - mean.to("CPU")) / std.to("CPU")).numpy()
  bound = n.e + cpu_bound(n, "float32", 3)
  assert (np.abs(r.astype(np.float64) - c) <= bound).all(), np.abs(r - c).max()

# ---- two computed values in one stage -----------------------------------------------------------------------------------
MEETS = {
  "a*b + c*d": lambda a, b, c, d: add(mul(a, b), mul(c, d)),
  "a*b - c*d": lambda a, b, c, d: sub(mul(a, b), mul(c, d)),
  "max(a*b, c*d)": lambda a, b, c, d: maximum(mul(a, b), mul(c, d)),
  "(a*b) * (c*d)": lambda a, b, c, d: mul(mul(a, b), mul(c, d)),
  "(a+1)*(b-2) + c*d": lambda a, b, c, d: add(mul(add(a, c), sub(b, d)), mul(c, d)),
}

@pytest.mark.parametrize("name", list(MEETS))
@given(seed=st.integers(0, 2 ** 16), n=st.sampled_from([5, 37, 300]), dtype=st.sampled_from(["float32", "float16"]))
def test_computed_values_meet(name, seed, n, dtype):
  """One side narrowed to fp16 (a guard checks it stays finite), the other the EW operand: the derivation's nodes with
  `meet`'s extra fp16 rounding of the narrowed side."""
  rng = np.random.default_rng(seed)
  xs = [(rng.standard_normal(n) * 3).astype(dtype) for _ in range(4)]
  ls = [leaf(i, x, dtype) for i, x in enumerate(xs)]
  node = MEETS[name](*ls)
  report.reset()
  r, c = run(node, xs, dtype)
  assert npu_records(), report.records()
  bound = node.e + (U16 * np.abs(node.v) + ETA16 if dtype == "float16" else 0) + cpu_bound(node, dtype, 5)
  err = np.abs(r.astype(np.float64) - c.astype(np.float64))
  assert (err <= bound).all(), f"err {err.max():.3g} > bound {bound.ravel()[np.argmax(err - bound)]:.3g}"

def test_narrowed_value_beyond_fp16_takes_the_c_code():
  """A product beyond 65504 would be inf once narrowed: the guard sends the call to the C code."""
  a = np.array([300.0, 1.0, 2.0], np.float32)
  b = np.array([300.0, 3.0, -1.0], np.float32)
  report.reset()
  r = (Tensor(a, device="ROCKET") * Tensor(b, device="ROCKET") + Tensor(b, device="ROCKET") * Tensor(b, device="ROCKET")).numpy()
  assert report.records()[-1].engine == "fallback" and "narrowed to fp16" in report.records()[-1].reason
  np.testing.assert_array_equal(r, a * b + b * b)

def test_gates_meet_without_guard():
  """Two table results (bounded by their tables) meet with no guard and no extra rounding of the narrowed side."""
  x = np.linspace(-6, 6, 97).astype(np.float32)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = (Tensor(x, device="ROCKET").sigmoid() * Tensor(-x, device="ROCKET").sigmoid()).numpy()
  c = (Tensor(x, device="CPU").sigmoid() * Tensor(-x, device="CPU").sigmoid()).numpy()
  assert npu_records()
  np.testing.assert_allclose(r, c, atol=4 * (2 * 2.0 ** -15 + 0.23 * U16 + U16))
