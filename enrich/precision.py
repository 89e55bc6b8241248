"""Where models run and in which precision.

On a GPU, the encoder runs in fp16 and the rest as before. On a CPU, "auto" is decided by the clock, not by the
CPU's flags: the first time a model is used on a machine, a short fixed workload runs in each candidate (a backend,
torch or OpenVINO, and a precision), and the fastest one that agrees with fp32 is kept (a CPU that reports bf16
units can still run bf16 slower than fp32). The choice is cached per machine and model in `precision.json` beside
the other caches, under a key made of what decides speed (`machine_key`: the CPU's model and instruction sets, its
cores, the threads, the libraries' versions), so a changed machine measures again; it is recorded, with the
measurements behind it, in every manifest. A named precision (a flag, the config, or ENRICH_PRECISION) is used as
it is.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from enrich.environment import cache_dir, variable
from enrich.errors import ConfigError
from enrich.files import write_json

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = (*DTYPES, "int8")  # int8: OpenVINO only, calibrated on an index's reference listings
BACKENDS = ("torch", "openvino")
ENVIRONMENT = "ENRICH_PRECISION"
BACKEND_ENVIRONMENT = "ENRICH_BACKEND"
# The instruction sets that decide which precision and backend are fast: bf16 and int8 dot products, AMX tiles.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
               "amx_int8")
SPEED_LIBRARIES = ("torch", "transformers", "openvino", "nncf")


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


def speed_flags() -> list[str]:
    flags = cpu_flags()
    return [flag for flag in SPEED_FLAGS if flag in flags]


def library_versions() -> str:
    """The versions of the libraries that run the models ("-" for one not installed), read without importing them."""
    found = []
    for package in SPEED_LIBRARIES:
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} -")
    return ", ".join(found)


def machine_key() -> str:
    """What decides which candidate is fastest here: two CPUs of one model name can differ in AVX-512 BF16 or VNNI
    (and run bf16 seven times slower without it), and a new library version brings new kernels."""
    return (f"{cpu_model()}|{' '.join(speed_flags()) or 'no avx2'}|{os.cpu_count()} cores|"
            f"{torch.get_num_threads()} threads|{library_versions()}")


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def named_precision(precision: str, has_int8: bool = True) -> str:
    """The precision asked for: the setting, unless it is "auto" and ENRICH_PRECISION names one. ENRICH_PRECISION=int8
    names the encoder's path: a model without one (`has_int8` False) goes on choosing its own."""
    if precision == "auto":
        precision = variable(ENVIRONMENT) or "auto"
        if precision == "int8" and not has_int8:
            return "auto"
    if precision != "auto" and precision not in PRECISIONS:
        raise ConfigError(f"precision must be auto, {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def named_backend(backend: str) -> str:
    """The backend asked for: the setting, unless it is "auto" and ENRICH_BACKEND names one."""
    if backend == "auto":
        backend = variable(BACKEND_ENVIRONMENT) or "auto"
    if backend != "auto" and backend not in BACKENDS:
        raise ConfigError(f"backend must be auto, {' or '.join(BACKENDS)}, not {backend!r}")
    return backend


def resolve_dtype(precision: str, device: str) -> torch.dtype:
    """A named precision as a dtype; "auto" before measuring: fp16 on CUDA, else fp32 (see `Measured`)."""
    precision = named_precision(precision)
    if precision == "int8":
        raise ConfigError("precision int8 runs in OpenVINO only (backend openvino or auto), for the encoder")
    if precision in DTYPES:
        return DTYPES[precision]
    return torch.float16 if device.startswith("cuda") else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class Measured:
    """A choice of precision (and backend: "openvino int8") and what it rests on."""

    chosen: str
    reason: str  # "measured", "cached" (measured before on this machine), "asked for", "no other candidate here"
    per_s: dict[str, float] = field(default_factory=dict)  # items per second in each candidate
    agrees: dict[str, bool] = field(default_factory=dict)  # whether each candidate agreed with fp32
    figures: dict[str, dict] = field(default_factory=dict)  # agreement figures behind a verdict, where kept


def choose(per_s: dict[str, float], agrees: dict[str, bool], baseline: str = "fp32") -> str:
    """The fastest candidate that agrees with the baseline (the baseline agrees with itself)."""
    usable = {name: rate for name, rate in per_s.items() if name == baseline or agrees.get(name, False)}
    return max(usable, key=usable.get)


def cache_file() -> Path:
    return cache_dir() / "precision.json"


def _known() -> dict:
    try:
        known = json.loads(cache_file().read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return known if isinstance(known, dict) else {}


def cached_choice(stage: str, model_key: str, candidates) -> Measured | None:
    """The choice measured before on this machine among these very candidates (a new candidate, such as OpenVINO
    installed since, is measured again), or None."""
    cached = _known().get(f"{stage}|{model_key}|{machine_key()}")
    if not isinstance(cached, dict) or set(cached.get("per_s") or {}) != set(candidates) or cached.get("chosen") not in candidates:
        return None
    try:
        return Measured(**{**cached, "reason": "cached"})
    except TypeError:  # written by another version of enrich
        return None


def measured_here(stage: str, model_prefix: str) -> list[Measured]:
    """Every choice measured on this machine for `stage` and a model key that starts with `model_prefix`."""
    machine, found = machine_key(), []
    for key, value in _known().items():
        if key.startswith(f"{stage}|{model_prefix}") and key.endswith(f"|{machine}"):
            try:
                found.append(Measured(**value))
            except TypeError:  # written by another version of enrich
                continue
    return found


def measure(stage: str, model_key: str, candidates: dict[str, Callable[[], object]], items: int,
            agree: Callable[[object, object], bool], repeats: int = 2,
            agree_with: dict[str, Callable[[object, object], bool]] | None = None,
            figures: dict[str, dict] | None = None) -> Measured:
    """Run each candidate's workload once to warm up, then `repeats` times in turn, the best kept (a candidate at
    under half the fastest one's rate is not run again), keep the fastest that agrees with the first candidate (full
    precision), and cache the choice for this machine and model. A cached choice is used without measuring.
    `agree_with`: a candidate's own agreement check, instead of `agree`; `figures`: what is known of agreement beside."""
    cached = cached_choice(stage, model_key, candidates)
    if cached is not None:
        return cached
    if len(candidates) == 1:
        return Measured(next(iter(candidates)), "no other candidate here")
    outputs, seconds = {}, {}
    for name, run in candidates.items():  # a first run builds the kernels for every shape; timed all the same
        started = time.perf_counter()
        outputs[name] = run()
        seconds[name] = [time.perf_counter() - started]
    for _ in range(repeats):
        fastest = min(min(s) for s in seconds.values())
        for name, run in candidates.items():
            if min(seconds[name]) <= 2 * fastest:
                seconds[name].append(_seconds(run))
    per_s = {name: round(items / min(s), 1) for name, s in seconds.items()}
    baseline = next(iter(candidates))
    checks = {name: (agree_with or {}).get(name, agree) for name in candidates}
    agrees = {name: bool(checks[name](outputs[baseline], out)) for name, out in outputs.items()}
    measured = Measured(choose(per_s, agrees, baseline), "measured", per_s, agrees, figures or {})
    _remember(cache_file(), f"{stage}|{model_key}|{machine_key()}", measured)
    return measured


def _seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _remember(path: Path, key: str, measured: Measured) -> None:
    try:
        write_json(path, {**_known(), key: asdict(measured)})
    except (OSError, ValueError):  # a read-only home: measured again next time, nothing worse
        pass


def neighbours_kept(reference: np.ndarray, got: np.ndarray, k: int = 10) -> float:
    """The share of each text's `k` nearest others (by `reference`) that `got` keeps among its own `k` nearest."""
    k = min(k, len(reference) - 1)
    if k < 1:
        return 1.0

    def nearest(vectors: np.ndarray) -> np.ndarray:
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argpartition(-similarity, k - 1, axis=1)[:, :k]

    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(nearest(reference), nearest(got))]))


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
