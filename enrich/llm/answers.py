"""Asking the chooser through a cache: the same question (prompt version, model, rendered prompt, options) is
answered once, and a re-run of a batch costs only look-ups."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
from scipy.special import softmax

from enrich.llm.chooser import Choice


class AnswerCache:
    """The model's choices by content hash (prompt version, model, rendered prompt, options): SQLite,
    so concurrent runs and a killed run leave it consistent, and a re-run costs only look-ups."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the threads that ask a model server, one statement at a time.
        self.db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self.lock = threading.Lock()
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
        self.hits = self.misses = 0

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, answer: dict) -> None:
        with self.lock, self.db:
            self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(answer)))


def ask(chooser, cache: AnswerCache | None, template, prompt: str, options: list[str]):
    """chooser.choose through the cache; invalid answers are not cached, so a later run asks again."""
    key = AnswerCache.key(template.name, template.sha256, json.dumps(chooser.description, sort_keys=True), prompt,
                          *options)
    if cache is not None and (hit := cache.get(key)) is not None:
        return Choice(index=hit["index"], scores=tuple(hit["scores"]))
    choice = chooser.choose(prompt, options)
    if cache is not None and choice.ok:
        cache.put(key, {"index": choice.index, "scores": list(choice.scores)})
    return choice


def choice_share(scores: tuple[float, ...], index: int) -> float:
    """The chosen option's share of a softmax over the options' scores (1.0 when there are no scores)."""
    if not scores:
        return 1.0
    return round(float(softmax(np.array(scores))[index]), 4)
