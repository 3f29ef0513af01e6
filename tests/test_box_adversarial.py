"""Adversarial cases of the box ops, each run in a child process (tests/isolated.py), so a crash
fails one test instead of killing pytest: tests/adversarial/box_cases.py on the native ops and the
public functions, and the same cases on the Triton twins under the interpreter."""
import pytest

from tests.isolated import parametrize


@parametrize("tests.adversarial.box_cases")
def test_box_native(outcome):
    outcome.check()


@pytest.mark.triton
@parametrize("tests.adversarial.box_triton_cases")
def test_box_triton(outcome):
    outcome.check()
