"""The NPZ data contract for grid-lines splits (``train.npz`` / ``test.npz``), checked on read and write.

Shapes use M patterns, N patch side, I objects, S object side, H x W stitched region.

| key             | shape       | dtype     | meaning                                                        |
|-----------------|-------------|-----------|----------------------------------------------------------------|
| diffraction     | (M, N, N)   | float32   | measured amplitude sqrt(counts) / intensity_scale, fftshifted   |
| Y_I             | (M, N, N)   | float32   | ground-truth object amplitude of each patch                    |
| Y_phi           | (M, N, N)   | float32   | ground-truth object phase of each patch (radians)              |
| coords          | (M, 2)      | int64     | top-left (row, col) of each patch in its object                |
| image_index     | (M,)        | int64     | which object (0..I-1) each patch comes from                    |
| probeGuess      | (N, N)      | complex64 | the probe P used to simulate (or measure) the patterns         |
| objectGuess     | (I, S, S)   | complex64 | the full objects O = A exp(i phi)                              |
| intensity_scale | ()          | float64   | photon scale: counts = (diffraction * intensity_scale)^2       |
| metadata        | ()          | str (<U)  | JSON object: every SimulationConfig setting, split, stride     |
| YY_ground_truth | (I, H, W)   | complex64 | test split only: the stitched region of each object            |

Values are finite; diffraction and Y_I are >= 0; intensity_scale > 0; coords keep each
patch inside its object; the metadata's split, N and object_size agree with the arrays. In
the test split the coords of each object are the complete raster grid of the metadata's
stride and YY_ground_truth has the shape of ``scan.stitched_region``. Files are read with
``allow_pickle=False``; every way a file can be unreadable or off-contract raises one
``DataError`` that names the file, the key, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch import artifacts
from ptycho_torch.config import ConfigError, SimulationConfig, from_jsonable
from ptycho_torch.scan import raster_positions, stitched_region
from ptycho_torch.special_files import is_special_file

SPLITS = ("train", "test")


class DataError(ValueError):
    """A data file that cannot be read or breaks the NPZ contract."""

    def __init__(self, source: str | os.PathLike, key: str | None, expected: str, found: str):
        self.source, self.key = str(source), key
        where = f"key '{key}'" if key else "file"
        super().__init__(f"{self.source}: {where}: expected {expected}, found {found}")

    @classmethod
    def unreadable(cls, source: str | os.PathLike, expected: str, err: BaseException) -> DataError:
        """A file that failed to load: the error's type and first line (library messages run long)."""
        lines = str(err).strip().splitlines()
        return cls(source, None, expected, f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": "))


@dataclass(frozen=True)
class KeySpec:
    shape: tuple[str, ...]  # symbolic dimensions, bound on first sight
    dtype: np.dtype


CONTRACT: dict[str, KeySpec] = {
    "diffraction": KeySpec(("M", "N", "N"), np.dtype(np.float32)),
    "Y_I": KeySpec(("M", "N", "N"), np.dtype(np.float32)),
    "Y_phi": KeySpec(("M", "N", "N"), np.dtype(np.float32)),
    "coords": KeySpec(("M", "2"), np.dtype(np.int64)),
    "image_index": KeySpec(("M",), np.dtype(np.int64)),
    "probeGuess": KeySpec(("N", "N"), np.dtype(np.complex64)),
    "objectGuess": KeySpec(("I", "S", "S"), np.dtype(np.complex64)),
    "intensity_scale": KeySpec((), np.dtype(np.float64)),
    "metadata": KeySpec((), np.dtype(str)),  # kind 'U', any length
    "YY_ground_truth": KeySpec(("I", "H", "W"), np.dtype(np.complex64)),
}
METADATA_KEYS = tuple(f.name for f in dataclasses.fields(SimulationConfig)) + ("split", "stride")


