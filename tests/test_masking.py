"""Masking on the NPU: where() with a constant branch (ReLU's backward, masked_fill) and stored bool operands (dropout and
padding masks), rules/elementwise.py SELECT_EXACT / SELECT_FORMS / STORED_BOOL, in strict mode against tinygrad's CPU
device.

No error bound where every operand is an fp16 value: each form is r*p + (1 - r)*q with one term +-0 and the other p or q
exactly, or q + (p - q) r with p - q an fp16 value (SELECT_FORMS), so results equal the CPU's in value (a zero may carry
the other sign: -0 == +0). A float32 branch is packed rounded to fp16, as every float32 operand of the rule: bound_select.
"""
from __future__ import annotations
from dataclasses import asdict
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad import Tensor, Device
from tinygrad.helpers import Context
import numerics as nm
from test_leaky import strict, lowering_reason
from test_compare_rule import finite_fp16
from tinygrad_rocket import report
from tinygrad_rocket.device import NONFINITE_OPERAND_REASON, DISTINCT_REASON

def assert_npu(recs, what:str, stages:int|None=None):
  """Every kernel ran on the NPU (no fallback record); with `stages`, the select took exactly that many (its cost in
  SELECT_FORMS)."""
  assert recs and all(r.engine == "npu" for r in recs), (what, recs)
  if stages is not None: assert len(recs) == 1 and f" {stages} stage(s)" in recs[0].reason, (what, recs)

def pair(x:np.ndarray, seed:int) -> tuple[np.ndarray, np.ndarray]:
  """Comparison operands a, b beside x: equal or adjacent fp16 values, so both outcomes (and ties) are common."""
  rng = np.random.default_rng(seed)
  a = rng.permutation(x)
  b = np.where(rng.random(len(x)) < 0.5, a, np.nextafter(a, np.float16(0))).astype(np.float16)
  return a, b

# (form, stages): a comparison's step is one stage (STEP_EXACT); the select's own cost is SELECT_FORMS'
CONSTANT_BRANCHES = {
  "x_0": (lambda a, b, x: (a > b).where(x, 0), 2),                 # r*x: one EW mul
  "0_x": (lambda a, b, x: (a < b).where(0, x), 3),                 # x - x*r
  "x_k": (lambda a, b, x: (a > 0).where(x, 2.0), 5),               # r*x + (k - k*r), narrowed r*x
  "masked_fill": (lambda a, b, x: x.masked_fill(a < b, -1.0), 5),
  "k_0": (lambda a, b, x: (a < b).where(-2.0 ** -24, 0.0).half(), 2),     # k*r: the pending map, one EW mul
  "k_k": (lambda a, b, x: (a < b).where(3.0, -1.0).half(), 3),     # -1 + 4 r: the pending map's mul and add
  "k_k_sum": (lambda a, b, x: (a < b).where(1.0, 2.0 ** -24).half(), 5),   # 1 - 2^-24 is no fp16 value: r*1 + (k - k r)
  "k_k_wide": (lambda a, b, x: (a < b).where(65504.0, -65504.0).half(), 5),  # p - q = 131008 > 65504
}

@pytest.mark.parametrize("form", list(CONSTANT_BRANCHES))
def test_constant_branch_every_fp16(form):
  """where(cmp(a, b), p, q) with a constant branch over every finite fp16 x as the other: exactly the CPU's."""
  x = finite_fp16()
  fn, stages = CONSTANT_BRANCHES[form]
  r, c, recs = strict(fn, *pair(x, 1), x)
  assert r.dtype == c.dtype and np.array_equal(r, c), (form, np.flatnonzero(r != c)[:8])
  assert any("clip(0, 1)" in rec.reason for rec in recs), recs   # the comparison's step ran on the NPU
  assert_npu(recs, form, stages)

def test_relu_backward_fp16():
  """ReLU's backward in float16, where(0 < x, g, 0): one kernel, the step and one EW mul, exactly the CPU's gradient
  (x every finite fp16 value: both zeros, subnormals, +-65504)."""
  x = finite_fp16()
  g = np.random.default_rng(2).standard_normal(len(x)).astype(np.float16)
  def grad(x:Tensor, g:Tensor) -> Tensor:
    x.requires_grad = True
    (x.relu() * g).sum().backward()
    return x.grad
  r, c, recs = strict(grad, x, g)
  assert np.array_equal(r, c)
  assert_npu(recs, "relu backward", 2)

def test_widened_fp16_comparison():
  """x.float() > y.float() compares fp16 values (the widening is exact), so it is STEP_EXACT's comparison: on the NPU,
  and so is the float32 select of them."""
  x = finite_fp16()
  a, b = pair(x, 3)
  r, c, recs = strict(lambda a, b, x: (a.float() > b.float()).where(x.float(), 0), a, b, x)
  assert r.dtype == np.float32 and np.array_equal(r, c)
  assert_npu(recs, "widened", 2)

