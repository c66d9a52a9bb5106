"""Contractions with a computed operand (rules/contraction.py, _prologue): the reduced value or one factor of it is an
elementwise expression of loads — softmax's sum of exp(x - max), a variance's sum of (x - mean)^2, relu(x) @ w,
(2x + 1).conv2d(w). Elementwise stages (rules/elementwise.py) compute it on the NPU straight into the matmul's A tiles
in fp16, then the matmul tasks reduce it against B (a loaded operand, or ones). Strict mode: a passing test ran on
the NPU.

Bounds, per element, derived from how the NPU computes (tests/numerics.py's model): the computed operand a carries
its stages' error e_a (operand rounding 2^-11, each fp32 operation 2^-24, a table's measured error, and the final
narrowing to fp16, 2^-11) into the dot product: sum_i (e_a,i |b_i| + |a_i| e_b,i + e_a,i e_b,i) + gamma(n-1) sum
|a~ b~| + one output rounding. tinygrad's CPU computes in float32: its own gamma(n) of the same sums."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad import Tensor
import numerics as nm
from helpers import env
from tinygrad_rocket import report
from tinygrad_rocket.rules.tables import pick_table

U16, U32, ETA16 = nm.U16, nm.U32, nm.ETA16
LOG2E = 1.4426950408889634

def run(fn, *arrays, device="ROCKET"):
  return fn(*[Tensor(a, device=device) for a in arrays]).numpy()

def npu_summaries() -> list[str]:
  return [r.reason for r in report.records() if r.engine == "npu"]

def dot_bound(a, e_a, b, e_b, n:int):
  """|computed - exact| of sum_k a[..., k] * b[..., k] (already broadcast) from the operands' own bounds, fp32 sums of n
  terms (gamma(n-1)) and one fp32 output rounding."""
  a, b = np.abs(a), np.abs(b)
  e_in = (e_a * b + a * e_b + e_a * e_b).sum(-1)
  S = ((a + e_a) * (b + e_b)).sum(-1)
  return e_in + nm.gamma(max(n - 1, 1), U32) * S + U32 * (S + e_in)

def cpu_sum_bound(terms, n:int):
  """tinygrad's CPU: each term computed with a few float32 roundings, then an n-term float32 sum."""
  t = np.abs(terms)
  return nm.gamma(n + 8, U32) * t.sum(-1)

def exp_table_error() -> float:
  t = pick_table(np.exp2, "exp2")
  assert t is not None
  return t.max_abs_error

@settings(deadline=None)
@given(rows=st.integers(1, 40), k=st.integers(2, 300), scale=st.sampled_from([0.1, 1.0, 4.0]), seed=st.integers(0, 2**31 - 1))
def test_softmax_denominator(rows, k, scale, seed):
  """sum_k exp(x - max): the exp's argument t = c*(x - m) (c = log2(e) rounded to fp16) is formed from fp16 operands
  and narrowed to fp16, the table of 2^t (guarded: t <= 0) has its measured error, its fp16 output is A."""
  x = (np.random.default_rng(seed).standard_normal((rows, k)) * scale).astype(np.float32)
  m = x.max(-1, keepdims=True)
  report.reset()
  with env(ROCKET_FALLBACK="0"):
    r = run(lambda X, M: (X - M).exp().sum(-1), x, m)
  assert any("computed A" in s for s in npu_summaries())
  c = run(lambda X, M: (X - M).exp().sum(-1), x, m, device="CPU")
  xd, md = x.astype(np.float64), m.astype(np.float64)
  t = LOG2E * (xd - md)
  d = U16 * (np.abs(xd) + np.abs(md)) + 2 * ETA16                    # operand rounding of x - m
  e_t = LOG2E * (1 + U16) * d + (2 * U16 + U32) * (np.abs(t) + LOG2E * d) + ETA16   # coefficient, fp32 add, fp16 narrowing
  a = np.exp2(t)
  e_a = exp_table_error() + np.log(2) * a * np.exp2(e_t) * e_t        # the table, and 2^t's slope over t's error
  bound = dot_bound(a, e_a, 1.0, 0.0, k) + cpu_sum_bound(a, k)
  nm.assert_within(r, c, bound, "softmax denominator")

