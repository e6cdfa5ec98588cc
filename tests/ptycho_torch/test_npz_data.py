"""The NPZ contract: round trips are identities; every spoiled file raises DataError naming its problem."""

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401 -- module-scope import keeps Hypothesis timings stable across the suite
from hypothesis import given, settings

import ptycho_torch.npz_data as npz_data
from ptycho_torch.config import SimulationConfig
from ptycho_torch.npz_data import CONTRACT, DataError, check_probe, load_any_split, load_npz, write_npz
from ptycho_torch.probe import ideal_probe
from ptycho_torch.simulation import simulate_split, split_plan
from tests.strategies import Corruption, npz_bytes, npz_corruptions, tiny_simulation_configs

SIM = SimulationConfig(N=16, object_size=28, n_lines=10, nphotons=1e4, n_test_images=2, test_stride=6)


def simulated(sim: SimulationConfig, name: str):
    n_images, stride = split_plan(sim)[name]
    return simulate_split(sim, n_images, stride, np.random.default_rng(sim.data_seed), ideal_probe(sim.N), split=name)


VALID = {name: simulated(SIM, name).to_arrays() for name in ("train", "test")}


def load_bytes(content: bytes, split: str, **kw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{split}.npz"
        path.write_bytes(content)
        return load_npz(path, split, **kw)


def test_module_docstring_tables_every_key():
    for key in CONTRACT:
        assert f"| {key} " in npz_data.__doc__, key


@settings(deadline=None)  # simulates and writes files: timing follows the machine's load
@given(tiny_simulation_configs())
def test_write_then_load_gives_equal_arrays_and_metadata(sim):
    for name in ("train", "test"):
        data = simulated(sim, name)
        with tempfile.TemporaryDirectory() as folder:
            loaded = load_npz(write_npz(Path(folder) / f"{name}.npz", data), name, expected_N=sim.N)
        for key, array in data.to_arrays().items():
            got = loaded.to_arrays()[key]
            assert got.dtype == array.dtype and np.array_equal(got, array), key
        assert loaded.metadata == data.metadata and loaded.intensity_scale == data.intensity_scale
        assert loaded.metadata["stride"] == split_plan(sim)[name][1]


@settings(deadline=None)  # writes and reads a file per example
@given(npz_corruptions(sorted(VALID["test"])))
def test_a_spoiled_test_file_raises_data_error_naming_the_problem(corruption: Corruption):
    check_spoiled(corruption, "test")


@settings(deadline=None)  # writes and reads a file per example
@given(npz_corruptions(sorted(VALID["train"])))
def test_a_spoiled_train_file_raises_data_error_naming_the_problem(corruption: Corruption):
    check_spoiled(corruption, "train")


def check_spoiled(corruption: Corruption, split: str) -> None:
    content = corruption.content(VALID[split])
    try:
        load_bytes(content, split)
    except DataError as err:
        message = str(err)
        assert f"{split}.npz" in message
        for word in corruption.words:
            assert word in message, (corruption.label, message)
    else:
        assert corruption.may_load, f"{corruption.label} loaded without error"


def rewritten(split: str, **changes) -> bytes:
    return npz_bytes({**VALID[split], **changes})


def metadata_with(which: str, **entries) -> np.ndarray:
    return np.array(json.dumps({**json.loads(str(VALID[which]["metadata"])), **entries}))


BROKEN_RULES = {
    "negative diffraction": ("train", lambda: rewritten("train", diffraction=-VALID["train"]["diffraction"] - 1), "diffraction"),
    "negative Y_I": ("train", lambda: rewritten("train", Y_I=VALID["train"]["Y_I"] - 2), "Y_I"),
    "coords outside the object": ("train", lambda: rewritten("train", coords=VALID["train"]["coords"] + 13), "coords"),
    "negative coords": ("train", lambda: rewritten("train", coords=VALID["train"]["coords"] - 1), "range -1.."),
    "image_index past the objects": ("train", lambda: rewritten("train", image_index=VALID["train"]["image_index"] + 5), "image_index"),
    "negative image_index": ("train", lambda: rewritten("train", image_index=VALID["train"]["image_index"] - 1),
                             "range -1.."),
    "zero intensity_scale": ("train", lambda: rewritten("train", intensity_scale=np.array(0.0)), "intensity_scale"),
    "metadata not JSON": ("train", lambda: rewritten("train", metadata=np.array("{not json")), "metadata"),
    "metadata nested too deep": ("train", lambda: rewritten("train", metadata=np.array("[" * 100_000)), "metadata"),
    "metadata a list": ("train", lambda: rewritten("train", metadata=np.array("[1, 2]")), "metadata"),
    "metadata a number": ("train", lambda: rewritten("train", metadata=np.array("5")), "a JSON object"),
    "metadata of the other split": ("train", lambda: rewritten("train", metadata=metadata_with("train", split="test")), "split="),
    "metadata N disagrees": ("train", lambda: rewritten("train", metadata=metadata_with("train", N=32)), "N="),
    "metadata stride zero": ("train", lambda: rewritten("train", metadata=metadata_with("train", stride=0)), "stride"),
    "metadata entry missing": ("train", lambda: rewritten("train", metadata=np.array(json.dumps({"split": "train"}))), "n_lines"),
    "metadata N a float": ("train", lambda: rewritten("train", metadata=metadata_with("train", N=16.0)), "N=16.0"),
    "metadata nphotons text": ("train", lambda: rewritten("train", metadata=metadata_with("train", nphotons="lots")),
                               "nphotons='lots'"),
    "metadata set_phi text": ("test", lambda: rewritten("test", metadata=metadata_with("test", set_phi="yes")), "set_phi"),
    "test coords not the raster grid": ("test", lambda: rewritten("test", coords=VALID["test"]["coords"][::-1] // 2), "raster grid"),
    "ground truth of the wrong size": ("test", lambda: rewritten("test", YY_ground_truth=VALID["test"]["YY_ground_truth"][:, 1:, 1:]), "stitched"),
    "no objects and no patterns": ("test", lambda: rewritten("test", **{key: VALID["test"][key][:0] for key in (
        "diffraction", "Y_I", "Y_phi", "coords", "image_index", "objectGuess", "YY_ground_truth")}), "one object"),
    "no patterns": ("train", lambda: rewritten("train", **{key: VALID["train"][key][:0] for key in (
        "diffraction", "Y_I", "Y_phi", "coords", "image_index")}), "one pattern"),
    "objects smaller than a patch": ("test", lambda: rewritten("test", objectGuess=VALID["test"]["objectGuess"][:, :8, :8]),
                                     "at least N x N"),
    "ground truth in a train file": ("train", lambda: rewritten("train", YY_ground_truth=VALID["test"]["YY_ground_truth"]), "YY_ground_truth"),
    # a file's probe meets a probe file's rules (it trained the model, or the test patterns were measured with it)
    "an all-zero probe in a train file": ("train", lambda: rewritten("train", probeGuess=0 * VALID["train"]["probeGuess"]),
                                          "not all zero"),
    "an all-zero probe in a test file": ("test", lambda: rewritten("test", probeGuess=0 * VALID["test"]["probeGuess"]),
                                         "not all zero"),
    "a probe whose intensity float32 cannot hold": ("train", lambda: rewritten(
        "train", probeGuess=np.full_like(VALID["train"]["probeGuess"], 1e19)), "float32 holds"),
}


@pytest.mark.parametrize("split, content, word", BROKEN_RULES.values(), ids=BROKEN_RULES.keys())
def test_a_file_breaking_a_value_rule_raises_data_error(split, content, word):
    with pytest.raises(DataError) as caught:
        load_bytes(content(), split)
    assert word in str(caught.value)


@pytest.mark.parametrize("stride", [1, SIM.N], ids=["stride 1", "stride N"])
def test_a_stride_from_1_to_N_is_accepted(stride):
    assert load_bytes(rewritten("train", metadata=metadata_with("train", stride=stride)), "train").metadata["stride"] == stride


@pytest.mark.parametrize("split", ["train", "test"])
def test_any_split_is_read_as_the_test_split_exactly_when_it_holds_ground_truth(tmp_path, split):
    path = tmp_path / "data.npz"
    path.write_bytes(npz_bytes(VALID[split]))
    data = load_any_split(path)
    assert data.split == split and (data.YY_ground_truth is not None) == (split == "test")


def test_any_split_refuses_a_train_file_whose_scan_is_not_a_raster_grid(tmp_path):
    """Reconstruction stitches the patches: a train file, which load_npz takes with any coords, must
    scan each object on the raster grid of its stride too."""
    content = rewritten("train", coords=VALID["train"]["coords"][::-1] // 2)
    load_bytes(content, "train")
    path = tmp_path / "train.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="raster grid"):
        load_any_split(path)


def test_the_digest_follows_every_array_and_the_scale_and_ignores_the_metadata():
    data = simulated(SIM, "train")
    changed_pixel = data.diffraction.copy()
    changed_pixel[0, 0, 0] += 1
    digests = {data.digest(), dataclasses.replace(data, diffraction=changed_pixel).digest(),
               dataclasses.replace(data, intensity_scale=2 * data.intensity_scale).digest()}
    assert len(digests) == 3
    assert dataclasses.replace(data, metadata={**data.metadata, "note": 1}).digest() == data.digest()
    assert simulated(SIM, "train").digest() == data.digest()


@pytest.mark.parametrize("probe, found", [
    (np.ones((16, 16), np.float32), "found float32"),
    ([[1j] * 16] * 16, "found list"),
], ids=["real array", "list"])
def test_a_probe_that_is_not_a_complex_array_is_refused_naming_what_it_is(probe, found):
    with pytest.raises(DataError, match=f"probeGuess.*a complex array, {found}"):
        check_probe(probe, "probe.npz", 16)


def test_the_model_N_must_match():
    with pytest.raises(DataError, match="diffraction.*N=32"):
        load_bytes(npz_bytes(VALID["train"]), "train", expected_N=32)


def test_unreadable_paths_raise_data_error(tmp_path):
    np.save(tmp_path / "single.npy", np.zeros(3))
    os.mkfifo(tmp_path / "pipe.npz")  # reading it would wait for a writer forever
    cases = {tmp_path / "absent.npz": "no such file", tmp_path: "NPZ", tmp_path / "single.npy": "NPZ",
             tmp_path / "pipe.npz": "a pipe, socket or device", Path("/dev/zero"): "a pipe, socket or device"}
    for path, words in cases.items():
        with pytest.raises(DataError, match=words):
            load_npz(path, "train")


def test_write_refuses_off_contract_data_and_leaves_nothing(tmp_path):
    data = simulated(SIM, "train")
    bad = dataclasses.replace(data, Y_phi=data.Y_phi.astype(np.float64))
    with pytest.raises(DataError, match="Y_phi.*dtype"):
        write_npz(tmp_path / "train.npz", bad)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_metadata_without_a_known_split_by_name(tmp_path):
    data = simulated(SIM, "train")
    with pytest.raises(DataError, match="metadata.*split='validation'"):
        write_npz(tmp_path / "train.npz", dataclasses.replace(data, metadata={**data.metadata, "split": "validation"}))
    assert list(tmp_path.iterdir()) == []


def test_a_data_error_names_the_key_or_else_the_whole_file():
    assert str(DataError("a.npz", "coords", "x", "y")) == "a.npz: key 'coords': expected x, found y"
    assert str(DataError("a.npz", None, "x", "y")) == "a.npz: file: expected x, found y"


def test_load_refuses_an_unknown_split_name():
    with pytest.raises(ValueError, match="split"):
        load_npz("whatever.npz", "validation")
