"""A whole max (or min) reduction added to an elementwise load in one kernel, s * x[i] + c * max(x) (1-D log_softmax's
x - max(x), x + min(x), 2 max(x) - x), on the NPU in strict mode (rules/pool.py _lower_broadcast_max): the PPU's max
(exactly fl16 of the max), broadcast by a matmul whose weight the NPU writes (two DPU copies), then one fp32 rounding of
c m + s x with x rounded to fp16 (float32 inputs) and m = fl16(max). Checked exactly against that model, and within the
bound it implies against tinygrad's CPU (x exact, the max exact, one rounding in the dtype)."""
import numpy as np
import pytest
from tinygrad import Tensor
import numerics as nm
from test_blocks_on_npu import all_npu

U16, U32, ETA16 = nm.U16, nm.U32, nm.ETA16
FORMS = {  # name: (tinygrad fn, s, c, the reduction of x the kernel uses)
  "x - max": (lambda t: t - t.max(), 1, -1, np.max),
  "x + min": (lambda t: t + t.min(), 1, 1, np.min),
  "2 max - x": (lambda t: t.max() * 2 - t, -1, 2, np.max),
}

@pytest.mark.parametrize("n", [5, 100, 2500])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("form", list(FORMS))
def test_broadcast_max(form, dtype, n):
  """n = 5 (fewer rows than a tile's minimum), 100 (one PPU pass), 2500 (two passes, several matmul tiles of rows)."""
  fn, s, c, red = FORMS[form]
  x = (np.random.default_rng(n).standard_normal(n) * 3).astype(dtype)
  X = Tensor(x, device="ROCKET").realize()
  r, summaries = all_npu(lambda: fn(X).numpy())
  assert len(summaries) == 1 and "its max broadcast" in summaries[0], summaries
  x16 = x.astype(np.float16).astype(np.float64)
  m16 = float(np.float16(red(x.astype(np.float64))))
  model = (s * x16 + c * m16).astype(np.float32).astype(dtype)       # fp16 operands, exact products, one fp32 rounding
  np.testing.assert_array_equal(r, model)
  cpu = fn(Tensor(x, device="CPU")).numpy()
  xd = x.astype(np.float64)
  m = red(xd)
  y = np.abs(s * xd + c * m)
  e_in = 0.0 if dtype == np.float16 else U16 * (np.abs(xd) + abs(c) * abs(m)) + (1 + abs(c)) * ETA16
  e_out = (U16 * (y + e_in) + ETA16) if dtype == np.float16 else U32 * (y + e_in)
  nm.assert_within(r, cpu, e_in + e_out + (U16 * y + ETA16 if dtype == np.float16 else U32 * y), f"{form} {np.dtype(dtype).name} n={n}")
