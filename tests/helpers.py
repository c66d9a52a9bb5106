"""Running one tinygrad computation on ROCKET and on tinygrad's CPU device, from the same numpy inputs."""
from __future__ import annotations
import contextlib, os
import numpy as np
from tinygrad import Tensor

def on(device:str, fn, *arrays:np.ndarray, **kw) -> np.ndarray:
  return fn(*[Tensor(a, device=device) for a in arrays], **kw).numpy()

def rocket_and_cpu(fn, *arrays:np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:
  return on("ROCKET", fn, *arrays, **kw), on("CPU", fn, *arrays, **kw)

@contextlib.contextmanager
def env(**kv:str):
  old = {k: os.environ.get(k) for k in kv}
  os.environ.update(kv)
  try: yield
  finally:
    for k, v in old.items():
      if v is None: os.environ.pop(k, None)
      else: os.environ[k] = v
