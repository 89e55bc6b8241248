"""Exposure priors: how much engagement a new listing should be expected to earn, with an 80% interval.

Empirical Bayes on the log scale, y = log1p(engagement):
1. the reference catalog's engagement distribution gives the global prior (mean mu);
2. a listing's neighbours give evidence, each weighted by similarity, w = exp((s - 1) / T), so one
   identical listing counts 1 and unlike ones count little; the neighbour mean is shrunk toward mu with
   a pseudo-count fitted on the reference catalog: (sum w y + k mu) / (sum w + k);
3. further evidence (the lexical neighbours, the brand's own shrunk mean, a linear text model) is
   combined with it by a ridge regression fitted on the reference catalog, every feature computed
   leave-one-out (or cross-fitted) so the weights are learned on evidence like a new listing's;
4. the interval comes from the fitted model's residuals on the reference catalog, by evidence bin
   (split-conformal style), and the mean on the engagement scale by Duan's smearing (winsorized).
Log engagement is read up to a cap, a hundred times the 99th percentile listing's engagement: the catalog's real
head stays whole, and a handful of absurd values cannot drag every other listing's prior with them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import KFold, cross_val_predict

from enrich.errors import ArtifactError, InputError
from enrich.search.lexical import pairwise_cosine
from enrich.search.neighbors import NeighborIndex
from enrich.settings import PriorConfig

FEATURES = (
    "neighbors_eb",  # similarity-weighted neighbour mean, shrunk toward the global mean
    "neighbors_mean",  # neighbour mean with weights relative to the best match
    "lexical_mean",  # the same over TF-IDF similarity of the candidates
    "brand_eb",  # the brand's mean, shrunk toward the global mean
    "text_model",  # ridge regression of y on TF-IDF and embedding
    "evidence",  # log1p of the similarity mass behind neighbors_eb
    "top_similarity",  # cosine of the best match
    "neighbor_spread",  # standard deviation of y among the 10 best matches
    "wide_mean",  # plain mean of y over all candidates
)


@dataclass
class Evidence:
    """What is known about n listings when their prior is computed."""

    neighbor_engagement: np.ndarray  # (n, K) engagement of the candidates, most similar first
    sims: np.ndarray  # (n, K) embedding cosine to each candidate
    lexical_sims: np.ndarray  # (n, K) TF-IDF cosine to each candidate
    brands: list[str]  # brand keys ('' when unknown)
    text_features: sp.csr_matrix  # (n, V + d): TF-IDF row and embedding


@dataclass
class PriorEstimate:
    """Per listing: the prior on the engagement scale, its interval, and the evidence behind it."""

    expected: np.ndarray
    low: np.ndarray
    high: np.ndarray
    evidence: np.ndarray  # effective number of reference listings: sum of exp((s - 1) / T)
    log_mean: np.ndarray  # the model's estimate of log1p(engagement)


def brand_key(brand: str | None) -> str:
    return " ".join((brand or "").lower().split())


def gather_evidence(lexical_rows: sp.csr_matrix, vectors: np.ndarray, positions: np.ndarray, sims: np.ndarray,
                    brands: list[str | None], reference_lexical: sp.csr_matrix, reference_engagement: np.ndarray) -> Evidence:
    """The prior's evidence for listings whose candidates (`positions`, `sims`) in the index are known."""
    return Evidence(
        neighbor_engagement=reference_engagement[positions], sims=sims,
        lexical_sims=pairwise_cosine(lexical_rows, reference_lexical, positions),
        brands=[brand_key(b) for b in brands],
        text_features=sp.hstack([lexical_rows, sp.csr_matrix(vectors)]).tocsr(),
    )


def reference_evidence(embeddings: np.ndarray | None, neighbors: NeighborIndex, lexical_matrix: sp.csr_matrix,
                       engagement: np.ndarray, brands: list[str | None], k: int, rows: np.ndarray | None = None) -> Evidence:
    """Evidence for reference listings themselves (`rows`, default all), each left out of its own candidates:
    what the prior fits on. Without `embeddings`, their vectors are read back from the hnswlib index."""
    rows = np.arange(len(engagement)) if rows is None else rows
    vectors = neighbors.vectors(rows) if embeddings is None else np.asarray(embeddings[rows])
    positions, sims = neighbors.search_excluding_self(vectors, k, labels=rows)
    return gather_evidence(lexical_matrix[rows], vectors, positions, sims, [brands[i] for i in rows], lexical_matrix,
                           engagement)


