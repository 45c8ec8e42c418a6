"""Every experiment composes, and every group option instantiates what it names."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import OmegaConf

from multiret.experiment.run import CONFIG_DIR

from helpers import METHODS, sweep

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def _compose(*overrides, config_name="train"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name, overrides=["paths.output_dir=/tmp/unused", *overrides])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_resolves(experiment, tmp_path):
    (tmp_path / "prepare_report.json").write_text('{"prepared_tasks": ["nq", "fever"]}')  # data=kilt reads its tasks there
    cfg = _compose(f"experiment={experiment}", *([f"data.root={tmp_path}"] if experiment.startswith("kilt") else []))
    assert cfg.task_name == experiment
    assert cfg.data.task_names and set(cfg.data.task_names) <= set(cfg.data.tasks)
    for node in (cfg.data, cfg.model, cfg.model.encoder, cfg.method, cfg.trainer, cfg.optimizer, cfg.scheduler):
        assert callable(get_object(node._target_))
    assert cfg.trainer.max_steps > 0


STUDY_ARMS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment" / "vital_study").glob("*.yaml"))


@pytest.mark.parametrize("arm", STUDY_ARMS)
def test_the_vital_study_chosen_settings_compose_as_its_final_runs_use_them(arm):
    """`multiret study select` wrote them; the final runs read them with the study's per-stage settings added."""
    cfg = _compose(f"experiment=vital_study/{arm}", "seed=14", "data.eval_split=test", "data.corpus_max_pages=null")
    assert cfg.task_name == arm and cfg.data.corpus_max_pages is None and cfg.index.precision == "bfloat16"
    assert cfg.optimizer.lr > 0 and cfg.trainer.max_steps == 50
    assert cfg.job_type == ("task-specific" if arm == "task_specific" else "multitask")


GROUPS = ["method", "model", "prompt", "optimizer", "scheduler", "trainer", "index", "logger", "callbacks", "data", "debug"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_a_group_composes(group):
    for option in sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")):
        cfg = _compose(f"{group}={option}", "model.encoder.path=/models/t5", "data.root=/data", "data.corpus=c.tsv",
                       "data.tasks={}", "data.task_names=[]")
        node = cfg.get(group)
        target = node.get("_target_") if hasattr(node, "get") else None
        if target:
            assert callable(get_object(target))


def test_task_specific_experiment_sweeps_one_task_per_job():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=vital_task_specific"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["data.task_names"] == "[vital-qa],[vital-el],[vital-clue]"


def test_a_missing_required_setting_is_named_before_any_work():
    from multiret.experiment.run import validate

    with pytest.raises(ValueError, match=r"required setting\(s\) not given: model.encoder.path"):
        validate(_compose("model=t5_prompted"))


def test_slurm_launcher_preset_follows_the_trainer():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "experiment=vital_methods", "trainer=ddp",
                                          "trainer.num_nodes=2"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.nodes == 2 and cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node


@pytest.mark.parametrize("method", ["pcgrad", "taco", "taco_published"])
def test_a_seed_sweep_reaches_the_methods_own_randomness(method):
    """`seed=13,14,15` must vary PCGrad's projection order and TACO's stochastic rounding, not only the data order."""
    methods = [get_object(cfg.method._target_)(**{k: v for k, v in cfg.method.items() if k != "_target_"})
               for cfg in (_compose(f"method={method}", f"seed={seed}") for seed in (13, 14))]
    seeds = {m.ema.seed if hasattr(m, "ema") else m.seed for m in methods}  # TACO's randomness is its EMA's rounding
    assert seeds == {13, 14}


def test_every_method_with_a_seed_takes_the_run_seed():
    """A method's own randomness follows `seed=...` (so `seed: 13,14,15` sweeps it); at least PCGrad and TACO have one."""
    seeded = {method for method in METHODS if "seed" in _compose(f"method={method}").method}
    assert {"pcgrad", "taco", "taco_published"} <= seeded
    for method in seeded:
        assert _compose(f"method={method}", "seed=14").method.seed == 14


@pytest.mark.parametrize("experiment", ["vital_methods", "kilt_methods"])
def test_method_sweeps_take_every_method_but_the_published_ablation(experiment):
    assert sorted(sweep("method", f"experiment={experiment}")) == [m for m in METHODS if m != "taco_published"]
    assert sweep("seed", f"experiment={experiment}") == ["13", "14", "15"]


def test_the_default_logger_is_the_csv_and_wandb_loggers_together():
    default, csv, wandb = (_compose(f"logger={name}").logger for name in ("default", "csv", "wandb"))
    assert default == {**csv, **wandb} and set(default) == {"csv", "wandb"}


def test_the_model_configs_share_the_biencoder_base():
    base = _compose("model=biencoder", "model.encoder.path=x").model
    for model in ("minilm", "t5_prompted", "t5_base_prompted"):
        cfg = _compose(f"model={model}", "model.encoder.path=x").model
        assert set(cfg) == set(base) and cfg._target_ == base._target_ and cfg.optimizer == base.optimizer


def test_the_episodes_root_config_is_the_train_config_plus_its_settings():
    train, episodes = _compose(), _compose(config_name="episodes")
    assert "episodes" not in train and episodes.episodes == {"count": 4, "mine_depth": 110, "mine_top_k": 64, "evaluate": "all"}
    assert OmegaConf.masked_copy(episodes, [k for k in episodes if k != "episodes"]) == train


def test_an_experiment_changes_the_episodes_settings():
    settings = _compose("experiment=vital_ance", config_name="episodes").episodes
    assert (settings.count, settings.mine_depth, settings.mine_top_k) == (4, 40, 30)
    assert _compose("experiment=vital_ance", "episodes.count=2", config_name="episodes").episodes.count == 2


def test_every_config_key_has_a_comment():
    """The house rule: every key on its line with a comment (YAML comments, so read from the text)."""
    for path in sorted(Path(CONFIG_DIR).rglob("*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            entry = line.strip()
            if entry and not entry.startswith(("#", "- ")) and entry != "defaults:":
                assert "  # " in line, f"{path}:{number}: a key without a one-line comment: {entry}"


@pytest.mark.parametrize("method", METHODS)
def test_a_method_is_named_by_its_yaml_file_in_its_config_checkpoints_and_logs(method):
    """The one id: `method=<file>` builds a callback whose name (the checkpoint's entry, the resume check, log keys) is `<file>`."""
    from hydra.utils import instantiate

    cfg = _compose(f"method={method}")
    assert cfg.method.name == method
    callback = instantiate(cfg.method)
    assert callback.name == method
