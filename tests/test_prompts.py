"""Prompt ablations: none / text / sentinel token sequences, and the learned per-task soft prompt."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoModel, AutoTokenizer

from multiret.data.batches import TaskBatch
from multiret.data.collator import PromptCollator
from multiret.data.tasks import TaskSpec
from multiret.experiment.run import CONFIG_DIR, run
from multiret.model.biencoder import BiEncoder
from multiret.model.encoder import TextEncoder
from multiret.model.prompt import QueryPrompt
from multiret.testing import build_tiny_t5

from helpers import sweep, tiny_config

PROMPT_DIR = Path(CONFIG_DIR) / "prompt"
QA = TaskSpec(name="qa", train=None, dev=None, prompt="QA", max_query_length=8)


def prompt_config(kind: str, tasks: dict | None = None) -> dict:
    """conf/prompt/<kind>.yaml, with the soft prompt's task interpolations filled in."""
    config = OmegaConf.to_container(OmegaConf.load(PROMPT_DIR / f"{kind}.yaml"))
    if kind == "soft":
        config.update(tasks=list(tasks), task_specs=tasks)
    return config


@pytest.fixture(scope="module")
def colon_t5_dir(tmp_path_factory):
    """A tiny T5 whose word-level vocabulary knows "QA:", so the text prefix is one token."""
    return build_tiny_t5(tmp_path_factory.mktemp("colon-t5"), ["QA: QA w1 w2 w3"], d_model=8, layers=1, heads=2)


@pytest.mark.parametrize(
    "kind,tokens",
    [
        ("none", ["w1", "w2", "</s>"]),
        ("text", ["QA:", "w1", "w2", "</s>"]),
        ("sentinel", ["QA", "<extra_id_1>", "w1", "w2", "</s>"]),
        ("soft", ["w1", "w2", "</s>"]),  # the vectors are added by the model, not the collator
    ],
)
def test_each_prompt_kind_gives_its_token_sequence(colon_t5_dir, kind, tokens):
    tokenizer = AutoTokenizer.from_pretrained(colon_t5_dir)
    prompt = QueryPrompt.from_config(prompt_config(kind, {"qa": {"prompt": "QA"}}))
    prompt.check_tokenizer(tokenizer, "the test tokenizer")
    collator = PromptCollator(tokenizer, prompt.template, max_passage_length=8)
    assert collator.queries(["w1 w2"], QA)["input_ids"][0].tolist() == tokenizer.convert_tokens_to_ids(tokens)
    assert collator.passages(["w1 w2"])["input_ids"][0].tolist() == tokenizer.convert_tokens_to_ids(["w1", "w2", "</s>"])


def test_unknown_kind_and_sentinel_without_sentinel_token_are_refused(tiny_bert_dir):
    with pytest.raises(ValueError, match=r"prompt.kind='hard' is unknown; choose one of none, text, sentinel, soft"):
        QueryPrompt.from_config({"kind": "hard", "template": None})
    with pytest.raises(ValueError, match=r"prompt has unknown key\(s\) \['lenght'\]"):
        QueryPrompt.from_config({"kind": "soft", "lenght": 4})
    with pytest.raises(ValueError, match=r"prompt=sentinel needs the T5 sentinel token\(s\) \['<extra_id_1>'\].*"
                                         r"model.encoder.path=.*use prompt=text"):
        BiEncoder(TextEncoder(str(tiny_bert_dir)), optimizer=torch.optim.AdamW, prompt=prompt_config("sentinel"))


def test_t5_models_default_to_the_sentinel_prompt_and_any_kind_can_be_chosen():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        assert compose("train").model.prompt.kind == "text"
        assert compose("train", overrides=["model=t5_prompted"]).model.prompt.kind == "sentinel"
        assert compose("train", overrides=["model=t5_base_prompted"]).model.prompt.kind == "sentinel"
        soft = compose("train", overrides=["model=t5_prompted", "prompt=soft", "data.task_names=[vital-el]"])
        assert soft.model.prompt.kind == "soft" and list(soft.model.prompt.tasks) == ["vital-el"]
        assert soft.model.prompt.task_specs["vital-el"].prompt == "EL"


