"""`enrich run`: new listings in, the output contract out, a part at a time so that a killed run resumes.

The output is computed `part_rows` rows at a time, each part saved in `OUT.parts/` as it is done; a run
killed at any point and started again with the same arguments keeps the parts it finished, so its final
output equals an uninterrupted run's. The parts are removed once the output is written. Parts run in this
process, or on a pool of Ray Data actors (`run.engine`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from enrich.catalog import CatalogError, Columns, load_catalog
from enrich.category.tagger import Tagger
from enrich.config import EnrichConfig
from enrich.embed import Encoder
from enrich.files import check_output_path, exclusive_lock, write_json, write_table
from enrich.index.build import build_index
from enrich.index.store import FORMAT, MANIFEST, ReferenceIndex, encoder_for, query_config, recorded_tagger
from enrich.manifest import Summary, now, package_versions
from enrich.engine import EngineConfig
from enrich.run.score import OUTPUT_SCHEMA, as_output, enrich_part


def enrich(new_path: str | Path, out_path: str | Path, index_dir: str | Path | None = None,
           reference_path: str | Path | None = None, columns: Columns = Columns(), reference_columns: Columns | None = None,
           config: EnrichConfig = EnrichConfig(), progress: bool = True, tagger_dir: str | Path | None = None,
           part_rows: int = 10_000, describer=None, engine: EngineConfig = EngineConfig(), encoder: Encoder | None = None,
           ) -> Summary:
    """Enrich new listings against an index folder, or build one from `reference_path` first (one shot).

    The tagger is `tagger_dir`, else the one the index was built with, else none (the neighbours' vote).
    With a `describe.Describer`, each part also gets the LLM stage's attributes and taxonomy node.
    `encoder`, when given (the describer's, so that a run loads one), must be the one the index was built with.
    """
    started = time.perf_counter()
    if (index_dir is None) == (reference_path is None):
        raise CatalogError("give either an index folder (--index) or a reference catalog (--reference)")
    if part_rows < 1:
        raise CatalogError(f"--part-rows must be at least 1, not {part_rows}")
    out_path = check_output_path(out_path, inputs=(new_path, reference_path))
    frame = load_catalog(new_path, columns, config.cleaning, reference=False)
    with exclusive_lock(out_path, "this output"):
        parts = Path(str(out_path) + ".parts")
        run_key = _run_key(new_path, index_dir, reference_path, columns, reference_columns, config, tagger_dir, part_rows,
                           describer.manifest() if describer else None)
        if parts.exists() and _read_json(parts / "run.json").get("key") != run_key:
            shutil.rmtree(parts)  # left by a run with other arguments: nothing in it can be reused
        try:
            parts.mkdir(parents=True, exist_ok=True)
            write_json(parts / "run.json", {"key": run_key})
            if index_dir is None:
                # The one-shot index is built once into the parts folder, so a resumed run reuses it.
                index_dir, encoder = parts / "index", encoder or Encoder(config.encoder)
                if not (index_dir / MANIFEST).exists():
                    build_index(reference_path, index_dir, reference_columns or columns, config, progress, encoder=encoder,
                                engine=engine)
            encoder = encoder or encoder_for(index_dir)
            index = ReferenceIndex.load(index_dir, encoder)
            if reference_path is None:
                config, tagger_dir = query_config(index, config), tagger_dir or recorded_tagger(index)
            tagger = Tagger.load(tagger_dir) if tagger_dir else None
            output = _enrich_parts(frame, parts, part_rows, index, index_dir, encoder, config, tagger, tagger_dir, describer,
                                   engine, progress)
            summary = Summary.of(frame, started)
            summary.partial = int(output["status"].str.starts_with("partial").sum())
            write_table(output, out_path)
            index_source = ({"reference": str(reference_path)} if reference_path is not None else
                            {"index": str(index_dir), "index_built_at": index.manifest["built_at"]})
            write_json(Path(str(out_path) + ".manifest.json"), {
                "written_at": now(), "input": str(new_path), **index_source, "columns": asdict(columns),
                "config": asdict(config), "part_rows": part_rows, "encoder": encoder.identity(),
                "tagger": {"path": str(tagger_dir), "precision": asdict(tagger.precision),
                           **{k: tagger.info[k] for k in ("base_model", "config", "metrics")}} if tagger else None,
                "packages": package_versions(), "describe": describer.manifest() if describer else None,
                "engine": asdict(engine), "summary": asdict(summary)})
        except Exception:  # an error would recur with the same arguments; after a kill or Ctrl-C the parts resume
            shutil.rmtree(parts, ignore_errors=True)
            raise
        shutil.rmtree(parts, ignore_errors=True)
    summary.seconds = time.perf_counter() - started
    return summary


def _enrich_parts(frame: pl.DataFrame, parts: Path, part_rows: int, index: ReferenceIndex, index_dir, encoder: Encoder,
                  config: EnrichConfig, tagger: Tagger | None, tagger_dir, describer, engine: EngineConfig,
                  progress: bool) -> pl.DataFrame:
    """Every part of the output, each computed (here or on Ray) and saved unless a killed run saved it already."""
    starts = list(range(0, frame.height, part_rows)) or [0]

    def part_file(number: int) -> Path:
        return parts / f"part-{number:05d}.parquet"

    with tqdm(total=frame.height, desc="enriching", unit="listing", disable=not progress) as bar:
        todo = {}
        for number, start in enumerate(starts):
            chunk = frame.slice(start, part_rows)
            if part_file(number).exists():
                bar.update(chunk.height)
            else:
                todo[number] = chunk
        if engine.is_ray and todo:
            from enrich.engine import enrich_parts_with_ray

            describe_config = describer.config if describer is not None else None
            for number, enriched in enrich_parts_with_ray(todo, index_dir, config, tagger_dir, describe_config, engine):
                write_table(as_output(enriched), part_file(number))
                bar.update(todo[number].height)
        else:
            for number, chunk in todo.items():
                write_table(enrich_part(chunk, index, encoder, config, tagger, describer), part_file(number))
                bar.update(chunk.height)
    return pl.concat([pl.read_parquet(part_file(n)) for n in range(len(starts))]).cast(OUTPUT_SCHEMA)


def _run_key(new_path, index_dir, reference_path, columns, reference_columns, config, tagger_dir, part_rows,
             describe=None) -> str:
    """What must be the same for a run's parts to be reused: the inputs (by size and time) and every setting."""
    def stamp(path) -> list | None:
        if path is None:
            return None
        path = Path(path)
        # A folder (an index, a tagger) is stamped by the file that describes it.
        described = [path / name for name in (MANIFEST, "tagger.json")] if path.is_dir() else [path]
        found = [p.stat() for p in described if p.exists()]
        return [str(path.resolve())] + ([found[0].st_size, found[0].st_mtime_ns] if found else [None])
    key = {"new": stamp(new_path), "index": stamp(index_dir), "reference": stamp(reference_path), "tagger": stamp(tagger_dir),
           "columns": asdict(columns), "reference_columns": asdict(reference_columns) if reference_columns else None,
           "config": asdict(config), "part_rows": part_rows, "format": FORMAT, "describe": describe}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
