"""The emulator's speed paths give the same bytes as the plain computation (tinygrad_rocket/emu/conv.py): pixel chunks
on several threads, the window memo invalidated by a changed input, and trailing zero-weight channels left out of an
int8 1x1 convolution's products. And its arithmetic types (conv.mac_dtype) stay exact where the hardware is: fp16
products in float32 (subnormal and largest), int8 sums in float32 only below 2^24."""
from __future__ import annotations
import numpy as np
import pytest
from tinygrad_rocket.emu import conv as C
from tinygrad_rocket.ops.conv import ConvSpec
from test_emu_blocks import run_conv, conv_out, rand16, rand8, ref_conv, fp32_acc_bound

def _run(spec:ConvSpec, x, w, **flags):
  old = {k: getattr(C, k) for k in flags}
  try:
    for k, v in flags.items(): setattr(C, k, v)
    return conv_out(run_conv(spec, x, w, **({"out_cvt": (1, 0, 0)} if spec.out == "int32" else {})), spec)
  finally:
    for k, v in old.items(): setattr(C, k, v)

def _same(a:np.ndarray, b:np.ndarray) -> bool: return a.tobytes() == b.tobytes()   # bit for bit (NaN payloads too)

def test_zero_weight_channels_skipped_int8():
  """int8 1x1 conv, 48 channels of which the last 17 have zero weights: the same bytes with and without the skip."""
  Cin, H, W, K = 48, 6, 8, 16
  spec = ConvSpec("int8", Cin, H, W, K, 1, 1, out="int32")
  rng = np.random.default_rng(1)
  x, w = rand8(rng, Cin, H, W), rand8(rng, K, Cin, 1, 1)
  w[:, 31:] = 0
  skip, full = _run(spec, x, w, SKIP_ZERO_WEIGHT_CHANNELS=True), _run(spec, x, w, SKIP_ZERO_WEIGHT_CHANNELS=False)
  assert _same(skip, full)
  assert np.array_equal(skip[:K].astype(np.int64), ref_conv(x, w)[0].astype(np.int64))

@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_fp16_zero_weight_channel_with_nonfinite_input(bad):
  """fp16: a non-finite input in a zero-weight channel still makes NaN (0 * inf), as the full product does."""
  spec = ConvSpec("fp16", 40, 6, 8, 16, 1, 1, out="fp32")
  rng = np.random.default_rng(1)
  x, w = rand16(rng, 40, 6, 8), rand16(rng, 16, 40, 1, 1)
  w[:, 31:] = 0
  x[36, 2, 5] = bad
  got = _run(spec, x, w)
  assert np.isnan(got[:, 2, 5]).all() and not np.isnan(np.delete(got.reshape(16, -1), 2 * 8 + 5, axis=1)).any()

def test_pixel_chunks_on_threads_same_bytes():
  """A direct conv split into pixel chunks on GEMM_PARTS threads equals the one-chunk computation (1600 pixels: chunks
  of GEMM_ROW_ALIGN, a partial one last, boundaries inside output rows)."""
  spec = ConvSpec("fp16", 32, 40, 40, 32, 3, 3, pad=(1, 1), out="fp32")
  rng = np.random.default_rng(2)
  x, w = rand16(rng, 32, 40, 40), rand16(rng, 32, 32, 3, 3)
  one = _run(spec, x, w, GEMM_PARTS=1)
  split = _run(spec, x, w, GEMM_PARTS=3, GEMM_PARALLEL_MACS=0)
  small = _run(spec, x, w, GEMM_PARTS=1, IM2COL_CHUNK_BYTES=C.GEMM_ROW_ALIGN * 9 * 32 * 4)   # one aligned chunk each
  assert _same(one, split) and _same(one, small)

def test_window_memo_sees_a_changed_input():
  """The same program run twice with different inputs at the same addresses: the second run's result is its own."""
  spec = ConvSpec("fp16", 16, 40, 40, 16, 3, 3, pad=(1, 1), out="fp32")
  rng = np.random.default_rng(3)
  w = rand16(rng, 16, 16, 3, 3)
  x1, x2 = rand16(rng, 16, 40, 40), rand16(rng, 16, 40, 40)
  x2[:, :12] = x1[:, :12]                 # the rows the first chunk (pixels 0-383, rows 0-9) reads equal: it finds them
  r1, r2, r1b = (_run(spec, x, w, GEMM_PARTS=2, GEMM_PARALLEL_MACS=0) for x in (x1, x2, x1))
  assert _same(r1, r1b) and not _same(r1, r2)
  assert _same(r2, _run(spec, x2, w, WINDOW_MEMO_ENTRIES=0, GEMM_PARTS=1))

