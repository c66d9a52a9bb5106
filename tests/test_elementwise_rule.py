"""rules/elementwise.py in strict mode (ROCKET_FALLBACK=0): elementwise chains on conv-fed DPU tasks vs tinygrad's CPU
device, within a bound derived per expression node.

The bound (first order plus the product term) holds for any placement of the roundings the rule may choose: every
operand is rounded to fp16 once and its coefficient (possibly rescaled by a pending map) once more, so a leaf carries
2 u16 |x|; every node then adds fp32 roundings (at most a few per node: the stage's fp32 sum, the BS constant, the EW
op, the pending map's rescaling), which we charge as 8 u32 times the node's magnitude, the sum of the absolute values
of everything under it. tinygrad's CPU device computes in the tensor's dtype: its own rounding is charged the same way
(one rounding per node in its dtype).

Two computed (non-linear) values meeting in one node: the rule narrows one of them to fp16 (rules/elementwise.py
Compiler.meet), its raw stage result r (v = s r + t with the pending map, |s r| <= the node's magnitude) rounded once
more: u16 |s r| (+ eta16 for subnormals), which moves a sum or max by at most that. We do not know which side the rule
picks: a sum or max is charged the larger of the two, a product's factors each carry theirs (|a| eb' + |b| ea' + ea' eb'). A reciprocal (a guarded table seed refined by
Newton steps) has the measured relative error R of rules/tables.py newton_reciprocal on its fp16 argument."""
from __future__ import annotations
from dataclasses import dataclass
from typing import Callable
import numpy as np
import pytest
from hypothesis import given, assume, reject, strategies as st
from tinygrad import Tensor
import tinygrad_rocket  # noqa: F401
from tinygrad_rocket import report, FallbackError
from helpers import env

U16, ETA16 = 2.0 ** -11, 2.0 ** -25     # fp16 unit roundoff, half the fp16 subnormal spacing
U32 = 2.0 ** -24

@dataclass
class Node:
  build: Callable          # tensors -> tinygrad Tensor
  v: np.ndarray            # float64 value
  e: np.ndarray            # error bound of the NPU result
  mag: np.ndarray          # magnitude (sum of |terms|) for fp32 rounding charges
  linear: bool             # a linear combination of leaves (the rule keeps it symbolic)

def leaf(i:int, x:np.ndarray, dtype:str) -> Node:
  x64 = x.astype(np.float64)
  rnd = 0 if dtype == "float16" else U16 * np.abs(x64) + ETA16       # the operand's rounding to fp16
  return Node(lambda ts: ts[i], x64, rnd + U16 * np.abs(x64) + ETA16, np.abs(x64), True)   # + its coefficient's

def charge(n:Node) -> Node:
  n.e = n.e + 8 * U32 * n.mag
  return n

def narrowing(a:Node, b:Node) -> np.ndarray|float:
  """The extra error of a sum or max when a and b are both computed and one is narrowed to fp16 (module docstring)."""
  if a.linear or b.linear: return 0.0
  return np.maximum(U16 * a.mag, U16 * b.mag) + ETA16

def scale(a:Node, k:float) -> Node:
  return charge(Node(lambda ts: a.build(ts) * k, a.v * k, abs(k) * a.e, abs(k) * a.mag, a.linear))
def shift(a:Node, k:float) -> Node:
  return charge(Node(lambda ts: a.build(ts) + k, a.v + k, a.e, a.mag + abs(k), a.linear))
def add(a:Node, b:Node) -> Node:
  return charge(Node(lambda ts: a.build(ts) + b.build(ts), a.v + b.v, a.e + b.e + narrowing(a, b), a.mag + b.mag, a.linear and b.linear))
def sub(a:Node, b:Node) -> Node:
  return charge(Node(lambda ts: a.build(ts) - b.build(ts), a.v - b.v, a.e + b.e + narrowing(a, b), a.mag + b.mag, a.linear and b.linear))
def mul(a:Node, b:Node) -> Node:
  # either factor may be the narrowed one: each carries its possible rounding (an upper bound whichever is picked)
  both = not (a.linear or b.linear)
  ea, eb = (a.e + U16 * a.mag + ETA16, b.e + U16 * b.mag + ETA16) if both else (a.e, b.e)
  return charge(Node(lambda ts: a.build(ts) * b.build(ts), a.v * b.v, np.abs(a.v) * eb + np.abs(b.v) * ea + ea * eb,
                     a.mag * b.mag, False))
