"""Fine-tuning with a tiny randomly initialised BERT (hidden 32, 2 layers): fast, and no big weights."""

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from safetensors.numpy import load_file

from enrich.category.catalog_tags import best_tag_threshold
from enrich.category.finetune import finetune, training_data, validation_scores
from enrich.settings import FinetuneConfig
from enrich.category.tagger import Tagger
from enrich.errors import ConfigError


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory, sample):
    path = tmp_path_factory.mktemp("catalog") / "train.csv"
    frame = pl.read_csv(sample["reference"], infer_schema=False).filter(pl.col("amazon_category_and_sub_category").is_not_null())
    top = frame["amazon_category_and_sub_category"].value_counts(sort=True).head(8)["amazon_category_and_sub_category"]
    frame.filter(pl.col("amazon_category_and_sub_category").is_in(top.implode())).write_csv(path)
    return path


@pytest.fixture(scope="module")
def tagged_catalog(tmp_path_factory, small_catalog):
    """The small catalog with tag lists of its own: 'party' and 'vehicle' follow the department, 'rare' is on one
    listing only (too few to learn)."""
    path = tmp_path_factory.mktemp("tagged") / "train.csv"
    category = pl.col("amazon_category_and_sub_category")
    frame = pl.read_csv(small_catalog, infer_schema=False).with_row_index()
    frame.with_columns(pl.concat_str([
        pl.when(category.str.starts_with("Party Supplies")).then(pl.lit("party")).otherwise(pl.lit("")),
        pl.when(category.str.starts_with("Die-Cast")).then(pl.lit("vehicle")).otherwise(pl.lit("")),
        pl.when(pl.col("index") == 0).then(pl.lit("rare")).otherwise(pl.lit("")),
    ], separator="; ").alias("tags")).drop("index").write_csv(path)
    return path


def config(tiny_bert, **changes):
    settings = dict(base_model=tiny_bert, epochs=4, batch_size=16, learning_rate=1e-2, max_length=32, patience=5,
                    warmup_ratio=0.0, mixed_precision="no")
    return FinetuneConfig(**{**settings, **changes})


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_loss_falls_and_the_model_round_trips(tiny_bert, small_catalog, sample_columns, tmp_path):
    metrics = finetune(small_catalog, tmp_path / "model", sample_columns, config(tiny_bert), progress=False)
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0] * 0.9
    assert 0 < metrics["temperature"] and 0 <= metrics["calibration_error_after"] <= 1
    tagger = Tagger.load(tmp_path / "model")
    texts = ["LEGO Star Wars X-wing fighter | LEGO", "Balloon pump | Amscan"]
    tagger.save(tmp_path / "copy")
    again = Tagger.load(tmp_path / "copy")
    assert np.allclose(tagger.probabilities(texts), again.probabilities(texts))
    for tags in tagger.predict(texts):
        assert tags and [t.level for t in tags] == list(range(1, len(tags) + 1))
        assert all(b.path.startswith(a.path + " > ") for a, b in zip(tags, tags[1:]))
        assert all(a.score >= b.score - 1e-6 for a, b in zip(tags, tags[1:]))  # a parent is at least as likely


def test_same_seed_same_weights(tiny_bert, small_catalog, sample_columns, tmp_path):
    cfg = config(tiny_bert, epochs=1)
    finetune(small_catalog, tmp_path / "a", sample_columns, cfg, progress=False)
    finetune(small_catalog, tmp_path / "b", sample_columns, cfg, progress=False)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_resumed_run_matches_an_uninterrupted_one(tiny_bert, small_catalog, sample_columns, tmp_path):
    cfg = config(tiny_bert, epochs=2)
    finetune(small_catalog, tmp_path / "straight", sample_columns, cfg, progress=False)
    stopped = finetune(small_catalog, tmp_path / "resumed", sample_columns, cfg, progress=False, epochs_this_run=1)
    assert stopped["stopped_after_epoch"] == 1 and not (tmp_path / "resumed" / "model.safetensors").exists()
    finetune(small_catalog, tmp_path / "resumed", sample_columns, cfg, progress=False)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resuming_with_another_config_is_refused(tiny_bert, small_catalog, sample_columns, tmp_path):
    finetune(small_catalog, tmp_path / "m", sample_columns, config(tiny_bert, epochs=2), progress=False, epochs_this_run=1)
    with pytest.raises(ConfigError, match=r"another config \(learning_rate 0.01 there, 0.001 here\)"):
        finetune(small_catalog, tmp_path / "m", sample_columns, config(tiny_bert, epochs=2, learning_rate=1e-3), progress=False)


