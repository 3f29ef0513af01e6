"""The decoder's query segments during training and the self-attention mask that keeps them apart.

Training-only branches add queries to the decoder's one pass, in this order::

    [ denoising groups | main (one-to-one) | one-to-many (H-DETR) or groups 1..K-1 (Group DETR) | Co-DETR positives ]

Every size is a Python int fixed by the configuration (denoising uses a fixed number of target
slots per image), so the mask is a constant of the configuration: no data-dependent shape, no host
synchronisation. Rules (``True`` = may not attend, ``nn.MultiheadAttention``'s boolean mask):

* a denoising group sees itself and the main queries, never another group (DINO: the matching
  part must not see the noised ground truth, and one group's noise must not leak to another);
* the main queries see only themselves, so inference (main queries alone) computes what training
  computed for them;
* H-DETR's one-to-many queries, each Group DETR group and the Co-DETR positive queries each see only
  their own segment (H-DETR, Group DETR and Co-DETR's separate decoder pass do the same).
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QueryLayout:
    num_queries: int  # main one-to-one queries (group 0)
    dn_groups: int = 0  # denoising groups, each 2 * dn_group_size queries (positive half, negative half)
    dn_group_size: int = 0  # target slots per image (the fixed maximum number of targets)
    one_to_many: int = 0  # H-DETR hybrid-branch queries
    groups: int = 1  # Group DETR: query groups of num_queries each (group 0 is the main one)
    co_queries: int = 0  # Co-DETR positive queries per image

    @property
    def num_dn(self):
        return 2 * self.dn_groups * self.dn_group_size

    @property
    def num_extra_groups(self):
        return (self.groups - 1) * self.num_queries

    @property
    def total(self):
        return self.num_dn + self.groups * self.num_queries + self.one_to_many + self.co_queries

    def slices(self):
        """``{"dn", "main", "one_to_many", "co"}`` -> slice of the query axis; ``main`` covers all
        Group DETR groups (they are scored together, see :mod:`detr_ops.models.one_to_many`)."""
        out, start = {}, 0
        for name, size in (("dn", self.num_dn), ("main", self.groups * self.num_queries),
                           ("one_to_many", self.one_to_many), ("co", self.co_queries)):
            out[name] = slice(start, start + size)
            start += size
        return out

    def attention_mask(self, device):
        """``[total, total]`` bool mask, or None when the main queries are alone."""
        if self.total == self.num_queries:
            return None
        blocks = []  # (start, size) of every segment that sees only itself
        s = self.slices()
        main = s["main"].start
        for g in range(self.groups):
            blocks.append((main + g * self.num_queries, self.num_queries))
        if self.one_to_many:
            blocks.append((s["one_to_many"].start, self.one_to_many))
        if self.co_queries:
            blocks.append((s["co"].start, self.co_queries))
        size = 2 * self.dn_group_size
        for g in range(self.dn_groups):
            blocks.append((g * size, size))
        mask = torch.ones(self.total, self.total, dtype=torch.bool, device=device)
        for start, n in blocks:
            mask[start:start + n, start:start + n] = False
        if self.num_dn:
            # Denoising queries may look at the main (group 0) queries, as in DINO.
            mask[: self.num_dn, main:main + self.num_queries] = False
        return mask
