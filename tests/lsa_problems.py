"""Cost-matrix generators shared by the assignment tests: every kind of input scipy must agree on."""
import numpy as np

KINDS = (
    "uniform",  # distinct values: one optimum
    "small_int",  # values in {0, 1, 2}: dense ties, where the tie-breaking rules decide
    "constant",  # all equal: scipy returns the identity
    "negative",  # negative and mixed-sign values
    "forbidden",  # +inf pairs, sometimes leaving no complete matching
    "invalid",  # a NaN or -inf somewhere
    "large_range",  # magnitudes from 1e-300 to 1e300: rounding of the duals matters
)


def make(rng: np.random.Generator, kind: str, nr: int, nc: int) -> np.ndarray:
    shape = (nr, nc)
    if kind == "uniform":
        return rng.random(shape)
    if kind == "small_int":
        return rng.integers(0, 3, shape).astype(np.float64)
    if kind == "constant":
        return np.full(shape, float(rng.integers(-3, 4)))
    if kind == "negative":
        return rng.integers(-5, 3, shape) + rng.choice([0.0, 0.5], shape)
    if kind == "forbidden":
        c = rng.integers(0, 4, shape).astype(np.float64)
        c[rng.random(shape) < rng.choice([0.2, 0.5, 0.8])] = np.inf
        return c
    if kind == "invalid":
        c = rng.random(shape)
        if c.size:
            c.flat[rng.integers(c.size)] = rng.choice([np.nan, -np.inf])
        return c
    if kind == "large_range":
        return rng.choice([1e-300, 1.0, 3.0, 1e300, -1e300, 7e10], shape)
    raise ValueError(kind)


def scipy_outcome(cost: np.ndarray, maximize: bool = False):
    """scipy's (row_ind, col_ind), or (exception type, message) when it raises."""
    from scipy.optimize import linear_sum_assignment

    try:
        return linear_sum_assignment(cost, maximize=maximize)
    except Exception as e:  # noqa: BLE001 - the exception itself is what we compare
        return type(e), str(e)


def tiled_expected(cost: np.ndarray, capacity: int, maximize: bool = False):
    """scipy on ``cost`` with its columns tiled ``capacity`` times (copy c of column j is column
    c*C + j), as (col_for_row with original columns, or -1) or (exception type, message)."""
    R, C = cost.shape
    out = scipy_outcome(np.tile(cost, (1, capacity)), maximize)
    if isinstance(out[0], type):
        return out
    col_for_row = np.full(R, -1, dtype=np.int64)
    col_for_row[out[0]] = out[1] % C if C else out[1]
    return col_for_row
