"""Every stage's settings in one frozen dataclass; the resolved copy is written into each artifact's manifest."""

from __future__ import annotations

from dataclasses import dataclass

from enrich.catalog import CleaningConfig
from enrich.category.lexical_model import CategoryModelConfig
from enrich.category.vote import VoteConfig
from enrich.embed import EncoderConfig
from enrich.errors import ConfigError
from enrich.index.calibration import AcceptanceConfig
from enrich.index.lexical import LexicalConfig
from enrich.index.neighbors import IndexConfig
from enrich.prior import PriorConfig


@dataclass(frozen=True)
class EnrichConfig:
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