def maximum(a:Node, b:Node) -> Node:
  return charge(Node(lambda ts: a.build(ts).maximum(b.build(ts)), np.maximum(a.v, b.v), np.maximum(a.e, b.e) + narrowing(a, b),
                     a.mag + b.mag, False))
def minimum(a:Node, b:Node) -> Node:
  return charge(Node(lambda ts: a.build(ts).minimum(b.build(ts)), np.minimum(a.v, b.v), np.maximum(a.e, b.e) + narrowing(a, b),
                     a.mag + b.mag, False))
def recip(a:Node, rel:float) -> Node:
  """1/a for a loaded a: a' = a (1 + d), |d| <= a.e/|a|, then y = (1/a')(1 + r), |r| <= rel:
  |y - 1/a| = |1/a| |(1 + r)/(1 + d) - 1| <= |1/a| (rel + |d|)/(1 - |d|)."""
  d = a.e / np.abs(a.v)
  v = 1.0 / a.v
  return charge(Node(lambda ts: a.build(ts).reciprocal(), v, np.abs(v) * (rel + d) / (1 - d), np.abs(v), False))
def relu(a:Node) -> Node: return charge(Node(lambda ts: a.build(ts).relu(), np.maximum(a.v, 0), a.e, a.mag, False))
def clip(a:Node, lo:float, hi:float) -> Node:
  return charge(Node(lambda ts: a.build(ts).clip(lo, hi), np.clip(a.v, lo, hi), a.e, a.mag + abs(lo) + abs(hi), False))

BINARY = {"add": add, "sub": sub, "mul": mul, "max": maximum, "min": minimum}
CONSTS = st.sampled_from([0.5, -1.5, 3.0, 0.1, -0.3, 7.25])

def cpu_bound(n:Node, dtype:str, depth:int) -> np.ndarray:
  """tinygrad's CPU result: one rounding in `dtype` per node (depth nodes), relative to the magnitudes."""
  u = U16 if dtype == "float16" else U32
  return (depth + 1) * u * n.mag + (ETA16 if dtype == "float16" else 0)

@st.composite
def spine(draw, dtype:str):
  """A random chain where every binary op has a linear side (leaf or linear combination): what the rule compiles."""
  shape = draw(st.sampled_from([(7,), (3, 5), (2, 3, 9), (40, 13), (1, 300)]))
  shapes = [shape, shape[-1:], shape]                         # the second input broadcasts along the leading axes
  rng = np.random.default_rng(draw(st.integers(0, 2**16)))
  xs = [(rng.standard_normal(s) * draw(st.sampled_from([1.0, 30.0 if dtype == "float32" else 6.0]))).astype(dtype) for s in shapes]
  leaves = [leaf(i, x, dtype) for i, x in enumerate(xs)]
  def linear() -> Node:
    a = leaves[draw(st.integers(0, 2))]
    kind = draw(st.sampled_from(["leaf", "scaled", "combo"]))
    if kind == "scaled": return shift(scale(a, draw(CONSTS)), draw(CONSTS))
    if kind == "combo": return add(scale(a, draw(CONSTS)), leaves[draw(st.integers(0, 2))])
    return a
  v, ops = linear(), []
  for _ in range(draw(st.integers(1, 4))):
    op = draw(st.sampled_from(list(BINARY) + ["relu", "clip", "scale", "shift"]))
    ops.append(op)
    if op in BINARY: v = BINARY[op](v, linear()) if draw(st.booleans()) else BINARY[op](linear(), v)
    elif op == "relu": v = relu(v)
    elif op == "clip": v = clip(v, -abs(draw(CONSTS)), abs(draw(CONSTS)))
    elif op == "scale": v = scale(v, draw(CONSTS))
    else: v = shift(v, draw(CONSTS))
  return xs, v, len(ops) + 4

COPY_REASON = "a copy or cast: exact as the C code"   # rules/elementwise.py's refusal of movement kernels

