"""The category paths a decision may name: every path the index knows (and each of its parent levels), and those the
team confirmed as new. A typed path is matched to one of them whatever its case and spacing; one that matches none
is refused with the nearest known paths, unless it is confirmed as a new category."""

from __future__ import annotations

import difflib
import re

from enrich.catalog.paths import PATH_SEPARATOR, path_prefixes

WORD = re.compile(r"\w+", re.UNICODE)


def normalised(path: str) -> str:
    """A typed path in the catalog's form: levels split on '>', trimmed, empty ones dropped, joined with ' > '."""
    return PATH_SEPARATOR.join(level.strip() for level in path.split(">") if level.strip())


def parents(path: str) -> list[str]:
    """The parent levels of a path, the top level first: 'A > B > C' -> ['A', 'A > B']."""
    return path_prefixes(path)[:-1]


class KnownPaths:
    """The known paths, with their parent levels, and the lookups a decision needs."""

    def __init__(self, paths):
        everything = set()
        for path in paths:
            if path:
                path = normalised(path)
                everything.add(path)
                everything.update(parents(path))
        self.paths = sorted(everything)
        self.by_key = {self.key(p): p for p in self.paths}

    @staticmethod
    def key(path: str) -> str:
        return normalised(path).casefold()

    def __len__(self) -> int:
        return len(self.paths)

    def resolve(self, typed: str) -> str | None:
        """The known path a typed one names (any case, any spacing around '>'), or None."""
        return self.by_key.get(self.key(typed))

    def suggestions(self, typed: str, limit: int = 5) -> list[str]:
        """The known paths nearest a typed one: those holding each typed word (or a known word it misspells) at the
        start of one of theirs; the words as typed first, then those whose last level holds the last word, the
        shallower first; then the closest spellings of the whole path."""
        words = WORD.findall(self.key(typed))
        if not words:
            return []
        vocabulary = sorted({w for p in self.paths for w in WORD.findall(p.casefold())})
        meant = [[w] + difflib.get_close_matches(w, vocabulary, n=3, cutoff=0.7) for w in words]

        def has(path_words: list[str], options: list[str]) -> bool:
            return any(pw.startswith(o) for o in options for pw in path_words)

        found = []
        for path in self.paths:
            path_words = WORD.findall(path.casefold())
            if all(has(path_words, options) for options in meant):
                leaf = WORD.findall(path.split(PATH_SEPARATOR)[-1].casefold())
                as_typed = all(has(path_words, [w]) for w in words)
                found.append((not as_typed, not has(leaf, meant[-1]), path.count(PATH_SEPARATOR), path))
        close = difflib.get_close_matches(self.key(typed), list(self.by_key), n=limit, cutoff=0.6)
        ordered = [p for *_, p in sorted(found)] + [self.by_key[k] for k in close]
        return list(dict.fromkeys(ordered))[:limit]
