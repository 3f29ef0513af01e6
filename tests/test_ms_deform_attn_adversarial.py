"""Adversarial MSDA inputs (tests/adversarial/ms_deform_attn*_cases.py), each case in a child process
so that a crash fails its test instead of killing pytest."""
import pytest

from tests.isolated import parametrize


@parametrize("tests.adversarial.ms_deform_attn_cases")
def test_ms_deform_attn(outcome):
    outcome.check()


@pytest.mark.triton
@parametrize("tests.adversarial.ms_deform_attn_triton_cases")
def test_ms_deform_attn_triton(outcome):
    outcome.check()
