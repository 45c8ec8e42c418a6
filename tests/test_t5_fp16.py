"""The fp16 rescaling of T5 keeps the pooled embeddings (up to the RMS norm's epsilon)."""

import pytest
import torch
from transformers import T5Config, T5Model

from multiret.cli import main as cli
from multiret.model.encoder import TextEncoder
from multiret.model.t5_fp16 import rescale_t5_for_fp16


def pooled(path, ids, eps=None):
    encoder = TextEncoder(str(path), pooling="t5_decoder").eval()
    if eps is not None:
        for module in encoder.modules():
            if hasattr(module, "variance_epsilon"):  # T5's RMS norms
                module.variance_epsilon = eps
    with torch.no_grad():
        return encoder(ids, (ids != 0).long())


def relative_difference(a, b):
    return float((a - b).norm() / a.norm())


def test_rescaled_t5_gives_the_same_pooled_embeddings(tiny_t5_dir, tmp_path):
    target = tmp_path / "t5-fp16"
    assert cli(["convert", "t5-fp16", str(tiny_t5_dir), str(target)]) == 0
    ids = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]])
    # Without the norms' epsilon the rescaled network is the same function: only float32 rounding
    # remains (2e-7 measured).
    assert relative_difference(pooled(tiny_t5_dir, ids, eps=0.0), pooled(target, ids, eps=0.0)) < 1e-5
    # With T5's eps=1e-6: the residual stream is 100× smaller, so eps weighs 1e4× more against
    # mean(x²) (about 1e-4 in this random model, far larger in pre-trained T5): 0.4% measured.
    assert relative_difference(pooled(tiny_t5_dir, ids), pooled(target, ids)) < 1e-2
    old, new = T5Model.from_pretrained(tiny_t5_dir), T5Model.from_pretrained(target)
    torch.testing.assert_close(new.shared.weight * 100, old.shared.weight)
    old_ff, new_ff = old.encoder.block[0].layer[1].DenseReluDense, new.encoder.block[0].layer[1].DenseReluDense
    torch.testing.assert_close(new_ff.wi.weight * 10, old_ff.wi.weight)
    torch.testing.assert_close(new.decoder.block[0].layer[1].EncDecAttention.o.weight * 100,
                               old.decoder.block[0].layer[1].EncDecAttention.o.weight)


def test_gated_gelu_t5_is_refused():
    model = T5Model(T5Config(vocab_size=16, d_model=8, d_kv=2, d_ff=16, num_layers=1, num_heads=4,
                             feed_forward_proj="gated-gelu"))
    with pytest.raises(ValueError, match="only ReLU T5"):
        rescale_t5_for_fp16(model)


def test_existing_target_is_not_overwritten(tiny_t5_dir, tmp_path, capsys):
    assert cli(["convert", "t5-fp16", str(tiny_t5_dir), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multiret convert: error: ") and "choose a new output folder" in err
