"""A ResNet basic block and a MobileNet depthwise-separable block (eval form) on ROCKET with every kernel on the NPU
(strict mode), each layer checked against tinygrad's CPU device within its derived bound.

Layers run one by one with the CPU's output of the previous layer as input on both devices, so each comparison is one
fused kernel (conv + BatchNorm folded + [residual] + ReLU) with the bound of numerics.bound_dot: n products with fp16
operands (weights scaled by the BatchNorm slope s), one more for the intercept t and, with a residual, one more."""
import numpy as np
from tinygrad import Tensor, nn
from tinygrad_rocket import report
import numerics as nm
from helpers import env

def bn_params(rng, c):
  return dict(gamma=rng.uniform(0.5, 1.5, c).astype(np.float32), beta=rng.uniform(-0.5, 0.5, c).astype(np.float32),
              mean=rng.uniform(-0.5, 0.5, c).astype(np.float32), var=rng.uniform(0.5, 1.5, c).astype(np.float32))

def layer(device, x, w, bn, groups=1, stride=1, padding=1, residual=None, relu=True):
  m = nn.BatchNorm(w.shape[0])
  m.weight, m.bias = Tensor(bn["gamma"], device=device), Tensor(bn["beta"], device=device)
  m.running_mean, m.running_var = Tensor(bn["mean"], device=device), Tensor(bn["var"], device=device)
  y = m(Tensor(x, device=device).conv2d(Tensor(w, device=device), groups=groups, stride=stride, padding=padding))
  if residual is not None: y = y + Tensor(residual, device=device)
  return (y.relu() if relu else y).numpy()

def check_layer(x, w, bn, groups=1, stride=1, padding=1, residual=None, relu=True, what=""):
  report.reset()
  with env(ROCKET_FALLBACK="0"): r = layer("ROCKET", x, w, bn, groups, stride, padding, residual, relu)
  # every layer on the conv datapath (rules/conv.py), its epilogue fused there (tests/test_conv_epilogue.py)
  assert report.records() and all(rec.engine == "npu" and rec.reason.startswith("conv (") for rec in report.records()), report.records()
  c = layer("CPU", x, w, bn, groups, stride, padding, residual, relu)
  s = bn["gamma"].astype(np.float64) / np.sqrt(bn["var"].astype(np.float64) + 1e-5)
  t = bn["beta"] - bn["mean"] * s
  kw = dict(groups=groups, stride=stride, padding=padding)
  conv64 = lambda a, b: Tensor(np.abs(a).astype(np.float64), device="CPU").conv2d(Tensor(np.abs(b).astype(np.float64), device="CPU"), **kw).numpy()
  ws = w * s[:, None, None, None]
  col = lambda v: np.abs(v).reshape(1, -1, 1, 1)
  S = conv64(x, ws) + col(t) + (np.abs(residual) if residual is not None else 0)
  n = (w.shape[1] * w.shape[2] * w.shape[3]) + 1 + (residual is not None)
  amax = float(np.abs(x).max() + np.abs(ws).max() + np.abs(t).max() + (np.abs(residual).max() if residual is not None else 0))
  # CPU: an fp32 conv of n-2 terms, then (acc - mean) * gamma * rsqrt(var + eps) + beta [+ r] in fp32: 6 roundings
  acc = conv64(x, w)
  b_cpu = nm.gamma(n, nm.U32) * acc * col(s) + 6 * nm.U32 * ((acc + col(bn["mean"])) * col(s) + col(bn["beta"]) +
                                                           (np.abs(residual) if residual is not None else 0))
  nm.assert_within(r, c, nm.bound_dot(nm.rocket("float32"), S, n, amax) + b_cpu, what)
  return c

def test_resnet_basic_block():
  rng = np.random.default_rng(0)
  C = 16
  x = rng.uniform(-1, 1, (2, C, 10, 10)).astype(np.float32)
  w1, w2 = (rng.uniform(-0.3, 0.3, (C, C, 3, 3)).astype(np.float32) for _ in range(2))
  bn1, bn2 = bn_params(rng, C), bn_params(rng, C)
  h = check_layer(x, w1, bn1, what="conv1+bn1+relu")
  check_layer(h, w2, bn2, residual=x, what="conv2+bn2+skip+relu")

def test_mobilenet_depthwise_separable_block():
  rng = np.random.default_rng(1)
  C, E = 8, 24
  x = rng.uniform(-1, 1, (1, C, 12, 12)).astype(np.float32)
  we = rng.uniform(-0.4, 0.4, (E, C, 1, 1)).astype(np.float32)   # expand 1x1
  wd = rng.uniform(-0.4, 0.4, (E, 1, 3, 3)).astype(np.float32)   # depthwise 3x3
  wp = rng.uniform(-0.4, 0.4, (C, E, 1, 1)).astype(np.float32)   # project 1x1
  h = check_layer(x, we, bn_params(rng, E), padding=0, what="expand")
  h = check_layer(h, wd, bn_params(rng, E), groups=E, what="depthwise")
  check_layer(h, wp, bn_params(rng, C), padding=0, residual=x, relu=False, what="project+skip")
