"""Route Hugging Face transformers' DETR family through detr_ops: one call, no model changes.

    import detr_ops.integrations.transformers as detr_ops_hf
    detr_ops_hf.enable()            # every matcher and deformable attention of the installed transformers
    ...train as usual...
    detr_ops_hf.disable()           # back to transformers' code
    with detr_ops_hf.enabled():     # or for a block only
        loss = model(pixel_values, labels=labels).loss

``enable()`` replaces, on transformers' own classes and modules (so models built before and after
the call are covered):

* the ``forward`` of the Hungarian matchers in ``transformers.loss``: ``HungarianMatcher``,
  ``DeformableDetrHungarianMatcher``, ``RTDetrHungarianMatcher``, ``LwDetrHungarianMatcher``
  (fused cost + batched exact solve, transformers' NaN/inf replacement; see ``_hf_matchers``);
* every modeling module's deformable-attention entry point: the ``MultiScaleDeformableAttention``
  module's ``forward``, ``multi_scale_deformable_attention`` and ``multi_scale_deformable_attention_v2``
  (see ``_hf_msda``), found by reading the installed modeling files, so a model added in a later
  transformers with the same entry point is covered without a change here.

Anything the fast paths cannot represent calls transformers' original code, so results and errors
outside them are transformers'. Matchers with a cost the fused kernel does not compute (Grounding
DINO's label-map class cost, RF-DETR's and Mask2Former-style mask costs) are left alone; ``status()``
lists what was patched and what was not.

transformers is an optional dependency: importing this module does not import it; ``enable()``
does, and raises ``ImportError`` when it is missing. A model or function missing from the
installed version is skipped, never an error.
"""
import contextlib
import importlib
import os
import pkgutil
import threading

# (module, class) of each matcher with a fused adapter, and the adapter's name in _hf_matchers.Adapters.
MATCHERS = (
    ("transformers.loss.loss_for_object_detection", "HungarianMatcher", "detr"),
    ("transformers.loss.loss_deformable_detr", "DeformableDetrHungarianMatcher", "deformable_detr"),
    ("transformers.loss.loss_rt_detr", "RTDetrHungarianMatcher", "rt_detr"),
    ("transformers.loss.loss_lw_detr", "LwDetrHungarianMatcher", "lw_detr"),
)
# Matchers known to have a cost the fused kernel does not compute: reported, left to transformers.
UNSUPPORTED_MATCHERS = {
    "GroundingDinoHungarianMatcher": "class cost from text label maps (a matrix product), not a per-label lookup",
    "RfDetrHungarianMatcher": "point-sampled mask costs (instance segmentation)",
    "Mask2FormerHungarianMatcher": "point-sampled mask costs, no boxes",
    "MaskFormerHungarianMatcher": "mask costs, no boxes",
    "OneFormerHungarianMatcher": "point-sampled mask costs, no boxes",
    "EomtHungarianMatcher": "point-sampled mask costs, no boxes",
    "EomtDinov3HungarianMatcher": "point-sampled mask costs, no boxes",
    "VideomtHungarianMatcher": "point-sampled mask costs, no boxes",
}
# The deformable-attention entry points, as they are spelled in the modeling files.
_MSDA_MARKERS = (b"class MultiScaleDeformableAttention(", b"def multi_scale_deformable_attention(",
                 b"def multi_scale_deformable_attention_v2(")
# D-FINE and DEIMv2 bind multi_scale_deformable_attention_v2 to each attention module at
# construction, under this attribute name.
_CORE_ATTR = "ms_deformable_attn_core"

_lock = threading.Lock()
_patches = []        # applied patches, in order: (owner, name, had_own, previous)
_report = {}         # what the last enable() found: target -> "patched" or the reason it was not
_modeling_modules = None
_last_kwargs = {}    # the arguments of the last enable(), for enabled() to restore


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - exercised where transformers is absent
        raise ImportError("detr_ops.integrations.transformers needs the transformers package "
                          "(pip install transformers)") from exc
    return transformers


def modeling_modules():
    """Names of the installed transformers' modeling modules that define a deformable-attention
    entry point (found by reading the files, without importing all ~500 models)."""
    global _modeling_modules
    if _modeling_modules is None:
        models = importlib.import_module("transformers.models")
        found = []
        for info in pkgutil.iter_modules(models.__path__):
            if not info.ispkg:
                continue
            path = os.path.join(models.__path__[0], info.name, f"modeling_{info.name}.py")
            try:
                with open(path, "rb") as f:
                    source = f.read()
            except OSError:
                continue
            if any(marker in source for marker in _MSDA_MARKERS):
                found.append(f"transformers.models.{info.name}.modeling_{info.name}")
        _modeling_modules = sorted(found)
    return list(_modeling_modules)


