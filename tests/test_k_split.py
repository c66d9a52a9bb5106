"""Contractions whose K does not fit one task (rules/contraction.py plan_k_split): K in chunks, one task per chunk, the
partial sums accumulated on the NPU (task j's DPU adds task j-1's fp32 partial as a 32-bit per-pixel EW operand and
writes the sum to the other of two buffers; the last task applies ReLU/clip after the add).

Strict mode (ROCKET_FALLBACK=0) proves the NPU ran every kernel, the report proves K was split, and results are
compared with tinygrad's CPU device within numerics.bound_dot_chunked (the fp32 accumulation within a chunk plus one
rounding per chunk boundary). tinygrad itself splits a reduction whose K is >= 32768 times its output size into two
kernels (SPLIT_REDUCEOP); the K = 40000 cases turn that off so that the whole K reaches the rule, and one case keeps it
to show tinygrad's own form runs on the NPU as well."""
import re
import numpy as np
import pytest
from hypothesis import given, strategies as st
from tinygrad import Tensor, Device
from tinygrad.helpers import Context
from tinygrad_rocket import report
from tinygrad_rocket.emu import cost
from tinygrad_rocket.emu.programs import Session, pack_cube, unpack_cube, pack_weights
from tinygrad_rocket.ops.matmul import (MatmulTile, matmul_task, EwOperand, MAX_KERNEL_BYTES, CBUF_BANKS, CBUF_BANK_BYTES,
                                        EW_MIN_PLANE_ATOMS, K_ALIGN, N_ALIGN, plan_tiles)
from tinygrad_rocket.rules.common import MAX_TASKS
from tinygrad_rocket.rules.contraction import plan_k_split, _split_seconds
import numerics as nm
from helpers import env, rocket_and_cpu

SPLIT = re.compile(r"as (\d+) fp16 matmul task\(s\) of (\d+)x(\d+)x(\d+), K in (\d+) chunks of (\d+)")

# name: (fn, shapes, products per output beyond K (a bias or residual is one more product, x * 1))
CASES = {
  "matmul": (lambda a, b: a @ b, lambda M, K, N, B: [(M, K), (K, N)], 0),
  "bmm_relu": (lambda a, b: (a @ b).relu(), lambda M, K, N, B: [(B, M, K), (B, K, N)], 0),
  "linear_bias_relu6": (lambda a, w, b: a.linear(w.T, b).relu6(), lambda M, K, N, B: [(M, K), (N, K), (N,)], 1),
  "residual_relu": (lambda a, b, r: (a @ b + r).relu(), lambda M, K, N, B: [(B, M, K), (B, K, N), (B, M, N)], 1),
  "scale_shift": (lambda a, b: (a @ b) * 0.5 - 3, lambda M, K, N, B: [(M, K), (K, N)], 1),
}

def _S(name, arrays):
  """sum |a||b| (+ |bias| / |residual| / |3|) per output, in float64, before any ReLU/clip (which only select)."""
  ab = [np.abs(a).astype(np.float64) for a in arrays]
  if name == "linear_bias_relu6": return ab[0] @ ab[1].T + ab[2]
  if name == "residual_relu": return ab[0] @ ab[1] + ab[2]
  if name == "scale_shift": return 0.5 * (ab[0] @ ab[1]) + 3
  return ab[0] @ ab[1]

