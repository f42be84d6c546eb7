"""`nova fraud evaluate` and `nova fraud train`: labelled corpora through the real path, measured."""
