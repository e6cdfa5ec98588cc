"""The compare wrapper's iterative baseline rows: flags refused before anything runs, the rows a
tiny study gets (flat and warm starts, scored like the runs), and their return with --summarize."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycho_torch import baseline
from ptycho_torch.metrics import score_objects
from ptycho_torch.npz_data import load_npz
from scripts.studies import grid_lines_compare_wrapper as wrapper
from tests.helpers import TINY_WRAPPER_ARGV


def table(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics_table.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def unscored_point(finite: bool, seconds: float) -> dict:
    """One iteration count's record of an iterative reconstruction, its scores all undefined."""
    metrics = {channel: dict.fromkeys(("ssim", "psnr", "mae", "frc50")) for channel in ("amplitude", "phase")}
    return {"metrics": {"mean": metrics}, "finite": finite, "seconds": seconds}


@pytest.mark.parametrize("argv, named", [
    (["--baseline", "0"], "--baseline: expected comma-separated iteration counts from 1 to 100000"),
    (["--baseline", "100001"], "--baseline: expected comma-separated iteration counts from 1 to 100000"),
    (["--baseline", "50,99999999999"], "--baseline: expected comma-separated iteration counts from 1 to 100000"),
    (["--baseline", "9" * 5000], "--baseline: expected comma-separated iteration counts from 1 to 100000"),
    (["--baseline", "fifty"], "--baseline: expected comma-separated iteration counts from 1 to 100000"),
    (["--baseline", "\u00b2"], "--baseline: expected comma-separated iteration counts from 1 to 100000"),  # isdigit, not int
    (["--baseline", "5,5"], "an iteration count is given twice"),
    (["--baseline", ""], "--baseline: expected"),
    (["--baseline-init", "pinn"], "--baseline-init: give --baseline"),
    (["--baseline", "5", "--baseline-init", "warm"], "--baseline-init: invalid choice"),
    (["--baseline", "5", "--sweep", "data-seed=0,1"], "several datasets"),
    (["--baseline", "5", "--emit-commands"], "--emit-commands writes runner commands only"),
], ids=["zero", "past-the-most", "far-past-the-most", "5000-digits", "word", "superscript", "twice", "empty", "init-alone", "init-unknown", "two-datasets", "emit"])
def test_bad_baseline_flags_are_refused_before_any_run(tmp_path, capsys, argv, named):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as stopped:
        wrapper.main([*TINY_WRAPPER_ARGV, "--architectures", "cnn", *argv, "--output-dir", str(out)])
    assert stopped.value.code == 2 and named in capsys.readouterr().err
    assert not out.exists()