def test_float32_branch_is_its_fp16_rounding():
  """A float32 branch of an exact condition is packed rounded to fp16, like every float32 operand of the rule: the
  result is fl16(g) (bound_select: one operand rounding, the fp32 output exact)."""
  x = finite_fp16()
  a, b = pair(x, 4)
  g = (np.random.default_rng(4).standard_normal(len(x)) * np.exp2(np.random.default_rng(5).integers(-30, 15, len(x)))).astype(np.float32)
  r, c, recs = strict(lambda a, b, g: (a < b).where(g, 0), a, b, g)
  assert_npu(recs, "float32 branch", 2)
  nm.assert_within(r, c, nm.bound_select(nm.rocket("float32"), np.abs(g.astype(np.float64))), "float32 branch")
  assert (r != c).any()   # the rounding is real: some float32 values are no fp16 value

# (form, stages) over a stored bool mask m (and a second one n) and every fp16 x
MASKS = {
  "where_x_y": (lambda m, n, x, y: m.where(x, y), 3),               # r*x + (1 - r)*y, one narrowed
  "where_x_0": (lambda m, n, x, y: m.where(x, 0), 1),               # r*x
  "where_0_x": (lambda m, n, x, y: m.where(0, x), 1),               # (1 - r)*x: the CORE's 1 - r, one EW mul
  "mul": (lambda m, n, x, y: x * m, 1),                              # x * cast(m)
  "where_x_k": (lambda m, n, x, y: m.where(x, 5.0), 2),
  "where_k_x": (lambda m, n, x, y: m.where(-1.0, x), 2),
  "where_k_k": (lambda m, n, x, y: m.where(2.0, -3.0).half(), 1),   # -3 + 5 m through the CORE and BS
  "where_k_k_sum": (lambda m, n, x, y: m.where(1.0, 2.0 ** -24).half(), 2),
  "not_where": (lambda m, n, x, y: m.logical_not().where(x, y), 3),
  "and_where": (lambda m, n, x, y: (m & n.logical_not()).where(x, 0), 2),
  "and_cmp": (lambda m, n, x, y: (m & (x < y)).where(x, y), None),
  "or_mul": (lambda m, n, x, y: x * (m | n), 2),
  "cmp_and_cmp": (lambda m, n, x, y: ((x < y) & (y < 0)).where(x, 0), None),   # two steps, one narrowed (bound 1)
  "cmp_or_mask": (lambda m, n, x, y: ((x < y) | m).where(x, y), None),
}

@pytest.mark.parametrize("form", list(MASKS))
def test_stored_bool_every_fp16(form):
  """Masks as 0/1 fp16 operands (STORED_BOOL) over every finite fp16 x: exactly the CPU's."""
  x = finite_fp16()
  rng = np.random.default_rng(6)
  m, n = rng.random(len(x)) < 0.5, rng.random(len(x)) < 0.5
  fn, stages = MASKS[form]
  r, c, recs = strict(fn, m, n, x, x[::-1].copy())
  assert r.dtype == c.dtype and np.array_equal(r, c), (form, np.flatnonzero(r != c)[:8])
  assert_npu(recs, form, stages)

BOOL_OUT = {"not": lambda m, n: m.logical_not(), "and": lambda m, n: m & n, "or": lambda m, n: m | n,
            "xor": lambda m, n: m != n, "eq": lambda m, n: m == n}

@pytest.mark.parametrize("op", list(BOOL_OUT))
def test_bool_logic(op):
  """NOT/AND/OR/XOR/== of stored bools, written as bools: every combination, the CPU's bit for bit."""
  m, n = np.array([False, False, True, True] * 8), np.array([False, True, False, True] * 8)
  r, c, recs = strict(BOOL_OUT[op], m, n)
  assert r.dtype == c.dtype == np.bool_ and np.array_equal(r, c), op
  assert_npu(recs, op)

POOL = np.array([0.0, -0.0, 2.0 ** -24, -2.0 ** -24, 2.0 ** -14, 1.0, -1.5, 65504.0, -65504.0], np.float16)
SHAPES = st.sampled_from([((7,), (7,)), ((3, 5), (1, 5)), ((3, 5), (3, 1)), ((4, 1, 6), (1, 3, 6)), ((2, 33), (1, 33)),
                          ((300,), (1,)), ((5, 17, 3), (5, 17, 3))])
FORMS = {**{k: v[0] for k, v in MASKS.items()},
         "cmp_x_0": lambda m, n, x, y: (x > y).where(x, 0), "cmp_k_x": lambda m, n, x, y: x.masked_fill(x < y, -1.0)}

