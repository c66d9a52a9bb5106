"""ops/matmul.py's DPU epilogue options on the emulator: the BS stage (scale, add, ReLU, clip) and a per-pixel EW
operand (add, sub, mul, max, min; fp16 or fp32 operand; EW ReLU), against numpy.

Expected values follow the float DPU model (rocket_fp16_ew_ppu.md §7.3): the fp32 accumulator (exact sums of fp16
products, rounded to fp32 once), each stage rounding to fp32; these programs are exact in that model, so the check is
equality up to the fp32 rounding of each stage (computed here in float32 the same way)."""
import numpy as np
import pytest
from tinygrad_rocket.emu.programs import Session, pack_cube, unpack_cube, pack_weights
from tinygrad_rocket.ops.matmul import MatmulTile, matmul_task, EwOperand, XStageOp, EW_MIN_PLANE_ATOMS

A, B, C, E = 1, 2, 3, 4

def run(M:int, K:int, N:int, a:np.ndarray, b:np.ndarray, e:np.ndarray|None, **kw) -> np.ndarray:
  t = MatmulTile(M, K, N)
  with Session() as s:
    s.buffer(A, pack_cube(a.T.reshape(K, M, 1), "fp16"))
    s.buffer(B, pack_weights(b.T.reshape(N, K, 1, 1), "fp16"))
    s.buffer(C, t.c.nbytes)
    if e is not None:
      nbytes = kw["ew"].nbytes
      s.buffer(E, pack_cube(e.T.reshape(N, M, 1), "fp16" if nbytes == 2 else "fp32"))
    r = s.run([matmul_task(t, A, 0, B, 0, C, 0, **kw)], [C])
    assert r.failure is None, r.failure
    return unpack_cube(r.out[C], "fp32", N, M, 1).reshape(N, M).T

def operands(M, K, N, seed=0):
  """fp16 operands whose fp32 accumulation is exact in any order (multiples of 1/8 up to 1: every partial sum is a
  multiple of 2^-6 below 2^12), so the accumulator is known exactly and the tests pin the epilogue alone."""
  rng = np.random.default_rng(seed)
  a = (rng.integers(-8, 9, (M, K)) / 8).astype(np.float16)
  b = (rng.integers(-8, 9, (K, N)) / 8).astype(np.float16)
  acc = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)
  return rng, a, b, acc

NP_EW = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum, "min": np.minimum}

@pytest.mark.parametrize("op", list(NP_EW))
@pytest.mark.parametrize("nbytes", [2, 4])
def test_ew_operand(op, nbytes):
  M, K, N = 16, 32, 32
  rng, a, b, acc = operands(M, K, N)
  e = rng.standard_normal((M, N)).astype(np.float16 if nbytes == 2 else np.float32)
  out = run(M, K, N, a, b, e, ew=EwOperand(op, E, 0, nbytes))
  np.testing.assert_array_equal(out, NP_EW[op](acc, e.astype(np.float32)))

def test_ew_relu_after_op():
  M, K, N = 12, 32, 16
  rng, a, b, acc = operands(M, K, N, 1)
  e = rng.standard_normal((M, N)).astype(np.float16)
  out = run(M, K, N, a, b, e, ew=EwOperand("mul", E, 0, 2, relu=True))
  np.testing.assert_array_equal(out, np.maximum(acc * e.astype(np.float32), 0))

@pytest.mark.parametrize("bs", [XStageOp(add=0.375), XStageOp(mul=-2.0), XStageOp(add=1e-30, relu=True),
                                XStageOp(relu=True, clip=0.5)])
def test_bs_stage(bs):
  M, K, N = 8, 32, 16
  _, a, b, acc = operands(M, K, N, 2)
  out = run(M, K, N, a, b, None, bs=bs)
  want = acc
  if bs.mul is not None: want = want * np.float32(bs.mul)
  if bs.add is not None: want = want + np.float32(bs.add)
  if bs.relu: want = np.maximum(want, 0)
  if bs.clip is not None: want = np.minimum(want, np.float32(bs.clip))
  np.testing.assert_array_equal(out, want)

def test_ew_needs_a_plane_of_twelve_atoms():
  with pytest.raises(AssertionError, match=str(EW_MIN_PLANE_ATOMS)):
    matmul_task(MatmulTile(8, 32, 16), A, 0, B, 0, C, 0, ew=EwOperand("add", E, 0))

def test_fp16_output():
  """out_fp16: the DPU narrows the fp32 result (after BS and EW) to fp16, 2 atoms per 16-kernel group (§1.4)."""
  M, K, N = 12, 32, 16
  rng, a, b, acc = operands(M, K, N, 3)
  e = rng.standard_normal((M, N)).astype(np.float16)
  t = MatmulTile(M, K, N)
  with Session() as s:
    s.buffer(A, pack_cube(a.T.reshape(K, M, 1), "fp16"))
    s.buffer(B, pack_weights(b.T.reshape(N, K, 1, 1), "fp16"))
    s.buffer(E, pack_cube(e.T.reshape(N, M, 1), "fp16"))
    s.buffer(C, t.c.nbytes)
    r = s.run([matmul_task(t, A, 0, B, 0, C, 0, bs=XStageOp(add=0.25), ew=EwOperand("mul", E, 0, 2), out_fp16=True)], [C])
    assert r.failure is None, r.failure
  out = unpack_cube(r.out[C], "fp16", N, M, 1).reshape(N, M).T
  np.testing.assert_array_equal(out, ((acc + np.float32(0.25)) * e.astype(np.float32)).astype(np.float16))
