"""The pool rule: tinygrad's max pooling and max reductions as fp16 PPU tasks (rules/pool.py), on the emulator.

Every case runs in strict mode (ROCKET_FALLBACK=0) and checks report.records(): the kernel ran on the NPU with the
pool rule's summary. Results are compared with tinygrad's CPU device within numerics.bound_select for both devices
(the max of fp16-rounded operands is the rounded max); -inf (a window entirely in the padding) must match exactly."""
import math
import numpy as np
import pytest
from hypothesis import given, reject, strategies as st
from hypothesis.extra.numpy import arrays
from tinygrad import Tensor, dtypes
from tinygrad_rocket import lower, report
from tinygrad_rocket.analysis import POSITION_DEPENDENT_REASON
from tinygrad_rocket.rules.pool import lower_pool, _block_passes, MAX_WINDOW, MIN_CHAINED_DIM
import numerics as nm
from helpers import env, on, rocket_and_cpu
from tinygrad_rocket.config import FallbackError

FP16_MAX = 65504.0  # largest finite fp16: operands beyond it take the C path (test_ops covers that path)

def values(dtype:str, bound:float=FP16_MAX):
  return st.floats(-bound, bound, width=16 if dtype == "float16" else 32, allow_subnormal=True)

# Kernels the pool rule rejects on purpose, or never sees: a generated example hitting one is discarded (hypothesis
# reject), never counted as a pass. analysis.py cannot read some strided pooling indices yet (a % over more than one
# period, a % inside a padding predicate); when every window lies in the padding, tinygrad's code reads no input and
# its buffer is not passed, so the rule leaves that kernel to the C code.
# kernel forms analysis.py does not read (no rule sees them): outside the rule's input. The position-dependent where()
# arises with an input one element wide whose padding tinygrad folds into the computed value's predicate (hypothesis:
# (x*0.5 + 1).max_pool2d(2, 3, padding=1) over a 15x1 map)
NOT_THE_RULES = ("index uses FLOORMOD", "every window lies in the padding", POSITION_DEPENDENT_REASON)

def run_strict(fn, x:np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
  """fn on ROCKET (strict) and on the CPU device; the ROCKET records."""
  assert ("pool", lower_pool) in lower.RULES
  report.reset()
  try:
    with env(ROCKET_FALLBACK="0"): r = on("ROCKET", fn, x)
  except FallbackError as e:
    if any(s in e.reason for s in NOT_THE_RULES): reject()
    raise
  return r, on("CPU", fn, x), report.records()

def check(fn, x:np.ndarray, what:str, cpu_extra:float=0.0) -> list:
  """cpu_extra: the CPU's error in the pooled values beyond their output rounding (a computed input's inner roundings)."""
  r, c, recs = run_strict(fn, x)
  # every kernel on the NPU, the pooling on the PPU; a window that covers only padding makes tinygrad store a constant
  # instead (an elementwise fill kernel)
  assert recs and all(rec.engine == "npu" and ("pooling" in rec.reason or "elementwise" in rec.reason) for rec in recs), \
    [(rec.engine, rec.reason) for rec in recs]
  np.testing.assert_array_equal(np.isneginf(r), np.isneginf(c), err_msg=what)
  np.testing.assert_array_equal(np.isposinf(r), np.isposinf(c), err_msg=what)
  mag = np.where(np.isinf(c), 0.0, np.abs(c.astype(np.float64)))  # infinities were compared exactly above
  nm.assert_within(r, c, nm.bound_select(nm.rocket(x.dtype.name), mag) + nm.bound_select(nm.cpu(x.dtype.name), mag) + cpu_extra, what)
  return recs

@st.composite
def pool_problems(draw):
  dtype = draw(st.sampled_from(["float32", "float16"]))
  kh = draw(st.integers(1, 5))
  kw = draw(st.integers(2 if kh == 1 else 1, 5))   # a 1x1 kernel has no reduction (a copy kernel)
  stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 2))
  H, W = (draw(st.integers(max(1, k - 2 * padding), 20)) for k in (kh, kw))
  x = draw(arrays(dtype, (draw(st.integers(1, 2)), draw(st.integers(1, 20)), H, W), elements=values(dtype)))
  return x, (kh, kw), stride, padding

