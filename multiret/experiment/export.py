"""``multiret export``: a trained run's model as a sentence-transformers folder, or a Hugging Face folder.

The sentence-transformers folder holds the trained encoder, its pooling and normalisation,
the passage length limit, and each task's text prompt as a named prompt, so that
``SentenceTransformer(DIR)`` encodes as the run did without multiret. What such a folder
cannot hold (T5 pooled at its first decoder output, soft prompts, a prompt with text after
the query, separate query and passage encoders) is exported as a Hugging Face folder plus
``multiret.json`` (and the soft prompts, or the passage encoder in ``passage/``)
for :meth:`multiret.Retriever.from_export`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from multiret.atomic import atomic_folder, atomic_write_text
from multiret.errors import UserError, require_writable_folder
from multiret.experiment.model_card import model_card
from multiret.experiment.retriever import (
    CHECKPOINTS,
    EXPORT_CONFIG,
    PASSAGE_ENCODER,
    SOFT_PROMPT_FILE,
    Retriever,
    TrainedCheckpoint,
    find_checkpoint,
)

PROG = "multiret export"
FORMATS = ("sentence-transformers", "hf")
ST_POOLING = {"mean": "mean", "first": "cls"}  # our pooling → sentence-transformers' Pooling mode


def sentence_transformers_obstacle(retriever: Retriever) -> str | None:
    """Why a sentence-transformers folder cannot encode as this model does, or None when it can."""
    model = retriever.model
    if model.query_encoder.pooling not in ST_POOLING:
        # sentence-transformers loads T5 as its encoder alone (T5EncoderModel): no module reaches the decoder
        return "T5 pooled at its first decoder output cannot be expressed in sentence-transformers (it loads T5's encoder alone)"
    if model.passage_encoder is not model.query_encoder:
        return "separate query and passage encoders (model.shared_encoder=false) do not fit one sentence-transformers model"
    if model.soft_prompt is not None:
        return "soft prompts (learned vectors) are no text a sentence-transformers prompt can hold"
    if model.prompt_template is not None and not model.prompt_template.endswith("{query}"):
        return f"the prompt {model.prompt_template!r} puts text after the query; sentence-transformers prompts only go before it"
    return None


def query_prefixes(retriever: Retriever) -> dict[str, str]:
    """Each task's prompt as the text before the query (``"QA: "``), the sentence-transformers named prompts."""
    return {name: retriever.collator.format_query("", task) for name, task in retriever.tasks.items()}


def write_sentence_transformers(retriever: Retriever, out: Path) -> None:
    """The encoder, pooling, normalisation and passage length limit as a sentence-transformers folder in ``out``."""
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError as error:
        raise UserError(f"--format sentence-transformers needs sentence-transformers 6.3 or newer ({error}); "
                        'pip install "multiret[export]", or export with --format hf') from error

    encoder = retriever.model.query_encoder
    with tempfile.TemporaryDirectory(dir=out.parent) as plain:
        encoder.model.save_pretrained(plain)
        retriever.model.tokenizer.save_pretrained(plain)
        modules = [Transformer(plain, max_seq_length=retriever.collator.max_passage_length),
                   Pooling(encoder.model.config.hidden_size, ST_POOLING[encoder.pooling])]
        if encoder.normalize:
            modules.append(Normalize())
        model = SentenceTransformer(modules=modules, prompts=query_prefixes(retriever), device="cpu",
                                    similarity_fn_name="cosine" if encoder.normalize else "dot")
        model.save(str(out), create_model_card=False)


def write_hugging_face(retriever: Retriever, out: Path) -> None:
    """The encoder and tokenizer as ``save_pretrained`` writes them, plus what :meth:`Retriever.from_export` reads."""
    retriever.model.query_encoder.model.save_pretrained(out)
    retriever.model.tokenizer.save_pretrained(out)
    if retriever.model.passage_encoder is not retriever.model.query_encoder:
        retriever.model.passage_encoder.model.save_pretrained(out / PASSAGE_ENCODER)
    if retriever.model.soft_prompt is not None:
        save_file({"vectors": retriever.model.soft_prompt.vectors.detach().cpu().contiguous()}, out / SOFT_PROMPT_FILE)
    atomic_write_text(out / EXPORT_CONFIG, json.dumps(retriever.export_config(), indent=2) + "\n")


def export(found: TrainedCheckpoint, out: Path, fmt: str = "sentence-transformers") -> tuple[str, str | None]:
    """Write the model of ``found`` into ``out`` (replaced whole); returns the format written and why not the one asked."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}; choose one of {', '.join(FORMATS)}")
    retriever = Retriever.from_config(found.config, found.path)
    obstacle = sentence_transformers_obstacle(retriever) if fmt == "sentence-transformers" else None
    written = "hf" if obstacle or fmt == "hf" else fmt
    check_out_folder(out)
    with atomic_folder(out) as folder:
        if written == "hf":
            write_hugging_face(retriever, folder)
        else:
            write_sentence_transformers(retriever, folder)
        atomic_write_text(folder / "README.md", model_card(found, retriever, written, query_prefixes(retriever)))
    return written, obstacle


def check_out_folder(out: Path) -> None:
    """Refuse to replace a folder that holds anything but an earlier export (``--out .`` must not wipe a project)."""
    earlier = (out / "README.md").is_file() and any((out / name).is_file() for name in ("modules.json", EXPORT_CONFIG))
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not earlier):
        raise UserError(f"--out {out} exists and is not an earlier export; give a new folder (an export replaces it whole)")
    require_writable_folder(out.parent, "--out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Export a trained run's model for use outside multiret.")
    parser.add_argument("run", metavar="RUN_OR_CKPT", help="a run folder, or a .ckpt file in its checkpoints/")
    parser.add_argument("--out", required=True, type=Path, help="the folder to write (replaced if it exists)")
    parser.add_argument("--format", default="sentence-transformers", choices=FORMATS,
                        help="sentence-transformers (default; falls back to hf for models it cannot express) or hf")
    parser.add_argument("--checkpoint", default="best", choices=CHECKPOINTS,
                        help="for a run folder: checkpoints/best.ckpt (default; last.ckpt when there is none), last.ckpt, "
                             "or indexed (the one its index was built with)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    found = find_checkpoint(args.run, args.checkpoint)
    if found.note:
        print(f"{PROG}: {found.note}", file=sys.stderr)
    written, obstacle = export(found, args.out, args.format)
    if obstacle:
        print(f"{PROG}: {obstacle}: wrote a Hugging Face folder instead; load it with "
              f"multiret.Retriever.from_export({str(args.out)!r})", file=sys.stderr)
    print(f"{PROG}: {found.path} → {args.out} ({written})")
    return 0
