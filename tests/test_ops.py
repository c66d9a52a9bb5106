"""ROCKET against tinygrad's CPU device over random shapes and values, within the bounds derived in numerics.py.

These kernels run through the CPU fallback until the NPU lowering rules take them; the bounds are those of the NPU's
numerics (DESIGN.md), so the tests keep holding as kernels move to the NPU. Movement ops must be exact."""
import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays, array_shapes
from tinygrad import Tensor, dtypes
import numerics as nm
from helpers import rocket_and_cpu

DTYPES = st.sampled_from(["float32", "float16"])
# fp16's finite range is +-65504; values beyond it take another path (issue: overflow handling), tested separately
def values(dtype:str, bound:float=1e3):
  return st.floats(-bound, bound, width=16 if dtype == "float16" else 32, allow_subnormal=True)
def tensors(dtype:str, shape, bound:float=1e3): return arrays(dtype, shape, elements=values(dtype, bound))

@st.composite
def pair_broadcast(draw, dtype):
  """Two arrays whose shapes broadcast together (each dim of b is the dim of a or 1, possibly fewer dims)."""
  sa = draw(array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7))
  sb = tuple(d if draw(st.booleans()) else 1 for d in sa)[draw(st.integers(0, len(sa)-1)):]
  return draw(tensors(dtype, sa)), draw(tensors(dtype, sb))

BINARY = {"add": (lambda a, b: a + b, nm.bound_add), "sub": (lambda a, b: a - b, nm.bound_add),
          "mul": (lambda a, b: a * b, nm.bound_mul), "maximum": (lambda a, b: a.maximum(b), nm.bound_max),
          "minimum": (lambda a, b: a.minimum(b), nm.bound_max)}

@given(st.sampled_from(sorted(BINARY)), DTYPES, st.data())
def test_binary_elementwise(op, dtype, data):
  a, b = data.draw(pair_broadcast(dtype))
  fn, bound = BINARY[op]
  r, c = rocket_and_cpu(fn, a, b)
  a64, b64 = np.broadcast_arrays(a.astype(np.float64), b.astype(np.float64))
  nm.assert_within(r, c, bound(nm.rocket(dtype), a64, b64) + bound(nm.cpu(dtype), a64, b64), f"{op} {dtype}")

@given(DTYPES, st.data())
def test_constant_and_unary_chain(dtype, data):
  """relu(a*b + 2.5) and -a: a fused chain with a constant."""
  shape = data.draw(array_shapes(min_dims=1, max_dims=3, max_side=9))
  a, b = data.draw(tensors(dtype, shape)), data.draw(tensors(dtype, shape))
  r, c = rocket_and_cpu(lambda x, y: (x*y + 2.5).relu(), a, b)
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  bound = lambda p: nm.bound_mul(p, a64, b64) + nm.bound_add(p, a64*b64, np.full_like(a64, 2.5))  # relu only selects
  nm.assert_within(r, c, bound(nm.rocket(dtype)) + bound(nm.cpu(dtype)), f"relu(a*b+2.5) {dtype}")
  r, c = rocket_and_cpu(lambda x: -x, a)   # on the NPU: the operand rounded to fp16, negated exactly
  ones = -np.ones_like(a64)
  nm.assert_within(r, c, nm.bound_mul(nm.rocket(dtype), a64, ones) + nm.bound_mul(nm.cpu(dtype), a64, ones), f"-a {dtype}")

@given(DTYPES, st.sampled_from(["sum", "mean", "max"]), st.data())
def test_reduce_axis(dtype, op, data):
  x = data.draw(tensors(dtype, data.draw(array_shapes(min_dims=1, max_dims=3, max_side=12))))
  axis = data.draw(st.integers(0, x.ndim-1))
  r, c = rocket_and_cpu(lambda t: getattr(t, op)(axis=axis), x)
  if op == "max": bound = lambda p: nm.bound_select(p, np.abs(x.astype(np.float64)).max(axis=axis))
  else: bound = lambda p: nm.bound_sum_axis(p, x, axis, mean=op == "mean")
  nm.assert_within(r, c, bound(nm.rocket(dtype)) + bound(nm.cpu(dtype)), f"{op}(axis={axis}) {dtype} {x.shape}")

@given(DTYPES, st.integers(1, 3), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.booleans(), st.data())
def test_matmul(dtype, batch, m, k, n, transpose_b, data):
  A = data.draw(tensors(dtype, (batch, m, k), 100))
  B = data.draw(tensors(dtype, (batch, n, k) if transpose_b else (batch, k, n), 100))
  r, c = rocket_and_cpu(lambda a, b: a @ (b.transpose(-1, -2) if transpose_b else b), A, B)
  Bm = np.swapaxes(B, -1, -2) if transpose_b else B
  bound = lambda p: nm.bound_matmul(p, A, Bm)
  nm.assert_within(r, c, bound(nm.rocket(dtype)) + bound(nm.cpu(dtype)), f"matmul {dtype} b{batch} {m}x{k}x{n}")

