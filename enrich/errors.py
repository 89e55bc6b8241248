"""What can go wrong that a user can mend, by kind. The CLI turns each into one line and exit code 2, the API into a
4xx; anything else is a bug in enrich (or a library), shown as one, with its traceback kept in a log file."""

from __future__ import annotations


class EnrichError(Exception):
    """Something the user can mend; the message says what, and where (the file, row and field)."""


class InputError(EnrichError):
    """Bad input: a catalog, a row, a value given on the command line or in a request, an output path."""


class ArtifactError(EnrichError):
    """A file enrich made that cannot be used here: damaged, from another version, or made with other models."""


class ConfigError(EnrichError):
    """Settings that cannot work: flags that contradict each other or have no effect, an engine or a package this
    machine does not have."""
