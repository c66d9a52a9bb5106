"""A conv with its fused epilogue, summed or averaged over its rows and/or columns in the same kernel (ResNet's last basic
block + global average pool): rules/conv_reduce.py. Strict mode (ROCKET_FALLBACK=0) proves the NPU ran it; the
summary ("fp16 out; then a mean ...") that this rule did.

Bounds (numerics.py model), composed per stage:
  conv, ROCKET: x rounded to fp16, the weights as fl16(w*s) (BatchNorm's scale folded), t + r as fl16(t + r) and added in
    fp32 (one more term of the sum); products exact, fp32 sums: numerics.bound_dot of n (+1) terms over
    S = conv(|x|, |w|)*|s| + |t + r|, with the output rounded to fp16 (the intermediate cube: u16 of S, eta16). ReLU is
    1-Lipschitz and commutes with the rounding.
  conv, CPU: the fp32 conv (gamma(n-1) of conv(|x|, |w|)), then k fp32 roundings of the epilogue's ops (multiply by s,
    add t, add r, ReLU is exact), each u32 of a value bounded by M = (A + e)*max(1, |s|) + |t| + |r|.
  sum of m values y_i within e_i of the exact conv values v_i (|v_i| <= S_i): sum e_i + gamma(m-1) sum(S_i + e_i) for
    an fp32 sum (ROCKET: fp16 values against ones, exact products; CPU: fp32 values); times c (a mean's 1/m): the
    constant's rounding to fp32 (u32, either side) and the product's (u32), or nothing for a plain fp32 sum.
|rocket - cpu| <= ROCKET's bound + the CPU's (numerics.assert_within)."""
from __future__ import annotations
import numpy as np
import pytest
from hypothesis import given, assume, strategies as st
from tinygrad import Tensor
from tinygrad_rocket import report
import numerics as nm
from helpers import env

REDUCTIONS = {"mean23": (lambda y: y.mean((2, 3)), (2, 3), True), "sum23": (lambda y: y.sum((2, 3)), (2, 3), False),
              "mean2": (lambda y: y.mean(2), (2,), True), "mean3": (lambda y: y.mean(3), (3,), True)}

def block(bn:bool, residual:bool, relu:bool, stride:int, padding:int, reduction:str):
  """conv [* s + t] [+ r] [relu], then the reduction."""
  red = REDUCTIONS[reduction][0]
  def fn(x, w, s, t, r):
    y = x.conv2d(w, stride=stride, padding=padding)
    if bn: y = y * s.reshape(1, -1, 1, 1) + t.reshape(1, -1, 1, 1)
    if residual: y = y + r
    return red(y.relu() if relu else y)
  return fn

def bound(x, w, s, t, r, bn:bool, residual:bool, stride:int, padding:int, reduction:str) -> np.ndarray:
  """ROCKET's + the CPU's bound of the reduced block (module docstring)."""
  _, axes, mean = REDUCTIONS[reduction]
  col = lambda v: np.abs(np.asarray(v, np.float64)).reshape(1, -1, 1, 1)
  sc = col(s) if bn else np.ones((1, w.shape[0], 1, 1))
  n = w.shape[1] * w.shape[2] * w.shape[3]
  A = nm.conv64(np.abs(x), np.abs(w), stride, padding)
  T = np.abs((np.asarray(t, np.float64).reshape(1, -1, 1, 1) if bn else 0) + (np.asarray(r, np.float64) if residual else 0))
  shifted = bn or residual
  S = A * sc + T
  amax = float(np.abs(x).max() + (np.abs(w) * sc.reshape(-1, 1, 1, 1)).max() + T.max() + 1)
  e_rocket = nm.bound_dot(nm.Precision(nm.U16, nm.ETA16, nm.U32, nm.U16, nm.ETA16), S, n + shifted, amax)
  k = 2 * bn + residual
  e_acc = nm.gamma(max(n - 1, 0), nm.U32) * A
  M = (A + e_acc) * np.maximum(1.0, sc) + (col(t) if bn else 0) + (np.abs(r) if residual else 0)
  e_cpu = e_acc * sc * (1 + nm.U32) ** k + nm.gamma(k, nm.U32) * M
  m = int(np.prod([S.shape[a] for a in axes]))
  def summed(e):
    tot = e.sum(axis=axes) + nm.gamma(max(m - 1, 0), nm.U32) * (S + e).sum(axis=axes)
    if not mean: return tot
    return tot / m + 2 * nm.U32 * (S.sum(axis=axes) + tot) / m   # the constant's rounding, the product's
  return summed(e_rocket) + summed(e_cpu)

def run(fn, arrays, device):
  ts = [Tensor(a, device=device).realize() for a in arrays]   # realized first: only the block fuses into the kernel
  return fn(*ts).numpy()

