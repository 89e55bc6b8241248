"""`enrich serve`: the merchandisers' review workbench and the enrichment API, one FastAPI app (`app`) with its
routers (`api`, `pages` with `review_pages` and `upload_pages`, what they share in `render`), the loaded models and
the request batcher (`workbench`), the review store (`store`) and what reviewers do with it (`queue`: views, search,
reservations, skips; `actions`: decisions, bulk actions, undo; `paths`: the known paths), an upload's mapping step
(`uploads`) and the catalog's conflicts (`conflicts`)."""
