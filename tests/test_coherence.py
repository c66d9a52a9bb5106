"""NPU layout coherence (DESIGN.md, Runtime pieces): NPU results stay in the job's result cube until a CPU access needs
them; the next NPU program packs its operand from that cube (no unpack, no plain read); fallback kernels, copy-out and
CPU writes see plain memory that is up to date, views included."""
import numpy as np
import pytest
from dataclasses import asdict
from tinygrad import Tensor, dtypes, Device, TinyJit
from tinygrad_rocket import report
from helpers import env

@pytest.fixture(autouse=True, params=["wait", "async"])
def job_mode(request, monkeypatch):
  """On the emulator the runner waits for each job; "async" runs the same tests as on a board, where the next calls
  pack and submit while jobs are in flight."""
  from tinygrad_rocket import device
  monkeypatch.setattr(device, "WAIT_EMULATED_JOBS", request.param == "wait")
  return request.param

def _stats() -> dict: return asdict(Device["ROCKET"].layout_stats)
def _delta(before:dict) -> dict: return {k: v - before[k] for k, v in _stats().items() if v != before[k]}

def _data(seed:int=0, c:int=16, hw:int=10, n:int=3):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (1, c, hw, hw)).astype(np.float32)
  ws = [rng.uniform(-0.3, 0.3, (c, c, 3, 3)).astype(np.float32) for _ in range(n)]
  return x, ws

def _chain(x:Tensor, ws:list[Tensor]) -> Tensor:
  for w in ws: x = x.conv2d(w, padding=1).relu()
  return x

def _stepwise(x:np.ndarray, ws:list[np.ndarray]) -> np.ndarray:
  """The same convolutions on ROCKET, each result read into numpy and uploaded again (plain memory only)."""
  for w in ws: x = Tensor(x, device="ROCKET").conv2d(Tensor(w, device="ROCKET"), padding=1).relu().numpy()
  return x

def test_chained_convs_skip_unpack_and_pack():
  x, ws = _data()
  X, Ws = Tensor(x, device="ROCKET").realize(), [Tensor(w, device="ROCKET").realize() for w in ws]
  report.reset()
  with env(ROCKET_FALLBACK="0"):
    before = _stats()
    y = _chain(X, Ws).realize()
    d = _delta(before)
    # the input and the three weights are packed from plain memory; the 2nd and 3rd inputs come from the cube; the
    # intermediate results are never unpacked (tinygrad frees them: dropped)
    assert (d["packed"], d["packed_native"], d.get("unpacked", 0), d.get("pack_skipped", 0)) == (4, 2, 0, 0), d
    assert all(r.engine == "npu" and r.reason.startswith("conv ") for r in report.records())
    out = y.numpy()
    assert _delta(before)["unpacked"] == 1                      # the last result, once read
  np.testing.assert_array_equal(out, _stepwise(x, ws))          # bit for bit what the plain path computes
  before = _stats()
  np.testing.assert_array_equal(y.numpy(), out)
  assert _delta(before).get("unpacked", 0) == 0                 # read again: plain memory is up to date now

def test_weights_and_unchanged_inputs_are_not_repacked():
  x, ws = _data(1)
  X, Ws = Tensor(x, device="ROCKET").realize(), [Tensor(w, device="ROCKET").realize() for w in ws]
  _chain(X, Ws).realize()
  before = _stats()
  out = _chain(X, Ws).numpy()
  d = _delta(before)
  # same X and weights: only the inner inputs (new results) are packed, from the cube; the first call's results were
  # freed unread, so they are dropped, never unpacked
  assert d.get("packed", 0) == 0 and d["packed_native"] == 2 and d["pack_skipped"] == 4 and d["unpacked"] == 1, d
  np.testing.assert_array_equal(out, _stepwise(x, ws))

def test_fallback_kernel_and_views_read_up_to_date_plain_memory():
  x, ws = _data(2, n=1)
  y = _chain(Tensor(x, device="ROCKET"), [Tensor(ws[0], device="ROCKET")]).realize()
  ref = _stepwise(x, ws[:1])
  np.testing.assert_array_equal(y[0, 3:5, 2].numpy(), ref[0, 3:5, 2])   # a view of the result, read first
  np.testing.assert_array_equal(((y * 4).cast(dtypes.int32) + 1).numpy(), (ref * 4).astype(np.int32) + 1)  # a fallback kernel (int32 arithmetic) reads it
  z = _chain(Tensor(x, device="ROCKET"), [Tensor(ws[0], device="ROCKET")]).realize()
  np.testing.assert_array_equal(z.shrink(((0, 1), (2, 9), (1, 8), (0, 10))).contiguous().numpy(), ref[:, 2:9, 1:8])

