"""Fine-tune the tagger on a catalog with known category paths, with accelerate.

Runs on the CPU here, on a GPU with mixed precision, and on several GPUs with `accelerate launch -m enrich
finetune CATALOG --out DIR`; `batch_size` is the batch of one optimizer step however many processes share it,
so the same settings train the same schedule on one GPU or eight. The model is all-MiniLM-L6-v2 (a BERT) with a
new head over the full paths seen in training. The long tail is handled on purpose:
- every level of the hierarchy is trained: besides the leaf cross-entropy, each level's probability (the
  sum of its leaves') gets its own loss, so rare leaves still teach their parents;
- rare leaves are up-weighted (weight ~ count^-class_weight_power);
- scores are calibrated by temperature scaling on the validation split, and the calibration error is saved.
Where the catalog has its own tag lists (a `tags` column: "metal; ages 3+"), the same head also learns each tag
seen at least `tag_min_count` times as a yes/no output (sigmoid, binary cross-entropy), after the paths; one
threshold for them all is chosen on the validation split (the micro F1's best) unless `tag_threshold` is given.
Seeded; early stopping on the validation score (path accuracy, averaged with the tags' micro average precision
where there are tags); a checkpoint after every epoch that a killed run resumes from.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from datasets import Dataset
from scipy.special import expit, softmax
from sklearn.metrics import average_precision_score
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

from enrich.catalog import Columns, listing_texts, load_catalog
from enrich.catalog.decisions import apply_decisions, read_decisions
from enrich.category.calibration import expected_calibration_error, fit_temperature
from enrich.category.catalog_tags import best_tag_threshold, tag_counts, tag_metrics
from enrich.category.tagger import TAG_PREFIX, Hierarchy, Tagger
from enrich.embed import model_fingerprint, packaged_model_path
from enrich.errors import ConfigError, InputError
from enrich.precision import Measured, measure, workload
from enrich.settings import FinetuneConfig

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
NO_CATEGORY = -100  # the label of a training listing that has tags but no category


def training_data(catalog: str | Path, columns: Columns, config: FinetuneConfig,
                  decisions: str | Path | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Usable rows with a known category or tags of their own (those without a category teach the tags only),
    split into train and validation (seeded). `decisions` (`enrich review export`) relabel the listings they name and
    add the reviewed ones; in the training split each decided listing counts `decision_weight` times."""
    frame = load_catalog(catalog, columns, reference=False)
    decided = read_decisions(decisions) if decisions is not None else None
    if decided is not None:
        frame, _ = apply_decisions(frame, decided)
    frame = frame.filter((pl.col("status") == "ok") & (pl.col("category").is_not_null() | (pl.col("tags").list.len() > 0)))
    if (with_category := frame["category"].count()) < 10:
        raise InputError(f"{catalog}: only {with_category} usable rows with a category; fine-tuning needs more")
    frame = frame.with_columns(pl.Series("text", listing_texts(frame)))
    order = np.random.default_rng(config.seed).permutation(frame.height)
    n_val = max(1, int(config.validation_share * frame.height))
    train, validation = frame[np.sort(order[n_val:])], frame[np.sort(order[:n_val])]
    if decided is not None and config.decision_weight > 1:
        gold = train.filter(pl.col("id").is_in(decided["id"].implode()))
        train = pl.concat([train, *[gold] * (config.decision_weight - 1)])
    return train, validation


