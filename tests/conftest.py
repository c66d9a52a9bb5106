import os, sys
from hypothesis import settings, HealthCheck

sys.path.insert(0, os.path.dirname(__file__))  # tests/numerics.py and friends

# Every op test compiles fresh kernels for ROCKET and for CPU (clang, tens of ms each), so examples are costly:
# the "ci" profile keeps the whole suite well under CI's 20 minutes on 2 cores; "dev" explores more.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], derandomize=False)
settings.register_profile("ci", max_examples=12, **_common)
settings.register_profile("dev", max_examples=40, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

import tinygrad_rocket  # noqa: E402,F401  registers ROCKET before test modules evaluate devices

import pytest  # noqa: E402

@pytest.fixture(autouse=True)
def _contraction_tests_see_only_the_contraction_rule(request, monkeypatch):
  """tests/test_contraction.py checks the contraction rule's own programs (its reference executor runs matmul tiles
  only), so there the conv rule, which takes convolutions first, is left out of lower.RULES. (Until that module's
  contraction_rule() isolates the rule itself; kernels compiled earlier in the process with the same AST keep their
  program.)"""
  if request.module.__name__ == "test_contraction":
    from tinygrad_rocket import lower
    monkeypatch.setattr(lower, "RULES", [r for r in lower.RULES if r[0] != "conv"])
  yield
