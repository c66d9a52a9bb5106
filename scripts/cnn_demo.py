#!/usr/bin/env python3
"""Run a small CNN on ROCKET, check it against tinygrad's CPU device, and print where each kernel ran and why."""
from __future__ import annotations
import argparse, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout without installing
import numpy as np
import tinygrad_rocket
from tinygrad_rocket import report
from tinygrad import Tensor, nn, Device

class SmallCNN:
  def __init__(self):
    self.c1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm(16)
    self.c2, self.c3 = nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Conv2d(32, 32, 1)
    self.fc = nn.Linear(32, 10)
  def __call__(self, x:Tensor) -> Tensor:
    x = self.bn1(self.c1(x)).relu().max_pool2d(2)
    x = (self.c3(self.c2(x).relu()) + 0.5).relu().mean(axis=(2, 3))
    return self.fc(x).softmax()

def run(device:str, weights:dict[str, np.ndarray], x:np.ndarray) -> tuple[np.ndarray, float]:
  m = SmallCNN()
  for k, v in nn.state.get_state_dict(m).items(): v.replace(Tensor(weights[k], device=device))
  st = time.perf_counter()
  out = m(Tensor(x, device=device)).numpy()
  return out, time.perf_counter() - st

def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--size", type=int, default=32, help="input height and width")
  ap.add_argument("--batch", type=int, default=2)
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  weights = {k: rng.uniform(0.5, 1.5 if "running_var" in k else -0.3, v.shape).astype(np.float32) if "running_var" in k else
             rng.uniform(-0.3, 0.3, v.shape).astype(np.float32) for k, v in nn.state.get_state_dict(SmallCNN()).items()}
  x = rng.uniform(-1, 1, (args.batch, 3, args.size, args.size)).astype(np.float32)

  dev = Device["ROCKET"]
  print(f"ROCKET device: {'emulator' if dev.emulated else 'NPU'} ({dev.backend_note})")
  report.reset()
  out_r, t_r = run("ROCKET", weights, x)
  out_c, t_c = run("CPU", weights, x)
  print(f"output {out_r.shape}, max |ROCKET - CPU| = {np.abs(out_r - out_c).max():.3g}; "
        f"top-1 agrees on {int((out_r.argmax(1) == out_c.argmax(1)).sum())}/{len(out_r)}")
  print(f"first run (incl. compile): ROCKET {t_r:.2f} s, CPU {t_c:.2f} s\n")
  recs = report.records()
  print(f"{'engine':9s} {'runs':>4s}  kernel: reason")
  for r in sorted(recs, key=lambda r: (r.engine, r.name)): print(f"{r.engine:9s} {r.runs:4d}  {r.name}: {r.reason}")
  npu = sum(r.runs for r in recs if r.engine == "npu")
  total = sum(r.runs for r in recs)
  print(f"\n{npu}/{total} kernel runs on the NPU, {total-npu} on the CPU fallback")

if __name__ == "__main__": main()
