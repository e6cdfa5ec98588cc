"""A trained checkpoint applied by ``scripts.grid_lines_reconstruct``: the model rebuilds from the
checkpoint alone and reproduces its run's reconstruction and scores bit for bit; a file without
ground truth is reconstructed unscored; each setting acts; bad input is refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ptycho_torch.config import TrainingConfig, from_jsonable
from ptycho_torch.model import RUN_STATE, PtychoPINN
from ptycho_torch.npz_data import load_npz, write_npz
from ptycho_torch.physics import apply_probe_mask
from scripts.grid_lines_reconstruct import main
from tests.helpers import FINISHED, TINY_ARGV

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
RUNS = {  # gridsize 2 with a masked probe: the checkpoint must carry the probe and rebuild the overlap weights
    "gs1": ["--gridsize", "1", "--architecture", "cnn"],
    "gs2": ["--gridsize", "2", "--architecture", "hybrid", "--probe-mask", "--probe-mask-diameter", "12"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    runs = {}
    for name, argv in RUNS.items():
        out = tmp_path_factory.mktemp("trained") / name
        done = subprocess.run([sys.executable, "-m", "scripts.studies.grid_lines_torch_runner", *TINY_ARGV, *argv,
                               "--seed", "2", "--output-dir", str(out)],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode in FINISHED, done.stderr[-2000:]
        runs[name] = out
    return runs


def reconstruct(run: Path, out: Path, *extra: str, data: Path | None = None) -> int:
    return main(["--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--test-npz",
                 str(data or run / "data" / "test.npz"), "--output-dir", str(out), "--num-threads", "1", *extra])


@pytest.mark.parametrize("name", RUNS)
def test_the_reconstruction_and_scores_equal_the_runs_own(trained, tmp_path, name):
    run, out = trained[name], tmp_path / "applied"
    ran_status = json.loads((run / "metrics.json").read_text())["status"]
    assert ran_status in ("ok", "collapsed")  # what the reconstruction alone can tell
    assert reconstruct(run, out) == (0 if ran_status == "ok" else 3)
    assert sorted(os.listdir(out)) == ["config.json", "metrics.json", "recon.npz", "reconstruction.png"]
    with np.load(run / "recon.npz") as ran, np.load(out / "recon.npz") as applied:
        assert np.array_equal(ran["recon"], applied["recon"])
        assert np.array_equal(ran["ground_truth"], applied["ground_truth"])
    ran, applied = (json.loads((folder / "metrics.json").read_text()) for folder in (run, out))
    for key in ("status", "status_reason", "mean", "per_object", "alignment", "phase_seam_ratio", "unlit_fraction",
                "architecture"):
        assert applied[key] == ran[key], key
    assert applied["checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert applied["data"] == str(run / "data" / "test.npz") and applied["objects"] == 1
    record = json.loads((out / "config.json").read_text())
    assert record["training"] == json.loads((run / "config.json").read_text())["training"]


@pytest.mark.parametrize("name", RUNS)
def test_load_from_checkpoint_rebuilds_config_probe_and_weights(trained, name):
    run = trained[name]
    module = PtychoPINN.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    expected = from_jsonable(TrainingConfig, json.loads((run / "config.json").read_text())["training"])
    assert module.cfg == expected
    probe = torch.from_numpy(load_npz(run / "data" / "train.npz", "train").probeGuess)
    model = expected.model
    trained_with = apply_probe_mask(probe, model.probe_mask_diameter) if model.probe_mask else probe
    assert torch.equal(module.probe, trained_with.to(torch.complex64))
    assert model.probe_mask == (name == "gs2")
    assert torch.equal(module.probe, probe) != model.probe_mask  # a masked run carries the masked probe
    assert torch.equal(module.hparams["probe"], probe)  # and the file's probe it was built from
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(value, state[key]) for key, value in module.state_dict().items())
    assert len(module.history) == module.optimizer_steps > 0  # the run's records come along


def test_a_file_without_ground_truth_is_reconstructed_and_not_scored(trained, tmp_path, capsys):
    run, out = trained["gs1"], tmp_path / "unscored"
    assert reconstruct(run, out, data=run / "data" / "train.npz") == 0
    assert sorted(os.listdir(out)) == ["config.json", "recon.npz", "reconstruction.png"]
    with np.load(out / "recon.npz") as saved:
        assert saved.files == ["recon"] and saved["recon"].dtype == np.complex64
        assert np.isfinite(saved["recon"]).all()
    assert "SSIM" not in capsys.readouterr().out


@pytest.mark.parametrize("truth", [True, False])
def test_a_reconstruction_that_is_not_finite_is_reported_diverged_with_exit_3(trained, tmp_path, monkeypatch, capsys,
                                                                              truth):
    """As a run's: a NaN reconstruction said 'reconstructed ..., amplitude SSIM null' and exited 0."""
    run, out = trained["gs1"], tmp_path / "nan"
    forward = PtychoPINN.forward
    monkeypatch.setattr(PtychoPINN, "forward", lambda self, diffraction: forward(self, diffraction) * float("nan"))
    assert reconstruct(run, out, data=None if truth else run / "data" / "train.npz") == 3
    assert "diverged: the reconstruction holds non-finite values" in capsys.readouterr().err
    if truth:
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["status"] == "diverged" and metrics["status_reason"] == "the reconstruction holds non-finite values"


