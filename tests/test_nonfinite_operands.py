"""-inf as data: the operands real models hand the NPU with infinities in them, and the calls that still run the C code.

  - max pooling over a map tinygrad padded with -inf (a conv output before max_pool2d(padding=1)), and min pooling with
    +inf: the PPU's max compares -inf exactly (rules/pool.py MAX_IDENTITY ⚠), so the result is bit-exact against the CPU
    device for fp16-representable data (the max of fp16 values is one of them);
  - softmax over rows masked with -inf (causal attention): the -inf scores are packed as the finite stand-in that puts
    exp's argument at NEG_INF_ARG (rules/elementwise.py), where tinygrad's exp is exactly 0 as at -inf, so the NPU's result
    is within the softmax bound of its stand-in input (tests/test_blocks_on_npu.py softmax_bound, which holds for every
    finite input); the bound is computed for that input (standin below);
  - NaN, +inf in a max (-inf in a min), a fully masked row (its max is -inf: exp's argument would be -inf - -inf), and
    log_softmax's last kernel (x - m - L is -inf where x is) keep the C code: the reported reason is the non-finite one.
Every NPU claim is checked in strict mode (ROCKET_FALLBACK=0) or on report.records()."""
from __future__ import annotations
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from tinygrad import Tensor
import numerics as nm
from helpers import env, on, rocket_and_cpu
from test_blocks_on_npu import all_npu, softmax_bound, table_error
from test_pool_rule import run_strict
from test_log_softmax import npu_bound, exp_table_error, log_table_error, TRANSCENDENTAL_U32
from tinygrad_rocket import report
from tinygrad_rocket.device import NONFINITE_OPERAND_REASON
from tinygrad_rocket.rules.elementwise import NEG_INF_ARG

U16, U32, ETA16 = nm.U16, nm.U32, nm.ETA16
LOG2E = 1.4426950408889634

def fp16_values(shape, rng) -> np.ndarray:
  """float32 data holding fp16 values: a max of them is exact in fp16, so the PPU's result is bit-exact."""
  return (rng.standard_normal(shape) * 4).astype(np.float16).astype(np.float32)

def strict(fn, *xs:np.ndarray) -> tuple[np.ndarray, list]:
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = on("ROCKET", fn, *xs)
  recs = report.records()
  assert recs and all(rec.engine == "npu" for rec in recs), [(rec.name, rec.engine, rec.reason) for rec in recs]
  return r, recs

def assert_same(r:np.ndarray, c:np.ndarray, what:str) -> None:
  assert r.dtype == c.dtype and np.array_equal(r, c, equal_nan=True), (what, r, c)

# ***** pooling *****

def neg_inf_bordered(rng, shape, border:int=1) -> np.ndarray:
  """A conv output as tinygrad pads it for max_pool2d(padding=border): -inf around fp16 data."""
  x = np.full(shape[:2] + tuple(s + 2 * border for s in shape[2:]), -np.inf, np.float32)
  x[..., border:-border, border:-border] = fp16_values(shape, rng)
  return x

@pytest.mark.parametrize("k, stride, padding", [(3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 2)])
def test_max_pool_of_a_neg_inf_bordered_map(k, stride, padding):
  x = neg_inf_bordered(np.random.default_rng(k * 10 + stride), (2, 16, 9, 11))
  fn = lambda t: t.max_pool2d(k, stride, padding=padding)
  r, recs = strict(fn, x)
  assert all("pooling" in rec.reason for rec in recs)
  assert_same(r, on("CPU", fn, x), f"max_pool2d({k}, {stride}, padding={padding})")

def test_windows_of_only_neg_inf_are_neg_inf():
  """Windows of -inf data only (and of -inf data and padding): -inf, as on the CPU; in float16 too."""
  x = neg_inf_bordered(np.random.default_rng(1), (1, 8, 4, 4), border=3)
  for dt in (np.float32, np.float16):
    fn = lambda t: t.max_pool2d(2, 2, padding=1)
    r, _ = strict(fn, x.astype(dt))
    c = on("CPU", fn, x.astype(dt))
    assert np.isneginf(c).any() and np.isfinite(c).any()
    assert_same(r, c, f"only -inf windows {np.dtype(dt).name}")

@pytest.mark.parametrize("reduce", ["min_pool", "min_axis"])
def test_min_with_pos_inf(reduce):
  """+inf in a min: the negated max sees -inf."""
  x = -neg_inf_bordered(np.random.default_rng(2), (1, 8, 6, 6))
  fn = (lambda t: -(-t).max_pool2d(3, 2)) if reduce == "min_pool" else (lambda t: t.min(axis=(2, 3)))
  r, recs = strict(fn, x)
  assert_same(r, on("CPU", fn, x), reduce)

