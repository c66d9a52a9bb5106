#!/usr/bin/env python3
"""Emulator speed and modeled NPU time for a few layers (not a test: figures go into docs/emulator.md).

    python scripts/bench_emu.py [--repeat N]

For every layer: the wall time the emulator takes (the whole job: BOs, regcmd, SUBMIT, PREP_BO; median of N runs),
the modeled NPU time of the job at 1 GHz and at 200 MHz (tinygrad_rocket/emu/cost.py: busy time + per-job / per-task
overheads), MACs issued / useful and DMA bytes.
"""
from __future__ import annotations
import argparse, datetime, os, platform, statistics, subprocess, sys, time
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tinygrad_rocket.emu import programs as P, cost
from tinygrad_rocket.ops.conv import ConvSpec, conv_programs

SLOTS = dict(input=0, weights=1, output=2, bias=3)

def conv_layer(name:str, spec:ConvSpec, kernels_per_task:int|None=None):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (spec.C, spec.H, spec.W)).astype(np.float16)
  w = rng.uniform(-1, 1, (spec.C, spec.kh, spec.kw) if spec.depthwise else (spec.kernels, spec.C, spec.kh, spec.kw)).astype(np.float16)
  progs = conv_programs(spec, SLOTS, kernels_per_task=kernels_per_task)
  bufs = {0: P.pack_cube(x, spec.precision), 1: P.pack_weights(w, spec.precision, spec.depthwise),
          2: spec.OC * spec.OH * spec.OW * spec.out_bytes}
  def run():
    r = P.run_program(progs, bufs, [2])
    assert r.failure is None, r.failure
    return r.stats[0]
  return name, run

def mesa_layer(name:str, **case):
  """A Mesa Teflon int8 convolution stream as tests/fidelity/mesa_int8_conv.py rebuilds it (130-entry tasks, Mesa's
  packing, task split and jobs), run on the emulator."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
  from fidelity import mesa_int8_conv as mesa, harness
  from tinygrad_rocket.ioctl import Job
  stream = mesa.build(harness.make_qproblem(np.random.default_rng(0), **case))
  order = ["weights", "bias", "input", "output", "regcmd"]
  def run():
    with P.Session() as sess:
      for i, slot in enumerate(order):
        buf = stream.buffers[slot]
        sess.buffer(i, (buf.data or b"") + bytes(buf.alloc_size - len(buf.data or b"")))
      iovas = {slot: sess.bos[i].dma_address for i, slot in enumerate(order)}
      rc = sess.bos[order.index("regcmd")]
      data = stream.regcmd_bytes(iovas)
      rc.view[:len(data)] = data
      out = sess.bos[order.index("output")]
      sess.drv.submit([Job(t, [sess.bos[order.index("input")].handle], [out.handle]) for t in stream.job_tasks(iovas)])
      sess.drv.prep_bo(out.handle)
      total = cost.JobStats(jobs=0)
      for js in sess.file.job_stats: total.merge(js)
      return total
  return f"{name} [{len(stream.task_regs)} tasks]", run

def layers():
  yield conv_layer("fp16 conv 3x3 64x56x56 -> 64 (pad 1, fp16 out)", ConvSpec("fp16", 64, 56, 56, 64, 3, 3, (1, 1), (1, 1), out="fp16"))
  yield conv_layer("ResNet-18 layer3 conv 3x3 256x14x14 -> 256 (fp16)", ConvSpec("fp16", 256, 14, 14, 256, 3, 3, (1, 1), (1, 1), out="fp16"), 48)
  yield conv_layer("ResNet-18 conv1 7x7/2 3(->32)x224x224 -> 64 (fp16)", ConvSpec("fp16", 32, 224, 224, 64, 7, 7, (2, 2), (3, 3), out="fp16",
                                                                                                      channels_real=3))
  yield conv_layer("fp16 depthwise 3x3 128x56x56 (fp16)", ConvSpec("fp16", 128, 56, 56, 128, 3, 3, (1, 1), (1, 1), depthwise=True, out="fp16"))
  yield mesa_layer("Mesa int8 conv 3x3 56x56x64 -> 64 (SAME)", H=56, C=64, OC=64, K=3, stride=1, padding="SAME")
  yield mesa_layer("Mesa int8 depthwise 3x3 112x112x32 (SAME)", H=112, C=32, OC=32, K=3, stride=1, padding="SAME", depthwise=True)
  yield conv_layer("fp16 matmul 1024x1024x1024 (fp32 out, 128-kernel tiles)", ConvSpec("fp16", 1024, 1024, 1, 1024, 1, 1, out="fp32"), 128)

def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--repeat", type=int, default=3)
  args = ap.parse_args()
  try: commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
  except Exception: commit = "?"
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f: cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError: pass
  print(f"# {datetime.date.today()}  commit {commit}  {cpu}, {os.cpu_count()} CPUs  Python {platform.python_version()}  numpy {np.__version__}")
  print(f"# modeled: {cost.MACS_PER_CYCLE['fp16']} fp16 / {cost.MACS_PER_CYCLE['int8']} int8 MAC/cycle, "
        f"{cost.DMA_BYTES_PER_S / 1e9:.1f} GB/s, {cost.PER_JOB_OVERHEAD_S * 1e6:.0f} us/job + {cost.PER_TASK_OVERHEAD_S * 1e6:.0f} us/extra task")
  hdr = f"{'layer':58s} {'tasks':>5s} {'emulated':>9s} {'NPU@1GHz':>9s} {'NPU@200MHz':>10s} {'MACs issued':>12s} {'useful':>12s} {'DMA MB':>7s}"
  print(hdr)
  for name, run in layers():
    times, st = [], None
    for _ in range(args.repeat):
      t0 = time.perf_counter()
      st = run()
      times.append(time.perf_counter() - t0)
    dma = (st.bytes_read + st.bytes_written) / 1e6
    print(f"{name:58s} {st.task_count:5d} {statistics.median(times):8.3f}s {st.modeled_seconds(cost.DEFAULT_CLOCK_HZ) * 1e3:7.3f}ms "
          f"{st.modeled_seconds(cost.MAINLINE_CLOCK_HZ) * 1e3:8.3f}ms {st.macs_issued:12.4g} {st.macs_useful:12.4g} {dma:7.2f}")

if __name__ == "__main__":
  main()
