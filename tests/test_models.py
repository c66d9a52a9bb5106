"""A small CNN forward and backward on ROCKET, against the same network on tinygrad's CPU device."""
import numpy as np
from tinygrad import Tensor, nn
from tinygrad.helpers import Context
import numerics as nm

class SmallCNN:
  def __init__(self):
    self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm(8)
    self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    self.fc = nn.Linear(16, 10)
  def __call__(self, x:Tensor) -> Tensor:
    self.z1 = self.c1(x)
    x = self.bn1(self.z1).relu().max_pool2d(2)
    x = self.c2(x).relu().mean(axis=(2, 3))
    return self.fc(x)

def _weights(seed:int) -> dict[str, np.ndarray]:
  rng, m = np.random.default_rng(seed), SmallCNN()
  return {k: rng.uniform(-0.5, 0.5, v.shape).astype(np.float32) for k, v in nn.state.get_state_dict(m).items()}

def _run(device:str, weights, x_np, y_np):
  m = SmallCNN()
  for k, v in nn.state.get_state_dict(m).items(): v.replace(Tensor(weights[k], device=device))
  for p in nn.state.get_parameters(m): p.requires_grad = True
  x, y = Tensor(x_np, device=device), Tensor(y_np, device=device)
  with Context(TRAINING=1):  # BatchNorm in training form: batch statistics
    out = m(x)
    loss = out.sparse_categorical_crossentropy(y)
    gz1 = loss.gradient(m.z1)[0].numpy()   # the terms c1.bias's gradient sums (before backward frees the graph)
    loss.backward()
  return out.numpy(), loss.item(), {k: v.grad.numpy() for k, v in nn.state.get_state_dict(m).items() if v.grad is not None}, gz1

def test_small_cnn_forward_backward():
  rng = np.random.default_rng(1)
  weights, x, y = _weights(0), rng.uniform(-1, 1, (2, 3, 12, 12)).astype(np.float32), np.array([3, 7], np.int32)
  out_r, loss_r, g_r, _ = _run("ROCKET", weights, x, y)
  out_c, loss_c, g_c, gz1 = _run("CPU", weights, x, y)
  assert set(g_r) == set(g_c) and len(g_r) >= 6
  # A whole network has no closed-form bound per element; bound it by the fp16 operand rounding (2^-11 relative, the
  # dominant term of every per-op bound in numerics.py) accumulated over the layers of the longest path (forward: 3
  # contractions + BN + pooling; backward doubles it), applied to the magnitude of each output.
  depth = 2 * 6
  rel = depth * 3 * nm.U16
  scale = lambda a: np.abs(a).max() + 1e-3
  assert np.abs(out_r - out_c).max() <= rel * scale(out_c)
  assert abs(loss_r - loss_c) <= rel * (abs(loss_c) + 1)
  # c1.bias's gradient is a sum over positions that BatchNorm makes cancel to ~0 exactly: its rounding errors scale with
  # the terms it sums (sum |dL/dz1| per channel), not with its own value
  terms = {"c1.bias": np.abs(gz1).sum(axis=(0, 2, 3)).max()}
  for k in g_c: assert np.abs(g_r[k] - g_c[k]).max() <= rel * max(scale(g_c[k]), terms.get(k, 0.0)), k
