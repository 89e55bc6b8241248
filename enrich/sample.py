"""The bundled sample: 1,000 reference listings and 200 new ones cut from the Amazon UK toy catalog.

Source: PromptCloud, Toy Products on Amazon, CC BY-SA 4.0 (see sample_data/ATTRIBUTION.md).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

SAMPLE_DIR = Path(__file__).parent / "sample_data"
AMAZON_COLUMNS = ["uniq_id", "product_name", "manufacturer", "amazon_category_and_sub_category", "number_of_reviews"]


def sample_paths() -> dict[str, Path]:
    """reference.csv, new.csv and the columns.toml that maps their Amazon column names."""
    return {name: SAMPLE_DIR / f"{name}{suffix}" for name, suffix in
            (("reference", ".csv"), ("new", ".csv"), ("columns", ".toml"))}


def cut_sample(catalog_csv: str | Path, out_dir: Path = SAMPLE_DIR, n_reference: int = 1000, n_new: int = 200,
               seed: int = 7) -> None:
    """Re-cut the sample from ../shared/data/amazon_uk_toys/catalog.csv (how the bundled files were made)."""
    catalog = pl.read_csv(catalog_csv, infer_schema=False).select(AMAZON_COLUMNS).sample(
        n=n_reference + n_new, seed=seed, shuffle=True)
    catalog.head(n_reference).write_csv(out_dir / "reference.csv")
    catalog.tail(n_new).drop("number_of_reviews", "amazon_category_and_sub_category").write_csv(out_dir / "new.csv")
