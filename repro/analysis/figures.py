"""Heatmaps in the style of the paper's Figures 3, 4, 6, 7 and the singular-value spectra (matplotlib, PNG).

Every figure uses matplotlib's constrained layout: panel titles, tick labels, colour bars and the suptitle each get
their own room, so none overlaps another."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CMAP = "viridis"


def _ticks(n: int, max_ticks: int = 11) -> list[int]:
    """1-based tick labels, the paper's style (1, 6, 12, ... for 64)."""
    if n <= max_ticks:
        return list(range(1, n + 1))
    return [int(round(x)) for x in np.linspace(1, n, max_ticks)]


def heatmap(ax, grid: np.ndarray, title: str, ylabel: str = "i", xlabel: str = "j", vmax: float = 1.0):
    """grid[i-1, j-1] = φ(i, j); i down the rows (top = 1), j along the columns."""
    im = ax.imshow(
        grid,
        cmap=CMAP,
        vmin=0.0,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
        extent=(0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5),
    )
    ax.set_xticks(_ticks(grid.shape[1]))
    ax.set_yticks(_ticks(grid.shape[0]))
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    return im


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def figure3(
    grids: dict[str, np.ndarray], layer_label: str, r_small: int, r_large: int, path: Path, note: str = ""
) -> Path:
    """Figure 3: φ(A_{r=small}, A_{r=large}, i, j) for ΔW_q and ΔW_v, i in 1..small, j in 1..large, then the zoomed
    small × small panels."""
    targets = list(grids)
    fig, axes = plt.subplots(
        1,
        2 * len(targets),
        figsize=(4.2 * len(targets) + 2.6 * len(targets), 3.3),
        gridspec_kw={"width_ratios": [3] * len(targets) + [1.3] * len(targets)},
        layout="constrained",
    )
    axes = np.atleast_1d(axes)
    im = None
    for k, t in enumerate(targets):
        g = grids[t]
        im = heatmap(axes[k], g, f"ΔW_{t}: φ(A_r={r_small}, A_r={r_large}, i, j)")
        n = min(r_small, g.shape[1])
        heatmap(axes[len(targets) + k], g[:, :n], f"ΔW_{t}, j ≤ {n}")
    fig.colorbar(im, ax=list(axes), shrink=0.85)
    fig.suptitle(
        f"Subspace similarity between the right-singular vectors of A_r={r_small} and A_r={r_large}, "
        f"{layer_label}" + (f"\n{note}" if note else ""),
        fontsize=9,
    )
    return save(fig, path)


def figure4(
    grids: dict[str, np.ndarray],
    random_grid: np.ndarray,
    layer_label: str,
    r: int,
    path: Path,
    vmax: float = 0.5,
    note: str = "",
) -> Path:
    """Figure 4: φ(A_r, A'_r, i, j) for two seeds, ΔW_q and ΔW_v, and two random Gaussian matrices of A's shape."""
    panels = [(f"ΔW_{t}: φ(A_r={r}, A'_r={r}, i, j)", g) for t, g in grids.items()]
    panels.append((f"random Gaussian {r}×d pair", random_grid))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels) + 0.8, 3.3), layout="constrained")
    axes = np.atleast_1d(axes)
    im = None
    for ax, (title, g) in zip(axes, panels):
        im = heatmap(ax, g, title, vmax=vmax)
    fig.colorbar(im, ax=list(axes), shrink=0.85)
    fig.suptitle(
        f"Two random seeds, r={r}, {layer_label} (colour scale 0..{vmax:g})" + (f"\n{note}" if note else ""),
        fontsize=9,
    )
    return save(fig, path)


def per_layer(
    grids: dict[int, dict[str, np.ndarray]], title: str, path: Path, vmax: float = 1.0, zoom: int | None = None
) -> Path:
    """Figures 6/7: one heatmap per (layer, target); rows = layers (1-based), columns = targets."""
    layers = sorted(grids)
    targets = list(grids[layers[0]])
    fig, axes = plt.subplots(
        len(layers),
        len(targets),
        figsize=(3.6 * len(targets) + 0.8, 2.2 * len(layers) + 0.5),
        squeeze=False,
        layout="constrained",
    )
    im = None
    for a, layer in enumerate(layers):
        for b, t in enumerate(targets):
            g = grids[layer][t]
            if zoom:
                g = g[:, :zoom]
            xlabel = "j" if a == len(layers) - 1 else ""  # the column's j axis, named once under the last row
            im = heatmap(axes[a, b], g, f"layer {layer + 1}, ΔW_{t}", xlabel=xlabel, vmax=vmax)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def spectra(curves: dict[str, np.ndarray], title: str, path: Path, normalize: bool = True) -> Path:
    """Singular values (σ_k / σ_1 when normalize) on a log scale, one curve per matrix."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for label, s in curves.items():
        s = np.asarray(s, dtype=float)
        y = s / s[0] if normalize and s[0] > 0 else s
        k = np.arange(1, len(s) + 1)
        style = "--" if label.startswith("W") else "-"
        axes[0].semilogy(k, np.maximum(y, 1e-12), style, label=label, lw=1.2)
        e = np.cumsum(s**2) / np.sum(s**2)
        axes[1].plot(k, e, style, label=label, lw=1.2)
    axes[0].set_xlabel("k")
    axes[0].set_ylabel("σ_k / σ_1" if normalize else "σ_k")
    axes[0].set_title("singular values", fontsize=9)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("k (top-k directions)")
    axes[1].set_ylabel("energy Σ_{l≤k} σ_l² / ||·||_F²")
    axes[1].set_title("energy captured by the top-k directions", fontsize=9)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
