"""``detr_ops.integrations.transformers``: the same indices, losses and gradients as transformers'
own code, for every matcher and deformable-attention entry point it patches.

Skipped cleanly without transformers (an optional dependency; requirements-dev.txt pins the
tested version). The model tests build tiny detectors from configs (tests/hf_tiny_models.py), run
one training step (forward + loss + backward) in float64 with transformers' code and again under
``enabled()``, and compare losses and every parameter gradient; sampling offsets are moved off
the pixel-centre grid first (see hf_tiny_models.build), since at those kinks the one-sided
derivatives of grid_sample and of the kernels legitimately differ.
"""
import importlib

import pytest
import torch

transformers = pytest.importorskip("transformers")

import detr_ops.integrations.transformers as hf  # noqa: E402
from detr_ops.integrations import _hf_matchers, _hf_msda  # noqa: E402
from tests import hf_tiny_models  # noqa: E402

# Entry points the pinned transformers has, by modeling module (the docs list the models).
MSDA_MODULES = ("d_fine", "deformable_detr", "deimv2", "grounding_dino", "lw_detr", "mask2former",
                "mm_grounding_dino", "omdet_turbo", "oneformer", "pp_doclayout_v2", "pp_doclayout_v3",
                "pp_doclayout_v4", "rf_detr", "rt_detr", "rt_detr_v2")


@pytest.fixture(autouse=True)
def _clean_state():
    # One thread: on a busy 2-core machine torch's OpenMP team waits a scheduler slice per op,
    # which turns a 0.3 s tiny-model step into several seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    hf.disable()
    yield
    hf.disable()
    torch.set_num_threads(threads)


def _module(name):
    return importlib.import_module(f"transformers.models.{name}.modeling_{name}")


def _loss_module(name):
    return importlib.import_module(f"transformers.loss.{name}")


class Spy:
    """Counts calls of a module-level function that the adapters look up at call time (and keeps
    the backend each was given)."""

    def __init__(self, monkeypatch, module, name):
        self.calls = 0
        self.backends = []
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            self.calls += 1
            self.backends.append(kwargs.get("backend"))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)


# ---- enable / disable ------------------------------------------------------------------------------

def test_status_lists_every_entry_point_of_the_pinned_version():
    status = hf.enable()
    for name in MSDA_MODULES:
        assert status[f"transformers.models.{name}.modeling_{name}"].startswith("patched"), name
    for module, cls, _ in hf.MATCHERS:
        assert status[f"{module}.{cls}"] == "patched"
    assert "not patched" in status["GroundingDinoHungarianMatcher"]
    assert set(hf.modeling_modules()) == {f"transformers.models.{n}.modeling_{n}" for n in MSDA_MODULES}
    assert "multi_scale_deformable_attention_v2" in status["transformers.models.d_fine.modeling_d_fine"]
    assert "DFineMultiscaleDeformableAttention.ms_deformable_attn_core" in \
        status["transformers.models.d_fine.modeling_d_fine"]


def _patchable_attributes():
    found = []
    for name in MSDA_MODULES:
        mod = _module(name)
        for attr in ("multi_scale_deformable_attention", "multi_scale_deformable_attention_v2"):
            if attr in vars(mod):
                found.append((mod, attr))
        if "MultiScaleDeformableAttention" in vars(mod):
            found.append((mod.MultiScaleDeformableAttention, "forward"))
    for module, cls, _ in hf.MATCHERS:
        found.append((getattr(_loss_module(module.rsplit(".", 1)[1]), cls), "forward"))
    return found