def test_fp16_products_exact_in_float32(monkeypatch):
  """The smallest fp16 products (subnormal 2^-24 squared: 2^-48) and the largest (65504^2 = 4190209 * 2^10) are exact
  in float32, and every partial sum here is too (at most 4 of the largest: 4 * 4190209 < 2^24): the float32 path gives
  the exact sums (no flush to zero, no overflow), the same bytes as the float64 path."""
  Cin, H, W = 64, 4, 4
  spec = ConvSpec("fp16", Cin, H, W, 16, 1, 1, out="fp32")
  x = np.full((Cin, H, W), 2.0 ** -24, np.float16)
  x[:, 1] = 65504
  w = np.zeros((16, Cin, 1, 1), np.float16)
  w[0], w[1, :4] = 2.0 ** -24, 65504
  got = _run(spec, x, w)
  assert np.all(got[0, [0, 2, 3]] == Cin * 2.0 ** -48) and np.all(got[1, 1] == 4 * 65504.0 ** 2)
  assert np.array_equal(got[:16], ref_conv(x, w)[0])
  monkeypatch.setattr(C, "mac_dtype", lambda d: np.dtype(np.float64))
  assert _same(got, _run(spec, x, w))

def test_fp16_float32_path_within_bound_of_float64_path(monkeypatch):
  """Random fp16 3x3 conv: the float32 path (fp32 sums in BLAS's order) and the float64 path (one rounding) differ by
  no more than an fp32 accumulation of the exact products may (gamma(n-1) * sum|x*w|, tests/numerics.py)."""
  spec = ConvSpec("fp16", 64, 12, 12, 32, 3, 3, pad=(1, 1), out="fp32")
  rng = np.random.default_rng(4)
  x, w = rand16(rng, 64, 12, 12, scale=4.0), rand16(rng, 32, 64, 3, 3)
  got = _run(spec, x, w).astype(np.float64)
  monkeypatch.setattr(C, "mac_dtype", lambda d: np.dtype(np.float64))
  ref64 = _run(spec, x, w).astype(np.float64)
  absum, _ = ref_conv(x, w, pad=(1, 1), absolute=True)
  assert np.all(np.abs(got - ref64) <= fp32_acc_bound(absum, ref64, 9 * 64, "fp32") + 2.0 ** -24 * np.abs(ref64))

@pytest.mark.parametrize("channels, want", [(1024, 1023 * 128 * 128 + 127 * 127), (1040, 1024 * 128 * 128 + 1)])
def test_int8_sums_exact_at_the_float32_bound(channels, want):
  """int8 1x1 conv, the worst case at conv.mac_dtype's bound: 1024 products (K * 2^14 = 2^24, float32) summing to
  2^24 - 255, and 1040 fetched channels (above the bound: float64) summing to 2^24 + 1, which float32 cannot hold."""
  spec = ConvSpec("int8", channels, 4, 4, 16, 1, 1, out="int32")
  x, w = np.full((channels, 4, 4), -128, np.int8), np.zeros((16, channels, 1, 1), np.int8)
  w[0, :1024] = -128
  if channels == 1024: x[-1], w[0, -1] = 127, 127
  else: x[1024], w[0, 1024] = 1, 1
  got = _run(spec, x, w).astype(np.int64)
  assert np.all(got[0] == want) and np.all(got[1:] == 0)

def test_fp16_table_conversion_is_numpys():
  """arith.fp16_to_f32 (a table lookup) gives numpy's float32 for every fp16 bit pattern, bit for bit (NaN payloads,
  subnormals, signed zeros), from strided views too."""
  from tinygrad_rocket.emu import arith
  bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
  want = bits.view(np.float16).astype(np.float32)
  assert np.array_equal(arith.fp16_to_f32(bits).view(np.uint32), want.view(np.uint32))
  strided = bits.view(np.float16).reshape(256, 256)[::3, 1::2]
  assert np.array_equal(arith.fp16_to_f32(strided).view(np.uint32), strided.astype(np.float32).view(np.uint32))

def test_depthwise_row_blocks_same_bytes():
  """A depthwise conv accumulated over blocks of output rows (DW_BLOCK_BYTES: here one row, and a block spanning all)
  gives the same bytes, -0.0 products and padding taps included."""
  spec = ConvSpec("fp16", 64, 9, 7, 64, 3, 3, (1, 1), (1, 1), depthwise=True, out="fp32")
  rng = np.random.default_rng(5)
  x, w = rand16(rng, 64, 9, 7), rand16(rng, 64, 3, 3)
  x[3, :, :2] = -0.0
  whole, rows = _run(spec, x, w, DW_BLOCK_BYTES=1 << 30), _run(spec, x, w, DW_BLOCK_BYTES=1)
  assert _same(whole, rows)
