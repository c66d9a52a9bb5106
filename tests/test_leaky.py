"""Leaky ReLU / PReLU with a constant slope, where(u < 0, a*u, u) as tinygrad writes it, on the NPU: as elementwise
stages (rules/elementwise.py Compiler.leaky) and as a contraction's epilogue (rules/contraction.py _leaky_tasks), in
strict mode against tinygrad's CPU device.

Both rest on LEAKY_AS_MAX (rules/elementwise.py): for finite u the WHERE is max(u, a*u) (a <= 1) or min(u, a*u)
(a >= 1) exactly, in IEEE arithmetic too; test_leaky_as_max_over_all_fp16 checks it for every fp16 u in fp16 and fp32
arithmetic and shows where non-finite u differ (those calls run the C code: test_nonfinite_operands_take_the_c_code).

Bounds. max and min are 1-Lipschitz in each argument: |max(p', q') - max(p, q)| <= max(|p' - p|, |q' - q|). The NPU's
branches are u' (within e_u of u) and a' u'' (a' = fp16(a), the CORE's coefficient or the BS multiplier; u'' = u' or
an fp16 narrowing of it), so the result is within max(e_u, |a'| e_u'' + |a' - a| |u|) of leaky_a(u), plus the fp32
roundings of the stage. For a float16 tensor tinygrad's slope is already fp16(a), so a' = a there."""
from __future__ import annotations
import numpy as np
import pytest
from hypothesis import given, assume, strategies as st
from tinygrad import Tensor, nn
import numerics as nm
from helpers import env
from test_elementwise_rule import Node, leaf, charge, mul, scale, shift, cpu_bound
from test_contraction_activation import conv_parts
from test_blocks import bn_params
from tinygrad_rocket import report
from tinygrad_rocket.device import NONFINITE_OPERAND_REASON
from tinygrad_rocket.lower import lower_kernel, NotApplicable
from tinygrad_rocket._tg import Ops
from tinygrad_rocket.ops.lut import all_fp16

U16, U32, ETA16 = nm.U16, nm.U32, nm.ETA16
SLOPES = [0.0, 0.01, 0.1, 0.2, 1 / 3, 1.0, -0.5, 1.5, 3.0]

def every_fp16() -> np.ndarray:
  """All 65536 fp16 bit patterns: +-0, subnormals, normals, +-inf, NaNs."""
  return np.arange(0x10000, dtype=np.uint32).astype(np.uint16).view(np.float16)

@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("a", SLOPES)
def test_leaky_as_max_over_all_fp16(a, dtype):
  """LEAKY_AS_MAX in numpy's IEEE arithmetic (round to nearest) for every fp16 x, in fp16 and in fp32 (fp32 also for
  random fp32 bit patterns: a contraction's u is fp32): equal in value on every finite x; on non-finite x the two may
  differ (0 * inf is NaN, max drops or keeps NaN), which is why such operands never reach the NPU."""
  rng = np.random.default_rng(0)
  xs = [every_fp16().astype(dtype)]
  if dtype == np.float32: xs.append(rng.integers(0, 2 ** 32, 1 << 16, dtype=np.uint64).astype(np.uint32).view(np.float32))
  for x in xs:
    with np.errstate(invalid="ignore", over="ignore"):
      ax = dtype(a) * x
      where, mm = np.where(x < 0, ax, x), np.maximum(x, ax) if a <= 1 else np.minimum(x, ax)
    finite = np.isfinite(x)
    assert np.array_equal(where[finite], mm[finite])
    differ = ~((where == mm) | (np.isnan(where) & np.isnan(mm)))
    assert not differ[finite].any()
    if a == 0: assert differ[x == np.inf].all()     # where gives inf, max(inf, 0 * inf = NaN) is NaN

def strict(fn, *arrays):
  """fn on ROCKET in strict mode (inputs realized first) and on the CPU; the ROCKET kernels' report records."""
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = fn(*[Tensor(a, device="ROCKET").realize() for a in arrays]).numpy()
  recs = report.records()
  return r, fn(*[Tensor(a, device="CPU") for a in arrays]).numpy(), recs

def assert_npu(recs, what:str, kind:str):
  """Every kernel ran on the NPU, none after a wasted job (a fallback record) and none through a lookup table."""
  assert recs and all(r.engine == "npu" for r in recs), recs
  assert any(kind in r.reason for r in recs) and not any("lut(" in r.reason for r in recs), (what, recs)

