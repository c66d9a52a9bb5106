"""int8 contractions on the NPU, bit-exact against tinygrad's CPU device.

tinygrad 0.14 writes `a.int8 @ b.int8` as CAST(int8, REDUCE(ADD in int32, CAST(int32, a*b))) (the CPU's C promotes the
int8 product to int, so products are exact), int8 conv2d as the same REDUCE with an int32 result, and
`matmul(..., dtype=int32)` / quantized models' int32 accumulators without the outer cast. The conv rule runs direct
int8 convolutions as int8 conv tasks, the contraction rule everything else (matmuls, batched, grouped, depthwise) as
int8 matmul tiles; both write the int32 sums raw (ops/matmul.py INT8): exact for every input, since one task holds at
most 32768 products per sum (|sum| <= 2^29 < 2^31), and the cast to the result dtype is numpy's, which wraps like C.
Every test runs in strict mode (ROCKET_FALLBACK=0), so passing proves the NPU ran each kernel; comparisons are exact
(dtype and every value). Cases the NPU cannot do exactly must fall back with a reason, never answer wrong."""
import numpy as np
import pytest
from hypothesis import given, assume, reject, strategies as st
from tinygrad import Tensor, dtypes
from tinygrad_rocket import report
from tinygrad_rocket.config import FallbackError
from tinygrad_rocket.ops.matmul import MAX_ABS_SUM, plan_tiles
from helpers import conv_case, env, rocket_and_cpu

I8_MIN, I8_MAX = -128, 127

def exact(fn, *arrays) -> np.ndarray:
  """fn on ROCKET in strict mode and on the CPU: same dtype, same values, every kernel on the NPU."""
  report.reset()
  with env(ROCKET_FALLBACK="0"): r, c = rocket_and_cpu(fn, *arrays)
  assert r.dtype == c.dtype and r.shape == c.shape, (r.dtype, c.dtype, r.shape, c.shape)
  np.testing.assert_array_equal(r, c)
  recs = report.records()
  assert recs and all(rec.engine == "npu" for rec in recs), [(rec.engine, rec.reason) for rec in recs]
  assert any("int8 matmul" in rec.reason or "int8 conv" in rec.reason for rec in recs), [rec.reason for rec in recs]
  return r

def i8(rng, shape, extreme:str="random") -> np.ndarray:
  if extreme == "min": return np.full(shape, I8_MIN, np.int8)
  if extreme == "max": return np.full(shape, I8_MAX, np.int8)
  if extreme == "edges": return rng.choice(np.array([I8_MIN, I8_MAX, -1, 0, 1], np.int8), shape)
  return rng.integers(I8_MIN, I8_MAX + 1, shape).astype(np.int8)

def largest_k() -> int:
  """The largest K one int8 task holds (plan_tiles: one bank per kernel, 32 kernels and 4 rows next to each other)."""
  k = 32
  while not isinstance(plan_tiles(4, k + 32, 32, precision="int8"), str): k += 32
  return k

RESULTS = {"int8": lambda a, b: a @ b, "int32": lambda a, b: a.matmul(b, dtype=dtypes.int32),
           "int32_relu": lambda a, b: a.matmul(b, dtype=dtypes.int32).relu(), "int64": lambda a, b: a.matmul(b, dtype=dtypes.int64),
           "float32": lambda a, b: a.matmul(b, dtype=dtypes.int32).float()}

@given(batch=st.sampled_from([(), (2,), (2, 3)]), M=st.integers(1, 40), K=st.integers(1, 200), N=st.integers(1, 70),
       result=st.sampled_from(sorted(RESULTS)), transposed=st.booleans(),
       extreme=st.sampled_from(["random", "random", "edges", "min", "max"]), seed=st.integers(0, 2**16))
def test_int8_matmul(batch, M, K, N, result, transposed, extreme, seed):
  assume(K > 1)   # a sum of one product is no REDUCE (an elementwise kernel)
  rng = np.random.default_rng(seed)
  a, b = i8(rng, (*batch, M, K), extreme), i8(rng, (*batch, N, K) if transposed else (*batch, K, N), extreme)
  fn = RESULTS[result]
  exact((lambda x, y: fn(x, y.transpose(-1, -2))) if transposed else fn, a, b)

def conv_fn(stride, dilation, padding, groups, relu, acc):
  def fn(x, w):
    y = x.conv2d(w, groups=groups, stride=stride, dilation=dilation, padding=padding, dtype=acc)
    return y.relu() if relu else y
  return fn

@given(dims=st.sampled_from([1, 2]), batch=st.integers(1, 2), cin=st.integers(1, 24), cout=st.integers(1, 24),
       k=st.integers(1, 4), stride=st.integers(1, 3), dilation=st.integers(1, 2), padding=st.integers(0, 2),
       extra=st.integers(0, 5), groups=st.sampled_from(["1", "depthwise", "2"]), relu=st.booleans(),
       acc=st.sampled_from([None, dtypes.int32]), extreme=st.sampled_from(["random", "random", "edges", "min", "max"]),
       seed=st.integers(0, 2**16))