@settings(max_examples=40, deadline=None)
@given(st.data())
def test_max_pool_neg_inf_anywhere(data):
  """-inf at any positions (hypothesis picks them), any window: bit-exact, on the PPU."""
  shape = (1, data.draw(st.integers(1, 12)), data.draw(st.integers(3, 10)), data.draw(st.integers(3, 10)))
  x = fp16_values(shape, np.random.default_rng(data.draw(st.integers(0, 2**16))))
  x[data.draw(arrays(bool, shape))] = -np.inf
  k, stride, padding = data.draw(st.integers(2, 3)), data.draw(st.integers(1, 3)), data.draw(st.integers(0, 1))
  r, c, recs = run_strict(lambda t: t.max_pool2d(k, stride, padding=padding), x)   # (kernels the analysis cannot read: rejected)
  assert recs and all(rec.engine == "npu" for rec in recs)
  assert_same(r, c, f"max_pool2d({k}, {stride}, {padding}) over {shape}")

@pytest.mark.parametrize("bad, op", [(np.nan, "max"), (np.inf, "max"), (np.nan, "min"), (-np.inf, "min"),
                                     (-1e6, "max")])   # float32 beyond fp16: it would pack as -inf, not its own value
def test_still_guarded_in_pools(bad, op):
  x = neg_inf_bordered(np.random.default_rng(3), (1, 8, 6, 6))
  if op == "min": x = -x
  x[0, 2, 3, 3] = bad
  fn = (lambda t: t.max_pool2d(3, 2, padding=1)) if op == "max" else (lambda t: -(-t).max_pool2d(3, 2))
  report.reset()
  r, c = rocket_and_cpu(fn, x)
  assert_same(r, c, f"{bad} in a {op}")
  assert [rec.reason for rec in report.records() if rec.engine == "fallback"] == [NONFINITE_OPERAND_REASON]

# ***** softmax *****

def causal(x:np.ndarray) -> np.ndarray:
  """Scores masked as causal attention masks them: -inf above the diagonal of the last two axes."""
  n = x.shape[-1]
  return np.where(np.tril(np.ones((x.shape[-2], n), bool)), x, -np.inf).astype(x.dtype)

def standin(x:np.ndarray) -> np.ndarray:
  """x (float64) with each -inf replaced by the stand-in the NPU computes with (exp's argument at NEG_INF_ARG): the
  input the bounds are derived for (the rule's claim: tinygrad's result is the same for both)."""
  m = x.max(-1, keepdims=True).astype(np.float16).astype(np.float64)
  return np.where(np.isneginf(x), m + NEG_INF_ARG / LOG2E, x)

def assert_softmax_within(r:np.ndarray, c:np.ndarray, x:np.ndarray, summaries:list[str], what:str) -> None:
  xs = standin(x.astype(np.float64))
  p, b = softmax_bound(xs, table_error("exp2", summaries))
  n = x.shape[-1]
  nm.assert_within(r, c, b + 8 * U32 * p + nm.gamma(n + 8, U32) * p, what)

@pytest.mark.parametrize("shape, scale", [((2, 16, 16), 1.0), ((1, 2, 40, 40), 3.0), ((64, 64), 0.5)])
def test_causal_softmax_on_the_npu(shape, scale):
  x = causal((np.random.default_rng(shape[-1]).standard_normal(shape) * scale).astype(np.float32))
  X = Tensor(x, device="ROCKET").realize()
  r, summaries = all_npu(lambda: X.softmax(-1).numpy())
  c = Tensor(x, device="CPU").softmax(-1).numpy()
  assert (c[np.isneginf(x)] == 0).all()
  assert_softmax_within(r, c, x, summaries, f"causal softmax {shape}")

@settings(max_examples=25, deadline=None)
@given(st.data())
def test_softmax_neg_inf_anywhere(data):
  """-inf at any positions, every row keeping at least one finite score: all kernels on the NPU, within the bound."""
  rows, n = data.draw(st.integers(1, 8)), data.draw(st.integers(2, 48))
  x = (np.random.default_rng(data.draw(st.integers(0, 2**16))).standard_normal((rows, n)) * data.draw(st.sampled_from([0.5, 2.0]))).astype(np.float32)
  mask = data.draw(arrays(bool, (rows, n)))
  mask[np.arange(rows), data.draw(arrays(np.int64, rows, elements=st.integers(0, n - 1)))] = False
  x[mask] = -np.inf
  X = Tensor(x, device="ROCKET").realize()
  r, summaries = all_npu(lambda: X.softmax(-1).numpy())
  assert_softmax_within(r, Tensor(x, device="CPU").softmax(-1).numpy(), x, summaries, f"softmax {x.shape} {mask.sum()} -inf")

