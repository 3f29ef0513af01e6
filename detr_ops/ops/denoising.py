"""DINO's contrastive-denoising (CDN) matching, built on the device without host synchronisation.

DINO does not match its denoising queries: they are matched to targets by construction. Its
``prepare_for_cdn`` (``models/dino/dn_components.py``) lays the DN queries of every image out as
``num_groups`` groups of ``2 * max_targets`` queries: in group ``g``, query ``g * 2M + t`` is the
positive (lightly noised) copy of target ``t`` and query ``g * 2M + M + t`` its negative copy, for
``t < num_targets[b]`` (``M = max_targets``; the rest is padding). Its criterion
(``SetCriterion.forward`` in ``models/dino/dino.py``) then rebuilds the indices per image with
``torch.range(...).cuda()`` / ``torch.tensor(range(...)).cuda()`` (each a blocking host-to-device
copy), and ``prepare_for_cdn`` reads the largest target count with ``int(max(known_num))`` (a device
sync). Here the largest count is an argument and everything is computed on the device.

* :func:`dn_num_groups`: ``prepare_for_cdn``'s number of groups (``dn_meta["num_dn_group"]``).
* :func:`denoising_match`: the padded, sync-free form: the target of each DN query, ``[B, pad_size]``.
* :func:`denoising_match_indices`: DINO's ``(dn_pos_idx, dn_neg_idx)`` lists, exactly.
"""
from typing import List, Sequence, Tuple, Union

import torch

from detr_ops.ops import _checks


def _nonnegative_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def dn_num_groups(dn_number: int, max_targets: int) -> int:
    """The number of denoising groups DINO's ``prepare_for_cdn`` makes from its ``dn_number``
    argument (``args.dn_number``, 100 in DINO's configs) and the largest target count of the batch:
    ``dn_meta["num_dn_group"]``. The padded DN query count is ``2 * max_targets * num_groups``."""
    if isinstance(dn_number, bool) or not isinstance(dn_number, int):
        raise ValueError(f"dn_number must be an integer, got {dn_number!r}")
    max_targets = _nonnegative_int(max_targets, "max_targets")
    groups = dn_number * 2  # positive and negative queries
    if max_targets == 0:
        groups = 1
    elif groups >= 100:
        groups = groups // (max_targets * 2)
    elif groups < 1:
        groups = 1
    return 1 if groups == 0 else groups


def _check_layout(max_targets, num_groups) -> Tuple[int, int]:
    return _nonnegative_int(max_targets, "max_targets"), _nonnegative_int(num_groups, "num_groups")


def denoising_match(num_targets: torch.Tensor, max_targets: int, num_groups: int) -> torch.Tensor:
    """``col_for_row [B, 2 * max_targets * num_groups]`` int64 on ``num_targets``' device: the
    target index of each DN query of DINO's layout (positives), -1 for negatives and padding. The
    padded form of :func:`denoising_match_indices`, in the layout :meth:`HungarianMatcher.match`
    returns; sync-free and ``torch.compile``-able.

    ``num_targets``: ``[B]`` integer tensor; ``max_targets``: its largest value (DINO's
    ``single_pad``), known on the host; a ``num_targets[b]`` above it is clamped to it and a negative
    one to 0 (DINO has no such case: its counts are the targets' lengths)."""
    num_targets = _checks.index_tensor(num_targets, "num_targets")
    if num_targets.dim() != 1:
        raise ValueError(f"num_targets must be [B], got {tuple(num_targets.shape)}")
    M, G = _check_layout(max_targets, num_groups)
    t = torch.arange(M, device=num_targets.device)
    positive = torch.where(t[None, :] < num_targets[:, None], t[None, :], -1)  # [B, M]
    out = torch.stack([positive, torch.full_like(positive, -1)], 1)  # [B, 2 (positive, negative), M]
    return out[:, None].expand(-1, G, -1, -1).reshape(num_targets.shape[0], 2 * M * G)


def denoising_match_indices(num_targets: Union[Sequence[int], torch.Tensor], max_targets: int, num_groups: int,
                            device=None) -> Tuple[List[Tuple[torch.Tensor, torch.Tensor]],
                                                  List[Tuple[torch.Tensor, torch.Tensor]]]:
    """DINO's ``(dn_pos_idx, dn_neg_idx)``: per image, ``(output_idx, tgt_idx)`` int64 tensors on
    ``device``, identical to its criterion's (positives ``g * 2M + t``, negatives ``+ M``, group by
    group). ``max_targets`` is ``M`` (DINO's ``pad_size // num_dn_group // 2``).

    ``num_targets``: the target count of each image as host integers (``[len(t["labels"]) for t in
    targets]``, a list or a CPU tensor: no synchronisation), or a device tensor (then its values are
    copied to the host once, since per-image lists need them there). The indices are computed on
    the host, copied to the device once (non-blocking) and split by the host counts: no device
    synchronisation, whatever the batch size."""
    M, G = _check_layout(max_targets, num_groups)
    if isinstance(num_targets, torch.Tensor):
        counts_tensor = _checks.index_tensor(num_targets, "num_targets")
        if counts_tensor.dim() != 1:
            raise ValueError(f"num_targets must be [B], got {tuple(counts_tensor.shape)}")
        device = device if device is not None else counts_tensor.device
        counts = counts_tensor.tolist()  # the one host copy, for a device tensor
    else:
        if not isinstance(num_targets, (list, tuple)):
            raise ValueError(f"num_targets must be a list of ints or an integer tensor, got {type(num_targets).__name__}")
        counts = list(num_targets)
    for b, n in enumerate(counts):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n > M:
            raise ValueError(f"num_targets[{b}] = {n!r} must be an integer in [0, max_targets = {M}]")
    device = torch.device(device) if device is not None else torch.device("cpu")
    # Every image's G * n_b positives in one flat host vector (entry e of image b: group e // n_b,
    # target e % n_b), then one copy to the device, non-blocking (through pinned memory on a GPU):
    # the host already knows every value, and one copy replaces DINO's copies per image.
    sizes = [G * n for n in counts]
    total = sum(sizes)
    image = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(sizes, dtype=torch.int64),
                                    output_size=total)
    starts = torch.tensor(sizes, dtype=torch.int64).cumsum(0) - torch.tensor(sizes, dtype=torch.int64)
    local = torch.arange(total, dtype=torch.int64) - starts[image]
    count = torch.tensor(counts, dtype=torch.int64)[image]  # >= 1 wherever an entry exists
    tgt_idx = local % count.clamp(min=1)
    output_idx = (local // count.clamp(min=1)) * (2 * M) + tgt_idx
    host = torch.stack([output_idx, output_idx + M, tgt_idx])  # positives, negatives (+ single_pad // 2)
    indices = host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)
    positives = list(zip(indices[0].split(sizes), indices[2].split(sizes)))
    negatives = list(zip(indices[1].split(sizes), indices[2].split(sizes)))
    return positives, negatives
