"""`multiret compare` on two tiny sweeps: seeds averaged, task-specific column, deltas, mismatches named.

The sweeps log to CSV and to W&B in offline mode (really written, under the test's temporary
folder), so the same runs are read from our run folders and from W&B's offline run folders.
"""

import csv
import json
import re
import shutil
import statistics

import pytest
import wandb
from wandb.apis.public import Run
from wandb.apis.public.summary import HTTPSummary

from multiret.cli import main as cli
from multiret.experiment.run import run
from multiret.report import wandb_store
from multiret.report.compare import load_runs, load_wandb_api
from multiret.report.curves import WANDB_STEP

from helpers import tiny_config


def offline_wandb(env: pytest.MonkeyPatch, home) -> None:
    """W&B in offline mode, with its own files under the test's temporary folder."""
    env.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        env.setenv(name, str(home))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, tiny_t5_dir, kilt_dir):
    tasks = {
        "qa": {"train": "qa-train.jsonl", "dev": "qa-dev.jsonl", "prompt": "QA", "max_query_length": 8},
        "el": {"train": "el-train.jsonl", "dev": "el-dev.jsonl", "prompt": "EL", "max_query_length": 8},
    }
    root = tmp_path_factory.mktemp("sweeps")
    wandb_home = tmp_path_factory.mktemp("wandb_home")
    loggers = ("logger=default", "logger.wandb.offline=true")
    with pytest.MonkeyPatch.context() as env:
        offline_wandb(env, wandb_home)
        for method, seed in (("naive", 1), ("naive", 2), ("taco", 1)):
            run(tiny_config(root / "multi" / f"{method}-{seed}", tiny_t5_dir, kilt_dir, tasks, *loggers, f"method={method}",
                            f"seed={seed}", "trainer.max_steps=2", "task_name=mt"))
        for task in ("qa", "el"):
            run(tiny_config(root / "specific" / task, tiny_t5_dir, kilt_dir, tasks, *loggers, f"data.task_names=[{task}]",
                            "job_type=task-specific", "trainer.max_steps=2", "data.batch_size=4"))
        wandb.teardown()  # finish() may return before the offline files are fully written
    return root


def metric(folder, task, name="Rprec"):
    return json.loads((folder / "eval" / "metrics.json").read_text())[task][name]


