"""Cross-device negatives: two gloo processes give the single-process loss and gradient of the whole batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multiret.data.batches import TaskBatch
from multiret.model.biencoder import BiEncoder
from multiret.model.encoder import TextEncoder


def _batch():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randint(4, 40, (4, 5), generator=generator)
    passages = torch.randint(4, 40, (8, 7), generator=generator)  # 2 passages per query
    return queries, passages


def _inputs(ids):
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _model(model_dir):
    torch.manual_seed(0)
    return BiEncoder(TextEncoder(model_dir, pooling="mean"), optimizer=torch.optim.AdamW, temperature=0.5)


def _worker(rank, world, port, model_dir, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _model(model_dir)
    queries, passages = _batch()
    half_q, half_p = queries.shape[0] // world, passages.shape[0] // world
    loss = model.task_loss(TaskBatch(
        "qa", _inputs(queries[rank * half_q:(rank + 1) * half_q]), _inputs(passages[rank * half_p:(rank + 1) * half_p])
    ))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]  # the unused BERT pooler has none
    for grad in grads:
        dist.all_reduce(grad)
        grad /= world
    dist.all_reduce(loss.detach())
    if rank == 0:
        torch.save({"loss": loss.detach() / world, "grads": grads}, os.path.join(out_dir, "ddp.pt"))
    dist.destroy_process_group()


def test_all_gathered_negatives_match_the_single_process_batch(tiny_bert_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tiny_bert_dir), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt")
    model = _model(str(tiny_bert_dir))
    queries, passages = _batch()
    loss = model.task_loss(TaskBatch("qa", _inputs(queries), _inputs(passages)))
    loss.backward()
    torch.testing.assert_close(ddp["loss"], loss.detach())
    expected_grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(ddp["grads"]) == len(expected_grads)
    for got, expected in zip(ddp["grads"], expected_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # float32 sums in another order
