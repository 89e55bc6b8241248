"""Fine-tune the tag classifier on a catalog with known category paths, with accelerate.

Runs on the CPU here, on a GPU with mixed precision, and on several GPUs with `accelerate launch -m
enrich.finetune CATALOG --out DIR`; `batch_size` is the batch of one optimizer step however many processes
share it, so the same settings train the same schedule on one GPU or eight. The model is all-MiniLM-L6-v2 (a BERT) with a new head over the full
paths seen in training. The long tail is handled on purpose:
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

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import polars as pl
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from datasets import Dataset
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.metrics import average_precision_score, precision_recall_curve, precision_recall_fscore_support
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

from enrich.catalog import Columns, listing_texts, load_catalog
from enrich.embed import cpu_has_native_bf16, packaged_model_path
from enrich.tagger import TAG_PREFIX, Hierarchy, Tagger, expected_calibration_error, softmax

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Training settings; `make finetune ARGS="--epochs 3"` or `enrich finetune --epochs 3` override them."""

    base_model: str | None = None  # a BERT folder; None: the packaged all-MiniLM-L6-v2
    epochs: int = 8  # upper bound; early stopping may end sooner
    batch_size: int = 32  # listings per optimizer step, split across processes (a multiple of their number)
    learning_rate: float = 2e-4  # peak of the linear warm-up / decay schedule, for the BERT body
    head_learning_rate: float = 3e-3  # the new classification head starts from scratch: a larger step
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # share of steps spent warming up
    max_length: int = 64  # tokens; titles are ~20, descriptions are cut
    level_loss_weight: float = 0.5  # weight of each parent level's loss beside the leaf loss
    class_weight_power: float = 0.5  # leaf weight ~ count^-power: 0 none, 1 inverse frequency (0 was tried: see the README)
    validation_share: float = 0.1  # held out for early stopping and calibration
    patience: int = 2  # epochs without a better validation score before stopping
    min_level_score: float = 0.3  # predicted levels below this score are left off the tags
    tag_min_count: int = 5  # a catalog's own tag is learned when this many training listings carry it
    tag_loss_weight: float = 1.0  # weight of the tags' binary cross-entropy beside the path loss
    tag_threshold: float | None = None  # a tag is predicted when its probability reaches this; None: chosen on validation
    seed: int = 0
    mixed_precision: str = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16, else no


