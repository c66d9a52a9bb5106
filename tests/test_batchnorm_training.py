"""BatchNorm in training (nn.BatchNorm2d with TRAINING=1: batch statistics) with every kernel on the NPU (strict mode),
within a bound composed from each kernel's numerics, against tinygrad's CPU device; and its backward.

Per channel over n = N*H*W elements (d = x - mu, u = var + eps, r = 1/sqrt(u)), tinygrad 0.14 makes:
  mean:     mu = sum(x) / n, a contraction with ones and an affine epilogue (numerics.bound_sum, mean);
  variance: var = sum(d~^2) / n with d~ = x - mu~ and its square computed into the A tiles (fp16 operands, fp32, the
            square narrowed to fp16), an fp32 sum, the affine epilogue /n (+ eps); as tests/test_blocks_on_npu.py
            assert_layernorm_within derives it;
  rsqrt:    the output alone: a lookup table of 1/sqrt(var + eps) as the variance kernel's epilogue (its measured
            error holds for every real input as the NPU rounds it to fp16: ops/lut.py LutTable.domain, plus its fp16
            output); with the running statistics realized too, var is stored and the last kernel refines 1/sqrt(l),
            l = fl16(var~) + eps, by Newton steps (rules/tables.py newton: the measured relative error);
  affine:   y = ((x - mu~) w) r~ + b: fp16 operands (x, mu~, w, b rounded; r~ too where it is an fp32 stage value that
            meets a computed one: rules/elementwise.py Compiler.meet narrows one side), fp32 stages, an fp32 result.
An error e_mu in mu and e_r in r move y by |w| (e_mu (r + e_r) + |d| e_r) (first order in each, exact in both).
The CPU runs the same graph in fp32: the same derivation with exact operands (u_in = 0), fp32 sqrt and division."""
from __future__ import annotations
import numpy as np
import pytest
from tinygrad import Tensor, nn
from tinygrad.helpers import Context
import numerics as nm
from helpers import env
from test_blocks_on_npu import all_npu
from tinygrad_rocket import report
from tinygrad_rocket.rules.tables import pick_table, newton, NEWTON_FUNCTIONS, NoWindow, RANGE_WINDOWS
from test_blocks_on_npu import table_of_window, window_table

U16, U32, ETA16 = nm.U16, nm.U32, nm.ETA16
EPS = 1e-5           # nn.BatchNorm's default eps
AXES = (0, 2, 3)     # NCHW: statistics per channel

def rsqrt_fn(v): return 1.0 / np.sqrt(v)   # the epilogue's function: RECIPROCAL(SQRT(u))

def per_channel(a:np.ndarray) -> np.ndarray: return a.reshape(1, -1, 1, 1)

def stats_bound(x:np.ndarray, u_in:float, eta:float):
  """(mu, e_mu, var, e_var) per channel (shape (1, C, 1, 1)) for operand rounding (u_in, eta) and fp32 arithmetic."""
  n = x.size // x.shape[1]
  mu = per_channel(x.mean(AXES))
  S1 = per_channel(np.abs(x).sum(AXES))
  e_mu = nm.bound_sum(nm.Precision(u_in, eta, U32, U32, 0.0), S1, n, mean=True) + U32 * np.abs(mu)   # + 1/n in fp32
  d = x - mu
  var = per_channel((d * d).mean(AXES))
  ed = u_in * (np.abs(x) + np.abs(mu) + e_mu) + 2 * eta + U32 * (np.abs(d) + e_mu) + e_mu
  a = d * d
  e_a = 2 * np.abs(d) * ed + ed * ed + (U32 + u_in + U32 * u_in) * (a + 2 * np.abs(d) * ed + ed * ed) + eta
  S = per_channel((a + e_a).sum(AXES))
  e_var = (per_channel(e_a.sum(AXES)) + nm.gamma(n - 1, U32) * S + U32 * S) / n
  return mu, e_mu, var, e_var + (u_in + U32) * (var + e_var)                  # /n: the constant and the product