@dataclass
class ExposurePrior:
    FILES = ("prior.json", "prior_text_coef.npy")

    config: PriorConfig
    global_mean: float
    global_sd: float
    global_quantiles: dict[str, float]
    shrink: float
    log_cap: float  # log engagement is read up to this (see the module)
    brand_stats: dict[str, list[float]]  # brand key -> [sum of y, count]
    text_coef: np.ndarray
    text_intercept: float
    coef: list[float]
    intercept: float
    ridge_alpha: float
    bin_edges: list[float]
    residual_low: list[float]
    residual_high: list[float]
    smearing: float
    fit_metrics: dict[str, float] = field(default_factory=dict)

    # -- fitting ---------------------------------------------------------------------------------
    @classmethod
    def fit(cls, engagement: np.ndarray, evidence: Evidence, config: PriorConfig = PriorConfig(),
            brand_stats: dict[str, list[float]] | None = None, log_cap: float | None = None) -> "ExposurePrior":
        """Fit on reference listings; `evidence` must leave each listing out of its own candidates.

        When those listings are a sample (`fit_rows`), `brand_stats` of the whole catalog, which includes them,
        gives every brand its full count, and `log_cap` is the whole catalog's (`engagement_log_cap`).
        """
        log_cap = engagement_log_cap(engagement) if log_cap is None else log_cap
        y = capped_log(engagement, log_cap)
        mu, sd = float(y.mean()), float(y.std())
        quantiles = {f"q{int(q * 100)}": float(np.expm1(np.quantile(y, q))) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
        neighbor_y, known = _neighbor_log(evidence, log_cap)
        weights = _absolute_weights(evidence.sims, config.temperature) * known
        mass = weights.sum(1)
        # Empirical Bayes pseudo-count: the one that best predicts held-out listings from their neighbours.
        errors = {k: float(np.mean((((weights * neighbor_y).sum(1) + k * mu) / (mass + k) - y) ** 2)) for k in config.shrink_grid}
        shrink = min(errors, key=errors.get)

        if brand_stats is None:
            brand_stats = brand_statistics(evidence.brands, engagement, log_cap)
        text_oof, text_model = cross_fitted_text_model(evidence.text_features, y, config)

        prior = cls(
            config=config, global_mean=mu, global_sd=sd, global_quantiles=quantiles, shrink=shrink, log_cap=log_cap,
            brand_stats=brand_stats, text_coef=text_model.coef_.astype(np.float32),
            text_intercept=float(text_model.intercept_), coef=[], intercept=mu, ridge_alpha=0.0,
            bin_edges=[], residual_low=[], residual_high=[], smearing=1.0,
        )
        features = prior.features(evidence, leave_out=y, text_prediction=text_oof)
        stacker = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(features, y)
        prior.coef = [float(c) for c in stacker.coef_]
        prior.intercept = float(stacker.intercept_)
        prior.ridge_alpha = float(stacker.alpha_)

        predicted = stacker.predict(features)
        residuals = y - predicted
        evidence_mass = np.log1p(mass)
        edges = np.unique(np.quantile(evidence_mass, np.linspace(0, 1, config.evidence_bins + 1)[1:-1]))
        bins = np.searchsorted(edges, evidence_mass)
        tail = (1 - config.interval) / 2
        prior.bin_edges = [float(e) for e in edges]
        # A bin left empty by ties falls back to all residuals.
        in_bin = [residuals[bins == b] if (bins == b).any() else residuals for b in range(len(edges) + 1)]
        prior.residual_low = [float(np.quantile(r, tail)) for r in in_bin]
        prior.residual_high = [float(np.quantile(r, 1 - tail)) for r in in_bin]
        # Duan's smearing over residuals winsorized at their 2.5th and 97.5th percentiles: a mean of exponentials is ruled
        # by its largest terms, and a few absurd listings must not multiply every other prior.
        prior.smearing = float(np.mean(np.exp(np.clip(residuals, *np.quantile(residuals, [0.025, 0.975])))))
        prior.fit_metrics = {"rmse_log": float(np.sqrt(np.mean(residuals**2))), "rows": int(len(y)),
                             "brand_rows": int(sum(count for _, count in brand_stats.values()))}
        return prior

    # -- evidence to features --------------------------------------------------------------------
    def features(self, evidence: Evidence, leave_out: np.ndarray | None = None, text_prediction: np.ndarray | None = None) -> np.ndarray:
        """The FEATURES matrix. `leave_out`: each row's own y, removed from its brand's statistics."""
        config, mu = self.config, self.global_mean
        neighbor_y, known = _neighbor_log(evidence, self.log_cap)
        weights = _absolute_weights(evidence.sims, config.temperature) * known
        mass = weights.sum(1)
        neighbors_eb = ((weights * neighbor_y).sum(1) + self.shrink * mu) / (mass + self.shrink)
        relative = np.exp((evidence.sims - evidence.sims[:, :1]) / config.relative_temperature) * known
        neighbors_mean = _weighted_mean(relative, neighbor_y, mu)
        lexical = np.exp((evidence.lexical_sims - evidence.lexical_sims.max(1, keepdims=True)) / config.lexical_temperature)
        lexical_mean = _weighted_mean(lexical * known, neighbor_y, mu)
        sums = np.array([self.brand_stats.get(b, (0.0, 0.0))[0] for b in evidence.brands])
        counts = np.array([self.brand_stats.get(b, (0.0, 0.0))[1] for b in evidence.brands])
        if leave_out is not None:
            branded = np.array([bool(b) for b in evidence.brands])
            sums, counts = sums - branded * leave_out, counts - branded
        brand_eb = (sums + config.brand_strength * mu) / (counts + config.brand_strength)
        if text_prediction is None:
            text_prediction = evidence.text_features @ self.text_coef + self.text_intercept
        return np.column_stack([
            neighbors_eb, neighbors_mean, lexical_mean, brand_eb, np.asarray(text_prediction).ravel(),
            np.log1p(mass), evidence.sims[:, 0], _known_std(neighbor_y[:, :10], known[:, :10]),
            _weighted_mean(known.astype(np.float64), neighbor_y, mu),
        ])

    def predict(self, evidence: Evidence) -> PriorEstimate:
        n = len(evidence.brands)
        if n == 0:
            empty = np.zeros(0)
            return PriorEstimate(empty, empty, empty, empty, empty)
        if evidence.sims.shape[1] == 0:
            raise InputError("the reference index is empty: no neighbours to base a prior on")
        # Row by row (einsum's own loop, not BLAS, whose blocking depends on the number of rows): a listing's prior is
        # the same whichever listings it is computed with.
        log_mean = np.einsum("ij,j->i", self.features(evidence), np.array(self.coef)) + self.intercept
        mass = (_absolute_weights(evidence.sims, self.config.temperature) * _neighbor_log(evidence, self.log_cap)[1]).sum(1)
        bins = np.searchsorted(np.array(self.bin_edges), np.log1p(mass))
        low = np.expm1(log_mean + np.array(self.residual_low)[bins])
        high = np.expm1(log_mean + np.array(self.residual_high)[bins])
        expected = np.exp(log_mean) * self.smearing - 1
        return PriorEstimate(
            expected=np.clip(expected, 0, None), low=np.clip(low, 0, None), high=np.clip(high, 0, None),
            evidence=mass, log_mean=log_mean,
        )

    # -- persistence -----------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        saved = {k: v for k, v in asdict(self).items() if k != "text_coef"}
        saved["features"] = list(FEATURES)
        (folder / self.FILES[0]).write_text(json.dumps(saved, indent=1))
        np.save(folder / self.FILES[1], self.text_coef)

    @classmethod
    def load(cls, folder: Path) -> "ExposurePrior":
        saved = json.loads((folder / cls.FILES[0]).read_text())
        if saved.pop("features") != list(FEATURES):
            raise ArtifactError(f"{folder}/prior.json was fitted with other features; rebuild the index")
        saved["config"] = PriorConfig(**{**saved["config"], "shrink_grid": tuple(saved["config"]["shrink_grid"])})
        return cls(text_coef=np.load(folder / cls.FILES[1], allow_pickle=False), **saved)


def engagement_log_cap(engagement: np.ndarray) -> float:
    """The highest log engagement the prior reads: that of a hundred times the 99th percentile listing's."""
    return float(np.quantile(np.log1p(np.asarray(engagement, dtype=np.float64)), 0.99) + np.log(100.0))


def capped_log(engagement: np.ndarray, log_cap: float) -> np.ndarray:
    return np.minimum(np.log1p(np.asarray(engagement, dtype=np.float64)), log_cap)


def brand_statistics(brands: list[str], engagement: np.ndarray, log_cap: float) -> dict[str, list[float]]:
    """brand key -> [sum of capped log1p(engagement), count], over listings with a known brand."""
    stats: dict[str, list[float]] = {}
    for key, value in zip(brands, capped_log(engagement, log_cap)):
        if key:
            entry = stats.setdefault(key, [0.0, 0.0])
            entry[0] += float(value)
            entry[1] += 1
    return stats


def cross_fitted_text_model(text_features: sp.csr_matrix, y: np.ndarray, config: PriorConfig) -> tuple[np.ndarray, Ridge]:
    """The text model's out-of-fold predictions (what a new listing's would look like) and the model fitted on all."""
    folds = KFold(n_splits=min(config.folds, max(len(y), 2)), shuffle=True, random_state=config.seed)
    out_of_fold = cross_val_predict(Ridge(alpha=config.text_alpha), text_features, y, cv=folds)
    return out_of_fold, Ridge(alpha=config.text_alpha).fit(text_features, y)


def _neighbor_log(evidence: Evidence, log_cap: float) -> tuple[np.ndarray, np.ndarray]:
    """The candidates' capped log engagement, 0 where it is unknown (a listing the team labelled that has no
    engagement yet: it teaches categories, not the prior), and which are known."""
    y = capped_log(evidence.neighbor_engagement, log_cap)
    known = ~np.isnan(y)
    return np.where(known, y, 0.0), known


def _weighted_mean(weights: np.ndarray, values: np.ndarray, fallback: float) -> np.ndarray:
    total = weights.sum(1)
    return np.divide((weights * values).sum(1), total, out=np.full(len(total), fallback), where=total > 0)


def _known_std(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Each row's standard deviation over its known values (0 where there are none)."""
    count = np.maximum(known.sum(1), 1)
    mean = (values * known).sum(1) / count
    return np.sqrt((((values - mean[:, None]) * known) ** 2).sum(1) / count)


def _absolute_weights(sims: np.ndarray, temperature: float) -> np.ndarray:
    return np.exp((np.clip(sims, -1.0, 1.0) - 1.0) / temperature)
