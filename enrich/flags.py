"""The `enrich` command's flags: one parser per command, and the groups of flags several commands share.

A flag that sets a setting has no default of its own: it is None unless given, and the setting's dataclass
(`enrich.settings`) supplies the default, which the help shows. `SETTING_FLAGS` names each such flag's setting;
`given` reads the ones a command was given.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from enrich.catalog.columns import Columns
from enrich.engine import EngineConfig
from enrich.settings import (AcceptanceConfig, EvalConfig, FinetuneConfig, LLMConfig, RunConfig, ServeConfig,
                             SimulationConfig, TaxonomyConfig, UpdateConfig, VoteConfig)

SETTING_FLAGS: dict[str, tuple[type, str]] = {}  # a flag's dest -> (settings class, field)


def default_of(settings: type, name: str):
    """A settings field's default, as the dataclass gives it."""
    field = next(f for f in fields(settings) if f.name == name)
    return field.default if field.default is not MISSING else field.default_factory()


def setting(group, flag: str, settings: type, name: str, help: str, **options) -> None:
    """A flag for the setting `settings.name`: None unless given; the help ends with the dataclass's default."""
    action = group.add_argument(flag, default=None, help=f"{help} (default {default_of(settings, name)})", **options)
    SETTING_FLAGS[action.dest] = (settings, name)


def given(args: argparse.Namespace, settings: type) -> dict:
    """The fields of `settings` that the command line set, by field name."""
    return {name: getattr(args, dest) for dest, (cls, name) in SETTING_FLAGS.items()
            if cls is settings and getattr(args, dest, None) is not None}


def column_flags(parser: argparse.ArgumentParser) -> None:
    defaults = Columns()
    group = parser.add_argument_group("columns (a --columns TOML file, then these flags)")
    group.add_argument("--columns", metavar="FILE", help="TOML mapping of roles to column names")
    group.add_argument("--id-col", help=f"listing id column (default: {defaults.id})")
    group.add_argument("--title-col", help=f"title column (default: {defaults.title})")
    group.add_argument("--brand-col", help=f"brand / manufacturer column (default: {defaults.brand})")
    group.add_argument("--text-cols", help=f"comma-separated extra text columns (default: {','.join(defaults.text)})")
    group.add_argument("--category-col", help="category path column, or its level columns: a,b,c "
                       f"(default: {defaults.category})")
    group.add_argument("--tags-col", help="the listing's own tags, 'metal; ages 3+' or a list; `enrich finetune` learns "
                       f"them (default: {defaults.tags})")
    group.add_argument("--engagement-col", help=f"engagement column: orders, reviews, clicks (default: {defaults.engagement})")
    group.add_argument("--encoding", help=f"of a CSV or JSON Lines file, e.g. cp1252 or latin-1 (default: {defaults.encoding})")
    group.add_argument("--delimiter", help="of a CSV: ';', tab, '|' (default: a comma; a tab for .tsv)")
    group.add_argument("--format", help="a named export: shopify, woocommerce, google-merchant, magento (default: "
                       "recognised from the headers)")
    group.add_argument("--category-separator", metavar="SEP", help="between a category path's levels: '>', '>>', '/', "
                       "'|', '»' (default: detected)")


def engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    setting(group, "--engine", EngineConfig, "name", "local: this process; ray: embedding and enrichment on Ray Data actors",
            choices=["local", "ray"])
    setting(group, "--ray-address", EngineConfig, "address", "a Ray cluster ('auto', 'ray://head:10001'); empty: "
            "RAY_ADDRESS, else a local Ray instance")
    setting(group, "--workers", EngineConfig, "workers", "Ray actors; 0: one per GPU, else one per core", type=int)


