"""Per-job counters of the emulated NPU and the cost model (tinygrad_rocket/emu/cost.py), through EmuFile."""
from __future__ import annotations
import numpy as np
import pytest
from tinygrad_rocket import regs
from tinygrad_rocket.emu import programs as P, cost
from tinygrad_rocket.ops.conv import ConvSpec, conv_program, conv_programs
from tinygrad_rocket.ops.elementwise import FLYING_ENABLE, flying_program
from tinygrad_rocket.ops.program import Set, entries, override

IN, WT, OUT, BIAS, OPND = 0, 1, 2, 3, 4
SLOTS = dict(input=IN, weights=WT, output=OUT, bias=BIAS, operand=OPND)

def run(spec:ConvSpec, overrides=None, bias=False, **kw):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (spec.C, spec.H, spec.W))
  w = rng.uniform(-1, 1, (spec.C, spec.kh, spec.kw) if spec.depthwise else (spec.kernels, spec.C, spec.kh, spec.kw))
  if spec.precision == "int8": x, w = (rng.integers(-128, 128, a.shape) for a in (x, w))
  progs = [override(p, overrides) for p in conv_programs(spec, SLOTS, bias=bias, **kw)]
  bufs = {IN: P.pack_cube(x, spec.precision), WT: P.pack_weights(w, spec.precision, spec.depthwise),
          OUT: spec.OC * spec.OH * spec.OW * spec.out_bytes}
  if bias: bufs[BIAS] = bytes(4 * spec.OC)
  r = P.run_program(progs, bufs, [OUT])
  assert r.failure is None, r.failure
  return r

