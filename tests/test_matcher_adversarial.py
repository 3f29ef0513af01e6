"""The matching-cost family's adversarial cases (tests/adversarial/matcher_cases.py), each in a
child process: a crash fails its case instead of pytest."""
from tests.isolated import parametrize


@parametrize("tests.adversarial.matcher_cases")
def test_matcher_case(outcome):
    outcome.check()
