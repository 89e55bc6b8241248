"""Prompt templates as versioned files: `prompts/<task>.v<N>.yaml`.

A template file has exactly the keys `task`, `version`, `description`, `variables` and `template` (Jinja2).
Rendering is strict: a declared variable left out, an undeclared one passed, or a template that uses a
name it does not declare is an error. A released file is never edited: `prompts/released.json` holds the
SHA-256 of every released file, loading refuses a file that no longer matches, and a change is a new
version (`python -m enrich.llm.templates release prompts/<task>.v<N+1>.yaml` records it). The task and
version a run used go into its manifest. The project's top-level `prompts/` folder ships inside the wheel as
the package `enrich.prompts`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import jinja2
import jinja2.meta
import yaml

from enrich.environment import variable
from enrich.errors import ArtifactError, ConfigError
from enrich.files import write_text

KEYS = {"task", "version", "description", "variables", "template"}
FILE_NAME = re.compile(r"(?P<task>[a-z0-9_]+)\.v(?P<version>\d+)\.yaml")
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def prompts_dir() -> Path:
    """The released prompts shipped with enrich, or ENRICH_PROMPTS for a team that keeps its own."""
    return Path(variable("ENRICH_PROMPTS") or str(files("enrich.prompts")))


@dataclass(frozen=True)
class PromptTemplate:
    task: str
    version: int
    description: str
    variables: tuple[str, ...]
    source: str
    sha256: str

    @property
    def name(self) -> str:
        return f"{self.task}.v{self.version}"

    def render(self, **values) -> str:
        missing = set(self.variables) - set(values)
        unknown = set(values) - set(self.variables)
        if missing or unknown:
            raise ValueError(f"prompt {self.name}: missing variables {sorted(missing)}, "
                             f"unknown variables {sorted(unknown)}")
        return _ENV.from_string(self.source).render(**values).strip()


def read_template(path: Path, released: dict[str, str] | None = None) -> PromptTemplate:
    """Parse and check one template file (and, when given the released hashes, that it is unedited)."""
    raw = path.read_bytes()
    match = FILE_NAME.fullmatch(path.name)
    if not match:
        raise ArtifactError(f"{path}: a prompt file is named <task>.v<N>.yaml")
    spec = yaml.safe_load(raw)
    if not isinstance(spec, dict) or set(spec) != KEYS:
        found = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise ArtifactError(f"{path}: a prompt file has exactly the keys {sorted(KEYS)}, found {found}")
    if spec["task"] != match["task"] or spec["version"] != int(match["version"]):
        raise ArtifactError(f"{path}: task/version inside ({spec['task']}.v{spec['version']}) differ from the name")
    variables = tuple(spec["variables"])
    used = jinja2.meta.find_undeclared_variables(_ENV.parse(spec["template"]))
    if used != set(variables):
        raise ArtifactError(f"{path}: the template uses {sorted(used)} but declares {sorted(variables)}")
    digest = hashlib.sha256(raw).hexdigest()
    if released is not None and path.name in released and released[path.name] != digest:
        raise ArtifactError(f"{path} was edited after its release; released prompts never change: "
                            f"restore it and put the change in a new version")
    return PromptTemplate(task=spec["task"], version=spec["version"], description=spec["description"],
                          variables=variables, source=spec["template"], sha256=digest)


def released_hashes(folder: Path) -> dict[str, str]:
    lock = folder / "released.json"
    return json.loads(lock.read_text()) if lock.exists() else {}


def load_prompt(task: str, version: int | None = None, folder: Path | None = None) -> PromptTemplate:
    """The template for task: the given version, or the newest released one."""
    folder = folder or prompts_dir()
    released = released_hashes(folder)
    if version is None:
        versions = [int(m["version"]) for name in released if (m := FILE_NAME.fullmatch(name)) and m["task"] == task]
        if not versions:
            raise ConfigError(f"no released prompt for task {task!r} in {folder}")
        version = max(versions)
    path = folder / f"{task}.v{version}.yaml"
    if not path.exists():
        raise ConfigError(f"no prompt file {path}")
    return read_template(path, released)


def release(path: Path) -> str:
    """Record a new template version as released (refusing to re-release a changed file)."""
    released = released_hashes(path.parent)
    template = read_template(path, released)
    released[path.name] = template.sha256
    write_text(path.parent / "released.json", json.dumps(dict(sorted(released.items())), indent=1) + "\n")
    return template.name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m enrich.llm.templates", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("release", help="record a new prompt version as released").add_argument("path", type=Path)
    args = parser.parse_args(argv)
    print(f"released {release(args.path)}")


if __name__ == "__main__":
    main()