def test_the_fewest_and_the_most_iterations_documented_are_accepted(monkeypatch):
    # --baseline takes counts from 1 to 100000 (MAX_ITERATIONS): both ends are valid, engine installed or not
    monkeypatch.setattr(baseline, "engine", lambda: None)
    _, ns = wrapper.parse_study([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--baseline", "1,100000", "--dry-run"])
    assert ns.baseline == (1, 100_000)


def test_without_the_engine_installed_the_baseline_is_refused_with_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cdtools", None)  # import cdtools now raises ImportError
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as stopped:
        wrapper.main([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--baseline", "5", "--output-dir", str(out)])
    assert stopped.value.code == 2
    assert 'pip install -e ".[baselines]"' in capsys.readouterr().err and not out.exists()


def test_a_study_with_a_baseline_gets_flat_and_warm_rows_scored_like_its_runs(tmp_path, capsys):
    pytest.importorskip("cdtools", reason='the iterative baseline engine is not installed (pip install -e ".[baselines]")')
    out = tmp_path / "study"
    study = [*TINY_WRAPPER_ARGV, "--n-test-images", "2", "--architectures", "cnn", "--sweep", "torch-gridsize=1,2"]
    status = wrapper.main([*study, "--baseline", "2,5", "--baseline-init", "pinn", "--output-dir", str(out)])
    assert status in (0, 3)  # 3: a tiny run may collapse
    printed = capsys.readouterr()
    rows = table(out)
    runs = [r for r in rows if r["row"] == "run"]
    baselines = [r for r in rows if r["row"] == "baseline"]
    warm = [f"pinn:{r['cell']}" for r in runs if r["status"] == "ok"]  # no warm start from a collapsed run
    assert all(f"run runs/{r['cell']} has status {r['status']}" in printed.err for r in runs if r["status"] != "ok")
    starts = ["flat", *warm]
    assert [(r["init"], int(r["iterations"])) for r in baselines] == [(s, k) for s in starts for k in (2, 5)]
    assert all(f"iterative 5 it. from {s}" in printed.out for s in starts)
    for run in runs:  # every run row reports its training time and a warm inference per scan
        timing = json.loads((out / "runs" / run["cell"] / "timing.json").read_text())
        assert timing["test_objects"] == 2 and timing["inference_seconds"] > 0
        assert float(run["seconds_per_scan"]) == pytest.approx(timing["inference_seconds"] / 2)
        assert float(run["train_seconds"]) == pytest.approx(timing["fit_seconds"])
    record = json.loads((out / "baseline" / "baseline.json").read_text())
    target = record["target_phase_ssim"]
    assert list(record["threads"]) == starts  # each start's thread counts, from its first iteration
    assert all(counts[0]["iteration"] == 0 and counts[0]["threads"] >= 1 for counts in record["threads"].values())
    flat5 = next(r for r in baselines if r["init"] == "flat" and r["iterations"] == "5")
    assert float(flat5["phase_ssim"]) == pytest.approx(target)
    test_data = load_npz(out / "data" / "test.npz", "test")
    with np.load(out / "baseline" / "recon_flat.npz") as saved:  # the scores are our scoring of these objects
        scores = score_objects(saved["recon"], test_data.YY_ground_truth)["mean"]
    assert float(flat5["amplitude_ssim"]) == pytest.approx(scores["amplitude"]["ssim"])
    assert float(flat5["phase_frc50"]) == pytest.approx(scores["phase"]["frc50"])
    for r in baselines:
        assert float(r["seconds"]) > 0 and float(r["seconds_per_scan"]) == pytest.approx(float(r["seconds"]) / 2)
        if r["init"] == "flat":
            continue
        five = next(b for b in baselines if b["init"] == r["init"] and b["iterations"] == "5")
        if r["target_iterations"]:  # reached: no later than where it shows, and sooner in seconds
            assert float(five["phase_ssim"]) >= target or int(r["target_iterations"]) < 5
            assert float(r["target_seconds_per_scan"]) <= float(five["seconds_per_scan"]) + 1e-9
        else:  # not reached: the last count is below the target
            assert float(five["phase_ssim"]) < target and r["target_seconds_per_scan"] == ""
    assert (out / "comparison.png").is_file()
    before = (out / "metrics_table.csv").read_text()
    assert wrapper.main([*study, "--summarize", "--output-dir", str(out)]) in (0, 3)
    assert (out / "metrics_table.csv").read_text() == before  # --summarize reads the baseline rows back
    assert wrapper.main([*study, "--output-dir", str(out)]) in (0, 3)  # run again without --baseline
    assert not (out / "baseline").exists() and {r["row"] for r in table(out)} == {"run", "mean", "std"}


def test_with_the_users_files_a_swept_data_setting_is_still_one_dataset(tmp_path, capsys):
    files = []
    for split in ("train", "test"):
        files.append(tmp_path / f"{split}.npz")
        files[-1].write_bytes(b"")  # the dry run resolves configs only
    argv = [*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--train-npz", str(files[0]), "--test-npz", str(files[1])]
    study, _ = wrapper.parse_study([*argv, "--sweep", "torch-learning-rate=0.01,0.02", "--output-dir", str(tmp_path)])
    assert len(study.cells) == 2 and wrapper._one_dataset(study)
    with pytest.raises(SystemExit) as refused:  # the data setting cannot act on the files: the same run twice
        wrapper.parse_study([*argv, "--sweep", "data-seed=0,1", "--output-dir", str(tmp_path / "out")])
    assert refused.value.code == 2
    assert "--sweep data-seed: has no effect in any cell of this study (the data come from the NPZ files)" in (
        capsys.readouterr().err)
    simulated, _ = wrapper.parse_study([*TINY_WRAPPER_ARGV, "--sweep", "data-seed=0,1", "--output-dir", str(tmp_path)])
    assert not wrapper._one_dataset(simulated)


def test_a_baseline_that_fails_leaves_the_runs_tables_complete(tmp_path, monkeypatch):
    pytest.importorskip("cdtools", reason='the iterative baseline engine is not installed (pip install -e ".[baselines]")')

    def broken(*args, **kwargs):
        raise RuntimeError("engine failure")

    monkeypatch.setattr(baseline, "run", broken)
    out = tmp_path / "study"
    with pytest.raises(RuntimeError, match="engine failure"):
        wrapper.main([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--baseline", "2", "--output-dir", str(out)])
    rows = table(out)
    assert [r["row"] for r in rows] == ["run", "mean", "std"] and rows[0]["cell"] == "cnn"


def test_a_failed_baseline_row_is_named_on_stderr_and_the_study_exits_3(tmp_path, capsys):
    from scripts.studies.baselines import result_rows

    at = unscored_point(finite=False, seconds=1.0)
    failed = result_rows("flat", {"at": {2: at}, "reached": None}, objects=1, target=None)
    run = {"row": "run", "cell": "cnn", "seed": None, "status": "ok", "status_reason": None}
    assert wrapper.report([run, *failed], tmp_path) == 3
    err = capsys.readouterr().err
    assert "baseline row iterative 2 it. from flat failed: the iterative reconstruction is not finite" in err
    at["finite"] = True
    assert wrapper.report([run, *result_rows("flat", {"at": {2: at}, "reached": None}, 1, None)], tmp_path) == 0


def test_a_study_data_file_replaced_by_another_simulation_is_not_the_baselines_test_split(tmp_path, capsys,
                                                                                         monkeypatch):
    """data/test.npz written over by hand (another data seed): the baseline reconstructed that other
    object beside runs scored on the study's, silently."""
    from ptycho_torch.npz_data import write_npz
    from ptycho_torch.simulation import simulate_splits
    from scripts.studies.grid_lines_torch_runner import plan_of

    study, _ = wrapper.parse_study([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--output-dir", str(tmp_path)])
    plans = [plan_of(cfg) for cfg in study.configs]
    reconstructed = []
    monkeypatch.setattr(wrapper, "run_baselines", lambda out, test_data, *args, **kwargs: reconstructed.append(test_data))
    (tmp_path / "data").mkdir()
    ours = simulate_splits(plans[0].simulation)["test"]
    write_npz(tmp_path / "data" / "test.npz", ours)
    wrapper.run_study_baseline(tmp_path, study, plans, (2,), None)
    assert "another simulation" not in capsys.readouterr().err
    other = simulate_splits(dataclasses.replace(plans[0].simulation, data_seed=7))["test"]
    write_npz(tmp_path / "data" / "test.npz", other)
    wrapper.run_study_baseline(tmp_path, study, plans, (2,), None)
    assert "holds another simulation than the study's" in capsys.readouterr().err
    assert [d.metadata["data_seed"] for d in reconstructed] == [plans[0].simulation.data_seed] * 2
    assert np.array_equal(reconstructed[1].YY_ground_truth, ours.YY_ground_truth)


def test_a_warm_starts_seconds_to_the_target_are_per_test_object():
    from scripts.studies.baselines import result_rows

    at = unscored_point(finite=True, seconds=8.0)
    [row] = result_rows("pinn:cnn", {"at": {5: at}, "reached": {"iterations": 3, "seconds": 6.0}}, objects=4, target=0.5)
    assert row["seconds_per_scan"] == 2.0 and row["target_seconds_per_scan"] == 1.5 and row["target_iterations"] == 3


def test_the_flat_starts_objects_are_read_back_for_the_comparison_figure(tmp_path):
    from scripts.studies.baselines import flat_recon

    assert flat_recon(tmp_path) is None
    (tmp_path / "baseline").mkdir()
    objects = np.arange(8, dtype=np.complex64).reshape(2, 2, 2)
    np.savez(tmp_path / "baseline" / "recon_flat.npz", recon=objects, ground_truth=objects)
    assert np.array_equal(flat_recon(tmp_path), objects)


def test_the_comparison_figure_shows_the_flat_iterative_start_only_beside_its_rows(tmp_path, monkeypatch):
    from ptycho_torch import plots
    from scripts.studies.baselines import BASELINE_RECORD, result_rows

    drawn = []
    monkeypatch.setattr(plots, "plot_comparison", lambda path, truth, recons: drawn.append(list(recons)))
    study, _ = wrapper.parse_study([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--output-dir", str(tmp_path)])
    objects = np.ones((1, 4, 4), np.complex64)
    study.configs[0].output_dir.mkdir(parents=True)
    np.savez(study.configs[0].output_dir / "recon.npz", recon=objects, ground_truth=objects)
    (tmp_path / "baseline").mkdir()
    np.savez(tmp_path / "baseline" / "recon_flat.npz", recon=objects, ground_truth=objects)
    at = unscored_point(finite=True, seconds=1.0)
    rows = result_rows("flat", {"at": {2: at, 5: at}, "reached": None}, objects=1, target=None)
    (tmp_path / BASELINE_RECORD).write_text(json.dumps({"rows": rows}))
    wrapper.write_study_results(tmp_path, study, one_dataset=True, with_baseline=True)
    (tmp_path / BASELINE_RECORD).write_text("damaged")  # no rows: the objects left beside it are not shown either
    wrapper.write_study_results(tmp_path, study, one_dataset=True, with_baseline=True)
    assert drawn == [["cnn", "iterative, 5 it."], ["cnn"]]
