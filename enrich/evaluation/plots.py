"""The evaluation's pictures: calibration of category_score, prior against truth, the long-tail curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure  # no pyplot: no backend, so it runs headless and leaves notebooks' alone

from enrich.category.calibration import score_bins
from enrich.files import atomic_path


def calibration(ax, scores: np.ndarray, correct: np.ndarray, bins: int = 10) -> None:
    which = score_bins(scores, bins)
    centres = [(scores[which == b].mean(), correct[which == b].mean(), (which == b).sum()) for b in range(bins) if (which == b).any()]
    x, y, n = map(np.array, zip(*centres)) if centres else (np.array([]),) * 3
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.scatter(x, y, s=20 + 200 * n / max(n.max(initial=1), 1), label="listings per bin (size)")
    ax.plot(x, y)
    ax.set(xlabel="category_score", ylabel="share correct (full path)", title="Calibration of category_score", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")


def prior_vs_truth(ax, prior: np.ndarray, low: np.ndarray, high: np.ndarray, truth: np.ndarray, show: int = 300) -> None:
    pick = np.random.default_rng(0).choice(len(prior), size=min(show, len(prior)), replace=False)
    ax.errorbar(np.log1p(prior[pick]), np.log1p(truth[pick]),
                xerr=[np.log1p(prior[pick]) - np.log1p(low[pick]), np.log1p(high[pick]) - np.log1p(prior[pick])],
                fmt="o", ms=3, alpha=0.5, elinewidth=0.5)
    top = max(np.log1p(truth).max(), np.log1p(high).max())
    ax.plot([0, top], [0, top], ls="--", color="grey", lw=1)
    ax.set(xlabel="log1p(exposure_prior), with the 80% interval", ylabel="log1p(true engagement)", title="Prior against truth")


def long_tail(ax, reference_engagement: np.ndarray, exposure: dict) -> None:
    ordered = np.sort(reference_engagement)[::-1]
    share = np.cumsum(ordered) / max(ordered.sum(), 1e-9)
    ax.plot(np.arange(1, len(ordered) + 1) / len(ordered), share, label="reference catalog")
    ax.set(xlabel="share of listings, most engaged first", ylabel="share of all engagement", title="The long tail")
    rows = [(name, row["new_listings_share"]) for name, row in exposure.items() if isinstance(row, dict)]
    text = "\n".join(f"{name}: {value:.1%} of exposure to new listings" for name, value in rows)
    ax.text(0.2, 0.05, text, fontsize=6.5, transform=ax.transAxes)
    ax.legend(loc="center right")


def write_all(evaluation, out_dir: Path) -> list[Path]:
    held = evaluation.held_out
    known = held["true_category"].is_not_null().to_numpy()
    scores = held["category_score"].fill_null(0).to_numpy()[known]
    correct = (held["category"] == held["true_category"]).fill_null(False).to_numpy()[known]
    figures = {"calibration.png": lambda ax: calibration(ax, scores, correct)}
    if evaluation.metrics["priors"] is not None:  # where engagement is known
        rated = held.filter(pl.col("true_engagement").is_not_null() & pl.col("exposure_prior").is_not_null())
        engaged = evaluation.reference_engagement[~np.isnan(evaluation.reference_engagement)]
        figures["prior_vs_truth.png"] = lambda ax: prior_vs_truth(
            ax, rated["exposure_prior"].to_numpy(), rated["exposure_prior_low"].to_numpy(),
            rated["exposure_prior_high"].to_numpy(), rated["true_engagement"].to_numpy())
        figures["long_tail.png"] = lambda ax: long_tail(ax, engaged, evaluation.metrics["long_tail_exposure"])
    written = []
    for name, draw in figures.items():
        fig = Figure(figsize=(6, 4.5))
        draw(fig.subplots())
        fig.tight_layout()
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        written.append(out_dir / name)
    return written
