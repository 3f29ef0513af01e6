"""tests/isolated.py: cases run in child processes; a crash is reported, not fatal, and the cases
after it still run."""
from tests.isolated import outcomes

MODULE = "tests.adversarial.harness_cases"


def test_outcomes_of_each_kind():
    result = outcomes(MODULE)
    assert result["returns"].kind == "ok"
    assert result["raises_value_error"].kind == "raised"
    assert result["raises_value_error"].error_type == "ValueError"
    assert result["segfaults"].kind == "crashed" and "exit code -11" in result["segfaults"].message
    assert result["runs_after_a_crash"].kind == "ok"
    result["returns"].check()
    result["raises_value_error"].check()