def test_disable_restores_every_attribute_and_instances_built_meanwhile():
    before = [(owner, attr, vars(owner)[attr]) for owner, attr in _patchable_attributes()]
    dfine = _module("d_fine")
    built_before = hf_tiny_models.build("d_fine", dtype=torch.float32)
    hf.enable()
    assert all(vars(owner)[attr] is not original for owner, attr, original in before)
    built_during = hf_tiny_models.build("d_fine", dtype=torch.float32)
    for model in (built_before, built_during):
        attn = model.model.decoder.layers[0].encoder_attn
        assert attn.ms_deformable_attn_core is not dfine.multi_scale_deformable_attention_v2.__wrapped__
        assert attn.ms_deformable_attn_core.__wrapped__ is attn.__dict__["ms_deformable_attn_core"]
    hf.disable()
    assert all(vars(owner)[attr] is original for owner, attr, original in before)
    assert "ms_deformable_attn_core" not in vars(dfine.DFineMultiscaleDeformableAttention)
    for model in (built_before, built_during):
        attn = model.model.decoder.layers[0].encoder_attn
        assert attn.ms_deformable_attn_core is dfine.multi_scale_deformable_attention_v2


def test_enabled_restores_the_previous_state():
    assert not hf.is_enabled()
    with hf.enabled() as status:
        assert hf.is_enabled() and status
        with hf.enabled(matchers=False):
            assert not any(k.endswith("HungarianMatcher") and v == "patched" for k, v in hf.status().items())
        assert hf.status()["transformers.loss.loss_rt_detr.RTDetrHungarianMatcher"] == "patched"
    assert not hf.is_enabled() and hf.status() == {}


def test_enable_twice_is_the_same_as_once():
    forward = _module("rt_detr").MultiScaleDeformableAttention.forward
    hf.enable()
    hf.enable()
    hf.disable()
    assert _module("rt_detr").MultiScaleDeformableAttention.forward is forward


# ---- matchers --------------------------------------------------------------------------------------

def _rt_config(focal):
    return transformers.RTDetrConfig(matcher_class_cost=2.0, matcher_bbox_cost=5.0, matcher_giou_cost=2.0,
                                     use_focal_loss=focal, matcher_alpha=0.3, matcher_gamma=1.5)


MATCHERS = {
    "detr": lambda: _loss_module("loss_for_object_detection").HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2),
    "deformable_detr": lambda: _loss_module("loss_deformable_detr").DeformableDetrHungarianMatcher(
        class_cost=2, bbox_cost=5, giou_cost=2),
    "rt_detr_focal": lambda: _loss_module("loss_rt_detr").RTDetrHungarianMatcher(_rt_config(True)),
    "rt_detr_softmax": lambda: _loss_module("loss_rt_detr").RTDetrHungarianMatcher(_rt_config(False)),
    "lw_detr": lambda: _loss_module("loss_lw_detr").LwDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2),
}


