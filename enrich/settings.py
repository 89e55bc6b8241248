"""Every stage's settings: one frozen dataclass per stage, with its defaults, and nothing else here.

Defaults live in these classes only: the command's flags are made from them (`enrich.flags`), and the resolved
settings are written into each artifact's manifest. The module imports nothing heavier than the standard library, so
that `enrich --help` shows the defaults without loading a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from enrich.catalog.columns import CleaningConfig, Columns
from enrich.environment import variable
from enrich.errors import ConfigError

DEFAULT_LLM = "smollm2-135m"  # the LLM stage's packaged model


@dataclass(frozen=True)
class EncoderConfig:
    """How listings are turned into vectors."""

    model_path: str | None = None  # a sentence-transformers folder; None: the packaged all-MiniLM-L6-v2
    max_tokens: int = 256  # the model's limit; the title comes first, so only the tail is ever cut
    batch_size: int = 32  # fastest measured on 2 cores with bf16 (16..64 within 10%)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 | int8; auto: measured on a CPU (see enrich.precision), fp16 on CUDA
    backend: str = "auto"  # auto | torch | openvino; auto: measured with the precision on a CPU; a precision named alone: torch
    device: str = "auto"  # auto | cpu | cuda


@dataclass(frozen=True)
class IndexConfig:
    """How the approximate nearest-neighbour index is built and searched."""

    M: int = 32  # graph degree: more links, better recall, more memory
    ef_construction: int = 200  # build-time beam width
    ef_search: int = 200  # query-time beam width; must be >= candidates
    candidates: int = 50  # neighbours retrieved per listing, for the vote, the prior and re-ranking
    seed: int = 100  # hnswlib's level generator, for reproducible builds
    threads: int = -1  # -1: all cores


@dataclass(frozen=True)
class LexicalConfig:
    """The TF-IDF vocabulary fitted on the reference catalog."""

    ngram_max: int = 2  # words and word pairs
    min_df: int = 2  # a term seen in one listing only says nothing about its neighbours
    max_features: int = 200_000  # vocabulary cap, for large catalogs
    fit_rows: int = 200_000  # vocabulary and idf from at most this many listings drawn at random: a sample
    # that large already holds every term worth keeping, and fitting on 1M texts held them all in memory


@dataclass(frozen=True)
class CategoryModelConfig:
    """Settings of the TF-IDF logistic regression fitted at index build."""

    inverse_regularisation: float = 10.0  # sklearn's C; as the TF-IDF + LR baseline
    passes: int = 30  # saga passes over the data: as accurate as lbfgs to convergence here, 10x faster
    fit_rows: int = 50_000  # listings drawn at random to fit on: the cost grows with rows x categories
    # The vocabulary's terms the model reads: those in most fitted listings. The coefficients are categories x
    # terms floats, so a large catalog's 200,000-term vocabulary and 1,000 categories would take 800 MB.
    max_terms: int = 50_000
    seed: int = 0


@dataclass(frozen=True)
class VoteConfig:
    """How neighbours vote on a category and how the vote re-orders them."""

    temperature: float = 0.05  # weight exp((s - s_best) / T): a neighbour 0.05 less similar counts e^-1 as much
    rerank_weight: float = 1.0  # neighbour order key: cosine + rerank_weight * vote share of its category
    top_k: int = 10  # neighbours written per listing
    # Relative weights of the category's sources; those present are mixed in proportion (without a tagger, the
    # vote and the TF-IDF model in the same ratio). Chosen on the tagger's validation split, never on held-out data.
    neighbor_weight: float = 0.15
    lexical_weight: float = 0.45
    tagger_weight: float = 0.4
    classifier_top: int = 20  # a classifier's most probable paths that join the mix (the rest carry ~0)
    min_level_score: float = 0.3  # the tags keep a path's deeper levels while their share of the mix reaches this

    def weight(self, source: str) -> float:
        return {"neighbors": self.neighbor_weight, "lexical": self.lexical_weight, "tagger": self.tagger_weight}[source]


@dataclass(frozen=True)
class PriorConfig:
    """How neighbour, lexical and brand evidence become an exposure prior."""

    temperature: float = 0.1  # absolute neighbour weight exp((s - 1) / T)
    relative_temperature: float = 0.05  # relative weight exp((s - s_best) / T) for neighbors_mean
    lexical_temperature: float = 0.1  # relative weight over TF-IDF cosine for lexical_mean
    brand_strength: float = 3.0  # pseudo-count of the global mean in a brand's mean
    shrink_grid: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)  # candidate pseudo-counts for neighbors_eb
    text_alpha: float = 3.0  # ridge penalty of the text model
    interval: float = 0.8  # central coverage of exposure_prior_low..high
    evidence_bins: int = 4  # residual quantiles are kept per bin of evidence
    folds: int = 5  # cross-fitting folds for the text model
    seed: int = 0
    fit_rows: int = 100_000  # fitted on at most this many reference listings drawn at random: nine weights, an
    # interval and a text model need no more, and evidence for all of a 1M catalog took gigabytes


@dataclass(frozen=True)
class AcceptanceConfig:
    """How the acceptance policy is fitted at index build."""

    target_precision: float = 0.9  # accepted paths, and the levels backed off to, must be right this often
    # ... with this confidence over the listings that test it (a finite-sample guarantee); None: on average there
    confidence: float | None = 0.9
    calibration_rows: int = 10_000  # labelled reference listings scored as new ones, at most
    folds: int = 5  # the category model is refitted this many times, each time without one fold of them
    map_share: float = 0.5  # without a tagger, the share of them that fits the calibration maps; the rest test
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.target_precision < 1:
            raise ConfigError(f"the precision to accept at must be between 0 and 1, not {self.target_precision}")
        if self.confidence is not None and not 0 < self.confidence < 1:
            raise ConfigError(f"the confidence of the acceptance precision must be between 0 and 1, not {self.confidence}")
        if self.folds < 2 or not 0 < self.map_share < 1:
            raise ConfigError(f"calibration needs at least 2 folds and a map share between 0 and 1, not {self.folds}, "
                              f"{self.map_share}")


@dataclass(frozen=True)
class EnrichConfig:
    """The settings an index is built with and records, and that enriching reads (the vote and cleaning may be asked
    for anew; the rest is the index's own)."""

    encoder: EncoderConfig = EncoderConfig()
    index: IndexConfig = IndexConfig()
    lexical: LexicalConfig = LexicalConfig()
    category_model: CategoryModelConfig = CategoryModelConfig()
    vote: VoteConfig = VoteConfig()
    prior: PriorConfig = PriorConfig()
    cleaning: CleaningConfig = CleaningConfig()
    acceptance: AcceptanceConfig = AcceptanceConfig()

    def __post_init__(self):
        if not 1 <= self.vote.top_k <= self.index.candidates:
            raise ConfigError(f"--neighbors must be between 1 and {self.index.candidates}, not {self.vote.top_k}")


@dataclass(frozen=True)
class RunConfig:
    """How `enrich run` goes through new listings."""

    part_rows: int = 10_000  # rows per saved part: a killed run resumes from its finished parts


@dataclass(frozen=True)
class UpdateConfig:
    """How `enrich index --update` guards an index."""

    max_delete_share: float = 0.1  # --delete-missing refuses to delete more of the index than this unless told otherwise
    refit_share: float = 0.2  # an update says to rebuild once the listings added or deleted since the build pass this


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
    class_weight_power: float = 0.5  # leaf weight ~ count^-power: 0 none, 1 inverse frequency
    validation_share: float = 0.1  # held out for early stopping and calibration
    patience: int = 2  # epochs without a better validation score before stopping
    tag_min_count: int = 5  # a catalog's own tag is learned when this many training listings carry it
    tag_loss_weight: float = 1.0  # weight of the tags' binary cross-entropy beside the path loss
    tag_threshold: float | None = None  # a tag is predicted when its probability reaches this; None: chosen on validation
    decision_weight: int = 3  # with --decisions: a listing the team decided counts this many times in training (gold)
    seed: int = 0
    mixed_precision: str = "auto"  # no | bf16 | fp16; auto: bf16 on CUDA, on a CPU the faster of no and bf16 (measured)


@dataclass(frozen=True)
class LLMConfig:
    """The LLM the describe stage asks."""

    backend: str = "local"  # "local" (in-process, offline) or "openai" (an OpenAI-compatible chat server)
    model: str = DEFAULT_LLM  # local: a packaged name, a safetensors folder or a .gguf file; openai: the served name
    base_url: str = ""  # openai backend: e.g. http://localhost:8000/v1 (or ENRICH_LLM_BASE_URL)
    cache_dir: str = ""  # where converted models live (default ENRICH_CACHE or ~/.cache/enrich)
    max_listing_tokens: int = 192  # the listing's text is cut to this many tokens inside a prompt
    timeout_s: float = 60.0  # openai backend: per request
    concurrency: int = 8  # openai backend: listings whose questions are in flight at once (a server batches them)

    @classmethod
    def from_env(cls, **overrides) -> LLMConfig:
        """Flags win; then ENRICH_LLM_BACKEND / ENRICH_LLM_MODEL / ENRICH_LLM_BASE_URL; then defaults."""
        env = {
            "backend": variable("ENRICH_LLM_BACKEND"),
            "model": variable("ENRICH_LLM_MODEL"),
            "base_url": variable("ENRICH_LLM_BASE_URL"),
        }
        values = {k: v for k, v in env.items() if v}
        values.update({k: v for k, v in overrides.items() if v not in (None, "")})
        return cls(**values)

    def manifest_entry(self) -> dict:
        """What a run records about the model it asked (not where converted models are cached)."""
        return {k: v for k, v in asdict(self).items() if k != "cache_dir"}

    def __post_init__(self):
        if self.concurrency < 1:
            raise ConfigError(f"the LLM concurrency (--llm-concurrency) must be at least 1, not {self.concurrency}")


@dataclass(frozen=True)
class AttributeConfig:
    max_options: int = 6  # spans offered to the model per field (first found first), plus "not stated"
    ask_model: bool = True  # False: take the first span of each field (the rules-only baseline)
    prompt_version: int | None = None  # prompts/attribute.v<N>.yaml; None: the newest released


@dataclass(frozen=True)
class TaxonomyConfig:
    candidates: int = 8  # categories retrieved by embedding, among which the model chooses
    # Weight of the listing's whole text (title, brand and description) beside its title and brand alone in the
    # retrieval query: a description can say anything, including what category to pick, so the title keeps a
    # share of the query that repeated instructions in a description cannot outweigh.
    text_weight: float = 2.0
    # Weight of the listing's own category path (given, or predicted by `enrich run`) beside its text in the
    # retrieval query: a merchant's category path reads like a taxonomy path, which a title does not. 0: text alone.
    category_weight: float = 0.5
    # Weight of a category's own name (its last level) beside its full path in the category's vector: a full path's
    # vector leans on its ancestors' words, so siblings read alike; the name tells them apart. 0: the path alone.
    name_weight: float = 0.3
    # "nearest": the top candidate by cosine; "model": the LLM picks among the candidates by likelihood. Nearest is
    # the default: it measured better than the small packaged model's choice (docs/benchmarks.md, LLM stage).
    choose: str = "nearest"
    # `enrich run --describe` only (it has an index to predict from): which category goes into the query of a
    # listing that came with one. "predicted": the one enrich predicts from its text and neighbours, as for a
    # listing without one; "given": the merchant's own, which can name a brand or a department ("Characters &
    # Brands > WWE") where the predicted one names what the product is.
    bridge: str = "predicted"
    prompt_version: int | None = None  # prompts/taxonomy.v<N>.yaml; None: the newest released


@dataclass(frozen=True)
class DescribeConfig:
    """The LLM stage: attributes and a taxonomy node."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    attributes: AttributeConfig = field(default_factory=AttributeConfig)
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    taxonomy_source: str = ""  # a Shopify release folder; empty: the taxonomy shipped with enrich
    use_cache: bool = True  # answers cached in <cache>/llm_answers.sqlite


@dataclass(frozen=True)
class EvalConfig:
    """How listings are held out and scored."""

    holdout: float = 0.2  # share of the catalog enriched as new listings
    seed: int = 0  # random split seed
    date_column: str | None = None  # when set, a time split: the latest listings are held out
    k: int = 10  # precision@k, recall@k, NDCG@k
    head_share: float = 0.1  # the most-engaged 10% of the reference catalog sets the head's threshold
    tail_share: float = 0.5  # the least-engaged half sets the tail's threshold
    slate_share: float = 0.1  # the simple ranker fills positions for this share of all listings


@dataclass(frozen=True)
class SimulationConfig:
    exponents: tuple[float, ...] = (0.5, 1.0, 2.0)  # conversion = low + (high - low) * (log1p(e) / log1p(max e)) ** exponent
    budgets: tuple[int, ...] = (3, 10, 30)  # impressions per listing, on average, that the slot spends
    low: float = 0.005  # conversion probability of a listing with no engagement
    high: float = 0.2  # of the most engaged listing
    slate: int = 50  # listings shown per round (the posteriors are updated between rounds)
    strength: float = 20.0  # pseudo-impressions per unit of prior_evidence (see the module)
    useful: int = 10  # impressions a listing needs to have been given a chance
    repeats: int = 3
    seed: int = 0


@dataclass(frozen=True)
class ServeConfig:
    """How `enrich serve` runs."""

    index: str  # an index folder from `enrich index`
    db: str = "enrich-review.sqlite"  # the review store: batches and decisions
    model: str | None = None  # a tagger folder; default: the index's
    columns: Columns = field(default_factory=Columns)  # how uploaded catalogs name their columns
    host: str = "127.0.0.1"
    port: int = 8000
    token: str = ""  # required by every page and API call; a random one is made when none is given
    max_listings: int = 1000  # per POST /v1/enrich
    max_request_bytes: int = 2 * 2**20  # an API request's body
    max_upload_bytes: int = 200 * 2**20  # an uploaded catalog
    batch_listings: int = 64  # listings the batcher puts through the models at once
    batch_wait_ms: float = 10.0  # how long the batcher waits for more requests once one has come
    conflict_cosine: float = 0.95  # reference listings at least this similar are near-identical
    uploads: str = ""  # where uploaded catalogs are kept (default: beside the store)
    workers: int = 1  # HTTP processes (parsing, checking, answering); more where cores allow
    model_workers: int = 1  # processes holding the models, fed by one batching queue each
    model_threads: int = 0  # torch threads per model worker; 0: the machine's cores shared among them
    max_pending_listings: int = 2048  # listings waiting for the models before the API answers 503 (try again)
    max_connections: int = 512  # open connections and requests in flight before the server answers 503
    model_timeout_s: float = 120.0  # how long a request waits for the models before a 503
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this (slowloris: 408)
    max_header_bytes: int = 64 * 1024  # a request's line and headers (431 beyond)
    body_timeout_s: float = 30.0  # a body must arrive within this, plus a second per min_body_rate bytes (408)
    min_body_rate: float = 64 * 1024  # bytes per second a long body (an upload) must keep up on average
    reserve_seconds: float = 300.0  # a listing handed to a reviewer stays theirs this long; another's decision this fresh warns
