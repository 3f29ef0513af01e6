"""The matcher's engine: every outputs dict of a training step (final layer, auxiliary layers,
encoder proposals, one-to-many branches, query groups) matched in one pass, on the device, with no
host synchronisation. ``detr_ops.nn.HungarianMatcher`` is its interface.

How one pass runs:

1. **Cost.** The outputs dicts that share targets and class count are concatenated along the query
   axis and costed by one :func:`detr_ops.matching_cost` launch, ``[B, sum Q, T]``.
2. **NaN policy.** ``nan_cost=None`` leaves NaN costs for the solver to report (scipy's "matrix
   contains invalid numeric entries"); a number replaces them as D-FINE / DEIM do with
   ``torch.nan_to_num(C, nan=nan_cost)`` (which also turns +-inf into the dtype's extremes).
3. **Problems.** Each image's queries of one outputs dict form ``groups`` problems of ``Q / groups``
   rows (Group DETR). Problems of equal height from one launch are solved by one batched call; when
   a launch holds one height only, the problems are a view of its cost, no copy.
4. **Modes.** ``capacity=k`` lets every target take ``k`` queries (H-DETR's one-to-many branch,
   :mod:`detr_ops.ops.capacity_assignment`); ``topk_rounds=k`` solves ``k`` rounds, masking after
   each what DEIM's ``get_top_k_matches`` masks (see :func:`_mask_like_deim`).

Every mode is a Python value known before anything runs, so the whole pass has static shapes and
traces with ``torch.compile(fullgraph=True)``.
"""
import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import List, Optional, Sequence, Tuple

import torch

from detr_ops.ops import _checks
from detr_ops.ops.capacity_assignment import assign
from detr_ops.ops.linear_sum_assignment import BAD_SIZE, INVALID, MESSAGES
from detr_ops.ops.matching_cost import matching_cost

MODE_NAMES = ("groups", "capacity", "topk_rounds", "nan_cost")
# DEIM's get_top_k_matches: the cost it writes over the rows it masks (c[:, idx_k] = 1e6).
DEIM_MASK_COST = 1e6
# Bound of the capacity's column copies and of the top-k result (a request beyond it is a mistake,
# refused before anything is allocated).
_MAX_INDEX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Modes:
    """How one outputs dict is matched (see detr_ops.nn.HungarianMatcher for each mode's source)."""

    groups: int = 1
    capacity: int = 1
    topk_rounds: int = 1
    nan_cost: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class CostSpec:
    """The cost definition: the arguments of detr_ops.matching_cost after the tensors."""

    cost_class: float
    cost_bbox: float
    cost_giou: float
    class_cost: str
    focal_alpha: float
    focal_gamma: float
    iou_power: float


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def make_modes(groups=1, capacity=1, topk_rounds=1, nan_cost=None) -> Modes:
    if nan_cost is not None:
        if isinstance(nan_cost, bool) or not isinstance(nan_cost, numbers.Real) or math.isnan(nan_cost):
            raise ValueError(f"nan_cost must be None (raise on NaN costs) or a number, got {nan_cost!r}")
        nan_cost = float(nan_cost)
    return Modes(_positive_int(groups, "groups"), _positive_int(capacity, "capacity"),
                 _positive_int(topk_rounds, "topk_rounds"), nan_cost)


def modes_per_output(defaults: Modes, overrides: dict, count: int) -> List[Modes]:
    """One Modes per outputs dict: each override is a value for all, or a list with one per dict."""
    unknown = set(overrides) - set(MODE_NAMES)
    if unknown:
        raise TypeError(f"unknown matching mode(s) {sorted(unknown)}; the modes are {MODE_NAMES}")
    columns = {}
    for name in MODE_NAMES:
        value = overrides.get(name, getattr(defaults, name))
        if isinstance(value, (list, tuple)):
            if len(value) != count:
                raise ValueError(f"{name} must be one value or a list with one per outputs dict ({count}), got "
                                 f"{len(value)} values")
            columns[name] = list(value)
        else:
            columns[name] = [value] * count
    return [make_modes(**{name: columns[name][i] for name in MODE_NAMES}) for i in range(count)]