def arrays(rng, batch, cin, cout, size, out, big:bool=False):
  """Inputs; `big`: a shift and residual of magnitude up to 1000, so that one dropped (or added twice) exceeds the bound
  (whose operand-rounding part grows with the conv's sum of magnitudes, not with its value)."""
  x = rng.uniform(-2, 2, (batch, cin, size, size)).astype(np.float32)
  w = rng.uniform(-1, 1, (cout, cin, 3, 3)).astype(np.float32)
  m = 1000 if big else 2
  s, t = rng.uniform(0.5, 2, cout).astype(np.float32), rng.uniform(-m, m, cout).astype(np.float32)
  r = rng.uniform(-m, m, (batch, cout, out, out)).astype(np.float32)
  return x, w, s, t, r

def check(x, w, s, t, r, bn, residual, relu, stride, padding, reduction, what:str):
  fn = block(bn, residual, relu, stride, padding, reduction)
  report.reset()
  with env(ROCKET_FALLBACK="0"): got = run(fn, (x, w, s, t, r), "ROCKET")
  (rec,) = report.records()
  assert rec.engine == "npu" and "fp16 out; then a" in rec.reason, rec.reason
  assert ("mean" if REDUCTIONS[reduction][2] else "sum") in rec.reason.split("then a")[1], rec.reason
  ref = run(fn, (x, w, s, t, r), "CPU")
  nm.assert_within(got, ref, bound(x, w, s, t, r, bn, residual, stride, padding, reduction), what)

@given(batch=st.integers(1, 2), cin=st.integers(1, 24), cout=st.integers(1, 40), size=st.integers(4, 10), stride=st.integers(1, 2),
       padding=st.integers(0, 1), bn=st.booleans(), residual=st.booleans(), relu=st.booleans(),
       reduction=st.sampled_from(sorted(REDUCTIONS)), big=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_reduce_on_npu(batch, cin, cout, size, stride, padding, bn, residual, relu, reduction, big, seed):
  out = (size + 2 * padding - 3) // stride + 1
  assume(out >= 4)   # the rows a summed cube needs (MIN_ROWS) and the EW stage's 12-pixel plane (a shift or residual)
  x, w, s, t, r = arrays(np.random.default_rng(seed), batch, cin, cout, size, out, big)
  check(x, w, s, t, r, bn, residual, relu, stride, padding, reduction,
        f"conv {x.shape} * {w.shape} s{stride} p{padding} bn={bn} residual={residual} relu={relu} {reduction}")

def test_resnet_block_with_global_pool():
  """docs/models.md's r_32_32_3_3_16_8_8: the last basic block's second conv + BN + residual + ReLU and the global
  average pool, 32 channels at 8x8."""
  rng = np.random.default_rng(0)
  x, w, s, t, r = arrays(rng, 1, 32, 32, 8, 8, big=True)
  check(x, w, s, t, r, True, True, True, 1, 1, "mean23", "ResNet basic block + global average pool")

def test_overflowing_intermediate_runs_the_c_code():
  """A conv value beyond fp16's range (its mean is finite): the guard on the fp16 cube sends the call to the C code,
  reported with the reason, and the result is the CPU's."""
  rng = np.random.default_rng(1)
  x, w, s, t, r = arrays(rng, 1, 8, 16, 8, 8)
  fn = block(False, True, False, 1, 1, "mean23")
  r[0, 3, 2, 5] = 65500.0   # fl16(t + r) = 65504 is finite; + the (positive) conv value it is not
  w[:] = np.abs(w)
  x[:] = np.abs(x) + 1
  report.reset()
  got = run(fn, (x, w, s, t, r), "ROCKET")
  (rec,) = report.records()
  assert rec.engine != "npu" and "the conv's output finite in fp16" in rec.reason, (rec.engine, rec.reason)
  np.testing.assert_array_equal(got, run(fn, (x, w, s, t, r), "CPU"))

@pytest.mark.parametrize("what, fn, reason", [
  ("channel mean", lambda x, w: x.conv2d(w, padding=1).mean(1), "a sum over the conv's channels"),
  ("leaky before the pool", lambda x, w: x.conv2d(w, padding=1).leaky_relu(0.1).mean((2, 3)), "a leaky ReLU before the sum"),
  ("pool of 3 rows", lambda x, w: x.conv2d(w).mean((2, 3)), "3 conv output rows summed"),
  ("a conv as the residual", lambda x, w: (x.conv2d(w, padding=1) + x.conv2d(w[:, :, 1:2, 1:2])).relu().mean((2, 3)),
   "2 reductions inside the outer sum"),
])
def test_refused_with_reason(what, fn, reason):
  """What the rule does not take falls back (or takes another rule) with its reason in the report."""
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, (1, 8, 5, 5)).astype(np.float32)
  w = rng.uniform(-1, 1, (16, 8, 3, 3)).astype(np.float32)
  report.reset()
  got = run(fn, (x, w), "ROCKET")
  reasons = [rec.reason for rec in report.records() if rec.engine != "npu"]
  assert any(f"conv+sum: {reason}" in rs for rs in reasons), (what, [(rec.engine, rec.reason) for rec in report.records()])
  np.testing.assert_allclose(got, run(fn, (x, w), "CPU"), rtol=0, atol=0)
