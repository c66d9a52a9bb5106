#!/usr/bin/env python3
"""What a call spanning several range windows costs (rules/tables.py RANGE_WINDOWS, device.py NpuRunner: each element
from the first window whose guards hold on it): `x.reciprocal()` whose arguments fit window 0 alone, span windows 0
and 1, and span windows 0 to 2, side by side with tinygrad's CPU device, wall time per call in one run.

    python scripts/bench_windows.py [--rounds 3] [--md]
"""
from __future__ import annotations
import argparse, os, sys, time
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinygrad_rocket  # noqa: F401
from tinygrad import Tensor, Device
from tinygrad_rocket import report
from bench_common import run_line

# argument ranges (1/x windows: [2^-4, 2^6], [63/64, 1008], [2^4, 2^14], ...): window 0 alone, 0 and 1, 0 to 2
SPANS = {"one window": (0.5, 50.0), "two windows": (0.5, 500.0), "three windows": (0.1, 5000.0)}
SHAPES = [(64, 16), (512, 64)]

def per_call(dev:str, x:np.ndarray, reps:int) -> tuple[float, dict]:
  X = Tensor(x, device=dev).realize()
  f = lambda: X.reciprocal().realize().numpy()
  f(); f()   # compiled, operands resident
  report.reset()
  st = time.perf_counter()
  for _ in range(reps): f()
  recs = [r for r in report.records() if r.engine == "npu"]
  return (time.perf_counter() - st) / reps, (recs[-1].detail if recs else {})

def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--md", action="store_true")
  args = ap.parse_args()
  rows = []
  for shape in SHAPES:
    n = int(np.prod(shape))
    for name, (lo, hi) in SPANS.items():
      x = np.geomspace(lo, hi, n).astype(np.float32).reshape(shape)
      best_r = best_c = float("inf")
      for _ in range(args.rounds):   # interleaved: both devices see the same machine load
        r, detail = per_call("ROCKET", x, args.reps)
        c, _ = per_call("CPU", x, args.reps)
        best_r, best_c = min(best_r, r), min(best_c, c)
      rows.append((f"{shape[0]}x{shape[1]}", name, len(detail) or 1, best_r * 1e3, best_c * 1e3))
  base = {s: r for s, name, _, r, _ in rows if name == "one window"}
  print(f"{run_line(Device['ROCKET'].emulated)}; best of {args.rounds} rounds of {args.reps} calls")
  print("| shape | arguments | windows used | ROCKET ms/call | CPU ms/call | ROCKET / CPU | vs one window |")
  print("|---|---|---|---|---|---|---|")
  for s, name, w, r, c in rows: print(f"| {s} | {name} | {w} | {r:.2f} | {c:.2f} | {r / c:.2f} | {r / base[s]:.2f} |")

if __name__ == "__main__": main()
