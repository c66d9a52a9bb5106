"""Contractions whose epilogue is an activation (rules/contraction.py): linear + GELU, conv + bias + SiLU (YOLO's
block), conv + sigmoid, in strict mode against tinygrad's CPU device.

How they run: u, the affine epilogue of the sum (bias, scale), is computed by the matmul tile and narrowed to fp16; a
DPU lookup table gives g(u) in fp16 (g exact on every input: its argument is the NPU's own result, nothing could check
it); the result is g(u), or u * g(u) with the tile recomputed in fp32 and multiplied by g(u) in the EW stage.

Bound, per element, from u's own bound e_u (numerics.bound_matmul plus the bias rounded to fp16): the table's error
(a priori ceiling E_GATE, checked against what the kernel states), the gate's slope (at most G1 for these gates) times
u's error and its fp16 narrowing, and the fp16 rounding of g's output; multiplied by |u| in the u * g(u) form, plus
g times e_u. tinygrad's CPU computes in the tensor's dtype: a few roundings of that dtype per op."""
import numpy as np
import pytest
from tinygrad import Tensor
import numerics as nm
from helpers import env
from tinygrad_rocket import report

U16, U32, ETA16 = 2.0 ** -11, 2.0 ** -24, 2.0 ** -25
E_GATE = 2 * 2.0 ** -15 + 0.23 * U16     # as tests/test_elementwise_rule.py: two LUT quanta + input rounding
G1 = 1.0                                 # max slope of the sigmoid / GELU gates as functions of u (sigma' <= 1/4,
                                         # GELU-tanh gate <= 0.9 where not saturated)
sigmoid = lambda u: 1 / (1 + np.exp(-u))
GELU_GATE = lambda u: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))

CASES = {  # name: (tinygrad fn of (x, w, b), u(x, w, b) in float64 with S = sum |x||w|, gate, multiply)
  "linear+gelu": (lambda x, w, b: (x @ w + b).gelu(), GELU_GATE, True, "linear"),
  "linear+silu": (lambda x, w, b: (x @ w + b).silu(), sigmoid, True, "linear"),
  "linear+sigmoid": (lambda x, w, b: (x @ w + b).sigmoid(), sigmoid, False, "linear"),
  "conv+bias+silu": (lambda x, w, b: x.conv2d(w, b, padding=1).silu(), sigmoid, True, "conv"),
}

def conv_parts(x, w, b):
  """u and S = sum |x||w| of a 3x3 padding-1 conv in float64 (im2col)."""
  N, C, H, W = x.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
  cols = np.stack([xp[:, :, i:i + H, j:j + W] for i in range(3) for j in range(3)], axis=2)   # N, C, 9, H, W
  cols = cols.reshape(N, C * 9, H, W)
  wm = w.astype(np.float64).reshape(w.shape[0], -1)
  u = np.einsum("ok,nkhw->nohw", wm, cols)
  S = np.einsum("ok,nkhw->nohw", np.abs(wm), np.abs(cols))
  return u + b.astype(np.float64)[None, :, None, None], S, C * 9

@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", list(CASES))
def test_activation_epilogue(name, dtype):
  fn, gate, multiply, kind = CASES[name]
  rng = np.random.default_rng(len(name))
  if kind == "linear":
    x, w, b = rng.standard_normal((37, 48)), rng.standard_normal((48, 29)) * 0.3, rng.standard_normal(29)
  else:
    x, w, b = rng.standard_normal((2, 5, 9, 11)), rng.standard_normal((19, 5, 3, 3)) * 0.3, rng.standard_normal(19)
  x, w, b = (v.astype(dtype) for v in (x, w, b))
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = fn(*(Tensor(v, device="ROCKET") for v in (x, w, b))).numpy().astype(np.float64)
  c = fn(*(Tensor(v, device="CPU") for v in (x, w, b))).numpy().astype(np.float64)
  recs = [rec for rec in report.records() if "lut(" in rec.reason]
  assert recs and all(float(rec.reason.split("error ")[1].split(")")[0]) <= E_GATE for rec in recs), report.records()
  assert (" +u*lut(" in recs[0].reason) == multiply
  if kind == "linear":
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    u, S, n = x64 @ w64 + b, np.abs(x64) @ np.abs(w64), x.shape[1]
    amax = np.abs(x64).max() + np.abs(w64).max()
  else:
    u, S, n = conv_parts(x, w, b)
    amax = np.abs(x).max() + np.abs(w).max()
  p = nm.rocket(dtype)
  e_u = nm.bound_dot(p, S, n + 1, amax) + p.u_in * np.abs(b).reshape((-1,) + (1,) * (u.ndim - 2 if kind == "conv" else 0)) + ETA16
  g = gate(u)
  e_g = E_GATE + G1 * (e_u + U16 * np.abs(u) + ETA16) + U16 * g + ETA16
  bound = (np.abs(u) * e_g + g * e_u) if multiply else e_g
  if dtype == "float16": bound = bound + U16 * np.abs(u * g if multiply else g) + ETA16      # the stored result
  y = np.abs(u * g if multiply else g)
  uc = U16 if dtype == "float16" else U32
  cpu = nm.bound_dot(nm.cpu(dtype), S, n + 1, amax) * (1 + G1 * (np.abs(u) + 1)) + 12 * uc * (y + np.abs(u) + 1e-30)
  err = np.abs(r - c)
  worst = np.argmax((err - bound - cpu).ravel())
  assert (err <= bound + cpu).all(), f"{name} {dtype}: err {err.ravel()[worst]:.3g} > {(bound + cpu).ravel()[worst]:.3g} at u={u.ravel()[worst]:.3g}"
  assert err.max() > 0

def test_gelu_mlp_runs_entirely_on_the_npu():
  """A transformer MLP (linear, GELU, linear): every kernel on the NPU (strict mode)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 16, 32)).astype(np.float32)
  w1, b1 = rng.standard_normal((32, 64)).astype(np.float32) * 0.2, rng.standard_normal(64).astype(np.float32)
  w2, b2 = rng.standard_normal((64, 32)).astype(np.float32) * 0.2, rng.standard_normal(32).astype(np.float32)
  mlp = lambda x, w1, b1, w2, b2: ((x @ w1 + b1).gelu() @ w2 + b2)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = mlp(*(Tensor(v, device="ROCKET") for v in (x, w1, b1, w2, b2))).numpy()
  assert all(rec.engine == "npu" for rec in report.records()) and len(report.records()) >= 2
  c = mlp(*(Tensor(v, device="CPU") for v in (x, w1, b1, w2, b2))).numpy()
  # first order: layer 1's bound (as above, |h| <= |u|) pushed through |w2|, plus layer 2's own bound over |h|
  u = x.astype(np.float64) @ w1 + b1
  e_u = nm.bound_matmul(nm.rocket("float32"), x, w1) + U16 * np.abs(b1) + ETA16
  g = GELU_GATE(u)
  e_h = np.abs(u) * (E_GATE + G1 * (e_u + U16 * np.abs(u) + ETA16) + U16 * g + ETA16) + g * e_u
  h = u * g
  e_y = e_h @ np.abs(w2) + nm.bound_matmul(nm.rocket("float32"), h, w2) + U16 * np.abs(b2) + 1e-6 * (np.abs(h) @ np.abs(w2) + np.abs(b2))
  assert (np.abs(r - c) <= e_y).all(), np.abs(r - c).max()