def bn_bound(x:np.ndarray, w:np.ndarray, b:np.ndarray, u_in:float, eta:float, e_rsqrt, var_in:float=0.0,
             meet:float=0.0) -> tuple[np.ndarray, np.ndarray]:
  """(y, bound) per element for operand rounding (u_in, eta) and fp32 arithmetic. e_rsqrt(u, r): the error of the
  rsqrt step on an exact input u; var_in: the relative rounding of var where the rsqrt reads it as an operand;
  meet: the relative rounding of r~ narrowed where it meets a computed value."""
  mu, e_mu, var, e_var = stats_bound(x, u_in, eta)
  d = x - mu
  u = var + EPS
  e_u = e_var + U32 * (u + e_var) + (var_in * (var + e_var) + eta)               # + eps in fp32; var as an operand
  assert (e_u < u / 2).all()
  r = 1 / np.sqrt(u)
  e_r = e_rsqrt(u, r) + 0.5 * e_u * (u - e_u) ** -1.5 * 1.01                   # |d(u^-1/2)/du| <= (u - e_u)^-3/2 / 2
  r_hi = r + e_r
  # the affine kernel with mu~, r~ as they are: d' = fl(fl16 x - fl16 mu~), p1 = d' fl16(w), p2 = p1 r~ (r~ narrowed
  # if it meets), y = p2 + fl16(b)
  W, B = per_channel(w), per_channel(b)
  dd = np.abs(d) + e_mu
  e_d3 = u_in * (np.abs(x) + np.abs(mu) + e_mu) + 2 * eta + U32 * dd * 1.01
  e_w = u_in * np.abs(W) + eta
  p1 = dd * np.abs(W)
  e_p1 = e_d3 * np.abs(W) + dd * e_w + e_d3 * e_w + U32 * (p1 + e_d3 * (np.abs(W) + e_w) + dd * e_w)
  p2 = (p1 + e_p1) * r_hi
  e_p2 = e_p1 * r_hi + (meet + U32 + meet * U32) * p2
  y = d * W * r + B
  e_y = e_p2 + u_in * np.abs(B) + eta + U32 * (np.abs(y) + e_p2 + u_in * np.abs(B) + eta)
  return y, np.abs(W) * (e_mu * r_hi + np.abs(d) * e_r) + e_y

def cpu_rsqrt(u, r): return 2.01 * U32 * r   # sqrt and the division each rounded once in fp32

# Channel stds whose batch variances lie in one window of the rsqrt table the variance kernel's epilogue uses, [1, 65]
# (rules/tables.py TABLE_SCALES: windows of ratio 64), and in one of the Newton rsqrt's, [2^-6, 16] (RSQRT_WINDOWS);
# test_variances_beyond_one_window shows what happens when they do not.
STD_RANGE = (1.2, 3.8)

def bn_params(shape, seed:int, std_range:tuple[float, float]=STD_RANGE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """x with each channel's batch mean and std exactly a drawn value (z normalized per channel, then scaled), w, b."""
  rng = np.random.default_rng(seed)
  C = shape[1]
  z = rng.standard_normal(shape)
  z = (z - z.mean(AXES, keepdims=True)) / z.std(AXES, keepdims=True)
  x = (z * rng.uniform(*std_range, (1, C, 1, 1)) + rng.uniform(-2, 2, (1, C, 1, 1))).astype(np.float32)
  return x, rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)

def forward(device:str, x, w, b, running:bool):
  """nn.BatchNorm2d's forward in training on `device`, its inputs and state realized first: a call giving the output,
  or with `running` the output and the running statistics, realized together."""
  X, W, B = (Tensor(a, device=device).realize() for a in (x, w, b))
  bn = nn.BatchNorm2d(x.shape[1])
  bn.weight, bn.bias = W, B
  for t in (bn.running_mean, bn.running_var): t.replace(t.to(device).contiguous()).realize()
  def call():
    with Context(TRAINING=1):
      out = bn(X)
      Tensor.realize(out, *((bn.running_mean, bn.running_var) if running else ()))
    return (out.numpy(), bn.running_mean.numpy(), bn.running_var.numpy()) if running else out.numpy()
  return call

