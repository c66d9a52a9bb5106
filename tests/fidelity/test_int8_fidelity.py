"""The emulator executes the published int8 x int8 -> int32 programming exactly: gregordinary's mainline matmul
generator and mtx512's vendor-driver original, and gregordinary's conv program with the same int8 deltas (a KxK window,
stride, padding, dilation). Every output must equal the exact int64 result, which the int32 writer holds
(|sum| <= K * 2^14 < 2^31 for every K a task can hold). The streams come from int8_streams.py, built without
tinygrad_rocket's encoder; the references are numpy integer arithmetic."""
from __future__ import annotations
import numpy as np
import pytest
from hypothesis import given, settings, assume, strategies as st, HealthCheck
from tinygrad_rocket.emu.core import NPU  # noqa: F401  (the emulator must import: block execution is what is tested)

from . import int8_streams as i8
from . import fp16_streams as f16
from .harness import run_ok, run_stream

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

def check(p:i8.Int8MatmulProblem, variant:str="gn") -> None:
  s = i8.build_matmul_int8(p, variant)
  got = run_ok(s, order=["input", "weights", "regcmd", "output"], guard=True)
  want = p.a.astype(np.int64) @ p.b.astype(np.int64).T
  assert got.dtype == np.int32 and np.array_equal(got.astype(np.int64), want), f"{s.name}: {np.sum(got != want)} outputs differ"

@pytest.mark.parametrize("M,K,N", [(4, 32, 32), (13, 40, 21), (64, 256, 96), (8, 1000, 64)])
@pytest.mark.parametrize("variant", ["gn", "mtx"])
def test_int8_matmul_int32_out(M, K, N, variant):
  rng = np.random.default_rng(M * 7919 + K * 31 + N)
  check(i8.Int8MatmulProblem(rng.integers(-128, 128, (M, K)), rng.integers(-128, 128, (N, K))), variant)

@pytest.mark.parametrize("a,b", [(-128, -128), (127, -128), (127, 127)])
def test_int8_matmul_extremes(a, b):
  """Every operand at the int8 extremes, K = 8192 (the sum 2^27 far from int32's limit, every bit of it exact)."""
  M, K, N = 4, 8192, 32
  check(i8.Int8MatmulProblem(np.full((M, K), a), np.full((N, K), b)))

@SETTINGS
@given(M=st.integers(1, 40), K=st.integers(1, 300), N=st.integers(1, 80), seed=st.integers(0, 2**32 - 1))
def test_int8_matmul_property(M, K, N, seed):
  rng = np.random.default_rng(seed)
  check(i8.Int8MatmulProblem(rng.integers(-128, 128, (M, K)), rng.integers(-128, 128, (N, K))))

def test_int8_size_e_of_the_fp32_path_is_refused():
  """SIZE_E 3 / SURFACE_ADD x4 (the fp16 -> fp32 values) on the int8 -> int32 path leaves surfaces unwritten on the
  board (gen_matmul_int8's WARN, rocket_fp16_ew_ppu.md §1.4): the emulator refuses it rather than guess."""
  rng = np.random.default_rng(3)
  p = i8.Int8MatmulProblem(rng.integers(-128, 128, (8, 64)), rng.integers(-128, 128, (64, 64)))
  s = i8.build_matmul_int8(p)
  regs = s.task_regs[0]
  for j, r in enumerate(regs):
    if r.name == "DPU_BS_OW_CFG": regs[j] = i8.Reg(r.target, r.offset, 3 << 8 | 3 << 5 | 3 << 2 | 1 << 1, r.name, "SIZE_E 3")
  r = run_stream(s, sentinel=True)
  assert r.failure is not None and "SIZE_E" in r.failure

def check_conv(p:i8.Int8ConvProblem) -> None:
  s = i8.build_conv2d_int8(p)
  got = run_ok(s, order=["input", "weights", "regcmd", "output"], guard=True)
  want = p.reference()
  assert got.dtype == np.int32 and np.array_equal(got.astype(np.int64), want), f"{s.name}: {np.sum(got != want)} outputs differ"

@SETTINGS
@given(IC=st.integers(1, 70), OC=st.integers(1, 40), H=st.integers(1, 12), W=st.integers(1, 12), KH=st.integers(1, 4),
       KW=st.integers(1, 4), stride=st.integers(1, 2), pad=st.integers(0, 2), dil=st.integers(1, 2),
       fill=st.sampled_from(["random", "min", "max"]), seed=st.integers(0, 2**32 - 1))
def test_int8_conv2d_int32_out(IC, OC, H, W, KH, KW, stride, pad, dil, fill, seed):
  rng = np.random.default_rng(seed)
  assume(f16.conv_out_dim(H, KH, stride, pad, dil) > 0 and f16.conv_out_dim(W, KW, stride, pad, dil) > 0)
  full = lambda shape: np.full(shape, {"min": -128, "max": 127}[fill]) if fill != "random" else rng.integers(-128, 128, shape)
  check_conv(i8.Int8ConvProblem(full((IC, H, W)), full((OC, IC, KH, KW)), (stride, stride), (pad, pad), (dil, dil)))
