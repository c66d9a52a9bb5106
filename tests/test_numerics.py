"""The error bounds of tests/numerics.py hold for a direct simulation of the arithmetic they model.

If a bound were derived wrongly (too tight), an NPU that computes exactly as DESIGN.md says would fail the op tests;
this checks the derivation against the model itself, on adversarial inputs (wide magnitude ranges, cancellation)."""
import numpy as np
from hypothesis import given, strategies as st
import numerics as nm

def fp16_operands(x): return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)

def npu_matmul_model(A, B):
  """fp16 operands, exact products, sequential fp32 accumulation (the worst order for error growth), fp32 out."""
  A16, B16 = fp16_operands(A), fp16_operands(B)
  out = np.zeros((A.shape[0], B.shape[1]), np.float32)
  for k in range(A.shape[1]): out = (out + A16[:, k:k+1] * B16[k:k+1, :]).astype(np.float32)
  return out

def npu_sum_model(x, mean):
  x16 = fp16_operands(x)
  acc = np.zeros(x.shape[0], np.float32)
  for k in range(x.shape[1]): acc = (acc + x16[:, k]).astype(np.float32)
  return (acc * np.float32(np.float16(1/x.shape[1]))).astype(np.float32) if mean else acc

mags = st.sampled_from([1e-6, 1e-3, 1.0, 1e2, 6e4])

@given(st.integers(1, 6), st.integers(1, 300), st.integers(1, 6), mags, st.integers(0, 2**31))
def test_matmul_bound_holds_for_model(m, k, n, mag, seed):
  rng = np.random.default_rng(seed)
  A = (rng.standard_normal((m, k)) * mag).clip(-6e4, 6e4).astype(np.float32)  # the fp16 range; beyond it ROCKET takes another path
  B = (rng.standard_normal((k, n)) * (60000/mag if mag > 1 else 1)).clip(-6e4, 6e4).astype(np.float32)
  exact = A.astype(np.float64) @ B.astype(np.float64)
  nm.assert_within(npu_matmul_model(A, B), exact, nm.bound_matmul(nm.rocket("float32"), A, B), "matmul model")

@given(st.integers(1, 4), st.integers(1, 500), mags, st.booleans(), st.integers(0, 2**31))
def test_sum_bound_holds_for_model(m, n, mag, mean, seed):
  x = (np.random.default_rng(seed).standard_normal((m, n)) * mag).clip(-6e4, 6e4).astype(np.float32)
  exact = x.astype(np.float64).sum(1) / (n if mean else 1)
  nm.assert_within(npu_sum_model(x, mean), exact, nm.bound_sum_axis(nm.rocket("float32"), x, 1, mean), "sum model")

@given(st.lists(st.floats(-6e4, 6e4, width=32), min_size=1, max_size=64), st.integers(0, 2**31))
def test_elementwise_bounds_hold_for_model(vals, seed):
  a = np.array(vals, np.float32)
  b = np.random.default_rng(seed).permutation(a)
  a16, b16 = fp16_operands(a), fp16_operands(b)
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  p = nm.rocket("float32")
  nm.assert_within((a16 + b16).astype(np.float32), a64 + b64, nm.bound_add(p, a, b), "add model")
  nm.assert_within((a16 - b16).astype(np.float32), a64 - b64, nm.bound_add(p, a, b), "sub model")
  nm.assert_within((a16 * b16).astype(np.float32), a64 * b64, nm.bound_mul(p, a, b), "mul model")
  nm.assert_within(np.maximum(a16, b16), np.maximum(a64, b64), nm.bound_max(p, a, b), "max model")

def test_bound_is_not_vacuous():
  """A result off by more than the fp16 operand rounding allows must fail the check."""
  A, B = np.ones((1, 4), np.float32), np.ones((4, 1), np.float32)
  bound = nm.bound_matmul(nm.rocket("float32"), A, B)
  assert bound.max() < 4 * 3 * 2**-11
  try: nm.assert_within(np.array([[4.01]]), np.array([[4.0]]), bound, "x")
  except AssertionError: pass
  else: raise AssertionError("a 0.25% error passed a bound that should be ~0.1%")