def rsqrt_tables(summaries:list[str]) -> list:
  """The rsqrt tables (windows') whose measured errors the variance kernel states: one per program of a call over
  several windows; windows that print alike: each."""
  stated = {x.split(")")[0] for s in summaries for x in s.split("lut(reciprocal, error ")[1:]}
  tables = []
  for w in range(RANGE_WINDOWS):
    try: t = table_of_window(rsqrt_fn, "reciprocal", w)
    except NoWindow: continue
    if t is not None and f"{t.max_abs_error:.2g}" in stated: tables.append(t)
  assert tables, stated
  return tables

def rsqrt_table_error(summaries:list[str]) -> float:
  """The measured error of the rsqrt table (the window's) the variance kernel states; windows that print alike: the worst."""
  assert sum(s.count("lut(reciprocal, error ") for s in summaries) == 1, summaries
  return max(t.max_abs_error for t in rsqrt_tables(summaries))

def newton_error(summaries:list[str]) -> float:
  """The measured relative error of the rsqrt window that the affine kernel states."""
  errs = [nt.rel_error for w in range(len(NEWTON_FUNCTIONS["rsqrt"][1])) if (nt := newton("rsqrt", w)) is not None
          and any(f"rsqrt(seed on {nt.domain} + {nt.steps} Newton steps" in s for s in summaries)]
  assert len(errs) == 1, summaries
  return errs[0]

SHAPES = [(4, 16, 8, 8), (2, 32, 14, 14), (8, 4, 3, 5)]

@pytest.mark.parametrize("shape", SHAPES)
def test_batchnorm_training_output(shape):
  """The output alone: mean, variance with its rsqrt table, affine; every kernel on the NPU."""
  x, w, b = bn_params(shape, shape[1])
  r, summaries = all_npu(forward("ROCKET", x, w, b, running=False))
  assert len(summaries) == 3 and any("lut(reciprocal" in s for s in summaries), summaries
  c = forward("CPU", x, w, b, running=False)()
  T = rsqrt_table_error(summaries)
  xd = x.astype(np.float64)
  _, e_npu = bn_bound(xd, w, b, U16, ETA16, lambda u, r: T + U16 * (r + T) + ETA16)
  _, e_cpu = bn_bound(xd, w, b, 0.0, 0.0, cpu_rsqrt)
  nm.assert_within(r, c, e_npu + e_cpu, f"batchnorm {shape}")

@pytest.mark.parametrize("shape", SHAPES[:2])
def test_batchnorm_training_with_running_statistics(shape):
  """The output and the running statistics realized together: var is stored, the affine kernel refines 1/sqrt(var + eps)
  by Newton steps (var read as an fp16 operand, r~ narrowed where it meets (x - mu) w), and the running statistics'
  kernel (momentum updates) runs on the NPU too; running_mean = 0.9 * 0 + 0.1 mu, running_var = 0.9 + 0.1 n/(n-1) var."""
  check_with_running_statistics(*bn_params(shape, shape[1] + 1), f"batchnorm {shape} with running statistics")