def llm_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LLM stage, with --describe (flags, then ENRICH_LLM_BACKEND / _MODEL / _BASE_URL)")
    setting(group, "--llm-backend", LLMConfig, "backend", "local: in-process, offline; openai: an OpenAI-compatible chat "
            "server", choices=["local", "openai"])
    setting(group, "--llm-model", LLMConfig, "model", "local: smollm2-135m, gemma3-270m, a .gguf file or a model folder; "
            "openai: the served model's name")
    setting(group, "--llm-base-url", LLMConfig, "base_url", "openai backend: the server, e.g. http://localhost:8000/v1")
    setting(group, "--llm-concurrency", LLMConfig, "concurrency", "openai backend: listings asked about at once; 1 asks in "
            "turn", type=int, metavar="N")
    group.add_argument("--attributes-by", choices=["model", "rules"],
                       help="model: the LLM picks among the spans found (default); rules: the first span found")
    setting(group, "--taxonomy-by", TaxonomyConfig, "choose", "nearest: the closest category by embedding (measured "
            "better with the 135M model); model: the LLM picks among the retrieved candidates", choices=["model", "nearest"])
    group.add_argument("--taxonomy", help="a Shopify product-taxonomy release folder (default: the one shipped)")
    setting(group, "--taxonomy-category-weight", TaxonomyConfig, "category_weight", "weight of the listing's category "
            "path (given, or predicted by `run`) beside its text when retrieving taxonomy candidates; 0: the text alone",
            type=float, metavar="W")
    setting(group, "--taxonomy-name-weight", TaxonomyConfig, "name_weight", "weight of a taxonomy category's own name "
            "beside its full path in its vector; 0: the path alone", type=float, metavar="W")
    setting(group, "--taxonomy-bridge", TaxonomyConfig, "bridge", "`run` only: for a listing that comes with a category, "
            "the taxonomy query reads the category enrich predicts or the given one", choices=["predicted", "given"])
    group.add_argument("--no-cache", action="store_true", help="do not read or write the LLM answer cache")


LLM_FLAGS = ("llm_backend", "llm_model", "llm_base_url", "llm_concurrency", "attributes_by", "taxonomy_by", "taxonomy",
             "taxonomy_category_weight", "taxonomy_name_weight", "taxonomy_bridge")


def _index_parser(commands, quiet: argparse.ArgumentParser) -> None:
    index = commands.add_parser("index", parents=[quiet], help="embed a reference catalog and build its hnswlib index")
    index.add_argument("reference", nargs="?", help="reference catalog (.csv, .tsv, .parquet, .jsonl, .xml)")
    index.add_argument("--out", required=True, help="index folder to write (a new version, switched to atomically)")
    index.add_argument("--model", help="a fine-tuned tagger folder (`enrich finetune`); `enrich run` uses it by default")
    index.add_argument("--decisions", metavar="FILE", help="the team's decisions (`enrich review export`): relabel the "
                       "listings they name, add the reviewed ones as labelled listings")
    setting(index, "--accept-precision", AcceptanceConfig, "target_precision", "accept predicted paths, and back off "
            "to a level of the others, so that each is right this often", type=float, metavar="P")
    setting(index, "--accept-confidence", AcceptanceConfig, "confidence", "... with this confidence, shown on reference "
            "listings apart from those that fitted the calibration (0: their share right, on average: no guarantee)",
            type=float, metavar="C")
    change = index.add_argument_group("changing an existing index")
    change.add_argument("--update", action="store_true",
                        help="add the file's new listings and replace its changed ones without a rebuild; deletes nothing")
    change.add_argument("--delete-missing", action="store_true",
                        help="with --update: the file is the whole current catalog; delete the listings it lacks")
    setting(change, "--max-delete", UpdateConfig, "max_delete_share", "with --delete-missing: refuse to delete more than "
            "this share of the index", type=float, metavar="SHARE")
    change.add_argument("--versions", action="store_true", help="list the index's kept versions and exit")
    change.add_argument("--rollback", action="store_true", help="point the index back at its previous version and exit")
    change.add_argument("--verify", action="store_true", help="check every file of the index against its checksum and exit")
    column_flags(index)
    engine_flags(index)


def _run_parser(commands, quiet: argparse.ArgumentParser) -> None:
    run = commands.add_parser("run", parents=[quiet], help="enrich new listings")
    run.add_argument("new", help="new listings (.csv, .tsv, .parquet, .jsonl, .xml)")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", help="index folder from `enrich index`")
    source.add_argument("--reference", help="reference catalog: build a temporary index first")
    run.add_argument("--out", required=True, help="output table: Parquet, or CSV when the name ends in .csv")
    setting(run, "--neighbors", VoteConfig, "top_k", "neighbours written per listing", type=int)
    run.add_argument("--model", help="a fine-tuned tagger folder; default: the index's, else the neighbours' vote alone")
    setting(run, "--part-rows", RunConfig, "part_rows", "rows per saved part: a killed run resumes from its finished parts",
            type=int)
    run.add_argument("--describe", action="store_true",
                     help="also run the LLM stage: grounded attributes and a Shopify taxonomy node per listing")
    column_flags(run)
    llm_flags(run)
    engine_flags(run)


