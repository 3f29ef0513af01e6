"""detr_ops.linear_sum_assignment against scipy.optimize.linear_sum_assignment: identical indices
(ties included), dtypes and errors, on thousands of generated problems."""
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import detr_ops
from lsa_problems import KINDS, make, scipy_outcome


def ours_outcome(cost, maximize=False):
    try:
        return detr_ops.linear_sum_assignment(cost, maximize=maximize)
    except Exception as e:  # noqa: BLE001
        return type(e), str(e)


def assert_same(cost, maximize=False):
    expected, got = scipy_outcome(cost, maximize), ours_outcome(cost, maximize)
    if isinstance(expected[0], type) or isinstance(got[0], type):
        assert got == expected, (cost, maximize)
        return
    for e, g in zip(expected, got):
        assert isinstance(g, np.ndarray) and g.dtype == np.int64 and g.shape == e.shape
        np.testing.assert_array_equal(g, e, err_msg=f"maximize={maximize}\n{cost!r}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("maximize", [False, True])
def test_random_small(kind, maximize):
    rng = np.random.default_rng(2 * KINDS.index(kind) + int(maximize))
    for _ in range(300):
        nr, nc = rng.integers(0, 13, 2)
        assert_same(make(rng, kind, int(nr), int(nc)), maximize)


@pytest.mark.parametrize("kind", ["uniform", "small_int", "forbidden", "negative"])
@pytest.mark.parametrize("shape", [(60, 60), (200, 7), (7, 200), (90, 130), (300, 40)])
def test_random_medium(kind, shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(3):
        assert_same(make(rng, kind, *shape))


@pytest.mark.parametrize("shape,kind", [((1000, 1000), "uniform"), ((1000, 1000), "small_int"), ((400, 1000), "uniform"),
                                        ((1000, 150), "small_int")])
def test_large(shape, kind):
    assert_same(make(np.random.default_rng(1), kind, *shape))


@pytest.mark.parametrize("kind", ["small_int", "uniform", "forbidden", "constant"])
def test_every_width_and_lane_tail(kind):
    """The scan runs 4 (AVX2) or 2 (SSE2) columns at a time with a scalar tail: every width from 1
    to 41, square, wide and tall, with dense ties, gives scipy's indices."""
    rng = np.random.default_rng(KINDS.index(kind) + 50)
    for nc in range(1, 42):
        for nr in {nc, max(1, nc // 3), nc + 5}:
            assert_same(make(rng, kind, nr, nc))
            assert_same(make(rng, kind, nr, nc), maximize=True)


@pytest.mark.parametrize("n", [100, 257, 500])
def test_square_random_and_tied(n):
    """Squares (where paths are long and most columns get visited) against scipy: uniform, tied
    small integers and integers with a few values, several seeds each."""
    rng = np.random.default_rng(n)
    for _ in range(3):
        assert_same(rng.random((n, n)))
        assert_same(rng.integers(0, 3, (n, n)).astype(np.float64))
        assert_same(rng.integers(0, 50, (n, n)).astype(np.float64), maximize=True)


_values = st.sampled_from([0.0, 1.0, 2.0, -1.0, 0.5, 1e9, np.inf, -np.inf, np.nan])


@settings(max_examples=400, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=8),
                  elements=st.one_of(_values, st.floats(-10, 10))),
       st.booleans())
def test_hypothesis(cost, maximize):
    assert_same(cost, maximize)


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=10),
                  elements=st.integers(0, 3)), st.booleans())
def test_hypothesis_integer_ties(cost, maximize):
    assert_same(cost, maximize)


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0), (1, 1), (1, 9), (9, 1)])
def test_degenerate_shapes(shape):
    assert_same(np.random.default_rng(0).random(shape))


def test_constant_gives_identity():
    rows, cols = detr_ops.linear_sum_assignment(np.ones((6, 6)))
    np.testing.assert_array_equal(cols, np.arange(6))
    assert_same(np.ones((6, 6)))


def test_array_likes_and_dtypes():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 5, (7, 5))
    cases = [
        base.tolist(),
        base.astype(np.int32),
        base.astype(np.uint8),
        base.astype(np.float32),
        base.astype(np.float16),
        base.astype(bool),
        base.T,  # a transposed (Fortran-ordered) view
        rng.random((9, 12))[::2, ::3],  # non-contiguous
        torch.tensor(base),
        torch.tensor(base, dtype=torch.float32).t(),
        [[1, 2], [3, 4]],
        np.asfortranarray(rng.random((5, 8))),
    ]
    for c in cases:
        assert_same(c)
        assert_same(c, maximize=True)


@pytest.mark.parametrize("bad", [np.float64(3.0), np.zeros(3), np.zeros((2, 2, 2)), [[1, 2], [3]],
                                 np.array([[1 + 1j, 2], [3, 4]]), np.array([["a", "b"], ["c", "d"]]), None])
def test_errors_match_scipy(bad):
    expected = scipy_outcome(bad)
    assert isinstance(expected[0], type), "this input should make scipy raise"
    assert ours_outcome(bad) == expected


@pytest.mark.parametrize("maximize", [0, 1, "", "yes", None])
def test_maximize_truthiness(maximize):
    assert_same(np.random.default_rng(0).random((4, 6)), maximize)


def test_error_messages():
    with pytest.raises(ValueError, match=r"^expected a matrix \(2-D array\), got a 1 array$"):
        detr_ops.linear_sum_assignment([1.0, 2.0])
    with pytest.raises(ValueError, match="^matrix contains invalid numeric entries$"):
        detr_ops.linear_sum_assignment([[1.0, np.nan]])
    with pytest.raises(ValueError, match="^matrix contains invalid numeric entries$"):
        detr_ops.linear_sum_assignment([[1.0, np.inf]], maximize=True)
    with pytest.raises(ValueError, match="^cost matrix is infeasible$"):
        detr_ops.linear_sum_assignment([[np.inf, 1.0], [np.inf, 2.0]])


def test_threads_solve_concurrently():
    """The GIL is released while solving: threads running at once must still get scipy's answers."""
    rng = np.random.default_rng(5)
    problems = [make(rng, ("uniform", "small_int")[k % 2], 150, 170) for k in range(16)]
    expected = [scipy_outcome(p) for p in problems]
    results = [None] * len(problems)
    entered = threading.Barrier(4)

    def work(t):
        entered.wait()
        for k in range(t, len(problems), 4):
            results[k] = detr_ops.linear_sum_assignment(problems[k])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, g in zip(expected, results):
        np.testing.assert_array_equal(g[0], e[0])
        np.testing.assert_array_equal(g[1], e[1])


def test_gil_released_while_solving():
    """While one thread is inside a long solve, another thread runs Python code: with the GIL held
    the main thread could only resume after the solve had finished."""
    import time

    cost = np.random.default_rng(6).random((2000, 2000))  # a few hundred milliseconds
    worker = threading.Thread(target=detr_ops.linear_sum_assignment, args=(cost,))
    worker.start()
    time.sleep(0.02)  # lets the worker enter the solver
    still_solving = worker.is_alive()
    worker.join()
    assert still_solving
