"""Hypothesis profiles, chosen by HYPOTHESIS_PROFILE (dev by default).

dev: quick local runs. ci: Hypothesis's own ci profile (derandomized, no deadline, no
database) with more examples. thorough: >= 1000 examples per property, for nightly runs.
"""

import os

from hypothesis import settings

settings.register_profile("dev", max_examples=60)
settings.register_profile("ci", settings.get_profile("ci"), max_examples=250)
settings.register_profile("thorough", max_examples=1000, deadline=None)
# Keep Hypothesis's own choice of "ci" when the CI variable is set and no profile is named.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# Integration evidence under .artifacts/<topic>/ (see tests/evidence_plugin.py).
pytest_plugins = ["tests.evidence_plugin"]