@pytest.mark.parametrize("a, dtype", [(0.1, "float16"), (0.0, "float16"), (3.0, "float16"), (0.1, "float32"), (-0.5, "float32")])
def test_every_fp16_input(a, dtype):
  """x.leaky_relu(a) over every finite fp16 x (and -0): one stage max(fp16(a) x, x) (min for a > 1). The product of two
  fp16 values is exact in fp32, so for float16 tensors (slope already fp16 on the CPU, one rounding to half on both
  sides) the result equals the CPU's exactly; for float32 the only difference is the slope's rounding,
  |fp16(a) - fp32(a)| |x| on the negative branch, and the CPU's fp32 product."""
  x = np.concatenate([all_fp16(), np.float16([-0.0])]).astype(dtype)
  r, c, recs = strict(lambda t: t.leaky_relu(a), x)
  assert_npu(recs, "leaky", "1 stage(s)")
  if dtype == "float16": assert np.array_equal(r, c)    # both may overflow to the same inf for a > 1
  else:
    x64 = x.astype(np.float64)
    nm.assert_within(r, c, abs(float(np.float16(a)) - float(np.float32(a))) * np.abs(x64) + U32 * abs(a) * np.abs(x64), "leaky")

def select(v, a:float, e_u, e_au):
  """The error of max(u', (a u)') (min for a > 1) against leaky_a(u), the branches within e_u and e_au: where they are
  further apart than e_u + e_au the computed ones are ordered alike and the true branch is selected (a u for u < 0);
  elsewhere max is 1-Lipschitz in each argument: max(e_u, e_au)."""
  apart = np.abs((1 - a) * v) > e_u + e_au
  return np.where(apart, np.where(v < 0, e_au, e_u), np.maximum(e_u, e_au))

def leaky(n:Node, a:float) -> Node:
  """n.leaky_relu(a): max(n, a n) (min for a > 1). The branch a n is computed with a's fp16 rounding (u16 |a n|) from
  the same operands, so its error is |a| n.e + that; a computed n meets a n with one of them narrowed to fp16 (u16 of
  the larger magnitude, rules/elementwise.py Compiler.meet); the max then charges its fp32 roundings (charge)."""
  k = max(1.0, abs(a))
  narrow = 0.0 if n.linear else k * U16 * n.mag + ETA16
  e = select(n.v, a, n.e + narrow, abs(a) * n.e + abs(a) * (U16 * n.mag + ETA16) + narrow)
  return charge(Node(lambda ts: n.build(ts).leaky_relu(a), np.where(n.v < 0, a * n.v, n.v), e, k * n.mag, False))

FORMS = {   # name: builds the Node of the expression from the leaves (x, y); nodes for tinygrad's CPU rounding count
  "x": (lambda x, y, a: leaky(x, a), 2),
  "2x+1": (lambda x, y, a: leaky(shift(scale(x, 2.0), 1.0), a), 4),
  "x*y": (lambda x, y, a: leaky(mul(x, y), a), 3),
  "x*y+1": (lambda x, y, a: leaky(shift(mul(x, y), 1.0), a), 4),
  "leaky(x)*y-3": (lambda x, y, a: shift(mul(leaky(x, a), y), -3.0), 4),
  "leaky(leaky(x))": (lambda x, y, a: leaky(leaky(x, a), 0.2), 4),
}

VALUES = st.sampled_from(["normal", "large", "subnormal", "zeros", "tiny32"])
PRODUCT_MAX = 200.0   # |x|, |y| of a product form's "large" operands: |x y| < 65504, so its fp16 narrowing passes its guard

def values(kind:str, shape, dtype:str, rng, top:float) -> np.ndarray:
  """Operands of one kind: standard normal; large (up to `top`: 2^14, where 3 (2x + 1) still fits fp32 and a float16
  overflow is inf on both sides, or PRODUCT_MAX); fp16 subnormals; +-0; float32 values below fp16's range."""
  g = rng.standard_normal(shape)
  v = {"normal": g * 4, "large": np.clip(g * top / 2, -top, top), "subnormal": g * 2.0 ** -18,
       "zeros": np.where(g < 0, -0.0, 0.0), "tiny32": g * 1e-30}[kind]
  return v.astype(dtype)

