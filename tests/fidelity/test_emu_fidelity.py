"""The emulator executes other drivers' hardware-validated register streams the way the hardware does.

Each stream (Mesa Teflon's int8 convolution, gregordinary's/mtx512's fp16 matmul and gregordinary's fp16 conv2d)
is placed in BOs of a fresh EmuFile through RocketDriver, its regcmd lists are written into a regcmd BO (64-byte
aligned slots), one SUBMIT runs it, PREP_BO waits, the output is decoded and compared with an independent reference:
Mesa int8 vs TFLite semantics within +-1 LSB (Teflon itself accepts +-2), fp16 vs float64 within the derived fp32
accumulation bound (references.py). Streams the references list as a hang or an IOMMU fault must fail the job.

The CNA/CORE/DPU execution lives in tinygrad_rocket/emu/blocks.py; until that module exists these tests are skipped.
"""
from __future__ import annotations
import importlib.util, zlib
from dataclasses import dataclass
import numpy as np
import pytest
from hypothesis import given, settings, assume, strategies as st, HealthCheck

def _emulator_executes_conv() -> bool:
  try: return importlib.util.find_spec("tinygrad_rocket.emu.blocks") is not None
  except (ImportError, ValueError): return False

pytestmark = pytest.mark.skipif(not _emulator_executes_conv(), reason="emulator block execution not implemented yet")

from . import mesa_int8_conv as mesa   # noqa: E402
from . import fp16_streams as f16     # noqa: E402
from . import references as ref       # noqa: E402
from .stream import Addr, Stream      # noqa: E402

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
SENTINEL = 0xA5
GUARD_BO = 4096   # gregordinary allocates a 4 KiB guard BO first so no buffer sits at IOVA 0

@dataclass
class Run:
  out: np.ndarray|None   # decoded output (None if the job failed)
  raw: bytes             # the whole output BO after the job
  before: bytes          # ... and before it
  failure: str|None      # JobFailedError reason from PREP_BO, None on success

def run_stream(stream:Stream, order:list[str]|None=None, guard:bool=False, spacer:int=0, extra_iovas:dict[str, int]|None=None,
               sentinel:bool=False, fresh_npu:bool=True) -> Run:
  """Run `stream` on a fresh emulated device (own Npu, so no register state leaks between tests). `order`: BO creation
  order (placement); `guard`: a 4 KiB BO first; `spacer`: bytes of an extra BO after every buffer (moves the IOVAs);
  `sentinel`: fill the output BO with 0xA5 instead of 0 before the job."""
  from tinygrad_rocket.emu import EmuFile, Npu
  from tinygrad_rocket.ioctl import RocketDriver, Job, JobFailedError
  f = EmuFile(Npu()) if fresh_npu else EmuFile()
  drv = RocketDriver(f)
  try:
    if guard: drv.create_bo(GUARD_BO)
    bos = {}
    for slot in order or list(stream.buffers):
      bos[slot] = drv.create_bo(stream.buffers[slot].alloc_size)
      if spacer: drv.create_bo(spacer)
    assert set(bos) == set(stream.buffers), "every buffer needs a BO"
    iovas = {slot: bo.dma_address for slot, bo in bos.items()} | (extra_iovas or {})
    for slot, buf in stream.buffers.items():
      bo = bos[slot]
      drv.prep_bo(bo.handle)
      data = stream.regcmd_bytes(iovas) if slot == "regcmd" else (buf.data or b"")
      fill = SENTINEL if (sentinel and slot == stream.output_slot) else 0
      bo.view[:] = bytes([fill]) * len(bo.view)
      bo.view[:len(data)] = data
      drv.fini_bo(bo.handle)
    out_bo = bos[stream.output_slot]
    before = bytes(out_bo.view)
    jobs = [Job(tasks=tasks, in_handles=[bos[s].handle for s in stream.in_slots], out_handles=[bos[s].handle for s in stream.out_slots])
            for tasks in stream.job_tasks(iovas)]
    drv.submit(jobs)
    try: drv.prep_bo(out_bo.handle)
    except JobFailedError as e: return Run(None, bytes(out_bo.view), before, str(e.reason))
    raw = bytes(out_bo.view)
    return Run(stream.decode(raw[:stream.buffers[stream.output_slot].size]), raw, before, None)
  finally:
    drv.close()

def run_ok(stream:Stream, **kw) -> np.ndarray:
  r = run_stream(stream, **kw)
  assert r.failure is None, f"{stream.name}: the job failed: {r.failure}"
  return r.out