def _attributes_parser(commands, quiet: argparse.ArgumentParser) -> None:
    attributes = commands.add_parser("attributes", parents=[quiet], help="the LLM stage alone: grounded attributes and a Shopify taxonomy node")
    attributes.add_argument("listings", help="listings (.csv, .tsv, .parquet, .jsonl, .xml)")
    attributes.add_argument("--out", required=True, help="output table: Parquet, or CSV when the name ends in .csv")
    column_flags(attributes)
    llm_flags(attributes)


def _evaluate_parser(commands, quiet: argparse.ArgumentParser) -> None:
    evaluate = commands.add_parser("eval", parents=[quiet], help="hold listings out of a catalog, enrich them, score them beside baselines")
    evaluate.add_argument("catalog", help="catalog with known categories (and engagement, for the prior's measures)")
    evaluate.add_argument("--out", default="out/eval", help="folder for eval.md, eval.json and the plots (default out/eval)")
    setting(evaluate, "--holdout", EvalConfig, "holdout", "share held out as new listings", type=float)
    setting(evaluate, "--seed", EvalConfig, "seed", "random split seed", type=int)
    setting(evaluate, "--date-col", EvalConfig, "date_column", "a date column: hold out the latest listings instead (time "
            "split)")
    column_flags(evaluate)


def _simulate_parser(commands, quiet: argparse.ArgumentParser) -> None:
    simulate = commands.add_parser("simulate", parents=[quiet], help="what a ranker gains from the prior: exploration "
                                   "policies in a market grounded in held-out listings' true engagement")
    simulate.add_argument("catalog", help="catalog with known engagement (and categories, for the category-mean prior)")
    simulate.add_argument("--out", default="out/simulate", help="folder for simulate.md and simulate.json")
    setting(simulate, "--strength", SimulationConfig, "strength", "pseudo-impressions per unit of prior_evidence",
            type=float)
    setting(simulate, "--seed", EvalConfig, "seed", "random split seed", type=int)
    column_flags(simulate)


def _finetune_parser(commands, quiet: argparse.ArgumentParser) -> None:
    finetune = commands.add_parser("finetune", parents=[quiet], help="fine-tune the BERT tagger on a catalog with category paths")
    finetune.add_argument("catalog", help="catalog with a category path per listing")
    finetune.add_argument("--decisions", metavar="FILE", help="the team's decisions (`enrich review export`): trained on as gold")
    finetune.add_argument("--out", required=True, help="model folder (safetensors, labels, config, metrics); resumes if it holds a checkpoint")
    column_flags(finetune)
    group = finetune.add_argument_group("training (FinetuneConfig)")
    for f in fields(FinetuneConfig):
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        setting(group, f"--{f.name.replace('_', '-')}", FinetuneConfig, f.name, f.name.replace("_", " "), type=kind)


