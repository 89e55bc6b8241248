import numpy as np
import polars as pl
import pytest

from enrich.engine import EngineConfig
from enrich.errors import ConfigError
from enrich.run.score import OUTPUT_SCHEMA
from enrich.index.store import ReferenceIndex
from enrich.index.build import build_index
from enrich.run.loop import enrich

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with two one-core workers, shut down after these tests."""
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield EngineConfig(name="ray", workers=2, cpus_per_worker=1)
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_gives_the_local_engine_s_index_and_output(tmp_path, sample, sample_columns, sample_index, local_ray):
    folder = tmp_path / "ray-index"
    build_index(sample["reference"], folder, sample_columns, progress=False, engine=local_ray)
    local_index, ray_index = ReferenceIndex.load(sample_index[0]), ReferenceIndex.load(folder)
    assert ray_index.ids.tolist() == local_index.ids.tolist()
    cosine = np.sum(ray_index.embeddings * local_index.embeddings, axis=1)
    assert cosine.min() > 0.999  # same model; only the threads per process differ

    new = pl.read_csv(sample["new"]).head(60)
    new = new.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("")).otherwise(pl.col("product_name"))
                           .alias("product_name"))
    new.write_csv(tmp_path / "new.csv")
    enrich(tmp_path / "new.csv", tmp_path / "local.parquet", index_dir=sample_index[0], columns=sample_columns,
           progress=False, part_rows=25)
    enrich(tmp_path / "new.csv", tmp_path / "ray.parquet", index_dir=sample_index[0], columns=sample_columns,
           progress=False, part_rows=25, engine=local_ray)
    local, distributed = pl.read_parquet(tmp_path / "local.parquet"), pl.read_parquet(tmp_path / "ray.parquet")
    assert distributed.schema == pl.Schema(OUTPUT_SCHEMA) and distributed.height == 60
    assert distributed["id"].to_list() == local["id"].to_list()
    assert distributed["status"].to_list() == local["status"].to_list()
    assert distributed.row(7, named=True)["status"].startswith("refused")
    ok = pl.col("status") == "ok"
    assert (distributed.filter(ok)["category"] == local.filter(ok)["category"]).mean() > 0.95
    np.testing.assert_allclose(distributed.filter(ok)["exposure_prior"].to_numpy(),
                               local.filter(ok)["exposure_prior"].to_numpy(), rtol=0.02)


def test_unknown_engines_are_refused():
    with pytest.raises(ConfigError, match="unknown engine"):
        EngineConfig(name="spark")
