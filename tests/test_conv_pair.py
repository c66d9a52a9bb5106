"""Two convs added in one kernel (a ResNet stage's first block: bn2(conv2(h)) + bnd(convd(x)), ReLU): rules/conv_pair.py.
Strict mode (ROCKET_FALLBACK=0) proves the NPU ran it; the summary ("conv pair: ...") that this rule did.

Bounds (numerics.py model), composed per stage:
  stage 1, ROCKET (the downsample conv): x rounded to fp16, weights fl16(w1*s1) (BatchNorm's scale folded), both shifts
    as fl16(t1 + t2) added in fp32 (one more term of the sum); products exact, fp32 sums, fp32 out (exact):
    e1 = numerics.bound_dot of n1 (+1) terms over S1 = conv(|x|, |w1|)*|s1| + |t1 + t2|, no output rounding.
  stage 2, ROCKET (the main conv): e2 = bound_dot of n2 terms over S2 = conv(|h|, |w2|)*|s2|; then the EW stage's fp32
    add of stage 1's value (one rounding, u32 of S1 + e1 + S2 + e2); ReLU is 1-Lipschitz; fp32 out, float32 output.
  CPU: each fp32 conv within gamma(n-1) of conv(|.|, |.|); then k fp32 roundings (the scales, the shifts, the add; ReLU
    exact), each u32 of a value bounded by M = sum over branches (A + e)*max(1, |s|) + |t|.
|rocket - cpu| <= ROCKET's bound + the CPU's (numerics.assert_within)."""
from __future__ import annotations
import numpy as np
import pytest
from hypothesis import given, assume, strategies as st
from tinygrad import Tensor
from tinygrad_rocket import report
import numerics as nm
from helpers import env, conv_case

def block(bn:bool, relu:bool, stride:int, padding:int, down_stride:int, drop:str|None=None):
  """(conv(h, w2, stride, padding) [* s2 + t2]) + (conv(x, w1, down_stride) [* s1 + t1]) [relu]; `drop` leaves out
  the downsample branch ("branch") or its shift ("shift"): the CPU side of the tests that the bound catches either."""
  col = lambda v: v.reshape(1, -1, 1, 1)
  def fn(h, w2, s2, t2, x, w1, s1, t1):
    y2, y1 = h.conv2d(w2, stride=stride, padding=padding), x.conv2d(w1, stride=down_stride)
    if bn: y2, y1 = y2 * col(s2) + col(t2), y1 * col(s1) + (col(t1) if drop != "shift" else 0)
    y = y2 if drop == "branch" else y2 + y1
    return y.relu() if relu else y
  return fn

def bound(h, w2, s2, t2, x, w1, s1, t1, bn:bool, stride:int, padding:int, down_stride:int) -> np.ndarray:
  """ROCKET's + the CPU's bound of the block (module docstring)."""
  col = lambda v: np.abs(np.asarray(v, np.float64)).reshape(1, -1, 1, 1)
  one = np.ones((1, w2.shape[0], 1, 1))
  sc2, sc1 = (col(s2), col(s1)) if bn else (one, one)
  A2, A1 = nm.conv64(np.abs(h), np.abs(w2), stride, padding), nm.conv64(np.abs(x), np.abs(w1), down_stride, 0)
  n2, n1 = w2[0].size, w1[0].size
  T = np.abs(np.asarray(t1, np.float64) + np.asarray(t2, np.float64)).reshape(1, -1, 1, 1) if bn else 0 * one
  S2, S1 = A2 * sc2, A1 * sc1 + T
  fp32_out = nm.Precision(nm.U16, nm.ETA16, nm.U32, 0.0, 0.0)   # fp32 sums written as fp32: no output rounding
  amax = lambda a, w, sc: float(np.abs(a).max() + (np.abs(w) * sc.reshape(-1, 1, 1, 1)).max() + T.max() + 1)
  e2 = nm.bound_dot(fp32_out, S2, n2, amax(h, w2, sc2))
  e1 = nm.bound_dot(fp32_out, S1, n1 + bn, amax(x, w1, sc1))
  e_rocket = e1 + e2 + nm.U32 * (S1 + e1 + S2 + e2)
  e_acc2, e_acc1 = nm.gamma(max(n2 - 1, 0), nm.U32) * A2, nm.gamma(max(n1 - 1, 0), nm.U32) * A1
  k = 5 if bn else 1   # two scales, two shifts, the add
  M = (A2 + e_acc2) * np.maximum(1.0, sc2) + (A1 + e_acc1) * np.maximum(1.0, sc1) + (col(t1) + col(t2) if bn else 0)
  e_cpu = (e_acc2 * sc2 + e_acc1 * sc1) * (1 + nm.U32) ** k + nm.gamma(k, nm.U32) * M
  return e_rocket + e_cpu

