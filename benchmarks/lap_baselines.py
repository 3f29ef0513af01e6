"""The lap and lapx baselines of the assignment benchmarks.

lapx (the maintained fork of lap, with new single and batch solvers) installs its module under the
same name, ``lap``, as the original lap: the two cannot share one site-packages. The original lap
is the ``lap`` of the environment; ``scripts/setup_env.sh`` installs lapx into ``<venv>/lapx``
(``pip install --target``), and :func:`lapx` imports it from there under its own module name for
the time of the import, then restores ``lap`` (every function keeps the module it was defined in).
"""
import functools
import importlib
import os
import sys
from typing import Dict, Optional

# Where lapx is looked for: $DETR_OPS_LAPX_DIR, else <sys.prefix>/lapx (the venv's).
_LAPX_ATTRS = ("lapjv", "lapjvx", "lapjvs", "lapjvr", "lapjvx_batch", "lapjvs_batch", "lapjvr_batch")


def lap():
    """The original lap module, or None."""
    try:
        import lap as module
    except ImportError:
        return None
    return module


@functools.lru_cache(maxsize=None)
def lapx() -> Optional[Dict[str, object]]:
    """lapx's solvers by name (``_LAPX_ATTRS``) and its ``__version__``, or None when not installed."""
    directory = os.environ.get("DETR_OPS_LAPX_DIR", os.path.join(sys.prefix, "lapx"))
    if not os.path.isdir(os.path.join(directory, "lap")):
        return None
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "lap" or k.startswith("lap.")}
    sys.path.insert(0, directory)
    try:
        module = importlib.import_module("lap")
        found = {name: getattr(module, name) for name in _LAPX_ATTRS if hasattr(module, name)}
        found["__version__"] = getattr(module, "__version__", "?")
        return found
    except ImportError:
        return None
    finally:
        sys.path.remove(directory)
        for k in [k for k in sys.modules if k == "lap" or k.startswith("lap.")]:
            del sys.modules[k]
        sys.modules.update(saved)