@given(pool_problems())
def test_max_pool2d(problem):
  x, k, stride, padding = problem
  check(lambda t: t.max_pool2d(k, stride, padding=padding), x, f"max_pool2d k{k} s{stride} p{padding} {x.dtype} {x.shape}")

@given(st.sampled_from(["float32", "float16"]), st.integers(2, 5), st.integers(1, 3), st.integers(0, 2), st.data())
def test_max_pool1d(dtype, k, stride, padding, data):
  """tinygrad's 1-D max pooling: max_pool2d with a one-axis kernel on (N, C, L)."""
  shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 20)), data.draw(st.integers(max(1, k - 2 * padding), 40)))
  x = data.draw(arrays(dtype, shape, elements=values(dtype)))   # (kernel 1 is a copy kernel, no reduction)
  check(lambda t: t.max_pool2d((k,), stride, padding=padding), x, f"max_pool1d k{k} s{stride} p{padding} {dtype} {shape}")

@given(st.sampled_from(["float32", "float16"]), st.booleans(), st.data())
def test_global_max_and_min(dtype, minimum, data):
  """x.max(axis=(2, 3)) (and x.min, -max(-x)) on NCHW: whole-map windows, telescoped beyond 16x16 taps."""
  H = data.draw(st.integers(1, 20))
  shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 20)), H, data.draw(st.integers(2 if H == 1 else 1, 20)))  # 1x1: a copy
  x = data.draw(arrays(dtype, shape, elements=values(dtype)))
  recs = check(lambda t: t.min(axis=(2, 3)) if minimum else t.max(axis=(2, 3)), x, f"{'min' if minimum else 'max'} {dtype} {shape}")
  assert all(("min pooling" in rec.reason) == minimum for rec in recs)

@pytest.mark.parametrize("fn, shape, passes", [
  (lambda t: t.max(axis=(2, 3)), (1, 3, 20, 20), 2),              # 400 taps > 16x16: two passes
  (lambda t: t.max_pool2d(18, stride=1), (1, 2, 20, 21), 2),     # overlapping windows over 16 taps: blocks, two passes
  (lambda t: t.max(), (3, 5, 40, 41), 2),                         # 24600 taps
  (lambda t: t.max(axis=-1), (9000, 3), 1),                       # 9000 lanes: two channel chunks
  (lambda t: t.max_pool2d((3,), stride=1), (1, 20000), 1),        # 19998 outputs of one channel
])
def test_limits(fn, shape, passes):
  x = np.random.default_rng(len(shape)).uniform(-FP16_MAX, FP16_MAX, shape).astype(np.float32)
  recs = check(fn, x, f"{shape}")
  assert all(f"{passes} pass(es)" in rec.reason or passes == 1 and "pass(es)" not in rec.reason for rec in recs), recs[0].reason

def test_padding_beyond_the_kernel_gives_neg_inf():
  """padding >= kernel: a window entirely in the padding is -inf in tinygrad (its max over nothing but -inf)."""
  x = np.arange(2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6) - 90
  check(lambda t: t.max_pool2d(2, padding=2), x, "k2 p2")

def test_block_passes():
  """Any window size: the blocks hold every tap, each pass's kernel fits the 4-bit fields, and every pass after the
  first reads a cube of at least 4x4 (its input is the previous pass's output)."""
  shapes = [(None, T) for T in [*range(1, 1100), 4095, 4096, 4097, 65536, 65537, 10**6, 16**6]]
  shapes += [((h, w), h * w) for h in (1, 2, 3, 7, 17, 28, 56, 97, 112, 224) for w in (1, 5, 16, 20, 32, 300)]
  for natural, T in shapes:
    blk = _block_passes(T, natural)
    assert not isinstance(blk, str), T
    (bh, bw), passes = blk
    assert bh * bw >= T and bh == math.prod(p.kernel[0] for p in passes) and bw == math.prod(p.kernel[1] for p in passes)
    assert all(p.kernel == p.stride and max(p.kernel) <= MAX_WINDOW for p in passes)
    assert all(min(math.prod(q.kernel[0] for q in passes[i:]), math.prod(q.kernel[1] for q in passes[i:])) >= MIN_CHAINED_DIM
               for i in range(1, len(passes))), (natural, T, passes)

def _reason(fn, x:np.ndarray) -> str:
  report.reset()
  with env(ROCKET_FALLBACK="0"), pytest.raises(Exception) as e: fn(Tensor(x, device="ROCKET")).realize()
  return str(e.value)

