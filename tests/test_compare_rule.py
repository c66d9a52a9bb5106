"""Comparisons and where() as NPU elementwise stages (rules/elementwise.py STEP_EXACT, SELECT_EXACT), in strict mode
against tinygrad's CPU device.

No error bound: both are exact. x < y is clamp(2^24 fl32(y - x), 0, 1), which is 0 or 1 and equals the IEEE comparison
for every finite fp16 pair (fl32(y - x) is +-0 only when x == y, else at least 2^-24 in magnitude); where(c, p, q) is
r*p + (q - q*r), one of whose terms is +-0, so p or q itself. Results must equal the CPU's exactly: bools bit for bit,
selected values in value (a zero's sign may differ: -0 == +0, as the WHERE's operands compare)."""
from __future__ import annotations
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad import Tensor, dtypes
from helpers import env
from test_leaky import strict, lowering_reason
from tinygrad_rocket import report
from tinygrad_rocket.device import NONFINITE_OPERAND_REASON
from tinygrad_rocket.rules.elementwise import STEP_GAIN, STEP_CORE, STEP_BS

def finite_fp16() -> np.ndarray:
  """Every finite fp16 value (both zeros, subnormals, normals)."""
  v = np.arange(0x10000, dtype=np.uint32).astype(np.uint16).view(np.float16)
  return v[np.isfinite(v)]

def partners(x:np.ndarray) -> dict[str, np.ndarray]:
  """For each x, the y values where a comparison could go wrong: itself, its fp16 neighbours (across 0: the smallest
  subnormals, and -0/+0), its negation and zeros of both signs."""
  with np.errstate(over="ignore"): up, down = np.nextafter(x, np.float16(np.inf)), np.nextafter(x, np.float16(-np.inf))   # +-65504 -> +-inf
  fin = lambda y: np.where(np.isfinite(y), y, x).astype(np.float16)   # 65504's upper neighbour is inf: itself instead
  return {"same": x.copy(), "up": fin(up), "down": fin(down), "neg": -x, "+0": np.zeros_like(x), "-0": -np.zeros_like(x)}

CMPS = {"lt": lambda a, b: a < b, "gt": lambda a, b: a > b, "le": lambda a, b: a <= b, "ge": lambda a, b: a >= b,
        "eq": lambda a, b: a == b, "ne": lambda a, b: a != b}

def assert_npu(recs, what:str):
  assert recs and all(r.engine == "npu" for r in recs), (what, recs)
  assert any("clip(0, 1)" in r.reason for r in recs), (what, recs)   # the step stage (STEP_EXACT) ran

def test_step_constants():
  """STEP_GAIN splits into two fp16 powers of 2 (the CORE weight and the BS MUL operand), each exact in fp16, and the
  smallest nonzero fp16 difference (2^-24) times STEP_GAIN is 1: the clamp to [0, 1] gives exactly 1."""
  assert STEP_CORE * STEP_BS == STEP_GAIN and STEP_GAIN * 2.0 ** -24 == 1.0
  for k in (STEP_CORE, STEP_BS): assert float(np.float16(k)) == k and np.log2(k).is_integer()
  assert np.float32(STEP_GAIN) * np.float32(2 * 65504.0) < np.finfo(np.float32).max   # no fp32 overflow

def test_step_model_every_neighbour():
  """STEP_EXACT in numpy's fp32 (the CORE's products and sum, the BS MUL, ReLU, ReLUX) over every finite fp16 x and its
  partners: clamp(fl32(STEP_BS * fl32(STEP_CORE y - STEP_CORE x)), 0, 1) == (x < y), and its sign of zero never 1."""
  x = finite_fp16()
  for name, y in partners(x).items():
    d = np.float32(STEP_CORE) * y.astype(np.float32) - np.float32(STEP_CORE) * x.astype(np.float32)
    step = np.minimum(np.maximum(d * np.float32(STEP_BS), np.float32(0)), np.float32(1))
    assert np.array_equal(step, (x < y).astype(np.float32)), name

@pytest.mark.parametrize("cmp", list(CMPS))
def test_every_fp16_pair_kind(cmp):
  """Each comparison over every finite fp16 x against each kind of partner: the NPU's bools equal the CPU's."""
  x = finite_fp16()
  for name, y in partners(x).items():
    r, c, recs = strict(CMPS[cmp], x, y)
    assert r.dtype == np.bool_ and c.dtype == np.bool_
    assert np.array_equal(r, c), (cmp, name, np.flatnonzero(r != c)[:8])
    assert_npu(recs, f"{cmp} {name}")

@pytest.mark.parametrize("k", [0.0, -0.0, 0.5, -2.0 ** -24, 2.0 ** -24, 65504.0, -3.0])
@pytest.mark.parametrize("cmp", ["lt", "gt", "ne", "eq"])
def test_against_constant(cmp, k):
  """x against an fp16 constant (a nonzero one enters as its own fp16 stage, a main term of the step)."""
  x = finite_fp16()
  r, c, recs = strict(lambda a: CMPS[cmp](a, k), x)
  assert np.array_equal(r, c), (cmp, k)
  assert_npu(recs, f"{cmp} {k}")

