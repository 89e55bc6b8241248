"""The LLM stage: grounded attributes and a Shopify taxonomy node per listing (`describe`), from a small generative
model that only ever chooses among options (`chooser`), asked through a cache (`answers`) with versioned prompt
templates (`templates`)."""
