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