@pytest.mark.parametrize("dtype", ["float32", "float16"])
@given(data=st.data())
def test_elementwise_forms_within_bound(dtype, data):
  name = data.draw(st.sampled_from(list(FORMS)))
  form, depth = FORMS[name]
  a = data.draw(st.sampled_from([a for a in SLOPES if a != 1]))   # leaky_relu(1) is x itself: a copy, the C code's
  shape = data.draw(st.sampled_from([(7,), (3, 5), (2, 3, 9), (1, 300)]))
  rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
  top = PRODUCT_MAX if "*y" in name else 2.0 ** 14
  xs = [values(data.draw(VALUES), shape, dtype, rng, top) for _ in range(2)]
  n = form(leaf(0, xs[0], dtype), leaf(1, xs[1], dtype), a)
  r, c, recs = strict(lambda *ts: n.build(ts), *xs)
  assert_npu(recs, name, "elementwise")
  assume(np.isfinite(c).all())   # a float16 result beyond 65504 is inf (or NaN after 0 * inf) on the CPU: no bound question
  out = U16 * np.abs(n.v) + ETA16 if dtype == "float16" else 0.0
  nm.assert_within(r, c, n.e + out + cpu_bound(n, dtype, depth), f"{name} a={a:g} {dtype}")

def test_bound_is_not_vacuous():
  """The derived bound is of the order of fp16 rounding: a slope off by 2^-8 relative fails it."""
  x = np.linspace(-100, 100, 301).astype(np.float32)
  n = leaky(leaf(0, x, "float32"), 0.1)
  r, c, _ = strict(lambda t: n.build([t]), x)
  bound = n.e + cpu_bound(n, "float32", 2)
  nm.assert_within(r, c, bound, "leaky")
  with pytest.raises(AssertionError): nm.assert_within(np.where(x < 0, 0.1 * (1 + 2 ** -8) * x, x), c, bound, "a wrong slope")

# ---- contraction epilogues ------------------------------------------------------------------------------------------
def leaky_bound(u, e_u, a:float, dtype:str):
  """The NPU's max(fp16(a) u', u') against leaky_a(u) (module docstring; rules/contraction.py _leaky_tasks): the BS
  multiply by fp16(a) rounds once in fp32; a float16 result is rounded once more."""
  a16 = float(np.float16(a))
  a_cpu = float(np.float16(a) if dtype == "float16" else np.float32(a))
  e = select(u, a, e_u, abs(a16) * e_u + abs(a16 - a_cpu) * np.abs(u) + U32 * abs(a16) * (np.abs(u) + e_u))
  y = np.abs(np.where(u < 0, a * u, u))
  return e + (U16 * (y + e) + ETA16 if dtype == "float16" else 0.0)

def cpu_leaky_bound(e_c, u, a:float, dtype:str):
  """tinygrad's CPU: u within e_c, its sign test on that u, a*u rounded in the dtype."""
  uc, eta = (U16, ETA16) if dtype == "float16" else (U32, 0.0)
  return select(u, a, e_c, abs(a) * e_c + uc * abs(a) * np.abs(u) + eta)

def contraction_case(kind:str, dtype:str, rng):
  """(fn, arrays, u, S, n, amax, |bias|) for a linear / matmul / conv2d with bias; u, S = sum |x||w| in float64."""
  if kind == "conv":
    x, w, b = rng.standard_normal((2, 5, 9, 11)), rng.standard_normal((19, 5, 3, 3)) * 0.3, rng.standard_normal(19)
    x, w, b = (v.astype(dtype) for v in (x, w, b))
    u, S, n = conv_parts(x, w, b)
    return (lambda x, w, b, a: x.conv2d(w, b, padding=1).leaky_relu(a)), (x, w, b), u, S, n + 1, \
           float(np.abs(x).max() + np.abs(w).max()), np.abs(b.astype(np.float64)).reshape(-1, 1, 1)
  x, w, b = rng.standard_normal((37, 48)), rng.standard_normal((48, 29)) * 0.3, rng.standard_normal(29)
  if kind == "matmul": b = np.zeros(29)
  x, w, b = (v.astype(dtype) for v in (x, w, b))
  x64, w64 = x.astype(np.float64), w.astype(np.float64)
  fn = (lambda x, w, b, a: (x @ w).leaky_relu(a)) if kind == "matmul" else (lambda x, w, b, a: x.linear(w, b).leaky_relu(a))
  return fn, (x, w, b), x64 @ w64 + b, np.abs(x64) @ np.abs(w64), 48 + (kind != "matmul"), \
         float(np.abs(x64).max() + np.abs(w64).max()), np.abs(b.astype(np.float64))