def mixed_precision(setting: str, base: str, tokenizer, num_labels: int, max_length: int) -> Measured:
    """The mixed precision to train in: as set, bf16 on a GPU, or on a CPU the faster of none and bf16 at a training
    step (forward and backward) on a fixed batch, where its loss is finite."""
    if setting != "auto":
        return Measured(setting, "asked for")
    if torch.cuda.is_available():
        return Measured("bf16", "the GPU's default")
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=num_labels, local_files_only=True)
    batch = tokenizer(workload(32), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    labels = torch.zeros(32, dtype=torch.long)

    def step(enabled: bool):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                logits = model(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            loss.backward()
            model.zero_grad()
            return float(loss)
        return run

    return measure("finetune", f"{model_fingerprint(base)}|{num_labels}|{max_length}", {"no": step(False), "bf16": step(True)},
                   32, lambda reference, loss: np.isfinite(loss))


class HierarchicalLoss(torch.nn.Module):
    """Weighted leaf cross-entropy plus, for each parent level, the NLL of the summed leaf probabilities."""

    def __init__(self, hierarchy: Hierarchy, leaf_weights: np.ndarray, level_weight: float):
        super().__init__()
        self.register_buffer("leaf_weights", torch.tensor(leaf_weights, dtype=torch.float32))
        self.matrices = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.tensor(hierarchy.level_matrix(d)), requires_grad=False)
             for d in range(1, hierarchy.depth)])
        self.targets = [torch.tensor(m) for m in hierarchy.membership[: hierarchy.depth - 1]]
        self.level_weight = level_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`labels`: NO_CATEGORY for a listing that only teaches tags; such rows add nothing here."""
        labelled = labels != NO_CATEGORY
        logits, labels = logits[labelled].float(), labels[labelled]
        if not len(labels):
            return logits.sum() * 0.0  # a batch of tags-only listings: no path loss, and no NaN from an empty mean
        loss = torch.nn.functional.cross_entropy(logits, labels, weight=self.leaf_weights)
        if self.level_weight and len(self.matrices):
            probabilities = logits.softmax(-1)
            for matrix, targets in zip(self.matrices, self.targets):
                level_targets = targets.to(labels.device)[labels]
                keep = level_targets >= 0
                if keep.any():
                    level_log = torch.log((probabilities @ matrix).clamp_min(1e-9))
                    loss = loss + self.level_weight * torch.nn.functional.nll_loss(level_log[keep], level_targets[keep])
        return loss


def calibration_error(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """ECE of the most probable label's probability."""
    return expected_calibration_error(probabilities.max(1), probabilities.argmax(1) == labels)


@dataclass
class Targets:
    """What the head learns: the category paths (with their hierarchy and leaf weights) and the catalog's tags."""

    labels: list[str]
    hierarchy: Hierarchy
    leaf_weights: np.ndarray
    label_counts: dict[str, int]
    tag_counts: dict[str, int]  # learned tags, most frequent first

    @classmethod
    def of(cls, train: pl.DataFrame, validation: pl.DataFrame, config: FinetuneConfig) -> "Targets":
        labels = sorted((set(train["category"].to_list()) | set(validation["category"].to_list())) - {None})
        counts = train["category"].value_counts()
        count_of = dict(zip(counts["category"].to_list(), counts["count"].to_list()))
        weights = np.array([max(count_of.get(label, 0), 1) ** -config.class_weight_power for label in labels])
        weights = weights / (weights * np.array([count_of.get(l, 0) for l in labels])).sum() * train["category"].count()
        return cls(labels, Hierarchy(labels), weights, {label: int(count_of.get(label, 0)) for label in labels},
                   tag_counts(train["tags"], config.tag_min_count))

    @property
    def tag_labels(self) -> list[str]:
        return sorted(self.tag_counts)

    @property
    def outputs(self) -> list[str]:
        """The head's outputs: the paths' logits (softmax), then one logit per tag (sigmoid), so the model stays a
        plain BertForSequenceClassification that transformers loads as it is."""
        return self.labels + [TAG_PREFIX + tag for tag in self.tag_labels]

    def dataset(self, frame: pl.DataFrame, tokenizer, max_length: int) -> Dataset:
        label_id = {label: i for i, label in enumerate(self.labels)}
        data = Dataset.from_polars(frame.select("text", pl.col("category").replace_strict(label_id, default=None, return_dtype=pl.Int64)
                                                .fill_null(NO_CATEGORY).alias("labels")))
        if self.tag_counts:
            tag_id = {tag.lower(): i for i, tag in enumerate(self.tag_labels)}  # tags match whatever their case
            targets = np.zeros((frame.height, len(tag_id)), np.float32)
            for row, tags in enumerate(frame["tags"].to_list()):
                targets[row, [tag_id[t.lower()] for t in tags or [] if t.lower() in tag_id]] = 1.0
            data = data.add_column("tag_targets", targets.tolist())
        return data.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
                        batched=True, remove_columns=["text"])