def check_with_running_statistics(x:np.ndarray, w:np.ndarray, b:np.ndarray, what:str) -> None:
  (r, rm, rv), summaries = all_npu(forward("ROCKET", x, w, b, running=True))
  assert len(summaries) == 4, summaries
  c, cm, cv = forward("CPU", x, w, b, running=True)()
  rho = newton_error(summaries)
  xd = x.astype(np.float64)
  _, e_npu = bn_bound(xd, w, b, U16, ETA16, lambda u, r: rho * r, var_in=U16, meet=U16)
  _, e_cpu = bn_bound(xd, w, b, 0.0, 0.0, cpu_rsqrt)
  nm.assert_within(r, c, e_npu + e_cpu, what)
  # the running statistics: k * stat (k = 0.1, 0.1 n/(n-1): fp16 coefficients in the CORE, fp32 constants on the CPU)
  n = x.size // x.shape[1]
  mu, e_mu, _, _ = (v.ravel() for v in stats_bound(xd, U16, ETA16))
  e_mu_c = stats_bound(xd, 0.0, 0.0)[1].ravel()
  # 0.1 mu~: mu~ rounded to fp16 (an operand), 0.1 to fp16 (a coefficient), the fp32 product; the CPU: 0.9 * 0 + 0.1 mu
  k = 0.1
  e_rm = k * (e_mu + U16 * (np.abs(mu) + e_mu) + ETA16) * (1 + U16) + k * U16 * np.abs(mu) + 2 * U32 * k * (np.abs(mu) + e_mu)
  nm.assert_within(rm, cm, e_rm + k * e_mu_c + 3 * U32 * k * (np.abs(mu) + e_mu_c), "running_mean")
  _, _, var, e_var = (v.ravel() for v in stats_bound(xd, U16, ETA16))
  e_var_c = stats_bound(xd, 0.0, 0.0)[3].ravel()
  kv = 0.1 * n / (n - 1)
  # 0.9 * 1 + kv var~: var~ rounded to fp16 (an operand), 0.9 and kv to fp16 (coefficients: u16 each; the old running
  # var, 1, is exact), the fp32 sum and result
  e_rv = kv * (e_var + U16 * (var + e_var) + ETA16) + U16 * (0.9 + kv * (var + e_var)) + 2 * U32 * (0.9 + kv * (var + e_var)) * (1 + U16)
  e_rv_c = kv * e_var_c + 4 * U32 * (0.9 + kv * var)
  nm.assert_within(rv, cv, e_rv + e_rv_c, "running_var")

def test_variances_beyond_one_window():
  """Channel variances from ~0.25 to ~9 (ratio 36, but across the windows' edges: [1/16, 4] and [1, 65]): no window of
  the epilogue's rsqrt table holds them all, so the variance kernel takes each channel's result from the first window
  whose table holds its u (program elements, rules/contraction.py _element): all-NPU in strict mode, over >= 2 windows,
  each channel within the bound of the worst stated window whose domain meets [u/2, 3u/2] (bn_bound's e_u < u/2: the
  NPU's u lies there, in its window's domain). (The affine kernel's own Newton rsqrt has windows of ratio 1024.)"""
  shape = (4, 16, 8, 8)
  x, w, b = bn_params(shape, 7, (0.5, 3.0))
  r, summaries = all_npu(forward("ROCKET", x, w, b, running=False))
  var_rec = next(rec for rec in report.records() if "lut(reciprocal" in rec.reason)
  assert len(var_rec.detail) >= 2 and sum(var_rec.detail.values()) == shape[1], var_rec
  tables = rsqrt_tables(summaries)
  def e_rsqrt(u, r):
    T = np.full(u.shape, -np.inf)
    for t in tables: T = np.where((1.5 * u >= t.domain[0]) & (0.5 * u <= t.domain[1]), np.maximum(T, t.max_abs_error), T)
    assert np.isfinite(T).all(), "a channel's u in no stated window"
    return T + U16 * (r + T) + ETA16
  c = forward("CPU", x, w, b, running=False)()
  xd = x.astype(np.float64)
  _, e_npu = bn_bound(xd, w, b, U16, ETA16, e_rsqrt)
  nm.assert_within(r, c, e_npu + bn_bound(xd, w, b, 0.0, 0.0, cpu_rsqrt)[1], "batchnorm across windows")
  check_with_running_statistics(x, w, b, "batchnorm across windows with running statistics")

