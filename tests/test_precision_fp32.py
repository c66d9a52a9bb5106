"""ROCKET_PRECISION=fp32: float32 contractions on the NPU in split precision (rules/contraction.py _split_tasks).

Every float32 value is packed as fp16 halves hi + 2^-11 lo; one task per chunk sums both cross terms (hi x lo, lo x hi,
scaled back in the BS stage), one sums hi x hi, and the fp32 partials chain through the EW stage. The tests select the
fp32 renderer in-process (DEV=ROCKET:FP32, what ROCKET_PRECISION=fp32 makes the default), run in strict mode
(ROCKET_FALLBACK=0: the NPU ran the kernel), check the report names the split-precision program, and assert the
result within numerics.bound_dot_split of a float64 reference and, with the CPU's own bound added, of tinygrad's CPU
float32 result. The measured error is printed by test_measured_error (pytest -s)."""
import re
import numpy as np
import pytest
from hypothesis import given, strategies as st
from tinygrad import Tensor, Device, nn
from tinygrad.helpers import Context
from tinygrad_rocket import report
from tinygrad_rocket.rules import contraction
from tinygrad_rocket.device import NONFINITE_OPERAND_REASON
import numerics as nm
from helpers import env

SPLIT = re.compile(r"split-precision fp16 matmul task\(s\) of \d+x\d+x\d+ \(hi\+lo cross terms\) and \d+x(\d+)x\d+ .*K in (\d+) chunk")

def fp32_run(fn, *arrays:np.ndarray, strict:bool=True) -> np.ndarray:
  """fn on ROCKET with the fp32-precision renderer (DEV=ROCKET:FP32 in this process), strict unless told."""
  with env(ROCKET_FALLBACK="0" if strict else "1"), Context(DEV="ROCKET:FP32"):
    assert Device["ROCKET"].renderer.precision == "fp32"
    return fn(*[Tensor(a, device="ROCKET") for a in arrays]).numpy()

def cpu_run(fn, *arrays:np.ndarray) -> np.ndarray: return fn(*[Tensor(a, device="CPU") for a in arrays]).numpy()

def split_records() -> list[tuple[int, int]]:
  """(chunk, chunks) of each split-precision program the report holds."""
  return [(int(m.group(1)), int(m.group(2))) for r in report.records() if r.engine == "npu" and (m := SPLIT.search(r.reason))]

def f64(fn, *arrays): return cpu_run(fn, *[np.asarray(a, np.float64) for a in arrays])

def check(name:str, fn, arrays, S, n:int, amax:float, cpu_bound, exact=None):
  """Strict-mode ROCKET run; result within bound_dot_split of the float64 reference `exact` (default: fn in float64)
  and within bound_dot_split + cpu_bound of tinygrad's CPU result. Returns max |err| / S in units of 2^-24."""
  report.reset()
  r = fp32_run(fn, *arrays)
  (chunk, chunks), = split_records() or [(None, None)]
  assert chunk is not None, f"{name}: no split-precision program ran: {report.records()}"
  b = nm.bound_dot_split(S, n, amax, chunk, chunks)
  exact = f64(fn, *arrays) if exact is None else exact
  nm.assert_within(r, exact, b, f"{name} vs float64")
  nm.assert_within(r, cpu_run(fn, *arrays), b + cpu_bound, f"{name} vs CPU")
  return float((np.abs(r - exact) / np.where(S > 0, S, 1)).max() / nm.U32)

def _uniform(rng, shapes, lo=-4.0, hi=4.0): return [rng.uniform(lo, hi, s).astype(np.float32) for s in shapes]

def test_shift_agrees_with_the_rule():
  assert nm.SPLIT_SHIFT == contraction.SPLIT_SHIFT