def run(fn, arrays, device):
  ts = [Tensor(a, device=device).realize() for a in arrays]   # realized first: only the block fuses into the kernel
  return fn(*ts).numpy()

def arrays(rng, batch, cm, cd, cout, size, down_size, big:bool=False):
  """h (the main branch's input), its 3x3 weights and BatchNorm (s2, t2), x (the block's input), the 1x1 downsample
  weights and BatchNorm (s1, t1). `big`: shifts up to 1000, so that one dropped exceeds the bound (whose
  operand-rounding part grows with the convs' sums of magnitudes, not with the shift)."""
  m = 1000 if big else 2
  h = rng.uniform(-2, 2, (batch, cm, size, size)).astype(np.float32)
  w2 = rng.uniform(-1, 1, (cout, cm, 3, 3)).astype(np.float32)
  x = rng.uniform(-2, 2, (batch, cd, down_size, down_size)).astype(np.float32)
  w1 = rng.uniform(-1, 1, (cout, cd, 1, 1)).astype(np.float32)
  s2, s1 = (rng.uniform(0.5, 2, cout).astype(np.float32) for _ in range(2))
  t2, t1 = (rng.uniform(-m, m, cout).astype(np.float32) for _ in range(2))
  return h, w2, s2, t2, x, w1, s1, t1

def on_npu(args, bn, relu, stride, padding, down_stride) -> np.ndarray:
  report.reset()
  with env(ROCKET_FALLBACK="0"): got = run(block(bn, relu, stride, padding, down_stride), args, "ROCKET")
  (rec,) = report.records()
  assert rec.engine == "npu" and rec.reason.startswith("conv pair: "), rec.reason
  return got

def check(args, bn, relu, stride, padding, down_stride, what:str):
  got = on_npu(args, bn, relu, stride, padding, down_stride)
  ref = run(block(bn, relu, stride, padding, down_stride), args, "CPU")
  nm.assert_within(got, ref, bound(*args, bn, stride, padding, down_stride), what)