@pytest.mark.parametrize("mean", [False, True])
def test_variance(mean):
  """sum or mean of (x - m)^2: d = x - m in fp32 from fp16 operands (twice: once the EW operand, once the CORE's), their
  fp32 product narrowed to fp16 is A; mean's 1/n is B (a power of two here: exact in fp16)."""
  rng = np.random.default_rng(1)
  x = (rng.standard_normal((33, 256)) * 3 + 1).astype(np.float32)
  m = x.mean(-1, keepdims=True)
  f = (lambda X, M: ((X - M) ** 2).mean(-1)) if mean else (lambda X, M: ((X - M) ** 2).sum(-1))
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = run(f, x, m)
  assert any("computed A" in s for s in npu_summaries())
  c = run(f, x, m, device="CPU")
  dd = x.astype(np.float64) - m
  ed = U16 * (np.abs(x) + np.abs(m)) + 2 * ETA16 + U32 * (np.abs(dd) + 1e-30)
  a = dd * dd
  e_a = 2 * np.abs(dd) * ed + ed * ed + (U32 + U16 + U32 * U16) * (a + 2 * np.abs(dd) * ed + ed * ed) + ETA16
  n = x.shape[-1]
  bound = dot_bound(a, e_a, 1.0, 0.0, n) + cpu_sum_bound(a, n)
  if mean: bound = bound / n + U32 * np.abs(c)
  nm.assert_within(r, c, bound, "variance")

PROLOGUES = {  # name: (tinygrad fn of x, the operand in float64, its stage error beyond operand rounding per |value|)
  "relu": (lambda X: X.relu(), lambda x: np.maximum(x, 0), 1.0),
  "2x+1": (lambda X: X * 2 + 1, lambda x: 2 * x + 1, 2.0),
}

@pytest.mark.parametrize("name", list(PROLOGUES))
@pytest.mark.parametrize("kind", ["matmul", "conv"])
def test_prologue(name, kind):
  """f(x) @ w and f(x).conv2d(w): f on the NPU into A. relu(x) in fp16 is relu of the rounded x (exact); 2x + 1 is
  formed in fp32 from the rounded x (coefficient 2 exact), then narrowed to fp16."""
  f, f64, slope = PROLOGUES[name]
  rng = np.random.default_rng(2)
  if kind == "matmul":
    x, w = rng.standard_normal((37, 70)).astype(np.float32), rng.standard_normal((70, 20)).astype(np.float32)
    g = lambda X, W: f(X) @ W
  else:
    x, w = rng.standard_normal((2, 6, 9, 9)).astype(np.float32), rng.standard_normal((10, 6, 3, 3)).astype(np.float32)
    g = lambda X, W: f(X).conv2d(W, padding=1 if name == "relu" else 0)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = run(g, x, w)
  # a conv's computed input is packed by the conv rule (tests/test_conv_prologue.py): fp16(f(x)), one rounding, within
  # this test's bound for the contraction's fp16 x, fp32 f, fp16 narrowing
  assert any(("computed A" if kind == "matmul" else "+computed input") in s for s in npu_summaries())
  c = run(g, x, w, device="CPU")
  if kind == "matmul":
    a, b = f64(x.astype(np.float64))[:, None, :], w.astype(np.float64).T[None, :, :]
  else:   # im2col with the zero padding (f is applied to the input, the padding stays 0)
    p = 1 if name == "relu" else 0
    fx = np.pad(f64(x.astype(np.float64)), ((0, 0), (0, 0), (p, p), (p, p)))
    ax = np.abs(np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p))))
    o = 9 + 2 * p - 2
    cols = lambda z: np.stack([z[:, :, i:i + o, j:j + o] for i in range(3) for j in range(3)], 2).transpose(0, 3, 4, 1, 2).reshape(2, o, o, 1, 54)
    a, xa = cols(fx), cols(ax)
    b = w.astype(np.float64).reshape(10, 54)[None, None, None]
  xa = np.abs(x.astype(np.float64))[:, None, :] if kind == "matmul" else xa
  e_a = slope * (U16 * xa + ETA16) + (U32 + U16) * (np.abs(a) + slope * (U16 * xa + ETA16)) + ETA16
  e_b = U16 * np.abs(b) + ETA16
  n = a.shape[-1]
  bound = dot_bound(a, e_a, b, e_b, n) + nm.gamma(n + 4, U32) * (np.abs(a) * np.abs(b)).sum(-1)
  if kind == "conv": bound = bound.transpose(0, 3, 1, 2)
  nm.assert_within(r, c, bound, f"{name} {kind}")

