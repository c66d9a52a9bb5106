#!/usr/bin/env python3
"""Which kernels of small but realistic model blocks run on the NPU, which fall back and why: docs/models.md.

Each block (a ResNet stem + basic blocks + head, a MobileNetV2 inverted residual, a YOLO-style neck, a pre-norm
transformer block with causal attention) runs one warm forward pass on ROCKET (the NPU, or the emulator) and on
tinygrad's CPU device from the same weights; per block: kernels on the NPU, the largest difference to the CPU device
(relative to the largest output), and every kernel that did not run on the NPU with the reason the runtime reported
(lowering refusals and per-call guards alike: this is what ROCKET_DEBUG=1 prints).
    python scripts/model_coverage.py [--write]
"""
from __future__ import annotations
import argparse, datetime, os, subprocess, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np
import tinygrad_rocket  # noqa: F401  registers ROCKET
from tinygrad import Tensor, nn
from tinygrad_rocket import report

class ConvBN:
  def __init__(self, rng, cin:int, cout:int, k:int, stride:int=1, groups:int=1):
    self.conv, self.bn = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    self.bn.running_mean.assign(Tensor(rng.standard_normal(cout).astype(np.float32) * 0.1))
    self.bn.running_var.assign(Tensor(rng.uniform(0.5, 2, cout).astype(np.float32)))
  def __call__(self, x:Tensor) -> Tensor: return self.bn(self.conv(x))

class Basic:
  def __init__(self, rng, cin:int, cout:int, stride:int):
    self.c1, self.c2 = ConvBN(rng, cin, cout, 3, stride), ConvBN(rng, cout, cout, 3)
    self.down = ConvBN(rng, cin, cout, 1, stride) if stride != 1 or cin != cout else None
  def __call__(self, x:Tensor) -> Tensor: return (self.c2(self.c1(x).relu()) + (self.down(x) if self.down else x)).relu()

class ResNet:
  """ResNet-18's structure at a small width: 7x7/2 stem + BN + ReLU + 3x3/2 max pool, a stage of one basic block, a
  stage as ResNet-18's later ones (a downsample block, then an identity block), global average pool, linear, softmax."""
  def __init__(self, rng):
    self.stem, self.l1, self.fc = ConvBN(rng, 3, 16, 7, 2), Basic(rng, 16, 16, 1), nn.Linear(32, 10)
    self.l2 = [Basic(rng, 16, 32, 2), Basic(rng, 32, 32, 1)]
  def __call__(self, x:Tensor) -> Tensor:
    x = self.l1(self.stem(x).relu().max_pool2d(3, 2, padding=1))
    for block in self.l2: x = block(x)
    return self.fc(x.mean((2, 3))).softmax()

class InvertedResidual:
  """MobileNetV2: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 project, residual add."""
  def __init__(self, rng, c:int, expand:int):
    self.a, self.b, self.c = ConvBN(rng, c, c * expand, 1), ConvBN(rng, c * expand, c * expand, 3, groups=c * expand), ConvBN(rng, c * expand, c, 1)
  def __call__(self, x:Tensor) -> Tensor: return x + self.c(self.b(self.a(x).relu6()).relu6())

class YoloNeck:
  """conv + BN + leaky(0.1), a 1x1 and a strided 3x3 branch, nearest 2x upsampling, channel concat, sigmoid."""
  def __init__(self, rng): self.a, self.b, self.c = ConvBN(rng, 16, 32, 3), ConvBN(rng, 32, 16, 1), ConvBN(rng, 32, 16, 3, 2)
  def __call__(self, x:Tensor) -> Tensor:
    y = self.a(x).leaky_relu(0.1)
    up = self.c(y).silu().repeat_interleave(2, 2).repeat_interleave(2, 3)
    return self.b(y).leaky_relu(0.1).cat(up, dim=1).sigmoid()

class TransformerBlock:
  """Pre-norm: layernorm, causal multi-head attention, residual, layernorm, GELU MLP, residual."""
  def __init__(self, rng, dim:int, heads:int):
    self.heads, self.ln1, self.ln2 = heads, nn.LayerNorm(dim), nn.LayerNorm(dim)
    self.qkv, self.out, self.up, self.down = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
  def __call__(self, x:Tensor) -> Tensor:
    B, L, D = x.shape
    q, k, v = [t.reshape(B, L, self.heads, D // self.heads).transpose(1, 2) for t in self.qkv(self.ln1(x)).chunk(3, -1)]
    x = x + self.out(q.scaled_dot_product_attention(k, v, is_causal=True).transpose(1, 2).reshape(B, L, D))
    return x + self.down(self.up(self.ln2(x)).gelu())

BLOCKS = {
  "ResNet (stem, max pool, 3 basic blocks, head)": (ResNet, (1, 3, 64, 64)),
  "MobileNetV2 inverted residual": (lambda rng: InvertedResidual(rng, 16, 6), (1, 16, 28, 28)),
  "YOLO-style neck (leaky, upsample, concat)": (YoloNeck, (1, 16, 32, 32)),
  "transformer block (causal attention, GELU MLP)": (lambda rng: TransformerBlock(rng, 64, 4), (2, 16, 64)),
}

def forward(ctor, shape:tuple, device:str) -> tuple[np.ndarray, list]:
  rng = np.random.default_rng(0)   # the same weights and input on both devices
  Tensor.manual_seed(0)
  model = ctor(rng)
  x = rng.standard_normal(shape).astype(np.float32)
  for v in nn.state.get_state_dict(model).values(): v.replace(v.to(device)).realize()
  X = Tensor(x, device=device).realize()
  model(X).realize()   # compile, pack the weights
  report.reset()
  out = model(X).numpy()
  return out, report.records()

def table() -> list[str]:
  lines = ["| block | kernels on the NPU | max abs difference to the CPU device / max abs output |", "|---|---|---|"]
  details = []
  for name, (ctor, shape) in BLOCKS.items():
    r, recs = forward(ctor, shape, "ROCKET")
    c, _ = forward(ctor, shape, "CPU")
    npu = sum(rec.engine == "npu" for rec in recs)
    lines.append(f"| {name} | {npu} / {len(recs)} | {np.abs(r - c).max():.2e} / {np.abs(c).max():.2e} |")
    details += [f"- {name}: `{rec.name}`: {rec.reason}" for rec in recs if rec.engine != "npu"]
  return lines + ["", "Kernels that did not run on the NPU, with the reason:", ""] + (details or ["- none"])

def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--write", action="store_true", help="rewrite docs/models.md")
  args = ap.parse_args()
  lines = table()
  print("\n".join(lines))
  if args.write:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    head = ["# Model blocks on ROCKET", "", f"Generated by `python scripts/model_coverage.py --write` ({datetime.date.today()}, "
            f"commit {commit}, float32, batch as listed in the script). Warm forward pass; a kernel's engine and reason are "
            "the runtime's (report.records()).", ""]
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "models.md"), "w") as f:
      f.write("\n".join(head + lines) + "\n")

if __name__ == "__main__": main()