def finetune(catalog: str | Path, out_dir: str | Path, columns: Columns = Columns(), config: FinetuneConfig = FinetuneConfig(),
             progress: bool = True, epochs_this_run: int | None = None, decisions: str | Path | None = None) -> dict:
    """Train, keeping the best epoch; resumes from out_dir's last checkpoint when one is there.

    `epochs_this_run` stops after that many epochs with the checkpoint written (as a kill would, but
    cleanly), for time-sliced jobs; a later call resumes.
    """
    started = time.perf_counter()
    train, validation = training_data(catalog, columns, config, decisions)
    # The validation split's ids: an index calibrates its acceptance policy on them, which the tagger never learned from.
    provenance = {"source": str(catalog), "columns": asdict(columns), "validation_ids": validation["id"].to_list(),
                  "decisions": str(decisions) if decisions else None}
    training = Training(Path(out_dir), Targets.of(train, validation, config), train, validation, config, progress, provenance)
    first_epoch = training.state["epoch"] + 1
    for epoch in range(first_epoch, config.epochs + 1):
        if epoch - training.state["best_epoch"] > config.patience:
            break
        if epochs_this_run is not None and epoch - first_epoch >= epochs_this_run:
            return {"stopped_after_epoch": training.state["epoch"], **training.state}
        training.epoch(epoch)
    return training.finish(started)