@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", ["linear", "matmul"])
@given(a=st.sampled_from(SLOPES))
def test_contraction_epilogue(kind, dtype, a): check_contraction(kind, dtype, a)

@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("a", [0.1, 3.0])
def test_conv_epilogue(dtype, a): check_contraction("conv", dtype, a)   # ~1 s per conv on the emulator: two slopes

def check_contraction(kind:str, dtype:str, a:float):
  """conv2d / linear / matmul (+ bias) + leaky: the affine result u within the contraction's bound e_u (numerics.bound_dot
  with the bias as one more fp16-rounded product), then leaky_bound."""
  fn, arrays, u, S, n, amax, bias = contraction_case(kind, dtype, np.random.default_rng(7))
  r, c, recs = strict(lambda x, w, b: fn(x, w, b, a), *arrays)
  if a != 1: assert_npu(recs, kind, "+relu" if a == 0 else "*u))")
  p = nm.rocket(dtype)
  e_u = nm.bound_dot(p, S + bias, n, amax + bias.max())
  e_c = nm.bound_dot(nm.cpu(dtype), S + bias, n, amax + bias.max()) + (U16 * (np.abs(u) + bias) + ETA16 if dtype == "float16" else U32 * np.abs(u))
  nm.assert_within(r, c, leaky_bound(u, e_u, a, dtype) + cpu_leaky_bound(e_c, u, a, dtype), f"{kind}+leaky({a:g}) {dtype}")

def yolo_block(device:str, x, w, bn, a:float=0.1):
  """YOLO's conv block: conv2d (no bias) + BatchNorm (eval) + leaky_relu(0.1)."""
  m = nn.BatchNorm(w.shape[0])
  m.weight, m.bias = Tensor(bn["gamma"], device=device), Tensor(bn["beta"], device=device)
  m.running_mean, m.running_var = Tensor(bn["mean"], device=device), Tensor(bn["var"], device=device)
  return m(Tensor(x, device=device).realize().conv2d(Tensor(w, device=device).realize(), padding=1)).leaky_relu(a).numpy()

def test_yolo_conv_bn_leaky_block():
  """One fused kernel: the BatchNorm slope s folded into the weights (fp16(s w): an operand rounding, u_in = u16 on
  both sides) and its intercept t as one more K column, then leaky(0.1) as two tasks (tests/test_blocks.py derives the
  conv + BN bound the same way)."""
  rng = np.random.default_rng(3)
  x = rng.uniform(-1, 1, (1, 8, 12, 12)).astype(np.float32)
  w = rng.uniform(-0.3, 0.3, (16, 8, 3, 3)).astype(np.float32)
  bn = bn_params(rng, 16)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = yolo_block("ROCKET", x, w, bn)
  recs = report.records()
  assert_npu(recs, "yolo", "+affine epilogue +leaky(max(u, 0.1*u))")
  c = yolo_block("CPU", x, w, bn)
  s = bn["gamma"].astype(np.float64) / np.sqrt(bn["var"].astype(np.float64) + 1e-5)
  t = bn["beta"].astype(np.float64) - bn["mean"] * s
  u, S, n = conv_parts(x, w * s[:, None, None, None], t)
  _, acc, _ = conv_parts(x, w, np.zeros(16))
  col = lambda v: np.abs(v).reshape(-1, 1, 1)
  e_u = nm.bound_dot(nm.rocket("float32"), S + col(t), n + 1, float(np.abs(x).max() + np.abs(w * s[:, None, None, None]).max() + np.abs(t).max()))
  # CPU: an fp32 conv of n terms, then (acc - mean) * gamma * rsqrt(var + eps) + beta in fp32: 6 roundings (as
  # tests/test_blocks.py check_layer)
  e_c = nm.gamma(n, U32) * acc * col(s) + 6 * U32 * ((acc + col(bn["mean"])) * col(s) + col(bn["beta"]))
  nm.assert_within(r, c, leaky_bound(u, e_u, 0.1, "float32") + cpu_leaky_bound(e_c, u, 0.1, "float32"), "conv+bn+leaky")

