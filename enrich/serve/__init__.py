"""`enrich serve`: the merchandisers' review workbench and the enrichment API, one FastAPI app (`app`) with its
routers (`api`, `pages`), the loaded models and the request batcher (`workbench`), the review store (`store`) and the
catalog's conflicts (`conflicts`)."""