@settings(deadline=None)
@given(shapes=SHAPES, seed=st.integers(0, 2 ** 16), form=st.sampled_from(list(FORMS)))
def test_hypothesis_masks(shapes, seed, form):
  """A mask broadcast over rows or columns (the smaller shape) against values from a pool where ties, zeros of both
  signs, subnormals and +-65504 are common."""
  rng = np.random.default_rng(seed)
  xs, ms = shapes
  m, n = rng.random(ms) < 0.5, rng.random(ms) < 0.5
  x, y = (rng.choice(POOL, xs).astype(np.float16) for _ in range(2))
  r, c, recs = strict(FORMS[form], m, n, x, y)
  assert r.dtype == c.dtype and np.array_equal(r, c), (form, shapes)
  assert_npu(recs, form)

@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_operands_take_the_c_code(bad):
  """inf and NaN in a branch or a compared operand (r*inf would be NaN where r = 0): the runner sends the call to the
  C code, whose answer is exact."""
  x = np.array([1.0, bad, -0.0, 2.0] * 8, np.float16)
  y = np.array([bad, 1.0, 0.0, 2.0] * 8, np.float16)
  m = np.array([True, False, False, True] * 8)
  for fn in (lambda m, x, y: m.where(x, 0), lambda m, x, y: x * m, lambda m, x, y: (x > y).where(x, 0),
             lambda m, x, y: x.masked_fill(x < y, -1.0)):
    report.reset()
    r = fn(*(Tensor(a, device="ROCKET").realize() for a in (m, x, y))).numpy()
    c = fn(*(Tensor(a, device="CPU") for a in (m, x, y))).numpy()
    assert np.array_equal(r, c, equal_nan=True)
    assert [rec.reason for rec in report.records()] == [NONFINITE_OPERAND_REASON], report.records()

def test_refusals():
  """What stays the C code, with its reason: a constant that is not a finite fp16 value (the NPU would select its
  rounding), comparisons of two float32 tensors (their fp16 roundings could tie)."""
  rng = np.random.default_rng(8)
  x, y = (Tensor(rng.standard_normal(32).astype(np.float16), device="ROCKET").realize() for _ in range(2))
  m = Tensor(rng.random(32) < 0.5, device="ROCKET").realize()
  assert "0.1 is not a finite fp16 value" in lowering_reason((x < y).where(x, 0.1))
  assert "-inf is not a finite fp16 value" in lowering_reason(x.masked_fill(x < y, -float("inf")))
  assert "-inf is not a finite fp16 value" in lowering_reason(m.where(x, -float("inf")))
  assert "0.1 is not a finite fp16 value" in lowering_reason(m.where(0.1, 0.2).half())
  x32, g32 = (Tensor(rng.standard_normal(32).astype(np.float32), device="ROCKET").realize() for _ in range(2))
  assert "float32 operands" in lowering_reason((x32 > g32).where(x32, 0))   # two float32 loads (COMPARE_F32 takes a constant)
  assert "0.1 is not a finite fp16 value" in lowering_reason(x32 < 0.1)
  assert "not a float16 load or an fp16 constant" in lowering_reason((x * 2 < y).where(x, 0))   # a computed operand

def test_mask_computed_on_the_npu():
  """A mask the NPU wrote (a comparison's bool result, left in its job's fp32 cube until read) used as a stored bool by
  the next kernels: packed from the cube (0.0/1.0 -> bool -> fp16) as from plain memory, exactly."""
  x = finite_fp16()
  a, b = pair(x, 9)
  for use in (lambda m, x: m.where(x, x.flip(0)), lambda m, x: x * m.logical_not()):
    before = asdict(Device["ROCKET"].layout_stats)
    r, c, recs = strict(lambda a, b, x: use((a < b).realize(), x), a, b, x)
    assert asdict(Device["ROCKET"].layout_stats)["packed_native"] > before["packed_native"]   # the mask read from the cube
    assert np.array_equal(r, c)
    assert_npu(recs, "mask from the npu")
    assert len(recs) == 2 and "clip(0, 1)" in recs[0].reason and "clip(0, 1)" not in recs[1].reason, recs

@pytest.mark.parametrize("p", [0.5, 0.75])
def test_dropout_applies_its_mask_on_the_npu(p):
  """Training's dropout, where(rand >= p, x, 0) * 1/(1 - p): its random bits run the C code (a position-dependent
  counter), the stored bool mask then selects on the NPU, exactly (a power-of-2 scale: the product is exact in fp32,
  then one rounding to half, as on the CPU)."""
  x = np.concatenate([finite_fp16(), np.float16([-0.0])])
  def run(device:str) -> np.ndarray:
    Tensor.manual_seed(3)
    with Context(TRAINING=1): return Tensor(x, device=device).realize().dropout(p).numpy()
  report.reset()
  r = run("ROCKET")
  recs = report.records()
  c = run("CPU")
  assert np.array_equal(r, c) and 0 < (c == 0).mean() < 1
  assert recs[-1].engine == "npu" and "elementwise" in recs[-1].reason, recs

