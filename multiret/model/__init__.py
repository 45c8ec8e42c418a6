"""Model stage: the prompted bi-encoder and its pooling."""
