#!/usr/bin/env python3
"""Contractions on ROCKET next to tinygrad's CPU device, in one run: a matmul sweep and the conv layers of ResNet-18
(also with their eval-mode BatchNorm, skip connection and ReLU fused) and MobileNetV2 (batch 1). "runs on" names the
rule(s) whose NPU programs ran (conv: the convolution datapath; contraction: im2col matmul tiles).

Per case: where the kernel ran, NPU tasks, MACs issued vs useful, bytes packed by the CPU, the emulator's modeled
NPU time (1 GHz TRM clock and 200 MHz stock mainline clock), and wall time per call of ROCKET (on the emulator: the
emulation itself) and of the CPU device, as a ratio. Warm calls only (compile and first packing excluded).
    python scripts/bench_contraction.py [--quick] [--md] [--reps N] [--rounds N] [--only TEXT]
"""
from __future__ import annotations
import argparse, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_common import run_line  # noqa: E402  (scripts/ is on the path when a script runs)
import numpy as np
import tinygrad_rocket
from tinygrad_rocket import report
from tinygrad import Tensor, Device

def cases(quick:bool):
  mm = [64, 256, 1024] if quick else [64, 256, 1024, 2048]
  for n in mm: yield f"matmul {n}", [(n, n), (n, n)], lambda a, b: a @ b, n**3
  resnet = [("conv1 7x7/2 3->64 @224", 3, 64, 224, 7, 2, 3), ("l1 3x3 64->64 @56", 64, 64, 56, 3, 1, 1),
            ("l2 3x3/2 64->128 @56", 64, 128, 56, 3, 2, 1), ("l2 3x3 128->128 @28", 128, 128, 28, 3, 1, 1),
            ("l2 1x1/2 64->128 @56", 64, 128, 56, 1, 2, 0), ("l3 3x3 256->256 @14", 256, 256, 14, 3, 1, 1),
            ("l4 3x3 512->512 @7", 512, 512, 7, 3, 1, 1)]
  if quick: resnet = resnet[1:3]
  for name, ci, co, hw, k, s, p in resnet:
    o = (hw + 2*p - k) // s + 1
    yield f"resnet18 {name}", [(1, ci, hw, hw), (co, ci, k, k)], (lambda s, p: lambda x, w: x.conv2d(w, stride=s, padding=p))(s, p), co*ci*k*k*o*o
  # the same layers with their eval-mode BatchNorm (per-channel scale s, shift t), ReLU / ReLU6 and ResNet's skip
  # connection fused after the conv: (conv(x)*s + t [+ r]).relu()
  bn = [("l1 3x3 64->64 @56 +BN+ReLU", 64, 64, 56, 3, 1, 1, False), ("l1 3x3 64->64 @56 +BN+skip+ReLU", 64, 64, 56, 3, 1, 1, True),
        ("l2 3x3/2 64->128 @56 +BN+ReLU", 64, 128, 56, 3, 2, 1, False), ("l4 3x3 512->512 @7 +BN+skip+ReLU", 512, 512, 7, 3, 1, 1, True)]
  if quick: bn = bn[:1]
  for name, ci, co, hw, k, s, p, skip in bn:
    o = (hw + 2*p - k) // s + 1
    shapes = [(1, ci, hw, hw), (co, ci, k, k), (co,), (co,)] + ([(1, co, o, o)] if skip else [])
    yield f"resnet18 {name}", shapes, (lambda s, p: lambda x, w, sc, sh, *r: (x.conv2d(w, stride=s, padding=p) * sc.reshape(1, -1, 1, 1)
                                       + sh.reshape(1, -1, 1, 1) + (r[0] if r else 0)).relu())(s, p), co*ci*k*k*o*o
  # kernels of two stages in one job: a stage's first block, main conv + BN added to the 1x1/2 downsample conv + BN
  # (rules/conv_pair.py), and the last block fused with the global average pool (rules/conv_reduce.py)
  col = lambda v: v.reshape(1, -1, 1, 1)
  if not quick:
    yield ("resnet18 l2 block: 3x3 128->128 @28 +BN + 1x1/2 64->128 @56 +BN, ReLU", [(1, 128, 28, 28), (128, 128, 3, 3), (128,), (128,),
           (1, 64, 56, 56), (128, 64, 1, 1), (128,), (128,)],
           lambda h, w2, s2, t2, x, w1, s1, t1: (h.conv2d(w2, padding=1) * col(s2) + col(t2) + x.conv2d(w1, stride=2) * col(s1) + col(t1)).relu(),
           128*128*9*28*28 + 128*64*28*28)
    yield ("resnet18 l4 3x3 512->512 @7 +BN+skip+ReLU +global avg pool", [(1, 512, 7, 7), (512, 512, 3, 3), (512,), (512,), (1, 512, 7, 7)],
           lambda x, w, sc, sh, r: (x.conv2d(w, padding=1) * col(sc) + col(sh) + r).relu().mean((2, 3)), 512*512*9*7*7)
  mobilenet = [("stem 3x3/2 3->32 @224", 3, 32, 224, 3, 2, 1, 1), ("dw 3x3 32 @112", 32, 32, 112, 3, 1, 1, 32),
               ("pw 1x1 32->16 @112", 32, 16, 112, 1, 1, 0, 1), ("pw 1x1 16->96 @112", 16, 96, 112, 1, 1, 0, 1),
               ("dw 3x3/2 96 @112", 96, 96, 112, 3, 2, 1, 96), ("pw 1x1 96->24 @56", 96, 24, 56, 1, 1, 0, 1),
               ("pw 1x1 160->960 @7", 160, 960, 7, 1, 1, 0, 1)]
  if quick: mobilenet = mobilenet[1:3]
  for name, ci, co, hw, k, s, p, g in mobilenet:
    o = (hw + 2*p - k) // s + 1
    yield f"mobilenetv2 {name}", [(1, ci, hw, hw), (co, ci // g, k, k)], \
      (lambda s, p, g: lambda x, w: x.conv2d(w, stride=s, padding=p, groups=g))(s, p, g), co*(ci//g)*k*k*o*o

def timed(device:str, fn, arrays, reps:int, rounds:int=1) -> tuple[float, np.ndarray]:
  """Seconds per call (the best of `rounds` rounds of `reps` calls, each round ending with the result read) and the
  result."""
  ts = [Tensor(a, device=device).realize() for a in arrays]
  out = fn(*ts).realize(); Device[device].synchronize()   # compile, pack weights
  best = float("inf")
  for _ in range(rounds):
    st = time.perf_counter()
    for _ in range(reps): out = fn(*ts).realize()
    res = out.numpy()
    best = min(best, (time.perf_counter() - st) / reps)
  return best, res

def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--quick", action="store_true", help="a few small cases")
  ap.add_argument("--md", action="store_true", help="print a markdown table")
  ap.add_argument("--reps", type=int, default=2)
  ap.add_argument("--rounds", type=int, default=1, help="report the best of N rounds (a shared machine's noise)")
  ap.add_argument("--only", default="", help="run only the cases whose name contains this text (e.g. resnet18)")
  args = ap.parse_args()
  dev = Device["ROCKET"]
  stats = getattr(dev.driver.file, "stats", None)  # the emulator's counters; None on a real board
  rng = np.random.default_rng(0)
  rows = []
  for name, shapes, fn, useful_macs in cases(args.quick):
    if args.only not in name: continue
    arrays = [rng.uniform(-1, 1, s).astype(np.float32) for s in shapes]
    report.reset()
    t_cpu, ref = timed("CPU", fn, arrays, args.reps, args.rounds)
    # the emulator counts MACs issued exactly; "useful" comes from the shapes (the registers only know padded sizes)
    before = (stats.task_count, stats.macs_issued, stats.modeled_seconds(1e9, False), stats.modeled_seconds(2e8, False)) if stats else None
    t_rk, out = timed("ROCKET", fn, arrays, args.reps, args.rounds)
    engines = {r.engine for r in report.records()}
    where = "npu" if engines == {"npu"} else "fallback" if engines == {"fallback"} else "mixed"
    rules = sorted({r.reason.split()[0] for r in report.records() if r.engine == "npu"})   # summaries start with the rule's kind
    where_rule = f"{where} ({', '.join(rules)})" if rules else where
    why = next((r.reason for r in report.records() if r.engine == "fallback"), "")
    if stats and before:
      calls = args.reps * args.rounds + 1
      d = [(a - b) / calls for a, b in zip((stats.task_count, stats.macs_issued, stats.modeled_seconds(1e9, False),
                                              stats.modeled_seconds(2e8, False)), before)]
      tasks, issued, m1g, m200 = d
    else: tasks = issued = m1g = m200 = 0
    useful = useful_macs if where == "npu" else 0
    err = float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-30))
    rows.append((name, where_rule, tasks, useful / issued if issued else 0.0, m1g, m200, t_rk, t_cpu, err, why))
    print(f"{name:34s} {where_rule:8s} tasks {tasks:6.0f}  useful/issued {rows[-1][3]:5.2f}  model {m1g*1e3:8.3f} ms@1GHz {m200*1e3:8.3f} ms@200MHz"
          f"  rocket {t_rk*1e3:8.1f} ms  cpu {t_cpu*1e3:8.1f} ms  ratio {t_rk/t_cpu:6.2f}  maxrel {err:.1e}" + (f"  [{why}]" if why else ""), flush=True)
  if args.md:
    print(f"\n{run_line(dev.emulated)}\n")
    print("| case | runs on | NPU tasks | useful/issued MACs | modeled NPU ms @1 GHz | @200 MHz | ROCKET ms | CPU ms | ROCKET/CPU | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, where, tasks, eff, m1g, m200, t_rk, t_cpu, err, why in rows:
      print(f"| {name} | {where} | {tasks:.0f} | {eff:.2f} | {m1g*1e3:.3f} | {m200*1e3:.3f} | {t_rk*1e3:.1f} | {t_cpu*1e3:.1f} | {t_rk/t_cpu:.2f} | {why} |")

if __name__ == "__main__": main()