def test_cpu_write_between_npu_programs():
  """A CPU kernel writing part of an NPU result unpacks it first; the next NPU program then packs from plain memory
  (the version changed) and sees both the NPU's and the CPU's values."""
  x, ws = _data(3, n=2)
  W0, W1 = (Tensor(w, device="ROCKET").realize() for w in ws)
  y = Tensor(x, device="ROCKET").conv2d(W0, padding=1).relu().realize()
  y[:, 0:2].assign(Tensor.full((1, 2, 10, 10), 0.5, device="ROCKET")).realize()
  before = _stats()
  out = y.conv2d(W1, padding=1).relu().numpy()
  d = _delta(before)
  assert d.get("packed_native", 0) == 0 and d["packed"] >= 1, d
  mid = _stepwise(x, ws[:1])
  mid[:, 0:2] = 0.5
  np.testing.assert_array_equal(out, _stepwise(mid, ws[1:]))

def test_npu_reads_a_view_of_a_result_natively():
  x, ws = _data(4, n=2)
  W0, W1 = (Tensor(w, device="ROCKET").realize() for w in ws)
  y = Tensor(x, device="ROCKET").conv2d(W0, padding=1).relu().realize()
  before = _stats()
  out = y[:, :, 1:9, 2:10].conv2d(W1, padding=1).numpy()      # a window of the result: another gather of the cube
  assert _delta(before)["packed_native"] == 1
  ref = _stepwise(x, ws[:1])[:, :, 1:9, 2:10]
  np.testing.assert_array_equal(out, Tensor(ref, device="ROCKET").conv2d(Tensor(ws[1], device="ROCKET"), padding=1).numpy())

def test_freed_results_are_dropped_not_unpacked():
  x, ws = _data(5, n=1)
  X, W = Tensor(x, device="ROCKET").realize(), Tensor(ws[0], device="ROCKET").realize()
  before = _stats()
  for _ in range(4): X.conv2d(W, padding=1).realize()
  Device["ROCKET"].synchronize()
  d = _delta(before)
  assert d.get("unpacked", 0) == 0 and d["dropped"] == 4, d

def test_jit_chain_matches_plain_path():
  x, ws = _data(6)
  Ws = [Tensor(w, device="ROCKET").realize() for w in ws]
  @TinyJit
  def f(x:Tensor) -> Tensor: return _chain(x, Ws).realize()
  ref = _stepwise(x, ws)
  for _ in range(4): np.testing.assert_array_equal(f(Tensor(x, device="ROCKET")).numpy(), ref)

def test_operands_written_in_place_are_repacked_and_recomputed():
  """The same BOs with new contents: packed again (versions) and computed again (the emulator's caches compare the
  bytes they fetch), for the input and for the weights, kernel chunks included."""
  rng = np.random.default_rng(7)
  x = rng.uniform(-1, 1, (1, 256, 6, 6)).astype(np.float32)
  w = rng.uniform(-0.1, 0.1, (256, 256, 3, 3)).astype(np.float32)   # several kernel chunks
  X, W = Tensor(x, device="ROCKET").realize(), Tensor(w, device="ROCKET").realize()
  conv = lambda X, W: X.conv2d(W, padding=1).relu().numpy()
  ref = lambda x, w: conv(Tensor(x, device="ROCKET"), Tensor(w, device="ROCKET"))
  report.reset()
  np.testing.assert_array_equal(conv(X, W), ref(x, w))
  assert all("kernel chunk(s)" in r.reason and "x 1 kernel chunk" not in r.reason for r in report.records() if r.engine == "npu")
  W.assign(Tensor(w * -2, device="ROCKET")).realize()   # new contents, written by an exact copy kernel
  np.testing.assert_array_equal(conv(X, W), ref(x, w * -2))
  X.assign(Tensor(x + 0.5, device="ROCKET")).realize()
  np.testing.assert_array_equal(conv(X, W), ref(x + 0.5, w * -2))