# ---- what stays on the C path, with its reason ------------------------------------------------------------------------
def test_nonfinite_operands_take_the_c_code():
  """inf and NaN (where LEAKY_AS_MAX does not hold) and float32 values beyond fp16: the C code, its answer exactly."""
  x = np.array([1.0, -np.inf, np.inf, np.nan, -7e4, -3.0, -0.0], np.float32)
  for a in (0.0, 0.1, 3.0):
    report.reset()
    r = Tensor(x, device="ROCKET").realize().leaky_relu(a).numpy()
    np.testing.assert_array_equal(r, Tensor(x, device="CPU").leaky_relu(a).numpy())
    assert report.records()[-1].engine == "fallback" and report.records()[-1].reason == NONFINITE_OPERAND_REASON, report.records()

def fallback_reason(fn, *arrays) -> str:
  report.reset()
  r = fn(*[Tensor(a, device="ROCKET").realize() for a in arrays]).numpy()
  np.testing.assert_allclose(r, fn(*[Tensor(a, device="CPU") for a in arrays]).numpy(), rtol=1e-6)   # the C code: CPU's own
  rec = report.records()[-1]
  assert rec.engine == "fallback", report.records()
  return rec.reason

def lowering_reason(t:Tensor) -> str:
  """Why the rules leave t's one kernel to the C code (no NPU program: no job)."""
  lin, _ = t.linear_with_vars()
  ks = [c.src[0] for c in lin.src if c.src[0].op is Ops.SINK]
  assert len(ks) == 1, ks
  r = lower_kernel(ks[0])
  assert isinstance(r, NotApplicable), r
  return r.reason

def test_unsupported_cases_fall_back_with_reason():
  rng = np.random.default_rng(5)
  x = Tensor(rng.standard_normal((4, 40)).astype(np.float32), device="ROCKET").realize()
  assert "slope 100000" in lowering_reason((x @ x.T).leaky_relu(1e5))
  assert "coefficient 100000 is not finite in fp16" in lowering_reason(x.leaky_relu(1e5))
  big = rng.standard_normal((4, 20000)).astype(np.float32)
  assert "leaky ReLU epilogue with K split" in fallback_reason(lambda t: (t @ t.T).leaky_relu(0.1), big)

def test_where_epilogue_takes_no_table_of_one_sign():
  """where(u < 0, 0.1 u, 2 u) is no max/min of u and a*u: before, the contraction took a guarded table of it on
  (0.25, 32) whose after-job check failed on any negative u (a wasted job, then the C code); now no table is chosen."""
  rng = np.random.default_rng(6)
  a, w = (Tensor(rng.standard_normal(s).astype(np.float32), device="ROCKET").realize() for s in ((37, 48), (48, 29)))
  u = a @ w
  assert "contraction: the epilogue applies a function of the sum no lookup table covers" in lowering_reason((u < 0).where(0.1 * u, 2 * u))

def test_greater_than_orientation():
  """(x > 0).where(x, a*x), the other way of writing it (where(0 < u, u, a*u)), is the same max: bit-exact in float16."""
  x = np.concatenate([all_fp16()[::7], np.float16([-0.0])])
  r, c, recs = strict(lambda t: (t > 0).where(t, 0.2 * t), x)
  assert_npu(recs, "gt", "1 stage(s)")
  assert np.array_equal(r, c)

# ---- PReLU with a slope tensor (rules/elementwise.py PRELU_SPLIT) -------------------------------------------------------
PRELU_SLOPES = [[0.0, 0.25, 1.0, 3.0], [0.1, -0.5, 1.5, 1 / 3]]   # per channel: max, identity, min and neither regimes
PRELU_FORMS = {"x<0": lambda t, k: (t < 0).where(k * t, t), "0<x": lambda t, k: (t > 0).where(t, t * k),
               "max+k*min": lambda t, k: t.maximum(0) + k * t.minimum(0), "relu-k*relu(-x)": lambda t, k: t.relu() - k * (-t).relu()}

def channels(values:np.ndarray, C:int) -> np.ndarray:
  """Every value in each of C channels: shape (1, C, len(values))."""
  return np.broadcast_to(values, (1, C, values.size)).copy()

