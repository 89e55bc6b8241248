"""The fine-tuned tag classifier: load, save, predict.

A BertForSequenceClassification over full category paths (the leaves seen in training). Every level of
the hierarchy is read off the same distribution, a prefix's probability being the sum of its leaves', so
the predicted levels are always consistent with each other. Scores are temperature-calibrated.
A tagger trained on a catalog with its own tag lists has, after the paths, one yes/no output per tag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit, softmax
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from enrich.catalog.paths import PATH_SEPARATOR, path_levels
from enrich.embed import same_length_batches
from enrich.errors import ArtifactError
from enrich.files import check_files, file_digests, write_json
from enrich.precision import DTYPES, Measured, dtype_name, measure, named_precision, resolve_device, resolve_dtype, workload

TAGGER_FILE = "tagger.json"
TAG_PREFIX = "tag: "  # how a catalog tag's output is named in the model's id2label, after the paths


@dataclass(frozen=True)
class PathLevel:
    """One level of a predicted path: its full prefix, depth (1 = top level) and probability."""

    path: str
    level: int
    score: float

    @property
    def name(self) -> str:
        return path_levels(self.path)[-1]


class Hierarchy:
    """The leaves (full paths) and, per depth, which prefix each leaf falls under."""

    def __init__(self, leaves: list[str]):
        self.leaves = list(leaves)
        self.depth = max((len(path_levels(p)) for p in leaves), default=0)
        self.prefixes: list[list[str]] = []
        self.prefix_index: list[dict[str, int]] = []
        self.membership: list[np.ndarray] = []  # per depth: (leaves,) index of the leaf's prefix, -1 if shallower
        for d in range(1, self.depth + 1):
            names = sorted({PATH_SEPARATOR.join(path_levels(p)[:d]) for p in leaves if len(path_levels(p)) >= d})
            where = {name: i for i, name in enumerate(names)}
            self.prefixes.append(names)
            self.prefix_index.append(where)
            self.membership.append(np.array(
                [where.get(PATH_SEPARATOR.join(path_levels(p)[:d]), -1) if len(path_levels(p)) >= d else -1 for p in leaves]))

    def level_matrix(self, depth: int) -> np.ndarray:
        """(leaves, prefixes at depth) 0/1 matrix: leaf probabilities @ it = prefix probabilities."""
        member = self.membership[depth - 1]
        matrix = np.zeros((len(self.leaves), len(self.prefixes[depth - 1])), np.float32)
        rows = np.flatnonzero(member >= 0)
        matrix[rows, member[rows]] = 1.0
        return matrix


class Tagger:
    """Predicts category paths with per-level scores for listing texts."""

    def __init__(self, model, tokenizer, info: dict, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 folder: Path | None = None):
        self.folder = folder  # where it was loaded from (an index built with it records it)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.dtype = dtype  # the autocast precision of predictions; the weights stay fp32
        self.tag_labels = list(info["tag_labels"])
        self.tag_threshold = info["tag_threshold"]  # None in a tagger without tags
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels - len(self.tag_labels))]
        self.hierarchy = Hierarchy(self.labels)
        self.temperature = float(info["temperature"])
        self.max_length = int(info["config"]["max_length"])

    @staticmethod
    def check(folder: str | Path) -> None:
        if not (Path(folder) / TAGGER_FILE).exists():
            raise ArtifactError(f"{folder}: not an enrich tagger (no {TAGGER_FILE}); train one with `enrich finetune`")

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto", precision: str = "auto") -> "Tagger":
        """`precision`: fp32, bf16 or fp16 autocast (the weights stay fp32). On a CPU, auto is measured: bf16 where it
        predicts a fixed workload faster and names the same path for 99% of it. On a GPU auto is fp32: fp16 autocast
        measured slower there for a model this small (docs/benchmarks.md)."""
        folder = Path(folder)
        cls.check(folder)
        try:
            info = json.loads((folder / TAGGER_FILE).read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{folder / TAGGER_FILE}: not valid JSON ({e}); the tagger is damaged: train it again") from None
        if "files" not in info:
            raise ArtifactError(f"{folder / TAGGER_FILE} does not list the tagger's files: it was not written by this enrich;"
                                " train it again with `enrich finetune`")
        check_files(folder, info["files"], "`enrich finetune`")
        device = resolve_device(device)
        dtype = torch.float32 if named_precision(precision) == "auto" else resolve_dtype(precision, device)
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).to(device)
        tagger = cls(model, AutoTokenizer.from_pretrained(folder, local_files_only=True), info, device, dtype, folder)
        tagger.precision = Measured(dtype_name(dtype), "asked for" if named_precision(precision) != "auto" else "the GPU's default")
        if named_precision(precision) == "auto" and device == "cpu":
            tagger._choose_precision()
        return tagger

    def _choose_precision(self) -> None:
        texts = workload()

        def run(dtype: torch.dtype):
            def logits():
                self.dtype = dtype
                return self.logits(texts)
            return logits

        same_paths = lambda ref, got: float(np.mean(ref[:, : len(self.labels)].argmax(1) == got[:, : len(self.labels)].argmax(1))) >= 0.99
        self.precision = measure("tagger", self.info["files"]["model.safetensors"]["sha256"],
                                 {"fp32": run(torch.float32), "bf16": run(torch.bfloat16)}, len(texts), same_paths)
        self.dtype = DTYPES[self.precision.chosen]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        self.info = {**self.info, "files": file_digests(folder, skip=(TAGGER_FILE,))}
        write_json(folder / TAGGER_FILE, self.info)  # last: a folder without it is not a tagger yet

    @torch.inference_mode()
    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.model.config.num_labels), np.float32)
        if not texts:
            return out
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        for idx, length in same_length_batches([len(x) for x in ids], batch_size):
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, padding="max_length", max_length=length,
                                       return_tensors="pt").to(self.device)
            with torch.autocast(torch.device(self.device).type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                out[idx] = self.model(**batch).logits.float().cpu().numpy()
        return out

    def probabilities(self, texts: list[str], logits: np.ndarray | None = None) -> np.ndarray:
        """Calibrated leaf probabilities, (texts, labels); from `logits` when the caller has them."""
        logits = self.logits(texts) if logits is None else logits
        return softmax(logits[:, : len(self.labels)] / self.temperature, axis=1)

    def tag_probabilities(self, texts: list[str], logits: np.ndarray | None = None) -> np.ndarray:
        """The catalog's own tags' probabilities, (texts, tag_labels); from `logits` when the caller has them."""
        logits = self.logits(texts) if logits is None else logits
        return expit(logits[:, len(self.labels):].astype(np.float64))

    def catalog_tags(self, texts: list[str], logits: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
        """Per text, the catalog's own tags whose probability reaches the threshold, most probable first."""
        probabilities = self.tag_probabilities(texts, logits)
        return [[(self.tag_labels[j], float(row[j])) for j in np.argsort(-row, kind="stable") if row[j] >= self.tag_threshold]
                for row in probabilities]

    def predict(self, texts: list[str]) -> list[list[PathLevel]]:
        """Per text, the most probable path's levels, top level first, each scored by the summed probability of
        the paths under it."""
        leaf_probabilities = self.probabilities(texts)
        hierarchy = self.hierarchy
        level_scores = [leaf_probabilities @ hierarchy.level_matrix(d) for d in range(1, hierarchy.depth + 1)]
        result = []
        for i, best in enumerate(leaf_probabilities.argmax(1)):
            levels = path_levels(self.labels[best])
            result.append([PathLevel(prefix, d, float(level_scores[d - 1][i, hierarchy.prefix_index[d - 1][prefix]]))
                           for d, prefix in ((d, PATH_SEPARATOR.join(levels[:d])) for d in range(1, len(levels) + 1))])
        return result
