#!/usr/bin/env python3
"""Which conv / matmul / pooling / elementwise / activation configurations lower to the NPU and which fall back, with the reasons: docs/coverage.md.

Lowering is decided from the kernel alone (no device is opened), so this runs anywhere:
    python scripts/coverage_report.py            # prints the table
    python scripts/coverage_report.py --write    # also rewrites docs/coverage.md
"""
from __future__ import annotations
import argparse, os, subprocess, sys, datetime
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinygrad_rocket  # noqa: F401
from tinygrad import Tensor, dtypes
from tinygrad_rocket._tg import Ops
from tinygrad_rocket.lower import lower_kernel, NotApplicable

def configs():
  E = Tensor.empty
  yield "matmul 64x64x64", lambda: E(64, 64) @ E(64, 64)
  yield "matmul 1x4096x4096 (matvec)", lambda: E(1, 4096) @ E(4096, 4096)
  yield "matmul 512x16384x64 (K > 16384/2 bytes per kernel)", lambda: E(512, 16384) @ E(16384, 64)
  yield "matmul 16x40000x16 (tinygrad splits a K of 32768+ itself)", lambda: E(16, 40000) @ E(40000, 16)
  yield "matmul fp16 128x256x128", lambda: E(128, 256, dtype=dtypes.half) @ E(256, 128, dtype=dtypes.half)
  yield "batched matmul 8x64x32x64", lambda: E(8, 64, 32) @ E(8, 32, 64)
  yield "linear with bias (x@W.T + b)", lambda: E(32, 128).linear(E(64, 128).T, E(64))
  yield "matmul + 1 (epilogue)", lambda: E(16, 16) @ E(16, 16) + 1
  yield "conv2d 3x3 s1 p1 64->64 @56x56", lambda: E(1, 64, 56, 56).conv2d(E(64, 64, 3, 3), padding=1)
  yield "conv2d 7x7 s2 p3 3->64 @224x224", lambda: E(1, 3, 224, 224).conv2d(E(64, 3, 7, 7), stride=2, padding=3)
  yield "conv2d 3x3 s2 p1 3->32 @224x224 (MobileNetV2 stem)", lambda: E(1, 3, 224, 224).conv2d(E(32, 3, 3, 3), stride=2, padding=1)
  yield "conv2d 1x1 s2 128->256 @28x28", lambda: E(1, 128, 28, 28).conv2d(E(256, 128, 1, 1), stride=2)
  yield "conv2d 3x3 dilation 2", lambda: E(1, 16, 20, 20).conv2d(E(16, 16, 3, 3), dilation=2, padding=2)
  yield "conv2d groups=4", lambda: E(2, 16, 12, 12).conv2d(E(32, 4, 3, 3), groups=4, padding=1)
  yield "depthwise 3x3 32ch @112x112", lambda: E(1, 32, 112, 112).conv2d(E(32, 1, 3, 3), groups=32, padding=1)
  yield "depthwise 3x3 s2 96ch @112x112", lambda: E(1, 96, 112, 112).conv2d(E(96, 1, 3, 3), groups=96, stride=2, padding=1)
  yield "conv2d 3x3 512->512 @7x7", lambda: E(1, 512, 7, 7).conv2d(E(512, 512, 3, 3), padding=1)
  yield "conv2d 3x3 2048->64 @7x7 (36 KiB of weights per kernel)", lambda: E(1, 2048, 7, 7).conv2d(E(64, 2048, 3, 3), padding=1)
  yield "conv2d 3x3 batch 4 + relu", lambda: E(4, 16, 8, 8).conv2d(E(16, 16, 3, 3), padding=1).relu()
  yield "conv2d 2x2 s3 (gaps between windows)", lambda: E(1, 8, 9, 9).conv2d(E(8, 8, 2, 2), stride=3)
  yield "conv1d 1x1 of one image", lambda: E(1, 8, 100).conv2d(E(16, 8, 1))
  yield "conv2d + bias", lambda: E(1, 16, 8, 8).conv2d(E(16, 16, 3, 3), E(16), padding=1)
  yield "conv2d + bias + relu", lambda: E(1, 16, 8, 8).conv2d(E(16, 16, 3, 3), E(16), padding=1).relu()
  yield "conv2d + BatchNorm(eval) + relu", lambda: (E(1, 16, 8, 8).conv2d(E(16, 16, 3, 3), padding=1) - E(1, 16, 1, 1)).mul(E(1, 16, 1, 1)).add(E(1, 16, 1, 1)).relu()
  yield "conv2d + residual + relu (ResNet)", lambda: (E(1, 16, 8, 8).conv2d(E(16, 16, 3, 3), padding=1) + E(1, 16, 8, 8)).relu()
  yield "conv2d + relu6", lambda: E(1, 16, 8, 8).conv2d(E(16, 16, 3, 3), padding=1).relu6()
  yield "conv1d k3", lambda: E(4, 8, 100).conv2d(E(16, 8, 3))
  yield "conv2d int8", lambda: E(1, 16, 8, 8, dtype=dtypes.int8).conv2d(E(16, 16, 3, 3, dtype=dtypes.int8))
  yield "conv2d int8 3x3 s1 p1 64->64 @56x56", lambda: E(1, 64, 56, 56, dtype=dtypes.int8).conv2d(E(64, 64, 3, 3, dtype=dtypes.int8), padding=1)
  yield "depthwise int8 3x3 32ch @56x56", lambda: E(1, 32, 56, 56, dtype=dtypes.int8).conv2d(E(32, 1, 3, 3, dtype=dtypes.int8), groups=32, padding=1)
  yield "conv2d int8, int32 accumulator + relu (quantized layer)", lambda: E(1, 16, 8, 8, dtype=dtypes.int8).conv2d(E(32, 16, 3, 3, dtype=dtypes.int8), padding=1, dtype=dtypes.int32).relu()
  yield "matmul int8 (a.int8 @ b.int8 -> int8)", lambda: E(64, 64, dtype=dtypes.int8) @ E(64, 64, dtype=dtypes.int8)
  yield "matmul int8 -> int32 (matmul(dtype=int32))", lambda: E(64, 256, dtype=dtypes.int8).matmul(E(256, 64, dtype=dtypes.int8), dtype=dtypes.int32)
  yield "batched matmul int8 8x64x32x64", lambda: E(8, 64, 32, dtype=dtypes.int8) @ E(8, 32, 64, dtype=dtypes.int8)
  yield "matmul int8 K=12000 (beyond one task)", lambda: E(16, 12000, dtype=dtypes.int8).matmul(E(12000, 32, dtype=dtypes.int8), dtype=dtypes.int32)
  yield "matmul int8 + int32 bias (quantized linear)", lambda: E(16, 64, dtype=dtypes.int8).matmul(E(64, 32, dtype=dtypes.int8), dtype=dtypes.int32) + E(32, dtype=dtypes.int32)
  yield "matmul int8 requantized to int8 (scale, round, clip)", lambda: (E(16, 64, dtype=dtypes.int8).matmul(E(64, 32, dtype=dtypes.int8), dtype=dtypes.int32).float() * 0.01).round().clip(-128, 127).cast(dtypes.int8)
  yield "matmul uint8", lambda: E(16, 64, dtype=dtypes.uint8) @ E(64, 32, dtype=dtypes.uint8)
  yield "max_pool2d 2x2 64ch @112x112", lambda: E(1, 64, 112, 112).max_pool2d(2)
  yield "max_pool2d 3x3 s2 64ch @112x112", lambda: E(1, 64, 112, 112).max_pool2d(3, stride=2)
  yield "max_pool2d 3x3 s2 p1 64ch @112x112 (ResNet stem)", lambda: E(1, 64, 112, 112).max_pool2d(3, stride=2, padding=1)
  yield "max_pool2d fp16 2x2 32ch @56x56", lambda: E(2, 32, 56, 56, dtype=dtypes.half).max_pool2d(2)
  yield "max_pool1d k3 s2 (max_pool2d((3,)))", lambda: E(4, 8, 100).max_pool2d((3,), stride=2)
  yield "global max x.max(axis=(2,3)) 512ch @7x7", lambda: E(1, 512, 7, 7).max(axis=(2, 3))
  yield "global max 16ch @32x32 (telescoped)", lambda: E(1, 16, 32, 32).max(axis=(2, 3))
  yield "global min x.min(axis=(2,3))", lambda: E(1, 64, 14, 14).min(axis=(2, 3))
  yield "avg_pool2d 2x2", lambda: E(1, 64, 56, 56).avg_pool2d(2)
  # elementwise kernels, activations and what models build from them
  yield "a + b", lambda: E(64, 64) + E(64, 64)
  yield "a * b + c (broadcast c)", lambda: E(64, 64) * E(64, 64) + E(64)
  yield "relu6(2a - 1)", lambda: (E(1000) * 2 - 1).relu6()
  yield "clamp(a, -1, 1)", lambda: E(1000).clip(-1, 1)
  yield "maximum(a, b), minimum(a, b)", lambda: E(1000).maximum(E(1000)).minimum(E(1000))
  yield "a * b + c * d (two computed values)", lambda: E(100) * E(100) + E(100) * E(100)
  yield "fp16 a * b", lambda: E(64, 64, dtype=dtypes.half) * E(64, 64, dtype=dtypes.half)
  yield "sigmoid", lambda: E(1000).sigmoid()
  yield "tanh", lambda: E(1000).tanh()
  yield "silu", lambda: E(1000).silu()
  yield "gelu", lambda: E(1000).gelu()
  yield "hardswish", lambda: E(1000).hardswish()
  yield "exp (guarded: argument <= 0)", lambda: E(1000).exp()
  yield "log (guarded)", lambda: E(1000).log()
  yield "sqrt, rsqrt (guarded)", lambda: E(1000).sqrt() + 0
  yield "reciprocal (guarded seed + Newton steps)", lambda: E(1000).reciprocal()
  yield "x / y (y per row)", lambda: E(8, 64) / E(8, 1)
  yield "max(a * b, c * d)", lambda: (E(100) * E(100)).maximum(E(100) * E(100))
  yield "sigmoid(a) * tanh(b) (two tables meet)", lambda: E(100).sigmoid() * E(100).tanh()
  yield "softmax final kernel exp(x - max) / sum", lambda: (E(8, 64) - E(8, 1)).exp() / E(8, 1)
  yield "layernorm final kernel (x - mean) / std", lambda: (E(8, 64) - E(8, 1)) / E(8, 1)
  yield "linear + gelu", lambda: (E(32, 128) @ E(128, 256) + E(256)).gelu()
  yield "conv2d + bias + silu (YOLO)", lambda: E(1, 16, 20, 20).conv2d(E(32, 16, 3, 3), E(32), padding=1).silu()
  yield "softmax(-1)", lambda: E(8, 64).softmax(-1)
  yield "layernorm", lambda: E(8, 64).layernorm()
  yield "attention softmax(q k^T / sqrt(d)) v, 2 heads of 16x32", lambda: E(1, 2, 16, 32).scaled_dot_product_attention(E(1, 2, 16, 32), E(1, 2, 16, 32))
  yield "relu(x) @ w (a computed operand)", lambda: E(32, 64).relu() @ E(64, 16)
  yield "relu(x).conv2d(w) (a computed conv input)", lambda: E(1, 8, 10, 10).relu().conv2d(E(16, 8, 3, 3), padding=1)
  yield "(2x + 1).conv2d(w, padding=1) (padded affine prologue)", lambda: (E(1, 8, 10, 10) * 2 + 1).conv2d(E(16, 8, 3, 3), padding=1)
  yield "((x - mean) / std).conv2d(w, stride=2, padding=3) @112x112 (normalized stem)", \
    lambda: ((E(1, 3, 112, 112) - E(1, 3, 1, 1)) / E(1, 3, 1, 1)).conv2d(E(64, 3, 7, 7), stride=2, padding=3)
  yield "((x - mean) / std).conv2d(w, stride=2, padding=3) @224x224 (normalized stem)", \
    lambda: ((E(1, 3, 224, 224) - E(1, 3, 1, 1)) / E(1, 3, 1, 1)).conv2d(E(64, 3, 7, 7), stride=2, padding=3)
  yield "sum((x - mean)^2) (variance)", lambda: ((E(8, 64) - E(8, 1)) ** 2).sum(-1)
  H = lambda *shape: E(*shape, dtype=dtypes.half)
  yield "fp16 (x > y).where(x, y)", lambda: (H(64, 64) > H(64, 64)).where(H(64, 64), H(64, 64))
  yield "fp16 (x > 0).where(x, 0) (ReLU's backward form)", lambda: (H(64, 64) > 0).where(H(64, 64), 0)
  yield "fp16 x.masked_fill(x < y, -1)", lambda: H(64, 64).masked_fill(H(64, 64) < H(64, 64), -1)
  yield "fp16 x * mask (a stored bool: dropout)", lambda: H(64, 64) * E(64, 64, dtype=dtypes.bool)
  yield "float32 (x > 0).where(g, 0) (ReLU's backward in float32)", lambda: (E(64, 64) > 0).where(E(64, 64), 0)
  yield "attention with a bool padding mask", lambda: E(1, 2, 16, 32).scaled_dot_product_attention(E(1, 2, 16, 32), E(1, 2, 16, 32), attn_mask=E(1, 1, 1, 16, dtype=dtypes.bool))
  yield "copy of a permuted view", lambda: E(16, 32).permute(1, 0).contiguous()

def verdicts(make):
  lin, _ = make().linear_with_vars()
  for call in lin.src:
    if call.src[0].op is Ops.SINK:
      res = lower_kernel(call.src[0])
      yield ("NPU", res.summary) if not isinstance(res, NotApplicable) else ("fallback", res.reason)

def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--write", action="store_true")
  args = ap.parse_args()
  rows = [f"| {name} | {where} | {why} |" for name, make in configs() for where, why in verdicts(make)]
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"
  head = [f"# NPU coverage of convolutions, matmuls, pooling, elementwise kernels and activations", "",
          f"Generated by `python scripts/coverage_report.py --write` on {datetime.date.today()} at commit {commit}.",
          "One row per tinygrad kernel the expression compiles to.", "",
          "| expression | runs on | what / why not |", "|---|---|---|"]
  text = "\n".join(head + rows) + "\n"
  print(text)
  if args.write:
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "coverage.md"), "w") as f: f.write(text)

if __name__ == "__main__": main()
