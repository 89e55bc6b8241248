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
        """The known paths nearest a typed one: those holding every typed word, then the closest spellings of the
        whole path and of its last level."""
        key = self.key(typed)
        words = WORD.findall(key)
        found = [p for p in self.paths if words and all(w in p.casefold() for w in words)]
        found.sort(key=lambda p: (not p.casefold().endswith(words[-1]) if words else True, len(p)))
        close = difflib.get_close_matches(key, list(self.by_key), n=limit, cutoff=0.6)
        leaf = key.split(">")[-1].strip()
        leaves = {}
        for path in self.paths:
            leaves.setdefault(path.split(PATH_SEPARATOR)[-1].casefold(), path)
        close_leaves = [leaves[k] for k in difflib.get_close_matches(leaf, list(leaves), n=limit, cutoff=0.6)]
        ordered = list(dict.fromkeys(found[:limit] + [self.by_key[k] for k in close] + close_leaves))
        return ordered[:limit]