def training_data(catalog: str | Path, columns: Columns, config: FinetuneConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Usable rows with a known category or tags of their own (those without a category teach the tags only),
    split into train and validation (seeded)."""
    frame = load_catalog(catalog, columns, reference=False)
    frame = frame.filter((pl.col("status") == "ok") & (pl.col("category").is_not_null() | (pl.col("tags").list.len() > 0)))
    if (with_category := frame["category"].count()) < 10:
        raise ValueError(f"{catalog}: only {with_category} usable rows with a category; fine-tuning needs more")
    frame = frame.with_columns(pl.Series("text", listing_texts(frame)))
    order = np.random.default_rng(config.seed).permutation(frame.height)
    n_val = max(1, int(config.validation_share * frame.height))
    return frame[np.sort(order[n_val:])], frame[np.sort(order[:n_val])]


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() or cpu_has_native_bf16() else "no"


NO_CATEGORY = -100  # the label of a training listing that has tags but no category


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


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises validation NLL (Guo et al., 2017)."""
    def nll(log_t: float) -> float:
        p = softmax(logits / np.exp(log_t))
        return float(-np.log(p[np.arange(len(labels)), labels] + 1e-12).mean())
    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


def calibration_error(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """ECE of the most probable label's probability."""
    return expected_calibration_error(probabilities.max(1), probabilities.argmax(1) == labels)


def finetune(catalog: str | Path, out_dir: str | Path, columns: Columns = Columns(), config: FinetuneConfig = FinetuneConfig(),
             progress: bool = True, epochs_this_run: int | None = None) -> dict:
    """Train, keeping the best epoch; resumes from out_dir's last checkpoint when one is there.

    `epochs_this_run` stops after that many epochs with the checkpoint written (as a kill would, but
    cleanly), for time-sliced jobs; a later call resumes.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    train, validation = training_data(catalog, columns, config)
    labels = sorted((set(train["category"].to_list()) | set(validation["category"].to_list())) - {None})
    label_id = {label: i for i, label in enumerate(labels)}
    hierarchy = Hierarchy(labels)
    counts = train["category"].value_counts()
    count_of = dict(zip(counts["category"].to_list(), counts["count"].to_list()))
    leaf_weights = np.array([max(count_of.get(label, 0), 1) ** -config.class_weight_power for label in labels])
    leaf_weights = leaf_weights / (leaf_weights * np.array([count_of.get(l, 0) for l in labels])).sum() * train["category"].count()
    learned_tag_counts = tag_counts(train["tags"], config.tag_min_count)
    tag_labels = sorted(learned_tag_counts)
    tag_id = {tag.lower(): i for i, tag in enumerate(tag_labels)}  # tags match whatever their case
    n_paths = len(labels)

    # split_batches: each process takes its share of one batch, so the number of optimizer steps, and with it the
    # learning-rate schedule, does not depend on how many processes there are.
    accelerator = Accelerator(mixed_precision=_mixed_precision(config.mixed_precision), cpu=not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    processes = accelerator.num_processes
    if config.batch_size % processes:
        raise ValueError(f"--batch-size {config.batch_size} cannot be split across {processes} processes: "
                         f"use a multiple of {processes}")
    set_seed(config.seed)
    base = config.base_model or packaged_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    # One head: the paths' logits (softmax), then one logit per tag (sigmoid), so the model stays a plain
    # BertForSequenceClassification that transformers loads as it is.
    outputs = labels + [TAG_PREFIX + tag for tag in tag_labels]
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(outputs), id2label=dict(enumerate(outputs)), label2id={o: i for i, o in enumerate(outputs)})

    def dataset(frame: pl.DataFrame) -> Dataset:
        data = Dataset.from_polars(frame.select("text", pl.col("category").replace_strict(label_id, default=None, return_dtype=pl.Int64)
                                                .fill_null(NO_CATEGORY).alias("labels")))
        if tag_labels:
            targets = np.zeros((frame.height, len(tag_labels)), np.float32)
            for row, tags in enumerate(frame["tags"].to_list()):
                targets[row, [tag_id[t.lower()] for t in tags or [] if t.lower() in tag_id]] = 1.0
            data = data.add_column("tag_targets", targets.tolist())
        return data.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=config.max_length),
                        batched=True, remove_columns=["text"])

    train_data, validation_data = dataset(train), dataset(validation)
    collate = DataCollatorWithPadding(tokenizer)
    steps_per_epoch = -(-len(train_data) // config.batch_size)
    head = [p for name, p in model.named_parameters() if name.startswith("classifier.")]
    body = [p for name, p in model.named_parameters() if not name.startswith("classifier.")]
    optimizer = torch.optim.AdamW([{"params": body, "lr": config.learning_rate}, {"params": head, "lr": config.head_learning_rate}],
                                  weight_decay=config.weight_decay)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(config.warmup_ratio * steps_per_epoch * config.epochs),
                              num_training_steps=steps_per_epoch * config.epochs)
    path_loss = HierarchicalLoss(hierarchy, leaf_weights, config.level_loss_weight)

    def loss_fn(logits: torch.Tensor, labels_batch: torch.Tensor, tag_targets: torch.Tensor | None) -> torch.Tensor:
        loss = path_loss(logits[:, :n_paths], labels_batch)
        if tag_targets is not None:
            loss = loss + config.tag_loss_weight * torch.nn.functional.binary_cross_entropy_with_logits(
                logits[:, n_paths:].float(), tag_targets.float())
        return loss
    validation_loader = torch.utils.data.DataLoader(validation_data, batch_size=64 * processes, collate_fn=collate)
    model, optimizer, scheduler, validation_loader = accelerator.prepare(model, optimizer, scheduler, validation_loader)
    path_loss.to(accelerator.device)

    state = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "optimizer_steps": 0, "history": [], "config": asdict(config)}
    checkpoints = out_dir / CHECKPOINTS
    if (checkpoints / STATE_FILE).exists():
        saved = json.loads((checkpoints / STATE_FILE).read_text())
        now = asdict(config)
        if changed := [f"{name} {saved['config'].get(name, '(not recorded: an older enrich)')} there, {now[name]} here"
                       for name in now if saved["config"].get(name, object()) != now[name]]:
            raise ValueError(f"{checkpoints} holds a run with another config ({'; '.join(changed)});"
                             " run with those settings to resume it, or remove it or use another --out")
        accelerator.load_state(str(checkpoints / "last"))
        state = {"optimizer_steps": 0, **saved}  # checkpoints written before the count was kept
        if "best_accuracy" in state:  # written before early stopping followed tags too: the same number then
            state["best_score"] = state.pop("best_accuracy")
        if progress:
            accelerator.print(f"resuming after epoch {state['epoch']}")

    first_epoch = state["epoch"] + 1
    for epoch in range(first_epoch, config.epochs + 1):
        if epoch - state["best_epoch"] > config.patience:
            break
        if epochs_this_run is not None and epoch - first_epoch >= epochs_this_run:
            return {"stopped_after_epoch": state["epoch"], **state}
        # The epoch's order depends only on seed and epoch, so a resumed run sees the same batches.
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_data)).tolist()
        loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(
            train_data.select(order), batch_size=config.batch_size, collate_fn=collate))
        model.train()
        total = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not progress or not accelerator.is_main_process,
                   unit="batch", leave=False)
        for batch in bar:
            labels_batch, tag_targets = batch.pop("labels"), batch.pop("tag_targets", None)
            with accelerator.autocast():
                logits = model(**batch).logits
            loss = loss_fn(logits, labels_batch, tag_targets)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            state["optimizer_steps"] += 1
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        val_logits, val_labels, val_tags = _predict(model, validation_loader, accelerator)
        scores = validation_scores(val_logits, val_labels, val_tags, n_paths)
        state["history"].append({"epoch": epoch, "train_loss": total / max(len(loader), 1), **scores})
        if progress:
            accelerator.print(f"epoch {epoch}: train loss {total / max(len(loader), 1):.4f}, "
                              + ", ".join(f"{name.replace('_', ' ')} {value:.4f}" for name, value in scores.items()))
        if scores["validation_score"] > state["best_score"]:
            state["best_score"], state["best_epoch"] = scores["validation_score"], epoch
            if accelerator.is_main_process:
                accelerator.unwrap_model(model).save_pretrained(checkpoints / "best", safe_serialization=True)
        state["epoch"] = epoch
        accelerator.save_state(str(checkpoints / "last"))
        if accelerator.is_main_process:
            (checkpoints / STATE_FILE).write_text(json.dumps(state, indent=1))
        accelerator.wait_for_everyone()

    # Every process scores the best epoch on its shard of the validation split (the gather needs them all);
    # the main process writes the tagger. `best` stays, so running again on a finished folder writes it again.
    accelerator.wait_for_everyone()
    best = AutoModelForSequenceClassification.from_pretrained(checkpoints / "best").to(accelerator.device)
    val_logits, val_labels, val_tags = _predict(best, validation_loader, accelerator)
    val_tag_logits = val_logits[:, n_paths:]
    accuracy = validation_scores(val_logits, val_labels, None, n_paths)["validation_accuracy"]
    labelled = val_labels != NO_CATEGORY  # paths are calibrated on the listings that have one
    val_logits, val_labels = val_logits[labelled, :n_paths], val_labels[labelled]
    temperature = fit_temperature(val_logits, val_labels)
    metrics = {
        "validation_accuracy": accuracy,
        "validation_rows": len(val_labels),
        "calibration_error_before": calibration_error(softmax(val_logits), val_labels),
        "calibration_error_after": calibration_error(softmax(val_logits / temperature), val_labels),
        "temperature": temperature,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "optimizer_steps": state["optimizer_steps"],
        "processes": processes,
        "train_rows": train.height,
        "seconds": round(time.perf_counter() - started, 1),
        "history": state["history"],
    }
    tag_threshold = config.tag_threshold
    if tag_labels:
        tag_threshold = best_tag_threshold(expit(val_tag_logits), val_tags) if tag_threshold is None else tag_threshold
        metrics["tags"] = {**tag_metrics(val_tag_logits, val_tags, tag_threshold), "threshold": tag_threshold,
                           "chosen_on_validation": config.tag_threshold is None,
                           "at_0.5": tag_metrics(val_tag_logits, val_tags, 0.5)}
    info = {"config": asdict(config), "base_model": "all-MiniLM-L6-v2" if config.base_model is None else config.base_model,
            "temperature": temperature, "min_level_score": config.min_level_score, "metrics": metrics,
            "label_counts": {label: int(count_of.get(label, 0)) for label in labels},
            "tag_labels": tag_labels, "tag_threshold": tag_threshold,
            "tag_counts": learned_tag_counts,
            "mixed_precision": accelerator.mixed_precision, "source": str(catalog), "columns": asdict(columns)}
    if accelerator.is_main_process:
        Tagger(best.cpu(), tokenizer, info).save(out_dir)
    accelerator.wait_for_everyone()
    return metrics


def tag_counts(tags: pl.Series, min_count: int) -> dict[str, int]:
    """Listings per tag, for the tags at least `min_count` listings carry, most frequent first. Tags are told apart
    without regard to case, as Shopify's are: "Metal" and "metal" are one tag, named by its most common spelling."""
    spellings = (pl.DataFrame({"tag": tags.explode().drop_nulls()}).with_columns(key=pl.col("tag").str.to_lowercase())
                 .group_by("key", "tag").len().sort("key", "len", "tag", descending=[False, True, False]))
    merged = spellings.group_by("key", maintain_order=True).agg(pl.col("tag").first(), pl.col("len").sum())
    merged = merged.filter(pl.col("len") >= min_count).sort("len", "tag", descending=[True, False])
    return {tag: int(n) for tag, n in zip(merged["tag"].to_list(), merged["len"].to_list())}


def micro_scores(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Micro precision, recall and F1 of (listings, tags) yes/no predictions against the truth (0 where undefined)."""
    precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average="micro", zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


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


def best_tag_threshold(probabilities: np.ndarray, targets: np.ndarray, fallback: float = 0.5) -> float:
    """The probability threshold with the best micro F1 over every (listing, tag) pair; `fallback` when no pair is
    a yes. One threshold for all tags: a validation split holds too few listings per rare tag to set one each."""
    truth = targets.ravel() > 0
    if not truth.any():
        return fallback
    precision, recall, thresholds = precision_recall_curve(truth, probabilities.ravel())
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def tag_metrics(tag_logits: np.ndarray, targets: np.ndarray, threshold: float) -> dict:
    """Micro precision, recall and F1 of the tags predicted at `threshold`, and how many listings carry any."""
    return {**micro_scores(expit(tag_logits) >= threshold, targets > 0),
            "listings_with_tags": int((targets > 0).any(1).sum()), "tags": int(targets.shape[1])}


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


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per FinetuneConfig field, defaults from the dataclass."""
    group = parser.add_argument_group("training (FinetuneConfig)")
    for f in fields(FinetuneConfig):
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        group.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, help=f"default: {f.default}")


def config_from(args: argparse.Namespace) -> FinetuneConfig:
    chosen = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig) if getattr(args, f.name, None) is not None}
    return FinetuneConfig(**chosen)


def main(argv: list[str] | None = None) -> int:
    """`python -m enrich.finetune` / `accelerate launch -m enrich.finetune`: the same as `enrich finetune`."""
    from enrich.cli import main as cli_main

    return cli_main(["finetune", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