@dataclass(frozen=True, eq=False)
class GridLinesData:
    """One split of grid-lines data, as in the NPZ contract; metadata is the parsed JSON object."""

    diffraction: np.ndarray
    Y_I: np.ndarray
    Y_phi: np.ndarray
    coords: np.ndarray
    image_index: np.ndarray
    probeGuess: np.ndarray
    objectGuess: np.ndarray
    intensity_scale: float
    metadata: dict[str, Any]
    YY_ground_truth: np.ndarray | None = None  # test split only

    @property
    def split(self) -> str:
        return self.metadata["split"]

    @property
    def N(self) -> int:
        return self.diffraction.shape[-1]

    def digest(self) -> str:
        """SHA-256 of the split's arrays and intensity scale (not its metadata), bit for bit: what a
        fit on it depends on. A checkpoint records it, so that a resumed run can tell its data
        from another's (``resume``)."""
        digest = hashlib.sha256()
        for name, array in self.to_arrays().items():
            if name != "metadata":
                array = np.ascontiguousarray(array)
                digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode() + array.tobytes())
        return digest.hexdigest()

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The NPZ members, keyed as in the contract."""
        arrays = {name: getattr(self, name) for name in CONTRACT if getattr(self, name) is not None}
        arrays["intensity_scale"] = np.array(self.intensity_scale, dtype=np.float64)
        arrays["metadata"] = np.array(json.dumps(self.metadata, sort_keys=True))
        return arrays


# --- reading raw members ---------------------------------------------------------------------

def _open_archive(path: str | os.PathLike) -> np.lib.npyio.NpzFile:
    if is_special_file(path):
        raise DataError(path, None, "a regular NPZ file", "a pipe, socket or device")
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise DataError(path, None, "an existing NPZ file", "no such file") from err
    # A damaged file fails inside zipfile, zlib or numpy's format parser with many exception types
    # (BadZipFile, EOFError, ValueError for a pickle, IsADirectoryError, ...); each one means the
    # same thing here: this is not a readable, pickle-free NPZ archive.
    except Exception as err:  # noqa: BLE001
        raise DataError(path, None, "a readable, pickle-free NPZ archive", f"{type(err).__name__}: {err}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(path, None, "an NPZ archive", f"a single .npy {type(archive).__name__}")
    return archive


def _read_member(archive: np.lib.npyio.NpzFile, key: str, path: str | os.PathLike) -> Any:
    try:
        return archive[key]
    except Exception as err:  # noqa: BLE001 -- as above: a corrupt or pickled member, whatever the type
        raise DataError(path, key, "a readable, pickle-free array", f"{type(err).__name__}: {err}") from err


def read_arrays(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The members of an NPZ archive (all, or those of ``keys`` it has), read eagerly with allow_pickle=False.

    Raises DataError when the file is missing or any member read is unreadable or pickled.
    """
    with _open_archive(path) as archive:
        wanted = archive.files if keys is None else [k for k in keys if k in archive.files]
        return {key: _read_member(archive, key, path) for key in wanted}


# --- checking ---------------------------------------------------------------------------------

def expected_keys(split: str) -> set[str]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return set(CONTRACT) - ({"YY_ground_truth"} if split == "train" else set())


def _check_key_set(arrays: dict[str, Any], source: str, split: str) -> None:
    wanted, present = expected_keys(split), set(arrays)
    missing, extra = sorted(wanted - present), sorted(present - wanted)
    if missing:
        raise DataError(source, missing[0], f"the key in a {split} file", f"it missing (keys: {sorted(present)})")
    if extra:
        raise DataError(source, extra[0], f"only the {split} keys {sorted(wanted)}", "an extra key")


def _bind_shape(key: str, array: np.ndarray, dims: dict[str, int], source: str) -> None:
    """Check the array's shape against its symbolic shape, binding each new dimension name."""
    spec = CONTRACT[key].shape
    expected = "(" + ", ".join(spec) + ")"
    if array.ndim != len(spec):
        raise DataError(source, key, f"shape {expected}", f"shape {array.shape}")
    for name, size in zip(spec, array.shape):
        want = int(name) if name.isdigit() else dims.setdefault(name, size)
        if size != want:
            bound = ", ".join(f"{d}={dims[d]}" for d in spec if d in dims)
            raise DataError(source, key, f"shape {expected} with {bound}", f"shape {array.shape}")


def _check_dtype(key: str, array: Any, source: str) -> None:
    want = CONTRACT[key].dtype
    text = "unicode string (<U)" if want.kind == "U" else str(want)
    if not isinstance(array, np.ndarray):
        raise DataError(source, key, f"an array of dtype {text}", f"{type(array).__name__}")
    same = array.dtype.kind == "U" if want.kind == "U" else array.dtype == want
    if not same:
        raise DataError(source, key, f"dtype {text}", f"dtype {array.dtype}")


