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
from typing import Iterator

import polars as pl
from tqdm.auto import tqdm

from enrich.catalog import Columns, load_catalog
from enrich.settings import EnrichConfig, RunConfig
from enrich.embed import Encoder
from enrich.engine import EngineConfig
from enrich.errors import ConfigError
from enrich.files import check_output_path, exclusive_lock, write_json, write_table
from enrich.index.build import build_index
from enrich.index.store import FORMAT, MANIFEST
from enrich.manifest import Summary, now, package_versions
from enrich.run.models import Models, ModelSources
from enrich.run.score import OUTPUT_SCHEMA, PartEnricher, as_output, enrich_part

PART_COLUMN = "_part"  # a part's number, carried through the engine's actors


def enrich(new_path: str | Path, out_path: str | Path, index_dir: str | Path | None = None,
           reference_path: str | Path | None = None, columns: Columns = Columns(), reference_columns: Columns | None = None,
           config: EnrichConfig = EnrichConfig(), progress: bool = True, tagger_dir: str | Path | None = None,
           part_rows: int = RunConfig.part_rows, describe=None, engine: EngineConfig = EngineConfig(), encoder: Encoder | None = None,
           describer=None) -> Summary:
    """Enrich new listings against an index folder, or build one from `reference_path` first (one shot).

    The tagger is `tagger_dir`, else the one the index was built with, else none (the neighbours' vote).
    `describe` (an `llm.describe.DescribeConfig`) adds the LLM stage's attributes and taxonomy node to each part; or
    `describer`, one already loaded, whose encoder is `encoder`, the one the index was built with.
    """
    started = time.perf_counter()
    if (index_dir is None) == (reference_path is None):
        raise ConfigError("give either an index folder (--index) or a reference catalog (--reference)")
    if part_rows < 1:
        raise ConfigError(f"--part-rows must be at least 1, not {part_rows}")
    out_path = check_output_path(out_path, inputs=(new_path, reference_path))
    frame = load_catalog(new_path, columns, config.cleaning, reference=False)
    describe = describer.config if describer is not None else describe
    with exclusive_lock(out_path, "this output"):
        parts = Path(str(out_path) + ".parts")
        run_key = _run_key(new_path, index_dir, reference_path, columns, reference_columns, config, tagger_dir, part_rows,
                           asdict(describe) if describe is not None else None)
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
            sources = ModelSources(str(index_dir), str(tagger_dir) if tagger_dir else None, config, describe)
            models = Models(sources, encoder=encoder, describer=describer)
            output = _enrich_parts(frame, parts, part_rows, models, engine, progress)
            summary = Summary.of(frame, started)
            summary.partial = int(output["status"].str.starts_with("partial").sum())
            write_table(output, out_path)
            write_json(Path(str(out_path) + ".manifest.json"), _manifest(new_path, index_dir, reference_path, columns,
                                                                          models, part_rows, engine, summary))
        except Exception:  # an error would recur with the same arguments; after a kill or Ctrl-C the parts resume
            shutil.rmtree(parts, ignore_errors=True)
            raise
        shutil.rmtree(parts, ignore_errors=True)
    summary.seconds = time.perf_counter() - started
    return summary


def _manifest(new_path, index_dir, reference_path, columns: Columns, models: Models, part_rows: int,
              engine: EngineConfig, summary: Summary) -> dict:
    """What `OUT.manifest.json` records: the inputs, the resolved settings, the models and the summary."""
    index_source = ({"reference": str(reference_path)} if reference_path is not None else
                    {"index": str(index_dir), "index_built_at": models.index.manifest["built_at"]})
    tagger = models.tagger
    return {"written_at": now(), "input": str(new_path), **index_source, "columns": asdict(columns),
            "config": asdict(models.config), "part_rows": part_rows, "encoder": models.encoder.identity(),
            "tagger": {"path": str(models.tagger_dir), "precision": asdict(tagger.precision),
                       **{k: tagger.info[k] for k in ("base_model", "config", "metrics")}} if tagger else None,
            "packages": package_versions(), "describe": models.describer.manifest() if models.describer else None,
            "engine": asdict(engine), "summary": asdict(summary)}


def _enrich_parts(frame: pl.DataFrame, parts: Path, part_rows: int, models: Models, engine: EngineConfig,
                  progress: bool) -> pl.DataFrame:
    """Every part of the output, each computed (here or on the engine's actors) and saved unless a killed run saved it
    already."""
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
            for number, enriched in _parts_on_actors(todo, models.sources, engine):
                write_table(as_output(enriched), part_file(number))
                bar.update(todo[number].height)
        else:
            for number, chunk in todo.items():
                write_table(enrich_part(chunk, models), part_file(number))
                bar.update(chunk.height)
    return pl.concat([pl.read_parquet(part_file(n)) for n in range(len(starts))]).cast(OUTPUT_SCHEMA)


def _parts_on_actors(chunks: dict[int, pl.DataFrame], sources: ModelSources, engine: EngineConfig
                     ) -> Iterator[tuple[int, pl.DataFrame]]:
    """Each pending part through `PartEnricher` on the engine's actors; (part number, output) as each part completes."""
    from enrich.engine import map_on_actors

    blocks = [chunk.with_columns(pl.lit(number, pl.Int64).alias(PART_COLUMN)).to_arrow()
              for number, chunk in sorted(chunks.items())]
    pending: dict[int, list[pl.DataFrame]] = {}
    for batch in map_on_actors(blocks, PartEnricher, (sources, PART_COLUMN), engine):
        frame = pl.from_arrow(batch)
        for number in frame[PART_COLUMN].unique(maintain_order=True).to_list():
            pending.setdefault(number, []).append(frame.filter(pl.col(PART_COLUMN) == number).drop(PART_COLUMN))
            done = pl.concat(pending[number])
            if done.height == chunks[number].height:
                del pending[number]
                yield number, done


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
