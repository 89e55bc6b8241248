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


def test_the_command_and_every_subcommands_help_load_no_heavy_library():
    """`enrich --help` answers in a fraction of a second because building the parser imports no model library."""
    import subprocess
    import sys

    commands = ["", "inspect", "index", "run", "attributes", "eval", "simulate", "finetune", "serve", "review", "explain"]
    script = ("import sys\nfrom enrich.flags import parser\nfor command in sys.argv[1:]:\n"
              "    try:\n        parser().parse_args([*command.split(), '--help'])\n    except SystemExit:\n        pass\n"
              "heavy = {'torch', 'numpy', 'polars', 'transformers', 'sklearn', 'scipy', 'fastapi'} & set(sys.modules)\n"
              "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", script, *commands], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_every_setting_flag_takes_its_default_from_the_settings():
    from enrich.flags import SETTING_FLAGS, default_of, parser

    actions = {a.dest: a for command in parser()._subparsers._group_actions[0].choices.values() for a in command._actions}
    assert len(SETTING_FLAGS) > 30
    for dest, (settings, name) in SETTING_FLAGS.items():
        action = actions[dest]
        assert action.default is None, f"--{dest} has a default of its own"
        assert f"(default {default_of(settings, name)})" in action.help


@pytest.mark.parametrize("argv, says", [
    (["index", "ref.csv", "--out", "i", "--update", "--model", "t"], "--model would have no effect with --update"),
    (["index", "ref.csv", "--out", "i", "--update", "--accept-precision", "0.95"], "--accept-precision would have no effect"),
    (["index", "ref.csv", "--out", "i", "--update", "--max-delete", "0.5"], "--max-delete has an effect only with"),
    (["run", "new.csv", "--index", "i", "--out", "o.parquet", "--llm-model", "x"], "--llm-model would have no effect without --describe"),
    (["run", "new.csv", "--index", "i", "--out", "o.parquet", "--workers", "4"], "--workers would have no effect without --engine ray"),
])
def test_a_flag_that_would_have_no_effect_is_refused(argv, says, capsys):
    assert cli.main(argv) == 2
    assert says in capsys.readouterr().err


# The house's layers, lowest first: a module may import its own layer and those below it, never one above.
LAYERS = [
    ("base", ["enrich.errors", "enrich.environment", "enrich.files", "enrich.manifest", "enrich.sampling", "enrich.engine",
              "enrich.sample"]),
    ("catalog", ["enrich.catalog"]),
    ("settings", ["enrich.settings"]),
    ("encoder and search blocks", ["enrich.precision", "enrich.backends", "enrich.embed", "enrich.search"]),
    ("models", ["enrich.category", "enrich.prior", "enrich.llm"]),
    ("index", ["enrich.index"]),
    ("run", ["enrich.run"]),
    ("evaluation", ["enrich.evaluation"]),
    ("serve", ["enrich.serve"]),
    ("command", ["enrich.cli", "enrich.flags", "enrich.__main__"]),
]


def layer_of(module: str) -> int:
    for number, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return number
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def imports_of(path: Path) -> set[str]:
    """Every enrich module a file imports, at the top or inside a function."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("enrich"):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names
                                      if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").exists()}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("enrich")}
    return found


def test_layers_only_point_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        if module == "enrich":
            continue
        own = layer_of(module)
        for imported in sorted(imports_of(path)):
            if imported != "enrich" and layer_of(imported) > own:
                upward.append(f"{module} ({LAYERS[own][0]}) imports {imported} ({LAYERS[layer_of(imported)][0]})")
    assert upward == []


def test_the_layer_test_catches_an_upward_import(tmp_path):
    low = tmp_path / "low.py"
    low.write_text("def f():\n    from enrich.run.score import enrich_frame\n")
    assert "enrich.run.score" in imports_of(low) and layer_of("enrich.run.score") > layer_of("enrich.catalog.load")


def test_benchmarks_run_the_command_but_borrow_nothing_else_from_it():
    for path in (PACKAGE.parent / "benchmarks").glob("*.py"):
        for line in path.read_text().splitlines():
            if line.strip().startswith("from enrich.cli import"):
                assert line.split(" import ")[1].split(" as ")[0].strip() == "main", f"{path.name}: {line.strip()}"
