"""The pilot's plateau rule (experiments/vital_study.sh --pilot) on hand curves and on a CSV log."""

import csv

from multiret.experiment.plateau import main, plateau_step


def test_the_plateau_is_the_first_step_from_which_every_score_is_near_the_best():
    assert plateau_step({0: 0.50, 10: 0.80, 20: 0.850, 30: 0.852, 40: 0.851}) == 20
    assert plateau_step({0: 0.50, 10: 0.85, 20: 0.80, 30: 0.85, 40: 0.85}) == 30  # a dip restarts it
    assert plateau_step({0: 0.5, 10: 0.6, 20: 0.7, 30: 0.8, 40: 0.9}) is None  # still rising in its last quarter
    assert plateau_step({0: 0.5, 10: 0.9, 20: 0.7, 30: 0.7, 40: 0.7}) is None  # fell off its best
    assert plateau_step({}) is None


def test_the_pilot_reads_the_runs_csv_log(tmp_path, capsys):
    log = tmp_path / "csv" / "version_0"
    log.mkdir(parents=True)
    with open(log / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["step", "val/average/Rprec", "train/loss"])
        writer.writeheader()
        for step, score in ((0, 0.5), (20, 0.8), (40, 0.83), (60, 0.832), (80, 0.83)):
            writer.writerow({"step": step, "val/average/Rprec": score})
            writer.writerow({"step": step, "train/loss": 1.0})
    assert main([str(tmp_path)]) == 0
    assert "plateau at step 40" in capsys.readouterr().out
    assert main([str(tmp_path), "--tolerance", "0.001"]) == 1  # step 80 is 0.002 below the best
    assert "not plateaued" in capsys.readouterr().out
