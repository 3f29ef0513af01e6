"""Adversarial cases (tests/isolated.py runs them in child processes): one module per op family."""
