"""The scale and GPU benchmarks run end to end at a tiny size and report what docs/benchmarks.md quotes."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE_KEYS = {"seconds", "passages_per_s", "peak_anon_mib", "start_anon_mib"}


def test_kilt_scale_reports_every_stage_and_fits_growth(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import kilt_scale

    out = tmp_path / "small.json"
    kilt_scale.main(["--passages", "2000", "--queries", "20", "--workers", "2", "--factory", "IVF16,PQ8np",
                     "--workdir", str(tmp_path / "run"), "--out", str(out)])
    report = json.loads(out.read_text())
    expected = {"generate", "prepare:passages", "prepare:bm25", "encode", "ivfpq_train_add", "ivfpq_search", "mining",
                *(f"prepare:task:{t}" for t in kilt_scale.TASKS), *(f"prepare:negatives:{t}" for t in kilt_scale.TASKS)}
    assert set(report["stages"]) == expected and report["passages"] == 2000
    assert all(STAGE_KEYS <= set(stage) and stage["peak_anon_mib"] > 0 for stage in report["stages"].values())
    assert report["stages"]["mining"]["queries"] == 100 and report["stages"]["generate"]["queries"] == 110
    bigger = dict(report, passages=4000, stages={k: dict(v, seconds=2 * v["seconds"]) for k, v in report["stages"].items()})
    (tmp_path / "bigger.json").write_text(json.dumps(bigger))
    fitted = kilt_scale.fit([out, tmp_path / "bigger.json"])
    assert fitted["sizes"] == [2000, 4000] and fitted["stages"]["prepare:bm25"]["seconds_exponent"] == 1.0
    assert fitted["stages"]["encode"]["peak_anon_mib_exponent"] == 0.0


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed (the bm25 extra)")
def test_bm25_scale_times_every_method_on_the_same_queries_and_projects(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bm25_scale

    out = tmp_path / "small.json"
    bm25_scale.main(["--passages", "3000", "--queries", "4", "--types", "100000", "--workdir", str(tmp_path / "run"),
                     "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["ms_per_query"]) == set(report["kilt_core_hours"]) == set(bm25_scale.METHODS)
    assert all(set(by_task) == set(bm25_scale.TASKS) for by_w in report["ms_per_query"].values() for by_task in by_w.values())
    assert all(a == {"identical_queries": 1.0, "mean_overlap": 1.0} for a in report["agreement_with_numpy"]["numba"].values())
    assert report["corpus"]["index"]["passages"] == 3000 and 0 < report["corpus"]["heaps_exponent"] < 1
    bigger = dict(report, passages=6000, kilt_core_hours={m: {w: 2 * h for w, h in by_w.items()}
                                                          for m, by_w in report["kilt_core_hours"].items()})
    (tmp_path / "bigger.json").write_text(json.dumps(bigger))
    fitted = bm25_scale.fit([out, tmp_path / "bigger.json"])
    assert fitted["passages"] == [3000, 6000] and fitted["methods"]["numba"]["1"]["growth_exponent"] == 1.0


def test_ivfpq_factory_scales_the_configured_index_to_the_corpus(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import kilt_scale

    assert kilt_scale.ivfpq_factory(500_000, 32) == ("IVF512,PQ8", 15_625, "nprobe=128")
    assert kilt_scale.ivfpq_factory(2_000, 32) == ("IVF32,PQ8", 977, "nprobe=32")


def test_gpu_check_dry_run_runs_every_part_on_the_cpu(tmp_path):
    out = tmp_path / "dry.json"
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out), "--steps", "1", "--warmup", "1",
                    "--rounds", "1", "--reference-steps", "1"], check=True, env=env, capture_output=True, text=True)
    report = json.loads(out.read_text())
    methods = {p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")}
    assert set(report["median_step_seconds"]) == set(report["ratio_to_naive"]) == set(report["peak_gpu_mib"]) == methods
    assert report["reference_taco"]["steps"] == 1 and report["reference_taco"]["ratio_to_taco"] > 0
    assert report["encode_and_search"]["passages"] == 2000 and report["encode_and_search"]["on_gpu"] is False