# The variance's gradient, sum(g w (x - mu)) * (-1/n) / (2 s^3) per channel: a contraction whose A operand is computed
# (the product, written into the A tiles by elementwise stages) and whose epilogue scales each output row by a value of
# loaded per-channel operands; the computed A cannot carry that slope in its packing, so the tile's EW stage multiplies
# by an fp32 tile of it (rules/contraction.py row_scale; test_row_scale_of_a_computed_operand bounds that path).
ROW_SCALE = "+row scale (EW mul by an fp32 tile)"

def test_batchnorm_training_backward():
  """The gradients of sum(y * g) for x, w, b through nn.BatchNorm2d in training: every kernel on the NPU (strict mode),
  the variance's gradient with its row scale; b's gradient, sum(g) per channel (a contraction with ones), within
  numerics.bound_sum of the NPU and the CPU; w's within grad_w_bound; x's (through the variance's gradient and a
  15-stage elementwise kernel) only checked finite."""
  shape = (4, 16, 8, 8)
  x, w, b = bn_params(shape, 11)
  g = np.random.default_rng(12).standard_normal(shape).astype(np.float32)
  def grads(device:str):
    X, W, B, G = (Tensor(a, device=device).realize() for a in (x, w, b, g))
    for t in (X, W, B): t.requires_grad = True
    bn = nn.BatchNorm2d(shape[1], track_running_stats=False)
    bn.weight, bn.bias = W, B
    def call():
      with Context(TRAINING=1): gs = (bn(X) * G).sum().gradient(X, W, B)
      Tensor.realize(*gs)
      return [t.numpy() for t in gs]
    return call
  call = grads("ROCKET")
  (gx, gw, gb), summaries = all_npu(call)
  assert any(ROW_SCALE in s for s in summaries), summaries
  cx, cw, cb = grads("CPU")()
  assert np.isfinite(gx).all()   # gx: through the variance's gradient and a 15-stage kernel, no bound derived here
  gd = g.astype(np.float64)
  S, n = np.abs(gd).sum(AXES), g.size // shape[1]
  nm.assert_within(gb, cb, nm.bound_sum(nm.rocket("float32"), S, n) + nm.bound_sum(nm.cpu("float32"), S, n), "grad b")
  xd = x.astype(np.float64)
  nm.assert_within(gw, cw, grad_w_bound(xd, gd, U16, ETA16, npu_sqrt(summaries), newton_error_of("reciprocal", summaries))
                   + grad_w_bound(xd, gd, 0.0, 0.0, lambda u, s: U32 * s, U32), "grad w")

def npu_sqrt(summaries:list[str]):
  """The std kernel's sqrt step (a table epilogue of the window the program states, tests/test_blocks_on_npu.py
  window_table): its measured error for every real input as the NPU rounds it, plus its fp16 output."""
  T = window_table(np.sqrt, "sqrt", summaries).max_abs_error
  return lambda u, s: T + U16 * (s + T) + ETA16

def newton_error_of(kind:str, summaries:list[str]) -> float:
  errs = [nt.rel_error for w in range(len(NEWTON_FUNCTIONS[kind][1])) if (nt := newton(kind, w)) is not None
          and any(f"{kind}(seed on {nt.domain} + {nt.steps} Newton steps" in s for s in summaries)]
  assert len(errs) == 1, summaries
  return errs[0]

def grad_w_bound(x:np.ndarray, g:np.ndarray, u_in:float, eta:float, e_sqrt, rho:float) -> np.ndarray:
  """w's gradient sum(g (x - mu) / s) per channel, s = sqrt(var + eps) (the backward recomputes s with a sqrt step
  e_sqrt(u, s), then 1/s within rho relative: a Newton reciprocal of the fp16 s on the NPU, an fp32 division on the
  CPU): each term from d' (within ed of x - mu~), 1/s~ (fp32), g rounded (u_in), two fp32 products ((1/s~) g, then
  d' times that: each a linear form times a computed value, no narrowing), the term narrowed to fp16 for the A tiles
  (u_in, eta); an fp32 sum; then mu~
  and s~ as the NPU has them: sum(g (x - mu~)) / s~ = (gw s - (mu~ - mu) sum g) / s~, within |sum g| e_mu / s~ +
  |gw| e_s / s~ of gw (s~ >= s - e_s)."""
  mu, e_mu, var, e_var = stats_bound(x, u_in, eta)
  u = var + EPS
  e_u = e_var + U32 * (u + e_var)
  s = np.sqrt(u)
  e_s = e_sqrt(u, s) + e_u / (2 * np.sqrt(u - e_u))
  d = x - mu
  ed = u_in * (np.abs(x) + np.abs(mu) + e_mu) + 2 * eta + U32 * (np.abs(d) + e_mu)
  inv = 1 / (s - e_s)                                                   # >= 1/s~
  rel = (1 + rho) * (1 + u_in) ** 2 * (1 + U32) ** 2 - 1
  a = np.abs(g * d) * inv
  e_a = (ed * np.abs(g) * inv) * (1 + rel) + a * rel + eta
  n = x.size // x.shape[1]
  e_sum = (e_a.sum(AXES) + nm.gamma(n - 1, U32) * (a + e_a).sum(AXES)) * (1 + U32) + U32 * (a + e_a).sum(AXES)
  gw = np.abs((g * d).sum(AXES)) / s.ravel()
  e_stats = np.abs(g.sum(AXES)) * e_mu.ravel() * inv.ravel() + gw * e_s.ravel() * inv.ravel()
  return e_sum + e_stats

@pytest.mark.parametrize("relu", [False, True])
def test_row_scale_of_a_computed_operand(relu):
  """sum_k (x + y)[c, k] * s[c] (and its ReLU): A = x + y computed into the A tiles (one stage: fp16 operands, an fp32
  sum narrowed to fp16), summed in fp32, then the EW stage's multiply by the fp32 row scale s (and its ReLU after it,
  1-Lipschitz). Per term t = x + y: |t~ - t| <= e1 + u32 (|t| + e1) rounded again by the fp16 narrowing, e1 = u16 (|x| +
  |y|) + 2 eta16; the fp32 sum adds gamma(K-1) sum(|t| + e_t); the product |s| E + u32 |s| (|acc| + E). The CPU: each
  t and the sum in fp32, the product rounded."""
  rng = np.random.default_rng(13)
  C, K = 20, 150
  x, y = rng.standard_normal((C, K)).astype(np.float32), rng.standard_normal((C, K)).astype(np.float32)
  s = rng.uniform(-3, 3, C).astype(np.float32)
  f = lambda x, y, s: (((x + y).sum(1) * s).relu() if relu else (x + y).sum(1) * s)
  X, Y, S = (Tensor(a, device="ROCKET").realize() for a in (x, y, s))
  r, summaries = all_npu(lambda: f(X, Y, S).numpy())
  assert len(summaries) == 1 and ROW_SCALE in summaries[0] and "+computed A" in summaries[0], summaries
  c = f(*(Tensor(a, device="CPU") for a in (x, y, s))).numpy()
  xd, yd, sd = (a.astype(np.float64) for a in (x, y, s))
  t, ab = xd + yd, np.abs(xd) + np.abs(yd)
  e1 = U16 * ab + 2 * ETA16
  e2 = e1 + U32 * (np.abs(t) + e1)
  e_t = e2 + U16 * (np.abs(t) + e2) + ETA16
  acc = t.sum(1)
  E = e_t.sum(1) + nm.gamma(K - 1, U32) * (np.abs(t) + e_t).sum(1)
  b = np.abs(sd) * E + U32 * np.abs(sd) * (np.abs(acc) + E)
  b_cpu = np.abs(sd) * (U32 * np.abs(t).sum(1) + nm.gamma(K - 1, U32) * (np.abs(t) * (1 + U32)).sum(1)) + U32 * np.abs(sd * acc) * (1 + U32)
  nm.assert_within(r, c, b + b_cpu, f"row scale{' + relu' if relu else ''}")
  assert (r != 0).any() and (not relu or (r == 0).any())
