"""The encoder's and the tagger's paths (torch or OpenVINO, fp32, bf16, int8): which one is chosen and when it is
measured again, the IR cache, the fallback without OpenVINO, agreement checks. The tiny random BERT keeps them fast;
the packaged model's int8 calibration is marked slow."""

import json
import sys
import time

import numpy as np
import pytest

import enrich.backends
import enrich.embed
from enrich.embed import Encoder, candidate_paths
from enrich.errors import ConfigError
from enrich.precision import choose, measure, neighbours_kept
from enrich.settings import EncoderConfig

TEXTS = ["LEGO Technic 42027 Desert Racer | LEGO", "Hornby R3060 Flying Scotsman train set | Hornby",
         "Pink glitter unicorn party balloons, pack of 10 | Amscan", "x", "wooden train set with a bridge and three carriages"]
needs_openvino = pytest.mark.skipif(not enrich.backends.openvino_available(), reason="OpenVINO is not installed")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENRICH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def without_openvino(monkeypatch):
    """As where OpenVINO is not installed: `import openvino` fails."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    enrich.backends.openvino_available.cache_clear()
    yield
    enrich.backends.openvino_available.cache_clear()


def test_the_fastest_path_that_agrees_is_chosen_across_backends():
    rates = {"torch fp32": 310, "torch bf16": 43, "openvino fp32": 620, "openvino int8": 900}
    assert choose(rates, {"torch bf16": True, "openvino fp32": True, "openvino int8": True}, "torch fp32") == "openvino int8"
    assert choose(rates, {"torch bf16": True, "openvino fp32": True, "openvino int8": False}, "torch fp32") == "openvino fp32"
    assert choose(rates, {"openvino fp32": False, "openvino int8": False}, "torch fp32") == "torch fp32"  # never slower


def test_a_path_that_loses_the_neighbours_is_refused_though_every_vector_keeps_its_cosine(cache):
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    reference = centre + 0.05 * rng.normal(size=(200, 64))  # near-ties: a little noise reorders the nearest
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    noisy = reference + 0.01 * rng.normal(size=reference.shape)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    assert (reference * noisy).sum(1).min() > 0.99 and neighbours_kept(reference, noisy) < 0.95
    assert neighbours_kept(reference, reference.copy()) == 1.0

    def candidate(output, seconds):
        return lambda: (time.sleep(seconds), output)[1]

    check = lambda ref, got: float((ref * got).sum(1).min()) >= 0.99  # noqa: E731
    measured = measure("stage", "model", {"torch fp32": candidate(reference, 0.02), "openvino int8": candidate(noisy, 0.002)},
                       200, check, agree_with={"openvino int8": lambda ref, got: check(ref, got) and neighbours_kept(ref, got) >= 0.95})
    assert measured.chosen == "torch fp32" and measured.per_s["openvino int8"] > measured.per_s["torch fp32"]
    assert measured.agrees == {"torch fp32": True, "openvino int8": False}


def test_a_cached_choice_is_measured_again_when_what_decides_speed_changes(cache, monkeypatch):
    import enrich.precision

    calls = []
    candidates = {"torch fp32": lambda: calls.append(1) or 1.0, "torch bf16": lambda: calls.append(2) or 1.0}
    measure("stage", "model", candidates, 10, lambda ref, got: True)
    count = len(calls)
    assert measure("stage", "model", candidates, 10, lambda ref, got: True).reason == "cached" and len(calls) == count
    flags = enrich.precision.cpu_flags() | {"avx512_bf16", "amx_bf16"}
    monkeypatch.setattr(enrich.precision, "cpu_flags", lambda: flags)  # the same CPU model name, bf16 units added
    assert "avx512_bf16" in enrich.precision.machine_key()
    assert measure("stage", "model", candidates, 10, lambda ref, got: True).reason == "measured" and len(calls) > count
    count = len(calls)
    monkeypatch.setattr(enrich.precision, "library_versions", lambda: "openvino 2099.1")
    assert measure("stage", "model", candidates, 10, lambda ref, got: True).reason == "measured" and len(calls) > count
    count = len(calls)
    with_another = {**candidates, "openvino fp32": lambda: 1.0}  # OpenVINO installed since: a candidate more
    assert measure("stage", "model", with_another, 10, lambda ref, got: True).reason == "measured"


def test_without_openvino_the_torch_path_still_runs(without_openvino, cache, tiny_bert):
    assert not enrich.backends.openvino_available()
    assert candidate_paths("auto", "auto", "cpu") == (["torch fp32", "torch bf16"], "no other candidate here")
    encoder = Encoder(EncoderConfig(model_path=tiny_bert))
    assert encoder.backend == "torch" and set(encoder.precision.per_s) == {"torch fp32", "torch bf16"}
    assert encoder.encode(TEXTS).shape == (len(TEXTS), encoder.dim)
    encoder.calibrate(TEXTS * 500)  # int8 needs OpenVINO: not tried, and nothing fails
    assert encoder.backend == "torch" and "no OpenVINO" in encoder.int8_note
    with pytest.raises(ConfigError, match="OpenVINO cannot be imported"):
        Encoder(EncoderConfig(model_path=tiny_bert, backend="openvino"))


def test_named_paths_and_paths_that_cannot_be(monkeypatch):
    from enrich.precision import named_backend

    assert candidate_paths("auto", "bf16", "cpu") == (["torch bf16"], "asked for")  # a precision named alone: torch
    monkeypatch.setenv("ENRICH_BACKEND", "torch")
    assert named_backend("auto") == "torch" and named_backend("openvino") == "openvino"  # the setting wins
    assert candidate_paths("torch", "auto", "cpu")[0] == ["torch fp32", "torch bf16"]
    assert candidate_paths("auto", "auto", "cuda") == (["torch fp16"], "the GPU's default")
    with pytest.raises(ConfigError, match="int8 runs in OpenVINO only"):
        candidate_paths("torch", "int8", "cpu")
    with pytest.raises(ConfigError, match="on a CPU"):
        candidate_paths("openvino", "fp32", "cuda")
    with pytest.raises(ConfigError, match="backend must be"):
        Encoder(EncoderConfig(backend="onnx"))


@needs_openvino
def test_openvino_agrees_with_torch_and_its_ir_is_converted_once(cache, tiny_bert, monkeypatch):
    exact = Encoder(EncoderConfig(model_path=tiny_bert, precision="fp32", backend="torch")).encode(TEXTS)
    first = Encoder(EncoderConfig(model_path=tiny_bert, precision="fp32", backend="openvino"))
    assert first.path == "openvino fp32" and first.identity()["backend"] == "openvino"
    vectors = first.encode(TEXTS)
    assert (vectors * exact).sum(1).min() > 0.9999
    assert len(list((cache / "openvino").glob("encoder-*/model.xml"))) == 1

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again: the IR in the cache was not used")

    monkeypatch.setattr(enrich.embed, "convert_output", no_conversion)
    again = Encoder(EncoderConfig(model_path=tiny_bert, precision="fp32", backend="openvino"))
    assert np.array_equal(again.encode(TEXTS), vectors)


@needs_openvino
@pytest.mark.parametrize("path", ["torch fp32", "openvino fp32"])
def test_a_vector_is_the_same_bits_whatever_shares_its_batch(cache, tiny_bert, path):
    backend, precision = path.split()
    encoder = Encoder(EncoderConfig(model_path=tiny_bert, precision=precision, backend=backend, batch_size=2))
    texts = TEXTS + [f"{t} and more words" for t in TEXTS]
    together = encoder.encode(texts)
    assert np.array_equal(together, np.stack([encoder.encode([t])[0] for t in texts]))
    assert np.array_equal(together, encoder.encode(texts[::-1])[::-1])
    assert np.array_equal(together, encoder.encode(texts, chunk=3))


@needs_openvino
def test_auto_measures_every_path_here_and_caches_the_choice(cache, tiny_bert):
    encoder = Encoder(EncoderConfig(model_path=tiny_bert))
    measured = encoder.precision
    assert measured.reason == "measured" and {"torch fp32", "torch bf16", "openvino fp32"} <= set(measured.per_s)
    assert measured.chosen == max((p for p in measured.per_s if measured.agrees[p]), key=measured.per_s.get)
    entry = next(iter(json.loads((cache / "precision.json").read_text())))
    assert "threads" in entry and "openvino " in entry and "cores" in entry
    assert Encoder(EncoderConfig(model_path=tiny_bert)).precision.reason == "cached"


@needs_openvino
def test_the_tagger_predicts_through_openvino_as_through_torch(cache, tiny_tagger, monkeypatch):
    from enrich.category.tagger import Tagger

    texts = TEXTS * 3
    exact = Tagger.load(tiny_tagger, device="cpu", precision="fp32", backend="torch")
    fast = Tagger.load(tiny_tagger, device="cpu", precision="fp32", backend="openvino")
    assert fast.precision.chosen == "openvino fp32"
    assert np.allclose(exact.logits(texts), fast.logits(texts), atol=1e-4)
    assert [[level.path for level in p] for p in exact.predict(texts)] == [[level.path for level in p] for p in fast.predict(texts)]
    auto = Tagger.load(tiny_tagger, device="cpu")
    assert set(auto.precision.per_s) >= {"torch fp32", "torch bf16", "openvino fp32"}
    monkeypatch.setenv("ENRICH_PRECISION", "int8")  # the encoder's path: the tagger, which has none, goes on choosing
    assert Tagger.load(tiny_tagger, device="cpu").precision.reason == "cached"
    with pytest.raises(ConfigError, match="no int8 path"):
        Tagger.load(tiny_tagger, device="cpu", precision="int8")


@needs_openvino
@pytest.mark.slow
def test_int8_is_calibrated_checked_and_cached(cache, tiny_bert, monkeypatch, sample):
    """int8 on the tiny BERT, calibrated on the sample's titles: measured with its agreement figures, then cached
    (its IR and the choice) so that the same calibration quantizes nothing again."""
    import polars as pl

    from enrich.backends import Int8Recipe

    monkeypatch.setattr(enrich.embed, "CALIBRATION_LISTINGS", 600)
    monkeypatch.setattr(enrich.embed, "INT8_RECIPE", Int8Recipe(calibration_texts=300))
    titles = pl.read_csv(sample["reference"], infer_schema=False)["product_name"].drop_nulls().to_list()[:600]
    encoder = Encoder(EncoderConfig(model_path=tiny_bert), calibration=titles)
    figures = encoder.precision.figures["openvino int8"]
    assert "openvino int8" in encoder.precision.per_s and figures["texts"] == 300
    assert encoder.precision.agrees["openvino int8"] == (figures["min_cosine"] >= 0.99 and figures["top10_kept"] >= 0.95)
    assert encoder.identity()["calibration"]["listings"] == 600
    assert len(list((cache / "openvino").glob("encoder-*-int8-*/model.xml"))) == 1

    def no_quantization(*args, **kwargs):
        raise AssertionError("quantized again")

    monkeypatch.setattr(enrich.embed, "quantize_int8", no_quantization)
    again = Encoder(EncoderConfig(model_path=tiny_bert, precision="int8"), calibration=titles)
    assert again.path == "openvino int8" and again.encode(TEXTS).shape == (len(TEXTS), again.dim)
    assert Encoder(EncoderConfig(model_path=tiny_bert), calibration=titles).precision.reason == "cached"


@needs_openvino
def test_an_index_records_its_path_and_an_update_on_another_reuses_its_vectors(cache, tiny_bert, sample, sample_columns,
                                                                                tmp_path, monkeypatch):
    """Built in OpenVINO, updated and rebuilt in torch: listings are matched by the hashes the index made."""
    import polars as pl

    from enrich.settings import EnrichConfig
    from enrich.index.build import build_index
    from enrich.index.update import update_index

    config = EnrichConfig(encoder=EncoderConfig(model_path=tiny_bert))
    reference = pl.read_csv(sample["reference"], infer_schema=False)
    reference.head(60).write_csv(tmp_path / "before.csv")
    reference.head(65).write_csv(tmp_path / "after.csv")
    monkeypatch.setenv("ENRICH_PRECISION", "fp32")
    monkeypatch.setenv("ENRICH_BACKEND", "openvino")
    build_index(tmp_path / "before.csv", tmp_path / "index", sample_columns, config, progress=False)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["encoder"]["backend"] == "openvino" and manifest["encoder"]["dtype"] == "float32"
    monkeypatch.setenv("ENRICH_BACKEND", "torch")
    summary = update_index(tmp_path / "after.csv", tmp_path / "index", sample_columns, config, progress=False)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert summary.reused_embeddings == 60 and manifest["updates"][-1]["added"] == 5
    assert manifest["updates"][-1]["embedded_with"] == "torch fp32" and manifest["encoder"]["backend"] == "openvino"
    rebuilt = build_index(tmp_path / "after.csv", tmp_path / "index", sample_columns, config, progress=False)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert rebuilt.reused_embeddings == 65 and manifest["encoder"]["backend"] == "torch"


def test_an_index_keeps_the_listings_its_int8_model_was_calibrated_on(cache, tiny_bert, sample, sample_columns, tmp_path,
                                                                       monkeypatch):
    """The calibration listings are written beside the index and read back by the encoder a run or an update uses,
    whether or not int8 was chosen (without OpenVINO, it is not even tried)."""
    from enrich.settings import EnrichConfig
    from enrich.index.build import build_index
    from enrich.index.store import CALIBRATION, encoder_for

    monkeypatch.setattr(enrich.embed, "CALIBRATION_LISTINGS", 50)
    monkeypatch.setattr("enrich.index.build.CALIBRATION_LISTINGS", 50)
    monkeypatch.setenv("ENRICH_PRECISION", "fp32")
    build_index(sample["reference"], tmp_path / "index", sample_columns, EnrichConfig(encoder=EncoderConfig(model_path=tiny_bert)),
                progress=False)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["encoder"]["calibration"]["listings"] == 50 and CALIBRATION in manifest["files"]
    texts = json.loads((tmp_path / "index" / CALIBRATION).read_text())["texts"]
    assert len(texts) == 50 and len(set(texts)) > 40
    assert encoder_for(tmp_path / "index").calibration.digest == manifest["encoder"]["calibration"]["digest"]


@needs_openvino
def test_int8_asked_for_waits_for_an_index_to_calibrate_it(cache, tiny_bert):
    encoder = Encoder(EncoderConfig(model_path=tiny_bert, precision="int8"))
    assert encoder.path == "openvino int8" and encoder.identity()["dtype"] == "int8"
    with pytest.raises(ConfigError, match="calibrated on an index's reference listings"):
        encoder.encode(TEXTS)
