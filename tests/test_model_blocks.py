"""The model blocks of scripts/model_coverage.py (docs/models.md: a small ResNet with ResNet-18's structure, a
MobileNetV2 inverted residual, a YOLO-style neck with a concatenation, a pre-norm transformer block with causal
attention) on ROCKET in strict mode: every kernel of a warm forward pass runs on the NPU, and the output matches
tinygrad's CPU device.

Bound: a block has no closed-form bound per element (softmax, layernorm and the tables compose nonlinearly); as in
tests/test_models.py, each kernel contributes at most a few fp16 operand roundings (3 * 2^-11 relative, the dominant
term of every per-op bound in numerics.py) of the block's output magnitude, summed over the block's kernels. The
per-kernel bounds are asserted by the per-op tests; this one catches a kernel that leaves the NPU or a gross error in
how the kernels compose (a dropped epilogue, a wrong fill)."""
import os, sys
import numpy as np
import pytest
import numerics as nm
from helpers import env
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from model_coverage import BLOCKS, forward   # noqa: E402

@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_on_npu(name:str):
  ctor, shape = BLOCKS[name]
  with env(ROCKET_FALLBACK="0"): got, recs = forward(ctor, shape, "ROCKET")
  want, _ = forward(ctor, shape, "CPU")
  assert recs and all(rec.engine == "npu" for rec in recs), [(rec.name, rec.reason) for rec in recs if rec.engine != "npu"]
  assert np.abs(got - want).max() <= len(recs) * 3 * nm.U16 * np.abs(want).max(), (name, np.abs(got - want).max())