@pytest.mark.slow
def test_two_processes_train_together_and_write_one_tagger(tiny_bert, small_catalog, sample_columns, sample, tmp_path):
    """What `accelerate launch` on several GPUs runs, here as two CPU processes (gloo): every process joins the
    final validation, the main one writes the tagger, and the summary is printed once. --batch-size is the
    batch of one optimizer step, split between the processes, so they take as many steps as one process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "enrich", "finetune",
               str(small_catalog), "--columns", str(sample["columns"]), "--out", str(tmp_path / "m"), "--base-model", tiny_bert,
               "--epochs", "2", "--batch-size", "16", "--max-length", "32", "--mixed-precision", "no", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("fine-tuned on") == 1
    info = json.loads((tmp_path / "m" / "tagger.json").read_text())
    _, validation = training_data(small_catalog, sample_columns, FinetuneConfig())
    assert info["metrics"]["validation_rows"] == validation.height  # gathered from both shards, not one
    alone = finetune(small_catalog, tmp_path / "alone", sample_columns, config(tiny_bert, epochs=2), progress=False)
    assert info["metrics"]["processes"] == 2 and alone["processes"] == 1
    assert info["metrics"]["optimizer_steps"] == alone["optimizer_steps"] == 2 * -(-alone["train_rows"] // 16)
    assert Tagger.load(tmp_path / "m").predict(["LEGO Star Wars X-wing fighter | LEGO"])[0]


@pytest.mark.slow
def test_a_batch_that_cannot_be_split_across_the_processes_is_refused(tiny_bert, small_catalog, sample, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "enrich", "finetune",
               str(small_catalog), "--columns", str(sample["columns"]), "--out", str(tmp_path / "m"), "--base-model", tiny_bert,
               "--epochs", "1", "--batch-size", "15", "--mixed-precision", "no", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    # Each process says so in one line (torchrun then adds its own report of the failed processes).
    assert "enrich: error: --batch-size 15 cannot be split across 2 processes: use a multiple of 2" in done.stderr


def test_running_again_on_a_finished_folder_writes_the_same_tagger(tiny_bert, small_catalog, sample_columns, tmp_path):
    cfg = config(tiny_bert, epochs=1)
    first = finetune(small_catalog, tmp_path / "m", sample_columns, cfg, progress=False)
    before = weights(tmp_path / "m")
    again = finetune(small_catalog, tmp_path / "m", sample_columns, cfg, progress=False)
    after = weights(tmp_path / "m")
    assert again["validation_accuracy"] == first["validation_accuracy"]
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_catalog_with_its_own_tags_teaches_the_tagger_those_tags(tiny_bert, tagged_catalog, sample_columns, tmp_path):
    metrics = finetune(tagged_catalog, tmp_path / "m", sample_columns, config(tiny_bert, epochs=8, tag_loss_weight=5.0), progress=False)
    tagger = Tagger.load(tmp_path / "m")
    assert tagger.tag_labels == ["party", "vehicle"]  # 'rare' is on one listing, under tag_min_count
    assert tagger.model.config.num_labels == len(tagger.labels) + 2
    assert all(not label.startswith("tag: ") for label in tagger.labels)
    assert metrics["tags"]["f1"] >= 0.8, metrics["tags"]
    frame = pl.read_csv(tagged_catalog, infer_schema=False)
    texts = [f"{row['product_name']} | {row['manufacturer']}" for row in frame.head(40).iter_rows(named=True)]
    truth = [[t for t in (row["tags"] or "").split("; ") if t in ("party", "vehicle")] for row in frame.head(40).iter_rows(named=True)]
    predicted = [[tag for tag, _ in tags] for tags in tagger.catalog_tags(texts)]
    assert sum(p == t for p, t in zip(predicted, truth)) >= 32
    assert all(score >= tagger.tag_threshold for tags in tagger.catalog_tags(texts) for _, score in tags)
    # The threshold was chosen on the validation split, and early stopping followed the tags as well as the paths.
    assert metrics["tags"]["chosen_on_validation"] and tagger.tag_threshold == metrics["tags"]["threshold"]
    assert metrics["tags"]["f1"] >= metrics["tags"]["at_0.5"]["f1"]
    assert all("validation_tag_average_precision" in h for h in metrics["history"])
    assert np.allclose(tagger.probabilities(texts).sum(1), 1.0, atol=1e-5)  # the paths' softmax leaves the tags out


def test_the_tag_threshold_is_the_one_with_the_best_micro_f1():
    truth = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    probabilities = np.array([[0.9, 0.2], [0.4, 0.1], [0.3, 0.35], [0.2, 0.05]])
    threshold = best_tag_threshold(probabilities, truth)
    assert threshold == 0.35  # 0.9, 0.4 and 0.35 are the three yeses and nothing else reaches 0.35
    assert best_tag_threshold(probabilities, np.zeros_like(truth)) == 0.5  # no yes to choose by


def test_early_stopping_follows_the_tags_only_where_there_are_tags():
    logits = np.array([[2.0, 0.0, 3.0], [0.0, 2.0, -3.0]])  # two paths, then one tag
    labels = np.array([0, 0])
    alone = validation_scores(logits[:, :2], labels, None, 2)
    assert alone == {"validation_accuracy": 0.5, "validation_score": 0.5}
    both = validation_scores(logits, labels, np.array([[1.0], [0.0]]), 2)
    assert both["validation_tag_average_precision"] == 1.0 and both["validation_score"] == 0.75


def test_listings_with_tags_but_no_category_teach_the_tags_only(tiny_bert, tagged_catalog, sample_columns, tmp_path):
    frame = pl.read_csv(tagged_catalog, infer_schema=False)
    category = pl.col("amazon_category_and_sub_category")
    no_category = (pl.int_range(pl.len()) % 3 == 0) & (pl.col("tags").str.strip_chars("; ") != "")
    frame.with_columns(pl.when(no_category).then(None).otherwise(category).alias(category.meta.output_name())) \
        .write_csv(tmp_path / "partial.csv")
    cfg = config(tiny_bert, epochs=2)
    train, validation = training_data(tmp_path / "partial.csv", sample_columns, cfg)
    tags_only = train["category"].null_count() + validation["category"].null_count()
    assert tags_only == frame.select(no_category.sum()).item() > 0  # kept, for their tags
    metrics = finetune(tmp_path / "partial.csv", tmp_path / "m", sample_columns, cfg, progress=False)
    info = Tagger.load(tmp_path / "m").info
    assert sum(info["label_counts"].values()) == train["category"].count()  # paths counted where there is one
    assert info["tag_counts"]["party"] == train["tags"].explode().eq("party").sum()  # tags counted on every row
    assert metrics["validation_rows"] == validation["category"].count()
    assert all(np.isfinite(h["train_loss"]) for h in metrics["history"])


def test_the_path_loss_leaves_out_listings_without_a_category():
    import torch

    from enrich.category.finetune import NO_CATEGORY, HierarchicalLoss
    from enrich.category.tagger import Hierarchy

    loss = HierarchicalLoss(Hierarchy(["A > x", "A > y", "B > z"]), np.ones(3), level_weight=0.5)
    logits = torch.randn(3, 3, requires_grad=True)
    mixed = loss(logits, torch.tensor([NO_CATEGORY, 1, NO_CATEGORY]))
    assert torch.allclose(mixed, loss(logits[1:2], torch.tensor([1])))
    none = loss(logits, torch.full((3,), NO_CATEGORY))
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_the_tagger_predicts_in_bf16_as_it_was_validated_and_agrees_with_fp32(tiny_tagger, sample):
    import torch

    texts = [f"{t} | {b}" for t, b in pl.read_csv(sample["new"], infer_schema=False)
             .select("product_name", "manufacturer").fill_null("").iter_rows()]
    exact = Tagger.load(tiny_tagger, device="cpu", precision="fp32")
    fast = Tagger.load(tiny_tagger, device="cpu", precision="bf16")
    assert exact.dtype == torch.float32 and fast.dtype == torch.bfloat16
    assert next(fast.model.parameters()).dtype == torch.float32  # autocast: the weights stay as trained
    p32, p16 = exact.probabilities(texts), fast.probabilities(texts)
    assert np.abs(p32 - p16).max() < 0.05 and (p32.argmax(1) == p16.argmax(1)).mean() >= 0.95


def test_tags_are_told_apart_without_regard_to_case_and_named_by_their_most_common_spelling(
        tiny_bert, tagged_catalog, sample_columns, tmp_path):
    from enrich.category.catalog_tags import tag_counts

    spelled = pl.Series([["Metal", "ages 3+"], ["metal"], ["metal", "LEGO"], ["Lego"], ["LEGO"], ["metal"]])
    assert tag_counts(spelled, 2) == {"metal": 4, "LEGO": 3}
    frame = pl.read_csv(tagged_catalog, infer_schema=False)
    # Every third 'party' written 'Party': still one tag, learned from every listing that carries it.
    frame.with_columns(pl.when(pl.int_range(pl.len()) % 3 == 0).then(pl.col("tags").str.replace("party", "Party"))
                       .otherwise(pl.col("tags")).alias("tags")).write_csv(tmp_path / "cased.csv")
    train, _ = training_data(tmp_path / "cased.csv", sample_columns, config(tiny_bert))
    finetune(tmp_path / "cased.csv", tmp_path / "m", sample_columns, config(tiny_bert, epochs=1), progress=False)
    info = Tagger.load(tmp_path / "m").info
    assert info["tag_labels"] == ["party", "vehicle"]
    assert info["tag_counts"]["party"] == train["tags"].explode().str.to_lowercase().eq("party").sum()
