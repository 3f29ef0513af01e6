"""The assignment family's adversarial cases (tests/adversarial/linear_sum_assignment_cases.py), each
in a child process: a crash fails its test instead of killing pytest."""
from tests.isolated import parametrize


@parametrize("tests.adversarial.linear_sum_assignment_cases")
def test_linear_sum_assignment_adversarial(outcome):
    outcome.check()
