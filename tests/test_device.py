"""The ROCKET device in tinygrad: registration, buffers, the fallback, strict mode, debug output, autoload."""
import os, sys, subprocess, textwrap
import numpy as np
import pytest
from tinygrad import Tensor, Device, dtypes, TinyJit
import tinygrad_rocket
from tinygrad_rocket import report
from helpers import env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def test_device_registered_and_computes():
  t = Tensor([1, 2, 3]).to("ROCKET")
  assert t.device == "ROCKET" and type(Device["ROCKET"]).__name__ == "RocketDevice"
  assert (t * 2 + 1).tolist() == [3, 5, 7]

def test_strict_mode_raises_naming_kernel_and_reason():
  a = Tensor(np.arange(6, dtype=np.float32), device="ROCKET").realize()
  with env(ROCKET_FALLBACK="0"):
    with pytest.raises(tinygrad_rocket.FallbackError) as ei: (a.exp2() + 7).realize()
  err = ei.value
  assert err.kernel and err.reason and err.kernel in str(err) and err.reason in str(err) and "ROCKET_FALLBACK=0" in str(err)
  # the same kernel runs through the fallback when strict mode is off
  np.testing.assert_allclose((a.exp2() + 7).numpy(), np.exp2(np.arange(6)) + 7, rtol=1e-6)

def test_debug_prints_where_each_kernel_ran(capfd):
  report.reset()
  with env(ROCKET_DEBUG="1"):
    (Tensor(np.ones(5, np.int32), device="ROCKET") * 3).realize()   # int32 arithmetic: no NPU rule
    (Tensor(np.ones((8, 8), np.float32), device="ROCKET") @ Tensor(np.ones((8, 8), np.float32), device="ROCKET")).realize()
  err = capfd.readouterr().err
  assert "ROCKET fallback" in err and "contraction: " in err and "elementwise: writes" in err  # each rule's reason
  assert "ROCKET npu" in err
  recs = report.records()
  assert recs and all(r.engine in ("npu", "fallback") and r.runs >= 1 for r in recs)

def test_sub_buffers_and_dtypes():
  x = np.arange(64, dtype=np.float32).reshape(8, 8)
  t = Tensor(x, device="ROCKET")
  np.testing.assert_array_equal(t[2:5, 1:7].contiguous().numpy(), x[2:5, 1:7])
  np.testing.assert_array_equal(t.cast(dtypes.float16).cast(dtypes.int32).numpy(), x.astype(np.float16).astype(np.int32))
  # a realized buffer shared by two consumers and updated in place
  t.assign(t + 1).realize()
  np.testing.assert_array_equal(t.numpy(), x + 1)

def test_jit_on_rocket():
  @TinyJit
  def f(a, b): return (a @ b).relu() + 1
  rng = np.random.default_rng(0)
  for _ in range(4):
    A, B = rng.standard_normal((8, 16), dtype=np.float32), rng.standard_normal((16, 4), dtype=np.float32)
    out = f(Tensor(A, device="ROCKET"), Tensor(B, device="ROCKET")).numpy()
    np.testing.assert_allclose(out, np.maximum(A @ B, 0) + 1, rtol=1e-5, atol=1e-5)

def test_from_blob_host_buffer():
  x = np.arange(10, dtype=np.float32)
  t = Tensor.from_blob(x.ctypes.data, (10,), dtype=dtypes.float32, device="ROCKET")
  np.testing.assert_array_equal((t + 1).numpy(), x + 1)

def _run(code:str, **extra_env) -> subprocess.CompletedProcess:
  e = {**os.environ, **extra_env}
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e, cwd="/", timeout=300)

def test_emulator_notice_once_with_reason():
  r = _run("""
    import tinygrad_rocket
    from tinygrad import Tensor
    print((Tensor([1.0, 2.0], device="ROCKET") + Tensor([3.0, 4.0], device="ROCKET")).tolist())
    print(Tensor([5.0], device="ROCKET:1").tolist())
  """, ROCKET_EMULATE="1", PYTHONPATH=REPO)
  assert r.returncode == 0, r.stderr
  assert "[4.0, 6.0]" in r.stdout
  assert r.stderr.count("ROCKET: running on the NPU emulator") == 1 and "ROCKET_EMULATE=1" in r.stderr

def test_dev_rocket_without_import():
  """DEV=ROCKET works with no import of tinygrad_rocket in the script (the installed .pth hook)."""
  r = _run("""
    import sys
    from tinygrad import Tensor, Device
    print(Device.DEFAULT, (Tensor([1.0, 2.0]) * 2).tolist(), 'tinygrad_rocket' in sys.modules)
  """, DEV="ROCKET", ROCKET_EMULATE="1")
  if "No module named 'tinygrad.runtime.ops_rocket'" in r.stderr: pytest.skip("package not installed (pip install .): the .pth hook is absent")
  assert r.returncode == 0, r.stderr
  assert r.stdout.split() == ["ROCKET", "[2.0,", "4.0]", "True"]

def test_tinygrad_version_is_checked():
  r = _run("""
    import importlib.metadata as md
    md.version = lambda name: "0.13.0"
    import tinygrad_rocket
  """, PYTHONPATH=REPO)
  assert r.returncode != 0 and "tinygrad==0.14.0" in r.stderr and "0.13.0" in r.stderr

def test_precision_fp32_gives_float32_accuracy():
  """ROCKET_PRECISION=fp32: float32 contractions run on the NPU in split precision (rules/contraction.py _split_tasks,
  tests/test_precision_fp32.py), within numerics.bound_dot_split of the float64 result, a bound 20x below the
  default's; float32 elementwise kernels take the C path (the reason says so); float16 contractions stay unsplit."""
  r = _run("""
    import numpy as np, tinygrad_rocket, sys
    sys.path.insert(0, "%s/tests")
    import numerics as nm
    from tinygrad import Tensor
    from tinygrad_rocket import report
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((32, 300)).astype(np.float32), rng.standard_normal((300, 16)).astype(np.float32)
    out = (Tensor(A, device="ROCKET") @ Tensor(B, device="ROCKET")).numpy()
    S, amax = np.abs(A).astype(np.float64) @ np.abs(B), float(np.abs(A).max() + np.abs(B).max())
    chunk = 320   # K = 300 in one chunk of 320 columns (the report below names it)
    nm.assert_within(out, A.astype(np.float64) @ B.astype(np.float64), nm.bound_dot_split(S, 300, amax, chunk, 1), "fp32")
    assert nm.bound_dot_split(S, 300, amax, chunk, 1).max() < nm.bound_matmul(nm.rocket("float32"), A, B).max() / 20
    (Tensor(A.astype(np.float16), device="ROCKET") @ Tensor(B.astype(np.float16), device="ROCKET")).numpy()
    x = Tensor(A, device="ROCKET")
    np.testing.assert_array_equal((x * 3 + x.sigmoid()).numpy(), (Tensor(A, device="CPU") * 3 + Tensor(A, device="CPU").sigmoid()).numpy())
    print(sorted((r.engine, "ROCKET_PRECISION=fp32" in r.reason, "split-precision" in r.reason and "chunk(s) of 320" in r.reason) for r in report.records()))
  """ % REPO, ROCKET_PRECISION="fp32", PYTHONPATH=REPO)
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == "[('fallback', True, False), ('npu', False, False), ('npu', False, True)]", r.stdout
