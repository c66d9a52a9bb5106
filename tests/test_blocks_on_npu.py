"""softmax, layernorm and a small attention block with every kernel on the NPU (strict mode), within bounds composed
from each kernel's numerics (the per-kernel derivations are tests/test_computed_operand.py, tests/test_reciprocal.py).

The kernels tinygrad 0.14 makes of them: softmax = row max (PPU, exactly fl16 of the max: m), row sum of exp(x - m)
(a contraction with a computed operand), exp(x - m) * recip(sum) (elementwise: exp table, Newton reciprocal, the two
meeting); layernorm = mean (a contraction with ones), sqrt(mean((x - mean)^2) + eps) (a computed operand, a sqrt table
checked after the job), (x - mean) * recip(std); attention = the scores matmul, the softmax's max and sum, and
softmax @ V with the softmax computed into the A tiles. Softmax is invariant to the shift, so the NPU's m (fl16 of the
max) is as good as the exact max: the reference below uses m itself."""
import numpy as np
import pytest
from tinygrad import Tensor
import numerics as nm
from helpers import env
from tinygrad_rocket import report
from tinygrad_rocket.ops.lut import LutTable
from tinygrad_rocket.rules.tables import newton_reciprocal, pick_table, range_window, RANGE_WINDOWS

U16, U32, ETA16 = nm.U16, nm.U32, nm.ETA16
RHO = newton_reciprocal().rel_error

def all_npu(fn):
  report.reset()
  with env(ROCKET_FALLBACK="0"): out = fn()
  recs = report.records()
  assert recs and all(r.engine == "npu" for r in recs), recs
  return out, [r.reason for r in recs]

def table_error(name:str, summaries:list[str]) -> float:
  """A table's measured error as the program states it (tests check the statement against an a-priori ceiling)."""
  return max(float(s.split(f"lut({name}, error ")[1].split(")")[0]) for s in summaries if f"lut({name}, error " in s)

def softmax_bound(x, T:float, rho:float=RHO):
  """(p, bound) for the NPU's softmax over the last axis of x (float64, the values it reads). exp's argument from fp16
  operands narrowed to fp16, the table's error T and its fp16 output (e_exp); the sum kernel adds the e_exp of its
  terms and an fp32 sum (E_s); the final kernel's reciprocal sees the sum rounded to fp16 and Newton's measured error."""
  m = x.max(-1, keepdims=True).astype(np.float16).astype(np.float64)   # the PPU's max: fl16 of the max
  d = x - m
  e = np.exp(d)
  s = e.sum(-1, keepdims=True)
  arg_err = U16 * (np.abs(x) + np.abs(m)) + 3 * U16 * np.abs(d) + ETA16
  e_exp = e * arg_err * 1.01 + T + U16 * e
  n = x.shape[-1]
  E_s = e_exp.sum(-1, keepdims=True) + nm.gamma(n - 1, U32) * (e + e_exp).sum(-1, keepdims=True) + U32 * s
  eps_r = (E_s / s + U16 + ETA16 / s + rho) / (1 - E_s / s - U16)
  p = e / s
  return p, e_exp / s * (1 + eps_r) + p * eps_r + 8 * U32 * p

@pytest.mark.parametrize("shape, scale", [((4, 64), 1.0), ((8, 40), 3.0), ((2, 3, 16), 0.5)])
def test_softmax(shape, scale):
  x = (np.random.default_rng(0).standard_normal(shape) * scale).astype(np.float32)
  X = Tensor(x, device="ROCKET").realize()
  r, summaries = all_npu(lambda: X.softmax(-1).numpy())
  c = Tensor(x, device="CPU").softmax(-1).numpy()
  p, b = softmax_bound(x.astype(np.float64), table_error("exp2", summaries))
  nm.assert_within(r, c, b + 8 * U32 * p + nm.gamma(shape[-1] + 8, U32) * p, "softmax")

def window_table(fn, name:str, summaries:list[str]) -> LutTable:
  """The window's table of a power function (rules/tables.py TABLE_SCALES) whose error the program states."""
  err = f"lut({name}, error {table_error(name, summaries):.2g})"
  tables = [t for w in range(RANGE_WINDOWS) for t in [table_of_window(fn, name, w)] if f"lut({name}, error {t.max_abs_error:.2g})" == err]
  assert len(tables) == 1, (err, tables)
  return tables[0]

def table_of_window(fn, name:str, window:int) -> LutTable:
  with range_window(window): return pick_table(fn, name)

def stated_tables(fn, name:str, summaries:list[str]) -> list[LutTable]:
  """The windows' tables of a power function whose errors the programs state (a call over several windows states each
  program's): every window whose measured error reads as one stated (two windows reading alike: both)."""
  stated = {x.split(")")[0] for s in summaries for x in s.split(f"lut({name}, error ")[1:]}
  tables = [t for w in range(RANGE_WINDOWS) for t in [table_of_window(fn, name, w)] if f"{t.max_abs_error:.2g}" in stated]
  assert tables, (name, stated)
  return tables

@pytest.mark.parametrize("shape, scale, shift", [((4, 64), 1.0, 0.0), ((6, 128), 2.0, 1.0)])
def test_layernorm(shape, scale, shift):
  rng = np.random.default_rng(1)
  assert_layernorm_within((rng.standard_normal(shape) * scale + shift).astype(np.float32), RHO)

