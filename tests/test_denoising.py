"""DINO's denoising indices (detr_ops.denoising_match_indices / denoising_match / dn_num_groups)
against a restatement of DINO's own code (detr_ops/reference/denoising.py)."""
import pytest
import torch

import detr_ops
from detr_ops.reference.denoising import dino_dn_indices, dino_dn_meta, dino_num_dn_groups

BATCHES = [[3, 0, 5, 1], [0, 0], [7], [1, 1, 1], [100, 2]]


def targets_of(counts):
    return [{"labels": torch.zeros(n, dtype=torch.int64), "boxes": torch.rand(n, 4)} for n in counts]


@pytest.mark.parametrize("counts", BATCHES)
@pytest.mark.parametrize("dn_number", [100, 5, 0, 300])
def test_num_groups_is_prepare_for_cdns(counts, dn_number):
    assert detr_ops.dn_num_groups(dn_number, max(counts)) == dino_num_dn_groups(targets_of(counts), dn_number)


@pytest.mark.parametrize("counts", [c for c in BATCHES if max(c) > 0])
@pytest.mark.parametrize("dn_number", [100, 5])
def test_indices_are_dinos(counts, dn_number):
    targets = targets_of(counts)
    meta = dino_dn_meta(targets, dn_number)
    groups, max_targets = meta["num_dn_group"], meta["pad_size"] // meta["num_dn_group"] // 2
    expected_pos, expected_neg = dino_dn_indices(targets, meta)
    for num_targets in (counts, torch.tensor(counts), torch.tensor(counts, dtype=torch.int32)):
        pos, neg = detr_ops.denoising_match_indices(num_targets, max_targets, groups)
        for got, expected in ((pos, expected_pos), (neg, expected_neg)):
            assert len(got) == len(expected)
            for (o, t), (eo, et) in zip(got, expected):
                assert o.dtype == t.dtype == torch.int64
                assert torch.equal(o, eo) and torch.equal(t, et)


@pytest.mark.parametrize("counts", [c for c in BATCHES if max(c) > 0])
def test_padded_form_agrees_with_the_lists(counts):
    groups, M = 3, max(counts)
    col = detr_ops.denoising_match(torch.tensor(counts), M, groups)
    assert col.shape == (len(counts), 2 * M * groups)
    pos, _ = detr_ops.denoising_match_indices(counts, M, groups)
    for b, (o, t) in enumerate(pos):
        expected = torch.full((2 * M * groups,), -1, dtype=torch.int64)
        expected[o] = t
        assert torch.equal(col[b], expected)


def test_padded_form_compiles_fullgraph():
    fn = torch.compile(lambda n: detr_ops.denoising_match(n, 5, 4), fullgraph=True, backend="aot_eager")
    n = torch.tensor([5, 0, 2])
    assert torch.equal(fn(n), detr_ops.denoising_match(n, 5, 4))


@pytest.mark.parametrize("call,error,message", [
    (lambda: detr_ops.denoising_match_indices([3, 4], 3, 2), ValueError, r"num_targets\[1\] = 4 must be an integer in"),
    (lambda: detr_ops.denoising_match_indices([-1], 3, 2), ValueError, r"num_targets\[0\] = -1"),
    (lambda: detr_ops.denoising_match_indices("3", 3, 2), ValueError, "num_targets must be a list"),
    (lambda: detr_ops.denoising_match_indices([1], -3, 2), ValueError, "max_targets must be an integer >= 0"),
    (lambda: detr_ops.denoising_match_indices([1], 3, 1.5), ValueError, "num_groups must be an integer >= 0"),
    (lambda: detr_ops.denoising_match(torch.zeros(2, 2, dtype=torch.long), 3, 2), ValueError, r"num_targets must be \[B\]"),
    (lambda: detr_ops.denoising_match(torch.zeros(2), 3, 2), ValueError, "num_targets must be an integer tensor"),
    (lambda: detr_ops.denoising_match([1, 2], 3, 2), TypeError, "num_targets must be a torch.Tensor"),
    (lambda: detr_ops.dn_num_groups(100.0, 3), ValueError, "dn_number must be an integer"),
])
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()
