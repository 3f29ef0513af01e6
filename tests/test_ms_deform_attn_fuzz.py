"""Hypothesis fuzzing of MSDA at small sizes: random level shapes, head dims, point counts (uniform and
per level) and locations, kinks and boundaries included (hypothesis favours round numbers such as
0, 0.5 and 1, which land on pixel-coordinate kinks). Everywhere the op equals the float64 statement
of the 2020 kernel; away from kinks it equals the grid_sample reference too."""
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from detr_ops.reference.ms_deform_attn import ms_deform_attn_kernel2020
from tests.msda_inputs import level_tensors, op_and_grads, reference_and_grads


@st.composite
def problems(draw, points_list: bool):
    L = draw(st.integers(1, 3))
    levels = [(draw(st.integers(1, 4)), draw(st.integers(1, 4))) for _ in range(L)]
    N, Lq, M, D = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    counts = [draw(st.integers(0, 3)) for _ in range(L)] if points_list else [draw(st.integers(1, 3))] * L
    K = sum(counts)
    coordinates = st.floats(-0.3, 1.3, allow_nan=False, width=64)
    flat = draw(st.lists(coordinates, min_size=N * Lq * M * K * 2, max_size=N * Lq * M * K * 2))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    shapes, starts, S = level_tensors(levels)
    value = torch.randn(N, S, M, D, generator=g, dtype=torch.float64)
    locations = torch.tensor(flat, dtype=torch.float64).view(N, Lq, M, K, 2)
    weights = torch.rand(N, Lq, M, K, generator=g, dtype=torch.float64)
    grad_output = torch.randn(N, Lq, M * D, generator=g, dtype=torch.float64)
    if not points_list:
        locations = locations.view(N, Lq, M, L, counts[0], 2)
        weights = weights.view(N, Lq, M, L, counts[0])
    return (value, shapes, starts, locations, weights), grad_output, (counts if points_list else None), levels


def _pixel_coordinates(locations, levels, counts):
    """[(x_pix, y_pix) tensors] per level, as the kernels compute them."""
    per_level = ([locations[:, :, :, l] for l in range(len(levels))] if counts is None
                 else locations.split(counts, dim=3))
    return [(loc[..., 0] * W - 0.5, loc[..., 1] * H - 0.5) for loc, (H, W) in zip(per_level, levels)]


def _off_kinks(locations, levels, counts, margin=1e-7) -> bool:
    for x, y in _pixel_coordinates(locations, levels, counts):
        for pix in (x, y):
            if pix.numel() and ((pix - pix.round()).abs() < margin).any():
                return False
    return True


def _check(inputs, grad_output, counts, backend, reference):
    out, grads = op_and_grads(*inputs, grad_output, backend, counts)
    if reference == "kernel2020":
        ref, *ref_grads = ms_deform_attn_kernel2020(*inputs, grad_output, num_points_list=counts)
    else:
        ref, ref_grads = reference_and_grads(*inputs, grad_output, counts)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_TRITON = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("points_list", [False, True], ids=["uniform", "points-list"])
def test_equals_the_2020_kernel_everywhere(points_list):
    @FUZZ
    @given(problems(points_list))
    def run(problem):
        inputs, grad_output, counts, _ = problem
        _check(inputs, grad_output, counts, "native", "kernel2020")

    run()


@pytest.mark.parametrize("points_list", [False, True], ids=["uniform", "points-list"])
def test_equals_grid_sample_off_the_kinks(points_list):
    @FUZZ
    @given(problems(points_list))
    def run(problem):
        inputs, grad_output, counts, levels = problem
        assume(_off_kinks(inputs[3], levels, counts))
        _check(inputs, grad_output, counts, "native", "grid_sample")

    run()


@pytest.mark.triton
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_triton_equals_the_2020_kernel(deterministic):
    @FUZZ_TRITON
    @given(problems(points_list=True))
    def run(problem):
        inputs, grad_output, counts, _ = problem
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            _check(inputs, grad_output, counts, "triton", "kernel2020")
        finally:
            torch.use_deterministic_algorithms(before)

    run()


def test_kink_detector():
    # _off_kinks is what keeps the grid_sample comparison away from kinks: it must see them.
    levels = [(2, 4)]
    on = torch.tensor([0.375, 0.3], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)  # x_pix = 1 exactly
    off = torch.tensor([0.4, 0.3], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    assert not _off_kinks(on, levels, None) and _off_kinks(off, levels, None)
    assert math.isclose(0.375 * 4 - 0.5, 1.0)
