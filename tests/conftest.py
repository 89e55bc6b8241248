from pathlib import Path

import pytest

from transformers import AutoTokenizer, BertConfig, BertModel, set_seed

from enrich.catalog import Columns
from enrich.embed import packaged_model_path
from enrich.sample import sample_paths

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def sample():
    return sample_paths()


@pytest.fixture(scope="session")
def sample_columns(sample):
    return Columns.from_file(sample["columns"])


@pytest.fixture(scope="session")
def encoder():
    from enrich.embed import Encoder

    return Encoder()


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, sample, sample_columns, encoder):
    """The bundled reference sample, indexed once for the whole session."""
    from enrich.index.build import build_index

    folder = tmp_path_factory.mktemp("index") / "sample-index"
    summary = build_index(sample["reference"], folder, sample_columns, progress=False, encoder=encoder)
    return folder, summary


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_path())
    set_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_tagger(tmp_path_factory, tiny_bert, sample, sample_columns):
    """A tagger fine-tuned from the tiny BERT on the bundled reference sample (seconds, on a CPU)."""
    from enrich.category.finetune import finetune
    from enrich.settings import FinetuneConfig

    folder = tmp_path_factory.mktemp("tagger") / "tiny-tagger"
    finetune(sample["reference"], folder, sample_columns, FinetuneConfig(
        base_model=tiny_bert, epochs=2, batch_size=32, learning_rate=1e-2, max_length=32, warmup_ratio=0.0,
        mixed_precision="no"), progress=False)
    return folder


@pytest.fixture
def amazon_catalog():
    path = SHARED_DATA / "amazon_uk_toys" / "catalog.csv"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory):
    """A randomly initialised two-layer Llama with MiniLM's WordPiece vocabulary: real generate-side code
    paths (tokenising, the shared prompt cache, batched options) in a second, with no weights to fetch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-lm")
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_path())
    tokenizer.eos_token = "[SEP]"
    set_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def small_taxonomy(tmp_path_factory):
    """Forty categories of the shipped Shopify taxonomy (toys, games, party supplies): fast to embed."""
    import polars as pl

    from enrich.llm.taxonomy import SHIPPED

    table = pl.read_csv(SHIPPED, separator="\t")
    keep = table.filter(pl.col("id").str.contains(r"^(tg-5-\d+|tg-2-\d+|ae-3-2-\d+)$")).head(40)
    path = tmp_path_factory.mktemp("taxonomy") / "categories.tsv"
    keep.write_csv(path, separator="\t")
    return path


@pytest.fixture
def llm_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENRICH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_encoder_config(tiny_bert):
    """The tiny random BERT as the sentence encoder: for tests where the encoder is not the point (fast to load and
    to run; its vectors mean nothing)."""
    from enrich.settings import EncoderConfig

    return EncoderConfig(model_path=tiny_bert, precision="fp32")


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory, sample, sample_columns, tiny_encoder_config):
    """The bundled reference sample indexed with the tiny encoder, once for the session."""
    from enrich.settings import EnrichConfig
    from enrich.index.build import build_index

    folder = tmp_path_factory.mktemp("tiny-index") / "index"
    build_index(sample["reference"], folder, sample_columns, EnrichConfig(encoder=tiny_encoder_config), progress=False)
    return folder
