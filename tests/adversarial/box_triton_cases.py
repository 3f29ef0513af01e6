"""The adversarial cases of box_cases.py on the Triton twins of the raw ops (``*_triton``), run by
tests/test_box_adversarial.py under the interpreter (``TRITON_INTERPRET=1``, inherited by the child
process). Same cases, same expected errors: the launchers share the checks of the native ops."""
from tests.adversarial import box_cases
from tests.isolated import _REGISTRY, Case

box_cases.SUFFIX = "_triton"

# Every case of box_cases, registered under this module so that tests/isolated.py runs them here,
# with SUFFIX set. (Their globals are box_cases's, whose SUFFIX this module has just set.)
_REGISTRY[__name__] = {name: Case(name, c.fn, c.raises, c.match)
                       for name, c in _REGISTRY["tests.adversarial.box_cases"].items()}
