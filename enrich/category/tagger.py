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
from typing import Iterable

import numpy as np
import torch
from scipy.special import expit, softmax
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from enrich.backends import Batch, CompiledModel, cached_model, convert_output, installed_version
from enrich.catalog.paths import PATH_SEPARATOR, path_levels
from enrich.embed import candidate_paths, padded_batches
from enrich.errors import ArtifactError, ConfigError
from enrich.files import check_files, file_digests, write_json
from enrich.precision import DTYPES, Measured, cached_choice, measure, named_backend, named_precision, resolve_device, workload

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
        self.dtype = dtype  # the precision of predictions (torch: autocast); the weights stay fp32
        short = {value: name for name, value in DTYPES.items()}[dtype]
        self.precision = Measured(f"torch {short}", "asked for")
        self._runners: dict[str, object] = {}
        self._run = self._runner(self.precision.chosen)
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
    def load(cls, folder: str | Path, device: str = "auto", precision: str = "auto", backend: str = "auto") -> "Tagger":
        """`precision`: fp32, bf16 or fp16 (torch: autocast, the weights stay fp32); `backend`: torch or OpenVINO. On
        a CPU, auto is measured: the path that predicts a fixed workload fastest and names the same path as torch fp32
        for 99% of it. On a GPU auto is torch fp32: fp16 autocast measured slower there for a model this small
        (docs/benchmarks.md)."""
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
        if device != "cpu" and named_precision(precision, has_int8=False) == "auto":
            paths, reason = ["torch fp32"], "the GPU's default"
        else:
            paths, reason = candidate_paths(named_backend(backend), named_precision(precision, has_int8=False), device)
        if "openvino int8" in paths:
            raise ConfigError("the tagger has no int8 path (int8 is calibrated for the encoder only): fp32 or bf16")
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).to(device)
        tagger = cls(model, AutoTokenizer.from_pretrained(folder, local_files_only=True), info, device, folder=folder)
        if len(paths) > 1:
            tagger._choose(paths)
        else:
            tagger._use(paths[0], Measured(paths[0], reason))
        return tagger

    def _choose(self, paths: list[str]) -> None:
        key, texts = self.info["files"]["model.safetensors"]["sha256"], workload()
        measured = cached_choice("tagger", key, paths)
        if measured is None:
            for path in paths:  # converted and compiled before the clock starts
                self._runner(path)
            same_paths = lambda ref, got: float(np.mean(ref[:, : len(self.labels)].argmax(1) == got[:, : len(self.labels)].argmax(1))) >= 0.99
            measured = measure("tagger", key, {path: (lambda path=path: self.logits_with(path, texts)) for path in paths},
                               len(texts), same_paths)
        self._use(measured.chosen, measured)

    def _use(self, path: str, measured: Measured) -> None:
        self.precision, self.dtype = measured, DTYPES[path.split()[1]]
        self._run = self._runner(path)
        self._runners = {path: self._run}

    def _runner(self, path: str):
        if path not in self._runners:
            backend, precision = path.split()
            if backend == "torch":
                self._runners[path] = torch_logits(self.model, self.device, DTYPES[precision])
            else:
                digest = self.info["files"]["model.safetensors"]["sha256"][:16]
                graph = cached_model(f"tagger-{digest}-openvino{installed_version('openvino')}",
                                     lambda: convert_output(self.model, "logits"))
                compiled = CompiledModel(graph, precision, torch.get_num_threads())
                self._runners[path] = lambda batches, deliver: compiled.run(
                    batches, lambda positions, logits, inputs: deliver(positions, logits.astype(np.float32)))
        return self._runners[path]

    def logits_with(self, path: str, texts: list[str]) -> np.ndarray:
        """`texts`' logits on another path than the chosen one (for measuring and checking)."""
        chosen, self._run = self._run, self._runner(path)
        try:
            return self.logits(texts)
        finally:
            self._run = chosen

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        self.info = {**self.info, "files": file_digests(folder, skip=(TAGGER_FILE,))}
        write_json(folder / TAGGER_FILE, self.info)  # last: a folder without it is not a tagger yet

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.model.config.num_labels), np.float32)
        if not texts:
            return out
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

        def deliver(positions: np.ndarray, logits: np.ndarray) -> None:
            out[positions] = logits

        self._run(padded_batches(self.tokenizer, ids, batch_size), deliver)
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


def torch_logits(model, device: str, dtype: torch.dtype):
    """Batches through the torch classifier, under autocast in `dtype` (the weights stay as trained)."""

    @torch.inference_mode()
    def run(batches: Iterable[Batch], deliver) -> None:
        for positions, inputs in batches:
            batch = {name: torch.from_numpy(values).to(device) for name, values in inputs.items()}
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
                deliver(positions, model(**batch).logits.float().cpu().numpy())

    return run