def _set(owner, name, value):
    had_own = name in vars(owner)
    _patches.append((owner, name, had_own, vars(owner).get(name)))
    setattr(owner, name, value)


def _core_property(original, replacement):
    """A property for ``ms_deformable_attn_core`` on D-FINE-style classes. Instances store the
    function in their ``__dict__`` at construction; a data descriptor on the class is looked up
    first, so existing and new instances read ``replacement`` where they stored transformers'
    function, and anything else (a user's own core) unchanged. Setting stores transformers'
    function in place of the replacement, so nothing of detr_ops stays behind after ``disable()``."""

    def get(module):
        core = module.__dict__.get(_CORE_ATTR, original)
        return replacement if core is original else core

    def set_(module, value):
        module.__dict__[_CORE_ATTR] = original if value is replacement else value

    return property(get, set_, doc="detr_ops.integrations.transformers: see _core_property")


def _patch_msda(module_name, msda):
    import torch.nn as nn

    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - a model whose optional dependencies are missing
        _report[module_name] = f"not patched: import failed ({type(exc).__name__}: {exc})"
        return
    done = []
    cls = getattr(module, "MultiScaleDeformableAttention", None)
    if isinstance(cls, type) and "forward" in vars(cls):
        _set(cls, "forward", msda.module_forward(vars(cls)["forward"]))
        done.append("MultiScaleDeformableAttention.forward")
    fn = getattr(module, "multi_scale_deformable_attention", None)
    if callable(fn):
        _set(module, "multi_scale_deformable_attention", msda.function_v1(fn))
        done.append("multi_scale_deformable_attention")
    fn = getattr(module, "multi_scale_deformable_attention_v2", None)
    if callable(fn):
        replacement = msda.function_v2(fn)
        _set(module, "multi_scale_deformable_attention_v2", replacement)
        done.append("multi_scale_deformable_attention_v2")
        for name, value in sorted(vars(module).items()):
            code = getattr(getattr(value, "__init__", None), "__code__", None)
            if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == module_name \
                    and code is not None and _CORE_ATTR in code.co_names:
                _set(value, _CORE_ATTR, _core_property(fn, replacement))
                done.append(f"{name}.{_CORE_ATTR}")
    _report[module_name] = "patched: " + ", ".join(done) if done else "not patched: no entry point found"


def _patch_matchers(matchers):
    for module_name, class_name, adapter in MATCHERS:
        target = f"{module_name}.{class_name}"
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except Exception as exc:  # noqa: BLE001 - absent in this transformers version
            _report[target] = f"not patched: not found ({type(exc).__name__})"
            continue
        if "forward" not in vars(cls):
            _report[target] = "not patched: no forward of its own"
            continue
        _set(cls, "forward", getattr(matchers, adapter)(vars(cls)["forward"]))
        _report[target] = "patched"
    for name, reason in UNSUPPORTED_MATCHERS.items():
        _report[name] = f"not patched (transformers' code runs, where the version has it): {reason}"


def enable(*, matchers: bool = True, deformable_attention: bool = True, backend: str = "auto") -> dict:
    """Routes the installed transformers' DETR-family matchers and deformable attention through
    detr_ops (idempotent: a second call first undoes the first). ``backend`` is passed to the ops
    (``"auto"``, ``"native"`` or ``"triton"``). Returns :func:`status`."""
    from detr_ops import _extension
    from detr_ops.integrations import _hf_matchers, _hf_msda

    _transformers()
    _extension.load()  # a clear error now rather than at the first training step
    with _lock:
        _undo()
        _last_kwargs.clear()
        _last_kwargs.update(matchers=matchers, deformable_attention=deformable_attention, backend=backend)
        if matchers:
            _patch_matchers(_hf_matchers.Adapters(backend))
        if deformable_attention:
            msda = _hf_msda.Adapters(backend)
            for module_name in modeling_modules():
                _patch_msda(module_name, msda)
    return status()


def _undo():
    while _patches:
        owner, name, had_own, previous = _patches.pop()
        if had_own:
            setattr(owner, name, previous)
        else:
            delattr(owner, name)
    _report.clear()


def disable() -> None:
    """Restores every attribute ``enable()`` replaced; transformers' code runs again."""
    with _lock:
        _undo()


def is_enabled() -> bool:
    return bool(_patches)


def status() -> dict:
    """What the last :func:`enable` patched, and what it left to transformers and why."""
    return dict(_report)


@contextlib.contextmanager
def enabled(**kwargs):
    """``enable(**kwargs)`` for the duration of a ``with`` block; on exit restores the state before
    it (disabled, or enabled with the earlier arguments)."""
    was_enabled, previous = is_enabled(), dict(_last_kwargs)
    enable(**kwargs)
    try:
        yield status()
    finally:
        if was_enabled:
            enable(**previous)
        else:
            disable()