def test_table_averages_seeds_and_compares_with_task_specific(sweeps, tmp_path, capsys):
    assert cli(["compare", str(sweeps / "multi"), str(sweeps / "specific"), "--out", str(tmp_path), "--metrics", "Rprec"]) == 0
    text = (tmp_path / "comparison.md").read_text()
    assert text.startswith("5 runs")
    naive = [metric(sweeps / "multi" / f"naive-{s}", "qa") for s in (1, 2)]
    expected = f"{statistics.fmean(naive):.3f} ± {statistics.stdev(naive):.3f}"
    qa_row = next(line for line in text.splitlines() if line.startswith("| qa |"))
    header = next(line for line in text.splitlines() if line.startswith("| task |")).strip("| ").split(" | ")
    assert header == ["task", "mt: naive", "mt: taco", "task-specific", "Δ mt: naive vs task-specific", "Δ mt: taco vs task-specific"]
    assert qa_row.split(" | ")[1] == expected
    delta = metric(sweeps / 'multi' / 'taco-1', 'qa') - metric(sweeps / 'specific' / 'qa', 'qa')
    assert qa_row.strip(" |").split(" | ")[5] == f"{delta:+.3f}"
    assert (tmp_path / "comparison-Rprec.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_over_other_task_sets_are_named(sweeps, tmp_path, tiny_t5_dir, kilt_dir, monkeypatch, capsys):
    odd = tmp_path / "odd"
    tasks = {"qa": {"train": "qa-train.jsonl", "dev": "qa-dev.jsonl", "prompt": "QA", "max_query_length": 8}}
    offline_wandb(monkeypatch, tmp_path)
    run(tiny_config(odd, tiny_t5_dir, kilt_dir, tasks, "logger=default", "logger.wandb.offline=true",
                    "data.task_names=[qa]", "trainer.max_steps=1"))
    wandb.teardown()
    capsys.readouterr()
    assert cli(["compare", str(sweeps / "multi"), str(odd), "--out", str(tmp_path / "out")]) == 2
    assert re.fullmatch(r"multiret compare: error: multitask runs with other tasks than \['qa', 'el'\].*odd \(qa\)\n",
                        capsys.readouterr().err)
    assert cli(["compare", *map(str, wandb_folders(sweeps / "multi")), str(odd / "wandb"), "--out", str(tmp_path / "out")]) == 2
    assert re.search(r"multitask runs with other tasks than \['qa', 'el'\].*odd/wandb/offline-run-\S+ \(qa\)",
                     capsys.readouterr().err)


def wandb_folders(root):
    return sorted(p for p in root.rglob("offline-run-*") if not p.is_symlink())


def content(run):
    return run.label, run.job_type, run.tasks, json.dumps(run.metrics, sort_keys=True)


def test_wandb_offline_folders_give_the_same_runs_and_table(sweeps, tmp_path):
    folders = wandb_folders(sweeps)
    assert len(folders) == 5 and all(not (f / "files" / "wandb-summary.json").exists() for f in folders)  # only the .wandb file
    from_folders = load_runs([sweeps / "multi", sweeps / "specific"])
    from_wandb = load_runs(folders)
    assert len(from_folders) == 5  # each run once: the W&B folder inside a run folder is that run
    assert all("offline-run-" in r.source for r in from_wandb)
    assert sorted(map(content, from_wandb)) == sorted(map(content, from_folders))  # metrics bit-equal to eval/metrics.json
    assert cli(["compare", str(sweeps / "multi"), str(sweeps / "specific"), "--out", str(tmp_path / "ours")]) == 0
    assert cli(["compare", *map(str, folders), "--out", str(tmp_path / "wandb")]) == 0
    assert (tmp_path / "wandb" / "comparison.md").read_text() == (tmp_path / "ours" / "comparison.md").read_text()


def test_group_keeps_those_w_and_b_groups(sweeps):
    assert {r.label for r in load_runs([sweeps], groups=["mt"])} == {"mt: naive", "mt: taco"}
    assert len(load_runs(wandb_folders(sweeps), groups=["mt"])) == 3
    assert len(load_runs(wandb_folders(sweeps), groups=["mt", "train"])) == 5  # task-specific runs: group=task_name=train
    with pytest.raises(ValueError, match=r"in groups \['nope'\]"):
        load_runs([sweeps], groups=["nope"])


def api_run(folder, drop_prefix: str | None = None) -> Run:
    """A real ``wandb.apis.public.Run`` built offline from the attributes W&B's server sends for this logged run.

    The server sends config as JSON of ``{key: {"value": ..., "desc": ...}}`` (with W&B's own
    ``_wandb`` key) and the summary as JSON; ``Run`` unpacks them as it does for ``Api().runs``.
    """
    logged = wandb_store.read_run(wandb_store.run_file(folder))
    config = {key: {"value": value, "desc": None} for key, value in logged.config.items()}
    config["_wandb"] = {"value": {"cli_version": wandb.__version__}, "desc": None}
    summary = {k: v for k, v in logged.summary.items() if drop_prefix is None or not k.startswith(drop_prefix)}
    run_id = folder.name.rsplit("-", 1)[-1]
    attrs = {"id": f"storage-{run_id}", "name": run_id, "displayName": run_id, "state": "finished", "group": logged.group,
             "jobType": logged.job_type, "config": json.dumps(config), "summaryMetrics": json.dumps(summary)}
    return Run(None, "me", "multiret", run_id, attrs=attrs)


def with_history(folder, scans: list, drop_prefix: str | None = None) -> Run:
    """:func:`api_run` whose ``scan_history`` sends the rows W&B's server would: the run folder's CSV rows holding every
    asked key, with the step Lightning's W&B logger adds (each call noted in ``scans``)."""
    api = api_run(folder, drop_prefix)
    run_folder = folder.parent.parent

    def scan_history(keys):
        scans.append((run_folder.name, keys))
        paths = sorted(run_folder.glob("csv/version_*/metrics.csv"))
        rows = [row for path in paths for row in csv.DictReader(path.read_text().splitlines())]
        return [{WANDB_STEP: int(row["step"]), **{k: float(row[k]) for k in keys[1:]}} for row in rows
                if all(row.get(k) for k in keys[1:])]

    api.scan_history = scan_history
    return api


def test_wandb_api_runs_become_the_same_table(sweeps, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # where Run keeps its downloads
    api_runs = [with_history(f, []) for f in wandb_folders(sweeps)]
    unevaluated = api_run(wandb_folders(sweeps)[0], drop_prefix="dev/")
    assert isinstance(api_runs[0].summary, HTTPSummary) and "_wandb" not in api_runs[0].config
    queries = []

    class FakeApi:
        def runs(self, path, filters):
            queries.append((path, filters))
            return [*api_runs, unevaluated]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    assert cli(["compare", "--wandb", "me/multiret", "--out", str(tmp_path / "api")]) == 0
    assert cli(["compare", str(sweeps), "--out", str(tmp_path / "ours")]) == 0
    assert (tmp_path / "api" / "comparison.md").read_text() == (tmp_path / "ours" / "comparison.md").read_text()
    assert queries == [("me/multiret", {})]
    load_wandb_api("me/multiret", groups=["mt", "train"])
    assert queries[-1] == ("me/multiret", {"group": {"$in": ["mt", "train"]}})


def test_wandb_file_reader_joins_records_across_blocks_and_refuses_damage(tmp_path, monkeypatch, caplog):
    offline_wandb(monkeypatch, tmp_path)
    big = "x" * 70_000  # a config record over two 32 KiB blocks: first, middle and last chunks
    with wandb.init(dir=tmp_path, project="p", group="g", job_type="t", config={"big": big, "n": {"k": 1}}) as live:
        for step in range(3):
            live.log({"dev/qa/Rprec": step / 4})
    wandb.teardown()  # finish() may return before the offline file is fully written
    (folder,) = wandb_folders(tmp_path)
    path = wandb_store.run_file(folder)
    logged = wandb_store.read_run(path)
    assert logged.config["big"] == big and logged.config["n"] == {"k": 1}
    assert logged.summary["dev/qa/Rprec"] == 0.5 and (logged.group, logged.job_type, logged.exited) == ("g", "t", True)
    damaged = tmp_path / "damaged.wandb"
    data = bytearray(path.read_bytes())
    data[40_000] ^= 0xFF
    damaged.write_bytes(data)
    with pytest.raises(ValueError, match="damaged.wandb: corrupt record at byte"):
        wandb_store.read_run(damaged)
    shutil.copy(path, damaged)
    with damaged.open("r+b") as f:
        f.truncate(path.stat().st_size - 3)  # a run still writing: its last record is incomplete
    cut = wandb_store.read_run(damaged)
    assert cut.config["big"] == big and not cut.exited
    unfinished = tmp_path / "cut" / "wandb" / "offline-run-20260101_000000-cut"
    unfinished.mkdir(parents=True)
    shutil.copy(damaged, unfinished / "run-cut.wandb")
    with pytest.raises(ValueError, match="no evaluated run"):
        load_runs([tmp_path / "cut"])
    assert "without an exit record" in caplog.text


def test_validation_curves_average_each_arm_over_seeds(sweeps, tmp_path):
    from multiret.eval.curves import run_curve
    from multiret.report.curves import arm_curves

    assert cli(["compare", str(sweeps / "multi"), "--out", str(tmp_path), "--metrics", "Rprec"]) == 0
    assert (tmp_path / "curves-Rprec.png").read_bytes()[:4] == b"\x89PNG"
    curves = [run_curve(sweeps / "multi" / f"naive-{seed}", "Rprec") for seed in (1, 2)]
    assert [sorted(curve) for curve in curves] == [[0, 2], [0, 2]]  # step 0 and the last step
    values = [curve[2] for curve in curves]
    assert arm_curves({"naive": curves})["naive"][1] == (2, pytest.approx(statistics.fmean(values)),
                                                          pytest.approx(statistics.stdev(values)))


def test_wandb_api_runs_bring_their_validation_curves(sweeps, tmp_path, monkeypatch):
    """The history rows W&B's server sends (here: the run folder's CSV rows with the step Lightning's logger adds) become
    the same curves as the run folder's own CSV logs."""
    from multiret.eval.curves import run_curve
    from multiret.report.compare import validation_curve

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    scans = []
    folders = wandb_folders(sweeps / "multi")
    api_runs = [with_history(f, scans) for f in folders] + [with_history(wandb_folders(sweeps / "specific")[0], scans, "val/")]
    monkeypatch.setattr(wandb, "Api", lambda: type("FakeApi", (), {"runs": lambda self, path, filters: api_runs})())
    runs = load_wandb_api("me/multiret")
    for folder, loaded in zip(folders, runs):
        expected = run_curve(folder.parent.parent, "Rprec")
        assert sorted(expected) == [0, 2] and validation_curve(loaded, "Rprec") == expected
    assert validation_curve(runs[-1], "Rprec") == {} and len(scans) == len(folders)  # no val/ key in its summary: no scan
    assert scans[0][1][:1] == [WANDB_STEP] and "val/average/Rprec" in scans[0][1] and "val/qa/Rprec" not in scans[0][1]
    assert cli(["compare", "--wandb", "me/multiret", "--out", str(tmp_path / "api"), "--metrics", "Rprec"]) == 0
    assert (tmp_path / "api" / "curves-Rprec.png").read_bytes()[:4] == b"\x89PNG"
