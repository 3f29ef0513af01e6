"""``HungarianMatcher``: drop-in for the DETR family's Hungarian matchers, on the fused ops.

The originals build a cross-image cost matrix, copy it to the host and loop scipy per image, once
per decoder layer, query group and branch. This one computes each image's cost block in one kernel
(:func:`detr_ops.matching_cost`) and solves all images in one call
(:func:`detr_ops.batched_linear_sum_assignment`), on the outputs' device, with scipy's exact
indices; ``forward_many`` / ``match_many`` do it for every outputs dict of a training step at once
(engine: :mod:`detr_ops.ops.hungarian_matching`).

* ``forward(outputs, targets)`` returns what the original returns: a list of
  ``(index_i, index_j)`` int64 CPU tensors. It copies the result to the host once, as the original
  does (building per-image lists of different lengths needs the sizes on the host).
* ``match(outputs, targets)`` keeps everything on the device with no synchronisation:
  ``(col_for_row [B, Q], status [B])``, for training loops that index with padded tensors.
* ``forward_many(list_of_outputs, targets)`` / ``match_many``: the same for a list of outputs dicts
  (final layer, auxiliary layers, encoder proposals, ...), with one host copy for all of them.

Matching modes (constructor defaults, overridable per call; in ``*_many`` a mode may also be a list
with one value per outputs dict):

* ``groups=K`` -- Group DETR / LW-DETR / RF-DETR (``HungarianMatcher.forward(outputs, targets,
  group_detr)``, RF-DETR's ``rfdetr/models/matcher.py``): the Q queries are K contiguous groups of
  Q / K, each matched one-to-one with all targets; the indices are theirs: query indices in the
  full range, groups concatenated in order. ``group_detr=`` is accepted as an alias.
* ``capacity=k`` -- H-DETR's one-to-many branch (``engine.py``'s ``train_hybrid`` repeats every
  target k times, ``target["boxes"].repeat(k, 1)``, and matches with the plain matcher) and
  Stable-DINO's ``repeat_times``: every target may take k queries. The target indices are the
  original ones (H-DETR's index into the repeated targets, modulo the number of targets, as
  Stable-DINO returns it).
* ``topk_rounds=k`` -- DEIM / D-FINE's ``get_top_k_matches`` (``return_topk=k``): k rounds of
  one-to-one matching, each on the cost left by the previous rounds, where DEIM's code overwrites
  with 1e6 the rows of the matched queries *and* the rows numbered like the matched targets (its
  ``c[:, np.stack(idx_k)] = 1e6``; reproduced). ``forward`` returns DEIM's lists (rounds
  concatenated per image); ``match`` a ``[B, k, Q]`` ``col_for_row``.
* ``nan_cost=None`` raises scipy's "matrix contains invalid numeric entries" on a NaN cost, as DETR
  does; a number replaces NaN costs first, as D-FINE / DEIM / DEIMv2 do with
  ``torch.nan_to_num(C, nan=1.0)`` (``nan_cost=1.0``; +-inf become the dtype's extremes, as there).

Class costs (``class_cost=``): ``"softmax"`` (DETR; ``focal=False``), ``"focal"`` (Deformable
DETR, DINO, H-DETR, D-FINE, DEIM; ``focal=True``), ``"focal_logsigmoid"`` (RF-DETR's
``logsigmoid`` form), ``"iou_aware"`` (DEIMv2's ``change_matcher``: ``-(sigmoid * IoU **
iou_power)``; give ``cost_bbox=0, cost_giou=0`` as DEIMv2 has no such terms there). See
docs/matching.md for each codebase's two lines.
"""
import math
import numbers
from collections.abc import Mapping

import torch
from torch import nn

from detr_ops.ops import hungarian_matching as engine
from detr_ops.ops.matching_cost import pad_targets, resolve_class_cost


