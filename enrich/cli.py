"""The `enrich` command: parses flags, calls one library function, turns errors into a clear message."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import replace

from enrich.catalog import CatalogError, Columns
from enrich.engine import EngineConfig
from enrich.environment import cache_dir, variable
from enrich.errors import ConfigError, EnrichError, InputError
from enrich.flags import given, no_effect, parser
from enrich.settings import (AcceptanceConfig, AttributeConfig, DescribeConfig, EnrichConfig, EvalConfig, FinetuneConfig,
                             LLMConfig, RunConfig, ServeConfig, SimulationConfig, TaxonomyConfig, UpdateConfig, VoteConfig)

MODEL_COMMANDS = ("index", "run", "attributes", "eval", "simulate", "finetune", "serve", "review", "explain")


def _columns(args: argparse.Namespace) -> Columns:
    if not hasattr(args, "id_col"):  # a command that reads no catalog
        return Columns()
    columns = Columns.from_file(args.columns) if args.columns else Columns()
    return columns.updated(
        source="flags", id=args.id_col, title=args.title_col, brand=args.brand_col,
        category=args.category_col.split(",") if args.category_col and "," in args.category_col else args.category_col,
        engagement=args.engagement_col, tags=args.tags_col, text=args.text_cols.split(",") if args.text_cols is not None else None,
        encoding=args.encoding, delimiter=args.delimiter, format=args.format, category_separator=args.category_separator,
    )


def _engine(args: argparse.Namespace):

    return EngineConfig(**given(args, EngineConfig))


def _describe_config(args: argparse.Namespace):

    return DescribeConfig(
        llm=LLMConfig.from_env(**given(args, LLMConfig)),
        attributes=AttributeConfig(ask_model=args.attributes_by != "rules"),
        taxonomy=TaxonomyConfig(**given(args, TaxonomyConfig)),
        taxonomy_source=args.taxonomy or "",
        use_cache=not args.no_cache)


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
        raise ConfigError("enrich index needs a reference catalog (or --versions, --rollback or --verify)")
    if args.delete_missing and not args.update:
        raise ConfigError("--delete-missing goes with --update")
    check_output_path(args.out, inputs=(args.reference,), folder=True)
    acceptance = given(args, AcceptanceConfig)
    if acceptance.get("confidence") == 0:  # 0 asks for the old rule: the calibration split's own share, on average
        acceptance["confidence"] = None
    config = EnrichConfig(acceptance=AcceptanceConfig(**acceptance))
    if args.update:
        summary = update_index(args.reference, args.out, columns, progress=progress, delete_missing=args.delete_missing,
                               update=UpdateConfig(**given(args, UpdateConfig)), decisions=args.decisions)
        return summary.lines("usable") + [f"  unchanged listings kept without re-embedding: {summary.reused_embeddings}",
                                          f"index updated in {args.out}"]
    summary = build_index(args.reference, args.out, columns, config, progress=progress, tagger_dir=args.model,
                          engine=_engine(args), decisions=args.decisions)
    return summary.lines("indexed") + [f"  embeddings reused from the earlier build: {summary.reused_embeddings}",
                                       f"index written to {args.out}"]


def _run(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.run.loop import enrich

    config = EnrichConfig()
    config = replace(config, vote=VoteConfig(**given(args, VoteConfig)))
    summary = enrich(args.new, args.out, index_dir=args.index, reference_path=args.reference, columns=columns, config=config,
                     progress=progress, tagger_dir=args.model,
                     part_rows=RunConfig(**given(args, RunConfig)).part_rows,
                     describe=_describe_config(args) if args.describe else None, engine=_engine(args))
    return summary.lines("enriched") + [f"output written to {args.out}"]


def _finetune(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from accelerate import PartialState

    from enrich.category.finetune import finetune

    from enrich.embed import quiet_hugging_face

    quiet_hugging_face()  # again, now that fine-tuning has imported `datasets`
    metrics = finetune(args.catalog, args.out, columns, FinetuneConfig(**given(args, FinetuneConfig)), progress=progress, decisions=args.decisions)
    if not PartialState().is_main_process:  # under `accelerate launch` every process returns; one summary
        return []
    lines = [f"fine-tuned on {metrics['train_rows']} listings in {metrics['seconds']:.0f} s ({metrics['epochs_run']} epochs,"
             f" best {metrics['best_epoch']}): validation accuracy {metrics['validation_accuracy']:.3f},"
             f" calibration error {metrics['calibration_error_before']:.3f} -> {metrics['calibration_error_after']:.3f}",
             f"  mixed precision {metrics['mixed_precision']['chosen']} ({metrics['mixed_precision']['reason']}"
             + (f": {metrics['mixed_precision']['per_s']} listings/s" if metrics["mixed_precision"]["per_s"] else "") + ")",
             f"model written to {args.out}"]
    if "tags" in metrics:
        t = metrics["tags"]
        chosen = "chosen on validation" if t["chosen_on_validation"] else "given"
        lines.insert(1, f"  the catalog's own tags: {t['tags']} learned; at threshold {t['threshold']:.2f} ({chosen})"
                        f" validation precision {t['precision']:.3f}, recall {t['recall']:.3f}, F1 {t['f1']:.3f}")
    return lines


def _inspect(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.catalog.inspect import inspect_text
    from enrich.catalog.load import read_catalog

    print(inspect_text(read_catalog(args.catalog, columns, reference=not args.new)))
    return []


def _eval(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.evaluation.evaluate import evaluate
    from enrich.evaluation.report import write_report

    evaluation = evaluate(args.catalog, columns, EvalConfig(**given(args, EvalConfig)),
                          progress=progress)
    print(evaluation.markdown())
    return [f"report written to {', '.join(str(p) for p in write_report(evaluation, args.out))}"]


def _simulate(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from pathlib import Path

    import polars as pl

    from enrich.evaluation.evaluate import evaluate
    from enrich.evaluation.simulate import markdown, simulate
    from enrich.files import write_json, write_text

    evaluation = evaluate(args.catalog, columns, EvalConfig(**given(args, EvalConfig)), progress=progress)
    if not evaluation.priors:
        raise CatalogError(f"{args.catalog}: no held-out listing has engagement (or there is no prior): nothing to simulate")
    held = evaluation.held_out.filter(pl.col("true_engagement").is_not_null())
    result = simulate(held["true_engagement"].to_numpy(), evaluation.priors, held["prior_evidence"].to_numpy(),
                      SimulationConfig(**given(args, SimulationConfig)))
    print(markdown(result))
    out = Path(args.out)
    return [f"written to {write_text(out / 'simulate.md', markdown(result) + chr(10))}, {write_json(out / 'simulate.json', result)}"]


def _attributes(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.catalog import CleaningConfig, load_catalog
    from enrich.embed import Encoder
    from enrich.files import check_output_path
    from enrich.llm.describe import describe_catalog

    check_output_path(args.out, inputs=(args.listings,))
    frame = load_catalog(args.listings, columns, CleaningConfig())
    from enrich.llm.describe import Describer

    manifest = describe_catalog(frame, Describer(_describe_config(args), Encoder()), args.out, progress=progress)
    return [f"{manifest['rows']} rows read, {manifest['described']} described in {manifest['seconds']:.1f} s"
            f" ({manifest['rows'] - manifest['described']} refused: see status)", f"output written to {args.out}"]


def _explain(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.run.explain import explain
    from enrich.run.models import Models, ModelSources

    print(explain(args.id, args.input, Models(ModelSources(args.index, args.model)), columns))
    return []


def _serve(args: argparse.Namespace, columns: Columns, progress: bool) -> list[str]:
    from enrich.serve.app import serve


    serve(ServeConfig(index=args.index, model=args.model, columns=columns, **given(args, ServeConfig),
                      token=args.token or variable("ENRICH_TOKEN") or ""))
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
            raise InputError(f"{args.db}: no review store there")
        decisions = Store(args.db).decisions(latest=not args.history)
        write_table(decisions, check_output_path(args.out, inputs=(args.db,)))
        return [f"{decisions.height} decisions written to {args.out}"]
    output = Path(args.output)
    if not output.exists() or output.suffix.lower() != ".parquet":
        raise InputError(f"{output}: give the Parquet output of `enrich run` (a CSV one has lost its types)")
    enriched = pl.read_parquet(output)
    listings = load_catalog(args.input, columns)
    db = ServeConfig(index="", **given(args, ServeConfig)).db
    batch = import_output(Store(db), args.name or Path(args.input).name, listings, enriched,
                          f"enrich run: {output.name}")
    return [f"{listings.height} listings imported as batch {batch} into {db}"]


COMMANDS = {"inspect": _inspect, "index": _index, "run": _run, "finetune": _finetune, "eval": _eval, "attributes": _attributes, "explain": _explain,
            "serve": _serve, "review": _review, "simulate": _simulate}


def _error(message: str) -> int:
    """One line on stderr, whatever the message quotes from a file (line breaks and control characters escaped)."""
    one_line = re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", lambda m: repr(m.group())[1:-1], message)
    print(f"enrich: error: {one_line}", file=sys.stderr)
    return 2


def _bug(error: BaseException) -> int:
    """Not something the user did: one line that says so, the traceback kept in a log file whose path it prints."""
    import traceback
    from datetime import datetime

    log = cache_dir() / "logs" / f"enrich-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"enrich {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(error)))
        where = f"the traceback is in {log}"
    except OSError:
        where = "the traceback could not be written to a log; here it is:\n" + "".join(traceback.format_exception(error))
    first = str(error).splitlines()[0] if str(error) else ""
    print(f"enrich: bug: {type(error).__name__}: {first}\n  this is a bug in enrich, not in your input: {where};"
          " please report it with that file", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if problem := no_effect(args):
        return _error(problem)
    try:
        if args.command in MODEL_COMMANDS:
            from enrich.embed import quiet_hugging_face

            quiet_hugging_face()
        lines = COMMANDS[args.command](args, _columns(args), not getattr(args, "quiet", True))
    except EnrichError as e:
        return _error(str(e))
    except OSError as e:  # a folder made read-only, a disk full: the file and the reason, not a traceback
        return _error(f"{e.filename}: {e.strerror}" if e.filename else str(e.strerror or e))
    except Exception as e:  # anything else is a bug: never disguised as a mistake of the user's
        return _bug(e)
    if lines:
        print("\n".join(lines), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