def _problem(B=4, Q=12, K=6, sizes=(3, 0, 7, 12), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    outputs = {"logits": torch.randn(B, Q, K, generator=g, dtype=torch.float64).to(dtype),
               "pred_boxes": (torch.rand(B, Q, 4, generator=g, dtype=torch.float64) * 0.5 + 0.1).to(dtype)}
    targets = [{"class_labels": torch.randint(0, K, (n,), generator=g),
                "boxes": (torch.rand(n, 4, generator=g, dtype=torch.float64) * 0.5 + 0.1).to(dtype)}
               for n in sizes[:B]]
    return outputs, targets


def _call(kind, matcher, outputs, targets):
    return matcher(outputs, targets, 3) if kind == "lw_detr" else matcher(outputs, targets)


def _same_indices(a, b):
    assert len(a) == len(b)
    for (i, j), (ei, ej) in zip(a, b):
        assert i.dtype == ei.dtype == torch.int64 and j.dtype == ej.dtype == torch.int64
        assert torch.equal(i, ei) and torch.equal(j, ej)


def _compare(kind, outputs, targets, monkeypatch, fused=True):
    matcher = MATCHERS[kind]()
    expected = _call(kind, matcher, outputs, targets)
    spy = Spy(monkeypatch, _hf_matchers, "_match")
    with hf.enabled():
        got = _call(kind, matcher, outputs, targets)
    _same_indices(got, expected)
    assert spy.calls == (1 if fused else 0)
    return got


@pytest.mark.parametrize("kind", sorted(MATCHERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matcher_indices_identical(kind, dtype, monkeypatch):
    outputs, targets = _problem(dtype=dtype)
    # LW-DETR's matcher computes part of its cost in float32 whatever the dtype: float64 runs its code.
    _compare(kind, outputs, targets, monkeypatch, fused=not (kind == "lw_detr" and dtype == torch.float64))


@pytest.mark.parametrize("kind", sorted(MATCHERS))
def test_matcher_keeps_transformers_nan_and_inf_policy(kind, monkeypatch):
    """NaN and +-inf costs become the dtype's max (matched only when nothing else can be)."""
    outputs, targets = _problem(Q=6, sizes=(3, 0, 6, 5))
    outputs["logits"][0, 1] = float("nan")
    outputs["logits"][2, :, 0] = float("nan")          # whole columns of image 2 (label 0) NaN
    outputs["logits"][3, 2, 1] = float("inf")
    outputs["logits"][3, 4, 2] = float("-inf")
    outputs["logits"][2] = float("nan")                 # image 2: every cost NaN -> all max
    targets[2]["class_labels"][:] = 0
    _compare(kind, outputs, targets, monkeypatch)


def test_matcher_of_a_version_without_the_nan_policy_raises_like_scipy():
    """A transformers matcher that hands NaN costs to scipy (no nan_to_num in its forward) gets
    scipy's ValueError from the fused path too."""
    def forward_without_nan_policy(matcher, outputs, targets):
        raise AssertionError("the fused path handles this call")

    current = vars(type(MATCHERS["detr"]()))["forward"]
    assert _hf_matchers.replaces_nonfinite(current)
    assert not _hf_matchers.replaces_nonfinite(forward_without_nan_policy)
    forward = _hf_matchers.Adapters().detr(forward_without_nan_policy)
    outputs, targets = _problem()
    _same_indices(forward(MATCHERS["detr"](), outputs, targets), current(MATCHERS["detr"](), outputs, targets))
    outputs["logits"][2, 1] = float("nan")
    with pytest.raises(ValueError, match="invalid numeric entries"):
        forward(MATCHERS["detr"](), outputs, targets)


@pytest.mark.parametrize("kind", sorted(MATCHERS))
def test_matcher_ties_and_more_targets_than_queries(kind, monkeypatch):
    outputs, targets = _problem(B=2, Q=6, sizes=(9, 4))
    outputs["logits"][:, 3:] = outputs["logits"][:, :3]      # duplicated queries: exact ties
    outputs["pred_boxes"][:, 3:] = outputs["pred_boxes"][:, :3]
    _compare(kind, outputs, targets, monkeypatch)


@pytest.mark.parametrize("kind", sorted(MATCHERS))
def test_matcher_falls_back_where_transformers_raises(kind, monkeypatch):
    # A box with negative width fails transformers' corner check: the same ValueError.
    outputs, targets = _problem()
    outputs["pred_boxes"][1, 2, 2] = -0.1
    matcher = MATCHERS[kind]()
    with pytest.raises(ValueError, match="corner"):
        _call(kind, matcher, outputs, targets)
    with hf.enabled(), pytest.raises(ValueError, match="corner"):
        _call(kind, matcher, outputs, targets)
    # A label outside the classes: transformers' IndexError.
    outputs, targets = _problem()
    targets[0]["class_labels"][0] = 6
    with pytest.raises(IndexError):
        _call(kind, matcher, outputs, targets)
    with hf.enabled(), pytest.raises(IndexError):
        _call(kind, matcher, outputs, targets)


@pytest.mark.parametrize("kind", sorted(MATCHERS))
def test_matcher_falls_back_for_what_the_fused_cost_cannot_represent(kind, monkeypatch):
    # Zero-area prediction and target (transformers' GIoU is NaN there), half precision, NaN boxes
    # of the targets that still pass the corner check: transformers' code, identical indices.
    outputs, targets = _problem()
    outputs["pred_boxes"][0, 0, 2] = 0.0
    targets[0]["boxes"][1, 3] = 0.0
    _compare(kind, outputs, targets, monkeypatch, fused=False)
    outputs, targets = _problem()
    outputs["pred_boxes"][3, 5, 0] = float("inf")
    _compare(kind, outputs, targets, monkeypatch, fused=False)


@pytest.mark.parametrize("kind", sorted(MATCHERS))
def test_matcher_on_a_batch_without_targets(kind, monkeypatch):
    outputs, targets = _problem(B=2, sizes=(0, 0))
    got = _compare(kind, outputs, targets, monkeypatch)
    assert all(len(i) == len(j) == 0 for i, j in got)


def test_lw_detr_groups_that_do_not_divide_the_queries_fall_back(monkeypatch):
    outputs, targets = _problem(Q=10)
    matcher = MATCHERS["lw_detr"]()
    expected3, expected2 = matcher(outputs, targets, 3), matcher(outputs, targets, 2)
    spy = Spy(monkeypatch, _hf_matchers, "_match")
    with hf.enabled():
        _same_indices(matcher(outputs, targets, 3), expected3)   # 10 % 3 != 0: transformers' code
        assert spy.calls == 0
        _same_indices(matcher(outputs, targets, 2), expected2)   # fused, 2 groups of 5
        assert spy.calls == 1


# ---- deformable attention entry points ---------------------------------------------------------------

LEVELS = [(5, 6), (3, 4), (2, 2)]


def _msda_inputs(points, N=2, Lq=7, M=2, D=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in LEVELS)
    value = torch.randn(N, S, M, D, generator=g, dtype=torch.float64).to(dtype)
    total = sum(points) if isinstance(points, list) else points
    shape = (N, Lq, M, total) if isinstance(points, list) else (N, Lq, M, len(LEVELS), points)
    # Random locations, some outside [0, 1]: never exactly on a pixel centre.
    locations = (torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 1.3 - 0.15).to(dtype)
    weights = torch.rand(*shape, generator=g, dtype=torch.float64).to(dtype)
    return value, locations, weights


def _levels_tensors():
    shapes = torch.tensor(LEVELS)
    sizes = shapes[:, 0] * shapes[:, 1]
    return shapes, torch.cumsum(sizes, 0) - sizes


def _grads(fn, value, locations, weights):
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    out = fn(*leaves)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    return out.detach(), torch.autograd.grad(out, leaves, grad)


def _assert_same(fn_ours, fn_theirs, inputs, rtol=1e-10, atol=1e-12):
    out, grads = _grads(fn_ours, *inputs)
    ref, ref_grads = _grads(fn_theirs, *inputs)
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", [n for n in MSDA_MODULES if n not in ("mask2former", "oneformer", "rt_detr_v2",
                                                                        "d_fine", "deimv2")])