def test_prompt_experiment_sweeps_every_prompt_kind():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=vital_prompts"])
    assert sorted(sweep("prompt", "experiment=vital_prompts")) == sorted(p.stem for p in PROMPT_DIR.glob("*.yaml"))
    assert cfg.method._target_.endswith("TACO") and cfg.model.encoder.pooling == "t5_decoder" and "vital" in cfg.tags
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        assert compose("train", overrides=["experiment=vital_prompts", "prompt=soft"]).logger.wandb.name == "prompt-soft-seed13"


def soft_model(model_dir: Path, pooling: str, kilt_tasks: dict) -> BiEncoder:
    torch.manual_seed(0)
    model = BiEncoder(TextEncoder(str(model_dir), pooling=pooling), optimizer=torch.optim.AdamW,
                      prompt=prompt_config("soft", kilt_tasks))
    return model.eval()


ENCODERS = [("tiny_t5_dir", "t5_decoder"), ("tiny_bert_dir", "mean"), ("tiny_bert_dir", "first")]


@pytest.mark.parametrize("fixture,pooling", ENCODERS)
def test_soft_prompt_output_follows_its_own_task_vectors_only(request, kilt_tasks, fixture, pooling):
    model_dir = request.getfixturevalue(fixture)
    model = soft_model(model_dir, pooling, kilt_tasks)
    batch = model_inputs(model, ["w1 w2 w3", "w4"])
    vectors = model.soft_prompt.vectors
    with torch.no_grad():
        before = model.encode_queries(**batch, task="qa")
        passages = model.encode_passages(**batch)
        shift = torch.randn(vectors.shape[1:], generator=torch.Generator().manual_seed(1))  # not constant: LayerNorm would cancel that
        vectors[1] += shift  # the other task's row
        assert torch.equal(model.encode_queries(**batch, task="qa"), before)
        vectors[0, 3] += shift[3]  # one vector of this task's row
        assert not torch.allclose(model.encode_queries(**batch, task="qa"), before)
        assert torch.equal(model.encode_passages(**batch), passages)
        assert torch.equal(passages, model.passage_encoder(**batch))  # passages never get a prefix