def selects(a, b, p, q) -> dict[str, Tensor]:
  return {"lt": (a < b).where(p, q), "ge": (a >= b).where(p, q), "ne": (a != b).where(p, q), "eq": (a == b).where(p, q),
          "mask_mul": (a < b).cast(dtypes.float16) * p, "not_mask": (a == b).logical_not().cast(dtypes.float16) * p}

@pytest.mark.parametrize("case", ["lt", "ge", "ne", "eq", "mask_mul", "not_mask"])
def test_where_every_fp16(case):
  """where(cmp(a, b), p, q) with p, q every finite fp16 value (reversed for q) and a, b neighbours: the selected value
  exactly, both signs of the comparison, both zeros among p and q."""
  x = finite_fp16()
  rng = np.random.default_rng(7)
  a = rng.permutation(x)
  b = np.where(rng.random(len(x)) < 0.5, a, np.nextafter(a, np.float16(0))).astype(np.float16)   # equal or adjacent
  r, c, recs = strict(lambda *t: selects(*t)[case], a, b, x, x[::-1].copy())
  assert r.dtype == c.dtype == np.float16
  assert np.array_equal(r, c), (case, np.flatnonzero(r != c)[:8])
  assert_npu(recs, case)

SHAPES = st.sampled_from([((7,), (7,)), ((3, 5), (1, 5)), ((4, 1, 6), (1, 3, 6)), ((2, 33), (2, 1)), ((300,), (1,)),
                          ((5, 17, 3), (5, 17, 3))])

@settings(deadline=None, max_examples=20)
@given(shapes=SHAPES, seed=st.integers(0, 2 ** 16), cmp=st.sampled_from(list(CMPS)), select=st.booleans())
def test_hypothesis_shapes(shapes, seed, cmp, select):
  """Shapes and broadcasts, values drawn from a small set so that equal pairs are common."""
  rng = np.random.default_rng(seed)
  pool = np.array([0.0, -0.0, 2.0 ** -24, -2.0 ** -24, 1.0, np.nextafter(np.float16(1), np.float16(2)), -1.0, 65504.0], np.float16)
  a, b = (rng.choice(pool, s).astype(np.float16) for s in shapes)
  p = rng.standard_normal(shapes[0]).astype(np.float16)
  fn = (lambda a, b, p: CMPS[cmp](a, b).where(p, b)) if select else (lambda a, b, p: CMPS[cmp](a, b))
  r, c, recs = strict(fn, a, b, p)
  assert r.dtype == c.dtype and np.array_equal(r, c), (cmp, shapes)
  assert_npu(recs, cmp)

def test_float32_operands_refused():
  """float32 operands would compare (and select) their fp16 roundings: the C code, with that reason."""
  a, b = (Tensor(np.array([1.0, 1.0 + 2.0 ** -20] * 8, np.float32), device="ROCKET").realize() for _ in range(2))
  for t in (a < b, a != b, (b < a).where(a, b.flip(0)), (a.half() < b.half()).where(a, b.flip(0))):   # distinct conditions: a realized one would be a load
    assert "float32 operands" in lowering_reason(t), lowering_reason(t)
  report.reset()
  r = (a < b.flip(0)).numpy()
  assert np.array_equal(r, (Tensor(a.numpy(), device="CPU") < Tensor(b.numpy(), device="CPU").flip(0)).numpy())
  assert report.records()[-1].engine == "fallback"

def test_computed_operands_refused():
  """A comparison or where() of a computed value (its fp32 value is not the CPU's fp16 one): the C code, saying why."""
  a, b = (Tensor(np.arange(16, dtype=np.float16), device="ROCKET").realize() for _ in range(2))
  for t in ((a + b) < b, (a < b).where(a * b, b), a < 0.1):   # 0.1 is not an fp16 value
    assert "not a float16 load or an fp16 constant" in lowering_reason(t), lowering_reason(t)

@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_operands_take_the_c_code(bad):
  """inf and NaN operands run the C code (the runner's finite check), its answer exactly."""
  a = np.array([1.0, bad, -0.0, 2.0] * 8, np.float16)
  b = np.array([bad, 1.0, 0.0, 2.0] * 8, np.float16)
  for fn in (lambda a, b: a < b, lambda a, b: a != b, lambda a, b: (a < b).where(a, b * 0 + 3)):
    report.reset()
    r = fn(Tensor(a, device="ROCKET").realize(), Tensor(b, device="ROCKET").realize()).numpy()
    c = fn(Tensor(a, device="CPU"), Tensor(b, device="CPU")).numpy()
    assert np.array_equal(r, c, equal_nan=r.dtype != np.bool_)
    assert report.records()[-1].engine == "fallback", report.records()
  report.reset()
  (Tensor(a, device="ROCKET").realize() < Tensor(b, device="ROCKET").realize()).numpy()
  assert report.records()[-1].reason == NONFINITE_OPERAND_REASON, report.records()