def test_rejections_say_why():
  x = np.ones((1, 2, 6, 6), np.float32)
  assert "packing cannot compute it: the computed input uses SIN" in _reason(lambda t: t.sin().max_pool2d(2), x)

# Values tinygrad fuses into the pool kernel (rules/pool.py: the packing computes them exactly in float64, one fp16
# rounding, -inf at the padding; float16 operands): the NPU's max is fl16 of the exact max (bound_select). The CPU
# computes them in float16: ReLU, clip (max/min) and negation select one operand or constant, exactly; x/2 + 1 rounds once (its
# output rounding, which the max keeps: bound_select) after x/2, which loses a bit of a subnormal x (eta); relu6 is
# relu(x) - relu(x - 6) in tinygrad: x - 6 rounded (u (|x| + 6)), then the difference (u 6). |x/2 + 1| <= 32753: no
# fp16 overflow. name -> (the computed input, the CPU's extra error given max |x| and the input's unit roundoff, eta).
COMPUTED = {"relu": (lambda t: t.relu(), lambda M, u, eta: 0.0), "clip": (lambda t: t.clip(-1.5, 2.5), lambda M, u, eta: 0.0),
            "neg": (lambda t: -t, lambda M, u, eta: 0.0), "affine": (lambda t: t * 0.5 + 1, lambda M, u, eta: eta),
            "relu6": (lambda t: t.relu6(), lambda M, u, eta: u * (M + 6) + u * 6)}

@given(pool_problems(), st.sampled_from(sorted(COMPUTED)))
def test_max_pool2d_of_a_computed_input(problem, f):
  """float16 operands (the rule takes no float32 computed input: test_float32_computed_input_stays_with_the_c_code)."""
  x, k, stride, padding = problem
  x = x.astype(np.float16)   # (drawn within fp16's range)
  # tinygrad's C code for a float16 kernel that stores rows of -inf (windows entirely in the padding) does not compile
  # (clang: a float4 vector cast to __fp164), on the CPU device too: no reference for those
  if x.dtype == np.float16 and padding >= min(k): reject()
  g, extra = COMPUTED[f]
  u, eta = nm.U16, nm.ETA16
  recs = check(lambda t: g(t).max_pool2d(k, stride, padding=padding), x, f"{f} then max_pool2d k{k} s{stride} p{padding} {x.dtype} {x.shape}",
               extra(float(np.abs(x.astype(np.float64)).max()), u, eta))
  assert any("pooling" in rec.reason for rec in recs)

@pytest.mark.parametrize("padding", [0, 1])
def test_relu_then_max_pool_runs_on_the_ppu(padding):
  """ResNet's stem in float16: x.relu().max_pool2d(3, 2, padding=1) is one pool kernel on the PPU, bit-exact."""
  x = np.random.default_rng(padding).standard_normal((2, 8, 13, 11)).astype(np.float16)
  r, c, recs = run_strict(lambda t: t.relu().max_pool2d(3, 2, padding=padding), x)
  assert [rec.engine for rec in recs] == ["npu"] and "max pooling" in recs[0].reason
  np.testing.assert_array_equal(r, c)

def test_float32_computed_input_stays_with_the_c_code():
  """relu of float32 values: the PPU's max would be fl16 of the max, none of the window's values (tinygrad's max backward
  compares them): the rule says so and the C code runs."""
  x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)
  assert "a computed input of float32 operands" in _reason(lambda t: t.relu().max_pool2d(3, 2, padding=1), x)

def test_computed_input_nonfinite_takes_the_cpu_path():
  """relu(+inf) is +inf in a max, relu(NaN) NaN: the computed operand is not finite, the call runs the C code."""
  for bad in (np.inf, np.nan):
    x = np.arange(36, dtype=np.float16).reshape(1, 1, 6, 6) - 18
    x[0, 0, 2, 2] = bad
    report.reset()
    r, c = rocket_and_cpu(lambda t: t.relu().max_pool2d(3, 2, padding=1), x)
    np.testing.assert_array_equal(r, c)
    assert any(rec.engine == "fallback" and "not finite" in rec.reason for rec in report.records())