def _check_values(arrays: dict[str, np.ndarray], dims: dict[str, int], source: str) -> None:
    for key, size, rule in (("objectGuess", "I", "at least one object"), ("diffraction", "M", "at least one pattern")):
        if dims[size] < 1:
            raise DataError(source, key, rule, f"shape {arrays[key].shape}")
    if dims["S"] < dims["N"]:  # no N x N patch fits in such an object
        raise DataError(source, "objectGuess", f"objects of at least N x N = {dims['N']} x {dims['N']} pixels",
                        f"shape {arrays['objectGuess'].shape}")
    for key, array in arrays.items():
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            raise DataError(source, key, "finite values", f"{int(np.sum(~np.isfinite(array)))} NaN/inf values")
    for key in ("diffraction", "Y_I"):
        if np.any(arrays[key] < 0):
            raise DataError(source, key, "values >= 0", f"minimum {arrays[key].min()}")
    if not arrays["intensity_scale"] > 0:
        raise DataError(source, "intensity_scale", "a value > 0", f"{arrays['intensity_scale']}")
    corners, limit = arrays["coords"], dims["S"] - dims["N"]
    if corners.size and (corners.min() < 0 or corners.max() > limit):
        raise DataError(source, "coords", f"top-left corners in 0..{limit} (S={dims['S']}, N={dims['N']})",
                        f"range {corners.min()}..{corners.max()}")
    index = arrays["image_index"]
    if index.size and (index.min() < 0 or index.max() >= dims["I"]):
        raise DataError(source, "image_index", f"values in 0..{dims['I'] - 1}", f"range {index.min()}..{index.max()}")


def _parse_metadata(array: np.ndarray, dims: dict[str, int], source: str, split: str) -> dict[str, Any]:
    try:
        metadata = json.loads(str(array[()]))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, or nesting deeper than the parser goes
        raise DataError(source, "metadata", "a JSON object", f"invalid JSON ({err})") from err
    if not isinstance(metadata, dict):
        raise DataError(source, "metadata", "a JSON object", type(metadata).__name__)
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise DataError(source, "metadata", f"entries {list(METADATA_KEYS)}", f"{missing} missing")
    try:  # each setting by its own rule: N=16.0 or nphotons="lots" pass no simulation's settings
        from_jsonable(SimulationConfig, {f.name: metadata[f.name] for f in dataclasses.fields(SimulationConfig)})
    except ConfigError as err:
        raise DataError(source, "metadata", "the settings of a simulation (each by its rule)",
                        str(err).removeprefix("invalid SimulationConfig: ")) from None
    agree = {"split": split, "N": dims["N"], "object_size": dims["S"]}
    for name, want in agree.items():
        if metadata[name] != want:
            raise DataError(source, "metadata", f"{name}={want!r} (from the arrays)", f"{name}={metadata[name]!r}")
    stride = metadata["stride"]
    if not (isinstance(stride, int) and not isinstance(stride, bool) and 1 <= stride <= dims["N"]):
        raise DataError(source, "metadata", f"stride an integer in 1..{dims['N']}", f"stride={stride!r}")
    return metadata


def _check_test_grid(arrays: dict[str, np.ndarray], dims: dict[str, int], stride: int, source: str) -> None:
    """In the test split each object's coords are the full raster grid, and YY has the stitched shape."""
    _check_raster_grid(arrays, dims, stride, source)
    row0, row1, col0, col1 = stitched_region(dims["S"], dims["N"], stride)
    want = (dims["I"], row1 - row0, col1 - col0)
    if arrays["YY_ground_truth"].shape != want:
        raise DataError(source, "YY_ground_truth", f"shape {want} (stitched region, stride {stride})",
                        f"shape {arrays['YY_ground_truth'].shape}")


def _check_raster_grid(arrays: dict[str, np.ndarray], dims: dict[str, int], stride: int, source: str) -> None:
    """Each object's coords are the complete raster grid of ``stride`` (what stitching needs)."""
    grid, n_images = raster_positions(dims["S"], dims["N"], stride), dims["I"]  # (m, 2)
    images = np.repeat(np.arange(n_images), len(grid))[:, None]  # (I m, 1)
    expected = np.concatenate([images, np.tile(grid, (n_images, 1))], axis=1)  # (I m, 3) sorted
    found = np.concatenate([arrays["image_index"][:, None], arrays["coords"]], axis=1)  # (M, 3)
    found = found[np.lexsort(found.T[::-1])]  # sorted by image, row, col
    if found.shape != expected.shape or not np.array_equal(found, expected):
        raise DataError(source, "coords", f"the raster grid of stride {stride} ({len(grid)} patches) "
                        f"for each of {n_images} objects", f"{len(found)} patches that do not form it")


