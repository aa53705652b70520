"""Figures of a run: eigenvalue trajectories over the loss, and probe accuracy per number of modes.

Made with matplotlib's ``Figure`` directly, not pyplot: no GUI backend, nothing left open in notebooks
or training processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["plot_probe_modes", "plot_stepwise"]


def _log_limits(values: np.ndarray) -> tuple[float | None, float | None]:
    """Log-axis limits that keep the bulk of the curves readable.

    A collapse at initialisation can put the first rows 10 orders of magnitude above the rest, and
    numerically zero eigenvalues can sit 10 below: both are clipped to percentiles of the data.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None, None
    top = 3 * np.nanpercentile(values[:, 0], 98) if values.shape[1] else finite.max()
    bottom = max(np.percentile(finite, 5) / 3, top * 1e-10)  # at most 10 decades
    if not (np.isfinite(top) and top > bottom > 0):
        return None, None
    return bottom, top


def _identity_curves(arrays: Mapping[str, np.ndarray],
                     onsets: Sequence[Mapping[str, Any]]) -> dict[int, np.ndarray] | None:
    """Each learned mode's own trajectory (NaN where its identity was not measured), by mode; None without them."""
    ids = arrays.get("mode_ids")
    learned = {int(r["mode"]): int(r["identity"]) for r in onsets
               if np.isfinite(float(r.get("identity", np.nan)))}
    if ids is None or not np.asarray(ids).size or not learned or len(learned) != len(onsets):
        return None
    ids = np.asarray(ids)
    values = np.asarray(arrays["mode_eigenvalues"], dtype=np.float64)
    curves = {}
    for mode, identity in learned.items():
        curve = np.full(len(ids), np.nan)
        rows, columns = np.nonzero(ids == identity)
        curve[rows] = values[rows, columns]
        curves[mode] = curve
    return curves