def test_soft_prompt_starts_from_the_prompt_word_and_pooling_reads_only_the_text(tiny_bert_dir, kilt_tasks):
    model = soft_model(tiny_bert_dir, "mean", kilt_tasks)
    tokenizer = model.tokenizer
    embeddings = model.query_encoder.input_embeddings().weight
    for row, word in enumerate(("QA", "EL")):
        expected = embeddings[tokenizer.convert_tokens_to_ids(word)].expand(8, -1)
        torch.testing.assert_close(model.soft_prompt.vectors[row], expected)
    batch = model_inputs(model, ["w1 w2 w3", "w4"])
    mask = batch["attention_mask"]
    with torch.no_grad():
        inputs = torch.cat([model.soft_prompt.vectors[1].expand(2, -1, -1), embeddings[batch["input_ids"]]], 1)
        full_mask = torch.cat([torch.ones(2, 8, dtype=mask.dtype), mask], 1)
        hidden = AutoModel.from_pretrained(tiny_bert_dir).eval()(inputs_embeds=inputs, attention_mask=full_mask)[0]
        text = hidden[:, 8:]
        expected = (text * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(model.encode_queries(**batch, task="el"), expected)
        first = BiEncoder(TextEncoder(str(tiny_bert_dir), pooling="first"), optimizer=torch.optim.AdamW,
                          prompt=prompt_config("soft", kilt_tasks)).eval()
        torch.testing.assert_close(first.encode_queries(**batch, task="el"), text[:, 0])  # [CLS], after the prompt


def test_vocabulary_initialisation_draws_ordinary_tokens(tiny_t5_dir, kilt_tasks):
    torch.manual_seed(3)
    config = {**prompt_config("soft", kilt_tasks), "init": "vocab", "length": 4}
    model = BiEncoder(TextEncoder(str(tiny_t5_dir), pooling="t5_decoder"), optimizer=torch.optim.AdamW, prompt=config)
    weight = model.query_encoder.input_embeddings().weight
    special = set(model.tokenizer.all_special_ids)
    for row in model.soft_prompt.vectors:
        for vector in row:
            matches = [i for i in range(len(model.tokenizer)) if torch.equal(weight[i], vector)]
            assert len(matches) == 1 and matches[0] not in special


@pytest.mark.parametrize("fixture,pooling", ENCODERS)
def test_gradients_reach_only_the_active_task_rows(request, kilt_tasks, fixture, pooling):
    model = soft_model(request.getfixturevalue(fixture), pooling, kilt_tasks).train()
    queries = model_inputs(model, ["w1 w2", "w3 w4"])
    passages = model_inputs(model, ["w1 w2 w5", "w9", "w3 w4 w6", "w7"])
    model.task_loss(TaskBatch("el", queries, passages)).backward()
    grad = model.soft_prompt.vectors.grad
    assert torch.count_nonzero(grad[0]) == 0
    assert bool((grad[1].abs().sum(-1) > 0).all())  # every vector of the active task's row learns


def test_soft_prompt_needs_a_known_task(tiny_t5_dir, kilt_tasks):
    model = soft_model(tiny_t5_dir, "t5_decoder", kilt_tasks)
    batch = model_inputs(model, ["w1"])
    with pytest.raises(ValueError, match=r"queries must be encoded with their task"):
        model.encode_queries(**batch)
    with pytest.raises(ValueError, match=r"task 'zsre' has no soft prompt; the model was built for tasks \['qa', 'el'\]"):
        model.encode_queries(**batch, task="zsre")


def test_checkpoint_of_another_task_list_names_the_soft_prompt_mismatch(tiny_t5_dir, kilt_tasks):
    trained = soft_model(tiny_t5_dir, "t5_decoder", kilt_tasks)
    one_task = soft_model(tiny_t5_dir, "t5_decoder", {"qa": kilt_tasks["qa"]})
    with pytest.raises(ValueError, match=r"soft prompts have shape \(2, 8, 32\).*has \(1, 8, 32\) for tasks \['qa'\]"):
        one_task.load_state_dict(trained.state_dict())


def model_inputs(model: BiEncoder, texts: list[str]) -> dict[str, torch.Tensor]:
    encoded = model.tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def test_soft_prompt_with_taco_trains_resumes_bit_for_bit_and_evaluates(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    options = ("prompt=soft", "method=taco", "trainer.max_steps=2", "callbacks.model_checkpoint.every_n_train_steps=1")
    straight = tmp_path / "straight"
    scores = run(tiny_config(straight, tiny_t5_dir, kilt_dir, kilt_tasks, *options))
    resumed = tmp_path / "resumed"
    run(tiny_config(resumed, tiny_t5_dir, kilt_dir, kilt_tasks, *options, "stages=[train]",
                    f"ckpt_path={straight / 'checkpoints' / 'step000001.ckpt'}"))
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 2
    first = torch.load(straight / "checkpoints" / "step000001.ckpt", weights_only=False)
    key = "soft_prompt.vectors"
    assert not torch.equal(first["state_dict"][key], a["state_dict"][key])  # the vectors train
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    ema_a, ema_b = a["callbacks"]["GradientMethod"]["ema_stored"], b["callbacks"]["GradientMethod"]["ema_stored"]
    assert len(ema_a) == len(ema_b) and all(torch.equal(x, y) for x, y in zip(ema_a, ema_b))
    assert set(scores) == {"qa", "el", "average"}
    again = run(tiny_config(tmp_path / "again", tiny_t5_dir, kilt_dir, kilt_tasks, "prompt=soft",
                            "stages=[index,evaluate]", f"ckpt_path={straight / 'checkpoints' / 'last.ckpt'}"))
    for task, metrics in scores.items():
        assert again[task] == pytest.approx(metrics)
