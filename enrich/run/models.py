"""The models a command enriches with, loaded through one loader: the index, the encoder it was built with, the
tagger, the acceptance policy and the LLM stage, each loaded once and only when first needed. `enrich run`,
`enrich explain`, `enrich serve` and the Ray engine's actors all load them here."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from enrich.category.acceptance import AcceptancePolicy
from enrich.category.tagger import Tagger
from enrich.settings import EnrichConfig
from enrich.embed import Encoder
from enrich.index.store import ReferenceIndex, encoder_for, query_config, recorded_tagger


@dataclass(frozen=True)
class ModelSources:
    """Where the models come from: plain values, so that a Ray actor can be handed them and load its own."""

    index: str  # an index folder from `enrich index`
    tagger: str | None = None  # a tagger folder; None: the one the index was built with, if any
    config: EnrichConfig = field(default_factory=EnrichConfig)  # the vote and cleaning asked for; the rest is the index's
    describe: object | None = None  # an `llm.describe.DescribeConfig` for the LLM stage; None: no LLM stage


class Models:
    """The loaded models. Pieces given here (an encoder already loaded, a describer with a test's chooser) are used
    instead of loading their own."""

    def __init__(self, sources: ModelSources, encoder: Encoder | None = None, index: ReferenceIndex | None = None,
                 tagger: Tagger | None = None, describer=None):
        self.sources = sources
        given = {"encoder": encoder, "index": index, "tagger": tagger, "describer": describer}
        self.__dict__.update({name: piece for name, piece in given.items() if piece is not None})
        if describer is not None and encoder is not None and describer.encoder is not encoder:
            raise ValueError("a describer given to Models must embed with the models' encoder")

    @cached_property
    def encoder(self) -> Encoder:
        """The encoder the index was built with (its weights checked against the index's record first)."""
        return encoder_for(self.sources.index)

    @cached_property
    def index(self) -> ReferenceIndex:
        return ReferenceIndex.load(self.sources.index, self.encoder)

    @cached_property
    def config(self) -> EnrichConfig:
        """What the index was built with, and the vote and cleaning asked for."""
        return query_config(self.index, self.sources.config)

    @cached_property
    def tagger_dir(self) -> Path | None:
        return Path(self.sources.tagger) if self.sources.tagger else recorded_tagger(self.index)

    @cached_property
    def tagger(self) -> Tagger | None:
        return Tagger.load(self.tagger_dir) if self.tagger_dir else None

    @property
    def acceptance(self) -> AcceptancePolicy | None:
        return self.index.acceptance

    @cached_property
    def describer(self):
        """The LLM stage, embedding with the same encoder as the neighbours (one vector serves both); None without."""
        if self.sources.describe is None:
            return None
        from enrich.llm.describe import Describer

        return Describer(self.sources.describe, self.encoder)

