"""OpenVINO as a second backend beside torch: the same packaged weights converted in-process (nothing downloaded),
kept as IR in the cache folder, run on the CPU by a queue of infer requests.

Where OpenVINO cannot be imported, `openvino_available()` is False and the models run in torch as before. int8 models
are made by NNCF's static quantization, calibrated on texts the caller gives (an index's own reference titles) and
cached under a digest of those texts and the recipe (see `Int8Recipe`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import json
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from enrich.precision import cache_file

Batch = tuple[np.ndarray, dict[str, np.ndarray]]  # (positions in the caller's list, the model's padded inputs)
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: quantized matmuls, the rest in fp32


@cache
def openvino_available() -> bool:
    """True where `import openvino` works (a CPU wheel for this platform is installed)."""
    try:
        import openvino  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


@cache
def nncf_available() -> bool:
    """True where NNCF, which makes the int8 models, can be imported."""
    try:
        import nncf  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


@cache
def _core():
    import openvino as ov

    return ov.Core()


def cpu_runs_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 kernels here; elsewhere a bf16 hint silently runs fp32, a candidate
    that would only repeat fp32's."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def ir_folder() -> Path:
    """Converted models live beside the precision measurements (`ENRICH_CACHE`)."""
    return cache_file().parent / "openvino"


def cached_model(name: str, make: Callable[[], object]):
    """The OpenVINO model saved as `name`, or made by `make()` and saved first. Saved into a temporary folder that is
    then renamed, so a reader never sees half an IR; an unwritable cache only costs a conversion next time."""
    folder = ir_folder() / name
    if (folder / "model.xml").exists():
        return _core().read_model(str(folder / "model.xml"))
    import openvino as ov

    model = make()
    partial = folder.with_name(f"{folder.name}.partial{os.getpid()}")
    try:
        partial.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(partial / "model.xml"), compress_to_fp16=False)  # fp16 weights would change every vector
        partial.rename(folder)
    except OSError:  # a read-only cache, or another process saved it first
        shutil.rmtree(partial, ignore_errors=True)
    return model


def convert(module, example: dict) -> object:
    """A torch module converted to an OpenVINO model in this process (inputs named as in `example`)."""
    import openvino as ov
    import torch

    # The tracer warns of shapes it takes as constants (the mask's padding, "is causal"): neither varies in a BERT.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ov.convert_model(module.eval(), example_input=example)


def convert_output(model, output: str) -> object:
    """One output of a Hugging Face model (`last_hidden_state`, `logits`) as an OpenVINO model, traced on a small
    batch of `input_ids` and `attention_mask`."""
    import torch

    class Output(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), output)

    example = {name: torch.ones((1, 8), dtype=torch.long) for name in ("input_ids", "attention_mask")}
    return convert(Output(), example)


@dataclass(frozen=True)
class Int8Recipe:
    """How NNCF quantizes a transformer to int8 (what docs/experiments.md measured)."""

    calibration_texts: int = 1000  # reference titles the activations' ranges are collected on
    keep_float: tuple[str, ...] = ()  # regular expressions of node names left in floating point (NNCF's ignored_scope)
    smooth_quant: bool = True  # NNCF's SmoothQuant for MatMuls (part of its transformer preset)
    overflow_fix: bool = False  # 7-bit weights on every layer: CPUs without VNNI can saturate 8-bit sums

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def quantize_int8(model, calibration: list[dict[str, np.ndarray]], recipe: Int8Recipe = Int8Recipe()):
    """NNCF's static int8 quantization of `model`, its activation ranges collected on the `calibration` batches."""
    import nncf
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, AdvancedSmoothQuantParameters,
                                                       OverflowFix)

    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE if recipe.overflow_fix else OverflowFix.FIRST_LAYER,
        smooth_quant_alphas=AdvancedSmoothQuantParameters() if recipe.smooth_quant else AdvancedSmoothQuantParameters(matmul=-1))
    nncf.set_log_level(logging.WARNING)  # not its INFO lines about each node it leaves alone
    scope = nncf.IgnoredScope(patterns=list(recipe.keep_float), validate=False) if recipe.keep_float else None
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars, about half a minute of them
        return nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(calibration), ignored_scope=scope, advanced_parameters=advanced)


class CompiledModel:
    """An OpenVINO model compiled for the CPU, fed padded batches through a queue of infer requests: one per stream,
    each on its own cores, so that two batches run at once (faster than one batch on two threads for a model this
    small). A row's output does not depend on its batch mates nor on which request ran it."""

    def __init__(self, model, precision: str, threads: int):
        self.precision = precision
        self.compiled = _core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision], "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_NUM_THREADS": threads})
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def run(self, batches: Iterable[Batch], deliver: Callable[[np.ndarray, np.ndarray, dict], None]) -> None:
        """`deliver(positions, first output, inputs)` for every batch, in the order they finish."""
        import openvino as ov

        queue = ov.AsyncInferQueue(self.compiled, self.requests)
        failures: list[BaseException] = []

        def done(request, batch: Batch) -> None:
            try:
                deliver(batch[0], request.get_output_tensor(0).data, batch[1])
            except BaseException as e:  # raised in OpenVINO's thread: kept and raised in the caller's
                failures.append(e)

        queue.set_callback(done)
        for batch in batches:
            queue.start_async(batch[1], batch)
            if failures:
                break
        queue.wait_all()
        if failures:
            raise failures[0]
