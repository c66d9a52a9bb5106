"""A kernel the lowering cannot take for a reason it did not foresee still runs: tinygrad's C code, reported as a
fallback naming the error, never an exception in the user's program."""
import numpy as np
from tinygrad import Tensor
import tinygrad_rocket.lower as lower
from tinygrad_rocket import report
from tinygrad_rocket.lower import INTERNAL_ERROR_REASON
import numerics as nm
from numerics import conv64

def test_an_exception_in_a_rule_becomes_a_reported_fallback(monkeypatch):
  def broken(nest): raise ZeroDivisionError("a bug in a rule")
  monkeypatch.setattr(lower, "RULES", [("broken", broken)] + lower.RULES)
  a, b = np.arange(12, dtype=np.float32).reshape(3, 4), np.full((3, 4), 0.5, np.float32)
  report.reset()
  r = (Tensor(a, device="ROCKET") * 3 + Tensor(b, device="ROCKET")).numpy()
  recs = report.records()
  assert len(recs) == 1 and recs[0].engine == "fallback", recs
  assert INTERNAL_ERROR_REASON in recs[0].reason and "ZeroDivisionError: a bug in a rule" in recs[0].reason, recs
  np.testing.assert_array_equal(r, a * 3 + b)

def test_conv_relu_padded_with_minus_inf_runs():
  """conv + ReLU written into a buffer padded with -inf (what tinygrad fuses ahead of a max pool): the analysis meets
  the gated index's Invalid constant inside the value (tinygrad 0.14) and must not crash. It is an output select
  (tests/test_output_select.py): the conv on the NPU, the -inf border written exactly; the interior within the
  conv's derived bound (numerics.bound_dot on both devices)."""
  rng = np.random.default_rng(0)
  x, w = rng.standard_normal((1, 3, 12, 12)).astype(np.float32), rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
  f = lambda x, w: x.conv2d(w, padding=1).relu().pad((1, 1, 1, 1), value=float("-inf"))
  report.reset()
  r = f(Tensor(x, device="ROCKET"), Tensor(w, device="ROCKET")).numpy()
  assert report.records() and not any(INTERNAL_ERROR_REASON in rec.reason for rec in report.records()), report.records()
  c = f(Tensor(x, device="CPU"), Tensor(w, device="CPU")).numpy()
  border = np.ones(c.shape, bool)
  border[:, :, 1:-1, 1:-1] = False
  assert np.array_equal(r[border], c[border]) and np.isneginf(c[border]).all()
  S = conv64(np.pad(np.abs(x), ((0, 0), (0, 0), (1, 1), (1, 1))), np.abs(w))   # sum |x||w| in float64
  amax = float(np.abs(x).max() + np.abs(w).max())
  bound = nm.bound_dot(nm.rocket("float32"), S, 27, amax) + nm.bound_dot(nm.cpu("float32"), S, 27, amax)
  nm.assert_within(r[:, :, 1:-1, 1:-1], c[:, :, 1:-1, 1:-1], bound, "conv interior")
