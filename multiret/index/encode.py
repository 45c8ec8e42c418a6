"""Batch encoding of many texts: sorted by length so padding is small, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

TokenizeFn = Callable[[list[str]], dict]
EncodeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.inference_mode()
def encode_texts(
    texts: Sequence[str],
    tokenize: TokenizeFn,
    encode: EncodeFn,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    description: str = "encoding",
    show_progress: bool = True,
) -> np.ndarray:
    """Embed ``texts`` in their original order as a float32 array ``(len(texts), dim)``.

    Texts are batched longest-first by character length (a cheap proxy for token length),
    which cuts padding work several-fold on corpora with mixed lengths.
    """
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: np.ndarray | None = None
    with tqdm(total=len(texts), desc=description, unit="text", disable=not show_progress) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in tokenize([texts[i] for i in rows]).items()}
            vectors = encode(batch["input_ids"], batch["attention_mask"]).float().cpu().numpy()
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
            bar.update(len(rows))
    if out is None:
        raise ValueError("nothing to encode: the list of texts is empty")
    return out