def run(n:Node, xs, dtype:str, copies_ok:bool=False):
  with env(ROCKET_FALLBACK="0"):
    try: r = n.build([Tensor(x, device="ROCKET") for x in xs]).numpy()
    except FallbackError as e:
      # tinygrad folded the chain into a plain copy of an input (e.g. min(a, a) broadcast): nothing for the rule to do
      if copies_ok and COPY_REASON in e.reason: reject()
      raise
  c = n.build([Tensor(x, device="CPU") for x in xs]).numpy()
  return r, c

@pytest.mark.parametrize("dtype", ["float32", "float16"])
@given(data=st.data())
def test_chains_within_bound(dtype, data):
  xs, n, depth = data.draw(spine(dtype))
  report.reset()
  r, c = run(n, xs, dtype, copies_ok=True)
  bound = n.e + (U16 * np.abs(n.v) + ETA16 if dtype == "float16" else 0) + cpu_bound(n, dtype, depth)
  assert r.dtype == c.dtype and r.shape == c.shape
  assume(np.isfinite(c).all())   # a float16 result beyond 65504 is inf on both sides: not a bound question
  err, bound = np.broadcast_arrays(np.abs(r.astype(np.float64) - c.astype(np.float64)), bound)
  worst = np.argmax((err - bound).ravel())
  assert (err <= bound).all(), f"err {err.ravel()[worst]:.3g} > bound {bound.ravel()[worst]:.3g}"
  assert any(rec.engine == "npu" and "elementwise" in rec.reason for rec in report.records())

def test_bound_is_not_vacuous():
  """The bound is of the order of fp16 rounding, and a result computed wrongly by one fp16 ulp of a term fails it."""
  x = np.linspace(-3, 3, 64).astype(np.float32)
  n = add(mul(leaf(0, x, "float32"), leaf(1, x, "float32")), leaf(0, x, "float32"))
  assert (n.e <= 8 * U16 * (np.abs(x) ** 2 + np.abs(x)) + 1e-6).all()
  r, c = run(n, [x, x], "float32")
  assert (np.abs(r - c) <= n.e + cpu_bound(n, "float32", 3)).all()
  assert not (np.abs(r + 8 * U16 * np.abs(c) - c) <= n.e * 0.5).all()

@pytest.mark.parametrize("fn, stages", [
  (lambda a, b: a + b, 1), (lambda a, b: a * 2 - b * 3 + 1, 1), (lambda a, b: a * b, 1), (lambda a, b: (a + 1) * (b - 2), 2),
  (lambda a, b: a.relu(), 1), (lambda a, b: a.relu6(), 1), (lambda a, b: a.maximum(b), 1), (lambda a, b: a.minimum(b), 1),
  (lambda a, b: (a * b) * 0.5 + 2, 3), (lambda a, b: Tensor.full(a.shape, 2.5, device=a.device).contiguous(), 1),
  (lambda a, b: (a * 2 - 1).relu6(), 1),   # relu(l) - relu(l - 6) with tinygrad's folded constants: one ReLUX stage
])
def test_stage_counts(fn, stages):
  """What the pending affine maps save: scales and shifts after a product fold into the next stage or the last."""
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((2, 37)).astype(np.float32)
  report.reset()
  with env(ROCKET_FALLBACK="0"): fn(Tensor(a, device="ROCKET"), Tensor(b, device="ROCKET")).realize()
  recs = [rec for rec in report.records() if "elementwise" in rec.reason]
  assert recs and f"{stages} stage(s)" in recs[-1].reason, recs

@pytest.mark.parametrize("n", [1, 5, 16, 191, 16 * 1022 * 3 + 5])
def test_sizes_and_tiles(n):
  """Any element count: partial pixels, plane padding to 12 atoms, several row tiles. Bound: x*x + 1 from x rounded to
  fp16 once (|x^2 - x'^2| <= (2 u16 + u16^2) x^2 + subnormal terms), the +1 and the product in fp32 on both sides;
  relative to |x*x + 1| >= x^2 that is under 3 u16, so rtol 4 u16 (atol: the subnormal terms, 4 x 2^-25)."""
  x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
  r, c = run(Node(lambda ts: ts[0] * ts[0] + 1, x, x, x, False), [x], "float32")
  np.testing.assert_allclose(r, c, rtol=4 * U16, atol=ETA16 * 4)