def test_a_reconstruction_that_ignores_its_patterns_is_reported_collapsed(trained, tmp_path, monkeypatch, capsys):
    """The run's own collapse checks. Patches made from the patterns themselves are ok (exit 0); one
    fixed, structured patch for every pattern stitches into an image that is not constant, yet does
    not move when the patterns are exchanged: collapsed, exit 3."""
    run = trained["gs1"]
    monkeypatch.setattr(PtychoPINN, "forward", lambda self, diffraction: torch.polar(
        torch.sigmoid(diffraction), diffraction))
    assert reconstruct(run, tmp_path / "from_patterns") == 0
    assert json.loads((tmp_path / "from_patterns" / "metrics.json").read_text())["status"] == "ok"
    fixed = torch.polar(torch.linspace(0.2, 1.0, 16 * 16).view(16, 16), torch.linspace(-1.0, 1.0, 16 * 16).view(16, 16))
    monkeypatch.setattr(PtychoPINN, "forward", lambda self, diffraction: fixed.expand(diffraction.shape[0], -1, -1))
    assert reconstruct(run, tmp_path / "fixed") == 3
    metrics = json.loads((tmp_path / "fixed" / "metrics.json").read_text())
    assert metrics["status"] == "collapsed" and "does not depend on the measured patterns" in metrics["status_reason"]
    assert "collapsed: the reconstruction does not depend on the measured patterns" in capsys.readouterr().err


# --- each setting acts ------------------------------------------------------------------------------

def forward_calls(monkeypatch) -> list[tuple[int, int]]:
    """(batch size, torch threads) of every generator call."""
    calls, forward = [], PtychoPINN.forward

    def recorded(self, diffraction):
        calls.append((diffraction.shape[0], torch.get_num_threads()))
        return forward(self, diffraction)

    monkeypatch.setattr(PtychoPINN, "forward", recorded)
    return calls


@pytest.mark.parametrize("name", RUNS)
def test_infer_batch_size_sets_the_forward_batches(trained, tmp_path, monkeypatch, name):
    calls = forward_calls(monkeypatch)
    assert reconstruct(trained[name], tmp_path / "batched", "--infer-batch-size", "2") in FINISHED
    sizes = [size for size, _ in calls]
    assert sizes[:-1] and set(sizes[:-1]) == {2} and sizes[-1] in (1, 2)


def test_num_threads_sets_the_threads_prediction_runs_with(trained, tmp_path, monkeypatch):
    calls = forward_calls(monkeypatch)
    before = torch.get_num_threads()
    assert main(["--checkpoint", str(trained["gs1"] / "checkpoints" / "last.ckpt"), "--test-npz",
                 str(trained["gs1"] / "data" / "test.npz"), "--output-dir", str(tmp_path / "t"),
                 "--num-threads", "2"]) in FINISHED
    assert {threads for _, threads in calls} == {2} and torch.get_num_threads() == before


def conv_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtype of every convolution's output, those fused with their GELU (``fused``) included."""
    from ptycho_torch import fused

    seen = []

    def recorded(function):
        def call(*args):
            out = function(*args)
            seen.append(out.dtype)
            return out
        return call

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recorded(torch.nn.Conv2d.forward))
    monkeypatch.setattr(fused, "conv_gelu", recorded(fused.conv_gelu))
    return seen


