"""The reference index: listings with engagement, embedded and linked in an hnswlib graph, with the TF-IDF
vocabulary, the prior and the category model fitted on them (`build`), kept current (`update`), stored and
loaded as versioned folders (`store`, `versions`)."""
