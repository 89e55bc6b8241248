"""What the benchmarks share: the Amazon UK catalog's columns, where the shared data and labelled sets live, and
a description of the machine the figures were measured on."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from enrich.catalog import Columns
from enrich.embed import Encoder
from enrich.precision import SPEED_FLAGS, cpu_model, speed_flags
from enrich.sample import AMAZON_COLUMNS  # noqa: F401  (re-exported for the benchmarks)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEFAULT_CATALOG = SHARED_DATA / "amazon_uk_toys" / "catalog.csv"
DESCRIPTIONS = SHARED_DATA / "amazon_uk_toys" / "with_descriptions.csv"
TEST_DATA = ROOT / "tests" / "data"
AMAZON = Columns(id="uniq_id", title="product_name", brand="manufacturer", text=(),
                 category="amazon_category_and_sub_category", engagement="number_of_reviews")


def missing(data: Path, who: str = "bench") -> bool:
    """True, once it is said, where the shared data a benchmark reads is not on this machine."""
    if data.exists():
        return False
    print(f"{who}: {data} not found (the shared data folder is needed for the benchmark)", file=sys.stderr)
    return True


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def cpu() -> dict:
    """The CPU's model name, the instruction sets that decide which path is fast (`SPEED_FLAGS`), and torch's threads."""
    return {"model": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "flags": speed_flags()}


def machine(encoder: Encoder) -> str:
    """Where the figures were measured: the CPU and the flags of `SPEED_FLAGS` it has, the GPU if any, and the
    encoder's path there."""
    c = cpu()
    return (f"{c['model']} ({platform.machine()}, {c['cores']} cores, torch threads {c['torch_threads']}, "
            f"{' '.join(c['flags']) or 'no AVX2'}; not {' '.join(f for f in SPEED_FLAGS if f not in c['flags'])}), "
            f"{gpu_name() or 'no GPU'}, encoder on {encoder.device} in {encoder.path}")


def rho(x: np.ndarray, y: np.ndarray) -> float:
    return float(spearmanr(x, y).statistic)
