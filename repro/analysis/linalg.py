"""The linear algebra of Section 7 (Hu et al. 2021), on plain arrays: no model, no checkpoint.

Conventions (column convention, h = W x, W and ΔW are d_out × d_in):

* LoRA factors: A is r × d_in, B is d_out × r, ΔW = (alpha / r) · B A   (Eq. 3), computed in fp32 from the factors.
* Subspace of A (Section 7.2): the RIGHT-singular vectors of A, i.e. the columns of V in A = U_s Σ Vᵀ. They live in
  the d_in-dimensional input space; there are at most r of them, ordered by A's singular values. Appendix G words it
  as "left singular matrices", which only fits A ∈ R^{d×r} (the transposed layout); for the r × d_in factor the
  right-singular vectors are the reading that gives U^i ∈ R^{d×i} (repro/paper/section7_analysis.yaml).
* φ(A1, A2, i, j) = ||U1[:, :i]ᵀ U2[:, :j]||_F² / min(i, j)   (Eq. 4), in [0, 1].
* Table 7: with ΔW = U Σ Vᵀ (column convention), U_r, V_r its top-r left/right singular vectors, the projection of W
  onto ΔW's subspace has Frobenius norm ||U_rᵀ W V_r||_F (the paper's "U⊤ W V⊤" with V holding the right singular
  vectors as rows, numpy's Vh). Amplification factor = ||ΔW||_F / ||U_rᵀ W V_r||_F (Appendix H.4).

Everything is computed in float64 numpy; inputs may be torch tensors or arrays.
"""

from __future__ import annotations

import math

import numpy as np


