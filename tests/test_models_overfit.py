"""A few dozen steps on one batch must drive each model's training loss down by a clear factor:
the smallest end-to-end proof that gradients reach every part and the losses are consistent.

DINO trains on its whole loss, but the factor is checked on the terms of fixed targets: the
denoising terms are drawn with fresh noise every step (a quarter of the noised labels are wrong
by design), so they do not fall by a fixed factor on one batch in a few dozen steps (their
arithmetic is tested against DINO's in test_models_dino.py). The noise also makes DINO's path
on one batch chaotic (float32 rounding alone, e.g. 1 vs 2 threads, changes it): over 8 runs
(4 seeds x 1, 2 threads) 100 steps cut the fixed terms by 3.1x-9.8x, hence 100 steps and 2.5x."""
import pytest
import torch

from detr_ops.models.train import param_groups
from tests.models_tiny import batch, tiny_model


@pytest.mark.parametrize("name,overrides", [("deformable_detr", {}), ("detr", {}), ("dino", {}),
                                            ("dino", {"co_head": True, "one_to_many": 2})],
                         ids=["deformable_detr", "detr", "dino", "dino_co_head_one_to_many"])
def test_overfit_one_batch(name, overrides):
    torch.manual_seed(0)
    model, criterion = tiny_model(name, **overrides)
    images, mask, targets = batch(2)
    optimizer = torch.optim.AdamW(param_groups(model, 3e-3), lr=3e-3)
    fixed = []
    steps, factor = (100, 2.5) if name == "dino" else (50, 3)
    for _ in range(steps):
        losses = criterion(model(images, mask, targets), targets)[0]
        loss = criterion.total(losses)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        fixed.append(criterion.total({k: v for k, v in losses.items() if "_dn" not in k}).item())
    # The first loss is the untrained one; the last five are averaged against step noise.
    assert sum(fixed[-5:]) / 5 < fixed[0] / factor, fixed