def check_arrays(arrays: dict[str, Any], source: str | os.PathLike, split: str,
                 expected_N: int | None = None) -> GridLinesData:
    """Validate NPZ members against the contract and return them as GridLinesData."""
    source = str(source)
    _check_key_set(arrays, source, split)
    dims: dict[str, int] = {} if expected_N is None else {"N": expected_N}
    for key in CONTRACT:
        if key in arrays:
            _check_dtype(key, arrays[key], source)
            _bind_shape(key, arrays[key], dims, source)
    _check_values(arrays, dims, source)
    check_probe(arrays["probeGuess"], source, dims["N"])  # the probe rules a probe file must meet
    metadata = _parse_metadata(arrays["metadata"], dims, source, split)
    if split == "test":
        _check_test_grid(arrays, dims, metadata["stride"], source)
    fields = {k: v for k, v in arrays.items() if k not in ("intensity_scale", "metadata")}
    return GridLinesData(**fields, intensity_scale=float(arrays["intensity_scale"]), metadata=metadata)


def check_probe(probe: Any, source: str | os.PathLike, N: int) -> np.ndarray:
    """A probe array, (N, N) complex, finite and not all zero, as complex64."""
    if not isinstance(probe, np.ndarray) or probe.dtype.kind != "c":
        found = probe.dtype if isinstance(probe, np.ndarray) else type(probe).__name__
        raise DataError(source, "probeGuess", "a complex array", f"{found}")
    if probe.shape != (N, N):
        raise DataError(source, "probeGuess", f"shape ({N}, {N})", f"shape {probe.shape}")
    if not np.all(np.isfinite(probe)) or not np.any(probe):
        raise DataError(source, "probeGuess", "finite values, not all zero", "NaN/inf or all zeros")
    # the forward model works in float32: its intensities (summing to the probe's) must be finite there
    with np.errstate(over="ignore"):  # an overflow is the inf refused below
        intensity = float(np.sum(np.square(np.abs(probe.astype(np.complex128)))))
    if not intensity <= float(np.finfo(np.float32).max):
        raise DataError(source, "probeGuess", "a total intensity sum |P|^2 that float32 holds (<= 3.4e38)",
                        f"{intensity:.3g}")
    with np.errstate(over="ignore"):  # what the forward model uses: a complex128 probe may not survive it
        cast = probe.astype(np.complex64)
    if not np.all(np.isfinite(cast)) or not np.any(cast):
        raise DataError(source, "probeGuess", "values that complex64 holds (finite, not all zero)",
                        "values that overflow or underflow to 0 there")
    return cast


# --- files --------------------------------------------------------------------------------------

def load_npz(path: str | os.PathLike, split: str, *, expected_N: int | None = None) -> GridLinesData:
    """Read and validate one split file; expected_N is the model's patch side, if it must match."""
    expected_keys(split)
    return check_arrays(read_arrays(path), path, split, expected_N)


def load_any_split(path: str | os.PathLike, *, expected_N: int | None = None) -> GridLinesData:
    """A file of either split, to be reconstructed: its split is read from whether it holds
    ground truth (a test file, scored), and a train file's scan must be a complete raster grid
    as well, since stitching needs one."""
    arrays = read_arrays(path)
    split = "test" if "YY_ground_truth" in arrays else "train"
    data = check_arrays(arrays, path, split, expected_N)
    if split == "train":
        dims = {"S": data.objectGuess.shape[-1], "N": data.N, "I": data.objectGuess.shape[0]}
        _check_raster_grid(arrays, dims, data.metadata["stride"], str(path))
    return data


def write_npz(path: str | os.PathLike, data: GridLinesData) -> Path:
    """Validate and write one split atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    split = data.metadata.get("split")
    if split not in SPLITS:
        raise DataError(path, "metadata", f"split one of {SPLITS}", f"split={split!r}")
    arrays = data.to_arrays()
    check_arrays(arrays, path, split)
    return artifacts.write_npz(path, **arrays)
