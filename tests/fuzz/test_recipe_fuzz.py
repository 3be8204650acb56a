"""The quick profile of the recipe fuzzer (recipe_fuzz.py): 100 mutated shipped recipes through `recipe check`,
each exit 0 or exit 2 with one message, never a traceback or a hang. `make fuzz` runs the long profile."""

import os
import time

import pytest

from recipe_fuzz import SHIPPED, fuzz, summary

CASES = int(os.environ.get("DLFORGE_FUZZ_CASES", "100"))


def test_every_shipped_recipe_is_a_fuzz_seed():
    names = {p.name for p in SHIPPED}
    assert "digits.yaml" in names and len(SHIPPED) >= 10


@pytest.mark.slow
def test_fuzzed_recipes_give_exit_0_or_one_clear_error():
    started = time.perf_counter()
    # Derandomized: the same cases on every run, so a failure here is reproducible; the long profile explores.
    tally = fuzz(CASES, seed=0)
    report = summary(tally, time.perf_counter() - started)
    broken = tally.tracebacks + tally.hangs
    assert tally.cases == CASES and tally.aborted is None, report
    assert not broken, report + "\n" + "\n\n".join(f"{origin} {ops}\n{error}" for origin, ops, error in broken[:3])
    assert tally.refused and tally.accepted, report  # the mutations reach both outcomes
