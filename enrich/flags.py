"""The `enrich` command's flags: one parser per command, and the groups of flags several commands share."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from enrich.category.finetune import FinetuneConfig

from enrich.llm.taxonomy import TaxonomyConfig


def column_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("columns (a --columns TOML file, then these flags)")
    group.add_argument("--columns", metavar="FILE", help="TOML mapping of roles to column names")
    group.add_argument("--id-col", help="listing id column (default: id)")
    group.add_argument("--title-col", help="title column (default: title)")
    group.add_argument("--brand-col", help="brand / manufacturer column (default: brand)")
    group.add_argument("--text-cols", help="comma-separated extra text columns (default: description)")
    group.add_argument("--category-col", help="category path column 'A > B > C', or its level columns: a,b,c (default: category)")
    group.add_argument("--tags-col", help="the listing's own tags, 'metal; ages 3+' or a list; `enrich finetune` learns them (default: tags)")
    group.add_argument("--engagement-col", help="engagement column: orders, reviews, clicks (default: engagement)")
    group.add_argument("--encoding", help="of a CSV or JSON Lines file, e.g. cp1252 or latin-1 (default: utf-8)")
    group.add_argument("--delimiter", help="of a CSV: ';', tab, '|' (default: a comma; a tab for .tsv)")


def engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: this process (default); ray: embedding and enrichment on Ray Data actors")
    group.add_argument("--ray-address", default="", help="a Ray cluster ('auto', 'ray://head:10001'); default RAY_ADDRESS, "
                       "else a local Ray instance")
    group.add_argument("--workers", type=int, default=0, help="Ray actors (default: one per GPU, else one per core)")


def llm_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LLM stage (flags, then ENRICH_LLM_BACKEND / _MODEL / _BASE_URL)")
    group.add_argument("--llm-backend", choices=["local", "openai"],
                       help="local: in-process, offline (default); openai: an OpenAI-compatible chat server")
    group.add_argument("--llm-model", help="local: smollm2-135m (default), gemma3-270m, a .gguf file or a model folder; "
                       "openai: the served model's name")
    group.add_argument("--llm-base-url", help="openai backend: the server, e.g. http://localhost:8000/v1")
    group.add_argument("--llm-concurrency", type=int, metavar="N",
                       help="openai backend: listings asked about at once (default 8; 1 asks in turn)")
    group.add_argument("--attributes-by", choices=["model", "rules"], default="model",
                       help="model: the LLM picks among the spans found (default); rules: the first span found")
    group.add_argument("--taxonomy-by", choices=["model", "nearest"], default="nearest",
                       help="nearest: the closest category by embedding (default, measured better with the 135M model); "
                       "model: the LLM picks among the retrieved candidates")
    group.add_argument("--taxonomy", help="a Shopify product-taxonomy release folder (default: the one shipped)")
    group.add_argument("--taxonomy-category-weight", type=float, default=TaxonomyConfig.category_weight, metavar="W",
                       help="weight of the listing's category path (given, or predicted by `run`) beside its text "
                       "when retrieving taxonomy candidates; 0: the text alone (default %(default)s)")
    group.add_argument("--taxonomy-name-weight", type=float, default=TaxonomyConfig.name_weight, metavar="W",
                       help="weight of a taxonomy category's own name beside its full path in its vector; "
                       "0: the path alone (default %(default)s)")
    group.add_argument("--taxonomy-bridge", choices=["predicted", "given"], default=TaxonomyConfig.bridge,
                       help="`run` only: for a listing that comes with a category, the taxonomy query reads the category "
                       "enrich predicts (default) or the given one")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the LLM answer cache")


def _index_parser(commands, quiet: argparse.ArgumentParser) -> None:
    index = commands.add_parser("index", parents=[quiet], help="embed a reference catalog and build its hnswlib index")
    index.add_argument("reference", nargs="?", help="reference catalog with engagement (.csv, .parquet, .jsonl)")
    index.add_argument("--out", required=True, help="index folder to write (a new version, switched to atomically)")
    index.add_argument("--model", help="a fine-tuned tagger folder (`enrich finetune`); `enrich run` uses it by default")
    index.add_argument("--decisions", metavar="FILE", help="the team's decisions (`enrich review export`): relabel the "
                       "listings they name, add the reviewed ones as labelled listings")
    index.add_argument("--accept-precision", type=float, default=0.9, metavar="P",
                       help="accept predicted paths, and back off to a level of the others, so that each is right this "
                       "often (default 0.9)")
    index.add_argument("--accept-confidence", type=float, default=0.9, metavar="C",
                       help="... with this confidence, shown on reference listings apart from those that fitted the "
                       "calibration (default 0.9; 0: their share right, on average: no guarantee)")
    change = index.add_argument_group("changing an existing index")
    change.add_argument("--update", action="store_true",
                        help="add the file's new listings and replace its changed ones without a rebuild; deletes nothing")
    change.add_argument("--delete-missing", action="store_true",
                        help="with --update: the file is the whole current catalog; delete the listings it lacks")
    change.add_argument("--max-delete", type=float, default=0.1, metavar="SHARE",
                        help="with --delete-missing: refuse to delete more than this share of the index (default 0.1)")
    change.add_argument("--versions", action="store_true", help="list the index's kept versions and exit")
    change.add_argument("--rollback", action="store_true", help="point the index back at its previous version and exit")
    change.add_argument("--verify", action="store_true", help="check every file of the index against its checksum and exit")
    column_flags(index)
    engine_flags(index)


def _run_parser(commands, quiet: argparse.ArgumentParser) -> None:
    run = commands.add_parser("run", parents=[quiet], help="enrich new listings")
    run.add_argument("new", help="new listings (.csv, .parquet, .jsonl)")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", help="index folder from `enrich index`")
    source.add_argument("--reference", help="reference catalog: build a temporary index first")
    run.add_argument("--out", required=True, help="output table: Parquet, or CSV when the name ends in .csv")
    run.add_argument("--neighbors", type=int, help="neighbours written per listing (default 10)")
    run.add_argument("--model", help="a fine-tuned tagger folder; default: the index's, else the neighbours' vote alone")
    run.add_argument("--part-rows", type=int, default=10_000,
                     help="rows per saved part (default 10000): a killed run resumes from its finished parts")
    run.add_argument("--describe", action="store_true",
                     help="also run the LLM stage: grounded attributes and a Shopify taxonomy node per listing")
    column_flags(run)
    llm_flags(run)
    engine_flags(run)


def _attributes_parser(commands, quiet: argparse.ArgumentParser) -> None:
    attributes = commands.add_parser("attributes", parents=[quiet], help="the LLM stage alone: grounded attributes and a Shopify taxonomy node")
    attributes.add_argument("listings", help="listings (.csv, .parquet, .jsonl)")
    attributes.add_argument("--out", required=True, help="output table: Parquet, or CSV when the name ends in .csv")
    column_flags(attributes)
    llm_flags(attributes)


def _evaluate_parser(commands, quiet: argparse.ArgumentParser) -> None:
    evaluate = commands.add_parser("eval", parents=[quiet], help="hold listings out of a catalog, enrich them, score them beside baselines")
    evaluate.add_argument("catalog", help="catalog with known categories and engagement")
    evaluate.add_argument("--out", default="out/eval", help="folder for eval.md, eval.json and the plots (default out/eval)")
    evaluate.add_argument("--holdout", type=float, default=0.2, help="share held out as new listings (default 0.2)")
    evaluate.add_argument("--seed", type=int, default=0, help="random split seed (default 0)")
    evaluate.add_argument("--date-col", help="a date column: hold out the latest listings instead (time split)")
    column_flags(evaluate)


def _simulate_parser(commands, quiet: argparse.ArgumentParser) -> None:
    simulate = commands.add_parser("simulate", parents=[quiet], help="what a ranker gains from the prior: exploration "
                                   "policies in a market grounded in held-out listings' true engagement")
    simulate.add_argument("catalog", help="catalog with known engagement (and categories, for the category-mean prior)")
    simulate.add_argument("--out", default="out/simulate", help="folder for simulate.md and simulate.json")
    simulate.add_argument("--strength", type=float, default=20.0, help="pseudo-impressions per unit of prior_evidence (default 20)")
    simulate.add_argument("--seed", type=int, default=0, help="random split seed (default 0)")
    column_flags(simulate)


def _finetune_parser(commands, quiet: argparse.ArgumentParser) -> None:
    finetune = commands.add_parser("finetune", parents=[quiet], help="fine-tune the BERT tagger on a catalog with category paths")
    finetune.add_argument("catalog", help="catalog with a category path per listing")
    finetune.add_argument("--decisions", metavar="FILE", help="the team's decisions (`enrich review export`): trained on as gold")
    finetune.add_argument("--out", required=True, help="model folder (safetensors, labels, config, metrics); resumes if it holds a checkpoint")
    column_flags(finetune)
    add_config_flags(finetune)


def _serve_parser(commands, quiet: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", help="the review workbench in the browser and the enrichment API")
    serve.add_argument("--index", required=True, help="index folder from `enrich index`")
    serve.add_argument("--model", help="a fine-tuned tagger folder; default: the index's")
    serve.add_argument("--db", default="enrich-review.sqlite", help="the review store, batches and decisions (SQLite)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; beyond it, --token is required)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token", default=os.environ.get("ENRICH_TOKEN", ""),
                       help="the token every page and API call needs (default ENRICH_TOKEN, else a random one, printed)")
    column_flags(serve)


def _review_parser(commands, quiet: argparse.ArgumentParser) -> None:
    review = commands.add_parser("review", help="review batches and decisions: import a run's output, export decisions")
    actions = review.add_subparsers(dest="review_command", required=True)
    into = actions.add_parser("import", help="the output of `enrich run`, with its input, as a batch to review")
    into.add_argument("output", help="the Parquet output of `enrich run`")
    into.add_argument("--input", required=True, help="the new listings it was made from")
    into.add_argument("--db", default="enrich-review.sqlite", help="the review store (SQLite)")
    into.add_argument("--name", help="the batch's name (default: the input's file name)")
    column_flags(into)
    export = actions.add_parser("export", help="every decision, for the learning loop and other systems")
    export.add_argument("--db", required=True, help="the review store (SQLite)")
    export.add_argument("--out", required=True, help="decisions.csv or decisions.parquet")


def _explain_parser(commands, quiet: argparse.ArgumentParser) -> None:
    explain = commands.add_parser("explain", help="why one listing got its category, neighbours and prior")
    explain.add_argument("id", help="the listing's id")
    explain.add_argument("--input", required=True, help="the new listings file that holds it")
    explain.add_argument("--index", required=True, help="index folder from `enrich index`")
    explain.add_argument("--model", help="a fine-tuned tagger folder, as for `enrich run`; default: the index's")
    column_flags(explain)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enrich", description="Tags, similar popular listings and exposure priors for new listings.")
    commands = parser.add_subparsers(dest="command", required=True)
    quiet = argparse.ArgumentParser(add_help=False)  # shared by every command that shows progress
    quiet.add_argument("--quiet", action="store_true", help="no progress bars")
    _index_parser(commands, quiet)
    _run_parser(commands, quiet)
    _attributes_parser(commands, quiet)
    _evaluate_parser(commands, quiet)
    _simulate_parser(commands, quiet)
    _finetune_parser(commands, quiet)
    _serve_parser(commands, quiet)
    _review_parser(commands, quiet)
    _explain_parser(commands, quiet)
    return parser


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per FinetuneConfig field, defaults from the dataclass."""
    group = parser.add_argument_group("training (FinetuneConfig)")
    for f in fields(FinetuneConfig):
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        group.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, help=f"default: {f.default}")


def config_from(args: argparse.Namespace) -> FinetuneConfig:
    chosen = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig) if getattr(args, f.name, None) is not None}
    return FinetuneConfig(**chosen)
