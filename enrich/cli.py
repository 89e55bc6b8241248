"""The `enrich` command: parses flags, calls one library function, turns errors into a clear message."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import replace

from enrich.catalog import CatalogError, Columns
from enrich.files import OutputError
from enrich.llm.taxonomy import TaxonomyConfig


def quiet_hugging_face() -> None:
    """Hugging Face's own bars and notices ("Loading weights", the new head's load report) would bury enrich's
    progress and summary. `datasets` (seconds to import) is quietened where it is in use: fine-tuning."""
    import huggingface_hub
    from transformers.utils import logging

    huggingface_hub.utils.disable_progress_bars()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def _column_flags(parser: argparse.ArgumentParser) -> None:
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


def _columns(args: argparse.Namespace) -> Columns:
    if not hasattr(args, "id_col"):  # a command that reads no catalog
        return Columns()
    columns = Columns.from_file(args.columns) if args.columns else Columns()
    return columns.updated(
        source="flags", id=args.id_col, title=args.title_col, brand=args.brand_col,
        category=args.category_col.split(",") if args.category_col and "," in args.category_col else args.category_col,
        engagement=args.engagement_col, tags=args.tags_col, text=args.text_cols.split(",") if args.text_cols is not None else None,
        encoding=args.encoding, delimiter=args.delimiter,
    )


def _engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: this process (default); ray: embedding and enrichment on Ray Data actors")
    group.add_argument("--ray-address", default="", help="a Ray cluster ('auto', 'ray://head:10001'); default RAY_ADDRESS, "
                       "else a local Ray instance")
    group.add_argument("--workers", type=int, default=0, help="Ray actors (default: one per GPU, else one per core)")


def _engine(args: argparse.Namespace):
    from enrich.engine import EngineConfig

    return EngineConfig(name=args.engine, address=args.ray_address, workers=args.workers)


def _llm_flags(parser: argparse.ArgumentParser) -> None:
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


def _describer(args: argparse.Namespace, encoder):
    from enrich.llm.attributes import AttributeConfig
    from enrich.llm.chooser import LLMConfig
    from enrich.llm.describe import DescribeConfig, Describer

    config = DescribeConfig(
        llm=LLMConfig.from_env(backend=args.llm_backend, model=args.llm_model, base_url=args.llm_base_url,
                               concurrency=args.llm_concurrency),
        attributes=AttributeConfig(ask_model=args.attributes_by == "model"),
        taxonomy=TaxonomyConfig(choose=args.taxonomy_by, category_weight=args.taxonomy_category_weight,
                                name_weight=args.taxonomy_name_weight, bridge=args.taxonomy_bridge),
        taxonomy_source=args.taxonomy or "",
        use_cache=not args.no_cache)
    return Describer(config, encoder)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enrich", description="Tags, similar popular listings and exposure priors for new listings.")
    commands = parser.add_subparsers(dest="command", required=True)
    quiet = argparse.ArgumentParser(add_help=False)  # shared by every command that shows progress
    quiet.add_argument("--quiet", action="store_true", help="no progress bars")

    index = commands.add_parser("index", parents=[quiet], help="embed a reference catalog and build its hnswlib index")
    index.add_argument("reference", nargs="?", help="reference catalog with engagement (.csv, .parquet, .jsonl)")
    index.add_argument("--out", required=True, help="index folder to write (a new version, switched to atomically)")
    index.add_argument("--model", help="a fine-tuned tagger folder (`enrich finetune`); `enrich run` uses it by default")
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
    _column_flags(index)
    _engine_flags(index)

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
    _column_flags(run)
    _llm_flags(run)
    _engine_flags(run)

    attributes = commands.add_parser("attributes", parents=[quiet], help="the LLM stage alone: grounded attributes and a Shopify taxonomy node")
    attributes.add_argument("listings", help="listings (.csv, .parquet, .jsonl)")
    attributes.add_argument("--out", required=True, help="output table: Parquet, or CSV when the name ends in .csv")
    _column_flags(attributes)
    _llm_flags(attributes)

    evaluate = commands.add_parser("eval", parents=[quiet], help="hold listings out of a catalog, enrich them, score them beside baselines")
    evaluate.add_argument("catalog", help="catalog with known categories and engagement")
    evaluate.add_argument("--out", default="out/eval", help="folder for eval.md, eval.json and the plots (default out/eval)")
    evaluate.add_argument("--holdout", type=float, default=0.2, help="share held out as new listings (default 0.2)")
    evaluate.add_argument("--seed", type=int, default=0, help="random split seed (default 0)")
    evaluate.add_argument("--date-col", help="a date column: hold out the latest listings instead (time split)")
    _column_flags(evaluate)

    finetune = commands.add_parser("finetune", parents=[quiet], help="fine-tune the BERT tagger on a catalog with category paths")
    finetune.add_argument("catalog", help="catalog with a category path per listing")
    finetune.add_argument("--out", required=True, help="model folder (safetensors, labels, config, metrics); resumes if it holds a checkpoint")
    _column_flags(finetune)
    from enrich.category.finetune import add_config_flags

    add_config_flags(finetune)

    serve = commands.add_parser("serve", help="the review workbench in the browser and the enrichment API")
    serve.add_argument("--index", required=True, help="index folder from `enrich index`")
    serve.add_argument("--model", help="a fine-tuned tagger folder; default: the index's")
    serve.add_argument("--db", default="enrich-review.sqlite", help="the review store, batches and decisions (SQLite)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; beyond it, --token is required)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token", default=os.environ.get("ENRICH_TOKEN", ""),
                       help="the token every page and API call needs (default ENRICH_TOKEN, else a random one, printed)")
    _column_flags(serve)

    review = commands.add_parser("review", help="review batches and decisions: import a run's output, export decisions")
    actions = review.add_subparsers(dest="review_command", required=True)
    into = actions.add_parser("import", help="the output of `enrich run`, with its input, as a batch to review")
    into.add_argument("output", help="the Parquet output of `enrich run`")
    into.add_argument("--input", required=True, help="the new listings it was made from")
    into.add_argument("--db", default="enrich-review.sqlite", help="the review store (SQLite)")
    into.add_argument("--name", help="the batch's name (default: the input's file name)")
    _column_flags(into)
    export = actions.add_parser("export", help="every decision, for the learning loop and other systems")
    export.add_argument("--db", required=True, help="the review store (SQLite)")
    export.add_argument("--out", required=True, help="decisions.csv or decisions.parquet")

    explain = commands.add_parser("explain", help="why one listing got its category, neighbours and prior")
    explain.add_argument("id", help="the listing's id")
    explain.add_argument("--input", required=True, help="the new listings file that holds it")
    explain.add_argument("--index", required=True, help="index folder from `enrich index`")
    explain.add_argument("--model", help="a fine-tuned tagger folder, as for `enrich run`; default: the index's")
    _column_flags(explain)
    return parser


def _index_versions(args: argparse.Namespace) -> list[str]:
    from pathlib import Path

    from enrich.index import versions
    from enrich.index.store import ReferenceIndex, read_manifest

    out = Path(args.out)
    if args.rollback:
        return [f"index {out} now points at {versions.rollback(out).name}"]
    if args.verify:
        index = ReferenceIndex.load(out, verify=True)
        return [f"{index.folder}: every file matches the checksum `enrich index` recorded ({len(index.manifest['files'])} files)"]
    lines = []
    for version, current in versions.list_versions(out):
        manifest = read_manifest(version)
        updated = manifest["updates"][-1]["at"] if manifest["updates"] else manifest["built_at"]
        lines.append(f"{'*' if current else ' '} {version.name}  written {updated}  {manifest['counts']['indexed']} listings"
                     f"  {len(manifest['updates'])} updates since the build")
    return lines or [f"{out}: no versions"]


def _index(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.files import check_output_path
    from enrich.index.build import build_index
    from enrich.index.update import update_index

    if args.versions or args.rollback or args.verify:
        for line in _index_versions(args):
            print(line)
        return []
    if args.reference is None:
        raise CatalogError("enrich index needs a reference catalog (or --versions, --rollback or --verify)")
    if args.delete_missing and not args.update:
        raise CatalogError("--delete-missing goes with --update")
    check_output_path(args.out, inputs=(args.reference,), folder=True)
    if args.update:
        summary = update_index(args.reference, args.out, columns, progress=progress, delete_missing=args.delete_missing,
                               max_delete_share=args.max_delete)
        return summary.lines("usable") + [f"  unchanged listings kept without re-embedding: {summary.reused_embeddings}",
                                          f"index updated in {args.out}"]
    summary = build_index(args.reference, args.out, columns, progress=progress, tagger_dir=args.model, engine=_engine(args))
    return summary.lines("indexed") + [f"  embeddings reused from the earlier build: {summary.reused_embeddings}",
                                       f"index written to {args.out}"]


def _run(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.config import EnrichConfig
    from enrich.embed import Encoder
    from enrich.index.store import encoder_for
    from enrich.run.loop import enrich

    config = EnrichConfig()
    if args.neighbors is not None:
        config = replace(config, vote=replace(config.vote, top_k=args.neighbors))
    describer = encoder = None
    if args.describe:
        # One encoder for the run and the LLM stage: the index's own.
        encoder = encoder_for(args.index) if args.index else Encoder(config.encoder)
        describer = _describer(args, encoder)
    summary = enrich(args.new, args.out, index_dir=args.index, reference_path=args.reference, columns=columns, config=config,
                     progress=progress, tagger_dir=args.model, part_rows=args.part_rows, describer=describer,
                     engine=_engine(args), encoder=encoder)
    return summary.lines("enriched") + [f"output written to {args.out}"]


def _finetune(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from accelerate import PartialState

    from enrich.category.finetune import config_from, finetune

    quiet_hugging_face()  # again, now that fine-tuning has imported `datasets`
    metrics = finetune(args.catalog, args.out, columns, config_from(args), progress=progress)
    if not PartialState().is_main_process:  # under `accelerate launch` every process returns; one summary
        return []
    lines = [f"fine-tuned on {metrics['train_rows']} listings in {metrics['seconds']:.0f} s ({metrics['epochs_run']} epochs,"
             f" best {metrics['best_epoch']}): validation accuracy {metrics['validation_accuracy']:.3f},"
             f" calibration error {metrics['calibration_error_before']:.3f} -> {metrics['calibration_error_after']:.3f}",
             f"model written to {args.out}"]
    if "tags" in metrics:
        t = metrics["tags"]
        chosen = "chosen on validation" if t["chosen_on_validation"] else "given"
        lines.insert(1, f"  the catalog's own tags: {t['tags']} learned; at threshold {t['threshold']:.2f} ({chosen})"
                        f" validation precision {t['precision']:.3f}, recall {t['recall']:.3f}, F1 {t['f1']:.3f}")
    return lines


def _eval(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.evaluation.evaluate import EvalConfig, evaluate
    from enrich.evaluation.report import write_report

    evaluation = evaluate(args.catalog, columns, EvalConfig(holdout=args.holdout, seed=args.seed, date_column=args.date_col),
                          progress=progress)
    print(evaluation.markdown())
    return [f"report written to {', '.join(str(p) for p in write_report(evaluation, args.out))}"]


def _attributes(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.catalog import CleaningConfig, load_catalog
    from enrich.embed import Encoder
    from enrich.files import check_output_path
    from enrich.llm.describe import describe_catalog

    check_output_path(args.out, inputs=(args.listings,))
    frame = load_catalog(args.listings, columns, CleaningConfig())
    manifest = describe_catalog(frame, _describer(args, Encoder()), args.out, progress=progress)
    return [f"{manifest['rows']} rows read, {manifest['described']} described in {manifest['seconds']:.1f} s"
            f" ({manifest['rows'] - manifest['described']} refused: see status)", f"output written to {args.out}"]


def _explain(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.run.explain import explain

    print(explain(args.id, args.input, args.index, columns, tagger_dir=args.model))
    return []


def _serve(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.serve.app import serve
    from enrich.serve.workbench import ServeConfig

    serve(ServeConfig(index=args.index, db=args.db, model=args.model, columns=columns, host=args.host, port=args.port,
                      token=args.token))
    return []


def _review(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from pathlib import Path

    import polars as pl

    from enrich.catalog import load_catalog
    from enrich.files import check_output_path, write_table
    from enrich.serve.store import Store
    from enrich.serve.workbench import import_output

    if args.review_command == "export":
        if not Path(args.db).exists():
            raise CatalogError(f"{args.db}: no review store there")
        decisions = Store(args.db).decisions()
        write_table(decisions, check_output_path(args.out, inputs=(args.db,)))
        return [f"{decisions.height} decisions written to {args.out}"]
    output = Path(args.output)
    if not output.exists() or output.suffix.lower() != ".parquet":
        raise CatalogError(f"{output}: give the Parquet output of `enrich run` (a CSV one has lost its types)")
    enriched = pl.read_parquet(output)
    listings = load_catalog(args.input, columns)
    batch = import_output(Store(args.db), args.name or Path(args.input).name, listings, enriched,
                          f"enrich run: {output.name}")
    return [f"{listings.height} listings imported as batch {batch} into {args.db}"]


COMMANDS = {"index": _index, "run": _run, "finetune": _finetune, "eval": _eval, "attributes": _attributes, "explain": _explain,
            "serve": _serve, "review": _review}


def _error(message: str) -> int:
    """One line on stderr, whatever the message quotes from a file (line breaks and control characters escaped)."""
    one_line = re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", lambda m: repr(m.group())[1:-1], message)
    print(f"enrich: error: {one_line}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_hugging_face()
    try:
        lines = COMMANDS[args.command](args, _columns(args), not getattr(args, "quiet", True))
    except (CatalogError, OutputError, ValueError) as e:
        return _error(str(e))
    except OSError as e:  # a folder made read-only, a disk full: the file and the reason, not a traceback
        return _error(f"{e.filename}: {e.strerror}" if e.filename else str(e.strerror or e))
    if lines:
        print("\n".join(lines), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
