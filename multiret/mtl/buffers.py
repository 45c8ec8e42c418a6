"""Per-task gradient buffers: where each task's gradient waits between its backward and the combining rule.

One ``(T, *shape)`` tensor per parameter, all views of one ``(T, P)`` tensor whose leading
columns hold the dense parameters, so a rule can sweep them as one flat block. Large
embedding tables are filled only at the rows a backward touched: a batch touches a few
thousand of a vocabulary's rows, and copying those (and clearing the ones held the step
before) replaces a pass over the whole table. :meth:`TaskBuffers.held_rows` says which rows
of a table may be non-zero, so a rule can work on those alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def nonzero_rows(values: torch.Tensor) -> torch.Tensor:
    """Which rows (first dimension) of ``values`` hold a non-zero entry, as a bool vector (two reductions, no temporary).

    A row holding a NaN counts as non-zero (its maximum is NaN), so a NaN gradient row is
    buffered like any other and the step's finiteness check sees it.
    """
    flat = values.reshape(values.shape[0], -1)
    top = flat.amax(dim=1)
    return (top > 0) | (flat.amin(dim=1) < 0) | top.isnan()


def task_tensors(
    params: list[torch.Tensor], row_sparse: Sequence[bool], num_tasks: int, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Zeroed ``(T, *shape)`` tensors, one per parameter, and the ``(T, P)`` tensor they are views of.

    The columns of every parameter that is not ``row_sparse`` come first, so a rule can sweep
    them as one flat block instead of tensor by tensor (a few large operations instead of many
    small ones). Parameters of different dtypes or devices get separate tensors (and no flat one).
    """
    dtypes = {dtype or p.dtype for p in params}
    devices = {p.device for p in params}
    if len(dtypes) != 1 or len(devices) != 1:
        return None, [torch.zeros((num_tasks, *p.shape), dtype=dtype or p.dtype, device=p.device) for p in params]
    sparse = list(row_sparse) or [False] * len(params)
    flat = torch.zeros((num_tasks, sum(p.numel() for p in params)), dtype=dtypes.pop(), device=devices.pop())
    views: list[torch.Tensor | None] = [None] * len(params)
    offset = 0
    for order in (False, True):
        for i, param in enumerate(params):
            if sparse[i] == order:
                views[i] = flat[:, offset : offset + param.numel()].view(num_tasks, *param.shape)
                offset += param.numel()
    return flat, views


class TaskBuffers:
    """Each task's gradient of ``params`` for the current step.

    ``grads[i]`` is parameter i's ``(T, *shape)`` buffer and ``flat`` the ``(T, P)`` tensor
    they are views of (None when the parameters mix dtypes or devices). ``row_sparse[i]`` marks
    an embedding table filled by rows. ``reached[t][i]`` says whether a backward of task t gave
    parameter i a gradient this step (if not, that task's buffer is all zeros).
    """

    def __init__(self, params: list[torch.nn.Parameter], row_sparse: Sequence[bool], num_tasks: int) -> None:
        self.params = params
        self.row_sparse = list(row_sparse)
        self.flat, self.grads = task_tensors(params, self.row_sparse, num_tasks)
        self._views = [[buffer[task] for buffer in self.grads] for task in range(num_tasks)]  # [task][i]
        self._unfilled = [True] * num_tasks  # tasks without a backward yet this step
        self.reached: list[list[bool]] = [[False] * len(params) for _ in range(num_tasks)]
        self._rows: list[list[torch.Tensor | None]] = [[None] * len(params) for _ in range(num_tasks)]

    def take(self, task: int) -> None:
        """Move the backward's ``p.grad`` into the task's buffers and drop it: dense ones in one fused copy (or
        add, for a later micro-batch), tables at their touched rows."""
        first = self._unfilled[task]  # the step's first backward of this task overwrites its buffers: no zeroing pass
        reached = self.reached[task]
        views = self._views[task]
        targets, sources = [], []
        with torch.no_grad():
            for i, param in enumerate(self.params):
                grad = param.grad
                if grad is None:
                    if first:
                        self._clear(task, i)
                    continue
                if self.row_sparse[i]:
                    self._fill_rows(task, i, grad, first)
                else:
                    targets.append(views[i])
                    sources.append(grad)
                reached[i] = True
                param.grad = None
            if targets:
                (torch._foreach_copy_ if first else torch._foreach_add_)(targets, sources)
        self._unfilled[task] = False

    def complete(self) -> None:
        """Zero the buffers of every task that had no backward this step: it contributes nothing."""
        for task in (t for t, unfilled in enumerate(self._unfilled) if unfilled):
            for i in range(len(self.grads)):
                self._clear(task, i)

    def reset(self) -> None:
        """Start the next step: every task's next backward overwrites its buffers."""
        self._unfilled = [True] * len(self._unfilled)
        self.reached = [[False] * len(self.params) for _ in self._unfilled]

    def scale_(self, factor: float) -> None:
        """Multiply every task's gradient by ``factor`` in place (fp16 loss scaling undone): the dense
        parameters in one fused pass, the tables at the rows they hold only."""
        with torch.no_grad():
            dense = [grads for grads, sparse in zip(self.grads, self.row_sparse) if not sparse]
            if dense:
                torch._foreach_mul_(dense, factor)
            for i in (i for i, sparse in enumerate(self.row_sparse) if sparse):
                for task, rows in enumerate(self.held_rows(i)):
                    buffer = self.grads[i][task]
                    if rows is None:
                        buffer.mul_(factor)
                    elif rows.numel():
                        buffer.index_copy_(0, rows, buffer.index_select(0, rows).mul_(factor))

    def held_rows(self, i: int) -> list[torch.Tensor | None]:
        """Per task, the rows of table i outside which its buffer is zero (None: any row may be non-zero)."""
        return [rows[i] for rows in self._rows]

    def hold_rows(self, i: int, rows: torch.Tensor | None) -> None:
        """Say that task 0's buffer of table i now holds values at ``rows`` (None: anywhere), as when a rule
        writes its result there; the next step's first backward then clears just those rows."""
        self._rows[0][i] = rows

    def _fill_rows(self, task: int, i: int, grad: torch.Tensor, first: bool) -> None:
        """Write (or add) a table's gradient into the task's buffer at the rows where it is non-zero."""
        rows = nonzero_rows(grad).nonzero().squeeze(1)
        buffer = self._views[task][i]
        if first:
            self._clear(task, i)
            buffer.index_copy_(0, rows, grad.index_select(0, rows))
        else:
            buffer.index_add_(0, rows, grad.index_select(0, rows))
            rows = torch.cat([self._rows[task][i], rows]).unique()
        self._rows[task][i] = rows

    def _clear(self, task: int, i: int) -> None:
        """Zero a task's buffer of parameter i (for a table, only the rows it holds, when they are known)."""
        rows = self._rows[task][i]
        if rows is None:
            self.grads[i][task].zero_()
        else:
            self.grads[i][task].index_fill_(0, rows, 0.0)
        if self.row_sparse[i]:
            self._rows[task][i] = torch.empty(0, dtype=torch.long, device=self.grads[i].device)