def _serve_parser(commands, quiet: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", help="the review workbench in the browser and the enrichment API")
    serve.add_argument("--index", required=True, help="index folder from `enrich index`")
    serve.add_argument("--model", help="a fine-tuned tagger folder; default: the index's")
    setting(serve, "--db", ServeConfig, "db", "the review store, batches and decisions (SQLite)")
    setting(serve, "--host", ServeConfig, "host", "address to bind; beyond loopback, --token is required")
    setting(serve, "--port", ServeConfig, "port", "port to listen on", type=int)
    serve.add_argument("--token", help="the token every page and API call needs (default ENRICH_TOKEN, else a random one, "
                       "printed)")
    limits = serve.add_argument_group("processes, limits and batching (ServeConfig)")
    for name, kind, help in (("max_listings", int, "listings per POST /v1/enrich"),
                             ("max_request_bytes", int, "bytes of an API request's body"),
                             ("max_upload_bytes", int, "bytes of an uploaded catalog"),
                             ("batch_listings", int, "listings the batcher puts through the models at once"),
                             ("batch_wait_ms", float, "how long the batcher waits for more requests once one has come"),
                             ("conflict_cosine", float, "reference listings at least this similar are near-identical"),
                             ("uploads", str, "folder for uploaded catalogs; empty: beside the store"),
                             ("workers", int, "HTTP processes (more where cores allow; the models have their own)"),
                             ("model_workers", int, "processes holding the models"),
                             ("model_threads", int, "torch threads per model worker; 0: the cores shared among them"),
                             ("max_pending_listings", int, "listings waiting for the models before a 503"),
                             ("max_connections", int, "connections and requests in flight before a 503"),
                             ("model_timeout_s", float, "seconds a request waits for the models before a 503"),
                             ("header_timeout_s", float, "seconds a request's headers may take to arrive (408)"),
                             ("max_header_bytes", int, "bytes of a request's line and headers (431)"),
                             ("body_timeout_s", float, "seconds a body may take, plus one per --min-body-rate bytes"),
                             ("min_body_rate", float, "bytes per second a long body must keep up on average"),
                             ("reserve_seconds", float, "seconds a listing handed to a reviewer stays theirs")):
        setting(limits, f"--{name.replace('_', '-')}", ServeConfig, name, help, type=kind, dest=f"serve_{name}")
    column_flags(serve)


def _review_parser(commands, quiet: argparse.ArgumentParser) -> None:
    review = commands.add_parser("review", help="review batches and decisions: import a run's output, export decisions")
    actions = review.add_subparsers(dest="review_command", required=True)
    into = actions.add_parser("import", help="the output of `enrich run`, with its input, as a batch to review")
    into.add_argument("output", help="the Parquet output of `enrich run`")
    into.add_argument("--input", required=True, help="the new listings it was made from")
    setting(into, "--db", ServeConfig, "db", "the review store (SQLite)")
    into.add_argument("--name", help="the batch's name (default: the input's file name)")
    column_flags(into)
    export = actions.add_parser("export", help="the decisions, for the learning loop and other systems: the latest per "
                                "listing (undone ones left out)")
    export.add_argument("--db", required=True, help="the review store (SQLite)")
    export.add_argument("--out", required=True, help="decisions.csv or decisions.parquet")
    export.add_argument("--history", action="store_true", help="every decision instead, undos included, oldest first")


def _inspect_parser(commands, quiet: argparse.ArgumentParser) -> None:
    inspect = commands.add_parser("inspect", help="what enrich will make of a catalog file: format, roles, categories, "
                                  "engagement, refused rows, warnings; nothing is built")
    inspect.add_argument("catalog", help="a catalog or export (.csv, .tsv, .parquet, .jsonl, .xml)")
    inspect.add_argument("--new", action="store_true", help="read it as new listings (engagement not read)")
    column_flags(inspect)


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
    _inspect_parser(commands, quiet)
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


def no_effect(args: argparse.Namespace) -> str | None:
    """A flag given that the command would ignore, and why; None when every flag given has an effect."""
    def named(dests) -> list[str]:
        return ["--" + d.replace("_", "-") for d in dests if getattr(args, d, None) not in (None, False)]

    if args.command == "index":
        if args.update or args.versions or args.rollback or args.verify:
            what = "--update" if args.update else "--versions, --rollback or --verify"
            ignored = named(("accept_precision", "accept_confidence", "model", "engine", "ray_address", "workers"))
            if ignored:
                return f"{', '.join(ignored)} would have no effect with {what}: an update keeps the index's models and" \
                       " policy (rebuild without --update to change them)"
        if args.max_delete is not None and not args.delete_missing:
            return "--max-delete has an effect only with --update --delete-missing"
    if args.command in ("run", "attributes") and not getattr(args, "describe", True):
        ignored = named(LLM_FLAGS + ("no_cache",))
        if ignored:
            return f"{', '.join(ignored)} would have no effect without --describe (the LLM stage)"
    if args.command in ("index", "run") and args.engine != "ray":
        ignored = named(("ray_address", "workers"))
        if ignored:
            return f"{', '.join(ignored)} would have no effect without --engine ray"
    return None
