"""A Hugging Face encoder and its pooling: how a text becomes one vector."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from multiret.errors import UserError
from multiret.model.loading import resolve_model_path

POOLINGS = ("t5_decoder", "mean", "first")


class TextEncoder(nn.Module):
    """Wraps a pretrained model with one of three poolings.

    ``t5_decoder``: the first decoder output of a T5 encoder–decoder fed the decoder start
    token (id 0), the representation TACO uses (Zhang et al. 2023, §3.1; Ni et al.'s
    Sentence-T5 "EncDec-first"). ``mean``: attention-masked mean of the last hidden states.
    ``first``: the first token's hidden state (BERT's [CLS]).
    """

    def __init__(self, path: str, pooling: str = "mean", normalize: bool = False, num_layers: int | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise UserError(f"model.encoder.pooling={pooling!r}; expected one of {', '.join(POOLINGS)}")
        if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1):
            raise UserError(f"model.encoder.num_layers={num_layers!r} must be a positive number of layers, or null for all")
        self.path = str(resolve_model_path(path))
        self.pooling = pooling
        self.normalize = normalize
        # the first num_layers layers of the pre-trained stack (the config's attribute map names T5's num_layers)
        fewer = {"num_hidden_layers": num_layers} if num_layers is not None else {}
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True, **fewer)
        self.model.train()
        is_encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        if (pooling == "t5_decoder") != is_encoder_decoder:
            raise UserError(
                f"pooling {pooling!r} does not fit the {self.model.config.model_type!r} model at {self.path}: "
                "use 't5_decoder' for encoder-decoder models and 'mean' or 'first' for encoder-only ones"
            )

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        return AutoTokenizer.from_pretrained(self.path, local_files_only=True)

    def input_embeddings(self) -> nn.Embedding:
        """The token embedding table (a soft prompt lives in its space)."""
        return self.model.get_input_embeddings()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled vectors; ``prefix`` ``(length, dim)`` vectors go before every text's input embeddings.

        Poolings read only the text's positions: a prefix acts through attention (and, for T5,
        through the decoder's cross-attention), ``first`` pools the first text token, and
        ``mean`` averages the text tokens alone, so a soft prompt cannot add a learned constant
        to every query vector of its task.
        """
        skip = 0
        if prefix is None:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        else:
            skip = prefix.shape[0]
            embedded = self.input_embeddings()(input_ids)
            batch = input_ids.shape[0]
            prefix = prefix.to(embedded.dtype).unsqueeze(0).expand(batch, -1, -1)
            inputs = {
                "inputs_embeds": torch.cat([prefix, embedded], dim=1),
                "attention_mask": torch.cat([attention_mask.new_ones((batch, skip)), attention_mask], dim=1),
            }
        if self.pooling == "t5_decoder":
            start = torch.zeros((input_ids.shape[0], 1), dtype=input_ids.dtype, device=input_ids.device)
            pooled = self.model(**inputs, decoder_input_ids=start).last_hidden_state[:, 0]
        else:
            hidden = self.model(**inputs).last_hidden_state[:, skip:]
            if self.pooling == "first":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled
