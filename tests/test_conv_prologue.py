"""A computed conv input (a prologue tinygrad fused into the input: the stem's input normalization (x - mean)/std, an
affine x*a + b, ReLU, clip, leaky ReLU) on the conv datapath (rules/conv.py, Prologue): the CPU evaluates it while
packing the input cube, the padding holding the computed value's own padding. Strict mode (ROCKET_FALLBACK=0) proves
the NPU ran the kernel; the summary's "+computed input" that the conv rule took it with its prologue.

Bounds (numerics.py model), per input element p (the prologue's value with real arithmetic, the constants as tinygrad
holds them):
  ROCKET: p is evaluated in float64 and rounded to fp16 once: |a - p| <= u16 (|p~| + e64) + eta16 + e64, e64 the
    running error bound (Higham §3.3) of the float64 evaluation; the weights rounded to fp16 (u16, eta16); products
    exact in fp32, an n-term fp32 sum (gamma(n-1)) and one output rounding (2^-24).
  CPU: tinygrad's C code evaluates p in float32 (running error bound e32: each op rounded, constants rounded to fp32),
    then the fp32 conv of exact weights (gamma(n-1)) and no other rounding.
  The reference values p~ are this test's float64 evaluation of the same expression: every running bound uses the
  format's unit plus 2^-53 per op, which covers p~'s own distance from p. At the padding both sides read the padding
  value exactly (0, or 1 for x.pad(..) + 1: representable in fp16).
|rocket - cpu| <= ROCKET's bound + the CPU's (numerics.assert_within)."""
from __future__ import annotations
from dataclasses import dataclass
import numpy as np
import pytest
from hypothesis import given, assume, example, strategies as st
from tinygrad import Tensor
from tinygrad_rocket import report
from tinygrad_rocket.config import FallbackError
import numerics as nm
from helpers import conv_case, env

U64 = 2.0 ** -53

@dataclass
class R:
  """A value with a running error bound: |computed - exact| <= e, each op rounded with unit u (Higham §3.3)."""
  v: np.ndarray
  e: np.ndarray
  u: float
  def _r(self, v, e): return R(v, e + self.u * (np.abs(v) + e), self.u)   # the op's own rounding of a value within e
  def __add__(self, o:R) -> R: return self._r(self.v + o.v, self.e + o.e)
  def __mul__(self, o:R) -> R: return self._r(self.v * o.v, np.abs(self.v) * o.e + np.abs(o.v) * self.e + self.e * o.e)
  def recip(self) -> R:
    m = np.abs(self.v) - self.e
    assert (m > 0).all(), "a reciprocal whose operand's bound reaches 0"
    return self._r(1 / self.v, self.e / (np.abs(self.v) * m))
  def max(self, o:R) -> R: return R(np.maximum(self.v, o.v), np.maximum(self.e, o.e), self.u)   # selects: 1-Lipschitz
  def min(self, o:R) -> R: return R(np.minimum(self.v, o.v), np.maximum(self.e, o.e), self.u)

def const(c:float, u:float) -> R: return R(np.float64(c), np.float64(u * abs(c)), u)   # rounded to the format once
def exact(a, u:float) -> R: return R(np.asarray(a, np.float64), np.zeros(np.shape(a)), u)

def relu6(y:R, u:float) -> R:
  """tinygrad's relu6: relu(y) - relu(y - 6), written ADD(MAX(0, y), MUL(MAX(0, y + -6), -1))."""
  return y.max(const(0.0, u)) + (y + const(-6.0, u)).max(const(0.0, u)) * const(-1.0, u)

# family -> (the tinygrad prologue (x, a, b), its running-error mirror over R, in the op order tinygrad's kernel uses:
# (x - m)/s is ADD(x, MUL(m, -1)) * RECIPROCAL(s), (x - 0.5)/0.25 folds to (x + -0.5) * 4, clip is max then min)
FAMILIES = {
  "normalize": (lambda x, a, b: (x - a) / b, lambda x, a, b, u: (x + a * const(-1.0, u)) * b.recip()),
  "const_affine": (lambda x, a, b: (x - 0.5) / 0.25, lambda x, a, b, u: (x + const(-0.5, u)) * const(4.0, u)),
  "affine": (lambda x, a, b: x * a + b, lambda x, a, b, u: x * a + b),
  "x2p1": (lambda x, a, b: x * 2 + 1, lambda x, a, b, u: x * const(2.0, u) + const(1.0, u)),
  "relu": (lambda x, a, b: x.relu(), lambda x, a, b, u: x.max(const(0.0, u))),
  "clip": (lambda x, a, b: x.clip(-0.5, 0.75), lambda x, a, b, u: x.max(const(-0.5, u)).min(const(0.75, u))),
  "norm_relu6": (lambda x, a, b: ((x - a) / b).relu6(), lambda x, a, b, u: relu6((x + a * const(-1.0, u)) * b.recip(), u)),
  "leaky": (lambda x, a, b: x.leaky_relu(0.1), lambda x, a, b, u: x.max(x * const(0.1, u))),
}

def run(fn, arrays, device):
  ts = [Tensor(a, device=device).realize() for a in arrays]   # realized first: only the prologue fuses into the kernel
  return fn(*ts).numpy()

def npu_reasons() -> list[str]:
  recs = report.records()
  assert recs and all(r.engine == "npu" for r in recs), [(r.engine, r.reason) for r in recs]
  return [r.reason for r in recs]

def conv_bound(p:R, p32:R, w, stride:int, dilation:int, fill:float=0.0, pad:int=0) -> np.ndarray:
  """ROCKET's + the CPU's bound (module docstring) of conv(p, w) for the float64 prologue p (unit 2u64) and the
  float32 one p32 (unit u32 + u64), both over the unpadded input; the padding (`pad` each side) holds `fill`."""
  padded = lambda z, v: np.pad(np.broadcast_to(z, p.v.shape), ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=v)
  mag = padded(np.abs(p.v) + p.e, abs(fill))                                  # >= |p|
  e_a = padded(nm.U16 * (np.abs(p.v) + 2 * p.e) + nm.ETA16 + p.e, nm.U16 * abs(fill))   # fp16(p64): |p64| <= |p~| + 2 e64
  aw = np.abs(w.astype(np.float64))
  e_w = nm.U16 * aw + nm.ETA16
  kw = dict(stride=stride, dilation=dilation)
  n = w.shape[1] * w.shape[2] * w.shape[3]
  S = nm.conv64(mag + e_a, aw + e_w, **kw)
  rocket = nm.conv64(e_a, aw, **kw) + nm.conv64(mag, e_w, **kw) + nm.conv64(e_a, e_w, **kw) + nm.gamma(max(n - 1, 1), nm.U32) * S + nm.U32 * S
  e32 = padded(p32.e, 0.0)
  cpu = nm.conv64(e32, aw, **kw) + nm.gamma(max(n - 1, 1), nm.U32) * nm.conv64(mag + e32, aw, **kw)
  return rocket + cpu

def check(family:str, x, w, a, b, stride:int, padding:int, dilation:int=1, what:str=""):
  f, mirror = FAMILIES[family]
  fn = lambda X, W, A, B: f(X, A, B).conv2d(W, stride=stride, padding=padding, dilation=dilation)
  report.reset()
  with env(ROCKET_FALLBACK="0"): got = run(fn, (x, w, a, b), "ROCKET")
  (reason,) = npu_reasons()
  assert reason.startswith("conv (") and "+computed input" in reason, reason
  ref = run(fn, (x, w, a, b), "CPU")
  p = mirror(*(exact(v, 2 * U64) for v in (x, a, b)), 2 * U64)
  p32 = mirror(*(exact(v, nm.U32 + U64) for v in (x, a, b)), nm.U32 + U64)
  nm.assert_within(got, ref, conv_bound(p, p32, w, stride, dilation, pad=padding), what or f"{family} s{stride} p{padding}")

# ***** the stem *****

@pytest.mark.parametrize("family", ["normalize", "const_affine", "x2p1"])
def test_stem(family):
  """The issue's kernels: torchvision's input normalization (per-channel mean/std tensors) and a constant one fused into
  a ResNet stem (7x7, stride 2, padding 3: the padding is 0 after the prologue), and 2x + 1 into a padded 3x3."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
  w = rng.standard_normal((16, 3, 7, 7)).astype(np.float32)
  mean, std = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1), np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
  if family == "x2p1": check(family, x, w[:, :, :3, :3], mean, std, 1, 1)
  else: check(family, x, w, mean, std, 2, 3)

def test_stem_224():
  """The normalized stem at ImageNet's 224x224 (7x7, stride 2, padding 3: 112x112 outputs). tinygrad writes its padded
  input and the mean/std indices through nested // and % over all five loops (1.8M points together); analysis.fit_affine
  checks each // and % on the loops it reads (7 x 112 points), so the kernel runs on the NPU. Few kernels: the emulator
  runs the conv."""
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)
  w = rng.standard_normal((8, 3, 7, 7)).astype(np.float32)
  mean, std = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1), np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
  check("normalize", x, w, mean, std, 2, 3, what="normalized 224x224 stem")

# ***** shapes, strides, padding and prologue families *****

@given(batch=st.integers(1, 2), cin=st.integers(1, 5), cout=st.integers(1, 18), k=st.integers(1, 3), stride=st.integers(1, 2),
       dilation=st.integers(1, 2), padding=st.integers(0, 3), extra=st.integers(0, 5), family=st.sampled_from(sorted(FAMILIES)),
       seed=st.integers(0, 2**16))
@example(batch=1, cin=1, cout=1, k=3, stride=2, dilation=2, padding=1, extra=0, family="affine", seed=0)   # one output position, padded
def test_prologue_on_npu(batch, cin, cout, k, stride, dilation, padding, extra, family, seed):
  size, out = conv_case(k, stride, dilation, padding, extra, min_size=4)
  assume(cin * k * k > 1)
  assume(not (family == "normalize" and padding == 0))   # a flat 3-factor product: test_unpadded_normalize_is_a_flat_product
  assume(not (out == 1 and padding == 0))   # one output position, no padding: a matmul (test_single_unpadded_position_is_a_matmul)
  rng = np.random.default_rng(seed)
  x = rng.uniform(-4, 4, (batch, cin, size, size)).astype(np.float32)
  w = rng.uniform(-2, 2, (cout, cin, k, k)).astype(np.float32)
  a = rng.uniform(-1, 1, (1, cin, 1, 1)).astype(np.float32)
  b = (rng.uniform(0.25, 2, (1, cin, 1, 1)) * rng.choice([-1, 1], (1, cin, 1, 1))).astype(np.float32)   # |std| >= 0.25
  try: check(family, x, w, a, b, stride, padding, dilation, f"{family} {x.shape} * {w.shape} s{stride} d{dilation} p{padding}")
  except FallbackError as e:   # a kernel form analysis.py does not read is outside the rule's input; the rule's own no is a failure
    if "conv:" in str(e): raise
    assume(False)

def test_unpadded_normalize_is_a_flat_product():
  """Without padding tinygrad writes ((x - a) / b).conv2d(w) as the flat product (x - a) * (1/b) * w: the conv rule does
  not tell which factor is the weights and refuses with that reason, and the contraction rule runs it on the NPU with
  the prologue computed in DPU stages (strict mode: no fallback)."""
  from tinygrad_rocket.analysis import analyze
  from tinygrad_rocket.rules.conv import lower_conv
  from tinygrad_rocket._tg import Ops
  E = Tensor.empty
  lin, _ = ((E(1, 2, 7, 7) - E(1, 2, 1, 1)) / E(1, 2, 1, 1)).conv2d(E(2, 2, 3, 3), stride=2).linear_with_vars()
  (k,) = [c.src[0] for c in lin.src if c.src[0].op is Ops.SINK]
  assert "a product of more than two operands" in lower_conv(analyze(k)).reason
  rng = np.random.default_rng(3)
  x, w = rng.uniform(-4, 4, (1, 2, 7, 7)).astype(np.float32), rng.uniform(-2, 2, (2, 2, 3, 3)).astype(np.float32)
  a, b = rng.uniform(-1, 1, (1, 2, 1, 1)).astype(np.float32), rng.uniform(0.25, 2, (1, 2, 1, 1)).astype(np.float32)
  report.reset()
  with env(ROCKET_FALLBACK="0"): run(lambda X, W, A, B: ((X - A) / B).conv2d(W, stride=2), (x, w, a, b), "ROCKET")
  (reason,) = npu_reasons()
  assert reason.startswith("contraction ") and "+computed A" in reason, reason

def test_single_unpadded_position_is_a_matmul():
  """A conv with one output position and no padding has no windows to slide: the conv rule leaves it to the contraction
  rule, which runs it on the NPU with the prologue in DPU stages (hypothesis found the shape: 4x4 input, k2 d2 s2)."""
  rng = np.random.default_rng(0)
  x, w = rng.uniform(-4, 4, (1, 1, 4, 4)).astype(np.float32), rng.uniform(-2, 2, (1, 1, 2, 2)).astype(np.float32)
  a, b = rng.uniform(-1, 1, (1, 1, 1, 1)).astype(np.float32), rng.uniform(0.25, 2, (1, 1, 1, 1)).astype(np.float32)
  report.reset()
  with env(ROCKET_FALLBACK="0"): run(lambda X, W, A, B: (X * A + B).conv2d(W, stride=2, dilation=2), (x, w, a, b), "ROCKET")
  (reason,) = npu_reasons()
  assert reason.startswith("contraction ") and "+computed A" in reason, reason

# ***** padding after the prologue *****

def test_padding_holds_the_computed_value():
  """x.pad(..) + 1 pads with 1 (the computed value's padding, not 0): with small integers every step is exact (fp16
  operands, fp32 sums), so the result must equal numpy's. tinygrad merges the pad into the kernel as a padded load
  plus 1: the conv rule fills the cube's padding with 1."""
  rng = np.random.default_rng(1)
  x = rng.integers(-3, 4, (1, 2, 6, 7)).astype(np.float32)
  w = rng.integers(-2, 3, (5, 2, 3, 3)).astype(np.float32)
  report.reset()
  with env(ROCKET_FALLBACK="0"): got = run(lambda X, W: (X.pad((1, 2, 2, 1)) + 1).conv2d(W), (x, w), "ROCKET")
  (reason,) = npu_reasons()
  assert "+computed input" in reason and "padding 1" in reason, reason
  want = nm.conv64(np.pad(x, ((0, 0), (0, 0), (2, 1), (1, 2))) + 1, w)
  np.testing.assert_array_equal(got, want)

def test_padding_of_padded_computed_value_is_not_mixed():
  """(x.pad(..) + 1).conv2d(w, padding=1): two paddings (1 inside, 0 outside) in one kernel; the cube has one padding
  value, so the kernel falls back saying so, and the C code's answer is right."""
  rng = np.random.default_rng(2)
  x, w = rng.standard_normal((1, 2, 6, 6)).astype(np.float32), rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
  fn = lambda X, W: (X.pad((1, 1, 1, 1)) + 1).conv2d(W, padding=1)
  report.reset()
  got = run(fn, (x, w), "ROCKET")
  (rec,) = report.records()
  assert rec.engine == "fallback" and "conv: an operand of the computed input is padded differently from the input" in rec.reason, rec
  np.testing.assert_allclose(got, run(fn, (x, w), "CPU"), rtol=0, atol=0)

def test_unsupported_prologue_says_what():
  """A prologue the packing cannot evaluate (sin) falls back naming the op, not the analysis's internals."""
  x, w = np.ones((1, 2, 6, 6), np.float32), np.ones((4, 2, 3, 3), np.float32)
  report.reset()
  run(lambda X, W: X.sin().conv2d(W, padding=1), (x, w), "ROCKET")
  (rec,) = report.records()
  assert rec.engine == "fallback" and "the computed input uses SIN" in rec.reason and "RANGE" not in rec.reason, rec

# ***** the packed cube follows its operands *****

def test_changed_mean_std_repack():
  """The packed input cube stays resident per version of every buffer the prologue reads: the same kernel run again with
  mean and std changed in place must use the new values (a stale cube would give the old result), and run again
  unchanged it skips the packing."""
  from tinygrad import Device
  rng = np.random.default_rng(4)
  x = rng.uniform(0, 1, (1, 3, 12, 12)).astype(np.float32)
  w = rng.standard_normal((8, 3, 7, 7)).astype(np.float32)
  X, W = Tensor(x, device="ROCKET").realize(), Tensor(w, device="ROCKET").realize()
  M = Tensor(np.full((1, 3, 1, 1), 0.5, np.float32), device="ROCKET").realize()
  S = Tensor(np.full((1, 3, 1, 1), 0.25, np.float32), device="ROCKET").realize()
  fn = lambda: ((X - M) / S).conv2d(W, stride=2, padding=3).numpy()
  stats = Device["ROCKET"].layout_stats
  with env(ROCKET_FALLBACK="0"):
    first = fn()
    skipped = stats.pack_skipped
    assert np.array_equal(fn(), first) and stats.pack_skipped > skipped   # unchanged: resident
  m2, s2 = np.array([0.1, 0.9, -0.3], np.float32).reshape(1, 3, 1, 1), np.array([2.0, -0.5, 1.5], np.float32).reshape(1, 3, 1, 1)
  bufs = M.uop.buffer, S.uop.buffer
  M.assign(Tensor(m2, device="ROCKET")).realize()
  S.assign(Tensor(s2, device="ROCKET")).realize()
  assert (M.uop.buffer, S.uop.buffer) == bufs   # written in place: the same buffers, new contents
  report.reset()
  with env(ROCKET_FALLBACK="0"): got = fn()
  (reason,) = npu_reasons()
  assert "+computed input" in reason, reason
  p = FAMILIES["normalize"][1](*(exact(v, 2 * U64) for v in (x, m2, s2)), 2 * U64)
  p32 = FAMILIES["normalize"][1](*(exact(v, nm.U32 + U64) for v in (x, m2, s2)), nm.U32 + U64)
  ref = run(lambda X, W, A, B: ((X - A) / B).conv2d(W, stride=2, padding=3), (x, w, m2, s2), "CPU")
  nm.assert_within(got, ref, conv_bound(p, p32, w, 2, 1, pad=3), "after mean/std changed in place")
  assert not np.allclose(got, first)   # the change shows (the test could not pass with the stale cube)
