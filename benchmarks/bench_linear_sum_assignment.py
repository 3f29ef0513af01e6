"""Linear sum assignment: detr_ops against scipy, lap, lapx and DETR's per-image scipy loop.

* single problems (``shapes.LSA_SINGLE``, uniform random float64): ``detr_ops.linear_sum_assignment``
  vs ``scipy.optimize.linear_sum_assignment``, ``lap.lapjv`` and lapx's ``lapjvx`` and ``lapjvr``
  (extend_cost for rectangles; lapx is loaded beside lap by ``benchmarks/lap_baselines.py``);
* equal-size DETR batches (``shapes.LSA_UNIFORM_BATCH``): ``detr_ops.batched_linear_sum_assignment``
  vs lapx's batch solvers ``lapjvx_batch`` and ``lapjvr_batch`` (threads: all cores, as detr_ops);
* H-DETR's one-to-many matching (``shapes.LSA_CAPACITY``): ``capacity=k`` vs H-DETR's loop, scipy per
  image on the cost with its target columns tiled k times;
* DETR batches (``shapes.LSA_DETR_BATCH``: B images x Q queries, COCO-like target counts):
  DETR's matcher loop exactly as DETR writes it (split the ``[B, Q, sum T]`` cost per image, scipy
  per image, ``torch.as_tensor`` of the indices) vs ``detr_ops.batched_linear_sum_assignment``,
  timed twice: end to end from DETR's layout to DETR's list of (rows, cols) ("detr_ops"), and the
  op alone on the padded ``[B, Q, max T]`` cost a fused matching-cost kernel produces
  ("detr_ops-op");
* torch-linear-assignment's published batches (``shapes.LSA_TLA_BATCH``, GPU only: 208 problems of
  300 x 100, 300 x 300, 300 x 600, uniform random float32 on the GPU): the per-problem SciPy loop
  from the GPU tensor, torch-linear-assignment 0.1.0 and its legacy CUDA extension (peers of
  ``benchmarks/peers.py``, skipped when not installed) against the batched op on each backend.

Every implementation's indices are checked against scipy's before it is timed (for lap, whose
tie-breaking differs, on inputs with a unique optimum).

Run: ``pytest benchmarks/bench_linear_sum_assignment.py --benchmark-only``.
"""
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

import detr_ops
from benchmarks import lap_baselines, peers, shapes
from benchmarks.backends import detr_ops_backends
from benchmarks.timing import check_equal, measure

OP = "linear_sum_assignment"


def _single_cost(rows, cols):
    return np.random.default_rng(rows * 10007 + cols).random((rows, cols))


def _lapjv(cost):
    import lap

    _, x, _ = lap.lapjv(cost, extend_cost=cost.shape[0] != cost.shape[1])
    return x


def _rows_cols_from_lapjv(x):
    rows = np.nonzero(x >= 0)[0]
    return rows, x[rows].astype(np.int64)


def _lapx(name):
    found = lap_baselines.lapx()
    if found is None or name not in found:
        pytest.skip(f"lapx ({name}) is not installed (scripts/setup_env.sh puts it in <venv>/lapx)")
    return found[name]


@pytest.mark.parametrize("impl", ["scipy", "lap", "lapx.lapjvx", "lapx.lapjvr", "detr_ops"])
@pytest.mark.parametrize("rows,cols", shapes.LSA_SINGLE, ids=lambda v: str(v))
def test_single(benchmark, rows, cols, impl):
    cost = _single_cost(rows, cols)
    expected = scipy_lsa(cost)
    if impl == "scipy":
        fn, role, got = (lambda: scipy_lsa(cost)), "baseline", expected
    elif impl == "lap":
        pytest.importorskip("lap")
        fn, role, got = (lambda: _lapjv(cost)), "baseline", _rows_cols_from_lapjv(_lapjv(cost))
    elif impl.startswith("lapx."):
        solver = _lapx(impl[len("lapx."):])
        rect = rows != cols
        fn, role = (lambda: solver(cost, extend_cost=rect, return_cost=False)), "baseline"
        rows_of, cols_of = fn()
        order = np.argsort(rows_of, kind="stable")  # lapjvx lists a rectangle's pairs in its own order
        got = (np.asarray(rows_of)[order], np.asarray(cols_of)[order])
    else:
        fn, role, got = (lambda: detr_ops.linear_sum_assignment(cost)), "detr_ops", detr_ops.linear_sum_assignment(cost)
    check_equal(got[0], expected[0], what=f"{impl} row_ind")
    check_equal(got[1], expected[1], what=f"{impl} col_ind")
    measure(benchmark, fn, op=OP, case=f"{rows}x{cols}", impl=impl, role=role,
            backend="native" if impl == "detr_ops" else "")