@pytest.mark.parametrize("name", RUNS)
def test_precision_sets_the_dtype_the_generator_computes_in(trained, tmp_path, monkeypatch, name):
    """bf16-mixed: the convolutions run in bf16, the patches stay complex64 and close to float32's."""
    seen = conv_dtypes(monkeypatch)
    assert reconstruct(trained[name], tmp_path / "fp32") in FINISHED
    assert set(seen) == {torch.float32}
    seen.clear()
    assert reconstruct(trained[name], tmp_path / "bf16", "--precision", "bf16-mixed") in FINISHED
    assert set(seen) == {torch.bfloat16}
    with np.load(tmp_path / "fp32" / "recon.npz") as full, np.load(tmp_path / "bf16" / "recon.npz") as half:
        assert half["recon"].dtype == np.complex64 and not np.array_equal(full["recon"], half["recon"])
        assert np.abs(half["recon"] - full["recon"]).max() < 0.05 * np.abs(full["recon"]).max()


def test_fp16_on_the_cpu_warns_and_predicts_in_bf16(trained, tmp_path, monkeypatch):
    seen = conv_dtypes(monkeypatch)
    with pytest.warns(UserWarning, match="precision=16-mixed on the CPU: predicting under bf16"):
        assert reconstruct(trained["gs1"], tmp_path / "fp16", "--precision", "16-mixed") in FINISHED
    assert set(seen) == {torch.bfloat16}


def with_trained_precision(run: Path, folder: Path, precision: str | None) -> Path:
    """A copy of ``run`` whose checkpoint says it trained at ``precision`` (None: says nothing, as
    checkpoints written before the precision was recorded)."""
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state = checkpoint[RUN_STATE]
    if precision is None:
        del state["precision"]
    else:
        state["precision"] = precision
    (folder / "checkpoints").mkdir(parents=True)
    torch.save(checkpoint, folder / "checkpoints" / "last.ckpt")
    (folder / "data").symlink_to(run / "data")
    return folder


