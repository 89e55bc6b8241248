import numpy as np
import pytest

import torch

from enrich.embed import Encoder, packaged_model_path
from enrich.settings import EncoderConfig
from enrich.errors import ConfigError
from enrich.precision import resolve_dtype

TEXTS = ["LEGO Technic 42027 Desert Racer | LEGO", "Hornby R3060 Flying Scotsman train set | Hornby",
         "Pink glitter unicorn party balloons, pack of 10 | Amscan", "x"]


def test_embeddings_match_sentence_transformers(encoder):
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(packaged_model_path(), device="cpu").encode(TEXTS, normalize_embeddings=True)
    got = encoder.encode(TEXTS)
    assert got.dtype == np.float32 and got.shape == (4, 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * expected).sum(1).min() >= 0.99
    exact = Encoder(EncoderConfig(precision="fp32")).encode(TEXTS)
    assert (exact * expected).sum(1).min() >= 0.9999  # the fp32 fallback is the reference computation


def test_order_and_batching_do_not_change_vectors():
    small = Encoder(EncoderConfig(batch_size=2, precision="fp32"))
    forward = small.encode(TEXTS)
    backward = small.encode(TEXTS[::-1])[::-1]
    assert np.allclose(forward, backward, atol=1e-5)
    assert small.encode([]).shape == (0, 384)


def test_long_text_is_cut_at_the_tail_so_the_title_survives():
    short = Encoder(EncoderConfig(max_tokens=16, precision="fp32"))
    title = "Wooden railway engine with magnetic couplings"
    with_description = short.encode([title + " | " + "spare parts and more words " * 200])
    alone = short.encode([title])
    assert float((with_description * alone).sum()) > 0.8


def test_a_named_precision_is_taken_and_auto_is_measured_on_a_cpu(monkeypatch):
    monkeypatch.delenv("ENRICH_PRECISION", raising=False)  # "auto" must mean auto here, whatever the shell set
    assert [resolve_dtype(name, "cpu") for name in ("fp32", "bf16", "fp16")] == [torch.float32, torch.bfloat16, torch.float16]
    assert resolve_dtype("auto", "cuda") == torch.float16 and resolve_dtype("auto", "cpu") == torch.float32  # until measured
    monkeypatch.setenv("ENRICH_PRECISION", "bf16")
    assert resolve_dtype("auto", "cpu") == torch.bfloat16  # the environment names it
    with pytest.raises(ConfigError, match="precision must be"):
        resolve_dtype("int4", "cpu")


def test_the_fastest_precision_that_agrees_is_chosen_whatever_the_cpu_says():
    from enrich.precision import choose

    assert choose({"fp32": 400, "bf16": 700}, {"fp32": True, "bf16": True}) == "bf16"
    assert choose({"fp32": 400, "bf16": 250}, {"fp32": True, "bf16": True}) == "fp32"  # bf16 units that are slow
    assert choose({"fp32": 400, "bf16": 900}, {"fp32": True, "bf16": False}) == "fp32"  # fast but wrong
    assert choose({"no": 30, "bf16": 80}, {"bf16": True}, baseline="no") == "bf16"


def test_a_measured_choice_is_cached_per_machine_and_model(tmp_path, monkeypatch):
    import time

    from enrich.precision import measure

    monkeypatch.setenv("ENRICH_CACHE", str(tmp_path))
    calls = []

    def candidate(name, seconds, output):
        def run():
            calls.append(name)
            time.sleep(seconds)
            return output
        return run

    candidates = {"fp32": candidate("fp32", 0.02, 1.0), "bf16": candidate("bf16", 0.005, 1.0001)}
    first = measure("stage", "model", candidates, 10, lambda ref, got: abs(ref - got) < 0.01)
    assert first.chosen == "bf16" and first.reason == "measured" and first.per_s["bf16"] > first.per_s["fp32"]
    count = len(calls)
    again = measure("stage", "model", candidates, 10, lambda ref, got: abs(ref - got) < 0.01)
    assert again.chosen == "bf16" and again.reason == "cached" and len(calls) == count  # not measured again
    other = measure("stage", "another model", candidates, 10, lambda ref, got: False)
    assert other.chosen == "fp32"  # bf16 disagreed for that one


def test_encoding_in_chunks_gives_the_same_vectors(encoder):
    texts = [f"listing {i}: " + "wooden train " * (i % 7) for i in range(50)]
    chunked, whole = encoder.encode(texts, chunk=7), encoder.encode(texts)
    # Other batch mates change bf16 rounding a little, nothing more.
    assert np.sum(chunked * whole, axis=1).min() > 0.9999
    assert encoder.encode([]).shape == (0, encoder.dim)
