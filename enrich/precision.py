"""Where models run and in which precision.

On a GPU, the encoder runs in fp16 and the rest as before. On a CPU, "auto" is decided by the clock, not by the
CPU's flags: the first time a model is used on a machine, a short fixed workload runs in each candidate precision,
and the fastest one that agrees with fp32 is kept (a CPU that reports bf16 units can still run bf16 slower than
fp32). The choice is cached per machine (CPU model, cores, torch version) and model, in `precision.json` beside the
other caches, and recorded, with the measurements behind it, in every manifest. A named precision (a flag, the
config, or ENRICH_PRECISION) is used as it is.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable

import torch

from enrich.environment import cache_dir, variable
from enrich.errors import ConfigError
from enrich.files import write_json

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ENVIRONMENT = "ENRICH_PRECISION"


@cache
def _cpuinfo(field: str) -> str | None:
    """The first value of `field` in /proc/cpuinfo (Linux), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def cpu_has_native_bf16() -> bool:
    """True where the CPU reports bf16 units (AVX512-BF16 or AMX): bf16 is worth measuring there, not elsewhere."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def machine_key() -> str:
    return f"{cpu_model()}|{os.cpu_count()} cores|{torch.get_num_threads()} threads|torch {torch.__version__}"


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def named_precision(precision: str) -> str:
    """The precision asked for: the setting, unless it is "auto" and ENRICH_PRECISION names one."""
    if precision == "auto":
        precision = variable(ENVIRONMENT) or "auto"
    if precision != "auto" and precision not in DTYPES:
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    return precision


def resolve_dtype(precision: str, device: str) -> torch.dtype:
    """A named precision as a dtype; "auto" before measuring: fp16 on CUDA, else fp32 (see `Measured`)."""
    precision = named_precision(precision)
    if precision in DTYPES:
        return DTYPES[precision]
    return torch.float16 if device.startswith("cuda") else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class Measured:
    """A precision choice and what it rests on."""

    chosen: str
    reason: str  # "measured", "cached" (measured before on this machine), "asked for", "no other candidate here"
    per_s: dict[str, float] = field(default_factory=dict)  # items per second in each candidate precision
    agrees: dict[str, bool] = field(default_factory=dict)  # whether each candidate agreed with fp32


def choose(per_s: dict[str, float], agrees: dict[str, bool], baseline: str = "fp32") -> str:
    """The fastest candidate that agrees with the baseline (the baseline agrees with itself)."""
    usable = {name: rate for name, rate in per_s.items() if name == baseline or agrees.get(name, False)}
    return max(usable, key=usable.get)


def cache_file() -> Path:
    return cache_dir() / "precision.json"


def measure(stage: str, model_key: str, candidates: dict[str, Callable[[], object]], items: int,
            agree: Callable[[object, object], bool], repeats: int = 2) -> Measured:
    """Run each candidate's workload (once to warm up, then `repeats` times, the best kept), keep the fastest that
    agrees with the first candidate (full precision), and cache the choice for this machine and model. A cached choice
    is used without measuring."""
    key = f"{stage}|{model_key}|{machine_key()}"
    path = cache_file()
    try:
        cached = json.loads(path.read_text()).get(key)
    except (OSError, json.JSONDecodeError):
        cached = None
    if cached and cached.get("chosen") in candidates:
        return Measured(**{**cached, "reason": "cached"})
    if len(candidates) == 1:
        return Measured(next(iter(candidates)), "no other candidate here")
    outputs, per_s = {}, {}
    for name, run in candidates.items():
        outputs[name] = run()
        best = min(_seconds(run) for _ in range(repeats))
        per_s[name] = round(items / best, 1)
    baseline = next(iter(candidates))
    agrees = {name: bool(agree(outputs[baseline], out)) for name, out in outputs.items()}
    measured = Measured(choose(per_s, agrees, baseline), "measured", per_s, agrees)
    _remember(path, key, measured)
    return measured


def _seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _remember(path: Path, key: str, measured: Measured) -> None:
    try:
        known = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        known = {}
    try:
        write_json(path, {**known, key: asdict(measured)})
    except (OSError, ValueError):  # a read-only home: measured again next time, nothing worse
        pass


def workload(count: int = 256) -> list[str]:
    """A fixed set of product-like titles of the usual lengths, for timing: the same on every machine."""
    colours = ("red", "blue", "pink", "green", "black", "multicoloured", "yellow", "white")
    things = ("wooden train set with three carriages and a bridge", "remote control racing car 1:24 scale",
              "princess dress up costume for girls ages 3-5", "jigsaw puzzle 1000 pieces of a castle at night",
              "plush teddy bear 30 cm soft toy", "building bricks space station kit 520 pieces",
              "party balloons pack of 50 for birthdays", "board game for the whole family, 2 to 6 players")
    brands = ("Brio", "Hornby", "LEGO", "Ravensburger", "Amscan", "Disney", "Hasbro", "Melissa & Doug")
    titles = [f"{colour} {thing} | {brand}" for brand in brands for thing in things for colour in colours]
    return (titles * (count // len(titles) + 1))[:count]