def test_module_entry_point_matches_transformers(name, monkeypatch):
    cls = _module(name).MultiScaleDeformableAttention
    original = cls.forward
    shapes, starts = _levels_tensors()
    attn = cls()
    theirs = lambda v, loc, w: original(attn, v, shapes, LEVELS, starts, loc, w, 64)  # noqa: E731
    spy = Spy(monkeypatch, _hf_msda, "ms_deform_attn")
    with hf.enabled():
        assert cls.forward is not original
        ours = lambda v, loc, w: attn(v, shapes, LEVELS, starts, loc, w, 64)  # noqa: E731
        _assert_same(ours, theirs, _msda_inputs(3))
    assert spy.calls == 1


@pytest.mark.parametrize("name", ["mask2former", "oneformer"])
def test_function_entry_point_matches_transformers(name, monkeypatch):
    mod = _module(name)
    original = mod.multi_scale_deformable_attention
    spy = Spy(monkeypatch, _hf_msda, "ms_deform_attn")
    with hf.enabled():
        patched = mod.multi_scale_deformable_attention
        assert patched is not original
        _assert_same(lambda v, loc, w: patched(v, LEVELS, loc, w), lambda v, loc, w: original(v, LEVELS, loc, w),
                     _msda_inputs(2))
        shapes, _ = _levels_tensors()
        _assert_same(lambda v, loc, w: patched(v, shapes, loc, w), lambda v, loc, w: original(v, LEVELS, loc, w),
                     _msda_inputs(2, seed=1))
    assert spy.calls == 2


