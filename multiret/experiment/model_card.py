"""The README.md of an exported model: what it was trained on and how, its scores, and how to encode with it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import metadata

from multiret.experiment.retriever import Retriever, TrainedCheckpoint
from multiret.model.loading import load_checkpoint
from multiret.mtl.base import method_id


def model_card(found: TrainedCheckpoint, retriever: Retriever, fmt: str, prefixes: Mapping[str, str]) -> str:
    """Markdown: tasks, data, gradient method, steps, the run's scores, the passage template and usage for ``fmt``."""
    cfg = found.config
    encoder = retriever.model.query_encoder
    step = load_checkpoint(found.path, "checkpoint", lazy=True).get("global_step", "unknown")
    method = method_id(cfg)
    template = retriever.passage_template
    lines = [
        f"# multiret retriever: {cfg.get('task_name', found.run.name)}",
        "",
        f"A multitask dense retriever trained with multiret (run `{found.run.name}`, checkpoint `{found.path.name}`).",
        "",
        "## Training",
        "",
        (f"- encoder: `{encoder.path}`, pooling `{encoder.pooling}`, "
        f"{'normalised (cosine similarity)' if encoder.normalize else 'not normalised (dot product)'}"),
        f"- prompt: `{retriever.model.prompt.kind}`" + (f", template `{retriever.model.prompt_template}`"
                                                         if retriever.model.prompt_template else ""),
        f"- gradient method: {method}",
        f"- optimizer steps: {step}",
        f"- data: `{cfg.data.get('root')}` (corpus `{cfg.data.get('corpus')}`), evaluated on the `{cfg.data.get('eval_split')}` split",
        f"- seed: {cfg.get('seed')}",
        "",
        "## Tasks",
        "",
        "| task | training file | query prompt (text before the query) | max query tokens |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | `{task.train}` | `{prefixes[name]!r}` | {task.max_query_length} |"
          for name, task in retriever.tasks.items()),
        "",
        f"Passages (max {retriever.collator.max_passage_length} tokens) are encoded from the template "
        f"`{template}`" + (" (the text alone)" if template is None else "") + "; queries never see it.",
        "",
        "## Scores",
        "",
        *_scores(found),
        "",
        "## Use",
        "",
        *(_sentence_transformers_usage(retriever) if fmt == "sentence-transformers" else _retriever_usage(retriever)),
        "",
    ]
    return "\n".join(lines)


def _scores(found: TrainedCheckpoint) -> list[str]:
    path = found.run / "eval" / "metrics.json"
    if not path.is_file():
        return ["The run was not evaluated (no eval/metrics.json)."]
    scores = json.loads(path.read_text(encoding="utf-8"))
    metrics = list(next(iter(scores.values()), {}))
    rows = [f"| {task} | " + " | ".join(f"{values.get(m, float('nan')):.4f}" for m in metrics) + " |"
            for task, values in scores.items()]
    return [f"KILT page-level metrics of the run's evaluation (`eval/metrics.json`, {found.config.data.get('eval_split')} split):",
            "", "| task | " + " | ".join(metrics) + " |", "|" + " --- |" * (len(metrics) + 1), *rows]


def _sentence_transformers_usage(retriever: Retriever) -> list[str]:
    task = next(iter(retriever.tasks.values()))
    template = retriever.passage_template or "{text}"
    passage = template.format(title="Paris", text="Paris is the capital of France.")
    return [
        f"With sentence-transformers ({metadata.version('sentence-transformers')} wrote this folder):",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        "model = SentenceTransformer(PATH_TO_THIS_FOLDER)",
        f"queries = model.encode([\"what is the capital of France\"], prompt_name={task.name!r},",
        f"                       processing_kwargs={{\"text\": {{\"max_length\": {task.max_query_length}}}}})",
        f"passages = model.encode([{passage!r}])",
        "scores = model.similarity(queries, passages)",
        "```",
        "",
        ("`prompt_name` is the query's task (each task's prompt is a named prompt); the `max_length` is that task's "
        "query limit from the table above (passages use the folder's own limit). Fill every passage into the template "
        "above before encoding it."),
    ]


def _retriever_usage(retriever: Retriever) -> list[str]:
    task = next(iter(retriever.tasks))
    return [
        ("This folder is a Hugging Face model (`AutoModel.from_pretrained`) plus `multiret.json` (pooling, prompts, "
        "lengths, passage template); encode with multiret, which applies them:"),
        "",
        "```python",
        "from multiret import Retriever",
        "",
        "retriever = Retriever.from_export(PATH_TO_THIS_FOLDER)",
        f"queries = retriever.encode_queries([\"what is the capital of France\"], task={task!r})",
        "passages = retriever.encode_passages([(\"Paris\", \"Paris is the capital of France.\")])  # (title, text)",
        "scores = queries @ passages.T",
        "```",
    ]
