"""Section 7's math on matrices whose answer is known in closed form (no model, no checkpoint)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repro.analysis.linalg import (
    amplification,
    delta_from_factors,
    energy_captured,
    expected_random_phi,
    numerical_rank,
    phi,
    phi_grid,
    random_orthonormal,
    right_singular_basis,
    singular_values,
    subspace_similarity,
)


def test_right_singular_basis_spans_row_space_of_A():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 20))
    U = right_singular_basis(A)
    assert U.shape == (20, 4)
    np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-12)
    # every row of A lies in the span of U (input-space directions, Section 7.2)
    np.testing.assert_allclose(A @ U @ U.T, A, atol=1e-10)


def test_identical_subspaces_give_one():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((8, 50))
    np.testing.assert_allclose(subspace_similarity(A, A), np.ones((8, 8)), atol=1e-10)
    # same row space, other basis: the full-rank overlap is 1 (top-i orderings may differ, i = j = r is invariant)
    M = rng.standard_normal((8, 8))
    assert subspace_similarity(A, M @ A)[-1, -1] == pytest.approx(1.0, abs=1e-10)


def test_nested_subspaces_rank8_in_rank64():
    rng = np.random.default_rng(2)
    d = 200
    A64 = rng.standard_normal((64, d))
    A8 = rng.standard_normal((8, 64)) @ A64  # the 8 directions lie in A64's row space
    g = subspace_similarity(A8, A64)
    assert g.shape == (8, 64)
    np.testing.assert_allclose(g[:, -1], 1.0, atol=1e-10)  # φ(i, 64) = 1
    assert g[0, 0] < 1.0  # but not aligned with A64's top direction


def test_orthogonal_subspaces_give_zero():
    eye = np.eye(30)
    A1 = np.random.default_rng(3).standard_normal((4, 4)) @ eye[:4]  # rows in span(e1..e4)
    A2 = np.random.default_rng(4).standard_normal((8, 8)) @ eye[10:18]  # rows in span(e11..e18)
    np.testing.assert_allclose(subspace_similarity(A1, A2), 0.0, atol=1e-12)


def test_phi_grid_matches_the_definition():
    rng = np.random.default_rng(5)
    U1, U2 = random_orthonormal(40, 6, rng), random_orthonormal(40, 9, rng)
    g = phi_grid(U1, U2)
    for i in range(1, 7):
        for j in range(1, 10):
            m = U1[:, :i].T @ U2[:, :j]
            assert g[i - 1, j - 1] == pytest.approx(np.linalg.norm(m) ** 2 / min(i, j), abs=1e-12)
            assert g[i - 1, j - 1] == pytest.approx(phi(U1, U2, i, j), abs=1e-12)
    assert (g >= 0).all() and (g <= 1).all()


def test_random_subspaces_mean_phi_is_max_ij_over_d():
    """Independent uniformly random subspaces of dims i, j in R^d: E||U_iᵀU_j||_F² = ij/d, so E φ = max(i, j)/d.
    The right-singular vectors of a Gaussian matrix are such a subspace (the Figure 4 random baseline)."""
    rng = np.random.default_rng(6)
    d, r1, r2, n = 64, 4, 16, 600
    acc = np.zeros((r1, r2))
    for _ in range(n):
        acc += subspace_similarity(rng.standard_normal((r1, d)), rng.standard_normal((r2, d)))
    mean = acc / n
    expect = np.array([[expected_random_phi(i, j, d) for j in range(1, r2 + 1)] for i in range(1, r1 + 1)])
    np.testing.assert_allclose(mean, expect, rtol=0.12)


def test_delta_from_factors_is_scaled_BA_in_fp32():
    A = torch.randn(4, 10, dtype=torch.float16)
    B = torch.randn(6, 4, dtype=torch.bfloat16)
    dW = delta_from_factors(A, B, 16 / 4)
    assert dW.dtype == torch.float32 and dW.shape == (6, 10)
    torch.testing.assert_close(dW, 4.0 * (B.float() @ A.float()))
    with pytest.raises(ValueError):
        delta_from_factors(torch.randn(4, 10), torch.randn(6, 5), 1.0)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_rank_k_delta_has_k_nonzero_singular_values(k):
    """ΔW = (alpha/r) B A with r = 8 but B of rank k: exactly k non-zero singular values (to fp32 precision)."""
    g = torch.Generator().manual_seed(k)
    d_out, d_in, r = 96, 80, 8
    A = torch.randn(r, d_in, generator=g)
    B = torch.randn(d_out, k, generator=g) @ torch.randn(k, r, generator=g)
    dW = delta_from_factors(A, B, 2.0)
    s = singular_values(dW)
    assert numerical_rank(s, tuple(dW.shape)) == k
    assert s[k - 1] / s[0] > 1e-3 and (k == len(s) or s[k] / s[0] < 1e-5)
    assert energy_captured(s, ks=[k])[k] == pytest.approx(1.0, abs=1e-9)


def _w_with_known_svd(d_out, d_in, sigma, seed=0):
    rng = np.random.default_rng(seed)
    U = random_orthonormal(d_out, len(sigma), rng)
    V = random_orthonormal(d_in, len(sigma), rng)
    return U, np.asarray(sigma, float), V, (U * sigma) @ V.T


def test_amplification_closed_form():
    """W = Σ σ_k u_k v_kᵀ. ΔW = Σ_{k∈S} τ_k u_k v_kᵀ on W's directions S: U_rᵀ W V_r = diag(σ_S) up to order/signs, so
    ‖U_rᵀ W V_r‖_F = sqrt(Σ_S σ_k²) and the amplification factor is sqrt(Σ τ²) / sqrt(Σ_S σ_k²)."""
    d_out, d_in = 48, 40
    sigma = np.linspace(10.0, 0.5, 40)
    U, s, V, W = _w_with_known_svd(d_out, d_in, sigma)
    S, tau = [30, 35], np.array([3.0, 2.0])  # two weak directions of W, strongly amplified
    dW = (U[:, S] * tau) @ V[:, S].T
    a = amplification(W, dW, r=2, n_random=400, seed=1)
    assert a["proj_dW"] == pytest.approx(np.sqrt(np.sum(s[S] ** 2)), rel=1e-9)
    assert a["dW_fro"] == pytest.approx(np.sqrt(np.sum(tau**2)), rel=1e-9)
    assert a["amplification"] == pytest.approx(np.sqrt(np.sum(tau**2)) / np.sqrt(np.sum(s[S] ** 2)), rel=1e-9)
    assert a["proj_W"] == pytest.approx(np.sqrt(np.sum(s[:2] ** 2)), rel=1e-9)  # W's own top-2 directions
    assert a["W_fro"] == pytest.approx(np.sqrt(np.sum(s**2)), rel=1e-9)
    assert a["proj_dW_k"][1] == pytest.approx(s[30], rel=1e-9)  # ΔW's top direction is W's 31st (τ = 3)
    assert a["proj_random_expect_k"][1] == pytest.approx(a["W_fro"] / np.sqrt(d_out * d_in), rel=1e-12)
    # random subspaces: E‖UᵀWV‖_F² = r²‖W‖_F²/(d_out d_in)
    assert a["proj_random"] == pytest.approx(2 * a["W_fro"] / np.sqrt(d_out * d_in), rel=0.15)
    # r defaults to ΔW's numerical rank
    assert amplification(W, dW, n_random=1)["r"] == 2


def test_amplification_of_mixed_directions():
    """ΔW = τ u vᵀ with u = (u1 + u2)/√2, v = v1: Uᵀ W V = u1ᵀ W v1/√2 = σ1/√2; with u = u2, v = v1 it is 0."""
    U, s, V, W = _w_with_known_svd(30, 30, np.arange(30, 0, -1.0), seed=3)
    u = (U[:, 0] + U[:, 1]) / np.sqrt(2)
    a = amplification(W, 5.0 * np.outer(u, V[:, 0]), r=1, n_random=2)
    assert a["proj_dW"] == pytest.approx(s[0] / np.sqrt(2), rel=1e-9)
    assert a["amplification"] == pytest.approx(5.0 / (s[0] / np.sqrt(2)), rel=1e-9)
    b = amplification(W, 5.0 * np.outer(U[:, 1], V[:, 0]), r=1, n_random=2)
    assert b["proj_dW"] == pytest.approx(0.0, abs=1e-9) and b["amplification"] > 1e6
