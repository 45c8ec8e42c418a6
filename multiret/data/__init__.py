"""Data stage: KILT files, passage corpora, negatives, multitask batches."""