class Training:
    """One fine-tuning run: the model, its optimizer and schedule under accelerate, and the state a resumed run reads."""

    def __init__(self, out_dir: Path, targets: Targets, train: pl.DataFrame, validation: pl.DataFrame,
                 config: FinetuneConfig, progress: bool, provenance: dict):
        self.out_dir, self.targets, self.config, self.progress = out_dir, targets, config, progress
        self.provenance = provenance  # the catalog and columns it was trained on, for tagger.json
        self.train_rows, self.checkpoints = train.height, out_dir / CHECKPOINTS
        base = config.base_model or packaged_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        self.precision = mixed_precision(config.mixed_precision, base, self.tokenizer, len(targets.outputs), config.max_length)
        # split_batches: each process takes its share of one batch, so the number of optimizer steps, and with it the
        # learning-rate schedule, does not depend on how many processes there are.
        self.accelerator = Accelerator(mixed_precision=self.precision.chosen, cpu=not torch.cuda.is_available(),
                                       dataloader_config=DataLoaderConfiguration(split_batches=True))
        processes = self.accelerator.num_processes
        if config.batch_size % processes:
            raise ConfigError(f"--batch-size {config.batch_size} cannot be split across {processes} processes: "
                              f"use a multiple of {processes}")
        set_seed(config.seed)
        outputs = targets.outputs
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=len(outputs), id2label=dict(enumerate(outputs)), label2id={o: i for i, o in enumerate(outputs)},
            local_files_only=True)
        self.train_data = targets.dataset(train, self.tokenizer, config.max_length)
        validation_data = targets.dataset(validation, self.tokenizer, config.max_length)
        self.collate = DataCollatorWithPadding(self.tokenizer)
        steps_per_epoch = -(-len(self.train_data) // config.batch_size)
        head = [p for name, p in model.named_parameters() if name.startswith("classifier.")]
        body = [p for name, p in model.named_parameters() if not name.startswith("classifier.")]
        optimizer = torch.optim.AdamW([{"params": body, "lr": config.learning_rate}, {"params": head, "lr": config.head_learning_rate}],
                                      weight_decay=config.weight_decay)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(config.warmup_ratio * steps_per_epoch * config.epochs),
                                  num_training_steps=steps_per_epoch * config.epochs)
        self.path_loss = HierarchicalLoss(targets.hierarchy, targets.leaf_weights, config.level_loss_weight)
        validation_loader = torch.utils.data.DataLoader(validation_data, batch_size=64 * processes, collate_fn=self.collate)
        self.model, self.optimizer, self.scheduler, self.validation_loader = self.accelerator.prepare(
            model, optimizer, scheduler, validation_loader)
        self.path_loss.to(self.accelerator.device)
        self.state = self._resumed_state()

    def _resumed_state(self) -> dict:
        state = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "optimizer_steps": 0, "history": [], "config": asdict(self.config)}
        if not (self.checkpoints / STATE_FILE).exists():
            return state
        saved = json.loads((self.checkpoints / STATE_FILE).read_text())
        now = asdict(self.config)
        if changed := [f"{name} {saved['config'].get(name)} there, {now[name]} here"
                       for name in now if saved["config"].get(name, object()) != now[name]]:
            raise ConfigError(f"{self.checkpoints} holds a run with another config ({'; '.join(changed)});"
                              " run with those settings to resume it, or remove it or use another --out")
        self.accelerator.load_state(str(self.checkpoints / "last"))
        if self.progress:
            self.accelerator.print(f"resuming after epoch {saved['epoch']}")
        return saved

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, tag_targets: torch.Tensor | None) -> torch.Tensor:
        n_paths = len(self.targets.labels)
        loss = self.path_loss(logits[:, :n_paths], labels)
        if tag_targets is not None:
            loss = loss + self.config.tag_loss_weight * torch.nn.functional.binary_cross_entropy_with_logits(
                logits[:, n_paths:].float(), tag_targets.float())
        return loss

    def epoch(self, epoch: int) -> None:
        """Train one epoch, score it on the validation split, keep it if best, checkpoint."""
        config, accelerator, state = self.config, self.accelerator, self.state
        # The epoch's order depends only on seed and epoch, so a resumed run sees the same batches.
        order = np.random.default_rng([config.seed, epoch]).permutation(len(self.train_data)).tolist()
        loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(
            self.train_data.select(order), batch_size=config.batch_size, collate_fn=self.collate))
        self.model.train()
        total = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not self.progress or not accelerator.is_main_process,
                   unit="batch", leave=False)
        for batch in bar:
            labels, tag_targets = batch.pop("labels"), batch.pop("tag_targets", None)
            with accelerator.autocast():
                logits = self.model(**batch).logits
            loss = self.loss(logits, labels, tag_targets)
            accelerator.backward(loss)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            state["optimizer_steps"] += 1
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        scores = validation_scores(*_predict(self.model, self.validation_loader, accelerator), len(self.targets.labels))
        state["history"].append({"epoch": epoch, "train_loss": total / max(len(loader), 1), **scores})
        if self.progress:
            accelerator.print(f"epoch {epoch}: train loss {total / max(len(loader), 1):.4f}, "
                              + ", ".join(f"{name.replace('_', ' ')} {value:.4f}" for name, value in scores.items()))
        if scores["validation_score"] > state["best_score"]:
            state["best_score"], state["best_epoch"] = scores["validation_score"], epoch
            if accelerator.is_main_process:
                accelerator.unwrap_model(self.model).save_pretrained(self.checkpoints / "best", safe_serialization=True)
        state["epoch"] = epoch
        accelerator.save_state(str(self.checkpoints / "last"))
        if accelerator.is_main_process:
            (self.checkpoints / STATE_FILE).write_text(json.dumps(state, indent=1))
        accelerator.wait_for_everyone()

    def finish(self, started: float) -> dict:
        """Score the best epoch, calibrate it, choose the tags' threshold and write the tagger.

        Every process scores the best epoch on its shard of the validation split (the gather needs them all); the
        main process writes the tagger. `best` stays, so running again on a finished folder writes it again."""
        accelerator, config, n_paths = self.accelerator, self.config, len(self.targets.labels)
        accelerator.wait_for_everyone()
        best = AutoModelForSequenceClassification.from_pretrained(self.checkpoints / "best").to(accelerator.device)
        val_logits, val_labels, val_tags = _predict(best, self.validation_loader, accelerator)
        val_tag_logits = val_logits[:, n_paths:]
        accuracy = validation_scores(val_logits, val_labels, None, n_paths)["validation_accuracy"]
        labelled = val_labels != NO_CATEGORY  # paths are calibrated on the listings that have one
        val_logits, val_labels = val_logits[labelled, :n_paths], val_labels[labelled]
        temperature = fit_temperature(val_logits, val_labels)
        metrics = {
            "validation_accuracy": accuracy,
            "validation_rows": len(val_labels),
            "calibration_error_before": calibration_error(softmax(val_logits, axis=1), val_labels),
            "calibration_error_after": calibration_error(softmax(val_logits / temperature, axis=1), val_labels),
            "temperature": temperature,
            "best_epoch": self.state["best_epoch"],
            "epochs_run": self.state["epoch"],
            "optimizer_steps": self.state["optimizer_steps"],
            "processes": accelerator.num_processes,
            "mixed_precision": asdict(self.precision),
            "train_rows": self.train_rows,
            "seconds": round(time.perf_counter() - started, 1),
            "history": self.state["history"],
        }
        tag_threshold = config.tag_threshold
        if self.targets.tag_counts:
            tag_threshold = best_tag_threshold(expit(val_tag_logits), val_tags) if tag_threshold is None else tag_threshold
            metrics["tags"] = {**tag_metrics(val_tag_logits, val_tags, tag_threshold), "threshold": tag_threshold,
                               "chosen_on_validation": config.tag_threshold is None,
                               "at_0.5": tag_metrics(val_tag_logits, val_tags, 0.5)}
        info = {"config": asdict(config), "base_model": "all-MiniLM-L6-v2" if config.base_model is None else config.base_model,
                "temperature": temperature, "metrics": metrics, "label_counts": self.targets.label_counts,
                "tag_labels": self.targets.tag_labels, "tag_threshold": tag_threshold, "tag_counts": self.targets.tag_counts,
                "mixed_precision": accelerator.mixed_precision, "mixed_precision_choice": asdict(self.precision),
                **self.provenance}
        if accelerator.is_main_process:
            Tagger(best.cpu(), self.tokenizer, info).save(self.out_dir)
        accelerator.wait_for_everyone()
        return metrics


