"""`enrich eval`: held-out listings enriched and scored beside baselines (`evaluate`, `metrics`), the report and its
plots (`report`, `plots`)."""