def as_array(x) -> np.ndarray:
    """float64 numpy from a torch tensor (any dtype/device) or an array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------- ΔW


def delta_from_factors(A, B, scaling: float):
    """ΔW = scaling · B A in fp32 (d_out × d_in), the way the model applies it; never from merged weights."""
    import torch

    A = torch.as_tensor(A).detach().float().cpu()
    B = torch.as_tensor(B).detach().float().cpu()
    if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"LoRA factors do not chain: B {tuple(B.shape)} @ A {tuple(A.shape)}")
    return float(scaling) * (B @ A)


# ---------------------------------------------------------------- subspaces (Section 7.2, Eq. 4, Appendix G)


def right_singular_basis(A) -> np.ndarray:
    """The right-singular vectors of A (r × d) as the columns of a d × min(r, d) matrix, largest singular value first."""
    A = as_array(A)
    _, _, vh = np.linalg.svd(A, full_matrices=False)
    return vh.T


def orthonormal_check(U: np.ndarray, atol: float = 1e-8) -> None:
    if not np.allclose(U.T @ U, np.eye(U.shape[1]), atol=atol):
        raise ValueError("basis is not column-orthonormal")


def phi(U1: np.ndarray, U2: np.ndarray, i: int, j: int) -> float:
    """ψ(U1^i, U2^j) = ||U1[:, :i]ᵀ U2[:, :j]||_F² / min(i, j), U1, U2 column-orthonormal (Appendix G)."""
    if not (1 <= i <= U1.shape[1] and 1 <= j <= U2.shape[1]):
        raise ValueError(f"i={i}, j={j} out of range 1..{U1.shape[1]}, 1..{U2.shape[1]}")
    m = U1[:, :i].T @ U2[:, :j]
    return float(np.sum(m * m) / min(i, j))


def phi_grid(U1: np.ndarray, U2: np.ndarray, imax: int | None = None, jmax: int | None = None) -> np.ndarray:
    """grid[i-1, j-1] = φ(i, j) for i in 1..imax, j in 1..jmax, from one product: the squared overlaps summed over the
    top-i × top-j block (2-D cumulative sums), divided by min(i, j)."""
    imax = imax or U1.shape[1]
    jmax = jmax or U2.shape[1]
    m2 = (U1[:, :imax].T @ U2[:, :jmax]) ** 2
    cum = m2.cumsum(axis=0).cumsum(axis=1)
    ii, jj = np.meshgrid(np.arange(1, imax + 1), np.arange(1, jmax + 1), indexing="ij")
    return np.clip(cum / np.minimum(ii, jj), 0.0, 1.0)


def subspace_similarity(A1, A2, imax: int | None = None, jmax: int | None = None) -> np.ndarray:
    """φ(A1, A2, i, j) over the grid, from the right-singular vectors of the r1 × d and r2 × d factors (Eq. 4)."""
    A1, A2 = as_array(A1), as_array(A2)
    if A1.shape[1] != A2.shape[1]:
        raise ValueError(f"A matrices act on different spaces: {A1.shape} vs {A2.shape}")
    return phi_grid(right_singular_basis(A1), right_singular_basis(A2), imax, jmax)


def random_gaussian_like(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape)


def expected_random_phi(i: int, j: int, d: int) -> float:
    """E[φ] for independent uniformly random subspaces of dims i and j in R^d: E||U_iᵀ U_j||_F² = i·j/d, so
    E[φ] = i·j / (d · min(i, j)) = max(i, j) / d."""
    return max(i, j) / d


# ---------------------------------------------------------------- spectra


def singular_values(M) -> np.ndarray:
    return np.linalg.svd(as_array(M), compute_uv=False)


def numerical_rank(s: np.ndarray, shape: tuple[int, int], rtol: float | None = None) -> int:
    """Singular values above max(shape) · eps(float32) · σ_max (ΔW is an fp32 product, so its zero singular values sit
    at fp32 rounding level, not at float64's)."""
    if s.size == 0 or s[0] == 0:
        return 0
    tol = (rtol if rtol is not None else max(shape) * np.finfo(np.float32).eps) * s[0]
    return int(np.sum(s > tol))


def energy_captured(s: np.ndarray, ks=(1, 2, 4, 8, 16, 32, 64)) -> dict[int, float]:
    """Fraction of ||M||_F² in the top-k singular directions: Σ_{l<=k} σ_l² / Σ σ_l²."""
    e = s.astype(np.float64) ** 2
    total = e.sum()
    c = np.cumsum(e) / total if total > 0 else np.zeros_like(e)
    return {int(k): float(c[min(k, len(c)) - 1]) for k in ks if len(c)}


def stable_rank(s: np.ndarray) -> float:
    """||M||_F² / ||M||_2²."""
    return float(np.sum(s**2) / s[0] ** 2) if s.size and s[0] > 0 else 0.0


def effective_rank(s: np.ndarray) -> float:
    """exp(entropy of σ / Σσ) (Roy & Vetterli 2007)."""
    p = s[s > 0] / np.sum(s[s > 0])
    return float(np.exp(-np.sum(p * np.log(p)))) if p.size else 0.0


# ---------------------------------------------------------------- Table 7 (Section 7.3, Appendix H.4)


def top_singular(M, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U_r, σ_r, V_r): the top-r left singular vectors (d_out × r), values, right singular vectors (d_in × r)."""
    u, s, vh = np.linalg.svd(as_array(M), full_matrices=False)
    return u[:, :r], s[:r], vh[:r].T


def projection_norm(W, U: np.ndarray, V: np.ndarray) -> float:
    """||Uᵀ W V||_F: W (d_out × d_in) seen through the r-dimensional left/right subspaces U (d_out × r), V (d_in × r)."""
    return float(np.linalg.norm(U.T @ as_array(W) @ V))


def random_orthonormal(d: int, r: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, r)))
    return q


def amplification(W, dW, r: int | None = None, *, n_random: int = 10, seed: int = 0) -> dict:
    """The quantities of Table 7 for one weight matrix W and its update ΔW.

    r defaults to ΔW's numerical rank (= the LoRA rank for a trained adapter). "random": the top-r singular vectors of
    a random Gaussian matrix of W's shape (uniform random r-dim subspaces), mean over n_random draws; its expectation
    is about r·||W||_F / sqrt(d_out·d_in) (E||Uᵀ W V||_F² = r²||W||_F² / (d_out d_in))."""
    W, dW = as_array(W), as_array(dW)
    if W.shape != dW.shape:
        raise ValueError(f"W {W.shape} and ΔW {dW.shape} differ in shape")
    s_dw = singular_values(dW)
    if r is None:
        r = max(1, numerical_rank(s_dw, dW.shape))
    U, _, V = top_singular(dW, r)
    Uw, sw, Vw = top_singular(W, r)
    rng = np.random.default_rng(seed)
    d_out, d_in = W.shape
    # The top-r singular subspaces of a Gaussian matrix are uniformly (Haar) distributed and independent of each
    # other: drawn directly (QR of a Gaussian d × r) instead of an SVD of a d_out × d_in matrix.
    rand = [
        projection_norm(W, random_orthonormal(d_out, r, rng), random_orthonormal(d_in, r, rng)) for _ in range(n_random)
    ]
    proj_dw = projection_norm(W, U, V)
    dw_fro = float(np.linalg.norm(dW))
    return {
        "r": int(r),
        "proj_dW": proj_dw,  # ||U_rᵀ W V_r||_F, U, V from ΔW
        "proj_W": projection_norm(W, Uw, Vw),  # from W itself (= sqrt of W's top-r σ²)
        "proj_random": float(np.mean(rand)),  # from a random matrix
        "proj_random_std": float(np.std(rand)),
        "W_fro": float(np.linalg.norm(W)),
        "dW_fro": dw_fro,
        "amplification": dw_fro / proj_dw if proj_dw > 0 else float("inf"),
        "dW_sigma_top": [float(x) for x in s_dw[: min(r, 8)]],
        # the same projection through ΔW's top-k directions only (k < r: the directions ΔW actually uses when its
        # spectrum is dominated by a few), beside the random-subspace level k·||W||_F / sqrt(d_out d_in)
        "proj_dW_k": {int(k): projection_norm(W, U[:, :k], V[:, :k]) for k in (1, 2, 4) if k <= r},
        "proj_random_expect_k": {
            int(k): k * float(np.linalg.norm(W)) / math.sqrt(d_out * d_in) for k in (1, 2, 4) if k <= r
        },
    }
