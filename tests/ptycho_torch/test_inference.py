"""Loading a trained model for the reconstruct command: a path that holds no checkpoint file is
refused by name, saying what is there instead."""

from __future__ import annotations

import pytest

from ptycho_torch.inference import load_model
from ptycho_torch.npz_data import DataError


@pytest.mark.parametrize("make, found", [(lambda path: None, "no such file"), (lambda path: path.mkdir(), "a folder")],
                         ids=["missing", "folder"])
def test_a_checkpoint_path_without_a_file_is_refused_saying_what_is_there(tmp_path, make, found):
    path = tmp_path / "last.ckpt"
    make(path)
    with pytest.raises(DataError) as caught:
        load_model(path)
    assert str(caught.value) == f"{path}: file: expected a checkpoint file, found {found}"
