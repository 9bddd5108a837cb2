"""Hypothesis profiles for the property tests and the rules-loader fuzzer.

`ci` (the default) is reproducible: derandomized (the same examples on every run, so a
failure in CI fails again on a laptop) and without an example database. Set
HYPOTHESIS_PROFILE=explore to hunt: random examples, ten times as many, the failures
kept in .hypothesis/ (git ignores it) and replayed first on the next run.
"""

import atexit
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=5000, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "explore", derandomize=False, deadline=5000, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
SCALE = 10 if PROFILE == "explore" else 1
if PROFILE == "ci" and not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    # Hypothesis caches (Unicode tables, constants from the source) in .hypothesis/ even
    # without an example database; a test run leaves nothing behind, so they go here instead.
    _home = tempfile.mkdtemp(prefix="hypothesis-")
    set_hypothesis_home_dir(_home)
    atexit.register(shutil.rmtree, _home, ignore_errors=True)


def examples(n: int) -> settings:
    """The profile's settings with `n` examples (ten times as many when exploring)."""
    return settings(max_examples=n * SCALE)