def test_unsupported_shapes_fall_back_with_reason():
  rng = np.random.default_rng(1)
  a, b, c, d = (Tensor(rng.standard_normal(9).astype(np.float32), device="ROCKET") for _ in range(4))
  report.reset()
  (a * b * c + b * c * d).realize()   # two computed values meet, neither bounded nor guardable: fp16 could overflow
  rec = report.records()[-1]
  assert rec.engine == "fallback" and "no bound within fp16" in rec.reason, rec

def test_nonfinite_operands_take_the_c_code():
  x = np.array([1.0, np.inf, -np.inf, np.nan, 7e4, -3.0], np.float32)
  y = np.arange(6, dtype=np.float32)
  r = (Tensor(x, device="ROCKET") * Tensor(y, device="ROCKET") + 1).numpy()
  np.testing.assert_array_equal(r, x * y + 1)

# ---- lookup-table activations: a function of one operand tabulated for the DPU's LUT (ops/lut.py) --------------------
# A priori ceiling of a gate table's error (docs/lut.md measures 1.1e-4 to 1.5e-4 for sigmoid and the GELU gates over
# every fp16 input): two LUT quanta (2 * 2^-15) plus the input-rounding term max|f'(x) x| u16 <= 0.23 * u16 for the
# logistic gates. The test also checks the error each kernel states against this ceiling, so a mis-measured table
# cannot pass by inflating its own bound.
E_GATE = 2 * 2.0 ** -15 + 0.23 * U16

LUT_CASES = {   # name: (fn, bound(x64) of |ROCKET - exact|: table error, fp16 rounding of the table's output and of x)
  "sigmoid": (lambda t: t.sigmoid(), lambda x: E_GATE + U16 + ETA16),
  "tanh": (lambda t: t.tanh(), lambda x: 2 * (E_GATE + U16) + ETA16),                       # 2 sigmoid(2x) - 1
  "silu": (lambda t: t.silu(), lambda x: np.abs(x) * (E_GATE + 3 * U16) + ETA16),           # x * sigmoid(x)
  "gelu": (lambda t: t.gelu(), lambda x: np.abs(x) * (E_GATE + 3 * U16) + ETA16),           # x * sigmoid(2u(x))
  "1-sigmoid": (lambda t: 1 - t.sigmoid(), lambda x: E_GATE + U16 + ETA16),
}

@pytest.mark.parametrize("name", list(LUT_CASES))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_lut_activations(name, dtype):
  fn, bound = LUT_CASES[name]
  x = np.concatenate([np.linspace(-12, 12, 997), np.random.default_rng(5).standard_normal(300) * 4, [0.0, -0.0, 1e-6, -1e-6]]).astype(dtype)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = fn(Tensor(x, device="ROCKET")).numpy().astype(np.float64)
  c = fn(Tensor(x, device="CPU")).numpy().astype(np.float64)
  recs = [rec for rec in report.records() if "lut(" in rec.reason]
  assert recs, report.records()
  stated = [float(w.split("error ")[1].split(")")[0]) for rec in recs for w in rec.reason.split("lut(")[1:]]
  assert all(e <= E_GATE for e in stated), stated
  x64 = x.astype(np.float64)
  cpu = (8 * U16 * (np.abs(c) + np.abs(x64)) if dtype == "float16" else 8 * U32 * (np.abs(c) + np.abs(x64)))
  out_round = U16 * np.abs(c) if dtype == "float16" else 0
  err, b = np.abs(r - c), bound(x64) + cpu + out_round
  assert (err <= b).all(), f"{name}: err {err.max():.3g} at x={x[np.argmax(err - b)]}, bound {b[np.argmax(err - b)]:.3g}"
  assert err.max() > 0   # the table really ran (the C code would be exact to the CPU's rounding)

def test_functions_outside_their_tables_fall_back():
  """exp's table holds on (-inf, ~0] only (its range is unbounded): a call with positive arguments runs the C code."""
  report.reset()
  Tensor(np.linspace(-3, 3, 64).astype(np.float32), device="ROCKET").exp().realize()
  rec = report.records()[-1]
  assert rec.engine == "fallback" and "outside the table's domain" in rec.reason

