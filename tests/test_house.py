"""The seams of the house: errors a user can read and bugs shown as bugs, and every ENRICH_* variable read in one
module."""

import re
from pathlib import Path

import pytest

from enrich import cli
from enrich.environment import VARIABLES
from enrich.errors import ArtifactError, ConfigError, EnrichError, InputError

PACKAGE = Path(cli.__file__).parent


def test_a_mistake_of_the_users_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("enrich: error: ") and "missing.csv: file not found" in err and err.count("\n") == 1


def test_a_bug_says_it_is_one_and_keeps_its_traceback_in_a_log(tmp_path, capsys, monkeypatch):
    def broken(args, columns, progress):
        raise ValueError("operands could not be broadcast together")  # as numpy would

    monkeypatch.setenv("ENRICH_CACHE", str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "inspect", broken)
    assert cli.main(["inspect", "catalog.csv"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("enrich: bug: ValueError: operands could not be broadcast together")
    log = Path(re.search(r"the traceback is in (\S+);", err).group(1))
    assert log.parent == tmp_path / "logs"
    assert "Traceback" in log.read_text() and "in broken" in log.read_text()


@pytest.mark.parametrize("kind", [InputError, ArtifactError, ConfigError])
def test_each_kind_of_error_is_an_enrich_error_and_not_a_value_error(kind):
    assert issubclass(kind, EnrichError) and not issubclass(kind, ValueError)


def test_enrich_variables_are_read_in_one_module_and_each_is_documented():
    guide = (PACKAGE.parent / "docs" / "guide.md").read_text()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "environment.py":
            continue
        text = path.read_text()
        assert "os.environ" not in text or "RAY_ADDRESS" in text, f"{path} reads the environment itself"
        assert "getenv" not in text, f"{path} reads the environment itself"
        for name in re.findall(r"ENRICH_[A-Z_]+", text):
            assert name.rstrip("_") in VARIABLES or name.endswith("_"), f"{path} names {name}, not in enrich.environment"
    for name in VARIABLES:
        assert f"`{name}`" in guide, f"{name} is not listed in docs/guide.md"
