"""Choosing a threshold with a finite-sample guarantee on the precision of what it lets through.

Learn-then-Test (Angelopoulos, Bates, Candès, Jordan and Lei, 2021): each candidate threshold is a hypothesis,
"the precision of the listings it lets through is below the target"; its p-value is the exact binomial tail of the
listings it lets through on a set that played no part in making the scores or the candidates. Fixed-sequence
testing goes from the strictest candidate to the most lenient and stops at the first it cannot reject, so the one
chosen (the most lenient rejected) falls short of the target with probability at most 1 - confidence, however many
candidates were looked at.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, gammaln
from scipy.stats import beta, binom


def precision_p_value(right: int, emitted: int, target: float) -> float:
    """P-value of "precision below `target`" after `right` of `emitted` were right: the chance of at least that many
    right were the precision exactly the target (1.0 where nothing was emitted)."""
    if emitted == 0:
        return 1.0
    return float(binom.sf(right - 1, emitted, target))


def precision_lower_bound(right: int, emitted: int, confidence: float) -> float:
    """The one-sided Clopper-Pearson lower bound of a precision at `confidence` (0.0 where nothing was emitted)."""
    if right == 0:
        return 0.0
    return float(beta.ppf(1 - confidence, right, emitted - right + 1))


@dataclass
class Chosen:
    """The outcome of a fixed-sequence test: the candidate chosen (None: not even the first passed), its counts on
    the testing listings, and how many candidates were tested."""

    index: int | None
    emitted: int
    right: int
    tested: int


def fixed_sequence(counts: list[tuple[int, int]], target: float, confidence: float | None) -> Chosen:
    """Test candidates in order (strict to lenient), by their (emitted, right) on the testing listings. With
    `confidence`, a candidate passes where its p-value is at most 1 - confidence; without, where its share right
    reaches the target (on average: no guarantee). The first that fails ends the test."""
    if not counts:
        return Chosen(None, 0, 0, 0)
    emitted, right = (np.array(column) for column in zip(*counts))
    if confidence is not None:
        passed = np.where(emitted > 0, binom.sf(right - 1, emitted, target), 1.0) <= 1 - confidence
    else:
        passed = (emitted > 0) & (right >= target * emitted)
    tested = int(np.argmin(passed)) + 1 if not passed.all() else len(counts)
    last = tested - 1 if passed.all() else tested - 2
    if last < 0:
        return Chosen(None, 0, 0, tested)
    return Chosen(last, int(emitted[last]), int(right[last]), tested)


def likeliest_start(counts: list[tuple[int, int]], scale: float, target: float, confidence: float | None) -> int:
    """Which of the candidates (strict to lenient) a fixed-sequence test should start from: the one likeliest to pass
    on testing listings `scale` times as many as those `counts` (emitted, right) were made on, the precision drawn
    from its posterior (flat prior) on them. A start too strict lets through too few listings to show anything, and
    the first failure ends the test. The counts must come from listings other than the testing ones."""
    if not counts:
        return 0
    emitted, right = np.array(counts, dtype=float).T
    n = np.round(emitted * scale).astype(int)
    # The fewest right of n that pass: where the p-value first reaches 1 - confidence, or the target share.
    needed = (binom.isf(1 - confidence, n, target) + 1 if confidence is not None else np.ceil(target * n)).astype(int)
    possible = (n > 0) & (needed <= n)
    chance = np.full(len(n), -1.0)
    chance[possible] = _beta_binomial_tail(needed[possible], n[possible], right[possible] + 1, emitted[possible] - right[possible] + 1)
    return int(np.argmax(chance))


def _beta_binomial_tail(k: np.ndarray, n: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(X >= k) for X beta-binomial(n, a, b), element-wise, summed term by term in one pass (scipy's is slow)."""
    lengths = n - k + 1
    owner = np.repeat(np.arange(len(k)), lengths)
    j = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + k[owner]
    m, alpha, beta_ = n[owner], a[owner], b[owner]
    log_terms = (gammaln(m + 1) - gammaln(j + 1) - gammaln(m - j + 1) + betaln(j + alpha, m - j + beta_) - betaln(alpha, beta_))
    return np.add.reduceat(np.exp(log_terms), np.cumsum(lengths) - lengths)
