"""Index stage: corpus encoding, FAISS indexes, passage-to-page ranking."""