def test_softmax_at_v_with_causal_scores():
  """softmax(s) @ v with s causal (the scores of masked attention): the row max, the row sum, and softmax @ V with the
  softmax computed into its A tiles, all on the NPU. Bound: test_blocks_on_npu.test_attention_block's, for the stand-in."""
  rng = np.random.default_rng(5)
  L, D = 24, 16
  s, v = causal(rng.standard_normal((2, L, L)).astype(np.float32)), rng.standard_normal((2, L, D)).astype(np.float32)
  S, V = (Tensor(t, device="ROCKET").realize() for t in (s, v))
  r, summaries = all_npu(lambda: (S.softmax(-1) @ V).numpy())
  assert any("computed A" in x for x in summaries)
  c = (Tensor(s, device="CPU").softmax(-1) @ Tensor(v, device="CPU")).numpy()
  p, e_p = softmax_bound(standin(s.astype(np.float64)), table_error("exp2", summaries))
  e_p = e_p + U16 * (p + e_p) + ETA16                                     # narrowed to fp16 in A
  vd = v.astype(np.float64)
  e_v = U16 * np.abs(vd) + ETA16
  Sm = (p + e_p) @ (np.abs(vd) + e_v)
  bound = e_p @ np.abs(vd) + p @ e_v + e_p @ e_v + nm.gamma(L - 1, U32) * Sm + U32 * Sm
  nm.assert_within(r, c, bound + nm.gamma(L + 8, U32) * (np.abs(p) @ np.abs(vd)), "softmax(causal) @ v")

@pytest.mark.parametrize("what", ["masked row", "+inf", "nan"])
def test_softmax_still_guarded(what):
  """A fully masked row (its max is -inf: NaN on the CPU), +inf and NaN scores: the sum and the final kernel read a
  non-finite operand the rule does not take and run the C code (the row max is exact on the PPU or runs the C code
  too: fp16 values, so its max is exact), so the result is the CPU's, NaNs included."""
  x = causal(fp16_values((4, 8), np.random.default_rng(6)))
  if what == "masked row": x[2] = -np.inf
  else: x[1, 0] = np.inf if what == "+inf" else np.nan
  report.reset()
  r, c = rocket_and_cpu(lambda t: t.softmax(-1), x)
  assert np.isnan(c).any()
  assert_same(r, c, what)
  fell = [rec for rec in report.records() if rec.engine == "fallback"]
  assert len(fell) >= 2 and all(rec.reason == NONFINITE_OPERAND_REASON for rec in fell)

def cpu_log_softmax_bound(x:np.ndarray) -> np.ndarray:
  """test_log_softmax.cpu_bound (float16) for rows with -inf: a -inf term's exp is exactly 0 on the CPU, so it adds no
  rounding to the sum (the largest |d| is over the finite terms); the result only at finite x."""
  M = x.max(-1, keepdims=True)
  d = x - M
  s = np.exp(d).sum(-1, keepdims=True)
  L, n = np.log(s), x.shape[-1]
  ad = np.where(np.isneginf(x), 0.0, np.abs(d))
  ut = TRANSCENDENTAL_U32 * U32
  rel_s = (ad * (U16 + 2 * U32)).max(-1, keepdims=True) * 1.01 + ut + nm.gamma(n - 1, U32) * 1.01
  e_L = rel_s * 1.01 + ut * np.abs(L) + U32 * np.abs(L)
  e_L = e_L + U16 * (np.abs(L) + e_L) + ETA16                             # L stored as fp16
  e_d = U16 * ad + ETA16
  return e_d + e_L + U16 * (np.abs(np.where(np.isneginf(x), 0.0, d - L)) + e_d + e_L) + ETA16

def test_causal_log_softmax():
  """log_softmax of causal rows (float16, 80 wide: every row sum inside the log's window [1, 64], the single-score row's
  too: 1 plus the exp table's floor on its 79 stand-ins). The max and the sum with its log run on the NPU; the last
  kernel (x - m - L: -inf where x is -inf) runs the C code (non-finite operand). Finite results within test_log_softmax's
  bounds for the stand-in input (its final-kernel part bounds the C code's fp32 x - m - L~ too); -inf exactly."""
  x = causal((np.random.default_rng(7).standard_normal((80, 80))).astype(np.float16))
  X = Tensor(x, device="ROCKET").realize()
  report.reset()
  r = X.log_softmax(-1).numpy()
  recs = report.records()
  c = Tensor(x, device="CPU").log_softmax(-1).numpy()
  assert [rec.engine for rec in recs] == ["npu", "npu", "fallback"] and recs[-1].reason == NONFINITE_OPERAND_REASON, \
    [(rec.name, rec.engine, rec.reason) for rec in recs]
  inf = np.isneginf(x)
  assert np.array_equal(np.isneginf(r), inf) and np.array_equal(np.isneginf(c), inf)
  summaries = [rec.reason for rec in recs]
  xs = standin(x.astype(np.float64))
  _, b = npu_bound(xs, True, exp_table_error(summaries), log_table_error(summaries))
  nm.assert_within(r[~inf], c[~inf], (b + cpu_log_softmax_bound(x.astype(np.float64)))[~inf], "causal log_softmax")