@pytest.mark.parametrize("name", ["rt_detr_v2", "d_fine", "deimv2"])
@pytest.mark.parametrize("points", [[3, 3, 3], [3, 6, 3], [1, 2, 4]])
def test_v2_entry_point_matches_transformers(name, points, monkeypatch):
    mod = _module(name)
    original = mod.multi_scale_deformable_attention_v2
    spy = Spy(monkeypatch, _hf_msda, "ms_deform_attn")
    with hf.enabled():
        patched = mod.multi_scale_deformable_attention_v2
        assert patched is not original
        _assert_same(lambda v, loc, w: patched(v, LEVELS, loc, w, points, "default"),
                     lambda v, loc, w: original(v, LEVELS, loc, w, points, "default"), _msda_inputs(points))
    assert spy.calls == 1


def test_v2_discrete_method_runs_transformers_code(monkeypatch):
    mod = _module("d_fine")
    original = mod.multi_scale_deformable_attention_v2
    value, locations, weights = _msda_inputs([3, 6, 3])
    expected = original(value, LEVELS, locations, weights, [3, 6, 3], "discrete")
    spy = Spy(monkeypatch, _hf_msda, "ms_deform_attn")
    with hf.enabled():
        got = mod.multi_scale_deformable_attention_v2(value, LEVELS, locations, weights, [3, 6, 3], "discrete")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert spy.calls == 0


def test_points_list_is_exact_and_differentiable():
    """Unequal per-level point counts go to detr_ops.ms_deform_attn natively (num_points_list, no
    padding): the grid_sample result, and gradcheck in float64."""
    shapes, starts = _levels_tensors()
    points = [1, 3, 2]
    value, locations, weights = _msda_inputs(points, N=1, Lq=2, M=2, D=2)
    original = _module("d_fine").multi_scale_deformable_attention_v2
    _assert_same(lambda v, loc, w: _hf_msda.ms_deform_attn_points_list(v, shapes, starts, loc, w, points),
                 lambda v, loc, w: original(v, LEVELS, loc, w, points, "default"), (value, locations, weights))
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: _hf_msda.ms_deform_attn_points_list(v, shapes, starts, loc, w, points), leaves)
    with pytest.raises(ValueError, match="num_points_list"):
        _hf_msda.ms_deform_attn_points_list(value, shapes, starts, locations, weights, [1, 3, 3])


def test_points_list_passes_the_counts_to_the_op(monkeypatch):
    """The v2 layout reaches the op as is: locations [N, Lq, M, sum(P), 2] and the counts, unpadded."""
    shapes, starts = _levels_tensors()
    value, locations, weights = _msda_inputs([1, 3, 2], N=1, Lq=2, M=2, D=2)
    seen = {}
    real = _hf_msda.ms_deform_attn

    def spy(*args, **kwargs):
        seen.update(shape=tuple(args[3].shape), num_points_list=kwargs.get("num_points_list"))
        return real(*args, **kwargs)

    monkeypatch.setattr(_hf_msda, "ms_deform_attn", spy)
    _hf_msda.ms_deform_attn_points_list(value, shapes, starts, locations, weights, (1, 3, 2))
    assert seen == dict(shape=(1, 2, 2, 6, 2), num_points_list=[1, 3, 2])


def test_entry_points_fall_back_off_the_supported_devices_and_shapes():
    mod = _module("rt_detr_v2")
    original = mod.multi_scale_deformable_attention_v2
    value, locations, weights = _msda_inputs([2, 2, 2])
    with hf.enabled():
        patched = mod.multi_scale_deformable_attention_v2
        # a 6-d location tensor is not v2's layout: transformers' own error
        with pytest.raises(Exception) as ours:
            patched(value, LEVELS, locations.view(2, 7, 2, 3, 2, 2), weights, [2, 2, 2])
        with pytest.raises(type(ours.value)):
            original(value, LEVELS, locations.view(2, 7, 2, 3, 2, 2), weights, [2, 2, 2])


# ---- tiny models: one training step ------------------------------------------------------------------