@given(batch=st.integers(1, 2), cm=st.integers(1, 24), cd=st.integers(2, 24), cout=st.integers(1, 40), extra=st.integers(0, 6),
       stride=st.integers(1, 2), padding=st.integers(0, 1), down_stride=st.integers(1, 2), down_extra=st.integers(0, 1),
       bn=st.booleans(), relu=st.booleans(), big=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_pair_on_npu(batch, cm, cd, cout, extra, stride, padding, down_stride, down_extra, bn, relu, big, seed):
  # cd >= 2: a 1x1 conv of one channel is a product, no reduction (tinygrad drops a one-element sum; the conv rule takes
  # the kernel with x*w1 as a residual)
  size, out = conv_case(3, stride, 1, padding, extra, 4)
  assume(out >= 4)   # the EW stage's 12-pixel plane per task
  down_size = down_stride * (out - 1) + 1 + min(down_extra, down_stride - 1)   # the 1x1 conv's output grid is the main conv's
  args = arrays(np.random.default_rng(seed), batch, cm, cd, cout, size, down_size, big)
  check(args, bn, relu, stride, padding, down_stride,
        f"main {args[0].shape} * {args[1].shape} s{stride} p{padding} + down {args[4].shape} * {args[5].shape} s{down_stride} bn={bn} relu={relu}")

@pytest.mark.parametrize("drop", ["branch", "shift"])
def test_bound_catches_a_dropped_branch_or_shift(drop):
  """The bound is tight enough to see the downsample branch or its shift missing: the NPU's result against the CPU's
  block without it fails the comparison."""
  args = arrays(np.random.default_rng(3), 1, 16, 8, 16, 8, 15, big=True)
  got = on_npu(args, True, False, 1, 1, 2)
  ref = run(block(True, False, 1, 1, 2, drop=drop), args, "CPU")
  with pytest.raises(AssertionError): nm.assert_within(got, ref, bound(*args, True, 1, 1, 2), f"without the {drop}")

def test_shift_inside_the_scaled_term():
  """nn.BatchNorm2d's eval form puts the mean inside the scaled term, (conv - mean) * s: the main conv's intercept
  -mean*s is its own per-channel operand, which stage 1 adds too (stage 2's EW operand is stage 1's cube). Found
  with model_coverage's ResNet: a dropped main-branch shift. The bound is the block's with t = -mean*s."""
  args = arrays(np.random.default_rng(6), 1, 16, 8, 16, 8, 15, big=True)
  h, w2, s2, m2, x, w1, s1, m1 = args
  col = lambda v: v.reshape(1, -1, 1, 1)
  fn = lambda h, w2, s2, m2, x, w1, s1, m1: ((h.conv2d(w2, padding=1) - col(m2)) * col(s2) + (x.conv2d(w1, stride=2) - col(m1)) * col(s1)).relu()
  report.reset()
  with env(ROCKET_FALLBACK="0"): got = run(fn, args, "ROCKET")
  (rec,) = report.records()
  assert rec.engine == "npu" and rec.reason.startswith("conv pair: "), rec
  nm.assert_within(got, run(fn, args, "CPU"), bound(h, w2, s2, -m2 * s2, x, w1, s1, -m1 * s1, True, 1, 1, 2), "mean inside the scale")

@pytest.mark.parametrize("cm, cd, cout, size, tiling", [(128, 64, 128, 28, "3 row band(s) x 1 kernel chunk(s)"),
                                                         (256, 128, 256, 14, "1 row band(s) x 6 kernel chunk(s)")])
def test_banded_and_chunked_tiles(cm, cd, cout, size, tiling):
  """A main conv too big for one task (ResNet-18 stages 2 and 3: row bands, kernel chunks): stage 1 runs on its tiles."""
  args = arrays(np.random.default_rng(4), 1, cm, cd, cout, size, 2 * size - 1, big=True)
  check(args, True, True, 1, 1, 2, f"ResNet-18's first block at {size}x{size}")
  assert tiling in report.records()[0].reason, report.records()[0].reason

def test_resnet_downsample_block():
  """A ResNet stage's first basic block end to end (BatchNorms in eval form as scale and shift): relu(bn1(conv1(x)))
  stride 2, then the main conv + BN added to the 1x1 stride-2 downsample conv + BN, ReLU: two kernels, both on the NPU,
  the second as the conv pair; checked against the CPU's block on the same h (the first kernel's output)."""
  rng = np.random.default_rng(5)
  _, w2, s2, t2, x, w1, s1, t1 = arrays(rng, 1, 32, 16, 32, 8, 16, big=True)
  wc = rng.uniform(-1, 1, (32, 16, 3, 3)).astype(np.float32)
  sc, tc = rng.uniform(0.5, 2, 32).astype(np.float32), rng.uniform(-2, 2, 32).astype(np.float32)
  col = lambda v: v.reshape(1, -1, 1, 1)
  first = lambda x, wc, sc, tc: (x.conv2d(wc, stride=2, padding=1) * col(sc) + col(tc)).relu()
  pair = block(True, True, 1, 1, 2)
  report.reset()
  with env(ROCKET_FALLBACK="0"): got = run(lambda x, wc, sc, tc, w2, s2, t2, w1, s1, t1: pair(first(x, wc, sc, tc), w2, s2, t2, x, w1, s1, t1),
                                           (x, wc, sc, tc, w2, s2, t2, w1, s1, t1), "ROCKET")
  recs = report.records()
  assert len(recs) == 2 and all(r.engine == "npu" for r in recs) and recs[1].reason.startswith("conv pair: "), [(r.engine, r.reason) for r in recs]
  h = run(first, (x, wc, sc, tc), "ROCKET")
  args = (h, w2, s2, t2, x, w1, s1, t1)
  nm.assert_within(got, run(pair, args, "CPU"), bound(*args, True, 1, 1, 2), "ResNet downsample block")

@pytest.mark.parametrize("what, fn, reason", [
  ("the block then a global pool", lambda h, w2, x, w1: (h.conv2d(w2, padding=1) + x.conv2d(w1, stride=2)).relu().mean((2, 3)),
   "3 reductions in the kernel"),
  ("a 3x3 output", lambda h, w2, x, w1: (h.conv2d(w2) + x.conv2d(w1, stride=2)).relu(), "a task's output plane of 9 pixels"),
  ("a scale after the add", lambda h, w2, x, w1: (h.conv2d(w2, padding=1) + x.conv2d(w1, stride=2)) * 0.5,
   "a term holding both convs' sums"),
])
def test_refused_with_reason(what, fn, reason):
  """What the rule does not take falls back (or another rule takes it) with its reason in the report."""
  rng = np.random.default_rng(6)
  h, w2 = rng.uniform(-1, 1, (1, 8, 5, 5)).astype(np.float32), rng.uniform(-1, 1, (16, 8, 3, 3)).astype(np.float32)
  x, w1 = rng.uniform(-1, 1, (1, 4, 10, 10)).astype(np.float32), rng.uniform(-1, 1, (16, 4, 1, 1)).astype(np.float32)
  if "3x3" in what: x = x[:, :, :5, :5]
  report.reset()
  got = run(fn, (h, w2, x, w1), "ROCKET")
  reasons = [rec.reason for rec in report.records() if rec.engine != "npu"]
  assert any(f"conv+conv: {reason}" in rs for rs in reasons), (what, [(rec.engine, rec.reason) for rec in report.records()])
  np.testing.assert_array_equal(got, run(fn, (h, w2, x, w1), "CPU"))
