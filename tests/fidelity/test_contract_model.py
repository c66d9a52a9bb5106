"""Every test of test_emu_fidelity.py, run now with contract_model.execute as the NPU's block executor.

This proves the builders, the harness (EmuFile + RocketDriver placement, regcmd slots, jobs, PREP_BO failures), the
decoders, the references and EMULATOR_CONTRACT.md agree with each other. It says nothing about the emulator's own
block execution, which test_emu_fidelity.py checks once tinygrad_rocket/emu/blocks.py exists.
"""
import pytest

from .test_emu_fidelity import *   # noqa: F401,F403  (collects every fidelity test again in this module)
from . import contract_model

pytestmark = []   # unlike test_emu_fidelity.py, nothing here needs the emulator's blocks

@pytest.fixture(scope="module")
def executor():
  return contract_model.execute