def pc_bytes(prog) -> int:
  n = len(entries(prog)) + regs.TAIL_ENTRIES
  return -(-n // 2) * 16                          # the PC fetches whole 16-byte beats

def test_macs_and_dma_counters():
  """fp16 direct conv, 48 channels fetched (40 real), 20 kernels, CORE/DPU at 32 channels (ORIG_CHANNEL 19)."""
  spec = ConvSpec("fp16", 48, 6, 5, 20, 3, 3, (1, 1), (1, 1), out="fp32", channels_real=40)
  ov = {("DPU", "DATA_CUBE_CHANNEL"): dict(ORIG_CHANNEL=19)}
  r = run(spec, ov)
  (job,) = r.stats
  (t,) = job.tasks
  pixels = spec.OH * spec.OW
  cycles = pixels * 9 * 2 * 2                     # ceil(48/32) channel groups x ceil(20/16) kernel groups per tap
  assert (t.kind, t.precision, t.compute_cycles) == ("conv", "fp16", cycles)
  assert t.macs_issued == cycles * 512 == pixels * 9 * 64 * 32
  assert t.macs_useful == pixels * 9 * 40 * 20
  assert t.dma_read == {"PC": pc_bytes(override(conv_program(spec, SLOTS), ov)), "CNA feature": 6 * 6 * 5 * 16,
                        "CNA weight": 20 * 48 * 9 * 2}
  assert t.dma_write == {"WDMA": 8 * pixels * 16}  # 32 fp32 channels = 8 surfaces
  assert job.task_count == 1 and job.jobs == 1

def test_depthwise_and_int8_counters():
  dw = run(ConvSpec("fp16", 48, 6, 6, 48, 3, 3, (1, 1), (1, 1), depthwise=True, out="fp16")).stats[0].tasks[0]
  pixels = 36
  assert dw.kind == "depthwise" and dw.compute_cycles == pixels * 9 * 2 and dw.macs_useful == pixels * 9 * 48
  spec = ConvSpec("int8", 16, 5, 5, 32, 3, 3, (1, 1), (1, 1), out="int8")
  i8 = run(spec, bias=True, out_cvt=(1, 0, 0)).stats[0].tasks[0]
  assert i8.compute_cycles == 25 * 9 and i8.macs_issued == 25 * 9 * 1024 and i8.macs_useful == 25 * 9 * 16 * 32
  assert i8.dma_read["BRDMA"] == 32 * 4 and i8.dma_write["WDMA"] == 2 * 25 * 16

def test_flying_op_counters():
  n = 1024
  prog = flying_program(n, "fp16", SLOTS)
  r = P.run_program(prog, {IN: bytes(2 * n), OPND: bytes(2 * n), OUT: 2 * n}, [OUT], enable=FLYING_ENABLE)
  (t,) = r.stats[0].tasks
  assert t.kind == "dpu" and t.compute_cycles == n // 8
  assert t.dma_read["MRDMA"] == t.dma_read["ERDMA"] == t.dma_write["WDMA"] == 2 * n
  # DMA-bound at 1 GHz: bytes over the bandwidth; at 200 MHz one atom per cycle takes longer
  dma_s = (3 * 2 * n + t.dma_read["PC"]) / cost.DMA_BYTES_PER_S
  assert t.busy_seconds(1e9) == pytest.approx(dma_s)
  assert t.busy_seconds(2e8) == pytest.approx(max(dma_s, n // 8 / 2e8))

def test_job_and_file_counters_and_overheads():
  """One SUBMIT of two jobs (1 and 2 tasks): EmuFile.job_stats has one JobStats per job, EmuFile.stats all of them;
  modeled time = busy time + PER_JOB_OVERHEAD_S per job + PER_TASK_OVERHEAD_S per further task."""
  spec = ConvSpec("fp16", 32, 8, 8, 16, 3, 3, (1, 1), (1, 1), out="fp32")
  prog = conv_program(spec, SLOTS)
  rng = np.random.default_rng(1)
  with P.Session() as s:
    s.buffer(IN, P.pack_cube(rng.uniform(-1, 1, (32, 8, 8)), "fp16"))
    s.buffer(WT, P.pack_weights(rng.uniform(-1, 1, (16, 32, 3, 3)), "fp16"))
    s.buffer(OUT, 16 * 64 * 4)
    r = s.run([regs.Task(entries(prog), regs.MESA_CONV_ENABLE)] * 3, [OUT], jobs=[[0], [1, 2]])
    total = s.file.stats
  assert r.failure is None and [j.task_count for j in r.stats] == [1, 2]
  assert total.jobs == 2 and total.task_count == 3 and total.macs_issued == 3 * r.stats[0].macs_issued
  one = r.stats[0].tasks[0]
  f = 200e6
  assert total.modeled_seconds(f) == pytest.approx(3 * one.busy_seconds(f) + 2 * cost.PER_JOB_OVERHEAD_S + 1 * cost.PER_TASK_OVERHEAD_S)
  assert r.stats[1].modeled_seconds(f, overheads=False) == pytest.approx(2 * one.busy_seconds(f))
  s2 = total.summary(f)
  assert s2["tasks"] == 3 and s2["clock_hz"] == f and s2["dma_read"]["CNA feature"] == 3 * 4 * 64 * 16

def test_compute_bound_time_scales_with_the_clock():
  spec = ConvSpec("fp16", 64, 16, 16, 64, 3, 3, (1, 1), (1, 1), out="fp16")
  (t,) = run(spec).stats[0].tasks
  assert t.compute_cycles / 1e9 > t.bytes_read / cost.DMA_BYTES_PER_S     # compute-bound at 1 GHz
  assert t.busy_seconds(cost.MAINLINE_CLOCK_HZ) == pytest.approx(5 * t.busy_seconds(cost.DEFAULT_CLOCK_HZ))
  assert t.modeled_cycles(cost.DEFAULT_CLOCK_HZ) == t.compute_cycles

def test_failed_job_counts_only_completed_tasks():
  spec = ConvSpec("fp16", 32, 8, 8, 16, 3, 3, (1, 1), (1, 1), out="fp32")
  good = conv_program(spec, SLOTS)
  bad = override(good, {("DPU_RDMA", "FEATURE_MODE_CFG"): Set(BURST_LEN=15)})   # MRDMA trap: hang
  r = P.run_program([good, bad, good], {IN: bytes(32 * 64 * 2), WT: bytes(16 * 32 * 9 * 2), OUT: 16 * 64 * 4}, [OUT])
  assert r.failure.startswith("hang") and r.stats[0].task_count == 1

def test_cost_model_constants_are_the_documented_ones():
  assert cost.MACS_PER_CYCLE["int8"] == 1024 and cost.MACS_PER_CYCLE["fp16"] == 512 == cost.MACS_PER_CYCLE["bf16"]
  assert cost.MACS_PER_CYCLE["tf32"] == 256 and cost.DEFAULT_CLOCK_HZ == 1e9 and cost.MAINLINE_CLOCK_HZ == 2e8