@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("slopes", PRELU_SLOPES)
@pytest.mark.parametrize("form", list(PRELU_FORMS))
def test_prelu_every_fp16_input(form, slopes, dtype):
  """where(x < 0, k x, x) (or its two branches summed) with a per-channel slope tensor k over every finite fp16 x (and
  -0) in every channel: three stages on the NPU (PRELU_SPLIT), whatever regime each channel's slope is in. The NPU's result is fp16(k) x exactly
  (or x) rounded once to the dtype: for float16 tensors the CPU's answer exactly; for float32 the only differences are
  k's fp16 rounding, |fp16(k) - fp32(k)| |x| on the negative branch, and the CPU's fp32 product."""
  C = len(slopes)
  x = channels(np.concatenate([all_fp16(), np.float16([-0.0])]), C).astype(dtype)
  k = np.array(slopes, dtype).reshape(1, C, 1)
  r, c, recs = strict(lambda t, s: PRELU_FORMS[form](t, s), x, k)
  assert_npu(recs, "prelu", "3 stage(s)")
  if dtype == "float16": assert np.array_equal(r, c)    # both may overflow to the same inf for |k| > 1
  else:
    x64, k32 = x.astype(np.float64), k.astype(np.float64)
    k16 = k.astype(np.float16).astype(np.float64)
    nm.assert_within(r, c, np.where(x64 < 0, np.abs(k16 - k32) * np.abs(x64) + U32 * np.abs(k32 * x64), 0.0), "prelu")

def test_prelu_of_a_sum_within_bound():
  """PReLU of a residual sum u = x + y (a linear form: each stage reads it through the CORE, fp16 operands, fp32 sum):
  u within e_u = u16 (|x| + |y|) + 2 eta16 + u32 |u|; where(u < 0, k u, u) is max(1, |k|)-Lipschitz in u, so the
  result is within max(1, |k16|) e_u + |k16 - k| |u| + the fp32 product's rounding u32 |k16| (|u| + e_u); the CPU:
  fp32 sum and product (2 u32 on the larger branch)."""
  rng = np.random.default_rng(8)
  C = 6
  x, y = (rng.standard_normal((2, C, 5, 7)).astype(np.float32) * 3 for _ in range(2))
  k = rng.uniform(-1, 3, (1, C, 1, 1)).astype(np.float32)
  r, c, recs = strict(lambda a, b, s: ((a + b) < 0).where((a + b) * s, a + b), x, y, k)
  assert_npu(recs, "prelu sum", "3 stage(s)")
  x64, y64, k64 = (v.astype(np.float64) for v in (x, y, k))
  u = x64 + y64
  e_u = U16 * (np.abs(x64) + np.abs(y64)) + 2 * ETA16 + U32 * np.abs(u)
  k16 = np.abs(k.astype(np.float16).astype(np.float64))
  e = np.maximum(1, k16) * e_u + np.where(u < 0, np.abs(k16 - np.abs(k64)), 0.0) * np.abs(u) + U32 * k16 * (np.abs(u) + e_u)
  nm.assert_within(r, c, e + 2 * U32 * np.maximum(1, np.abs(k64)) * np.abs(u), "prelu of a sum")

def test_prelu_nonfinite_operands_take_the_c_code():
  """An inf or NaN slope or input (k = inf, x = 0 would give NaN in relu(x) + (-k) relu(-x)): the C code, its answer."""
  x = np.array([[[1.0, -2.0, 0.0, -0.0]], [[np.inf, -np.inf, np.nan, 3.0]]], np.float32).reshape(1, 2, 4)
  for k in ([[[0.5]], [[2.0]]], [[[np.inf]], [[0.5]]], [[[np.nan]], [[0.5]]]):
    kk = np.array(k, np.float32).reshape(1, 2, 1)
    for xx in (x[:, :1], x):
      kx = kk[:, :xx.shape[1]]
      if np.isfinite(xx).all() and np.isfinite(kx).all(): continue
      report.reset()
      r = PRELU_FORMS["x<0"](Tensor(xx, device="ROCKET").realize(), Tensor(kx, device="ROCKET").realize()).numpy()
      np.testing.assert_array_equal(r, PRELU_FORMS["x<0"](Tensor(xx, device="CPU"), Tensor(kx, device="CPU")).numpy())
      assert report.records()[-1].reason == NONFINITE_OPERAND_REASON, report.records()

