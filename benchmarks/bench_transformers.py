"""Hugging Face transformers training steps, with and without ``detr_ops.integrations.transformers``.

Rows (see ``timing.py``): op ``hf_train_step``, case ``<model> d<d_model> Q<queries> B<batch>
<image>px``, pass ``fwd+loss+bwd`` (one optimiser-free training step: forward, the model's own
loss with its Hungarian matching, backward), impls ``transformers`` (baseline: transformers'
code) and ``detr_ops`` (the same model object under ``enable()``). The models are built from
configs (no downloads, tests/hf_tiny_models.py) at a small (d_model 128, 100 queries, 2 decoder
layers; quick profile) and a medium transformer size (d_model 256, 300 queries, 3 decoder layers;
full profile and GPU), on a deliberately small backbone (ResNet / HGNet widths 8-64), so the
step is dominated by what detr_ops replaces (deformable attention, matching) rather than by
convolutions; on a full-size backbone the ratio is smaller. Sampling offsets are moved off the
pixel-centre grid as in the tests. Before timing, the detr_ops step's loss is checked against
the baseline's. Skipped without transformers.
"""
import pytest
import torch

pytest.importorskip("transformers")

import detr_ops.integrations.transformers as hf  # noqa: E402
from benchmarks.backends import detr_ops_backends  # noqa: E402
from benchmarks.shapes import DEVICE, ON_GPU, pick  # noqa: E402
from benchmarks.timing import check_close, measure  # noqa: E402
from tests import hf_tiny_models  # noqa: E402

OP = "hf_train_step"
PASS = "fwd+loss+bwd"
# (model, d_model, queries, decoder layers, batch, image side)
# The quick profile times a small size (a step is ~0.1-0.5 s on 2 idle cores, so `make bench` stays
# quick); the full profile adds the medium size, 1-3 s a step; the GPU adds batch 8 at 512-640 px.
MODELS = ("deformable_detr", "rt_detr", "d_fine")
SHAPES = pick(
    quick=[(m, 128, 100, 2, 2, 128) for m in MODELS],
    full=[(m, 256, 300, 3, 2, 256) for m in MODELS],
    gpu=[(m, 256, 300, 3, 2, 256) for m in MODELS] + [(m, 256, 300, 6, 8, 640) for m in MODELS],
)
IMPLS = [("transformers", "baseline", "")] + [("detr_ops" if b == "native" else f"detr_ops-{b}", "detr_ops", b)
                                            for b in detr_ops_backends()]


def _case(name, d_model, queries, layers, batch, image):
    return f"{name} d{d_model} Q{queries} L{layers} B{batch} {image}px"


def _step(model, pixels, labels):
    torch.manual_seed(0)
    model.zero_grad(set_to_none=True)
    loss = model(pixel_values=pixels, labels=labels).loss
    loss.backward()
    return loss.detach()


@pytest.fixture(scope="module")
def models():
    """One model per shape, shared by its baseline and detr_ops rows (same weights, same batch)."""
    cache = {}

    def get(shape):
        if shape not in cache:
            name, d_model, queries, layers, batch, image = shape
            model = hf_tiny_models.build(name, dtype=torch.float32, d_model=d_model, queries=queries,
                                         layers=layers).to(DEVICE)
            pixels, labels = hf_tiny_models.batch(batch_size=batch, image=image, dtype=torch.float32,
                                                  targets=(12, 3, 7, 20, 1, 9, 5, 14))
            pixels = pixels.to(DEVICE)
            labels = [{k: v.to(DEVICE) for k, v in t.items()} for t in labels]
            expected = _step(model, pixels, labels)
            cache[shape] = (model, pixels, labels, expected)
        return cache[shape]

    yield get
    hf.disable()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: _case(*s).replace(" ", "-"))
@pytest.mark.parametrize("impl,role,backend", IMPLS, ids=lambda x: str(x))
def test_hf_train_step(benchmark, models, shape, impl, role, backend):
    model, pixels, labels, expected = models(shape)
    if role == "baseline":
        hf.disable()
    else:
        hf.enable(backend=backend)
        check_close(_step(model, pixels, labels), expected, rtol=1e-4, atol=1e-4, what="loss")
    try:
        measure(benchmark, lambda: _step(model, pixels, labels), op=OP, case=_case(*shape), impl=impl, role=role,
                backend=backend, pass_=PASS, device=DEVICE)
    finally:
        hf.disable()
    if ON_GPU:
        torch.cuda.synchronize()