def plot_stepwise(
    arrays: Mapping[str, np.ndarray],
    onsets: Sequence[Mapping[str, Any]] = (),
    loss_drops: Sequence[Mapping[str, Any]] = (),
    *,
    x: str = "step",
    max_modes: int = 64,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    predicted: Mapping[str, np.ndarray] | None = None,
    ylabel: str = "covariance eigenvalue",
) -> Any:
    """Eigenvalue trajectories (log scale) with onsets marked, over the loss.

    With identity-tracked modes (``mode_ids`` in ``arrays`` and onsets that carry an ``identity``) each
    learned mode's own curve is drawn in its colour over the sorted spectrum in grey, so a mode keeps its
    colour when it crosses another; otherwise the sorted eigenvalues are coloured by rank.

    Args:
        arrays: a history as [`StepwiseMonitor.history`][lightning_stepwise.monitor.StepwiseMonitor.history] or
            [`load_spectrum`][lightning_stepwise.report.load_spectrum] returns it.
        onsets: records of [`detect_onsets`][lightning_stepwise.onsets.detect_onsets]; each marked with a dot at
            half its plateau and a thin vertical line.
        loss_drops: records of [`detect_loss_steps`][lightning_stepwise.loss_steps.detect_loss_steps], marked on the
            loss.
        x: ``"step"`` or ``"time"`` (effective time: the running sum of the learning rate).
        max_modes: leading eigenvalues drawn.
        title: figure title.
        path: save the figure there (PNG) when given.
        predicted: a theory's curves, drawn dashed: ``step`` (S,), ``eigenvalues`` (S × d, sorted per row)
            and optionally ``loss`` (S,); see [`TheoryPrediction`][lightning_stepwise.theory.TheoryPrediction].
        ylabel: label of the eigenvalue axis (which spectrum it is).

    Returns:
        A matplotlib ``Figure`` made without pyplot (no window opens; nothing to close).

    Examples:
        >>> steps = np.arange(0, 300, 10)
        >>> fig = plot_stepwise({"step": steps, "eigenvalues": np.ones((30, 4)), "loss": np.ones(30)})
        >>> len(fig.axes)  # eigenvalues, loss, colour bar (and "modes learned" over the loss when onsets given)
        3
    """
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if x not in {"step", "time"}:
        raise ValueError(f"x must be 'step' or 'time', got {x!r}")
    steps = np.asarray(arrays["step"], dtype=np.float64)
    xs = np.asarray(arrays["time"], dtype=np.float64) if x == "time" else steps
    if x == "time" and not np.all(np.isfinite(xs)):
        raise ValueError("this history has no effective time (NaN learning rates); plot with x='step'")

    def to_x(step: float) -> float:
        return float(np.interp(step, steps, xs))

    eigenvalues = np.asarray(arrays["eigenvalues"], dtype=np.float64)[:, :max_modes]
    modes = eigenvalues.shape[1]
    loss = np.asarray(arrays.get("loss", np.full(len(steps), np.nan)), dtype=np.float64)
    has_loss = bool(np.isfinite(loss).any())
    # a bare Figure, not pyplot: no GUI backend, nothing left open in notebooks or training processes
    fig = Figure(figsize=(9, 7 if has_loss else 4.5), layout="constrained")
    axes = fig.subplots(2 if has_loss else 1, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [3, 1.3]} if has_loss else None)
    ax = axes[0, 0]
    cmap = matplotlib.colormaps["viridis"]
    norm = Normalize(0, max(modes - 1, 1))
    positive = np.where(eigenvalues > 0, eigenvalues, np.nan)
    identities = _identity_curves(arrays, onsets)
    by_identity = identities is not None
    if by_identity:  # the sorted spectrum in grey behind, each learned mode's own curve in its colour
        cmap = matplotlib.colormaps["turbo"]
        norm = Normalize(0, max(len(onsets) - 1, 1))
        for j in range(modes):
            ax.plot(xs, positive[:, j], color="0.82", lw=0.8, zorder=1)
        for mode, curve in identities.items():
            ax.plot(xs, np.where(curve > 0, curve, np.nan), color=cmap(norm(mode)), lw=1.4, zorder=2)
    else:
        for j in range(modes):
            ax.plot(xs, positive[:, j], color=cmap(norm(j)), lw=1.1)
    dots = 0
    for r in onsets:
        j = int(r["mode"])
        if j >= (len(onsets) if by_identity else modes):
            continue
        ox, oy = to_x(float(r["onset_step"])), 0.5 * float(r["plateau"])
        ax.axvline(ox, color=cmap(norm(j)), lw=0.5, alpha=0.35)
        if np.isfinite(ox) and np.isfinite(oy) and oy > 0:
            ax.plot([ox], [oy], "o", ms=4.5, mfc=cmap(norm(j)), mec="black", mew=0.6, zorder=3)
            dots += 1
    ax.set_yscale("log")
    if predicted is not None:
        p_steps = np.asarray(predicted["step"], dtype=np.float64)
        p_x = np.interp(p_steps, steps, xs) if x == "time" else p_steps
        p_eig = np.asarray(predicted["eigenvalues"], dtype=np.float64)[:, :modes]
        for j in range(p_eig.shape[1]):
            ax.plot(p_x, np.where(p_eig[:, j] > 0, p_eig[:, j], np.nan), color=cmap(norm(j)), lw=1.0, ls="--",
                    alpha=0.9, label="theory" if j == 0 else None)
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.05), fontsize=8, frameon=False)
    low, high = _log_limits(positive)
    if low is not None:
        ax.set_ylim(low, high)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{len(onsets)} modes learned")
    if dots:  # the legend of the dots only where dots are drawn
        ax.text(0.99, 0.02, "dots: onsets (half the plateau)", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8, color="0.3")
    if has_loss:
        lax = axes[1, 0]
        lax.plot(xs, loss, color="black", lw=1.1)
        if predicted is not None and "loss" in predicted:
            lax.plot(p_x, predicted["loss"], color="black", lw=1.0, ls="--", alpha=0.7)
        for d in loss_drops:
            lax.axvline(to_x(float(d["drop_step"])), color="tab:red", lw=0.8, ls="--")
        lax.set_ylabel("loss")
        if np.nanmin(loss) > 0 and np.nanmax(loss) / np.nanmin(loss) > 30:
            lax.set_yscale("log")
        if onsets:  # the staircase the loss should mirror: modes learned so far
            onset_x = np.sort([to_x(float(r["onset_step"])) for r in onsets])
            edges = np.concatenate([[min(xs[0], onset_x[0])], onset_x, [max(xs[-1], onset_x[-1])]])
            count = np.concatenate([[0], np.arange(1, len(onset_x) + 1), [len(onset_x)]])
            cax = lax.twinx()
            cax.step(edges, count, where="post", color="tab:blue", lw=1.0, alpha=0.8)
            cax.set_ylabel("modes learned", color="tab:blue")
            cax.tick_params(axis="y", colors="tab:blue")
            cax.set_ylim(0, max(len(onsets), 1) * 1.1)
    axes[-1, 0].set_xlabel("optimizer step" if x == "step" else "effective time (sum of learning rates)")
    label = "learned mode (by identity; grey: sorted spectrum)" if by_identity else "mode (rank)"
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes[:, 0].tolist(), label=label, pad=0.01)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_probe_modes(
    modes: Sequence[tuple[int, float]],
    *,
    learned_modes: int | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Probe accuracy against the number of leading covariance eigen-directions kept.

    Examples:
        >>> fig = plot_probe_modes([(1, 0.3), (2, 0.55), (4, 0.8), (8, 0.9)], learned_modes=5)
        >>> fig.axes[0].get_xlabel()
        'leading eigen-directions kept (k)'
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    if modes:
        ks, accuracies = zip(*modes, strict=True)
        ax.plot(ks, [100 * a for a in accuracies], "o-", color="tab:blue")
        ax.set_xscale("log", base=2)
    if learned_modes:
        ax.axvline(learned_modes, color="tab:red", ls="--", lw=1, label=f"{learned_modes} modes learned")
        ax.legend(loc="lower right", frameon=False)
    ax.set_xlabel("leading eigen-directions kept (k)")
    ax.set_ylabel("probe top-1 accuracy (%)")
    ax.set_title(title or "which modes carry label information")
    ax.grid(alpha=0.3)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