@st.composite
def conv_problems(draw):
  groups = draw(st.sampled_from([1, 1, 2, "dw"]))
  cin_per_group = 1 if groups == "dw" else draw(st.integers(1, 4))
  g = draw(st.integers(2, 4)) if groups == "dw" else groups
  cin = cin_per_group * g
  cout = g * draw(st.integers(1, 3))
  k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
  stride, dilation, padding = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(0, 2))
  hw = tuple(draw(st.integers((kk-1)*dilation + 1 - 2*padding if (kk-1)*dilation + 1 > 2*padding else 1, 10)) for kk in k)
  return dict(batch=draw(st.integers(1, 2)), cin=cin, cout=cout, groups=g, k=k, hw=hw, stride=stride, dilation=dilation, padding=padding)

@given(DTYPES, conv_problems(), st.booleans(), st.data())
def test_conv2d(dtype, pr, with_bias, data):
  x = data.draw(tensors(dtype, (pr["batch"], pr["cin"], *pr["hw"]), 10))
  w = data.draw(tensors(dtype, (pr["cout"], pr["cin"]//pr["groups"], *pr["k"]), 10))
  bias = data.draw(tensors(dtype, (pr["cout"],), 10))
  kw = dict(groups=pr["groups"], stride=pr["stride"], dilation=pr["dilation"], padding=pr["padding"])
  fn = (lambda a, b, c: a.conv2d(b, c, **kw)) if with_bias else (lambda a, b: a.conv2d(b, **kw))
  r, c = rocket_and_cpu(fn, *((x, w, bias) if with_bias else (x, w)))
  # S = sum |x||w| per output, computed in float64 on the CPU device with the same conv
  S = Tensor(np.abs(x).astype(np.float64), device="CPU").conv2d(Tensor(np.abs(w).astype(np.float64), device="CPU"), **kw).numpy()
  n = (pr["cin"]//pr["groups"]) * pr["k"][0] * pr["k"][1]
  amax = float(np.abs(x).max(initial=0)) + float(np.abs(w).max(initial=0))
  def bound(p):
    b = nm.bound_dot(p, S, n, amax)
    if with_bias:  # the bias add: one more rounded operand and an fp32 add
      bb = np.abs(bias.astype(np.float64)).reshape(1, -1, 1, 1)
      b = b + nm.bound_add(p, S + b, np.broadcast_to(bb, S.shape))
    return b
  nm.assert_within(r, c, bound(nm.rocket(dtype)) + bound(nm.cpu(dtype)), f"conv2d {dtype} {pr}")

@given(DTYPES, st.sampled_from(["max", "avg"]), st.integers(1, 3), st.integers(1, 3), st.data())
def test_pool2d(dtype, kind, k, stride, data):
  x = data.draw(tensors(dtype, (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 4)),
                                data.draw(st.integers(k, 10)), data.draw(st.integers(k, 10)))))
  if kind == "max":
    r, c = rocket_and_cpu(lambda t: t.max_pool2d(k, stride), x)
    bound = lambda p: nm.bound_select(p, np.abs(c.astype(np.float64)))
  else:
    r, c = rocket_and_cpu(lambda t: t.avg_pool2d(k, stride), x)
    S = Tensor(np.abs(x).astype(np.float64), device="CPU").avg_pool2d(k, stride).numpy() * k * k
    bound = lambda p: nm.bound_sum(p, S, k*k, mean=True)
  nm.assert_within(r, c, bound(nm.rocket(dtype)) + bound(nm.cpu(dtype)), f"{kind}_pool2d k{k} s{stride} {dtype} {x.shape}")

@given(st.sampled_from(["float32", "float16", "int32", "int8", "uint8"]), st.data())
def test_movement_ops_are_exact(dtype, data):
  shape = data.draw(array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=6))
  x = data.draw(arrays(dtype, shape))
  perm = data.draw(st.permutations(range(len(shape))))
  pads = [(data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in shape]
  lo = [data.draw(st.integers(0, s-1)) for s in shape]
  flip_axes = tuple(i for i in range(len(shape)) if data.draw(st.booleans()))
  ops = {
    "permute": lambda t: t.permute(*perm),
    "pad": lambda t: t.pad(pads),
    "shrink": lambda t: t[tuple(slice(l, None) for l in lo)],
    "flip": lambda t: t.flip(flip_axes) if flip_axes else t.contiguous(),
    "expand+reshape": lambda t: t.reshape(1, *shape).expand(2, *shape).reshape(-1),
    "cat": lambda t: t.cat(t, dim=-1),
  }
  for name, fn in ops.items():
    r, c = rocket_and_cpu(fn, x)
    np.testing.assert_array_equal(r, c, err_msg=f"{name} {dtype} {shape}")

@given(st.sampled_from(["float32", "float16", "int32", "uint8", "bool"]), array_shapes(max_dims=3, max_side=9), st.data())
def test_to_round_trip(dtype, shape, data):
  x = data.draw(arrays(dtype, shape))
  t = Tensor(x, device="CPU").to("ROCKET")
  assert t.device == "ROCKET"
  np.testing.assert_array_equal(t.numpy(), x)
  np.testing.assert_array_equal(t.to("CPU").numpy(), x)
  np.testing.assert_array_equal(Tensor(x, device="ROCKET").to("CPU").to("ROCKET").numpy(), x)