def test_layernorm_statistics_with_guarded_sqrt():
  """sqrt(mean((x - m)^2) + eps): the computed A, then u = s/n + eps (the BS stage's fp32 add) narrowed to fp16 and a
  table of sqrt on an interval (its measured error), checked after the job; the kernel's result is the table's fp16."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((16, 128)).astype(np.float32)
  m = x.mean(-1, keepdims=True)
  f = lambda X, M: (((X - M) ** 2).mean(-1) + 1e-5).sqrt()
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = run(f, x, m)
  (s,) = [s for s in npu_summaries() if "computed A" in s]
  assert "lut(sqrt" in s
  c = run(f, x, m, device="CPU")
  table = pick_table(np.sqrt, "sqrt")
  dd = x.astype(np.float64) - m
  ed = U16 * (np.abs(x) + np.abs(m)) + 2 * ETA16 + U32 * np.abs(dd)
  a = dd * dd
  e_a = 2 * np.abs(dd) * ed + ed * ed + (U32 + U16 + U32 * U16) * (a + 2 * np.abs(dd) * ed + ed * ed) + ETA16
  n = x.shape[-1]
  u = a.mean(-1) + 1e-5
  e_u = dot_bound(a, e_a, 1.0, 0.0, n) / n + U32 * u
  e_u = e_u + U16 * (u + e_u) + ETA16                                  # narrowed to fp16 (the table's input)
  bound = table.max_abs_error + e_u / (2 * np.sqrt(table.domain[0])) + nm.gamma(n + 8, U32) * np.sqrt(u)
  nm.assert_within(r, c, bound, "layernorm statistics")

def test_out_of_domain_statistic_takes_the_c_path():
  """Variances ~1e-4 (below the lowest window of the sqrt table, 2^-10: rules/tables.py TABLE_SCALES) next to ~900
  (window 3) in one call are found after the job: the call's result is the C code's (each row's own window, program
  elements, does not make it partial: a row in no window sends the whole call)."""
  scale = np.where(np.arange(16) % 2, 30.0, 0.01)[:, None]   # (x - m)^2 within fp16
  x = (np.random.default_rng(4).standard_normal((16, 128)) * scale).astype(np.float32)
  m = x.mean(-1, keepdims=True)
  f = lambda X, M: (((X - M) ** 2).mean(-1) + 1e-5).sqrt()
  report.reset()
  r = run(f, x, m)
  assert any("fails a check" in rec.reason and "lut(sqrt" in rec.reason for rec in report.records() if rec.engine == "fallback")
  np.testing.assert_array_equal(r, run(f, x, m, device="CPU"))

def test_fp16_overflow_of_computed_operand_takes_the_c_path():
  """(x + 1)^2 = 90601 is beyond fp16: the computed A would hold inf; the check after the job runs the C code."""
  x = np.full((4, 40), 300, np.float32)
  f = lambda X: ((X + 1) * (X + 1)).sum(-1)
  report.reset()
  r = run(f, x)
  assert any("finite in fp16" in rec.reason for rec in report.records() if rec.engine == "fallback")
  np.testing.assert_array_equal(r, run(f, x, device="CPU"))

def test_attention_row_sums_batched():
  """Softmax denominators over (batch, heads, queries): the batch loops are rows of the computed A."""
  rng = np.random.default_rng(5)
  s = rng.standard_normal((2, 3, 20, 50)).astype(np.float32) * 2
  m = s.max(-1, keepdims=True)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = run(lambda S, M: (S - M).exp().sum(-1), s, m)
  c = run(lambda S, M: (S - M).exp().sum(-1), s, m, device="CPU")
  sd, md = s.astype(np.float64), m.astype(np.float64)
  t = LOG2E * (sd - md)
  d = U16 * (np.abs(sd) + np.abs(md)) + 2 * ETA16
  e_t = LOG2E * (1 + U16) * d + (2 * U16 + U32) * (np.abs(t) + LOG2E * d) + ETA16
  a = np.exp2(t)
  e_a = exp_table_error() + np.log(2) * a * np.exp2(e_t) * e_t
  nm.assert_within(r, c, dot_bound(a, e_a, 1.0, 0.0, 50) + cpu_sum_bound(a, 50), "attention row sums")
