"""Building blocks of search, below what assembles them: the hnswlib graph with its id labels (`neighbors`) and the
TF-IDF vocabulary (`lexical`)."""