def unmapped_iova(stream:Stream) -> int:
  """An IOVA no BO of a fresh run maps: past everything run_stream allocates (BOs are placed first-fit from 0)."""
  total = GUARD_BO + sum(-(-b.alloc_size // 4096) * 4096 for b in stream.buffers.values())
  return (total + (16 << 20)) & ~0xFFF

def expect_failure(stream:Stream, kinds:tuple[str, ...], **kw) -> str:
  """The job must fail as a hardware failure of one of `kinds` ('hang', 'IOMMU fault') -- PREP_BO raises the job
  failure -- and leave the output BO untouched (a hang times out before the DPU writes; an IOMMU fault writes nothing)."""
  r = run_stream(stream, sentinel=True, **kw)
  assert r.failure is not None, f"{stream.name}: expected a {kinds} failure, the job completed"
  assert r.failure.startswith(kinds), f"{stream.name}: expected {kinds}, the job failed with: {r.failure}"
  assert r.raw == r.before, f"{stream.name}: a failed job modified its output BO"
  return r.failure

# ---------------------------------------------------------------------------------------------------------------
# Mesa Teflon int8 convolution
# ---------------------------------------------------------------------------------------------------------------

def make_qproblem(rng, H, C, OC, K, stride=1, padding="SAME", depthwise=False, zi=None, zw=None, zo=None,
                  si=None, sw=None, so=None) -> mesa.QConvProblem:
  zi = int(rng.integers(0, 256)) if zi is None else zi
  zw = int(rng.integers(0, 256)) if zw is None else zw
  zo = int(rng.integers(0, 256)) if zo is None else zo
  x = rng.integers(0, 256, (H, H, C), dtype=np.uint8)
  w = rng.integers(0, 256, ((1 if depthwise else OC), K, K, C), dtype=np.uint8)
  oc = C if depthwise else OC
  b = rng.integers(-3000, 3001, oc).astype(np.int32)
  si = float(rng.uniform(0.005, 0.05)) if si is None else si
  sw = float(rng.uniform(0.002, 0.02)) if sw is None else sw
  # pick the output scale so the accumulator range maps onto ~[0, 255]: the test exercises requantization, not clamping
  if so is None:
    n = K * K * (1 if depthwise else C)
    so = si * sw * 128 * 128 * np.sqrt(n) / 48.0 * float(rng.uniform(0.8, 1.25))   # (a random factor: a multiplier
    # that lands just below a power of two hits Mesa's OUT_CVT edge bug, rocket_hw.md §5.7)
  return mesa.QConvProblem(x, w, b, si, zi, sw, zw, so, zo, stride, padding, depthwise)

def check_mesa(p:mesa.QConvProblem, **kw) -> np.ndarray:
  assert not mesa.weights_ragged(p) and not mesa.out_cvt_edge_bug(p) and mesa.truncate_bits_for(p.weight_scale) == 0
  s = mesa.build(p)
  got = run_ok(s, order=["weights", "bias", "input", "output", "regcmd"], **kw)   # Mesa's allocation order
  want = ref.quantized_conv_problem(p)
  assert got.shape == want.shape == (p.OH, p.OW, p.OC)
  diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
  assert diff.max() <= 1, f"{s.name}: max |emu - TFLite| = {diff.max()} LSB at {np.unravel_index(diff.argmax(), diff.shape)}"
  return got

MESA_CASES = [
  dict(H=8, C=3, OC=5, K=3, stride=1, padding="SAME"),                     # RGB-like first layer, OC padded to 32
  dict(H=8, C=16, OC=32, K=1, stride=1, padding="VALID"),
  dict(H=9, C=40, OC=20, K=3, stride=2, padding="SAME"),                   # C % 32 = 8: a 16-channel last weight block
  dict(H=7, C=8, OC=8, K=5, stride=1, padding="SAME"),
  dict(H=10, C=50, OC=34, K=3, stride=1, padding="VALID"),                 # C % 32 = 18 > 16; 2 kernel groups
  dict(H=6, C=1, OC=8, K=3, stride=1, padding="SAME"),                     # C == 1: raw uint8 rows + CNA CVT path
  dict(H=8, C=48, OC=8, K=3, stride=1, padding="SAME", zi=0),              # C % 32 = 16; zi 0 with K >= 3: PAD_CON1 0xFFFF8080
  dict(H=10, C=48, OC=48, K=3, stride=2, padding="VALID", depthwise=True),
  dict(H=6, C=16, OC=16, K=3, stride=1, padding="SAME", depthwise=True),
  dict(H=8, C=80, OC=80, K=5, stride=1, padding="SAME", depthwise=True),   # 2 depthwise channel groups (64 + 16)
  dict(H=7, C=8, OC=8, K=3, stride=2, padding="SAME", depthwise=True, zi=0x8B),   # PAD_CON1 0x0B0B override
  dict(H=9, C=32, OC=16, K=1, stride=1, padding="SAME", zi=0),             # K == 1, zi 0: plain zi - 0x80 = 0xFFFFFF80
]

@pytest.mark.parametrize("case", MESA_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_mesa_int8_conv(case):
  check_mesa(make_qproblem(np.random.default_rng(zlib.crc32(repr(sorted(case.items())).encode())), **case))

def test_mesa_int8_conv_split_into_tasks():
  """A conv whose input does not fit the CBUF: Mesa splits it into row bands (several 130-entry tasks, one job since
  the weights stay resident, WEIGHT_REUSE on tasks > 0)."""
  p = make_qproblem(np.random.default_rng(7), H=80, C=64, OC=16, K=3, stride=2, padding="SAME")
  s = mesa.build(p)
  assert len(s.task_regs) > 1 and len(s.jobs) == 1
  check_mesa(p)

def test_mesa_int8_conv_placement_independent():
  """The same stream at different IOVAs (another BO order, spacer BOs between buffers) gives the same bytes."""
  p = make_qproblem(np.random.default_rng(8), H=8, C=20 + 12, OC=12, K=3, stride=1)
  s = mesa.build(p)
  a = run_stream(s, order=["weights", "bias", "input", "output", "regcmd"])
  b = run_stream(s, order=["regcmd", "output", "input", "bias", "weights"], spacer=3 * 4096, guard=True)
  assert a.failure is None and b.failure is None, (a.failure, b.failure)
  n = s.buffers["output"].size
  assert a.raw[:n] == b.raw[:n]

@st.composite
def mesa_problems(draw):
  H = draw(st.integers(4, 10))
  K = draw(st.sampled_from([1, 3, 5]))
  padding = draw(st.sampled_from(["SAME", "VALID"]))
  assume(padding == "SAME" or K <= H)
  depthwise = draw(st.booleans())
  C = draw(st.integers(2 if depthwise else 1, 72))
  OC = C if depthwise else draw(st.integers(1, 72))
  stride = draw(st.sampled_from([1, 2]))
  seed = draw(st.integers(0, 2**32 - 1))
  p = make_qproblem(np.random.default_rng(seed), H, C, OC, K, stride, padding, depthwise)
  assume(not (p.C == 1 and p.OC == 1))          # Mesa's verbatim-copy path: see the report, not exercised
  assume(not mesa.weights_ragged(p) and not mesa.out_cvt_edge_bug(p) and mesa.truncate_bits_for(p.weight_scale) == 0)
  return p

@SETTINGS
@given(mesa_problems())
def test_mesa_int8_conv_property(p):
  check_mesa(p)

# ---------------------------------------------------------------------------------------------------------------
# fp16 matmul (gregordinary / mtx512) and conv2d (gregordinary)
# ---------------------------------------------------------------------------------------------------------------

def check_bound(got:np.ndarray, exact:np.ndarray, S:np.ndarray, n_terms:int, out:str, fused_add=False, name=""):
  assert got.shape == exact.shape
  bound = ref.fp32_accumulation_bound(S, exact, n_terms, out, fused_add)
  err = np.abs(got.astype(np.float64) - exact)
  assert np.all(np.isfinite(got)), f"{name}: non-finite outputs"
  bad = err > bound
  assert not bad.any(), (f"{name}: {bad.sum()} of {bad.size} outputs outside the fp32-accumulation bound; worst "
                         f"|err| = {err.max():.3g} vs bound {bound.flat[np.argmax(err)]:.3g} at {np.unravel_index(err.argmax(), err.shape)}")

def check_matmul(p:f16.MatmulProblem, variant="gn", **kw):
  s = f16.build_matmul_fp16(p, variant)
  got = run_ok(s, order=[k for k in ("input", "weights", "regcmd", "output", "addend") if k in s.buffers], guard=True, **kw)
  exact = ref.matmul_f64(p.a, p.b)
  if p.addend is not None: exact = exact + p.addend.astype(np.float64)
  assert np.abs(exact).max() < ref.FP16_MAX
  check_bound(got, exact, ref.matmul_f64(p.a, p.b, absolute=True), p.K, "fp16" if p.out_fp16 else "fp32", p.addend is not None, s.name)

def rand16(rng, *shape, scale=1.0): return (rng.uniform(-scale, scale, shape)).astype(np.float16)

@pytest.mark.parametrize("M,K,N", [(64, 256, 128), (10, 40, 20), (4, 32, 16), (33, 100, 50)])
@pytest.mark.parametrize("out_fp16", [False, True])
def test_gn_matmul_fp16(M, K, N, out_fp16):
  rng = np.random.default_rng(M * 1000 + K + N)
  check_matmul(f16.MatmulProblem(rand16(rng, M, K), rand16(rng, N, K), out_fp16))

@pytest.mark.parametrize("out_fp16", [False, True])
def test_mtx_matmul_fp16_vendor_list(out_fp16):
  """mtx512's original 108-entry list: op-enable 0x0D (DPU_RDMA not started), no DPU_RDMA writes."""
  rng = np.random.default_rng(11)
  check_matmul(f16.MatmulProblem(rand16(rng, 16, 96), rand16(rng, 48, 96), out_fp16), "mtx")

def test_gn_matmul_fp16_fused_add():
  """gregordinary's conv-fed element-wise ADD (K-accumulation): out = A @ B^T + addend, fp16 in/out."""
  rng = np.random.default_rng(12)
  check_matmul(f16.MatmulProblem(rand16(rng, 16, 64), rand16(rng, 32, 64), True, addend=rand16(rng, 16, 32, scale=4)))

def check_conv(p:f16.Fp16ConvProblem, **kw):
  s = f16.build_conv2d_fp16(p)
  got = run_ok(s, order=["input", "weights", "regcmd", "output"], guard=True, **kw)
  args = (p.stride, p.pad, p.dilation, p.depthwise, (p.OH, p.OW))
  exact = ref.conv2d_f64(p.input, p.weights, *args)
  S = ref.conv2d_f64(p.input, p.weights, *args, absolute=True)
  n = p.KH * p.KW * (1 if p.depthwise else p.IC)
  assert np.abs(exact).max() < ref.FP16_MAX
  check_bound(got, exact, S, n, "fp16" if p.out_fp16 else "fp32", False, s.name)

FP16_CONV_CASES = [
  dict(IC=3, IH=7, IW=5, OC=10, KH=3, KW=3, stride=(1, 1), pad=(1, 1)),               # non-square, OC -> 16, IC -> 32
  dict(IC=40, IH=9, IW=6, OC=20, KH=3, KW=2, stride=(2, 1), pad=(1, 0)),              # non-square kernel, stride 2 in y
  dict(IC=32, IH=2, IW=9, OC=16, KH=1, KW=3, stride=(1, 2), pad=(0, 1)),              # IH < 4: host pads to 4 rows
  dict(IC=8, IH=11, IW=10, OC=5, KH=3, KW=3, stride=(1, 1), pad=(2, 2), dilation=(2, 2)),
  dict(IC=16, IH=12, IW=12, OC=24, KH=5, KW=5, stride=(2, 2), pad=(2, 2)),
  dict(IC=64, IH=6, IW=7, OC=64, KH=3, KW=3, stride=(2, 2), pad=(1, 1), depthwise=True),
  dict(IC=20, IH=5, IW=8, OC=20, KH=5, KW=3, stride=(1, 1), pad=(2, 1), depthwise=True),  # C zero-padded to 32
  dict(IC=32, IH=9, IW=9, OC=32, KH=3, KW=3, stride=(1, 2), pad=(1, 1), dilation=(2, 1), depthwise=True),
]

@pytest.mark.parametrize("case", FP16_CONV_CASES, ids=lambda c: f"{c['IC']}x{c['IH']}x{c['IW']}k{c['KH']}{c['KW']}s{c['stride'][0]}{c['stride'][1]}{'dw' if c.get('depthwise') else ''}")
@pytest.mark.parametrize("out_fp16", [True, False])
def test_gn_conv2d_fp16(case, out_fp16):
  if case.get("depthwise") and not out_fp16: pytest.skip("depthwise fp32 output is not covered by the sources")
  rng = np.random.default_rng(zlib.crc32(repr(sorted(case.items())).encode()))
  dw = case.get("depthwise", False)
  x = rand16(rng, case["IC"], case["IH"], case["IW"])
  w = rand16(rng, *((case["IC"], case["KH"], case["KW"]) if dw else (case["OC"], case["IC"], case["KH"], case["KW"])))
  check_conv(f16.Fp16ConvProblem(x, w, case["stride"], case["pad"], case.get("dilation", (1, 1)), dw, out_fp16))

@st.composite
def fp16_conv_problems(draw):
  dw = draw(st.booleans())
  IC = draw(st.integers(1, 48))
  IH, IW = draw(st.integers(1, 12)), draw(st.integers(1, 12))
  KH, KW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
  sy, sx = draw(st.integers(1, 2)), draw(st.integers(1, 2))
  dy, dx = draw(st.integers(1, 2)), draw(st.integers(1, 2))
  pt, pl = draw(st.integers(0, (dy * (KH - 1)) // 2 + 1)), draw(st.integers(0, (dx * (KW - 1)) // 2 + 1))
  assume(IH + 2 * pt >= dy * (KH - 1) + 1 and IW + 2 * pl >= dx * (KW - 1) + 1)
  OC = IC if dw else draw(st.integers(1, 40))
  out_fp16 = True if dw else draw(st.booleans())
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  x = rand16(rng, IC, IH, IW)
  w = rand16(rng, *((IC, KH, KW) if dw else (OC, IC, KH, KW)))
  return f16.Fp16ConvProblem(x, w, (sy, sx), (pt, pl), (dy, dx), dw, out_fp16)

@SETTINGS
@given(fp16_conv_problems())
def test_gn_conv2d_fp16_property(p):
  check_conv(p)

# ---------------------------------------------------------------------------------------------------------------
# Streams that must fail (rocket_fp16_ew_ppu.md §6.B, rocket_hw.md §1.4/§2.5): not compute
# ---------------------------------------------------------------------------------------------------------------

def small_mesa_stream() -> Stream:
  return mesa.build(make_qproblem(np.random.default_rng(21), H=8, C=16, OC=16, K=3))

def test_feature_address_outside_any_bo_is_an_iommu_fault():
  s = small_mesa_stream()
  bad = s.replace("CNA_FEATURE_DATA_ADDR", Addr("nowhere"))
  reason = expect_failure(bad, ("IOMMU fault",), extra_iovas={"nowhere": unmapped_iova(s)})
  assert "IOMMU" in reason

def test_weight_address_outside_any_bo_is_an_iommu_fault():
  s = small_mesa_stream()
  bad = s.replace("CNA_DCOMP_ADDR0", Addr("nowhere"))
  expect_failure(bad, ("IOMMU fault",), extra_iovas={"nowhere": unmapped_iova(s)})

def test_output_address_outside_any_bo_is_an_iommu_fault_and_writes_nothing():
  s = small_mesa_stream()
  bad = s.replace("DPU_DST_BASE_ADDR", Addr("nowhere"))
  expect_failure(bad, ("IOMMU fault",), extra_iovas={"nowhere": unmapped_iova(s)})

def test_sentinel_is_overwritten_by_a_good_job():
  """Control for the failure tests: the same stream unmodified runs and replaces the sentinel."""
  s = small_mesa_stream()
  r = run_stream(s, order=["weights", "bias", "input", "output", "regcmd"], sentinel=True)
  n = s.buffers["output"].size
  assert r.failure is None and r.before[:16] == bytes([SENTINEL]) * 16 and r.raw[:n] != r.before[:n]
  assert np.abs(r.out.astype(int) - ref.quantized_conv_problem(s.meta["problem"]).astype(int)).max() <= 1

def test_mrdma_trap_hangs():
  """DPU fed by the conv, DPU_RDMA op-enabled (0x1D), FEATURE_MODE_CFG.MRDMA_DISABLE = 0 without COMB_USE: MRDMA waits
  for a feed that never comes (gregordinary 'THE DPU_RDMA / MRDMA TRAP')."""
  rng = np.random.default_rng(31)
  s = f16.mrdma_trap(f16.build_matmul_fp16(f16.MatmulProblem(rand16(rng, 8, 64), rand16(rng, 16, 64))))
  expect_failure(s, ("hang",), order=["input", "weights", "regcmd", "output"], guard=True)

def test_mtx_list_with_dpu_rdma_enabled_hangs_on_a_fresh_register_file():
  """mtx512's vendor list (no DPU_RDMA writes) with op-enable 0x1D: DPU_RDMA registers at reset (0) = MRDMA enabled
  with no feed -> hang (what gregordinary hit porting it to mainline)."""
  rng = np.random.default_rng(32)
  s = f16.mtx_list_with_rdma_enabled(f16.MatmulProblem(rand16(rng, 8, 64), rand16(rng, 16, 64)))
  expect_failure(s, ("hang",), order=["input", "weights", "regcmd", "output"], guard=True, fresh_npu=True)

def test_ew_operand_armed_with_erdma_disabled_hangs():
  rng = np.random.default_rng(33)
  p = f16.MatmulProblem(rand16(rng, 16, 64), rand16(rng, 32, 64), True, addend=rand16(rng, 16, 32))
  s = f16.ew_armed_erdma_disabled(p)
  expect_failure(s, ("hang",), order=["input", "weights", "regcmd", "output", "addend"], guard=True)
