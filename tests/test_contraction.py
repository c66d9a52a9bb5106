"""The contraction rule: tinygrad matmuls, batched matmuls and convolutions as NPU fp16 matmul tiles.

Each case runs twice: on the emulator, and on a minimal reference executor written here straight from the layout
facts (rocket_fp16_ew_ppu.md §1.2 feature cubes, §1.3 weight groups, §2.1 matmul registers). The second isolates the
rule's packing and tiling from the emulator; the first is the real path. Strict mode proves the NPU ran every kernel
the test names."""
import contextlib
import numpy as np
import pytest
from hypothesis import given, strategies as st
from tinygrad import Tensor
from tinygrad_rocket import lower, regs, report
from tinygrad_rocket.emu.core import NPU
from tinygrad_rocket.rules.contraction import lower_contraction
import numerics as nm
from helpers import env, rocket_and_cpu

def reference_matmul_executor(core, block_mask, mem):
  """C = A @ B^T for one fp16 matmul task, from the register file and the documented layouts (W = 1)."""
  rf = core.regs
  f = lambda b, r, fld: regs.read_field(rf, b, r, fld)
  M, K, N = f("CNA", "DATA_SIZE0", "DATAIN_HEIGHT"), f("CNA", "DATA_SIZE1", "DATAIN_CHANNEL"), f("CNA", "WEIGHT_SIZE2", "WEIGHT_KERNELS")
  assert f("CNA", "DATA_SIZE0", "DATAIN_WIDTH") == 1 and K % 32 == 0 and N % 16 == 0 and M >= 4
  a = mem.ndarray(f("CNA", "FEATURE_DATA_ADDR", "FEATURE_BASE_ADDR"), np.float16, M*K)   # [K/8][M][8]
  A = a.reshape(K // 8, M, 8).transpose(1, 0, 2).reshape(M, K)
  b = mem.ndarray(f("CNA", "DCOMP_ADDR0", "DECOMPRESS_ADDR0"), np.float16, N*K)        # [N/16][K/32][16][32]
  B = b.reshape(N // 16, K // 32, 16, 32).transpose(0, 2, 1, 3).reshape(N, K)
  C = A.astype(np.float32) @ B.astype(np.float32).T                                      # [M][N]
  if not f("DPU", "BS_CFG", "BS_BYPASS") and not f("DPU", "BS_CFG", "BS_RELU_BYPASS"):    # BS stage ReLU [/ReLUX]
    assert f("DPU", "BS_CFG", "BS_ALU_BYPASS") and f("DPU", "BS_CFG", "BS_MUL_BYPASS")
    C = np.maximum(C, 0)
    if f("DPU", "BS_CFG", "BS_RELUX_EN"):
      C = np.minimum(C, np.uint32(f("DPU", "BS_RELUX_CMP_VALUE", "BS_RELUX_CMP_DAT")).view(np.float32))
  out = C.reshape(M, N // 4, 4).transpose(1, 0, 2)                                       # [N/4][M][4]
  dst = f("DPU", "DST_BASE_ADDR", "DST_BASE_ADDR")
  mem.check(dst, out.nbytes)
  mem.write(dst, np.ascontiguousarray(out, np.float32).tobytes())

@contextlib.contextmanager
def executor(kind:str):
  old = NPU.set_executor(reference_matmul_executor if kind == "reference" else None)
  try: yield
  finally: NPU.restore_executors(old)

@contextlib.contextmanager
def contraction_rule():
  assert ("contraction", lower_contraction) in lower.RULES
  yield

@pytest.fixture(autouse=True)
def _only_the_contraction_rule(monkeypatch):
  """These tests check the contraction rule's own programs (the reference executor runs matmul tiles only), so the
  rules tried before it (the conv rule takes convolutions first) are left out here. Kernels compiled earlier in the
  process with the same AST keep their program (tinygrad caches by AST): cases here use shapes of their own."""
  monkeypatch.setattr(lower, "RULES", [r for r in lower.RULES if r[0] != "conv"])

EXECUTORS = ["reference", pytest.param("emulator", marks=pytest.mark.skipif(
  __import__("importlib").util.find_spec("tinygrad_rocket.emu.blocks") is None, reason="emulator block execution not implemented yet"))]

CASES = {
  "matmul": (lambda a, b: a @ b, [(13, 40), (40, 21)]),
  "matmul_T": (lambda a, b: a @ b.T, [(8, 33), (17, 33)]),
  "bmm": (lambda a, b: a @ b, [(3, 5, 7), (3, 7, 9)]),
  "matvec": (lambda a, b: a @ b, [(20, 6), (6,)]),
  "conv2d": (lambda x, w: x.conv2d(w, padding=1), [(2, 3, 7, 6), (5, 3, 3, 3)]),
  "conv2d_s2_d2": (lambda x, w: x.conv2d(w, stride=2, dilation=2, padding=2), [(1, 4, 9, 9), (6, 4, 3, 3)]),
  "depthwise": (lambda x, w: x.conv2d(w, groups=4, padding=1), [(1, 4, 6, 6), (4, 1, 3, 3)]),
  "conv2d_s2_p1": (lambda x, w: x.conv2d(w, stride=2, padding=1), [(2, 4, 8, 8), (6, 4, 3, 3)]),
  "conv1d": (lambda x, w: x.conv2d(w), [(2, 3, 11), (4, 3, 3)]),
  "linear_bias": (lambda x, w, b: x.linear(w.T, b), [(6, 30), (20, 30), (20,)]),
  "conv2d_bias_relu": (lambda x, w, b: x.conv2d(w, b, padding=1).relu(), [(1, 3, 6, 6), (8, 3, 3, 3), (8,)]),
  "row_bias": (lambda a, b, r: a @ b + r, [(40, 9), (9, 5), (40, 1)]),
  "residual": (lambda a, b, r: (a @ b + r).relu(), [(12, 20), (20, 9), (12, 9)]),
  "conv_relu6": (lambda x, w: x.conv2d(w, padding=1).relu6(), [(1, 3, 6, 6), (8, 3, 3, 3)]),
  "conv_residual": (lambda x, w, r: x.conv2d(w, padding=1) + r, [(1, 3, 6, 6), (8, 3, 3, 3), (1, 8, 6, 6)]),
  # attention's head merge: K loops once over heads x head_dim and reads a with k // 4 and k % 4 (analysis splits it)
  "heads_merge": (lambda a, w: a.transpose(1, 2).reshape(2, 6, 12) @ w, [(2, 3, 6, 4), (12, 5)]),
}

def _bound(name, fn, arrays, p):
  """|A|·|B| through the same op in float64 gives S = sum|a||b| per output (a bias adds |bias|, ReLU only selects);
  n = contraction length."""
  lin = (lambda x, w: x.conv2d(w, padding=1)) if name == "conv_relu6" else fn  # S of the sum, before the clamp
  S = lin(*[Tensor(np.abs(a).astype(np.float64), device="CPU") for a in arrays]).numpy()
  n = {"matmul": 40, "matmul_T": 33, "bmm": 7, "matvec": 6, "conv2d": 27, "conv2d_s2_d2": 36, "conv2d_s2_p1": 36, "depthwise": 9, "conv1d": 9,
       "linear_bias": 31, "conv2d_bias_relu": 28, "row_bias": 10,
       "residual": 21, "conv_residual": 28, "conv_relu6": 27, "heads_merge": 12}[name]  # a fused bias or residual is one more product (x * 1)
  amax = sum(float(np.abs(a).max()) for a in arrays)
  # relu6 on the CPU is relu(y) - relu(y - 6): y - 6 and the difference are rounded (2 more fp32 roundings of <= |y|)
  return nm.bound_dot(p, S, n, amax) + (2 * nm.U32 * (S + 6) if name == "conv_relu6" else 0)

@pytest.mark.parametrize("kind", EXECUTORS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_contraction_on_npu(name, kind):
  fn, shapes = CASES[name]
  rng = np.random.default_rng(len(name))
  arrays = [rng.uniform(-4, 4, s).astype(np.float32) for s in shapes]
  report.reset()
  with executor(kind), contraction_rule(), env(ROCKET_FALLBACK="0"):
    r, c = rocket_and_cpu(fn, *arrays)
  assert any(rec.engine == "npu" for rec in report.records())
  nm.assert_within(r, c, _bound(name, fn, arrays, nm.rocket("float32")) + _bound(name, fn, arrays, nm.cpu("float32")), name)

@pytest.mark.parametrize("kind", EXECUTORS)
def test_epilogue_is_never_dropped(kind):
  """a@b + 1 must not come back as a@b (a bug an earlier tinygrad NPU fork had): fused epilogues are computed,
  the others fall back with the reason."""
  A, B = np.ones((4, 8), np.float32), np.ones((8, 4), np.float32)
  R = np.arange(16, dtype=np.float32).reshape(4, 4)
  bias = np.arange(4, dtype=np.float32)
  t = lambda x: Tensor(x, device="ROCKET")
  with executor(kind), env(ROCKET_FALLBACK="0"):
    np.testing.assert_array_equal((t(A) @ t(B) + 1).numpy(), A @ B + 1)            # affine epilogues: fused
    np.testing.assert_array_equal((t(A) @ t(B) * 0.5 - 3).numpy(), (A @ B) * 0.5 - 3)
    np.testing.assert_array_equal((t(A) @ t(B) + t(bias)).numpy(), A @ B + bias)
    np.testing.assert_array_equal((t(A) @ t(B) + t(R)).numpy(), A @ B + R)         # a residual: fused too
    with pytest.raises(Exception, match="epilogue"): ((t(A) @ t(B)) * (t(A) @ t(B))).realize()  # non-affine: not
    # a table activation on an interval: fused, and a call outside it (exp2 of 8 > 0) is the C code's, with the reason
    with pytest.raises(Exception, match=r"lut\(exp2\) in its domain"): (t(A) @ t(B)).exp2().realize()
    with pytest.raises(Exception, match="epilogue"): ((t(A) @ t(B) + t(R)) * t(R)).realize()
  np.testing.assert_allclose((t(A) @ t(B)).exp2().numpy(), np.exp2(A @ B), rtol=1e-6)  # the fallback computes them
  np.testing.assert_array_equal(((t(A) @ t(B) + t(R)) * t(R)).numpy(), (A @ B + R) * R)

@pytest.mark.parametrize("kind", EXECUTORS)
def test_batchnorm_eval_folded(kind):
  """conv -> BatchNorm (eval) -> ReLU is one kernel; its per-channel affine epilogue is folded into the packing."""
  from tinygrad import nn
  rng = np.random.default_rng(5)
  x = rng.uniform(-2, 2, (2, 3, 7, 7)).astype(np.float32)
  w = rng.uniform(-1, 1, (8, 3, 3, 3)).astype(np.float32)
  gamma, beta = rng.uniform(0.5, 2, 8).astype(np.float32), rng.uniform(-1, 1, 8).astype(np.float32)
  mean, var = rng.uniform(-1, 1, 8).astype(np.float32), rng.uniform(0.1, 2, 8).astype(np.float32)
  def run(device):
    bn = nn.BatchNorm(8)
    bn.weight, bn.bias = Tensor(gamma, device=device), Tensor(beta, device=device)
    bn.running_mean, bn.running_var = Tensor(mean, device=device), Tensor(var, device=device)
    return bn(Tensor(x, device=device).conv2d(Tensor(w, device=device), padding=1)).relu().numpy()
  report.reset()
  with executor(kind), env(ROCKET_FALLBACK="0"): r = run("ROCKET")
  assert any(rec.engine == "npu" and "affine epilogue" in rec.reason for rec in report.records())
  c = run("CPU")
  s = gamma / np.sqrt(var.astype(np.float64) + 1e-5)
  t = beta - mean * s
  # ROCKET: a dot of 27 products with weights w*s rounded to fp16 once, plus the intercept t (one more fp16 operand)
  S = Tensor(np.abs(x).astype(np.float64), device="CPU").conv2d(Tensor(np.abs(w * s[:, None, None, None]), device="CPU"), padding=1).numpy()
  S = S + np.abs(t).reshape(1, -1, 1, 1)
  amax = float(np.abs(x).max() + np.abs(w * s[:, None, None, None]).max() + np.abs(t).max())
  b_rocket = nm.bound_dot(nm.rocket("float32"), S, 28, amax)
  # CPU: its fp32 conv (27 terms) then (acc - mean) * gamma * rsqrt(var + eps) + beta in fp32: 5 roundings of values
  # bounded by (|acc| + |mean|) * |s| + |beta|
  acc_abs = Tensor(np.abs(x).astype(np.float64), device="CPU").conv2d(Tensor(np.abs(w).astype(np.float64), device="CPU"), padding=1).numpy()
  b_cpu = nm.gamma(27, nm.U32) * acc_abs * s.reshape(1, -1, 1, 1) + 6 * nm.U32 * ((acc_abs + np.abs(mean).reshape(1, -1, 1, 1)) * s.reshape(1, -1, 1, 1) + np.abs(beta).reshape(1, -1, 1, 1))
  nm.assert_within(r, c, b_rocket + b_cpu, "conv+bn+relu")

@pytest.mark.parametrize("kind", EXECUTORS)
@pytest.mark.parametrize("bad", [1e5, np.inf, np.nan])
def test_nonfinite_operand_takes_the_cpu_path(kind, bad):
  """fp16 overflow, inf and NaN operands: that call runs the C code (NaN through ReLU must give tinygrad's 0)."""
  A = np.full((4, 4), 1.0, np.float32); A[1, 2] = bad
  B = np.eye(4, dtype=np.float32) - 0.5
  report.reset()
  with executor(kind):
    out = (Tensor(A, device="ROCKET") @ Tensor(B, device="ROCKET")).relu().numpy()
    ref = (Tensor(A, device="CPU") @ Tensor(B, device="CPU")).relu().numpy()
    np.testing.assert_array_equal(out, ref)
    assert any(rec.engine == "fallback" and "not finite" in rec.reason for rec in report.records())
    with env(ROCKET_FALLBACK="0"), pytest.raises(Exception, match="not finite"):
      (Tensor(A, device="ROCKET") @ Tensor(B, device="ROCKET")).relu().numpy()

@pytest.mark.parametrize("kind", EXECUTORS)
def test_resident_weights_repacked_only_when_written(kind, monkeypatch):
  from tinygrad_rocket import device
  packs = []
  orig = device.NpuRunner._copy
  monkeypatch.setattr(device.NpuRunner, "_copy", lambda self, c, *a, operand, **k: (operand and packs.append(c.src)) or orig(self, c, *a, operand=operand, **k))
  rng = np.random.default_rng(3)
  with executor(kind), contraction_rule(), env(ROCKET_FALLBACK="0"):
    W = Tensor(rng.standard_normal((16, 32)).astype(np.float32), device="ROCKET").realize()
    for i in range(3):
      x = rng.standard_normal((8, 16)).astype(np.float32)
      out = (Tensor(x, device="ROCKET") @ W).numpy()
      np.testing.assert_allclose(out, x @ W.numpy(), rtol=0, atol=float(nm.bound_matmul(nm.rocket("float32"), x, W.numpy()).max() * 2))
    assert len(packs) == 1 + 3, packs        # W packed once, x three times
  W.assign(W * 2).realize()                  # a write renews W's version (an elementwise kernel, packs of its own)
  packs.clear()
  with executor(kind), contraction_rule(), env(ROCKET_FALLBACK="0"):
    (Tensor(x, device="ROCKET") @ W).numpy()   # so it is packed again
  assert len(packs) == 2

def test_device_fault_names_the_kernel():
  """A job the device fails (here: every task hangs) becomes an exception naming the kernel and the fault."""
  from tinygrad_rocket.device import NpuJobError
  from tinygrad_rocket.emu.core import HangError
  def hang(core, mask, mem): raise HangError("test: the core never raises its interrupt")
  old = NPU.set_executor(hang)
  try:
    with pytest.raises(NpuJobError, match=r"NPU job of kernel \S+ failed.*hang.*never raises"):
      (Tensor(np.ones((8, 8), np.float32), device="ROCKET") @ Tensor(np.ones((8, 8), np.float32), device="ROCKET")).numpy()
  finally: NPU.restore_executors(old)
  # the device keeps working afterwards
  out = (Tensor(np.ones((8, 8), np.float32), device="ROCKET") @ Tensor(np.ones((8, 8), np.float32), device="ROCKET")).numpy()
  np.testing.assert_array_equal(out, np.full((8, 8), 8.0, np.float32))