def test_average_pooling_runs_as_a_contraction():
  """avg_pool2d is a window sum times 1/k: the pool rule leaves it (REDUCE(ADD)), the contraction rule takes it (a sum
  with a ones operand, the 1/k folded), with the numerics of a k-term fp32 sum of fp16 operands."""
  import numerics as nm
  x = np.random.default_rng(0).uniform(-100, 100, (2, 3, 8, 8)).astype(np.float32)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r, c = rocket_and_cpu(lambda t: t.avg_pool2d(2), x)
  assert [rec.engine for rec in report.records()] == ["npu"] and "contraction" in report.records()[0].reason
  S = Tensor(np.abs(x).astype(np.float64), device="CPU").avg_pool2d(2).numpy() * 4
  nm.assert_within(r, c, nm.bound_sum(nm.rocket("float32"), S, 4, mean=True) + nm.bound_sum(nm.cpu("float32"), S, 4, mean=True), "avg_pool2d")

def test_fp32_precision_rejects_float32():
  """ROCKET_PRECISION=fp32: a float32 max rounded to fp16 is not float32-accurate; float16 stays on the PPU. (The kernel
  ASTs come from the schedule, not from a compile hook: another test may have compiled the same kernel already.)"""
  from tinygrad_rocket._tg import Ops
  def ast(dtype):
    lin, _ = Tensor.empty(1, 2, 6, 6, dtype=dtype, device="ROCKET").max_pool2d(2).linear_with_vars()
    (k,) = [c.src[0] for c in lin.src if c.src[0].op is Ops.SINK]
    return k
  f32, f16 = (lower.lower_kernel(ast(d), "fp32") for d in (dtypes.float32, dtypes.float16))
  assert isinstance(f32, lower.NotApplicable) and "ROCKET_PRECISION=fp32" in f32.reason
  assert not isinstance(f16, lower.NotApplicable) and "pooling" in f16.summary

# (value, reduction) pairs the NPU must not see: +inf/NaN in a max, -inf in a min (the negated max would see +inf),
# and a float32 value beyond fp16's range (it would round to -inf: not the operand's own -inf). -inf in a max and +inf
# in a min run on the PPU (tests/test_nonfinite_operands.py).
GUARDED = [(np.inf, "max"), (np.nan, "max"), (-np.inf, "min"), (np.nan, "min"), (-1e6, "max"), (1e6, "min")]

@pytest.mark.parametrize("bad,op", GUARDED)
def test_nonfinite_operand_takes_the_cpu_path(bad, op):
  """Such operands: that call runs the C code, so tinygrad's NaN propagation through max is kept."""
  x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
  x[0, 0, 1, 1] = bad
  fn = (lambda t: t.max_pool2d(2)) if op == "max" else (lambda t: -(-t).max_pool2d(2))
  report.reset()
  r, c = rocket_and_cpu(fn, x)
  np.testing.assert_array_equal(r, c)
  assert any(rec.engine == "fallback" and "not finite" in rec.reason for rec in report.records())

# ***** training: the max backward needs an exact max *****

@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_max_pool_backward_while_training(dtype):
  """tinygrad's max backward finds the max by equality with the forward's value: a float32 max rounded to fp16 equals
  none of its inputs (0/0 gradients). While TRAINING the float32 max pool runs the C code (reported, exact) and the
  gradient equals the CPU device's; float16 maxima are exact on the PPU and stay there. Outside training the float32
  pool runs on the NPU (strict mode)."""
  from tinygrad.helpers import Context
  from tinygrad_rocket.rules.pool import ROUNDED_MAX_REASON
  x0 = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(dtype)
  def grad(device:str) -> np.ndarray:
    with Context(TRAINING=1):
      x = Tensor(x0, device=device).realize()
      x.requires_grad = True
      x.max_pool2d(2).sum().backward()
      return x.grad.numpy()
  report.reset()
  g = grad("ROCKET")
  pool = report.records()[0]   # the forward's max pool runs first
  np.testing.assert_array_equal(g, grad("CPU"))
  if dtype == "float32": assert pool.engine == "fallback" and pool.reason == ROUNDED_MAX_REASON, pool
  else: assert pool.engine == "npu" and "pooling" in pool.reason, pool
  report.reset()
  with env(ROCKET_FALLBACK="0"): on("ROCKET", lambda t: t.max_pool2d(2), x0)
  assert report.records()[0].engine == "npu"