# ---- tables that hold on an interval only: a guard checks the argument before the job ---------------------------------
def test_guarded_table_runs_inside_its_domain_and_falls_back_outside():
  """exp of a linear argument (softmax's numerator exp(x - max)) runs on the NPU when the argument lies in the table's
  domain, checked from the packed fp16 operands before the job; outside it the call runs the C code, reported."""
  rng = np.random.default_rng(7)
  x = rng.uniform(-6, 6, (8, 40)).astype(np.float32)
  m = x.max(axis=1, keepdims=True)
  f = lambda t, mm: (t - mm).exp()
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = f(Tensor(x, device="ROCKET"), Tensor(m, device="ROCKET")).numpy().astype(np.float64)
  rec = report.records()[-1]
  assert rec.engine == "npu" and "lut(exp2" in rec.reason, rec
  table_err = float(rec.reason.split("lut(exp2, error ")[1].split(")")[0])
  assert table_err <= 2 * 2.0 ** -15 + 0.7 * U16      # a priori: two quanta + exp's input-rounding term on [-16, 0]
  # bound: x and m rounded to fp16 (u16 |x| + u16 |m|), the difference narrowed to fp16 and scaled by log2(e) in fp16
  # (two more u16 |x - m| terms), each moving exp by exp * ln2 * log2(e) * error; the table's error; fp32 on the CPU
  d = x.astype(np.float64) - m
  arg_err = U16 * (np.abs(x) + np.abs(m)) + 3 * U16 * np.abs(d) + ETA16
  exact = np.exp(d)
  bound = exact * arg_err * 1.01 + 1.6 * table_err + 8 * U32 * exact
  c = f(Tensor(x, device="CPU"), Tensor(m, device="CPU")).numpy().astype(np.float64)
  assert (np.abs(r - c) <= bound).all(), np.abs(r - c).max()
  report.reset()
  f(Tensor(x, device="ROCKET"), Tensor(m - 1, device="ROCKET")).realize()     # arguments up to +1: outside (-inf, ~0]
  rec = report.records()[-1]
  assert rec.engine == "fallback" and "outside the table's domain" in rec.reason, rec

@pytest.mark.parametrize("fn, lo, hi, rel", [(lambda t: t.sqrt(), 0.3, 30.0, 2e-3)])
def test_guarded_tables_of_one_load(fn, lo, hi, rel):
  """sqrt on its table's interval, within the stated relative error of the table (docs/lut.md: 0.52 % at the low end,
  far less where these inputs lie) plus fp16 rounding. (rsqrt is a seed refined by Newton steps: tests/test_reciprocal.py.)"""
  x = np.random.default_rng(2).uniform(lo, hi, 500).astype(np.float32)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = fn(Tensor(x, device="ROCKET")).numpy().astype(np.float64)
  assert "lut(" in report.records()[-1].reason
  c = fn(Tensor(x, device="CPU")).numpy().astype(np.float64)
  assert (np.abs(r - c) <= (rel + 3 * U16) * np.abs(c)).all(), np.abs((r - c) / c).max()

def test_hardswish():
  """x * relu6(x + 3) / 6: the clamp in the BS ReLUX, the product in EW, the 1/6 an fp32 constant. Bound: x rounded
  to fp16 with its coefficient (2 u16 |x| each time it is read), the clamp 1-Lipschitz, the product's first-order
  terms, fp32 roundings of the stages."""
  x = np.concatenate([np.linspace(-8, 8, 1601), [-3.0, 3.0, 0.0]]).astype(np.float32)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = Tensor(x, device="ROCKET").hardswish().numpy().astype(np.float64)
  assert all(rec.engine == "npu" for rec in report.records())
  c = Tensor(x, device="CPU").hardswish().numpy().astype(np.float64)
  x64 = x.astype(np.float64)
  e_x = 2 * U16 * np.abs(x64) + ETA16
  clamp = np.clip(x64 + 3, 0, 6)
  bound = (e_x * clamp + np.abs(x64) * (e_x + 2 * U16 * 3)) / 6 + 16 * U32 * (np.abs(x64) * 6 + 1)
  assert (np.abs(r - c) <= bound).all(), np.abs(r - c).max()