def validation_scores(logits: np.ndarray, labels: np.ndarray, tag_targets: np.ndarray | None, n_paths: int) -> dict:
    """Path accuracy and, with tags, their micro average precision (threshold-free); `validation_score`, what early
    stopping follows, is the accuracy, or the mean of both so that the kept epoch is good at tags too."""
    labelled = labels != NO_CATEGORY
    right = logits[labelled, :n_paths].argmax(1) == labels[labelled]
    scores = {"validation_accuracy": float(right.mean()) if len(right) else 0.0}
    if tag_targets is not None and tag_targets.any():
        scores["validation_tag_average_precision"] = float(average_precision_score(
            tag_targets.ravel() > 0, logits[:, n_paths:].ravel()))
    return {**scores, "validation_score": float(np.mean(list(scores.values())))}


@torch.inference_mode()
def _predict(model, loader, accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Logits, path labels and tag targets (None without tags), gathered from every process."""
    model.eval()
    logits, labels, tags = [], [], []
    for batch in loader:
        target, tag_targets = batch.pop("labels"), batch.pop("tag_targets", None)
        with accelerator.autocast():
            out = model(**batch).logits.float()
        out, target = accelerator.gather_for_metrics((out, target))
        logits.append(out.cpu().numpy())
        labels.append(target.cpu().numpy())
        if tag_targets is not None:
            tags.append(accelerator.gather_for_metrics(tag_targets).cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(tags) if tags else None
