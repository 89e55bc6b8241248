from pathlib import Path

import pytest

from enrich.catalog import Columns
from enrich.sample import sample_paths

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def sample():
    return sample_paths()


@pytest.fixture(scope="session")
def sample_columns(sample):
    return Columns.from_file(sample["columns"])


@pytest.fixture(scope="session")
def encoder():
    from enrich.embed import Encoder

    return Encoder()


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, sample, sample_columns, encoder):
    """The bundled reference sample, indexed once for the whole session."""
    from enrich.pipeline import build_index

    folder = tmp_path_factory.mktemp("index") / "sample-index"
    summary = build_index(sample["reference"], folder, sample_columns, progress=False, encoder=encoder)
    return folder, summary


@pytest.fixture
def amazon_catalog():
    path = SHARED_DATA / "amazon_uk_toys" / "catalog.csv"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path
