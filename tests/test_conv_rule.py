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
from helpers import conv_case, env, rocket_and_cpu

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
  # inputs of one element or not larger than their padding: tinygrad writes index forms analysis.py does not read (a
  # constant folded into the predicate), so those kernels fall back with that reason
  size, out = conv_case(k, stride, dilation, padding, extra, min_size=2)
  n = cin // groups * k ** dims
  assume(n > 1)  # a sum of one product is no REDUCE: an elementwise kernel, not a convolution
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

def _mac_ratio(x_shape, w_shape, groups, stride=1, padding=1) -> tuple[float, str]:
  """useful / issued MACs of one conv from the emulator's counters, and the summary of what ran."""
  stats = Device["ROCKET"].driver.file.stats
  rng = np.random.default_rng(0)
  x, w = (Tensor(rng.uniform(-1, 1, s).astype(np.float32), device="ROCKET").realize() for s in (x_shape, w_shape))
  report.reset()
  n0 = len(stats.tasks)
  with env(ROCKET_FALLBACK="0"):
    x.conv2d(w, groups=groups, stride=stride, padding=padding).realize()
  Device["ROCKET"].synchronize()   # the job's counters are complete once it is
  tasks = stats.tasks[n0:]
  (rec,) = report.records()
  issued = sum(t.macs_issued for t in tasks)
  out = math.prod((n + 2 * padding - k) // stride + 1 for n, k in zip(x_shape[2:], w_shape[2:]))
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

# ***** layout choice: the modeled NPU time, and the 3-channel stems *****

from tinygrad_rocket.analysis import analyze
from tinygrad_rocket._tg import Ops
from tinygrad_rocket.rules import conv as conv_rule
from tinygrad_rocket.emu import cost

HAS_COUNTERS = hasattr(getattr(Device["ROCKET"].driver, "file", None), "stats")
needs_counters = pytest.mark.skipif(not HAS_COUNTERS, reason="needs the emulator's counters")

def _nest(x_shape, w_shape, stride, padding, groups=1):
  """The loop nest of x.conv2d(w) as the rules see it."""
  t = Tensor.empty(*x_shape, device="ROCKET").conv2d(Tensor.empty(*w_shape, device="ROCKET"), stride=stride, padding=padding, groups=groups)
  lin, _ = t.linear_with_vars()
  (k,) = [c.src[0] for c in lin.src if c.src[0].op is Ops.SINK]
  nest = analyze(k)
  nest.precision = "default"
  return nest

def test_layout_model_is_the_emulators():
  """The rule times layouts with the emulator's cost model numbers (emu/cost.py), at the mainline clock."""
  assert conv_rule.LAYOUT_CLOCK_HZ == cost.MAINLINE_CLOCK_HZ
  assert conv_rule.DMA_BYTES_PER_S == cost.DMA_BYTES_PER_S and conv_rule.PER_TASK_OVERHEAD_S == cost.PER_TASK_OVERHEAD_S

@needs_counters
@pytest.mark.parametrize("x_shape,w_shape,stride,padding,groups", [
  ((1, 3, 112, 112), (64, 3, 7, 7), 2, 3, 1),     # ResNet-18's stem at half size: all taps folded, 3 row bands
  ((2, 3, 40, 40), (32, 3, 3, 3), 2, 1, 1),       # MobileNetV2 stem, batch 2
  ((1, 64, 30, 30), (64, 64, 3, 3), 1, 1, 1),
  ((1, 40, 33, 33), (40, 1, 3, 3), 2, 1, 40),     # depthwise
  ((1, 16, 40, 40), (600, 16, 3, 3), 1, 1, 1),    # kernel chunks
])
def test_npu_seconds_is_the_emulated_time(x_shape, w_shape, stride, padding, groups):
  """npu_seconds of the chosen layout equals the emulator's modeled time of the tasks that run (busy time at the
  layout clock plus the per-task overhead), but for the regcmd fetch it leaves out (DMA bytes, so at most their
  transfer time)."""
  c, lay = conv_rule.match(_nest(x_shape, w_shape, stride, padding, groups))
  stats = Device["ROCKET"].driver.file.stats
  rng = np.random.default_rng(1)
  x, w = (Tensor(rng.uniform(-1, 1, s).astype(np.float32), device="ROCKET").realize() for s in (x_shape, w_shape))
  n0 = len(stats.tasks)
  with env(ROCKET_FALLBACK="0"): x.conv2d(w, stride=stride, padding=padding, groups=groups).realize()
  tasks = stats.tasks[n0:]
  emulated = sum(t.busy_seconds(cost.MAINLINE_CLOCK_HZ) for t in tasks) + (len(tasks) - 1) * cost.PER_TASK_OVERHEAD_S
  fetch = sum(t.dma_read["PC"] for t in tasks) / cost.DMA_BYTES_PER_S
  assert emulated - fetch <= conv_rule.npu_seconds(lay) <= emulated, (conv_rule.npu_seconds(lay), emulated, fetch)

@needs_counters
def test_resnet_stem_fills_the_mac_array():
  """ResNet-18's 7x7/2 3->64 stem folds all 49 taps into the channels (147 of 160 lanes: 0.92 useful/issued, issue
  target 0.85), and that is the fastest layout at the mainline clock: faster than folding only the kernel columns
  (21 of 32 lanes, 0.66), the fastest at 1 GHz where reading the 2.4x larger cube dominates (docs/benchmarks.md)."""
  ratio, summary = _mac_ratio((1, 3, 224, 224), (64, 3, 7, 7), 1, stride=2, padding=3)
  assert summary.startswith("conv (direct) 147->64 1x1") and ratio == pytest.approx(147 / 160), (ratio, summary)
  nest = _nest((1, 3, 224, 224), (64, 3, 7, 7), 2, 3)
  _, chosen = conv_rule.match(nest)
  loads = {ld.slot: ld for ld in nest.loads}
  cands, _ = conv_rule._candidates(nest, loads[1], loads[2], False)   # slot 1: the input, 2: the weights
  sz = nest.ranges
  column_fold = [l for _, _, c in cands if c.ay.n_tap(sz) * c.ax.n_tap(sz) == 7 and len(c.channels) == 2
                 and not isinstance(l := conv_rule.layout(c, sz), str)]
  assert column_fold and conv_rule.npu_seconds(chosen) < min(conv_rule.npu_seconds(l) for l in column_fold)

@pytest.mark.parametrize("x_shape,w_shape,stride,padding,groups", [
  ((1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1), ((4, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1), ((2, 96, 56, 56), (96, 1, 3, 3), 2, 1, 96),
  ((3, 8, 1, 300), (16, 8, 1, 5), 1, 0, 1)])
def test_candidate_bounds_are_lower_bounds(x_shape, w_shape, stride, padding, groups):
  """match() skips planning the candidates whose lower bound exceeds the best time found: sound only if every bound is
  at most that candidate's npu_seconds."""
  nest = _nest(x_shape, w_shape, stride, padding, groups)
  loads = {ld.slot: ld for ld in nest.loads}
  cands, _ = conv_rule._candidates(nest, loads[1], loads[2], False)
  timed = [(bound, conv_rule.npu_seconds(l)) for _, bound, c in cands if not isinstance(l := conv_rule.layout(c, nest.ranges), str)]
  assert timed and all(b <= t * (1 + 1e-12) for b, t in timed), [(b, t) for b, t in timed if b > t]

@needs_counters
def test_mobilenet_stem_at_the_lane_bound():
  """MobileNetV2's 3x3/2 3->32 stem folds its 27 taps x channels into one 32-channel group: 27/32 = 0.84 useful/issued,
  the most any layout of this conv can issue. Each MAC-array cycle is 16 kernels x 32 channels at one cube pixel
  (rocket_fp16_ew_ppu.md §1.3), so 32 kernels take 2 cycles per cube pixel per channel group; a cube pixel that
  carried P output pixels would need 32P kernels and the union of their patches, at least 27 channels: 2P cycles
  or more. So no layout issues fewer than 2 x 512 MAC slots per output pixel for its 27 x 32 useful MACs."""
  ratio, summary = _mac_ratio((1, 3, 224, 224), (32, 3, 3, 3), 1, stride=2, padding=1)
  assert summary.startswith("conv (direct) 27->32 1x1") and ratio == pytest.approx(27 / 32), (ratio, summary)

@pytest.mark.parametrize("w_shape,stride,padding,relu,dtype", [((64, 3, 7, 7), 2, 3, True, "float32"), ((32, 3, 3, 3), 2, 1, False, "float16")])
def test_stems_numerics(w_shape, stride, padding, relu, dtype):
  """The ImageNet stems at full size, strict mode, against the CPU device within the derived bound (n = 3*KH*KW)."""
  rng = np.random.default_rng(7)
  x = rng.uniform(-2, 2, (1, 3, 224, 224)).astype(dtype)
  w = rng.uniform(-0.5, 0.5, w_shape).astype(dtype)
  fn = conv_fn(stride, 1, padding, 1, relu)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r, c = rocket_and_cpu(fn, x, w)
  assert all(rec.engine == "npu" and rec.reason.startswith("conv (direct)") for rec in report.records())
  S = conv_fn(stride, 1, padding, 1, False)(*(Tensor(np.abs(a).astype(np.float64), device="CPU") for a in (x, w))).numpy()
  n, amax = math.prod(w_shape[1:]), float(np.abs(x).max()) + float(np.abs(w).max())
  bound = nm.bound_dot(nm.rocket(dtype), S, n, amax) + nm.bound_dot(nm.cpu(dtype), S, n, amax)
  nm.assert_within(r, c, bound, f"stem {w_shape} {dtype}")

def _conv_abs(x:np.ndarray, w:np.ndarray, stride:int) -> tuple[np.ndarray, np.ndarray]:
  """(conv(x, w), conv(|x|, |w|)) in float64, 3x3 padding 1."""
  N, C, H, W = x.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
  oh, ow = (H - 1) // stride + 1, (W - 1) // stride + 1
  cols = np.stack([xp[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] for i in range(3) for j in range(3)], axis=2)
  cols = cols.reshape(N, C * 9, oh, ow)
  wm = w.astype(np.float64).reshape(w.shape[0], -1)
  return np.einsum("ok,nkhw->nohw", wm, cols), np.einsum("ok,nkhw->nohw", np.abs(wm), np.abs(cols))

def test_strided_conv_after_a_conv_relu():
  """conv + ReLU, then a 3x3/2 conv of its 14x14 result (ResNet-18's downsample): tinygrad writes the second conv's
  padded input index through // and % spanning several periods; analysis.fit_affine recovers the affine map on the
  valid points, so both layers run on the NPU. Bound: layer 1's (ReLU is 1-Lipschitz) pushed through |w2|, plus
  layer 2's own over |h|."""
  rng = np.random.default_rng(4)
  x = rng.standard_normal((1, 16, 14, 14)).astype(np.float32)
  w1 = (rng.standard_normal((24, 16, 3, 3)) * 0.2).astype(np.float32)
  w2 = (rng.standard_normal((40, 24, 3, 3)) * 0.2).astype(np.float32)
  f = lambda x, w1, w2: x.conv2d(w1, padding=1).relu().conv2d(w2, stride=2, padding=1)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = f(*(Tensor(v, device="ROCKET") for v in (x, w1, w2))).numpy().astype(np.float64)
  assert len(report.records()) == 2 and all(rec.engine == "npu" and "conv" in rec.reason for rec in report.records())
  c = f(*(Tensor(v, device="CPU") for v in (x, w1, w2))).numpy().astype(np.float64)
  u1, S1 = _conv_abs(x, w1, 1)
  h = np.maximum(u1, 0)
  both = lambda S, n, amax: nm.bound_dot(nm.rocket("float32"), S, n, amax) + nm.bound_dot(nm.cpu("float32"), S, n, amax)
  e_h = both(S1, 16 * 9, np.abs(x).max() + np.abs(w1).max())
  prop, _ = _conv_abs(e_h, np.abs(w2), 2)
  _, S2 = _conv_abs(h, w2, 2)
  _, S2e = _conv_abs(e_h, np.abs(w2), 2)
  bound = prop + both(S2 + S2e, 24 * 9, np.abs(h).max() + e_h.max() + np.abs(w2).max())
  assert (np.abs(r - c) <= bound).all(), np.abs(r - c).max()

def test_fit_affine_rejects_what_is_not_affine():
  from tinygrad_rocket.analysis import fit_affine, NotAnalyzable
  from tinygrad_rocket._tg import UOp
  r = UOp.range(10, 0)
  assert fit_affine((r * 3 + 13) % 13 * 0 + (r // 1) * 2 + 5, {0: 10}, [], "x") .terms == ((0, 2),)
  with pytest.raises(NotAnalyzable): fit_affine((r * r), {0: 10}, [], "not affine")
