"""A few dozen steps on one batch must drive each model's training loss down by a clear factor:
the smallest end-to-end proof that gradients reach every part and the losses are consistent."""
import pytest
import torch

from detr_ops.models.train import param_groups
from tests.models_tiny import batch, tiny_model


@pytest.mark.parametrize("name", ["deformable_detr", "detr"])
def test_overfit_one_batch(name):
    torch.manual_seed(0)
    model, criterion = tiny_model(name)
    images, mask, targets = batch(2)
    optimizer = torch.optim.AdamW(param_groups(model, 3e-3), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = criterion.total(criterion(model(images, mask), targets)[0])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    # The first loss is the untrained one; the last five are averaged against step noise.
    assert sum(losses[-5:]) / 5 < losses[0] / 3, losses
