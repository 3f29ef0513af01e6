"""The warm route of the host solver (csrc/ops/cpu/linear_sum_assignment_warm_start.h): square
problems start from a Jonker-Volgenant reduction, and the answer is kept only when a certificate
proves it is scipy's. These tests check that it is taken where it should be (random float costs),
refused where a tie or a near-tie could make scipy choose differently, and that the indices are
scipy's either way, including on near-ties planted at every scale of rounding."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import linear_sum_assignment as scipy_lsa

import detr_ops
from detr_ops import _C
from lsa_problems import make, scipy_outcome

MIN_SIZE = 32  # Solver::kWarmMinSize


def route():
    return _C._linear_sum_assignment_route()


def assert_scipy(cost, maximize=False):
    expected = scipy_outcome(cost, maximize)
    got = detr_ops.linear_sum_assignment(cost, maximize=maximize)
    taken = route()
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1], err_msg=f"route {taken}, maximize={maximize}")
    return taken


@pytest.mark.parametrize("n", [MIN_SIZE, 100, 333, 1000])
@pytest.mark.parametrize("maximize", [False, True])
def test_random_floats_take_the_warm_route(n, maximize):
    cost = np.random.default_rng(n).random((n, n))
    assert assert_scipy(cost, maximize) == "warm"


def test_small_and_rectangular_problems_stay_on_scipys_route():
    rng = np.random.default_rng(1)
    for shape in [(MIN_SIZE - 1, MIN_SIZE - 1), (40, 41), (41, 40), (100, 7)]:
        assert assert_scipy(rng.random(shape)) == "scipy", shape


def test_forbidden_pairs_stay_on_scipys_route():
    cost = np.random.default_rng(2).random((64, 64))
    cost[3, 5] = np.inf
    assert assert_scipy(cost) == "scipy"


@pytest.mark.parametrize("kind", ["small_int", "constant", "negative", "large_range"])
@pytest.mark.parametrize("n", [MIN_SIZE, 50, 120])
def test_ties_are_refused_or_agree(kind, n):
    cost = make(np.random.default_rng(n), kind, n, n)
    taken = assert_scipy(cost)
    if kind in ("small_int", "constant"):
        assert taken == "warm-rejected"  # dense exact ties: the certificate cannot hold


@pytest.mark.parametrize("gap", [0.0, 1e-17, 1e-15, 1e-13, 1e-11, 1e-9, 1e-7, 1e-5])
@pytest.mark.parametrize("cycle", [2, 3, 7])
@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_planted_near_ties(gap, cycle, offset):
    """A second matching planted `gap` above the optimum (a rotation of `cycle` matched pairs): the
    answer is scipy's whatever the gap, and the warm answer is kept only when the gap is clear."""
    n = 80
    rng = np.random.default_rng(int(gap * 1e17) % 1000 + cycle)
    cost = rng.random((n, n)) + offset
    rows, cols = scipy_lsa(cost)
    picked = rng.choice(n, cycle, replace=False)
    # rows picked[k] take cols of picked[k + 1]: make those entries cheap enough that this rotation
    # costs exactly gap more than the optimum (and leave the rest of the problem as it was)
    rotated = cols[np.roll(picked, -1)]
    cost[rows[picked], rotated] = cost[rows[picked], cols[picked]]
    cost[rows[picked[0]], rotated[0]] += gap
    taken = assert_scipy(cost)
    # The new entries may open a cheaper matching still; where both planted matchings are optimal
    # within 1e-11, the warm answer must have been refused.
    optimum = cost[scipy_lsa(cost)].sum()
    other_cols = cols.copy()
    other_cols[picked] = rotated
    near = [cost[rows, c].sum() - optimum <= 1e-11 for c in (cols, other_cols)]
    if all(near):
        assert taken == "warm-rejected"


@pytest.mark.parametrize("n", [64, 200])
def test_batched_op_takes_the_same_route(n):
    costs = np.random.default_rng(n).random((3, n, n))
    col_for_row, status = detr_ops.batched_linear_sum_assignment(torch.from_numpy(costs))
    assert status.eq(0).all()
    for b in range(3):
        rows, cols = scipy_lsa(costs[b])
        np.testing.assert_array_equal(col_for_row[b].numpy()[rows], cols)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.integers(MIN_SIZE, 48).map(lambda n: (n, n)),
                  elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 3.0, -2.0, 1e-12, 7.0 + 1e-9, 1e8])),
       st.booleans())
def test_hypothesis_few_values(cost, maximize):
    """Few distinct values: ties and near-ties everywhere; scipy's indices on every route."""
    assert_scipy(cost, maximize)


@settings(max_examples=60, deadline=None)
@given(st.integers(MIN_SIZE, 90), st.integers(0, 2**32 - 1), st.sampled_from([1e-300, 1e-8, 1.0, 1e8, 1e250]),
       st.booleans())
def test_hypothesis_scaled_random(n, seed, scale, maximize):
    """Random costs at scales from tiny to near overflow (the certificate's bounds scale with them)."""
    cost = np.random.default_rng(seed).standard_normal((n, n)) * scale
    assert_scipy(cost, maximize)