def precision_warnings(run: Path, out: Path, *extra: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reconstruct(run, out, *extra) in FINISHED
    return [str(w.message) for w in caught if "the checkpoint trained at" in str(w.message)]


def test_a_checkpoint_records_the_precision_it_trained_at(trained):
    checkpoint = torch.load(trained["gs1"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint[RUN_STATE]["precision"] == "32-true"  # TINY_ARGV trains in float32
    module = PtychoPINN.load_from_checkpoint(trained["gs1"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert module.trained_precision == "32-true"


def test_predicting_at_another_precision_than_trained_warns_how_to_match_it(trained, tmp_path):
    run = with_trained_precision(trained["gs1"], tmp_path / "bf16_run", "bf16-mixed")
    (message,) = precision_warnings(run, tmp_path / "default")
    assert message == ("the checkpoint trained at precision=bf16-mixed; predicting at precision=32-true: "
                       "pass --precision bf16-mixed to reproduce the run's own reconstruction")
    assert precision_warnings(run, tmp_path / "same", "--precision", "bf16-mixed") == []
    assert precision_warnings(run, tmp_path / "fp16", "--precision", "16-mixed") == []  # bf16 on a CPU too
    assert precision_warnings(trained["gs1"], tmp_path / "fp32") == []
    older = with_trained_precision(trained["gs1"], tmp_path / "older_run", None)
    assert precision_warnings(older, tmp_path / "older") == []  # nothing recorded: nothing to compare


def test_accelerator_is_checked_against_this_machine(trained, tmp_path, capsys):
    """Machine-bound: no GPU here, so a GPU accelerator is refused before anything is written."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert reconstruct(trained["gs1"], tmp_path / "gpu", "--accelerator", "gpu") == 2
    assert "--accelerator='gpu': no CUDA GPU is visible" in capsys.readouterr().err
    assert not (tmp_path / "gpu").exists()


def test_a_file_made_with_another_probe_than_the_checkpoints_is_warned_of(trained, tmp_path, recwarn):
    run = trained["gs1"]
    data = load_npz(run / "data" / "test.npz", "test")
    (tmp_path / "files").mkdir()
    write_npz(tmp_path / "files" / "other.npz", type(data)(**{**vars(data), "probeGuess": data.probeGuess * np.complex64(1j)}))
    assert reconstruct(run, tmp_path / "same") in FINISHED
    assert not [w for w in recwarn if "probe" in str(w.message)]
    with pytest.warns(UserWarning, match="the probe of .*other.npz differs from the probe the checkpoint trained with: "
                                         "its patterns were made with another probe"):
        assert reconstruct(run, tmp_path / "other", data=tmp_path / "files" / "other.npz") in FINISHED


def test_a_file_whose_scan_leaves_part_of_its_scored_region_unlit_is_warned_of_naming_it(trained, tmp_path):
    from ptycho_torch.config import SimulationConfig
    from ptycho_torch.simulation import simulate_splits

    sparse = simulate_splits(SimulationConfig(N=16, object_size=48, n_train_images=1, n_test_images=1,
                                              test_stride=16))["test"]  # stride N: the corners between positions dark
    (tmp_path / "files").mkdir()
    write_npz(tmp_path / "files" / "sparse.npz", sparse)
    with pytest.warns(UserWarning, match=r"of the scored region of .*sparse.npz is lit by no scan position"):
        assert reconstruct(trained["gs1"], tmp_path / "out", data=tmp_path / "files" / "sparse.npz") in FINISHED
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["unlit_fraction"] > 0.2


# --- refusals: exit 2, one line naming the file or flag, nothing written ----------------------------

def off_grid_copy(run: Path, folder: Path) -> Path:
    """A train file whose scan misses one position: in the contract, but not stitchable."""
    data = load_npz(run / "data" / "train.npz", "train")
    keep = np.arange(len(data.coords)) != 3
    fields = {name: getattr(data, name)[keep] for name in ("diffraction", "Y_I", "Y_phi", "coords", "image_index")}
    path = folder / "off_grid.npz"
    folder.mkdir(exist_ok=True)
    write_npz(path, type(data)(**{**vars(data), **fields}))
    return path


@pytest.mark.parametrize("case", ["missing checkpoint", "foreign checkpoint", "lightning checkpoint",
                                  "garbage checkpoint", "wrong N", "off-grid scan", "busy output", "ungroupable"])
def test_bad_input_is_refused_by_name_and_nothing_is_written(trained, tmp_path, capsys, case):
    run = trained["gs1"]
    checkpoint, data, out = run / "checkpoints" / "last.ckpt", run / "data" / "test.npz", tmp_path / "out"
    named = str(checkpoint)
    if case == "missing checkpoint":
        checkpoint = named = tmp_path / "none.ckpt"
    elif case == "foreign checkpoint":  # arbitrary pickled objects: weights-only loading runs none of them
        checkpoint = named = tmp_path / "foreign.ckpt"
        torch.save({"state_dict": {}, "payload": Path("/")}, checkpoint)
    elif case == "lightning checkpoint":  # a checkpoint without the training config
        checkpoint = named = tmp_path / "plain.ckpt"
        torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.6"}, checkpoint)
    elif case == "garbage checkpoint":
        checkpoint = named = tmp_path / "garbage.ckpt"
        checkpoint.write_bytes(b"not a checkpoint")
    elif case == "wrong N":  # the model was trained at N=16
        subprocess.run([sys.executable, "-m", "scripts.grid_lines_datagen", "--output-dir", str(tmp_path / "d"),
                        "--N", "32", "--object-size", "40", "--n-lines", "5", "--no-progress"],
                       cwd=ROOT, env=ENV, check=True, capture_output=True)
        data = named = tmp_path / "d" / "test.npz"
    elif case == "off-grid scan":
        data = named = off_grid_copy(run, tmp_path / "data")
    elif case == "ungroupable":  # a gridsize-2 model, a scan of one position per object: no 2x2 group
        checkpoint = trained["gs2"] / "checkpoints" / "last.ckpt"
        subprocess.run([sys.executable, "-m", "scripts.grid_lines_datagen", "--output-dir", str(tmp_path / "d"),
                        "--N", "16", "--object-size", "16", "--n-lines", "5", "--no-progress"],
                       cwd=ROOT, env=ENV, check=True, capture_output=True)
        data = named = tmp_path / "d" / "test.npz"
    elif case == "busy output":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        named = "--overwrite"
    status = main(["--checkpoint", str(checkpoint), "--test-npz", str(data), "--output-dir", str(out)])
    assert status == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(named) in line, line
    assert not out.exists() or os.listdir(out) == ["notes.txt"]


@pytest.mark.parametrize("setting", ["checkpoint", "test_npz"])
def test_an_input_that_overwrite_would_remove_is_refused(trained, tmp_path, capsys, setting):
    run, out = trained["gs1"], tmp_path / "out"
    out.mkdir()
    inputs = {"checkpoint": run / "checkpoints" / "last.ckpt", "test_npz": run / "data" / "test.npz"}
    inside = out / "recon.npz"  # an artifact's name: --overwrite removes it before writing
    inside.write_bytes(inputs[setting].read_bytes())
    inputs[setting] = inside
    status = main(["--checkpoint", str(inputs["checkpoint"]), "--test-npz", str(inputs["test_npz"]),
                   "--output-dir", str(out), "--overwrite"])
    assert status == 2
    assert f"{setting}='{inside}'" in capsys.readouterr().err and inside.exists()


@pytest.mark.parametrize("where", ["below a file", "name too long"])
def test_an_unusable_output_folder_is_refused_with_exit_2_and_nothing_written(trained, tmp_path, capsys, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    out = blocker / "out" if where == "below a file" else tmp_path / ("x" * 300)
    assert reconstruct(trained["gs1"], out) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: output_dir=") and "Traceback" not in line
    assert sorted(os.listdir(tmp_path)) == ["a_file"] and blocker.read_text() == "mine"


def test_overwrite_replaces_a_previous_reconstruction_and_keeps_the_users_files(trained, tmp_path):
    out = tmp_path / "again"
    assert reconstruct(trained["gs1"], out, data=trained["gs1"] / "data" / "test.npz") in FINISHED
    (out / "notes.txt").write_text("mine")
    assert reconstruct(trained["gs1"], out, data=trained["gs1"] / "data" / "train.npz") == 2  # not empty
    assert reconstruct(trained["gs1"], out, "--overwrite", data=trained["gs1"] / "data" / "train.npz") == 0
    # the train file has no ground truth: the previous run's metrics.json went with the rest of it
    assert sorted(os.listdir(out)) == ["config.json", "notes.txt", "recon.npz", "reconstruction.png"]
    assert json.loads((out / "config.json").read_text())["reconstruct"]["test_npz"].endswith("train.npz")


def test_a_training_runs_folder_is_refused_even_with_overwrite(trained, tmp_path, capsys):
    run_copy = tmp_path / "run"
    subprocess.run(["cp", "-a", str(trained["gs1"]), str(run_copy)], check=True)
    before = sorted(p.name for p in run_copy.iterdir())
    assert reconstruct(run_copy, run_copy, "--overwrite") == 2
    assert "holds the files of a training run" in capsys.readouterr().err
    assert sorted(p.name for p in run_copy.iterdir()) == before


def test_the_command_prints_its_own_warnings_as_one_line_each(trained, tmp_path):
    """As the runner's "warning: ..." lines: no file:line prefix, no source line."""
    run = trained["gs1"]
    done = subprocess.run([sys.executable, "-m", "scripts.grid_lines_reconstruct", "--checkpoint",
                           str(run / "checkpoints" / "last.ckpt"), "--test-npz", str(run / "data" / "test.npz"),
                           "--output-dir", str(tmp_path / "out"), "--precision", "bf16-mixed", "--num-threads", "1"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})
    assert done.returncode in FINISHED, done.stderr
    ours = [line for line in done.stderr.splitlines() if "the checkpoint trained at precision=32-true" in line]
    assert ours == ["warning: the checkpoint trained at precision=32-true; predicting at precision=bf16-mixed: "
                    "pass --precision 32-true to reproduce the run's own reconstruction"], done.stderr
    assert "UserWarning" not in done.stderr and "inference.py" not in done.stderr


def test_other_libraries_warnings_keep_their_format():
    from scripts.studies.runner_cli import one_line_warnings

    with one_line_warnings():
        foreign = warnings.formatwarning("deprecated", DeprecationWarning, "/elsewhere/lib.py", 7, "x = 1")
        own = warnings.formatwarning("careful", UserWarning, str(Path("ptycho_torch/inference.py").resolve()), 3, "")
    assert foreign.startswith("/elsewhere/lib.py:7: DeprecationWarning: deprecated")
    assert own == "warning: careful\n"
    assert warnings.formatwarning("careful", UserWarning, "ptycho_torch/inference.py", 3, "") != own  # restored


@pytest.mark.parametrize("ssim, shown", [(0.5, ", amplitude SSIM 0.500"), (None, ", amplitude SSIM null")],
                         ids=["scored", "undefined-score"])
def test_the_summary_line_of_a_scored_file_gives_its_amplitude_ssim(tmp_path, capsys, ssim, shown):
    from scripts.grid_lines_reconstruct import ReconstructConfig, report

    cfg = ReconstructConfig(checkpoint=tmp_path / "c.ckpt", test_npz=tmp_path / "t.npz", output_dir=tmp_path)
    summary = {"status": "ok", "objects": 2, "mean": {"amplitude": {"ssim": ssim}}}
    assert report(cfg, summary) == 0
    assert capsys.readouterr().out == f"reconstructed 2 object(s) into {tmp_path}{shown}\n"
