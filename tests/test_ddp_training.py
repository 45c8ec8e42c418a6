"""Two CPU processes (gloo) train to the same parameters as one process on the same global batch."""

import pytest
import torch
from helpers import tiny_config
from transformers import AutoModel

from multiret.experiment.run import run


def flat_model(state_dict, prefix="query_encoder.model."):
    return torch.cat([v.flatten().double() for k, v in sorted(state_dict.items()) if k.startswith(prefix)])


@pytest.mark.parametrize("method", ["taco", *(pytest.param(m, marks=pytest.mark.slow)
                                              for m in ("naive", "gradnorm", "pcgrad", "cgd", "uncertainty"))])
def test_two_processes_match_one_process(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, method):
    options = (f"method={method}", "stages=[train]", "trainer.max_steps=3")
    run(tiny_config(tmp_path / "one", tiny_t5_dir, kilt_dir, kilt_tasks, *options))
    run(tiny_config(tmp_path / "two", tiny_t5_dir, kilt_dir, kilt_tasks, *options,
                    "trainer.devices=2", "trainer.strategy=ddp_spawn"))
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=False)
    two = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=False)
    assert one["global_step"] == two["global_step"] == 3
    start = flat_model({f"query_encoder.model.{k}": v for k, v in AutoModel.from_pretrained(tiny_t5_dir).state_dict().items()})
    a, b = flat_model(one["state_dict"]), flat_model(two["state_dict"])
    assert (a - b).norm() / a.norm() <= 1e-5  # float32 sums in another order, nothing more
    assert (a - start).norm() > 1000 * (a - b).norm()  # while training moved the parameters far more
