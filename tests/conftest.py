"""Settings shared by every package's tests."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Property tests must stay cheap on a 2-core CI machine; set HYPOTHESIS_PROFILE=thorough locally for more.
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
