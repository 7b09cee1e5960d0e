"""The CKA heatmap as the paper's Fig. 4b: baseline layers up, Engram-model layers across, the
diagonal, and the soft alignment index a_j as a dashed white line (with its CI band)."""

from __future__ import annotations

from typing import Any

import numpy as np


def cka_figure(S: np.ndarray, soft_index: np.ndarray, diagonal: np.ndarray, *, label_a: str, label_b: str,
               title: str, null: np.ndarray | None = None, soft_lo: np.ndarray | None = None,
               soft_hi: np.ndarray | None = None, k: int = 5, self_index: np.ndarray | None = None) -> Any:
    """A Figure: ``S [B layers, A layers]`` heatmap (undefined cells grey), diagonal, dashed a_j curve;
    a second panel with the null floor when given. Every plotted number is in cka.json / cka.npz."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = 2 if null is not None else 1
    fig = Figure(figsize=(5.6 * panels + 0.6, 5.0), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    cols = np.arange(S.shape[1])
    for ax, M, name in zip(axes, (S, null), ("CKA", "null floor (B rows shuffled)")):
        masked = np.ma.masked_invalid(np.asarray(M, dtype=np.float64))
        cmap = _cmap()
        im = ax.imshow(masked, origin="lower", aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0,
                       extent=(-0.5, S.shape[1] - 0.5, -0.5, S.shape[0] - 0.5), interpolation="nearest")
        ax.plot(cols, diagonal, color="0.85", lw=1.0, ls=":", label="diagonal")
        if name == "CKA":
            ok = np.isfinite(soft_index)
            if soft_lo is not None and soft_hi is not None:
                band = ok & np.isfinite(soft_lo) & np.isfinite(soft_hi)
                ax.fill_between(cols[band], soft_lo[band], soft_hi[band], color="white", alpha=0.25, lw=0)
            ax.plot(cols[ok], soft_index[ok], color="white", lw=2.0, ls="--", label=f"soft alignment a_j (k={k})")
            if self_index is not None and np.isfinite(self_index).any():
                own = np.isfinite(self_index)
                ax.plot(cols[own], self_index[own], color="#7fdbff", lw=1.0, ls="-.", label="control: baseline vs itself")
            ax.legend(loc="upper left", fontsize=7, framealpha=0.4)
        ax.set_xlabel(f"{label_a} layer j (0-based)")
        ax.set_ylabel(f"{label_b} layer i (0-based)")
        ax.set_title(name, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(-0.5, S.shape[1] - 0.5)
        ax.set_ylim(-0.5, S.shape[0] - 0.5)
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle(title, fontsize=10)
    return fig


def _cmap() -> Any:
    import matplotlib

    return matplotlib.colormaps["magma"].with_extremes(bad="0.6")
