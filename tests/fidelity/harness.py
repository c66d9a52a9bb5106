"""The fidelity harness: run a Stream through the emulated kernel driver (EmuFile + RocketDriver) and check it.

Shared by test_emu_fidelity.py (the emulator's own block execution) and test_contract_model.py (the reduced
contract model of EMULATOR_CONTRACT.md plugged in as the executor). `executor=None` runs the emulator's default
executor (tinygrad_rocket.emu.blocks.execute); any other callable `(core, block_mask, mem)` replaces it on a
private Npu, so nothing leaks into the process-wide NPU.
"""
from __future__ import annotations
import zlib
from dataclasses import dataclass
from typing import Callable
import numpy as np
from hypothesis import assume, strategies as st

from . import mesa_int8_conv as mesa
from . import fp16_streams as f16
from . import references as ref
from .stream import Stream

SENTINEL = 0xA5
GUARD_BO = 4096   # gregordinary allocates a 4 KiB guard BO first so no buffer sits at IOVA 0

@dataclass
class Run:
  out: np.ndarray|None   # decoded output (None if the job failed)
  raw: bytes             # the whole output BO after the job
  before: bytes          # ... and before it
  failure: str|None      # JobFailedError reason from PREP_BO, None on success

def run_stream(stream:Stream, order:list[str]|None=None, guard:bool=False, spacer:int=0, extra_iovas:dict[str, int]|None=None,
               sentinel:bool=False, fresh_npu:bool=True, executor:Callable|None=None) -> Run:
  """Run `stream` on a fresh emulated device (own Npu, so no register state leaks between tests). `order`: BO creation
  order (placement); `guard`: a 4 KiB BO first; `spacer`: bytes of an extra BO after every buffer (moves the IOVAs);
  `sentinel`: fill the output BO with 0xA5 instead of 0 before the job; `executor`: see the module docstring."""
  from tinygrad_rocket.emu import EmuFile, Npu
  from tinygrad_rocket.ioctl import RocketDriver, Job, JobFailedError
  if executor is not None: fresh_npu = True
  npu = Npu() if fresh_npu else None
  if executor is not None: npu.set_executor(executor)
  f = EmuFile(npu) if npu is not None else EmuFile()
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
  # Depthwise SAME padding reads PAD_CON1 per byte lane on the hardware (gregordinary [HW]: the odd channels of the
  # first 32 of each 64 take byte 1); Mesa's general zi-0x80 only fits when both bytes agree, as its hand-written
  # overrides do (board-run models), so these cases use zi 0 (0xFFFF8080). The general case: test_emu_fidelity's
  # test_mesa_int8_depthwise_pad_lanes.
  dict(H=6, C=16, OC=16, K=3, stride=1, padding="SAME", depthwise=True, zi=0),
  dict(H=8, C=80, OC=80, K=5, stride=1, padding="SAME", depthwise=True, zi=0),   # 2 depthwise channel groups (64 + 16)
  dict(H=7, C=8, OC=8, K=3, stride=2, padding="SAME", depthwise=True, zi=0x8B),   # PAD_CON1 0x0B0B override
  dict(H=9, C=32, OC=16, K=1, stride=1, padding="SAME", zi=0),             # K == 1, zi 0: plain zi - 0x80 = 0xFFFFFF80
]

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
  assume(not depthwise_pad_lanes_differ(p))
  return p

def depthwise_pad_lanes_differ(p) -> bool:
  """A depthwise conv that reads padding with a PAD_CON1 whose two low bytes differ: the hardware gives the odd lanes
  byte 1 (see MESA_CASES), so Mesa's stream is not correct there."""
  if not p.depthwise or p.padding != "SAME" or p.K == 1: return False
  v = mesa.pad_con1_value(p, *_first_task_and_op(p))
  return (v & 0xFF) != ((v >> 8) & 0xFF)

def _first_task_and_op(p):
  s = mesa.build(p)
  return s.meta["split"][0], s.meta["op"]

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

def small_mesa_stream() -> Stream:
  return mesa.build(make_qproblem(np.random.default_rng(21), H=8, C=16, OC=16, K=3))


def case_seed(case:dict) -> int: return zlib.crc32(repr(sorted(case.items())).encode())

def conv_case_problem(case:dict, out_fp16:bool) -> f16.Fp16ConvProblem:
  rng = np.random.default_rng(case_seed(case))
  dw = case.get("depthwise", False)
  x = rand16(rng, case["IC"], case["IH"], case["IW"])
  w = rand16(rng, *((case["IC"], case["KH"], case["KW"]) if dw else (case["OC"], case["IC"], case["KH"], case["KW"])))
  return f16.Fp16ConvProblem(x, w, case["stride"], case["pad"], case.get("dilation", (1, 1)), dw, out_fp16)