def _step(model, pixels, labels):
    torch.manual_seed(123)  # denoising queries (RT-DETR family) draw random numbers
    model.zero_grad(set_to_none=True)
    out = model(pixel_values=pixels, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


# (model, dtype): float64 where transformers' model runs in float64 (DETR, DAB-DETR, D-FINE and
# DEIMv2 mix in float32 buffers and fail there, with or without detr_ops); LW-DETR's matcher takes
# the fused path in float32 only (see above).
FLOAT32_MODELS = ("detr", "dab_detr", "d_fine", "deimv2", "lw_detr")
MODEL_CASES = [(n, torch.float32 if n in FLOAT32_MODELS else torch.float64) for n in hf_tiny_models.MODELS]
NO_MSDA = ("detr", "conditional_detr", "dab_detr")
# Tiny D-FINE / DEIMv2 in training mode normalise 2 images' small maps with batch statistics, and
# their float32 gradients reach 1e7 with rounding noise of the same order; in eval mode (running
# statistics; dropout is off anyway) they are well conditioned. Loss and matching are the same code.
EVAL_MODELS = ("d_fine", "deimv2")


@pytest.mark.parametrize("name,dtype", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_tiny_model_training_step_is_unchanged(name, dtype, monkeypatch):
    model = hf_tiny_models.build(name, dtype=dtype)
    if name in EVAL_MODELS:
        model.eval()
    pixels, labels = hf_tiny_models.batch(dtype=dtype)
    expected, expected_grads = _step(model, pixels, labels)
    matches = Spy(monkeypatch, _hf_matchers, "_match")
    attends = Spy(monkeypatch, _hf_msda, "ms_deform_attn")
    with hf.enabled():
        got, grads = _step(model, pixels, labels)
    assert matches.calls >= 1
    assert (attends.calls > 0) == (name not in NO_MSDA)
    if name in NO_MSDA:
        rtol = atol = 0.0   # only the matching changed, to identical indices: bit-identical step
    else:
        rtol, atol = (1e-9, 1e-11) if dtype == torch.float64 else (2e-4, 1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=rtol, atol=atol)
    for key, value in expected.loss_dict.items():
        torch.testing.assert_close(got.loss_dict[key], value, rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")
    assert grads.keys() == expected_grads.keys()
    # Gradients: relative to each element, plus an absolute floor relative to the largest gradient
    # of the model (a gradient that is analytically 0, e.g. of an attention key bias, is rounding
    # noise in both runs).
    scale = max(float(g.abs().max()) for g in expected_grads.values())
    for key, value in expected_grads.items():
        torch.testing.assert_close(grads[key], value, rtol=rtol * 10, atol=atol * scale,
                                   msg=lambda m: f"{key}: {m}")


# ---- the Triton backend (CPU: only under TRITON_INTERPRET=1, see conftest) ----------------------------

@pytest.mark.triton
def test_triton_backend_matches_transformers(monkeypatch):
    """enable(backend="triton") reaches the Triton kernels: identical indices, same MSDA result."""
    outputs, targets = _problem(B=2, Q=5, K=3, sizes=(2, 3))
    matcher = MATCHERS["rt_detr_focal"]()
    expected = matcher(outputs, targets)
    mod = _module("d_fine")
    original = mod.multi_scale_deformable_attention_v2
    value, locations, weights = _msda_inputs([1, 2, 1], N=1, Lq=2, M=1, D=2, dtype=torch.float32)
    reference = original(value, LEVELS, locations, weights, [1, 2, 1], "default")
    costs = Spy(monkeypatch, _hf_matchers, "matching_cost")
    solves = Spy(monkeypatch, _hf_matchers, "batched_linear_sum_assignment")
    attends = Spy(monkeypatch, _hf_msda, "ms_deform_attn")
    with hf.enabled(backend="triton"):
        _same_indices(matcher(outputs, targets), expected)
        got = mod.multi_scale_deformable_attention_v2(value, LEVELS, locations, weights, [1, 2, 1], "default")
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    assert costs.backends == solves.backends == attends.backends == ["triton"]
