#!/usr/bin/env python3
"""Chains of NPU convolutions on ROCKET next to tinygrad's CPU device, in one run: where layout coherence pays (each
layer packs its input from the previous layer's result cube; only the last result is unpacked).

Per case: wall time per forward pass of ROCKET (on the emulator: the emulation itself) and of the CPU device, as a
ratio, eager and under TinyJit, and what the layout coherence did per forward pass (operand packs from plain memory,
packs from a result cube, unpacks). Warm calls, batch 1, float32, the best of --rounds rounds of --reps passes.
    python scripts/bench_model.py [--md] [--reps N] [--rounds N]
"""
from __future__ import annotations
import argparse, os, sys, time
from dataclasses import asdict
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_common import run_line  # noqa: E402  (scripts/ is on the path when a script runs)
import numpy as np
import tinygrad_rocket  # noqa: F401  registers ROCKET
from tinygrad import Tensor, Device, TinyJit

# (name, input (C, H, W), layers (out channels, kernel, stride, padding)); every layer is conv + ReLU
CASES = [
  ("3x conv 3x3 64->64 @56", (64, 56, 56), [(64, 3, 1, 1)] * 3),
  ("resnet18 l2 convs: 3x3/2 64->128 @56, 3x 3x3 128->128 @28", (64, 56, 56), [(128, 3, 2, 1)] + [(128, 3, 1, 1)] * 3),
  ("resnet18 l3+l4 convs: 3x3/2 128->256 @28, 3x3 256->256, 3x3/2 256->512, 3x3 512->512", (128, 28, 28),
   [(256, 3, 2, 1), (256, 3, 1, 1), (512, 3, 2, 1), (512, 3, 1, 1)]),
]

def weights(c_in:int, layers:list, rng) -> list[np.ndarray]:
  out = []
  for c, k, _, _ in layers:
    out.append((rng.uniform(-1, 1, (c, c_in, k, k)) / np.sqrt(c_in * k * k)).astype(np.float32))
    c_in = c
  return out

def forward(x:Tensor, ws:list[Tensor], layers:list) -> Tensor:
  for w, (_, _, s, p) in zip(ws, layers): x = x.conv2d(w, stride=s, padding=p).relu()
  return x

def timed(device:str, x:np.ndarray, w:list[np.ndarray], layers:list, jit:bool, reps:int, rounds:int) -> tuple[float, np.ndarray, dict]:
  X, W = Tensor(x, device=device).realize(), [Tensor(a, device=device).realize() for a in w]
  f = TinyJit(lambda X: forward(X, W, layers).realize()) if jit else (lambda X: forward(X, W, layers).realize())
  for _ in range(3): out = f(X)   # compile (and capture the JIT), pack the weights
  out.numpy()
  stats = getattr(Device[device], "layout_stats", None)
  before = asdict(stats) if stats is not None else {}
  best = float("inf")
  for _ in range(rounds):
    st = time.perf_counter()
    for _ in range(reps): out = f(X)
    res = out.numpy()
    best = min(best, (time.perf_counter() - st) / reps)
  per = {k: (v - before[k]) / (reps * rounds) for k, v in asdict(stats).items()} if stats is not None else {}
  return best, res, per

def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--md", action="store_true", help="print a markdown table")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--rounds", type=int, default=3)
  args = ap.parse_args()
  dev = Device["ROCKET"]
  rng = np.random.default_rng(0)
  rows = []
  for name, shape, layers in CASES:
    x = rng.uniform(-1, 1, (1, *shape)).astype(np.float32)
    w = weights(shape[0], layers, rng)
    for jit in (False, True):
      t_cpu, ref, _ = timed("CPU", x, w, layers, jit, args.reps, args.rounds)
      t_rk, out, per = timed("ROCKET", x, w, layers, jit, args.reps, args.rounds)
      err = float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-30))
      rows.append((name, "TinyJit" if jit else "eager", t_rk, t_cpu, per, err))
      print(f"{name:90s} {rows[-1][1]:7s} rocket {t_rk*1e3:8.1f} ms  cpu {t_cpu*1e3:8.1f} ms  ratio {t_rk/t_cpu:5.2f}  "
            f"per pass: packed {per['packed']:.1f} from cube {per['packed_native']:.1f} kept {per['pack_skipped']:.1f} "
            f"unpacked {per['unpacked']:.1f}  maxrel {err:.1e}", flush=True)
  if args.md:
    print(f"\n{run_line(dev.emulated)}\n")
    print("| layers (conv + ReLU each) | mode | ROCKET ms | CPU ms | ROCKET/CPU | packs from plain / from cube / kept, unpacks per pass |")
    print("|---|---|---|---|---|---|")
    for name, mode, t_rk, t_cpu, per, err in rows:
      print(f"| {name} | {mode} | {t_rk*1e3:.1f} | {t_cpu*1e3:.1f} | {t_rk/t_cpu:.2f} | "
            f"{per['packed']:.1f} / {per['packed_native']:.1f} / {per['pack_skipped']:.1f}, {per['unpacked']:.2f} |")

if __name__ == "__main__": main()