class HungarianMatcher(nn.Module):
    """DETR-family Hungarian matcher. The cost is ``cost_bbox * L1 + cost_class * class_term +
    cost_giou * -GIoU``; the modes are described in the module docstring."""

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1, focal: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, *, class_cost=None, iou_power: float = 1.0,
                 groups: int = 1, capacity: int = 1, topk_rounds: int = 1, nan_cost=None, backend: str = "auto"):
        super().__init__()
        for name, value in (("cost_class", cost_class), ("cost_bbox", cost_bbox), ("cost_giou", cost_giou),
                            ("focal_alpha", focal_alpha), ("focal_gamma", focal_gamma), ("iou_power", iou_power)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("cost_class, cost_bbox and cost_giou cannot all be 0")
        if iou_power < 0 or math.isinf(iou_power):
            raise ValueError(f"iou_power must be a finite number >= 0, got {iou_power}")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.class_cost = resolve_class_cost(class_cost, bool(focal))
        self.focal = self.class_cost == "focal"
        self.focal_alpha, self.focal_gamma, self.iou_power = focal_alpha, focal_gamma, iou_power
        self.modes = engine.make_modes(groups, capacity, topk_rounds, nan_cost)
        self.backend = backend

    def _spec(self) -> engine.CostSpec:
        return engine.CostSpec(float(self.cost_class), float(self.cost_bbox), float(self.cost_giou), self.class_cost,
                               float(self.focal_alpha), float(self.focal_gamma), float(self.iou_power))

    @staticmethod
    def _mode_overrides(modes: dict) -> dict:
        if "group_detr" in modes:  # RF-DETR / LW-DETR's name for groups
            if "groups" in modes:
                raise TypeError("give groups or group_detr, not both")
            modes = dict(modes, groups=modes.pop("group_detr"))
        return modes

    def _padded(self, list_of_outputs, targets, padded_targets):
        """One padded targets tuple per outputs dict (the same object where targets are shared)."""
        n = len(list_of_outputs)
        first = list_of_outputs[0].get("pred_logits") if isinstance(list_of_outputs[0], dict) else None
        device = first.device if isinstance(first, torch.Tensor) else None
        if padded_targets is not None:
            if targets is not None:
                raise ValueError("pass targets or padded_targets, not both")
            per_output = isinstance(padded_targets, list) and all(isinstance(p, (tuple, list)) for p in padded_targets)
            items = padded_targets if per_output else [padded_targets] * n
            for p in items:
                if not isinstance(p, (tuple, list)) or len(p) != 3:
                    raise ValueError("padded_targets must be (tgt_labels [B, T], tgt_boxes [B, T, 4], num_targets [B]) "
                                     "or a list of those, one per outputs dict")
            items = [tuple(p) for p in items]
        else:
            if targets is None:
                raise ValueError("pass targets (DETR's list of dicts) or padded_targets")
            if not isinstance(targets, (list, tuple)):
                raise ValueError(f"targets must be a list of dicts (one per image), got {type(targets).__name__}")
            per_output = len(targets) > 0 and all(isinstance(t, (list, tuple)) for t in targets)
            if per_output:
                padded, items = {}, []
                for t in targets:  # pad each distinct targets list once
                    if id(t) not in padded:
                        padded[id(t)] = pad_targets(t, device=device)
                    items.append(padded[id(t)])
            else:
                items = [pad_targets(targets, device=device)] * n
        if len(items) != n:
            raise ValueError(f"targets: give one targets list for all outputs dicts or one per outputs dict ({n}), got "
                             f"{len(items)}")
        return items

    @torch.no_grad()
    def match_many(self, list_of_outputs, targets=None, *, padded_targets=None, **modes):
        """Device-side matching of a list of outputs dicts, no host synchronisation: a list, per dict,
        of ``(col_for_row, status [B])`` (see :meth:`match`).

        ``targets``: DETR's list of ``{"labels", "boxes"}`` shared by every dict, or a list with one
        such list per dict (e.g. Deformable DETR's class-agnostic targets for its encoder
        proposals); or ``padded_targets`` (a ``(tgt_labels, tgt_boxes, num_targets)`` tuple, or a
        list of them) already on the device. The dicts that share targets and class count are
        costed in one launch, and their problems of equal height solved in one batched call.
        """
        if not isinstance(list_of_outputs, (list, tuple)) or len(list_of_outputs) == 0:
            raise ValueError("list_of_outputs must be a non-empty list of outputs dicts")
        modes_list = engine.modes_per_output(self.modes, self._mode_overrides(modes), len(list_of_outputs))
        padded = self._padded(list_of_outputs, targets, padded_targets)
        return engine.match_many(list_of_outputs, padded, modes_list, self._spec(), self.backend)

    @torch.no_grad()
    def match(self, outputs, targets=None, *, padded_targets=None, **modes):
        """Device-side matching, no host synchronisation.

        ``targets`` is DETR's list of ``{"labels", "boxes"}``; or pass ``padded_targets =
        (tgt_labels [B, T], tgt_boxes [B, T, 4], num_targets [B])`` already on the device (this form
        also captures into a CUDA graph and traces with ``torch.compile(fullgraph=True)``). Returns
        ``(col_for_row, status [B])``: ``col_for_row`` is ``[B, Q]`` int64, the target matched to each
        query or -1 (``[B, k, Q]``, one assignment per round, for ``topk_rounds=k > 1``), and
        ``status[b]`` the solver's status of image ``b`` (0 ok, nonzero if one of its problems failed;
        see :func:`detr_ops.batched_linear_sum_assignment`).
        """
        if not isinstance(outputs, Mapping):
            raise ValueError(f"outputs must be a dict with 'pred_logits' and 'pred_boxes', got {type(outputs).__name__}")
        return self.match_many([outputs], targets, padded_targets=padded_targets, **modes)[0]

    @torch.no_grad()
    def forward_many(self, list_of_outputs, targets, **modes):
        """DETR-style index lists for every outputs dict: ``result[i]`` is what the codebase's
        matcher returns for ``list_of_outputs[i]``, from one cost launch per targets list, one
        batched solve per problem height and one host copy for all of them."""
        results = engine.to_host(self.match_many(list_of_outputs, targets, **modes))
        engine.raise_for_statuses([status for _, status in results], many=len(results) > 1)
        return [engine.index_lists(col) for col, _ in results]

    @torch.no_grad()
    def forward(self, outputs, targets, **modes):
        """The codebase's interface: a list, per image, of ``(index_i, index_j)`` int64 CPU tensors,
        the matched queries in ascending order and their targets, identical to the original's (for
        ``topk_rounds=k``, DEIM's k rounds concatenated)."""
        if not isinstance(outputs, Mapping):
            raise ValueError(f"outputs must be a dict with 'pred_logits' and 'pred_boxes', got {type(outputs).__name__}")
        results = engine.to_host(self.match_many([outputs], targets, **modes))
        engine.raise_for_statuses([results[0][1]], many=False)
        return engine.index_lists(results[0][0])