def assert_layernorm_within(x:np.ndarray, rho:float) -> None:
  """y = (x - mu) / sigma, sigma = sqrt(var + eps), all-NPU. mu: a sum of fp16-rounded x (numerics.bound_sum, mean);
  var: (x - mu~)^2 from fp16 operands in fp32, narrowed to fp16, summed (its dot bound), /n; sigma: var + eps narrowed
  to fp16, the sqrt table's error plus its slope (<= 1/(2 sqrt(lo)) on its domain [lo, hi]: the window's table the
  program states; rows over several windows: per row the worst of the stated windows whose domain meets u's interval,
  the NPU's u lying in the domain of the window it came from); the final kernel: x and mu~ rounded to fp16, sigma~
  rounded to fp16 and Newton's error rho. First order in each: |dy| <= |dmu|/sigma + |x - mu| |dsigma| / sigma^2 + the
  final kernel's own error."""
  shape = x.shape
  X = Tensor(x, device="ROCKET").realize()
  r, summaries = all_npu(lambda: X.layernorm().numpy())
  c = Tensor(x, device="CPU").layernorm().numpy()
  xd, n = x.astype(np.float64), shape[-1]
  mu = xd.mean(-1, keepdims=True)
  e_mu = nm.bound_sum_axis(nm.rocket("float32"), xd, -1, mean=True)[..., None]
  dd = xd - mu
  var = (dd * dd).mean(-1, keepdims=True)
  ed = U16 * (np.abs(xd) + np.abs(mu) + e_mu) + 2 * ETA16 + U32 * np.abs(dd) + e_mu
  a = dd * dd
  e_a = 2 * np.abs(dd) * ed + ed * ed + (U32 + U16 + U32 * U16) * (a + 2 * np.abs(dd) * ed + ed * ed) + ETA16
  S = (a + e_a).sum(-1, keepdims=True)
  e_var = (e_a.sum(-1, keepdims=True) + nm.gamma(n - 1, U32) * S + U32 * S) / n + U32 * var
  u = var + 1e-5
  e_u = e_var + U32 * u
  e_u = e_u + U16 * (u + e_u) + ETA16
  sigma = np.sqrt(u)
  e_table = np.full(u.shape, -np.inf)
  for t in stated_tables(np.sqrt, "sqrt", summaries):
    meets = (u + e_u >= t.domain[0]) & (u - e_u <= t.domain[1])
    e_table = np.where(meets, np.maximum(e_table, t.max_abs_error + e_u / (2 * np.sqrt(t.domain[0]))), e_table)
  assert np.isfinite(e_table).all(), "a row's u in no stated window"
  e_sigma = e_table + U32 * sigma
  y = dd / sigma
  e_final = (U16 * (np.abs(xd) + np.abs(mu)) + 2 * ETA16 + U32 * np.abs(dd)) / sigma + np.abs(y) * (U16 + rho + 4 * U32)
  bound = (e_mu / sigma + np.abs(dd) * e_sigma / sigma ** 2) * 1.01 + e_final * (1 + 2 * e_sigma / sigma)
  nm.assert_within(r, c, bound + nm.gamma(n + 8, U32) * (np.abs(y) + 1), "layernorm")

def test_attention_block():
  """o = softmax(q k^T / sqrt(d)) v over (batch, heads). Scores: a matmul with the scale folded (bound_matmul, the
  scale rounded to fp16 in the packing: + U16); a score error ds moves each probability by at most p (e^(2 ds) - 1);
  the NPU's softmax of its own scores: softmax_bound; o: the probabilities (narrowed to fp16 in the A tiles: + U16 p)
  against v rounded to fp16, an fp32 dot over the keys."""
  rng = np.random.default_rng(2)
  B, H, L, D = 1, 2, 24, 16
  q, k, v = (rng.standard_normal((B, H, L, D)).astype(np.float32) for _ in range(3))
  Q, K, V = (Tensor(t, device="ROCKET").realize() for t in (q, k, v))
  r, summaries = all_npu(lambda: Q.scaled_dot_product_attention(K, V).numpy())
  assert any("computed A" in s and "Newton" in s for s in summaries)   # softmax @ V: the softmax computed into A
  c = Tensor(q, device="CPU").scaled_dot_product_attention(Tensor(k, device="CPU"), Tensor(v, device="CPU")).numpy()
  qd, kd, vd = (t.astype(np.float64) for t in (q, k, v))
  scale = 1 / np.sqrt(D)
  s = qd @ kd.swapaxes(-1, -2) * scale
  ds = nm.bound_matmul(nm.rocket("float32"), qd, kd.swapaxes(-1, -2)) * scale + U16 * np.abs(s)
  p, e_p = softmax_bound(s, table_error("exp2", summaries))
  e_p = e_p * np.exp(2 * ds.max(-1, keepdims=True)) + p * (np.exp(2 * ds.max(-1, keepdims=True)) - 1)
  e_p = e_p + U16 * (p + e_p) + ETA16                                     # narrowed to fp16 in A
  e_v = U16 * np.abs(vd) + ETA16
  S = (p + e_p) @ (np.abs(vd) + e_v)
  bound = e_p @ np.abs(vd) + p @ e_v + e_p @ e_v + nm.gamma(L - 1, U32) * S + U32 * S
  nm.assert_within(r, c, bound + nm.gamma(L + 8, U32) * (np.abs(p) @ np.abs(vd)), "attention")