def float32_around(k:float, n:int, seed:int) -> np.ndarray:
  """float32 values for comparisons with k: k itself, both zeros, and values at every scale on both sides of k, none of
  which rounds onto k in fp16 unless it is k (the fp16 neighbours of k, and float32 values between those)."""
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal(n) * np.exp2(rng.integers(-30, 15, n))).astype(np.float32)
  up, down = (np.nextafter(np.float16(k), np.float16(d)) for d in (np.inf, -np.inf))
  near = np.float32([np.float32(v) + np.float32(w * t) for v in (up, down) for w, t in ((0, 0), (1, 2 ** -14), (-1, 2 ** -14))])
  x = np.concatenate([x + np.float32(k), near, np.float32([k, k, 0.0, -0.0])])
  keep = (x.astype(np.float16) != np.float16(k)) | (x == np.float32(k))
  return x[keep & (np.abs(x) <= 65504)]

@pytest.mark.parametrize("k", [0.0, 0.5, -1.0, 2.0 ** -20, 1000.0])
def test_float32_compared_with_a_constant(k):
  """COMPARE_F32: x < k, x > k, x <= k, x != k, x == k for float32 x and an fp16 constant k are exact on the NPU (bool
  results equal the CPU's); ReLU's backward form where(k < x, g, 0) selects fl16(g) (bound_select)."""
  x = float32_around(k, 2000, 11)
  g = np.random.default_rng(12).standard_normal(len(x)).astype(np.float32)
  for name, fn in {"lt": lambda x: x < k, "gt": lambda x: x > k, "le": lambda x: x <= k, "ne": lambda x: x != k, "eq": lambda x: x == k}.items():
    r, c, recs = strict(fn, x)
    assert_npu(recs, name)
    assert np.array_equal(r, c), (name, k, x[r != c][:8])
  r, c, recs = strict(lambda x, g: (x > k).where(g, 0), x, g)
  assert_npu(recs, "relu backward form", 2 if k == 0 else None)
  nm.assert_within(r, c, nm.bound_select(nm.rocket("float32"), np.abs(g.astype(np.float64))), "float32 select")
  assert np.array_equal(r != 0, c != 0)   # the selection itself is exact

def test_float32_rounding_onto_the_constant_takes_the_c_code():
  """An element that rounds onto the constant without being it (0 < x < 2^-25 against 0; a tie next to 0.5) sends
  that call to the C code with DISTINCT_REASON, with the CPU's answer; the next call with clean data runs on the NPU."""
  for k, bad in ((0.0, 2.0 ** -26), (0.0, -1e-9), (0.5, 0.5 + 2.0 ** -13)):
    x = float32_around(k, 64, 13)
    x[5] = np.float32(bad)
    xt, gt = Tensor(x, device="ROCKET").realize(), Tensor(np.ones_like(x), device="ROCKET").realize()
    report.reset()
    r = (xt > k).where(gt, 0).numpy()
    assert np.array_equal(r, np.where(x > k, 1, 0).astype(np.float32))
    assert [(rec.engine, rec.reason) for rec in report.records()] == [("fallback", DISTINCT_REASON)], report.records()
    x[5] = np.float32(k)
    r, c, recs = strict(lambda x: (x > k).where(1.0, 0.0), x)
    assert_npu(recs, "clean call")
    assert np.array_equal(r, c)

def test_float32_relu_backward_on_the_npu():
  """tinygrad's ReLU backward in float32 (where(0 < x, g, 0) after the forward's relu) runs on the NPU: the gradient is
  fl16(upstream) where x > 0, exactly 0 elsewhere."""
  rng = np.random.default_rng(14)
  xv, wv = float32_around(0.0, 300, 15).reshape(1, -1), rng.standard_normal((1, 1)).astype(np.float32)
  xv = xv[:, :(xv.shape[1] // 4) * 4]
  x, w = Tensor(xv, device="ROCKET"), Tensor(np.broadcast_to(wv, xv.shape).copy(), device="ROCKET")
  x.requires_grad = True
  (x.relu() * w).sum().backward()
  report.reset()
  got = x.grad.numpy()
  assert any(rec.engine == "npu" and "clip(0, 1)" in rec.reason for rec in report.records()), report.records()
  want = np.where(xv > 0, np.broadcast_to(wv, xv.shape), 0)
  nm.assert_within(got, want, nm.bound_select(nm.rocket("float32"), np.abs(want.astype(np.float64))), "relu backward")
  assert np.array_equal(got != 0, want != 0)