@pytest.mark.parametrize("name,M,K,N,B,dtype", [
  ("matmul", 37, 10000, 19, 1, "float32"),
  ("bmm_relu", 9, 20000, 7, 2, "float32"),
  ("linear_bias_relu6", 13, 10000, 21, 1, "float16"),
  ("residual_relu", 5, 20000, 11, 2, "float16"),
  ("scale_shift", 3, 40000, 5, 1, "float32"),
  ("matmul", 23, 40000, 9, 1, "float16"),
  ("residual_relu", 11, 40000, 3, 2, "float32"),
  ("residual_relu", 300, 17000, 100, 1, "float32"),  # 112-kernel tiles, chunks of 416: the identity block spans two
])
def test_k_split_on_npu(name, M, K, N, B, dtype):
  fn, shapes, extra = CASES[name]
  rng = np.random.default_rng(K + M)
  arrays = [rng.uniform(-1, 1, s).astype(dtype) for s in shapes(M, K, N, B)]
  report.reset()
  with env(ROCKET_FALLBACK="0"), Context(SPLIT_REDUCEOP=0): r, c = rocket_and_cpu(fn, *arrays)
  (rec,) = report.records()
  m = SPLIT.search(rec.reason)
  assert rec.engine == "npu" and m, rec.reason
  tasks, rows, kc, n_t, chunks, kc2 = map(int, m.groups())
  assert kc == kc2 and chunks >= 2 and 2 * kc <= MAX_KERNEL_BYTES and chunks * kc >= K
  if (M, K) == (300, 17000): assert K // kc != (K + n_t - 1) // kc, "the residual's columns should span a chunk boundary"
  n, S = K + extra, _S(name, arrays)
  amax = sum(float(np.abs(a).max()) for a in arrays) + (3 if name == "scale_shift" else 0)
  bound = nm.bound_dot_chunked(nm.rocket(dtype), S, n, amax, kc, chunks) + nm.bound_dot(nm.cpu(dtype), S, n, amax)
  if name == "linear_bias_relu6": bound = bound + 2 * nm.U32 * (S + 6)  # the CPU's relu(y) - relu(y - 6): 2 roundings
  if name == "scale_shift": bound = bound + 2 * nm.U32 * S                # the CPU's *0.5 (exact) and -3: one rounding each
  nm.assert_within(r, c, bound, f"{name} M={M} K={K} N={N} batch={B} {dtype}")

def test_tinygrads_own_split_runs_on_the_npu():
  """With SPLIT_REDUCEOP on (tinygrad's default), K = 40000 reaches ROCKET as two kernels (250 x 160, then 250):
  both run on the NPU."""
  rng = np.random.default_rng(3)
  a, b = rng.uniform(-1, 1, (7, 40000)).astype(np.float32), rng.uniform(-1, 1, (40000, 5)).astype(np.float32)
  report.reset()
  with env(ROCKET_FALLBACK="0"): r, c = rocket_and_cpu(lambda x, y: x @ y, a, b)
  assert len(report.records()) == 2 and all(rec.engine == "npu" for rec in report.records())
  S = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
  amax = float(np.abs(a).max() + np.abs(b).max())
  # two kernels: partial sums of 160 products, rounded to fp32 (and stored), then sums of 250 of them: any order of
  # 40000 - 1 fp32 additions, as one dot of n = 40000 (plus one more rounding: the stored partial is fp32, exact)
  bound = nm.bound_dot(nm.rocket("float32"), S, 40000, amax) + nm.bound_dot(nm.cpu("float32"), S, 40000, amax)
  nm.assert_within(r, c, bound, "tinygrad-split 7x40000x5")

def test_wide_conv_takes_the_k_split():
  """A 3x3 conv over 2048 channels has 36 KiB of fp16 weights per kernel, more than one CBUF bank: the conv rule
  declines (no channel splitting), the contraction rule splits its K = 18432 over tasks."""
  rng = np.random.default_rng(5)
  x, w = rng.uniform(-1, 1, (1, 2048, 4, 5)).astype(np.float32), rng.uniform(-1, 1, (20, 2048, 3, 3)).astype(np.float32)
  fn = lambda x, w: x.conv2d(w, padding=1).relu()
  report.reset()
  with env(ROCKET_FALLBACK="0"): r, c = rocket_and_cpu(fn, x, w)
  (rec,) = report.records()
  m = SPLIT.search(rec.reason)
  assert rec.engine == "npu" and rec.reason.startswith("contraction") and m, rec.reason
  kc, chunks = int(m.group(3)), int(m.group(5))
  S = (lambda x, w: x.conv2d(w, padding=1))(*(Tensor(np.abs(v).astype(np.float64), device="CPU") for v in (x, w))).numpy()
  amax, n = float(np.abs(x).max() + np.abs(w).max()), 2048 * 9
  bound = nm.bound_dot_chunked(nm.rocket("float32"), S, n, amax, kc, chunks) + nm.bound_dot(nm.cpu("float32"), S, n, amax)
  nm.assert_within(r, c, bound, "conv 2048->20 3x3")

