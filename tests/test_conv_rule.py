"""The conv rule (rules/conv.py): conv1d/conv2d kernels on the NPU's convolution datapath, no im2col.

Strict mode (ROCKET_FALLBACK=0) proves the kernel ran on the NPU; the report proves it was the conv rule's program.
Results are compared with tinygrad's CPU device within the bound derived in numerics.py (a sum of n = Cin/groups *
KH * KW fp16 products accumulated in fp32, S = conv(|x|, |w|) in float64; ReLU only selects). The MAC efficiency of
two layers is read from the emulator's counters."""
import math
import numpy as np
import pytest
from hypothesis import given, assume, reject, strategies as st
from tinygrad import Tensor, Device
from tinygrad_rocket import report, lower
from tinygrad_rocket.config import FallbackError
from tinygrad_rocket.rules.conv import lower_conv
import numerics as nm
from helpers import env, rocket_and_cpu

def test_registered_before_contraction():
  names = [n for n, _ in lower.RULES]
  assert ("conv", lower_conv) in lower.RULES and names.index("conv") < names.index("contraction")

def conv_fn(stride, dilation, padding, groups, relu):
  def fn(x, w):
    y = x.conv2d(w, groups=groups, stride=stride, dilation=dilation, padding=padding)
    return y.relu() if relu else y
  return fn

def _reuses(n_out:int, taps:int, stride:int, dilation:int) -> bool:
  """Whether neighbouring windows of an axis overlap (rules/conv.py Axis.reuses, on the reduced stride/dilation)."""
  g = math.gcd(stride, dilation)
  return dilation // g < n_out and stride // g < taps

@given(dims=st.sampled_from([1, 2]), batch=st.integers(1, 2), cin=st.integers(1, 40), cout=st.integers(1, 40),
       k=st.integers(1, 5), stride=st.integers(1, 3), dilation=st.integers(1, 2), padding=st.integers(0, 2),
       extra=st.integers(0, 6), depthwise=st.booleans(), relu=st.booleans(), dtype=st.sampled_from(["float32", "float16"]),
       seed=st.integers(0, 2**16))
def test_conv_on_npu(dims, batch, cin, cout, k, stride, dilation, padding, extra, depthwise, relu, dtype, seed):
  groups, cout = (cin, cin) if depthwise else (1, cout)
  eff = (k - 1) * dilation + 1
  # inputs of one element or not larger than their padding: tinygrad writes index forms analysis.py does not read (a
  # constant folded into the predicate, % over more than one period), so those kernels fall back with that reason
  size = max(2, padding + 1, eff - 2 * padding) + extra
  # gaps between windows (kernel < stride, dilation 1): tinygrad indexes the input with a % whose operand spans several
  # periods (affine only on the loops' ranges), which analysis.py does not resolve: those fall back with that reason
  assume(not (dilation == 1 and k < stride))
  out = (size + 2 * padding - eff) // stride + 1
  n = cin // groups * k ** dims
  assume(n > 1)  # a sum of one product is no REDUCE: an elementwise kernel, not a convolution
  # an output whose window lies wholly in the padding makes tinygrad hoist the padding predicate out of the reduction
  # (or store a constant): a form analysis.py does not read, so the kernel falls back with that reason
  assume(all(any(0 <= o * stride + j * dilation - padding < size for j in range(k)) for o in range(out)))
  rng = np.random.default_rng(seed)
  x = rng.uniform(-4, 4, (batch, cin) + (size,) * dims).astype(dtype)
  w = rng.uniform(-4, 4, (cout, cin // groups) + (k,) * dims).astype(dtype)
  fn = conv_fn(stride, dilation, padding, groups, relu)
  report.reset()
  with env(ROCKET_FALLBACK="0"):
    try: r, c = rocket_and_cpu(fn, x, w)
    except FallbackError as e:
      # tinygrad wrote this kernel in a form analysis.py does not read (so no rule saw it): outside the rule's input
      if "conv:" not in str(e): reject()
      raise
  ran = [(rec.engine, rec.reason) for rec in report.records()]
  # without overlapping windows a conv1d of one image is a plain matmul: the contraction rule's (rules/conv.py)
  x_loops = sum(s > 1 for s in (batch, *(out,) * dims))
  if x_loops >= 2 or _reuses(out, k, stride, dilation): assert ran and all(e == "npu" and s.startswith("conv ") for e, s in ran), ran
  else: assert ran and all(e == "npu" for e, _ in ran), ran
  S = fn(Tensor(np.abs(x).astype(np.float64), device="CPU"), Tensor(np.abs(w).astype(np.float64), device="CPU")).numpy()
  amax = float(np.abs(x).max()) + float(np.abs(w).max())
  bound = nm.bound_dot(nm.rocket(dtype), S, n, amax) + nm.bound_dot(nm.cpu(dtype), S, n, amax)
  nm.assert_within(r, c, bound, f"conv{dims}d {x.shape} * {w.shape} s{stride} d{dilation} p{padding} g{groups} relu={relu} {dtype}")

def _mac_ratio(x_shape, w_shape, groups) -> tuple[float, str]:
  """useful / issued MACs of one conv (padding 1) from the emulator's counters, and the summary of what ran."""
  stats = Device["ROCKET"].driver.file.stats
  rng = np.random.default_rng(0)
  x, w = (Tensor(rng.uniform(-1, 1, s).astype(np.float32), device="ROCKET").realize() for s in (x_shape, w_shape))
  report.reset()
  n0 = len(stats.tasks)
  with env(ROCKET_FALLBACK="0"):
    x.conv2d(w, groups=groups, padding=1).realize()
  Device["ROCKET"].synchronize()   # the job's counters are complete once it is
  tasks = stats.tasks[n0:]
  (rec,) = report.records()
  issued = sum(t.macs_issued for t in tasks)
  out = x_shape[2] * x_shape[3]
  useful = out * w_shape[0] * w_shape[1] * w_shape[2] * w_shape[3]   # the convolution's own MACs
  assert sum(t.macs_useful for t in tasks) == useful
  return useful / issued, rec.reason

@pytest.mark.skipif(not hasattr(getattr(Device["ROCKET"].driver, "file", None), "stats"), reason="needs the emulator's counters")
def test_mac_efficiency():
  """A 3x3 64->64 conv at 56x56 fills the MAC array (>= 0.85 useful); a depthwise 3x3 32-channel conv at 112x112
  uses one 32-channel group per tap and cycle of a 512-MAC array: 32/512 (reported in docs/benchmarks.md)."""
  ratio, summary = _mac_ratio((1, 64, 56, 56), (64, 64, 3, 3), 1)
  assert summary.startswith("conv (direct)") and ratio >= 0.85, (ratio, summary)
  ratio, summary = _mac_ratio((1, 32, 112, 112), (32, 1, 3, 3), 32)
  assert summary.startswith("conv (depthwise)") and ratio == pytest.approx(32 / 512), (ratio, summary)