# ---- DETR batches ------------------------------------------------------------------------------


def _detr_batch(B, Q):
    """DETR's matching cost [B, Q, sum T] (float32, as the matcher makes it) and the sizes."""
    generator = torch.Generator().manual_seed(B * 1000 + Q)
    torch.manual_seed(B * 1000 + Q)  # coco_like_target_counts draws from the global generator too
    sizes = shapes.coco_like_target_counts(B, generator)
    C = torch.rand(B, Q, sum(sizes), generator=generator)
    return C, sizes


def detr_loop(C, sizes):
    """DETR's HungarianMatcher.forward after the cost is computed, verbatim."""
    C = C.cpu()
    indices = [scipy_lsa(c[i]) for i, c in enumerate(C.split(sizes, -1))]
    return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]


def _padded(C, sizes):
    """Each image's [Q, T_b] block of DETR's [B, Q, sum T] cost, padded to [B, Q, max T].

    Done in numpy: sixteen torch slice assignments cost more than the solve itself."""
    dense = C.numpy()
    padded = np.zeros((C.shape[0], C.shape[1], max(max(sizes), 1)), dtype=dense.dtype)
    offset = 0
    for b, t in enumerate(sizes):
        padded[b, :, :t] = dense[b, :, offset : offset + t]
        offset += t
    return torch.from_numpy(padded), torch.tensor(sizes)


def detr_ops_from_detr_layout(C, sizes):
    """Same input and output as detr_loop: pad the per-image blocks, one batched solve, lists."""
    padded, num_cols = _padded(C, sizes)
    col_for_row, _ = detr_ops.batched_linear_sum_assignment(padded, num_cols=num_cols)
    col_for_row = col_for_row.numpy()
    out = []
    for row in col_for_row:
        rows = np.flatnonzero(row >= 0)
        out.append((torch.from_numpy(rows), torch.from_numpy(row[rows])))
    return out


@pytest.mark.parametrize("impl", ["scipy-loop", "detr_ops", "detr_ops-op"])
@pytest.mark.parametrize("B,Q", shapes.LSA_DETR_BATCH, ids=lambda v: str(v))
def test_detr_batch(benchmark, B, Q, impl):
    C, sizes = _detr_batch(B, Q)
    expected = detr_loop(C, sizes)
    case = f"B{B} Q{Q} T{sum(sizes)}"
    if impl == "scipy-loop":
        measure(benchmark, lambda: detr_loop(C, sizes), op=OP, case=case, impl=impl, role="baseline")
        return
    got = detr_ops_from_detr_layout(C, sizes)
    for b, ((ei, ej), (gi, gj)) in enumerate(zip(expected, got)):
        check_equal(gi, ei, what=f"image {b} rows")
        check_equal(gj, ej, what=f"image {b} cols")
    if impl == "detr_ops":
        fn = lambda: detr_ops_from_detr_layout(C, sizes)  # noqa: E731
    else:
        padded, num_cols = _padded(C, sizes)
        fn = lambda: detr_ops.batched_linear_sum_assignment(padded, num_cols=num_cols)  # noqa: E731
    measure(benchmark, fn, op=OP, case=case, impl=impl, role="detr_ops", backend="native",
            threads=torch.get_num_threads())


# ---- equal-size batches: lapx's batch solvers ------------------------------------------------------


@pytest.mark.parametrize("impl", ["scipy-loop", "lapx.lapjvx_batch", "lapx.lapjvr_batch", "detr_ops"])
@pytest.mark.parametrize("B,Q,T", shapes.LSA_UNIFORM_BATCH, ids=lambda v: str(v))
def test_uniform_batch(benchmark, B, Q, T, impl):
    costs = np.random.default_rng(B * Q + T).random((B, Q, T))
    expected = [scipy_lsa(c) for c in costs]
    case = f"B{B} {Q}x{T}"
    if impl == "scipy-loop":
        measure(benchmark, lambda: [scipy_lsa(c) for c in costs], op=OP, case=case, impl=impl, role="baseline")
        return
    if impl.startswith("lapx."):
        solver = _lapx(impl[len("lapx."):])
        fn = lambda: solver(costs, extend_cost=Q != T, return_cost=False)  # noqa: E731
        rows_list, cols_list = fn()
        for b, (er, ec) in enumerate(expected):
            order = np.argsort(rows_list[b])
            check_equal(np.asarray(rows_list[b])[order], er, what=f"{impl} problem {b} rows")
            check_equal(np.asarray(cols_list[b])[order], ec, what=f"{impl} problem {b} cols")
        measure(benchmark, fn, op=OP, case=case, impl=impl, role="baseline")
        return
    t = torch.from_numpy(costs)
    col_for_row = detr_ops.batched_linear_sum_assignment(t)[0].numpy()
    for b, (er, ec) in enumerate(expected):
        check_equal(col_for_row[b, er], ec, what=f"problem {b}")
    measure(benchmark, lambda: detr_ops.batched_linear_sum_assignment(t), op=OP, case=case, impl=impl,
            role="detr_ops", backend="native", threads=torch.get_num_threads())