def test_prelu_of_a_computed_value_falls_back_with_reason():
  """PReLU of a product x*y (a computed value): PRELU_SPLIT reads u through the CORE in each of its stages, which a
  computed value cannot be without an fp16 narrowing (a second rounding of k u): the C code, with the reason."""
  rng = np.random.default_rng(9)
  x, y = (Tensor(rng.standard_normal((1, 3, 4, 4)).astype(np.float32), device="ROCKET").realize() for _ in range(2))
  k = Tensor(np.float32([[[[0.1]], [[2.0]], [[-1.0]]]]), device="ROCKET").realize()
  u = x * y
  assert "a PReLU whose input or slope is a computed value" in lowering_reason((u < 0).where(u * k, u))

# ---- PReLU with a slope tensor as a contraction's epilogue (rules/contraction.py _prelu_tasks) ------------------------
PRELU_LAYERS = {"linear": lambda x, w, b: x.linear(w, b), "conv": lambda x, w, b: x.conv2d(w, b, padding=1)}

@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("form", list(PRELU_FORMS))
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_prelu_contraction_epilogue(kind, form, dtype):
  """linear / conv2d (+ bias) then PReLU with a per-channel slope tensor (slopes of every regime: 0, 1, in (0, 1),
  above 1, negative), fused into the contraction: two tasks per tile, relu(-u) times the slope tile, then relu(u) plus
  that (_prelu_tasks). The NPU's result is u' or fl32(k u') for its own u' (within e_u, check_contraction's bound), and
  PReLU is max(1, |k|)-Lipschitz in u: max(1, |k|) e_u + u32 |k| (|u| + e_u), plus a float16 output's rounding; the
  CPU: its own u within e_c, k u rounded in the dtype."""
  _, arrays, u, S, n, amax, bias = contraction_case(kind, dtype, np.random.default_rng(11))
  C = u.shape[1]
  k = np.resize(np.array(SLOPES + [-1.25, 2.0], dtype), C)
  k = k.reshape((1, C, 1, 1) if kind == "conv" else (C,))
  r, c, recs = strict(lambda x, w, b, s: PRELU_FORMS[form](PRELU_LAYERS[kind](x, w, b), s), *arrays, k)
  assert_npu(recs, f"{kind}+prelu", "+prelu(")
  p = nm.rocket(dtype)
  e_u = nm.bound_dot(p, S + bias, n, amax + bias.max())
  e_c = nm.bound_dot(nm.cpu(dtype), S + bias, n, amax + bias.max()) + (U16 * (np.abs(u) + bias) + ETA16 if dtype == "float16" else U32 * np.abs(u))
  ka = np.abs(k.astype(np.float64))
  y = np.abs(np.where(u < 0, k * u, u))
  e = np.maximum(1, ka) * e_u + U32 * ka * (np.abs(u) + e_u)
  if dtype == "float16": e = e + U16 * (y + e) + ETA16
  uc, eta = (U16, ETA16) if dtype == "float16" else (U32, 0.0)
  nm.assert_within(r, c, e + np.maximum(1, ka) * e_c + uc * ka * np.abs(u) + eta, f"{kind}+prelu {form} {dtype}")
  assert (u < 0).any() and (u > 0).any()

def test_prelu_epilogue_nonfinite_slope_takes_the_c_code():
  """An inf slope packs as a non-finite fp32 operand (relu(-u) = 0 times inf would be NaN where u > 0): that call runs
  the C code, its answer."""
  rng = np.random.default_rng(12)
  x, w = rng.standard_normal((12, 32)).astype(np.float32), rng.standard_normal((32, 16)).astype(np.float32)
  k = np.full(16, 0.5, np.float32)
  k[3] = np.inf
  f = lambda x, w, s: PRELU_FORMS["x<0"](x @ w, s)
  report.reset()
  r = f(*(Tensor(v, device="ROCKET").realize() for v in (x, w, k))).numpy()
  np.testing.assert_array_equal(r, f(*(Tensor(v, device="CPU") for v in (x, w, k))).numpy())
  assert report.records()[-1].reason == NONFINITE_OPERAND_REASON, report.records()
