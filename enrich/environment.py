"""Every ENRICH_* environment variable, read here and nowhere else; the guide lists them. A flag always wins over its
variable; a variable wins over the default in the settings."""

from __future__ import annotations

import os
from pathlib import Path

VARIABLES = {
    "ENRICH_TOKEN": "the token of `enrich serve` (as --token)",
    "ENRICH_PRECISION": "fp32, bf16, fp16 or int8 (the encoder) for every model on this machine, instead of the precision measured",
    "ENRICH_BACKEND": "torch or openvino for every model on this machine, instead of the backend measured",
    "ENRICH_CACHE": "where measurements, converted models, LLM answers and bug logs are kept (default ~/.cache/enrich)",
    "ENRICH_PROMPTS": "a folder of the team's own released prompts, instead of those enrich ships",
    "ENRICH_LLM_BACKEND": "the LLM stage's backend, local or openai (as --llm-backend)",
    "ENRICH_LLM_MODEL": "the LLM stage's model (as --llm-model)",
    "ENRICH_LLM_BASE_URL": "the openai backend's server (as --llm-base-url)",
    "ENRICH_LLM_API_KEY": "the openai backend's key, where its server needs one",
    "ENRICH_SERVE_RUNTIME": "set by `enrich serve` for its own HTTP processes (their settings): not for users",
}


def variable(name: str) -> str | None:
    """The variable's value, or None where it is unset or empty."""
    _check_known(name)
    return os.environ.get(name) or None


def cache_dir() -> Path:
    return Path(variable("ENRICH_CACHE") or Path.home() / ".cache" / "enrich")


def set_for_children(name: str, value: str) -> None:
    """Set one of enrich's variables for the processes this one starts (and this one)."""
    _check_known(name)
    os.environ[name] = value


def child_environment(**overrides: str) -> dict[str, str]:
    """This process's environment with `overrides`, for a process it starts."""
    return {**os.environ, **overrides}


def _check_known(name: str) -> None:
    if name not in VARIABLES:
        raise KeyError(f"{name} is not one of enrich's variables (enrich.environment.VARIABLES)")
