"""Rescale a T5 v1.0 checkpoint so that it trains in fp16 without overflowing.

T5's residual stream grows past fp16's range (65,504) in pre-trained checkpoints. The TACO
reference shrinks weights before training: the shared embedding ÷100, every attention output
projection ÷100, and each feed-forward matrix ÷10 (``wi`` and ``wo``: ReLU is positively
homogeneous, so the feed-forward output shrinks 100× too). Every residual contribution then
shrinks by the same 100×, and since each sub-layer and the final output start with an RMS
norm, the network computes the same function up to the norm's epsilon (``x / 100`` makes
``eps`` 10⁴× larger relative to ``mean(x²)``). This holds for the encoder and the decoder, so
the pooled first decoder output is preserved; the LM head's logits are not (nothing in
multiret uses them). Gated-GELU T5 (v1.1, flan) is refused: GELU is not homogeneous.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, T5Model

from multiret.model.loading import resolve_model_path

EMBEDDING_DIVISOR = 100.0
ATTENTION_OUTPUT_DIVISOR = 100.0
FEED_FORWARD_DIVISOR = 10.0


@torch.no_grad()
def rescale_t5_for_fp16(model: T5Model) -> None:
    """Apply the reference's rescaling in place (see the module docstring for why it is safe)."""
    if model.config.feed_forward_proj != "relu":
        raise ValueError(
            f"feed_forward_proj={model.config.feed_forward_proj!r}: only ReLU T5 (v1.0, as the paper) keeps its "
            "function under this rescaling; train gated-GELU models in bf16 instead"
        )
    model.shared.weight.div_(EMBEDDING_DIVISOR)
    for stack in (model.encoder, model.decoder):
        for block in stack.block:
            for layer in block.layer:
                for name in ("SelfAttention", "EncDecAttention"):
                    if hasattr(layer, name):
                        getattr(layer, name).o.weight.div_(ATTENTION_OUTPUT_DIVISOR)
                if hasattr(layer, "DenseReluDense"):
                    layer.DenseReluDense.wi.weight.div_(FEED_FORWARD_DIVISOR)
                    layer.DenseReluDense.wo.weight.div_(FEED_FORWARD_DIVISOR)


def convert(source: str, target: Path) -> Path:
    """Write a rescaled copy of the T5 at ``source`` (model and tokenizer) to the new folder ``target``."""
    if target.exists():
        raise FileExistsError(f"{target} exists; choose a new output folder")
    path = resolve_model_path(source)
    model = T5Model.from_pretrained(path, local_files_only=True)
    rescale_t5_for_fp16(model)
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(path, local_files_only=True).save_pretrained(partial)
    partial.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multiret convert t5-fp16", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a local T5 v1.0 folder (save_pretrained layout)")
    parser.add_argument("target", type=Path, help="new folder for the rescaled model and its tokenizer")
    args = parser.parse_args(argv)
    print(f"wrote {convert(args.source, args.target)}; train it with model.encoder.path={args.target}")
    return 0
