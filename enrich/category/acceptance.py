"""When a predicted category can be accepted without a human, and how deep: one rule, two promises.

Each predicted path's levels have scores (the mix's share of the paths under that prefix). Calibration maps
(centred isotonic regression) turn them into chances: one map per path length for "the whole path is right" (a two-level
path is wrong more often than a four-level one at the same score), one per depth for "this prefix is right".
The rule, as in hierarchical selective classification (Goren, Galil and El-Yaniv, 2024):
- the whole path is accepted (`review` false) where its chance reaches `accept_at`;
- else `category_confident` is the deepest prefix whose chance reaches `back_off_at`, climbing toward the root, or
  none.
Each threshold is chosen by Learn-then-Test (`selective`) on listings that did not fit the maps, for what is
emitted: the accepted paths are right at least `target_precision` of the time, and so are the `category_confident`
values the rule writes (the accepted paths and the prefixes backed off to, together), each with probability at
least `confidence`. Saved as plain numbers (`acceptance.json`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.isotonic import IsotonicRegression

from enrich.category.calibration import expected_calibration_error
from enrich.catalog.paths import path_levels, path_prefix
from enrich.category.selective import fixed_sequence, likeliest_start, precision_lower_bound

Knots = tuple[list[float], list[float]]  # a calibration map's knots: raw score -> chance of being right
MIN_MAP_LISTINGS = 30  # fewer listings of a path length or depth cannot fit a map of their own
# The thresholds tested, strictest first: fixed in advance, as fixed-sequence testing needs; coarse, so that a chance
# blip between two nearly equal candidates does not end the test early.
CANDIDATES = [round(1 - step / 100, 2) for step in range(101)]


@dataclass
class Predictions:
    """Predicted paths, their level scores and the true paths, one entry per listing."""

    level_scores: list[list[float]]
    predicted: list[str | None]
    truth: list[str]


@dataclass
class AcceptancePolicy:
    FILE = "acceptance.json"

    target_precision: float
    confidence: float | None  # each promise holds with this probability; None: the share on the testing listings
    level_maps: list[Knots | None]  # per depth: a prefix's level score -> the chance it is right; None: too few listings
    path_maps: list[Knots | None]  # per path length: the whole path's score -> the chance it is right
    accept_at: float | None = None  # the whole path is accepted at this chance or above; None: never
    back_off_at: float | None = None  # else its deepest prefix at this chance or above; None: none
    metrics: dict = field(default_factory=dict)  # what was tested, on how many listings, with what outcome

    @classmethod
    def fit(cls, mapped: Predictions, tested: Predictions, target_precision: float = 0.9,
            confidence: float | None = 0.9) -> "AcceptancePolicy":
        """Maps from the `mapped` listings, thresholds tested on the `tested` ones (which must be others)."""
        scored = _Scored.of(mapped)
        policy = cls(target_precision, confidence, [], [])
        for d in range(scored.scores.shape[1]):
            policy.level_maps.append(_fit_map(scored.scores[:, d], scored.right[:, d], scored.length > d))
            policy.path_maps.append(_fit_map(scored.scores[:, d], scored.whole_right, scored.length == d + 1)
                                    or policy.level_maps[-1])
        policy._choose_thresholds(_Table.of(policy, mapped), _Table.of(policy, tested))
        return policy

    def _choose_thresholds(self, mapped: "_Table", tested: "_Table") -> None:
        """Fixed-sequence tests, strictest candidate first: `accept_at` on the accepted paths, then `back_off_at`
        on everything emitted given `accept_at`. The candidates and where the test starts (judged on the map
        listings) owe nothing to the testing listings."""
        scale = len(tested.path_chance) / max(len(mapped.path_chance), 1)
        candidates = self._from_likeliest(CANDIDATES, lambda c: mapped.counts(c, None), scale)
        chosen = fixed_sequence([tested.counts(c, None) for c in candidates], self.target_precision, self.confidence)
        self.accept_at = candidates[chosen.index] if chosen.index is not None else None
        self.metrics["full path"] = self._outcome(chosen, self.accept_at, len(candidates), tested)
        back = self._from_likeliest(CANDIDATES, lambda c: mapped.counts(self.accept_at, c), scale)
        chosen = fixed_sequence([tested.counts(self.accept_at, c) for c in back], self.target_precision, self.confidence)
        self.back_off_at = back[chosen.index] if chosen.index is not None else None
        if self.back_off_at is None:  # only the accepted paths are emitted: their promise is the one tested above
            chosen.emitted, chosen.right = tested.counts(self.accept_at, None)
        self.metrics["category_confident"] = self._outcome(chosen, self.back_off_at, len(back), tested)
        self.metrics["full path"]["ece_raw"], self.metrics["full path"]["ece_calibrated"] = tested.calibration_errors()

    def _from_likeliest(self, candidates: list[float], count, scale: float) -> list[float]:
        """The candidates from the one likeliest to pass, judged on the map listings."""
        start = likeliest_start([count(c) for c in candidates], scale, self.target_precision, self.confidence)
        return candidates[start:]

    def _outcome(self, chosen, threshold: float | None, candidates: int, tested: "_Table") -> dict:
        listings = len(tested.path_chance)
        return {"threshold": threshold, "candidates": candidates, "candidates_tested": chosen.tested, "listings": listings,
                "emitted_share": chosen.emitted / listings if listings else 0.0,
                "precision": chosen.right / chosen.emitted if chosen.emitted else None,
                "lower_bound": precision_lower_bound(chosen.right, chosen.emitted, self.confidence)
                if self.confidence is not None and chosen.emitted else None}

    def path_chance(self, level_scores: list[float]) -> float:
        """The calibrated chance that a path with these level scores is right in full."""
        length = len(level_scores)
        if length == 0 or length > len(self.path_maps) or self.path_maps[length - 1] is None:
            return 0.0
        return float(np.interp(level_scores[-1], *self.path_maps[length - 1]))

    def prefix_chances(self, level_scores: list[float]) -> list[float]:
        """The calibrated chance that each prefix of the path is right (0.0 where no map was fitted)."""
        return [float(np.interp(s, *self.level_maps[d])) if d < len(self.level_maps) and self.level_maps[d] else 0.0
                for d, s in enumerate(level_scores)]

    def decide(self, path: str | None, level_scores: list[float]) -> tuple[str | None, bool]:
        """(category_confident, review) of a predicted path: the path, not reviewed; or a prefix of it (or None),
        reviewed."""
        if not path:
            return None, True
        if self.accept_at is not None and self.path_chance(level_scores) >= self.accept_at:
            return path, False
        if self.back_off_at is not None:
            chances = self.prefix_chances(level_scores)
            for depth in range(len(path_levels(path)) - 1, 0, -1):
                if chances[depth - 1] >= self.back_off_at:
                    return path_prefix(path, depth), True
        return None, True

    def summary(self) -> dict:
        """What the manifest records: the promise, its confidence, the thresholds and the listings they were held on."""
        return {"target_precision": self.target_precision, "confidence": self.confidence,
                "thresholds": {"full path": self.accept_at, "category_confident": self.back_off_at}, "metrics": self.metrics}

    def save(self, folder: Path) -> None:
        (folder / self.FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: Path) -> "AcceptancePolicy":
        saved = json.loads((folder / cls.FILE).read_text())
        for name in ("level_maps", "path_maps"):
            saved[name] = [tuple(m) if m else None for m in saved[name]]
        return cls(**saved)


def _fit_map(scores: np.ndarray, right: np.ndarray, rows: np.ndarray) -> Knots | None:
    """The map of `scores` to the chance of being `right`, over `rows` (None where too few): centred isotonic
    regression (Oron and Flournoy, 2017), the isotonic fit's blocks joined through their mean scores, so that the
    chance rises with the score instead of standing still across a wide block (one threshold would take or leave
    the whole block)."""
    if rows.sum() < MIN_MAP_LISTINGS:
        return None
    raw, hit = scores[rows], right[rows].astype(float)
    blocks = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, hit).predict(raw)
    values = np.unique(blocks)
    centres = [float(raw[blocks == value].mean()) for value in values]
    return centres, [float(v) for v in values]


@dataclass
class _Scored:
    """Listings as arrays: each level's score (NaN beyond the path), the path's length, and whether each prefix of
    the predicted path is right (False beyond it)."""

    scores: np.ndarray  # (n, depth)
    length: np.ndarray  # (n,) 0 where nothing was predicted
    right: np.ndarray  # (n, depth) bool: the prefix of that depth is the truth's
    whole_right: np.ndarray  # (n,) bool: the whole path is the truth

    @classmethod
    def of(cls, listings: Predictions, depth: int | None = None) -> "_Scored":
        levels = [path_levels(p) if p else [] for p in listings.predicted]
        depth = max((len(s) for s in listings.level_scores), default=0) if depth is None else depth
        n = len(levels)
        scored = cls(np.full((n, depth), np.nan), np.zeros(n, int), np.zeros((n, depth), bool), np.zeros(n, bool))
        for i, (mine, scores, truth) in enumerate(zip(levels, listings.level_scores, listings.truth)):
            if not mine or len(scores) != len(mine):
                continue
            theirs, width = path_levels(truth), min(len(mine), depth)
            scored.scores[i, :width], scored.length[i] = scores[:width], len(mine)
            scored.right[i, :width] = [mine[: d + 1] == theirs[: d + 1] for d in range(width)]
            scored.whole_right[i] = mine == theirs
        return scored


@dataclass
class _Table:
    """Listings' chances under a policy's maps, and whether each is right, to count what a threshold emits."""

    path_chance: np.ndarray  # (n,) the whole path's chance; -1 where nothing was predicted
    path_right: np.ndarray  # (n,) bool
    path_raw: np.ndarray  # (n,) the whole path's raw score
    prefix_chance: np.ndarray  # (n, depth - 1) each proper prefix's chance; -1 beyond the path
    prefix_right: np.ndarray  # (n, depth - 1) bool

    @classmethod
    def of(cls, policy: AcceptancePolicy, listings: Predictions) -> "_Table":
        depth = len(policy.level_maps)
        scored = _Scored.of(listings, depth)
        n = len(scored.length)
        table = cls(np.full(n, -1.0), scored.whole_right, np.zeros(n), np.full((n, max(depth - 1, 0)), -1.0),
                    scored.right[:, : max(depth - 1, 0)])
        for d in range(depth):
            whole = scored.length == d + 1
            table.path_raw[whole] = scored.scores[whole, d]
            table.path_chance[whole] = np.interp(scored.scores[whole, d], *policy.path_maps[d]) if policy.path_maps[d] else 0.0
            proper = scored.length > d + 1
            if d < depth - 1 and proper.any():
                table.prefix_chance[proper, d] = (np.interp(scored.scores[proper, d], *policy.level_maps[d])
                                                  if policy.level_maps[d] else 0.0)
        # Paths longer than any map: never accepted (chance 0), their prefixes as mapped.
        table.path_chance[scored.length > depth] = 0.0
        return table
    def accepted(self, accept_at: float | None) -> np.ndarray:
        return self.path_chance >= accept_at if accept_at is not None else np.zeros(len(self.path_chance), bool)

    def counts(self, accept_at: float | None, back_off_at: float | None) -> tuple[int, int]:
        """(emitted, right) of the rule at these thresholds: accepted paths, and prefixes backed off to."""
        accepted = self.accepted(accept_at)
        emitted, right = int(accepted.sum()), int((accepted & self.path_right).sum())
        if back_off_at is not None and self.prefix_chance.shape[1]:
            clears = self.prefix_chance >= back_off_at
            backed = ~accepted & clears.any(1)
            deepest = clears.shape[1] - 1 - np.argmax(clears[:, ::-1], axis=1)
            emitted += int(backed.sum())
            right += int(self.prefix_right[np.flatnonzero(backed), deepest[backed]].sum())
        return emitted, right

    def calibration_errors(self) -> tuple[float | None, float | None]:
        """ECE of the whole path's raw score and of its chance, on these listings."""
        known = self.path_chance >= 0
        if not known.any():
            return None, None
        right = self.path_right[known].astype(float)
        return expected_calibration_error(self.path_raw[known], right), expected_calibration_error(self.path_chance[known], right)
