"""Category paths ("Hobbies > Model Trains > Rail Vehicles") and their levels, read one way everywhere."""

from __future__ import annotations

PATH_SEPARATOR = " > "


def path_levels(path: str | None) -> list[str]:
    """The path's level names, most general first; blank levels are dropped."""
    return [level.strip() for level in (path or "").split(PATH_SEPARATOR) if level.strip()]


def path_prefix(path: str | None, depth: int) -> str:
    """The first `depth` levels of a path, joined again: accuracy at a depth compares these."""
    return PATH_SEPARATOR.join(path_levels(path)[:depth])


def path_prefixes(path: str | None) -> list[str]:
    """Every prefix of the path, from its top level to the whole path."""
    levels = path_levels(path)
    return [PATH_SEPARATOR.join(levels[: depth + 1]) for depth in range(len(levels))]
