"""Cases that exercise tests/isolated.py itself (tests/test_isolated.py)."""
import os
import signal

from tests.isolated import case


@case()
def returns():
    pass


@case(raises=ValueError, match="named argument")
def raises_value_error():
    raise ValueError("the named argument is wrong")


@case()
def segfaults():
    os.kill(os.getpid(), signal.SIGSEGV)


@case()
def runs_after_a_crash():
    pass
