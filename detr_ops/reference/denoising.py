"""DINO's denoising index code restated (``models/dino/dn_components.py``'s ``prepare_for_cdn`` and
``models/dino/dino.py``'s ``SetCriterion.forward`` / ``prep_for_dn``), with ``.cuda()`` replaced by a
``device`` argument: the reference :mod:`detr_ops.ops.denoising` is tested against."""
import torch


def dino_num_dn_groups(targets, dn_number: int) -> int:
    """``prepare_for_cdn``'s ``dn_number`` after its adjustments (``dn_meta["num_dn_group"]``)."""
    dn_number = dn_number * 2
    known = [torch.ones_like(t["labels"]) for t in targets]
    known_num = [sum(k) for k in known]
    if int(max(known_num)) == 0:
        dn_number = 1
    else:
        if dn_number >= 100:
            dn_number = dn_number // (int(max(known_num) * 2))
        elif dn_number < 1:
            dn_number = 1
    if dn_number == 0:
        dn_number = 1
    return dn_number


def dino_dn_meta(targets, dn_number: int) -> dict:
    """``prepare_for_cdn``'s ``dn_meta``: ``pad_size`` and ``num_dn_group``."""
    groups = dino_num_dn_groups(targets, dn_number)
    single_pad = int(max(sum(torch.ones_like(t["labels"])) for t in targets))
    return {"pad_size": int(single_pad * 2 * groups), "num_dn_group": groups}


def dino_dn_indices(targets, dn_meta: dict, device="cpu"):
    """DINO's ``dn_pos_idx`` and ``dn_neg_idx`` lists, as its criterion builds them."""
    num_dn_groups, pad_size = dn_meta["num_dn_group"], dn_meta["pad_size"]
    assert pad_size % num_dn_groups == 0
    single_pad = pad_size // num_dn_groups
    scalar = num_dn_groups
    dn_pos_idx, dn_neg_idx = [], []
    for i in range(len(targets)):
        if len(targets[i]["labels"]) > 0:
            t = torch.arange(0, len(targets[i]["labels"])).long().to(device)  # torch.range(0, n - 1)
            t = t.unsqueeze(0).repeat(scalar, 1)
            tgt_idx = t.flatten()
            output_idx = (torch.tensor(range(scalar)) * single_pad).long().to(device).unsqueeze(1) + t
            output_idx = output_idx.flatten()
        else:
            output_idx = tgt_idx = torch.tensor([]).long().to(device)
        dn_pos_idx.append((output_idx, tgt_idx))
        dn_neg_idx.append((output_idx + single_pad // 2, tgt_idx))
    return dn_pos_idx, dn_neg_idx