@given(M=st.integers(1, 3000), K=st.integers(1, 60000), N=st.integers(1, 3000), residual=st.booleans(), batches=st.integers(1, 3))
def test_plan_k_split_fits(M, K, N, residual, batches):
  """Every split plan fits the hardware: one bank of weights per kernel at most, feature + weight banks within the
  CBUF, >= EW_MIN_PLANE_ATOMS rows (the EW stage), aligned K chunks and kernels, at most MAX_TASKS tasks."""
  plan = plan_k_split(M, K, N, residual, batches)
  if isinstance(plan, str):
    assert "no tiling" in plan
    return
  rows, n_t, kc = plan
  assert kc % K_ALIGN == 0 and n_t % N_ALIGN == 0 and rows % 4 == 0 and rows >= EW_MIN_PLANE_ATOMS
  assert 2 * kc <= MAX_KERNEL_BYTES
  assert -(-rows * kc * 2 // CBUF_BANK_BYTES) + -(-n_t * kc * 2 // CBUF_BANK_BYTES) <= CBUF_BANKS
  chunks = -(-(K + (n_t if residual else 0)) // kc)
  assert batches * -(-M // rows) * -(-N // n_t) * chunks <= MAX_TASKS

def test_split_only_when_k_does_not_fit():
  """K that fits one task keeps plan_tiles' single-task tiles; the split starts where plan_tiles gives up."""
  assert not isinstance(plan_tiles(64, 8000, 64), str)
  assert isinstance(plan_tiles(64, 10000, 64), str) and not isinstance(plan_k_split(64, 10000, 64, False, 1), str)

@pytest.mark.skipif(not hasattr(getattr(Device["ROCKET"].driver, "file", None), "stats"), reason="needs the emulator's counters")
def test_split_time_is_the_emulated_time():
  """The planner's modeled time (_split_seconds) is the emulator's for the tasks that run, but for the regcmd fetch."""
  stats = Device["ROCKET"].driver.file.stats
  rng = np.random.default_rng(9)
  a, b = (Tensor(rng.uniform(-1, 1, s).astype(np.float32), device="ROCKET").realize() for s in ((45, 20000), (20000, 40)))
  report.reset()
  n0 = len(stats.tasks)
  with env(ROCKET_FALLBACK="0"), Context(SPLIT_REDUCEOP=0): (a @ b).realize()
  ts = stats.tasks[n0:]
  tasks, rows, kc, n_t, chunks, _ = map(int, SPLIT.search(report.records()[0].reason).groups())
  assert len(ts) == tasks
  clock = cost.MAINLINE_CLOCK_HZ
  emulated = sum(t.busy_seconds(clock) for t in ts) + (len(ts) - 1) * cost.PER_TASK_OVERHEAD_S
  fetch = sum(t.dma_read["PC"] for t in ts) / cost.DMA_BYTES_PER_S
  modeled = _split_seconds(rows, kc, n_t, chunks, tasks // chunks)
  assert emulated - fetch <= modeled <= emulated, (modeled, emulated, fetch)

# ***** ops level: the EW ReLUX added to ops/matmul's EwOperand for a split's last task *****

def test_ew_add_then_relux_on_the_emulator():
  """matmul_task with an fp32 EW operand, EW ReLU and ReLUX: clamp(acc + partial, 0, clip), in the float DPU model
  (fp32 accumulator, fp32 add; rocket_fp16_ew_ppu.md §7.3), exactly."""
  M, K, N, clip = 16, 64, 32, 0.75
  rng = np.random.default_rng(11)
  # multiples of 1/8 up to 1: the fp32 accumulation is exact in any order (partial sums: multiples of 2^-6 below 2^12)
  a, b = ((rng.integers(-8, 9, s) / 8).astype(np.float16) for s in ((M, K), (K, N)))
  e = rng.standard_normal((M, N)).astype(np.float32)
  t = MatmulTile(M, K, N)
  with Session() as s:
    s.buffer(1, pack_cube(a.T.reshape(K, M, 1), "fp16"))
    s.buffer(2, pack_weights(b.T.reshape(N, K, 1, 1), "fp16"))
    s.buffer(3, t.c.nbytes)
    s.buffer(4, pack_cube(e.T.reshape(N, M, 1), "fp32"))
    res = s.run([matmul_task(t, 1, 0, 2, 0, 3, 0, ew=EwOperand("add", 4, 0, 4, relu=True, clip=clip))], [3])
    assert res.failure is None, res.failure
    out = unpack_cube(res.out[3], "fp32", N, M, 1).reshape(N, M).T
  acc = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)
  np.testing.assert_array_equal(out, np.minimum(np.maximum(acc + e, 0), np.float32(clip)))
  with pytest.raises(AssertionError, match="ReLUX"): matmul_task(t, 1, 0, 2, 0, 3, 0, ew=EwOperand("add", 4, 0, 4, clip=clip))

def test_split_when_single_task_tiles_exceed_the_task_budget():
  """K = 8000 fits one task, but only as 8-row x 16-kernel tiles: a 768x8000x768 matmul would take 4608 tasks (more
  than MAX_TASKS, so it used to fall back); split over K it is 768x128x768 tiles, 63 tasks. Lowering only (the
  numerics of the split path are the tests above)."""
  from tinygrad_rocket.analysis import analyze
  from tinygrad_rocket.rules.contraction import lower_contraction
  from tinygrad_rocket._tg import Ops
  r, n = plan_tiles(768, 8000, 768)
  assert -(-768 // r) * -(-768 // n) > MAX_TASKS
  lin, _ = (Tensor.empty(768, 8000, device="ROCKET") @ Tensor.empty(8000, 768, device="ROCKET")).linear_with_vars()
  (k,) = [c.src[0] for c in lin.src if c.src[0].op is Ops.SINK]
  nest = analyze(k)
  nest.precision = "default"
  prg = lower_contraction(nest)
  m = SPLIT.search(prg.summary)
  assert m and int(m.group(1)) <= MAX_TASKS, prg.summary

# ***** the chunked bound itself *****

def test_chunked_bound_reduces_to_the_dot_bound():
  """One chunk of all n products is bound_dot; more chunks of fewer products never give a larger bound."""
  S, n, amax = np.array([1e3, 5.0]), 20000, 2.0
  for p in (nm.rocket("float32"), nm.rocket("float16")):
    np.testing.assert_array_equal(nm.bound_dot_chunked(p, S, n, amax, n, 1), nm.bound_dot(p, S, n, amax))
    assert (nm.bound_dot_chunked(p, S, n, amax, 2528, 8) <= nm.bound_dot(p, S, n, amax)).all()

def test_chunked_bound_holds_for_sequential_fp32_sums():
  """The accumulation part of the bound against a sum built to lose precision: each chunk summed term by term in fp32,
  the partials then added one by one in fp32 (the order the model allows). Every product is t = (1 + 2^-10)(1 + 3*2^-10)
  = 1 + 2^-8 + 3*2^-20 (fp16 operands, exact in fp32): once a running sum passes 64, each add drops the 3*2^-20, so
  the error grows with the chunk length, not only with the chunk boundaries; a bound that counted only the
  boundaries (gamma(chunks - 1)) fails here. No operand rounding: the accumulation is all that is bounded."""
  n, chunk = 40000, 3008
  t = np.float64(np.float16(1 + 2**-10)) * np.float64(np.float16(1 + 3 * 2**-10))
  prod = np.full(n, np.float32(t))
  assert prod[0] == t
  partial = np.float32(0)
  for j in range(0, n, chunk):
    partial = np.float32(partial + np.add.accumulate(prod[j:j + chunk], dtype=np.float32)[-1])
  err, S, chunks = abs(float(partial) - n * t), n * t, -(-n // chunk)
  assert err <= nm.bound_dot_chunked(nm.Precision(0.0, 0.0, nm.U32, 0.0, 0.0), S, n, 2.0, chunk, chunks)
  assert err > nm.gamma(chunks - 1, nm.U32) * S