# ---- capacity: H-DETR's one-to-many matching ---------------------------------------------------------


def _capacity_problem(B, Q):
    rng = np.random.default_rng(B * Q)
    generator = torch.Generator().manual_seed(B * Q)
    torch.manual_seed(B * Q)
    sizes = np.array(shapes.coco_like_target_counts(B, generator))
    costs = [rng.random((Q, t)) for t in sizes]
    padded = np.zeros((B, Q, max(int(sizes.max()), 1)))
    for b, c in enumerate(costs):
        padded[b, :, : c.shape[1]] = c
    return costs, torch.from_numpy(padded), torch.from_numpy(sizes)


def hdetr_loop(costs, k):
    """H-DETR's one-to-many branch: the targets repeated k times, scipy per image."""
    return [scipy_lsa(np.tile(c, (1, k))) for c in costs]


@pytest.mark.parametrize("impl", ["scipy-loop", "detr_ops"])
@pytest.mark.parametrize("B,Q,k", shapes.LSA_CAPACITY, ids=lambda v: str(v))
def test_capacity(benchmark, B, Q, k, impl):
    costs, padded, num_cols = _capacity_problem(B, Q)
    case = f"capacity B{B} Q{Q} T{int(num_cols.sum())} k{k}"
    if impl == "scipy-loop":
        measure(benchmark, lambda: hdetr_loop(costs, k), op=OP, case=case, impl=impl, role="baseline")
        return
    got = detr_ops.batched_linear_sum_assignment(padded, num_cols=num_cols, capacity=k)[0].numpy()
    for b, (rows, cols) in enumerate(hdetr_loop(costs, k)):
        expected = np.full(Q, -1)
        expected[rows] = cols % max(int(num_cols[b]), 1)
        check_equal(got[b], expected, what=f"image {b}")
    fn = lambda: detr_ops.batched_linear_sum_assignment(padded, num_cols=num_cols, capacity=k)  # noqa: E731
    measure(benchmark, fn, op=OP, case=case, impl=impl, role="detr_ops", backend="native",
            threads=torch.get_num_threads())


# ---- torch-linear-assignment's batches (GPU) ---------------------------------------------------------


def scipy_batch_loop(cost):
    """The per-problem SciPy loop a batched solver replaces: one copy to the host, scipy per problem."""
    host = cost.cpu().numpy()
    out = np.full(cost.shape[:2], -1, dtype=np.int64)
    for b in range(host.shape[0]):
        rows, cols = scipy_lsa(host[b])
        out[b, rows] = cols
    return torch.from_numpy(out)


def _peer_batch_impls():
    """(role, impl, backend): SciPy, the peers (even when absent: they skip), detr_ops per backend."""
    rows = [("baseline", "scipy-loop", ""), ("baseline", "torch-linear-assignment", "peer"),
            ("baseline", "torch-linear-assignment-legacy", "peer")]
    return rows + [("detr_ops", "detr_ops" if b == "native" else f"detr_ops-{b}", b) for b in detr_ops_backends()]


if shapes.LSA_TLA_BATCH:  # GPU shapes only: no rows (and no skipped tests) on CPU

    @pytest.mark.parametrize("role,impl,backend", _peer_batch_impls(), ids=lambda x: str(x))
    @pytest.mark.parametrize("B,R,C", shapes.LSA_TLA_BATCH, ids=lambda v: str(v))
    def test_peer_batch(benchmark, B, R, C, role, impl, backend):
        cost = torch.rand(B, R, C, generator=torch.Generator().manual_seed(R * C)).to(shapes.DEVICE)
        expected = scipy_batch_loop(cost)  # uniform random costs: one optimum, every exact solver agrees
        if impl == "scipy-loop":
            fn = lambda: scipy_batch_loop(cost)  # noqa: E731
        elif backend == "peer":
            solvers = peers.lsa_peers(shapes.DEVICE)
            if impl not in solvers:
                pytest.skip(f"{impl} is not installed")
            fn = lambda: solvers[impl](cost)  # noqa: E731
        else:
            fn = lambda: detr_ops.batched_linear_sum_assignment(cost, check=False, backend=backend)[0]  # noqa: E731
        check_equal(fn(), expected, what=f"{impl} assignment")
        measure(benchmark, fn, op=OP, case=f"B{B} {R}x{C}", impl=impl, role=role,
                backend="" if backend == "peer" else backend, device=shapes.DEVICE)