def test_int8_conv(dims, batch, cin, cout, k, stride, dilation, padding, extra, groups, relu, acc, extreme, seed):
  g = {"1": 1, "depthwise": cin, "2": 2}[groups]
  if groups == "2": cin, cout = 2 * cin, 2 * cout
  if groups == "depthwise": cout = cin
  size, out = conv_case(k, stride, dilation, padding, extra, min_size=2)
  assume(cin // g * k ** dims > 1)
  rng = np.random.default_rng(seed)
  x = i8(rng, (batch, cin) + (size,) * dims, extreme)
  w = i8(rng, (cout, cin // g) + (k,) * dims, extreme)
  try: exact(conv_fn(stride, dilation, padding, g, relu, acc), x, w)
  except FallbackError as e:
    # tinygrad wrote a kernel in a form analysis.py does not read, so no rule saw a contraction: outside the rule's input
    if "contraction:" not in str(e): reject()
    raise

def test_int8_largest_k_extremes():
  """The largest K one task holds, every operand at an int8 extreme: the sums (up to K * 2^14) are exact in int32."""
  K = largest_k()
  assert K * 128 * 128 <= MAX_ABS_SUM < 2 ** 31
  for av, bv in ((I8_MIN, I8_MIN), (I8_MAX, I8_MIN), (I8_MAX, I8_MAX)):
    a, b = np.full((5, K), av, np.int8), np.full((K, 33), bv, np.int8)
    r = exact(lambda x, y: x.matmul(y, dtype=dtypes.int32), a, b)
    assert (r == K * av * bv).all()
    exact(lambda x, y: x @ y, a, b)   # the int8 result: the exact sum wrapped to 8 bits, as the CPU's C cast

def test_int8_conv_extremes():
  """A 3x3 conv over 64 channels (K = 576) with every input at -128 and every weight at -128 / 127."""
  for wv in (I8_MIN, I8_MAX):
    x, w = np.full((1, 64, 9, 9), I8_MIN, np.int8), np.full((32, 64, 3, 3), wv, np.int8)
    r = exact(lambda a, b: a.conv2d(b, padding=1), x, w)
    assert r[0, 0, 4, 4] == 576 * I8_MIN * wv and r[0, 0, 0, 0] == 4 * 64 * I8_MIN * wv

def test_quantized_model_style():
  """int8 activations and weights, int32 accumulation, then the cast a quantized layer applies to its accumulator."""
  rng = np.random.default_rng(7)
  x, w = i8(rng, (2, 16, 10, 10)), i8(rng, (24, 16, 3, 3))
  exact(lambda a, b: a.conv2d(b, padding=1, dtype=dtypes.int32).relu(), x, w)
  exact(lambda a, b: a.conv2d(b, stride=2, dtype=dtypes.int32).cast(dtypes.int16), x, w)
  exact(lambda a, b: a.linear(b.T, dtype=dtypes.int32), i8(rng, (8, 96)), i8(rng, (40, 96)))
  # an int8 result feeding the next contraction: read from the first job's int32 cube, wrapped to int8 like the unpack
  exact(lambda a, b, c: (a @ b) @ c, i8(rng, (12, 50)), i8(rng, (50, 20)), i8(rng, (20, 9)))
  exact(lambda a, b, c: a.conv2d(b, padding=1).cast(dtypes.int8).conv2d(c), x, w, i8(rng, (8, 24, 3, 3)))

def _falls_back(fn, arrays, why:str) -> None:
  """Strict mode refuses with `why` in the reason; the default mode runs the C code and matches the CPU exactly."""
  with env(ROCKET_FALLBACK="0"), pytest.raises(FallbackError, match=why): rocket_and_cpu(fn, *arrays)
  report.reset()
  r, c = rocket_and_cpu(fn, *arrays)
  assert r.dtype == c.dtype
  np.testing.assert_array_equal(r, c)
  assert any(rec.engine == "fallback" for rec in report.records())

def test_unsupported_int_cases_fall_back_with_the_reason():
  rng = np.random.default_rng(11)
  u8 = lambda *s: rng.integers(0, 256, s).astype(np.uint8)
  _falls_back(lambda a, b: a.matmul(b, dtype=dtypes.int32), (i8(rng, (8, 40)).astype(np.uint8) | 0x80, u8(40, 8)), "uint8")
  _falls_back(lambda a, b: a.cast(dtypes.int32) @ b.cast(dtypes.int32), (i8(rng, (8, 40)), u8(40, 8)), "uint8 operands")
  # an int32 bias add: the CPU wraps, the DPU's adder would saturate
  bias = np.full(8, 2**31 - 1, np.int32)
  _falls_back(lambda a, b, c: a.matmul(b, dtype=dtypes.int32) + c, (i8(rng, (8, 40)), i8(rng, (40, 8)), bias), "epilogue")
  # K beyond one task: no integer partial-sum add on the DPU
  K = largest_k() + 32
  _falls_back(lambda a, b: a.matmul(b, dtype=dtypes.int32), (i8(rng, (4, K)), i8(rng, (K, 32))), "split K")
  # int16 operands do not fit the int8 MAC path
  _falls_back(lambda a, b: a @ b, (rng.integers(-2**15, 2**15, (8, 40)).astype(np.int16), rng.integers(-2**15, 2**15, (40, 8)).astype(np.int16)), "int8 only")

def test_int8_depthwise_runs_as_block_diagonal_convs():
  """The DPU cannot write a depthwise group's int32 (16 atoms > SIZE_E): int8 depthwise takes the direct conv datapath,
  one task per 32-channel group (and row band) with block-diagonal weights, not one matmul tile per channel."""
  rng = np.random.default_rng(13)
  x, w = i8(rng, (1, 48, 12, 12), "edges"), i8(rng, (48, 1, 3, 3), "edges")
  exact(lambda a, b: a.conv2d(b, groups=48, padding=1), x, w)
  assert any("block-diagonal" in rec.reason and "as 2 int8 conv task" in rec.reason for rec in report.records()), \
    [rec.reason for rec in report.records()]
