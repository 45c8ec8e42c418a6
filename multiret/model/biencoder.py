"""The prompted multitask bi-encoder as a LightningModule.

Training is manual: one forward and one backward per task sub-batch, so a gradient-method
callback (``multiret.mtl``) can see each task's gradient before the optimizer steps. For the
naive method the per-task backwards simply accumulate, which equals one backward of the
summed loss while holding only one task's graph at a time.

The contract with the method: a step's batch is a list of micro-batches, each one
:class:`~multiret.data.batches.TaskBatch` per task in ``data.task_names`` order; during each
task's backward the module names that task (``active_task``, a task name), and the method
looks the name up in the data module's ``task_names``. The method also guards every step: one
whose losses or gradients are not finite updates nothing, and the module asks it
(:class:`UpdateGuard`) whether it did so before moving the learning-rate schedule.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from torch import nn

from multiret.data.batches import TaskBatch
from multiret.errors import UserError
from multiret.model.encoder import TextEncoder
from multiret.model.gather import gather_with_grad, world
from multiret.model.prompt import QueryPrompt, build_soft_prompt

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


@runtime_checkable
class UpdateGuard(Protocol):
    """What the module asks of its gradient-method callback (:class:`multiret.mtl.base.GradientMethod`)."""

    @property
    def skipped_last_update(self) -> bool:
        """Whether the optimizer step that just ran updated nothing (a non-finite loss or gradient)."""


class BiEncoder(L.LightningModule):
    """Query and passage encoders (shared by default) scored by dot product.

    Loss: cross-entropy of each query's positive against in-batch and hard negatives
    (DPR, Karpukhin et al. 2020), with passages all-gathered across devices under DDP.
    ``temperature`` divides the scores; keep 1 for raw dot products, use ~0.05 with
    normalised (cosine) embeddings.

    ``prompt`` (``conf/prompt/``) says how queries are prompted: a text template the
    collator applies (``prompt_template``), or, for ``kind: soft``, per-task vectors
    (``soft_prompt.vectors``, trained and checkpointed with the model) that
    :meth:`encode_queries` puts before the query of the given task.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        prompt: Mapping[str, Any] | None = None,
        shared_encoder: bool = True,
        temperature: float = 1.0,
        max_grad_norm: float | None = 1.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise UserError(f"model.temperature must be > 0, got {temperature}")
        self.automatic_optimization = False
        self.query_encoder = encoder
        self.passage_encoder = encoder if shared_encoder else copy.deepcopy(encoder)
        self.tokenizer = encoder.load_tokenizer()
        self.prompt = QueryPrompt.from_config(prompt)
        self.prompt.check_tokenizer(self.tokenizer, f"model.encoder.path={encoder.path}")
        self.prompt_template = self.prompt.template
        self.soft_prompt = (
            build_soft_prompt(self.prompt, encoder.input_embeddings(), self.tokenizer) if self.prompt.is_soft else None
        )
        self.temperature = temperature
        self.max_grad_norm = max_grad_norm
        self._optimizer_factory = optimizer
        self._scheduler_factory = scheduler
        self.active_task: str | None = None  # the task whose backward is running, for the gradient method
        self.save_hyperparameters(ignore=["encoder", "optimizer", "scheduler", "prompt"])
        self.hparams["prompt"] = asdict(self.prompt)  # plain values: checkpoints load with weights_only=True

    def encode_queries(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task: str | None = None
    ) -> torch.Tensor:
        """Query vectors of one task's queries (``task`` picks the soft prompt; text prompts are in the ids)."""
        prefix = self.soft_prompt(task) if self.soft_prompt is not None else None
        return self.query_encoder(input_ids, attention_mask, prefix)

    def encode_passages(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.passage_encoder(input_ids, attention_mask)

    def task_loss(self, batch: TaskBatch) -> torch.Tensor:
        """Mean contrastive loss of one task's sub-batch (each query: 1 positive then its negatives)."""
        queries = self.encode_queries(**batch.query, task=batch.task)
        passages = self.encode_passages(**batch.passage)
        per_query = passages.shape[0] // queries.shape[0]
        rank, _ = world()
        all_passages = gather_with_grad(passages)
        scores = queries @ all_passages.T / self.temperature
        offset = rank * passages.shape[0]
        targets = offset + torch.arange(queries.shape[0], device=scores.device) * per_query
        return nn.functional.cross_entropy(scores.float(), targets)

    def training_step(self, batch: list[list[TaskBatch]], batch_idx: int) -> torch.Tensor:
        """One optimizer step over the step's micro-batches; gradients accumulate as their mean."""
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        task_losses: dict[str, torch.Tensor] = {}
        for micro_batch in batch:
            for task_batch in micro_batch:
                self.active_task = task_batch.task
                loss = self.task_loss(task_batch) / len(batch)
                self.manual_backward(loss)
                task_losses[task_batch.task] = task_losses.get(task_batch.task, 0) + loss.detach()
        self.active_task = None
        losses = list(task_losses.values())
        for task, loss in task_losses.items():
            self.log(f"train/loss/{task}", loss, on_step=True, batch_size=1, sync_dist=True)  # mean over processes
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None and not self.update_skipped():
            scheduler.step()  # a skipped step leaves the schedule where it is, as in the reference's AMP trainer
        total = torch.stack(losses).sum()
        self.log("train/loss", total, on_step=True, prog_bar=True, batch_size=1, sync_dist=True)
        return total

    def update_skipped(self) -> bool:
        """Whether the gradient method dropped this step's update (no method, as in a bare Trainer: never)."""
        return any(isinstance(c, UpdateGuard) and c.skipped_last_update for c in self.trainer.callbacks)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradient the method wrote back (callbacks run first, then this hook)."""
        if self.max_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")

    def configure_optimizers(self) -> Any:
        optimizer = self._optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self._scheduler_factory is None:
            return optimizer
        total = self.trainer.max_steps
        if total is None or total <= 0:
            raise UserError("trainer.max_steps must be set (> 0): the learning-rate schedule needs the step count")
        scheduler = self._scheduler_factory(optimizer, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