@given(M=st.integers(1, 40), K=st.integers(2, 300), N=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_matmul(M, K, N, seed):
  """(K = 1 is an elementwise product in tinygrad, not a reduction: the elementwise rule, which keeps float32 on the CPU.)"""
  A, B = _uniform(np.random.default_rng(seed), [(M, K), (K, N)])
  S = np.abs(A).astype(np.float64) @ np.abs(B)
  amax = float(np.abs(A).max() + np.abs(B).max())
  check("matmul", lambda a, b: a @ b, [A, B], S, K, amax, nm.bound_matmul(nm.cpu("float32"), A, B))

@pytest.mark.parametrize("M,K,N", [(13, 9000, 5), (20, 17000, 3)])
def test_matmul_k_split(M, K, N):
  """K beyond one task's 2*kc <= 8192 columns: the chain holds several cross and hi chunks."""
  A, B = _uniform(np.random.default_rng(K), [(M, K), (K, N)], -1, 1)
  S = np.abs(A).astype(np.float64) @ np.abs(B)
  with Context(SPLIT_REDUCEOP=0):
    check("k split", lambda a, b: a @ b, [A, B], S, K, float(np.abs(A).max() + np.abs(B).max()), nm.bound_matmul(nm.cpu("float32"), A, B))
  assert split_records()[0][1] > 1

def test_batched_matmul():
  A, B = _uniform(np.random.default_rng(1), [(3, 17, 45), (3, 45, 9)])
  S = np.abs(A).astype(np.float64) @ np.abs(B)
  check("bmm", lambda a, b: a @ b, [A, B], S, 45, float(np.abs(A).max() + np.abs(B).max()), nm.bound_matmul(nm.cpu("float32"), A, B))

CONVS = {  # (x shape, w shape, kwargs): the conv rule refuses float32 under fp32 precision, the contraction rule takes them
  "pad1": ((2, 3, 7, 6), (5, 3, 3, 3), dict(padding=1)),
  "stride2": ((1, 4, 9, 9), (6, 4, 3, 3), dict(stride=2, padding=1)),
  "depthwise": ((1, 4, 6, 6), (4, 1, 3, 3), dict(groups=4, padding=1)),
}

@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv2d(name):
  xs, ws, kw = CONVS[name]
  x, w = _uniform(np.random.default_rng(len(name)), [xs, ws])
  fn = lambda x, w: x.conv2d(w, **kw)
  S = f64(fn, np.abs(x), np.abs(w))
  n = ws[1] * ws[2] * ws[3]
  check(name, fn, [x, w], S, n, float(np.abs(x).max() + np.abs(w).max()), nm.bound_dot(nm.cpu("float32"), S, n, 0.0))

def test_linear_bias_relu():
  """The bias is one more K column (ones against the bias' hi and lo halves); ReLU runs in the last task's EW stage."""
  x, w, b = _uniform(np.random.default_rng(2), [(9, 70), (23, 70), (23,)])
  fn = lambda x, w, b: x.linear(w.T, b).relu()
  S = np.abs(x).astype(np.float64) @ np.abs(w).T + np.abs(b)
  amax = float(np.abs(x).max() + np.abs(w).max() + np.abs(b).max())
  check("linear+bias+relu", fn, [x, w, b], S, 71, amax, nm.bound_dot(nm.cpu("float32"), S, 71, 0.0))

def test_residual_relu6():
  """A residual rides on identity-block K columns (its hi and lo halves against the identity); relu6 is the EW clip."""
  a, b, r = _uniform(np.random.default_rng(3), [(12, 20), (20, 9), (12, 9)])
  fn = lambda a, b, r: (a @ b + r).relu6()
  S = np.abs(a).astype(np.float64) @ np.abs(b) + np.abs(r)
  amax = float(np.abs(a).max() + np.abs(b).max() + np.abs(r).max())
  # relu6 on the CPU is relu(y) - relu(y - 6): two more fp32 roundings of values <= |y| + 6
  check("residual+relu6", fn, [a, b, r], S, 21, amax, nm.bound_dot(nm.cpu("float32"), S, 21, 0.0) + 2 * nm.U32 * (S + 6))

def test_conv_batchnorm_relu():
  """conv -> BatchNorm (eval) -> ReLU: the per-channel slope s is folded into the weights in float64 before the split
  (hi and lo of w*s) and the intercept t is a K column. Reference: the folded form in float64 (as test_contraction)."""
  rng = np.random.default_rng(5)
  x, w = _uniform(rng, [(2, 3, 7, 7), (8, 3, 3, 3)], -2, 2)
  gamma, beta = rng.uniform(0.5, 2, 8).astype(np.float32), rng.uniform(-1, 1, 8).astype(np.float32)
  mean, var = rng.uniform(-1, 1, 8).astype(np.float32), rng.uniform(0.1, 2, 8).astype(np.float32)
  def fn(x, w, gamma, beta, mean, var):
    bn = nn.BatchNorm(8)
    bn.weight, bn.bias, bn.running_mean, bn.running_var = gamma, beta, mean, var
    return bn(x.conv2d(w, padding=1)).relu()
  arrays = [x, w, gamma, beta, mean, var]
  s = gamma / np.sqrt(var.astype(np.float64) + 1e-5)
  t = beta - mean * s
  ws = w * s[:, None, None, None]
  conv = lambda x, w: x.conv2d(w, padding=1)
  exact = np.maximum(f64(conv, x, ws) + t.reshape(1, -1, 1, 1), 0)
  S = f64(conv, np.abs(x), np.abs(ws)) + np.abs(t).reshape(1, -1, 1, 1)
  amax = float(np.abs(x).max() + np.abs(ws).max() + np.abs(t).max())
  # CPU: its fp32 conv (27 terms) then (acc - mean) * gamma * rsqrt(var + eps) + beta in fp32: 5 roundings (test_contraction)
  acc_abs = f64(conv, np.abs(x), np.abs(w))
  sb = s.reshape(1, -1, 1, 1)
  b_cpu = nm.gamma(27, nm.U32) * acc_abs * sb + 6 * nm.U32 * ((acc_abs + np.abs(mean).reshape(1, -1, 1, 1)) * sb + np.abs(beta).reshape(1, -1, 1, 1))
  check("conv+bn+relu", fn, arrays, S, 28, amax, b_cpu, exact=exact)

def test_float16_tensors_unaffected():
  """float16 operands are already exact fp16: no split, the default program."""
  A, B = (a.astype(np.float16) for a in _uniform(np.random.default_rng(6), [(11, 50), (50, 7)]))
  report.reset()
  fp32_run(lambda a, b: a @ b, A, B)
  assert report.records() and all(r.engine == "npu" and "split" not in r.reason for r in report.records())

@pytest.mark.parametrize("name,fn,why", [
  ("sigmoid", lambda a, b: (a @ b).sigmoid(), "activation epilogue"),
  ("leaky", lambda a, b: (a @ b).leaky_relu(0.1), "leaky ReLU"),
  ("computed", lambda a, b: a.relu() @ b, "computed operand"),
])
def test_unsplit_epilogues_refused_with_reason(name, fn, why):
  """What the split does not cover falls back with the reason under fp32 precision (never an fp16-accurate answer)."""
  A, B = _uniform(np.random.default_rng(7), [(6, 33), (33, 5)])
  with pytest.raises(Exception, match=f"ROCKET_PRECISION=fp32.*{why}|{why}.*ROCKET_PRECISION=fp32|ROCKET_PRECISION=fp32: .*{name}"):
    fp32_run(fn, A, B)
  report.reset()
  r = fp32_run(fn, A, B, strict=False)
  assert any(rec.engine == "fallback" and "ROCKET_PRECISION=fp32" in rec.reason for rec in report.records())
  np.testing.assert_array_equal(r, cpu_run(fn, A, B))   # the fallback is tinygrad's C code, as on the CPU device

def test_nonfinite_operand_takes_the_cpu_path():
  """|x| > 65504 has no fp16 hi half: the call runs the C code (the packers' finite check)."""
  A, B = _uniform(np.random.default_rng(8), [(5, 40), (40, 6)])
  A[2, 3] = 1e5
  report.reset()
  r = fp32_run(lambda a, b: a @ b, A, B, strict=False)
  assert any(rec.engine == "fallback" and rec.reason == NONFINITE_OPERAND_REASON for rec in report.records())
  np.testing.assert_array_equal(r, cpu_run(lambda a, b: a @ b, A, B))

def test_resident_halves_repacked_only_when_written():
  """Both halves of the packed weights stay resident by the weights' version: a second call packs neither, and a
  write to the weights repacks both (the result follows the new weights)."""
  A, B, B2 = _uniform(np.random.default_rng(9), [(14, 60), (60, 10), (60, 10)])
  with env(ROCKET_FALLBACK="0"), Context(DEV="ROCKET:FP32"):
    dev = Device["ROCKET"]
    a, b = Tensor(A, device="ROCKET").realize(), Tensor(B, device="ROCKET").realize()
    (a @ b).numpy()
    skipped = dev.layout_stats.pack_skipped
    r1 = (a @ b).numpy()
    assert dev.layout_stats.pack_skipped == skipped + 2   # A's and B's tiles (each with its hi and lo halves)
    b.assign(Tensor(B2, device="ROCKET")).realize()
    r2 = (a @ b).numpy()
  for r, W in ((r1, B), (r2, B2)):
    S = np.abs(A).astype(np.float64) @ np.abs(W)
    nm.assert_within(r, A.astype(np.float64) @ W, nm.bound_dot_split(S, 60, float(np.abs(A).max() + np.abs(W).max()), 64, 1), "resident")

def test_measured_error():
  """The achieved error over random data, in units of 2^-24 * sum|a||b|, against the CPU's float32 on the same data;
  and the derived bound is far below the default (fp16-operand) bound."""
  rng = np.random.default_rng(10)
  errs = []
  for M, K, N in ((32, 300, 16), (64, 1024, 48)):
    A, B = (rng.standard_normal(s).astype(np.float32) for s in ((M, K), (K, N)))
    S = np.abs(A).astype(np.float64) @ np.abs(B)
    amax = float(np.abs(A).max() + np.abs(B).max())
    e = check("measured", lambda a, b: a @ b, [A, B], S, K, amax, nm.bound_matmul(nm.cpu("float32"), A, B))
    e_cpu = float((np.abs(cpu_run(lambda a, b: a @ b, A, B) - A.astype(np.float64) @ B) / S).max() / nm.U32)
    (chunk, chunks), = split_records()
    ratio = nm.bound_dot_split(S, K, amax, chunk, chunks).max() / nm.bound_dot(nm.rocket("float32"), S, K, amax).max()
    errs.append((M, K, N, e, e_cpu, ratio))
    assert ratio < 1 / 20
  print("\nsplit precision, max |err| / sum|a||b| in 2^-24 (ROCKET, CPU float32), bound ratio vs default:", errs)

def test_mean_constant_operand():
  """A mean is a contraction with a constant operand whose slope 1/n is folded into it: 1/n is not an fp16 value, so
  its lo half carries the rest (a default-precision mean rounds 1/n to fp16)."""
  x, = _uniform(np.random.default_rng(11), [(7, 300)])
  S = np.abs(x).astype(np.float64).sum(1) / 300
  check("mean", lambda x: x.mean(1), [x], S, 300, float(np.abs(x).max()) + 1 / 300, nm.bound_sum(nm.cpu("float32"), S * 300, 300, mean=True))
