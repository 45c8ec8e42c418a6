"""How far TACO's bf16 EMA (``method.ema_dtype=bfloat16``) moves the combined gradient from the float32 rule.

    python benchmarks/taco_bf16.py --steps 200        # tiny random T5 on the CPU, random batches

Two TACOs per setting, one with a float32 EMA and one with a bf16 EMA, get the same task
gradients every step (one backward per task); the model steps with their plain mean (AdamW), as
in ``taco_regimes.py``. Prints one JSON object: per β (0.9 and 0.999) and median (``nonzero``, the
default, and ``all``, as published), the relative difference ``‖c_bf16 − c_fp32‖ / ‖c_fp32‖``
of the combined gradient, min / median / max over the steps after the first ``--skip``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch
from step_time import model_path, random_batches
from taco_regimes import built, combined, relative_difference, spread, task_gradients

from multiret.model.biencoder import BiEncoder
from multiret.model.encoder import TextEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--skip", type=int, default=20, help="first steps left out of the figures (the EMA starts at 0)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the published rule's zero-median warnings
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        path, pooling = model_path("tiny-t5", Path(workdir))
        model = BiEncoder(TextEncoder(path, pooling=pooling), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4))
    vocab = model.query_encoder.model.config.vocab_size
    batches = random_batches(vocab, 3, 8, 3, 32, 64, args.steps)
    names = [f"task{t}" for t in range(3)]
    params = [p for p in model.parameters() if p.requires_grad]
    settings = {f"beta={b} median_over={m}": (built({"median_over": m}, b, 2.0, model, names),
                                              built({"median_over": m, "ema_dtype": "bfloat16"}, b, 2.0, model, names))
                for b in (0.9, 0.999) for m in ("nonzero", "all")}
    differences: dict[str, list[float]] = {name: [] for name in settings}
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    for step, batch in enumerate(batches):
        grads = task_gradients(model, batch, params)
        with torch.no_grad():
            for name, (exact, half) in settings.items():
                reference = combined(exact, grads, params)
                difference = relative_difference(combined(half, grads, params), reference)
                if step >= args.skip:
                    differences[name].append(difference)
            for param, grad in zip(params, grads):
                param.grad = grad.mean(0)
        optimizer.step()
    print(json.dumps({"model": "tiny-t5", "steps": args.steps, "skipped": args.skip,
                      "relative_difference": {name: spread(values) for name, values in differences.items()}}))


if __name__ == "__main__":
    main()
