"""Atomic artifact files: a failed write leaves the previous file byte for byte and no temporary
behind; a successful one replaces it; JSON is strict (non-finite floats become null)."""

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptycho_torch.artifacts import atomic_file, write_csv, write_json, write_npz
from tests.strategies import json_values


PREVIOUS = b"previous complete file\n"


def strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity (Python's default parser accepts them)."""
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def finite_twin(value):
    """What strict JSON should hold for ``value``: every non-finite float replaced by None."""
    if isinstance(value, dict):
        return {k: finite_twin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_twin(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("mode, partial", [("wb", b"half of a new fi"), ("w", "half of a new fi")],
                         ids=["binary", "text"])
@pytest.mark.parametrize("error", [Interrupted, KeyboardInterrupt], ids=["exception", "keyboard_interrupt"])
def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, mode, partial, error):
    path = tmp_path / "metrics.json"
    path.write_bytes(PREVIOUS)
    with pytest.raises(error):
        with atomic_file(path, mode) as handle:
            handle.write(partial)
            handle.flush()  # the partial bytes reach the temporary file on disk
            raise error()
    assert path.read_bytes() == PREVIOUS
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_a_failed_first_write_leaves_no_file_at_all(tmp_path):
    with pytest.raises(Interrupted):
        with atomic_file(tmp_path / "new.npz") as handle:
            handle.write(b"partial")
            raise Interrupted()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mode, content", [("wb", b"new\x00bytes"), ("w", "new text, caf\u00e9\n")],
                         ids=["binary", "text"])
def test_a_successful_write_replaces_the_file_and_leaves_no_temporary(tmp_path, mode, content):
    path = tmp_path / "history.csv"
    path.write_bytes(PREVIOUS)
    with atomic_file(path, mode) as handle:
        handle.write(content)
        assert path.read_bytes() == PREVIOUS  # not visible before the block ends
    want = content if mode == "wb" else content.encode("utf-8")
    assert path.read_bytes() == want
    assert os.listdir(tmp_path) == ["history.csv"]


def test_the_previous_file_check_sees_a_clobbered_file(tmp_path):
    """The check of the check: writing in place (not atomic) fails the byte comparison used above."""
    path = tmp_path / "metrics.json"
    path.write_bytes(PREVIOUS)
    with pytest.raises(Interrupted):
        with open(path, "wb") as handle:
            handle.write(b"half")
            raise Interrupted()
    assert path.read_bytes() != PREVIOUS


def test_an_atomic_file_gets_the_same_permissions_as_a_plainly_written_one(tmp_path):
    with atomic_file(tmp_path / "atomic.json", "w") as handle:
        handle.write("{}")
    (tmp_path / "plain.json").write_text("{}")
    assert (tmp_path / "atomic.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode


@given(json_values)
def test_write_json_writes_strict_json_with_non_finite_floats_as_null(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("json") / "data.json"
    write_json(path, value)
    assert strict_loads(path.read_text(encoding="utf-8")) == finite_twin(value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float64("nan")],
                         ids=["nan", "inf", "minus_inf", "numpy_nan"])
def test_write_json_nulls_each_non_finite_float_where_plain_json_would_not(tmp_path, bad):
    data = {"mean": {"amplitude": {"psnr": bad, "ssim": 0.5}}, "per_object": [bad, 1.0]}
    with pytest.raises(ValueError, match="not strict JSON"):
        strict_loads(json.dumps(data))  # the strict parser is a real check: plain json.dumps writes NaN
    write_json(tmp_path / "metrics.json", data)
    assert strict_loads((tmp_path / "metrics.json").read_text()) == {
        "mean": {"amplitude": {"psnr": None, "ssim": 0.5}}, "per_object": [None, 1.0]}


def test_write_json_ends_the_file_with_one_newline(tmp_path):
    text = write_json(tmp_path / "config.json", {"a": [1, 2]}).read_text(encoding="utf-8")
    assert text.endswith("}\n") and not text.endswith("\n\n")


def test_write_csv_writes_the_columns_in_order_with_a_missing_or_none_value_as_an_empty_cell(tmp_path):
    rows = [{"step": 0, "loss": 0.5, "extra": "not a column"}, {"step": 1, "loss": None}]
    path = write_csv(tmp_path / "history.csv", rows, ["step", "loss", "lr"])
    assert path.read_text(encoding="utf-8").splitlines() == ["step,loss,lr", "0,0.5,", "1,,"]


def test_write_npz_writes_every_array_under_its_name(tmp_path):
    arrays = {"recon": np.arange(4, dtype=np.complex64), "ground_truth": np.eye(2)}
    with np.load(write_npz(tmp_path / "recon.npz", **arrays)) as saved:
        assert sorted(saved.files) == sorted(arrays)
        assert all(np.array_equal(saved[name], array) for name, array in arrays.items())
