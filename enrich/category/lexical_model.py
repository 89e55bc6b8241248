"""The index's own category classifier: logistic regression over the reference listings' TF-IDF vectors.

The neighbours' vote reads the 50 most similar listings; this reads every reference listing's words at once,
and the two err on different listings, so the mix beats either (docs/benchmarks.md). It is fitted when the
index is built, on the index's own TF-IDF rows, and saved as plain arrays (no pickle). `vote` mixes its
probabilities with the vote's shares and a fine-tuned tagger's.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.special import softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from enrich.sampling import fit_sample
from enrich.settings import CategoryModelConfig


class CategoryModel:
    """Category path probabilities from a listing's TF-IDF row (the index's `Lexical` vocabulary)."""

    FILES = ("category_model.json", "category_model_coef.npy", "category_model_intercept.npy", "category_model_columns.npy")

    def __init__(self, labels: list[str], coef: np.ndarray, intercept: np.ndarray, columns: np.ndarray, info: dict):
        self.labels, self.coef, self.intercept, self.info = labels, coef, intercept, info
        self.columns = columns  # the vocabulary's term index behind each coefficient column

    @classmethod
    def fit(cls, lexical_rows: sp.csr_matrix, categories: list[str | None],
            config: CategoryModelConfig = CategoryModelConfig()) -> "CategoryModel | None":
        """None when fewer than two categories are known: there is nothing to tell apart."""
        started = time.perf_counter()
        known = np.flatnonzero([bool(c) for c in categories])
        if len({categories[i] for i in known}) < 2:
            return None
        rows = known[fit_sample(len(known), config.fit_rows, config.seed)]
        fitted = lexical_rows[rows]
        document_counts = np.bincount(fitted.indices, minlength=fitted.shape[1])
        columns = np.sort(np.argsort(-document_counts, kind="stable")[: config.max_terms])
        columns = columns[document_counts[columns] > 0].astype(np.int32)
        model = LogisticRegression(solver="saga", C=config.inverse_regularisation, max_iter=config.passes,
                                   random_state=config.seed)
        with warnings.catch_warnings():  # saga stops after `passes` on purpose: more did not change the accuracy
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.filterwarnings("ignore", message="The number of unique classes")  # small catalogs: still usable
            model.fit(fitted[:, columns], np.array([categories[i] for i in rows], dtype=object))
        coef = model.coef_.astype(np.float32)
        intercept = model.intercept_.astype(np.float32)
        if len(model.classes_) == 2:  # sklearn keeps one row for a binary problem: the second class's logit
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept]).astype(np.float32)
        info = {"config": asdict(config), "fit_rows": int(len(rows)), "categories": len(model.classes_),
                "terms": int(len(columns)), "seconds": round(time.perf_counter() - started, 2)}
        return cls([str(c) for c in model.classes_], coef, intercept, columns, info)

    def probabilities(self, lexical_rows: sp.csr_matrix) -> np.ndarray:
        """(n, labels), rows summing to 1."""
        return softmax(np.asarray(lexical_rows[:, self.columns] @ self.coef.T) + self.intercept, axis=1)

    def save(self, folder: Path) -> None:
        (folder / self.FILES[0]).write_text(json.dumps({"labels": self.labels, **self.info}))
        np.save(folder / self.FILES[1], self.coef)
        np.save(folder / self.FILES[2], self.intercept)
        np.save(folder / self.FILES[3], self.columns)

    @classmethod
    def load(cls, folder: Path) -> "CategoryModel":
        saved = json.loads((folder / cls.FILES[0]).read_text())
        labels = saved.pop("labels")
        coef = np.load(folder / cls.FILES[1], allow_pickle=False)
        intercept = np.load(folder / cls.FILES[2], allow_pickle=False)
        columns = np.load(folder / cls.FILES[3], allow_pickle=False)
        return cls(labels, coef, intercept, columns, saved)
