"""The emulator's speed paths give the same bytes as the plain computation (tinygrad_rocket/emu/conv.py): trailing
zero-weight channels left out of a 1x1 convolution's products only when their inputs are finite, row chunks on several
threads, and the window memo invalidated by a changed input."""
from __future__ import annotations
import numpy as np
import pytest
from tinygrad_rocket.emu import conv as C
from tinygrad_rocket.ops.conv import ConvSpec
from test_emu_blocks import run_conv, conv_out, rand16

def _run(spec:ConvSpec, x, w, **flags):
  old = {k: getattr(C, k) for k in flags}
  try:
    for k, v in flags.items(): setattr(C, k, v)
    return conv_out(run_conv(spec, x, w), spec)
  finally:
    for k, v in old.items(): setattr(C, k, v)

def _same(a:np.ndarray, b:np.ndarray) -> bool: return a.tobytes() == b.tobytes()   # bit for bit (NaN payloads too)

@pytest.mark.parametrize("bad", [None, np.inf, np.nan])
def test_zero_weight_channels_skipped_only_when_exact(bad):
  """1x1 fp16 conv, 40 channels of which the last 9 have zero weights: the same bytes with and without the skip; a
  non-finite input in a skipped channel still makes NaN (0 * inf), as the full product does."""
  Cin, H, W, K = 40, 6, 8, 16
  spec = ConvSpec("fp16", Cin, H, W, K, 1, 1, out="fp32")
  rng = np.random.default_rng(1)
  x, w = rand16(rng, Cin, H, W), rand16(rng, K, Cin, 1, 1)
  w[:, 31:] = 0
  w[3, 35] = -0.0                         # a negative zero is a zero weight too
  if bad is not None: x[36, 2, 5] = bad
  skip, full = _run(spec, x, w, SKIP_ZERO_WEIGHT_CHANNELS=True), _run(spec, x, w, SKIP_ZERO_WEIGHT_CHANNELS=False)
  assert _same(skip, full)
  assert np.isnan(skip[:, 2, 5]).all() == (bad is not None)

def test_row_chunks_on_threads_same_bytes():
  """A direct conv split into row chunks on GEMM_PARTS threads equals the one-chunk computation."""
  spec = ConvSpec("fp16", 32, 12, 10, 32, 3, 3, pad=(1, 1), out="fp16")
  rng = np.random.default_rng(2)
  x, w = rand16(rng, 32, 12, 10), rand16(rng, 32, 32, 3, 3)
  one = _run(spec, x, w, GEMM_PARTS=1)
  split = _run(spec, x, w, GEMM_PARTS=3, GEMM_PARALLEL_MACS=0)
  assert _same(one, split)

def test_window_memo_sees_a_changed_input():
  """The same program run twice with different inputs at the same addresses: the second run's result is its own."""
  spec = ConvSpec("fp16", 16, 8, 8, 16, 3, 3, pad=(1, 1), out="fp32")
  rng = np.random.default_rng(3)
  w = rand16(rng, 16, 16, 3, 3)
  x1, x2 = rand16(rng, 16, 8, 8), rand16(rng, 16, 8, 8)
  x2[:, :5] = x1[:, :5]                   # the rows the first chunk reads equal: it finds them, the second not
  r1, r2, r1b = (_run(spec, x, w, GEMM_PARTS=2, GEMM_PARALLEL_MACS=0) for x in (x1, x2, x1))
  assert _same(r1, r1b) and not _same(r1, r2)
  assert _same(r2, _run(spec, x2, w, WINDOW_MEMO_ENTRIES=0, GEMM_PARTS=1))