def check_outputs(outputs, where: str, batch: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(outputs, Mapping) or "pred_logits" not in outputs or "pred_boxes" not in outputs:
        raise ValueError(f"{where} must be a dict with 'pred_logits' [B, Q, K] and 'pred_boxes' [B, Q, 4]")
    logits = _checks.floating(outputs["pred_logits"], f"{where}['pred_logits']")
    boxes = _checks.floating(outputs["pred_boxes"], f"{where}['pred_boxes']")
    if logits.dim() != 3:
        raise ValueError(f"{where}['pred_logits'] must be [B, Q, K], got {tuple(logits.shape)}")
    if tuple(boxes.shape) != (logits.shape[0], logits.shape[1], 4):
        raise ValueError(f"{where}['pred_boxes'] must be [B, Q, 4] = {[logits.shape[0], logits.shape[1], 4]}, got "
                         f"{tuple(boxes.shape)}")
    if batch is not None and logits.shape[0] != batch:
        raise ValueError(f"targets must have one entry per image: {where} has a batch of {logits.shape[0]}, the "
                         f"targets {batch}")
    return logits, boxes


@dataclasses.dataclass
class _Output:
    index: int
    logits: torch.Tensor
    boxes: torch.Tensor
    padded: tuple
    modes: Modes
    q0: int = 0  # first query row of this dict in its launch's cost
    col_rounds: list = dataclasses.field(default_factory=list)  # [B, Q] per round
    status: Optional[torch.Tensor] = None  # [B]


def _input_status(labels, num, K: int, T: int) -> torch.Tensor:
    """Per image: INVALID for a label outside [0, K) among its targets, BAD_SIZE for a count outside
    [0, T]. Needed only when nan_cost replaces NaN, which would otherwise hide these (the op marks
    them NaN). Device-side, no synchronisation."""
    valid = torch.arange(T, device=labels.device)[None, :] < num[:, None]
    bad_label = (valid & ((labels < 0) | (labels >= K))).any(1)
    bad_count = (num < 0) | (num > T)
    zero = torch.zeros_like(num, dtype=torch.int32)
    return torch.where(bad_count, zero + BAD_SIZE, torch.where(bad_label, zero + INVALID, zero))


def _mask_like_deim(cost: torch.Tensor, col_for_row: torch.Tensor) -> None:
    """What DEIM's ``get_top_k_matches`` masks after a round, in place: for each image it runs
    ``c[:, np.stack((rows, cols))] = 1e6`` on the image's ``[B, Q, T_i]`` column block, which
    indexes the query axis with the matched rows *and* with the matched target indices, so the
    queries numbered like a matched target are masked as well. (Only the image's own block of its
    own rows reaches its next solve.) A target index >= Q, where DEIM raises IndexError, masks
    nothing here."""
    P, R = col_for_row.shape
    matched = col_for_row >= 0
    # a spare column R takes the indices that mask nothing, so the scatter needs no branch
    by_target = torch.where(matched & (col_for_row < R), col_for_row, R)
    masked = torch.zeros(P, R + 1, dtype=torch.bool, device=cost.device).scatter_(1, by_target, True)[:, :R]
    cost.masked_fill_((masked | matched)[:, :, None], DEIM_MASK_COST)


def _solve_bucket(cost: torch.Tensor, num_cols: torch.Tensor, capacity, max_capacity: int, rounds: int,
                  backend: str) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Solves ``rounds`` rounds of the problems ``cost [P, R, T]`` (masking DEIM's rows between
    rounds, in place): ``([col_for_row [P, R] per round], status [P])``."""
    cols, status = [], None
    for r in range(rounds):
        col, st = assign(cost, num_cols, capacity, max_capacity, backend)
        cols.append(col)
        status = st if status is None else torch.maximum(status, st)
        if r + 1 < rounds:
            _mask_like_deim(cost, col)
    return cols, status


def match_many(outputs_list: Sequence[dict], padded_list: Sequence[tuple], modes_list: Sequence[Modes],
               spec: CostSpec, backend: str = "auto") -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Device-side matching of every outputs dict: per dict ``(col_for_row, status [B])`` with
    ``col_for_row`` ``[B, Q]`` (``[B, k, Q]`` for ``topk_rounds=k > 1``): the target matched to each
    query (its original index under ``capacity``), or -1. ``padded_list[i]`` is the
    ``(labels, boxes, num_targets)`` of dict ``i`` (the same labels tensor for dicts sharing
    targets, which then share one cost launch); ``status[b]`` is nonzero when a problem of image ``b`` failed (solver codes)."""
    items = []
    for i, (outputs, padded, modes) in enumerate(zip(outputs_list, padded_list, modes_list)):
        for name, t in zip(("tgt_labels", "tgt_boxes", "num_targets"), padded):
            _checks.tensor(t, f"padded_targets' {name}")
        if padded[0].dim() != 2:
            raise ValueError(f"padded_targets' tgt_labels must be [B, T], got {tuple(padded[0].shape)}")
        logits, boxes = check_outputs(outputs, f"outputs[{i}]" if len(outputs_list) > 1 else "outputs",
                                      padded[0].shape[0])
        Q = logits.shape[1]
        if Q % modes.groups:
            raise ValueError(f"groups={modes.groups} must divide the number of queries {Q}"
                             + (f" of outputs[{i}]" if len(outputs_list) > 1 else ""))
        T = padded[0].shape[1]
        where = f" (outputs[{i}])" if len(outputs_list) > 1 else ""
        if modes.capacity * T > _MAX_INDEX:
            raise ValueError(f"capacity={modes.capacity} is too large: {modes.capacity} copies of {T} target columns "
                             f"exceed 2**31 - 1{where}")
        if modes.topk_rounds * logits.shape[0] * Q > _MAX_INDEX:
            raise ValueError(f"topk_rounds={modes.topk_rounds} is too large: [B, k, Q] = "
                             f"{[logits.shape[0], modes.topk_rounds, Q]} indices exceed 2**31 - 1{where}")
        items.append(_Output(i, logits, boxes, padded, modes))

    # 1. one cost launch per (targets, classes, dtypes, device)
    launches: List[List[_Output]] = []
    for item in items:
        for launch in launches:
            head = launch[0]
            # the same targets: the same tensors (identity, which torch.compile tracks)
            same_targets = all(a is b for a, b in zip(head.padded, item.padded))
            if (same_targets and head.logits.shape[2] == item.logits.shape[2]
                    and head.logits.dtype == item.logits.dtype and head.boxes.dtype == item.boxes.dtype
                    and head.logits.device == item.logits.device):
                launch.append(item)
                break
        else:
            launches.append([item])

    for launch in launches:
        labels, tgt_boxes, num = launch[0].padded
        labels, num = _checks.index_tensor(labels, "tgt_labels"), _checks.index_tensor(num, "num_targets")
        B, T, K = labels.shape[0], labels.shape[1], launch[0].logits.shape[2]
        q0 = 0
        for item in launch:
            item.q0 = q0
            q0 += item.logits.shape[1]
        logits = torch.cat([it.logits for it in launch], 1) if len(launch) > 1 else launch[0].logits
        boxes = torch.cat([it.boxes for it in launch], 1) if len(launch) > 1 else launch[0].boxes
        cost = matching_cost(logits, boxes, labels, tgt_boxes, num, spec.cost_class, spec.cost_bbox, spec.cost_giou,
                             class_cost=spec.class_cost, focal_alpha=spec.focal_alpha, focal_gamma=spec.focal_gamma,
                             iou_power=spec.iou_power, backend=backend)
        # 2. NaN policy
        input_status = None
        nan_costs = {it.modes.nan_cost for it in launch}
        if nan_costs != {None}:
            input_status = _input_status(labels, num, K, T)
            if len(nan_costs) == 1:
                cost.nan_to_num_(nan=nan_costs.pop())
            else:
                for it in launch:
                    if it.modes.nan_cost is not None:
                        cost[:, it.q0:it.q0 + it.logits.shape[1]].nan_to_num_(nan=it.modes.nan_cost)

        # 3. problems of equal height, one batched solve (per round) each
        heights = {}
        for it in launch:
            if it.logits.shape[1] == 0:  # no queries: nothing to match
                it.col_rounds = [num.new_full((B, 0), -1)] * it.modes.topk_rounds
                it.status = torch.zeros_like(num, dtype=torch.int32)
                continue
            heights.setdefault(it.logits.shape[1] // it.modes.groups, []).append(it)
        for R, bucket in heights.items():
            whole = len(bucket) == len(launch)  # then every dict of the launch has height R: a view
            if whole:
                problems = cost.view(B * (q0 // R), R, T)
                per_image = q0 // R  # problems per image, in query order
            else:
                problems = torch.cat([cost[:, it.q0:it.q0 + it.logits.shape[1]].reshape(B * it.modes.groups, R, T)
                                      for it in bucket])
            counts = [it.modes.groups for it in bucket]
            capacities = [it.modes.capacity for it in bucket]
            if whole:
                num_cols = num.repeat_interleave(per_image)
                if len(set(capacities)) == 1:
                    capacity = capacities[0]
                else:
                    capacity = torch.cat([num.new_full((g,), k) for g, k in zip(counts, capacities)]).repeat(B)
            else:
                num_cols = torch.cat([num.repeat_interleave(g) for g in counts])
                if len(set(capacities)) == 1:
                    capacity = capacities[0]
                else:
                    capacity = torch.cat([num.new_full((B * g,), k) for g, k in zip(counts, capacities)])
            rounds = max(it.modes.topk_rounds for it in bucket)
            cols, status = _solve_bucket(problems, num_cols, capacity, max(capacities), rounds, backend)
            # 4. back to each dict's [B, Q] rows: problem (b, g) row r is query g * R + r
            offset = 0
            for it in bucket:
                Qi, g = it.logits.shape[1], it.modes.groups
                if whole:
                    c0, c1 = it.q0 // R, it.q0 // R + g
                    it.col_rounds = [col.view(B, q0)[:, it.q0:it.q0 + Qi] for col in cols[:it.modes.topk_rounds]]
                    it.status = status.view(B, per_image)[:, c0:c1].amax(1)
                else:
                    it.col_rounds = [col[offset:offset + B * g].reshape(B, Qi) for col in cols[:it.modes.topk_rounds]]
                    it.status = status[offset:offset + B * g].view(B, g).amax(1)
                    offset += B * g
        if input_status is not None:
            for it in launch:
                it.status = torch.where(input_status != 0, input_status, it.status)

    results = []
    for it in items:
        col = it.col_rounds[0] if it.modes.topk_rounds == 1 else torch.stack(it.col_rounds, 1)
        results.append((col, it.status))
    return results


def to_host(results: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Every ``(col_for_row, status)`` copied to the host in one transfer."""
    if not results:
        return []
    B = results[0][1].shape[0]
    widths = [math.prod(col.shape[1:]) for col, _ in results]
    pieces = [col.reshape(B, w) for (col, _), w in zip(results, widths)]
    pieces.append(torch.stack([status.to(torch.int64) for _, status in results], 1))
    host = torch.cat(pieces, 1).cpu()
    out, offset = [], 0
    for i, ((col, _), w) in enumerate(zip(results, widths)):
        out.append((host[:, offset:offset + w].reshape(col.shape), host[:, sum(widths) + i]))
        offset += w
    return out


def raise_for_statuses(statuses: Sequence[torch.Tensor], many: bool) -> None:
    """scipy's ValueError for the first failed image (host statuses), naming the outputs dict when
    several were matched."""
    for i, status in enumerate(statuses):
        failed = status.nonzero()
        if failed.numel():
            b = int(failed[0, 0])
            where = f"outputs {i}, batch item {b}" if many else f"batch item {b}"
            raise ValueError(f"{MESSAGES.get(int(status[b]), 'unknown status')} ({where})")


def index_lists(col_for_row: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """DETR's per-image ``(index_i, index_j)`` from a host ``[B, Q]`` (or ``[B, k, Q]``: round after
    round, as DEIM concatenates them) assignment: the matched queries in ascending order (per round)
    and their targets."""
    B = col_for_row.shape[0]
    Q = col_for_row.shape[-1]
    flat = col_for_row.reshape(B, -1)
    image, position = (flat >= 0).nonzero(as_tuple=True)  # row-major: image by image, round by round
    rows, cols = position % Q if Q else position, flat[image, position]
    sizes = torch.bincount(image, minlength=B).tolist()
    return list(zip(rows.split(sizes), cols.split(sizes)))
