"""Adversarial cases run in child processes, so that a crash (a segfault, an abort, a sanitizer
report) fails one test instead of killing pytest.

A case module declares its cases with :func:`case`; a test module turns them into tests with
:func:`parametrize`::

    # tests/adversarial/box_cases.py
    @case(raises=ValueError, match="boxes1")
    def float8_boxes():
        detr_ops.box_iou(torch.zeros(2, 4, dtype=torch.float8_e4m3fn), torch.rand(2, 4))

    # tests/test_adversarial.py
    @parametrize("tests.adversarial.box_cases")
    def test_box(outcome): outcome.check()

Starting Python and importing torch and detr_ops takes seconds, so one child runs every case of a
module in turn and reports each outcome as a JSON line as soon as it is known. When a case kills
the child, the cases after it run in a fresh child; the killed case is reported as a crash.

Each case runs with the case module's globals, so it can use module-level helpers and imports.
Outcomes: ``ok`` (returned), ``raised`` (a Python exception, with its type and message), ``crashed``
(the child died: signal or exit code, and the tail of its stderr), or ``timeout``.
"""
import dataclasses
import functools
import importlib
import json
import os
import subprocess
import sys
import traceback
from typing import Callable, Dict, Optional, Tuple, Type

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_REGISTRY: Dict[str, Dict[str, "Case"]] = {}
_MARK = "@@isolated@@ "


@dataclasses.dataclass
class Case:
    name: str
    fn: Callable
    raises: Optional[Tuple[Type[BaseException], ...]]
    match: Optional[str]


def case(raises=None, match: Optional[str] = None):
    """Declares a case. ``raises``: the exception type(s) the case must raise (None: it must return);
    ``match``: a regular expression the message must contain (the argument's name, say)."""
    if raises is not None and not isinstance(raises, tuple):
        raises = (raises,)

    def register(fn):
        cases = _REGISTRY.setdefault(fn.__module__, {})
        if fn.__name__ in cases:
            raise ValueError(f"duplicate case {fn.__module__}.{fn.__name__}")
        cases[fn.__name__] = Case(fn.__name__, fn, raises, match)
        return fn

    return register


def cases_of(module: str) -> Dict[str, Case]:
    importlib.import_module(module)
    return _REGISTRY.get(module, {})


@dataclasses.dataclass
class Outcome:
    module: str
    name: str
    kind: str  # ok | raised | crashed | timeout
    error_type: str = ""
    message: str = ""

    def check(self) -> None:
        spec = cases_of(self.module)[self.name]
        where = f"{self.module}.{self.name}"
        if self.kind in ("crashed", "timeout"):
            pytest.fail(f"{where} {self.kind}: {self.message}")
        if spec.raises is None:
            assert self.kind == "ok", f"{where} raised {self.error_type}: {self.message}"
            return
        names = {t.__name__ for t in spec.raises}
        assert self.kind == "raised", f"{where} returned; expected {sorted(names)}"
        assert self.error_type in names, f"{where} raised {self.error_type} ({self.message}); expected {sorted(names)}"
        if spec.match is not None:
            import re

            assert re.search(spec.match, self.message), f"{where}: message {self.message!r} does not match {spec.match!r}"


def _run_child(module: str, names, timeout: float):
    """Runs `names` of `module` in one child; returns ({name: Outcome}, names left unrun)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "tests.isolated", module, *names]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr, code = "", None
    done, started = {}, None
    for line in stdout.splitlines():
        if not line.startswith(_MARK):
            continue
        record = json.loads(line[len(_MARK):])
        if record["kind"] == "start":
            started = record["name"]
            continue
        done[record["name"]] = Outcome(module, **record)
        started = None
    rest = [n for n in names if n not in done]
    if started is not None:  # the child died (or hung) inside this case
        kind = "timeout" if code is None else "crashed"
        message = f"exit code {code}" if code is not None else f"no result within {timeout} s"
        done[started] = Outcome(module, started, kind, message=message + "; stderr tail: " + stderr[-2000:])
        rest = [n for n in rest if n != started]
    elif rest and code is not None and code != 0:
        # died before starting any case (import failure): report it on every case
        for n in rest:
            done[n] = Outcome(module, n, "crashed", message=f"child exit code {code}; stderr tail: {stderr[-2000:]}")
        rest = []
    return done, rest


@functools.lru_cache(maxsize=None)
def outcomes(module: str, timeout: float = 300.0) -> Dict[str, Outcome]:
    """Every case of `module`, each run in a child process (restarted after a crash)."""
    names = list(cases_of(module))
    result: Dict[str, Outcome] = {}
    while names:
        done, names = _run_child(module, names, timeout)
        if not done:  # no progress: should not happen, but never loop forever
            for n in names:
                result[n] = Outcome(module, n, "crashed", message="the child made no progress")
            break
        result.update(done)
    return result


def parametrize(module: str):
    """``@parametrize("tests.adversarial.x_cases")`` on ``def test_x(outcome)``: one test per case."""
    names = list(cases_of(module))
    return pytest.mark.parametrize("outcome", [pytest.param((module, n), id=n) for n in names], indirect=True)


@pytest.fixture
def outcome(request):
    module, name = request.param
    return outcomes(module)[name]


def _child(module: str, names) -> None:
    cases = cases_of(module)
    for name in names:
        print(_MARK + json.dumps({"kind": "start", "name": name}), flush=True)
        try:
            cases[name].fn()
            record = {"kind": "ok"}
        except BaseException as e:  # noqa: B902  (KeyboardInterrupt aside, everything is a result here)
            if isinstance(e, KeyboardInterrupt):
                raise
            record = {"kind": "raised", "error_type": type(e).__name__, "message": str(e)[:4000]}
            if os.environ.get("DETR_OPS_ISOLATED_TRACEBACK"):
                traceback.print_exc()
        print(_MARK + json.dumps({"name": name, **record}), flush=True)


if __name__ == "__main__":
    # Run through the importable module, not __main__, so that the case modules' `case` decorator
    # fills the same registry.
    from tests import isolated

    isolated._child(sys.argv[1], sys.argv[2:])
