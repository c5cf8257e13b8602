"""The edges: MRC maps and stacks (mrcfile), RELION STAR metadata (3.0 and 3.1 with optics groups).

Readers refuse bad input with one line naming the file and the problem (:class:`InputError`); writers
write atomically (a temporary file beside the target, renamed over it).

STAR conventions (RELION):

- 3.1 files have a ``data_optics`` block (``rlnOpticsGroup``, ``rlnImagePixelSize``, ``rlnVoltage``,
  ``rlnSphericalAberration``, ``rlnAmplitudeContrast``, ``rlnImageSize``) and a ``data_particles``
  block; 3.0 files have one block with the optics columns per particle and the pixel size as
  ``rlnPixelSize`` or ``rlnDetectorPixelSize`` (um) / ``rlnMagnification``.
- ``rlnImageName`` is ``N@stack.mrcs`` (N from 1), or a file name alone for a single-image file; a
  relative stack path is looked for beside the STAR file, in the working folder, then in each folder
  above the STAR file (RELION writes paths relative to its project folder, e.g. ``Extract/job012/...``
  in a STAR file in ``Refine3D/job020/``).
- Origins: ``rlnOriginXAngst``/``rlnOriginYAngst`` (3.1, A) or ``rlnOriginX``/``rlnOriginY`` (3.0,
  pixels): the translation that centres the particle.
- ``rlnRandomSubset`` (1 or 2) is the gold-standard half a particle belongs to.

Written STAR files are 3.1: one optics group per distinct set of optics values.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core import InputError, atomic_outputs
from ..core.errors import error_reason
from .ctf import CTFParameters
from .geometry import euler_to_matrix, matrix_to_euler


# ------------------------------------------------------------------------------------------ MRC
@dataclass
class DensityMap:
    """A 3D map (``[z, y, x]``, float32), its voxel size in Angstrom (None where the header has none) and
    ``origin``: where its first voxel lies, (x, y, z) in Angstrom, from the header's origin and start
    indices (EMDB maps start at -box/2): a map written with it overlays this one in ChimeraX."""

    data: np.ndarray
    pixel_size: float | None
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def box(self) -> int:
        return int(self.data.shape[0])


def _open_mrc(path: Path, what: str) -> tuple[np.ndarray, float | None, Any]:
    """The data, the voxel size (None where unknown) and a copy of the header of an MRC file."""
    import mrcfile

    if not path.exists():
        raise InputError(f"no such {what}", path=path)
    if path.is_dir():
        raise InputError(f"is a directory, not a {what}", path=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old or incomplete headers (see SOURCE.md) are common
            with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                _check_mrc_size(mrc.header, path, what)
                if mrc.data is None:
                    raise InputError(f"not an MRC {what} (no data could be read)", path=path)
                data = np.array(mrc.data, dtype=np.float32)
                voxel = float(mrc.voxel_size.x)
                header = mrc.header.copy()
    except InputError:
        raise
    except (OSError, ValueError, TypeError, EOFError) as exc:
        raise InputError(f"cannot read the MRC {what} ({error_reason(exc)})", path=path) from None
    pixel = voxel if math.isfinite(voxel) and voxel > 0 else None
    return data, pixel, header


def _check_mrc_size(header: Any, path: Path, what: str) -> None:
    """Refuse a file whose size is not what its header describes: a truncated file, or a header whose
    mode or dimensions are wrong (permissive mode would read such data as other numbers, silently)."""
    from mrcfile.utils import data_dtype_from_header, data_shape_from_header

    try:
        dtype = data_dtype_from_header(header)
        shape = data_shape_from_header(header)
    except (ValueError, TypeError):
        return  # an unknown mode or bad dimensions: refused below, as no data can be read
    if min(shape) < 0:
        return
    expected = int(header.nbytes) + int(header.nsymbt) + math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise InputError(
            f"the MRC {what} is truncated ({actual} bytes, its header describes {expected})", path=path
        )
    if actual > expected:
        raise InputError(
            f"the MRC {what} is {actual - expected} bytes larger than its header describes "
            f"(mode {int(header.mode)}, {shape[::-1]} as x, y, z): a wrong mode or a corrupt header",
            path=path,
        )


def read_map(path: str | os.PathLike[str]) -> DensityMap:
    """Read a cubic 3D map from an MRC file.

    The voxel size is None where the header gives 0 (unknown).
    """
    path = Path(path)
    data, pixel, header = _open_mrc(path, "map")
    if data.ndim != 3 or data.size == 0:
        raise InputError(f"a map must be three-dimensional, this MRC file has shape {data.shape}", path=path)
    if len(set(data.shape)) != 1:
        raise InputError(f"the map is not a cube (shape {data.shape[::-1]} as x, y, z)", path=path)
    if not np.all(np.isfinite(data)):
        raise InputError("the map contains NaN or Inf values", path=path)
    if not np.any(data):
        raise InputError("the map is all zeros", path=path)
    return DensityMap(data, pixel, _origin_of(header, pixel))


def _origin_of(header: Any, pixel: float | None) -> tuple[float, float, float]:
    """The first voxel's position (x, y, z, Angstrom): the header's origin plus its start indices times
    the voxel size (0 where either is unknown or not finite)."""
    origin = [float(header.origin[axis]) for axis in ("x", "y", "z")]
    start = [float(header.nxstart), float(header.nystart), float(header.nzstart)]
    step = pixel if pixel is not None else 0.0
    position = tuple(o + n * step for o, n in zip(origin, start, strict=True))
    return position if all(math.isfinite(v) for v in position) else (0.0, 0.0, 0.0)  # type: ignore[return-value]


def write_mrc(path: str | os.PathLike[str], data: np.ndarray, pixel_size: float | None,
              origin: Sequence[float] | None = None) -> None:
    """Write a map (3D) or an image stack (``(n, y, x)``, MRC space group 0) atomically as float32;
    ``origin``: the first voxel's position (x, y, z, Angstrom), written in the header's origin field."""
    import mrcfile

    path = Path(path)
    array = np.ascontiguousarray(data, dtype=np.float32)
    # mrcfile warns about header statistics of non-finite data (the tests write such files on purpose)
    with atomic_outputs([path]) as (tmp,), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(array)
            if path.suffix.lower() == ".mrcs":
                mrc.set_image_stack()
            if pixel_size is not None:
                mrc.voxel_size = float(pixel_size)
            if origin is not None:
                mrc.header.origin = tuple(float(v) for v in origin)
            mrc.update_header_stats()


def write_map(path: str | os.PathLike[str], volume: np.ndarray, pixel_size: float | None,
              origin: Sequence[float] | None = None) -> None:
    """Write a 3D map atomically (MRC, float32); a map with NaN or Inf values is refused (every reader,
    ours included, would refuse the file)."""
    if np.asarray(volume).ndim != 3:
        raise ValueError("write_map needs a 3D array")
    if not np.all(np.isfinite(volume)):
        raise ValueError(f"the map for {path} contains NaN or Inf values: not written")
    write_mrc(path, volume, pixel_size, origin)


# ----------------------------------------------------------------------------------------- STAR
def read_star(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The data blocks of a STAR file as pandas DataFrames keyed by block name (``""`` for ``data_``)."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such STAR file", path=path)
    if path.is_dir():
        raise InputError("is a directory, not a STAR file", path=path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the STAR file ({error_reason(exc)})", path=path) from None
    if b"\x00" in content[:4096]:
        raise InputError("not a STAR file (binary content)", path=path)
    if b"data_" not in content:
        raise InputError("not a STAR file (no data_ block)", path=path)
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:  # starfile would read such a file as having no blocks at all
        raise InputError(f"not a STAR file (byte {exc.start + 1} is not UTF-8 text)", path=path) from None
    import starfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many kinds on malformed text
        raise InputError(f"cannot parse the STAR file ({error_reason(exc)})", path=path) from None
    import pandas as pd

    out = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            # a repeated column would make block[column] a table, not the one column asked for
            repeated = block.columns[block.columns.duplicated()]
            if len(repeated):
                raise InputError(f"block data_{name} has the column {repeated[0]} twice", path=path)
            out[name] = block
        else:  # a key-value block: one row
            out[name] = pd.DataFrame([block]) if isinstance(block, Mapping) else block
    return out


def _format_value(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if v == int(v) and abs(v) < 1e15:
            return f"{v:.6f}"
        return f"{v:.6f}" if 1e-4 <= abs(v) < 1e9 else f"{v:.6e}"
    text = str(value)
    if not text or any(c.isspace() for c in text):
        return '"' + text.replace('"', "'") + '"'
    return text


def star_text(blocks: Mapping[str, Mapping[str, Sequence[Any] | np.ndarray]], comment: str = "") -> str:
    """STAR text (RELION 3.1 style, ``# version 30001``) of blocks given as column name -> values."""
    lines = []
    if comment:
        lines += [f"# {comment}", ""]
    for name, columns in blocks.items():
        names = list(columns)
        n = len(columns[names[0]]) if names else 0
        for col in names:
            if len(columns[col]) != n:
                raise ValueError(f"column {col} of block {name} has {len(columns[col])} rows, not {n}")
        lines += ["", "# version 30001", "", f"data_{name}", "", "loop_"]
        lines += [f"_{col} #{i + 1}" for i, col in enumerate(names)]
        cols = [list(columns[c]) for c in names]
        for row in range(n):
            lines.append(" ".join(_format_value(c[row]) for c in cols))
        lines.append("")
    return "\n".join(lines) + "\n"


def write_star(
    path: str | os.PathLike[str], blocks: Mapping[str, Mapping[str, Any]], comment: str = ""
) -> None:
    """Write STAR blocks atomically."""
    from ..core.atomic import atomic_write_text

    atomic_write_text(path, star_text(blocks, comment))


# ------------------------------------------------------------------------------------ particles
OPTICS_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


@dataclass
class ParticleStack:
    """Particle images with their metadata, as read from a STAR file and its MRC stacks.

    ``images`` is ``(n, box, box)`` float32; ``origins`` are in pixels (RELION's sign); ``rotations``
    are RELION's matrices ``A`` (None where the STAR has no angles); ``subsets`` are 1/2 (None where
    the STAR has no ``rlnRandomSubset``). ``particles`` and ``optics`` keep every column of the STAR as
    read (column name -> array), so that a written STAR carries them on; ``image_names`` are the
    resolved ``(stack path, index from 1)``.
    """

    images: np.ndarray
    pixel_size: float
    ctf: CTFParameters
    rotations: np.ndarray | None = None
    origins: np.ndarray | None = None
    subsets: np.ndarray | None = None
    particles: dict[str, np.ndarray] = field(default_factory=dict)
    optics: dict[str, np.ndarray] | None = None
    image_names: list[tuple[Path, int]] = field(default_factory=list)
    source: Path | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def box(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: np.ndarray) -> ParticleStack:
        """The particles ``index`` (an integer or boolean array)."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return replace(
            self,
            images=self.images[idx],
            ctf=self.ctf.subset(idx),
            rotations=pick(self.rotations),
            origins=pick(self.origins),
            subsets=pick(self.subsets),
            particles={k: v[idx] for k, v in self.particles.items()},
            image_names=[self.image_names[i] for i in idx] if self.image_names else [],
        )

    @property
    def euler_angles(self) -> np.ndarray | None:
        return None if self.rotations is None else matrix_to_euler(self.rotations)


def _numeric(block: Any, column: str, path: Path, *, required: bool = True) -> np.ndarray | None:
    if column not in block.columns:
        if required:
            raise InputError(f"no {column} column", path=path)
        return None
    try:
        values = np.asarray(block[column], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"column {column} is not numeric", path=path) from None
    _refuse_rows(~np.isfinite(values), column, "a missing or non-finite value", path)
    return values


def _refuse_rows(bad: np.ndarray, column: str, what: str, path: Path) -> None:
    """Refuse ``column`` where any of its rows is ``bad``, naming the first (rows count from 1)."""
    if bad.any():
        raise InputError(f"column {column} has {what} in row {int(np.argmax(bad)) + 1}", path=path)


def _integers(block: Any, column: str, path: Path) -> np.ndarray:
    """A required column of whole numbers (group ids, half sets): 1.5 is refused, not truncated to 1."""
    values = _numeric(block, column, path)
    _refuse_rows(values != np.round(values), column, "a non-integer value", path)
    return values.astype(int)


def _particle_block(blocks: dict[str, Any], path: Path) -> tuple[Any, Any]:
    with_images = [
        name for name, b in blocks.items() if hasattr(b, "columns") and "rlnImageName" in b.columns
    ]
    if not with_images:
        raise InputError("no block with an rlnImageName column (not a particle STAR file)", path=path)
    name = "particles" if "particles" in with_images else with_images[0]
    optics = blocks.get("optics")
    return blocks[name], optics


def _pixel_size(block: Any, optics: Any, index_of_group: np.ndarray | None, path: Path) -> float:
    candidates: list[np.ndarray] = []
    if optics is not None and index_of_group is not None:
        if "rlnImagePixelSize" in optics.columns:
            # only the groups the particles use: a subset keeps the optics table of the whole data set
            per_group = _numeric(optics, "rlnImagePixelSize", path)[index_of_group]
            candidates.append(per_group)
    for col in ("rlnImagePixelSize", "rlnPixelSize"):
        if col in block.columns:
            candidates.append(_numeric(block, col, path))
    if "rlnDetectorPixelSize" in block.columns and "rlnMagnification" in block.columns:
        detector = _numeric(block, "rlnDetectorPixelSize", path)
        magnification = _numeric(block, "rlnMagnification", path)
        if np.any(magnification <= 0):
            raise InputError("rlnMagnification must be positive", path=path)
        candidates.append(detector * 1e4 / magnification)
    if not candidates:
        raise InputError(
            "no pixel size: need rlnImagePixelSize (optics), rlnPixelSize, or "
            "rlnDetectorPixelSize with rlnMagnification",
            path=path,
        )
    values = np.concatenate([np.atleast_1d(c) for c in candidates])
    if np.any(values <= 0):
        raise InputError("the pixel size must be positive", path=path)
    if values.max() - values.min() > 1e-3 * values.max():
        raise InputError(
            f"the pixel size is not one value (from {values.min():.4g} to {values.max():.4g} A); "
            "particles of several pixel sizes are not supported",
            path=path,
        )
    return float(values[0])


def _optics_value(
    block: Any, optics: Any, index_of_group: np.ndarray | None, column: str, path: Path, n: int
) -> np.ndarray:
    in_particles = _numeric(block, column, path, required=False)
    in_optics = None
    if optics is not None and index_of_group is not None and column in optics.columns:
        in_optics = _numeric(optics, column, path)[index_of_group]
    if (
        in_particles is not None
        and in_optics is not None
        and not np.allclose(in_particles, in_optics, rtol=1e-4)
    ):
        raise InputError(f"{column} differs between the optics table and the particles", path=path)
    value = in_particles if in_particles is not None else in_optics
    if value is None:
        raise InputError(f"no {column} (needed for the CTF) in the particles or the optics table", path=path)
    return np.broadcast_to(value, (n,)).astype(float)


def _parse_image_name(text: str, path: Path, row: int) -> tuple[str, int]:
    text = str(text).strip()
    if "@" in text:
        number, stack = text.split("@", 1)
        try:
            index = int(number)
        except ValueError:
            raise InputError(f"row {row}: rlnImageName {text!r} is not N@stack", path=path) from None
        if index < 1:
            raise InputError(f"row {row}: image number {index} in {text!r} (they count from 1)", path=path)
        return stack, index
    return text, 1


def _resolve_stack(name: str, star_dir: Path) -> Path | None:
    """The file a stack name means, or None where there is none. RELION writes names relative to its
    project folder (where it runs), other tools relative to the STAR file: both are tried."""
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    for base in (star_dir, Path.cwd(), *star_dir.resolve().parents):
        if (base / candidate).exists():
            return base / candidate
    return None


def _load_images(names: list[tuple[Path, int]], path: Path, whole_files: set[Path]) -> np.ndarray:
    """The images ``names`` asks for; a stack in ``whole_files`` was named without ``N@``, so it must
    hold one image."""
    by_stack: dict[Path, list[int]] = {}
    for i, (stack, _) in enumerate(names):
        by_stack.setdefault(stack, []).append(i)
    images: np.ndarray | None = None
    box: int | None = None
    for stack, rows in by_stack.items():
        if not stack.exists():
            raise InputError(f"the particle stack {stack} does not exist", path=path)
        data, _, _ = _open_mrc(stack, "particle stack")
        if data.ndim == 2:
            data = data[None]
        elif stack in whole_files and data.ndim == 3 and data.shape[0] > 1:
            # a name without N@ is the whole file: here a volume (a subtomogram), not one image
            raise InputError(
                f"rlnImageName names this file without N@, as one image, but it holds {data.shape[0]} "
                "sections (a volume?)",
                path=stack,
            )
        if data.ndim != 3 or data.shape[0] == 0 or data.size == 0:
            raise InputError(
                f"the particle stack is empty or not a stack of 2D images (shape {data.shape})", path=stack
            )
        if data.shape[1] != data.shape[2]:
            raise InputError(f"the images are not square ({data.shape[2]} x {data.shape[1]})", path=stack)
        if box is None:
            box = int(data.shape[1])
            images = np.empty((len(names), box, box), dtype=np.float32)
        elif data.shape[1] != box:
            raise InputError(f"the images are {data.shape[1]} pixels, other stacks have {box}", path=stack)
        wanted = np.array([names[i][1] for i in rows]) - 1
        if wanted.max() >= data.shape[0]:
            raise InputError(
                f"image {int(wanted.max()) + 1} is asked for but the stack holds {data.shape[0]}", path=stack
            )
        picked = data[wanted]
        finite = np.isfinite(picked).all(axis=(1, 2))
        if not finite.all():
            raise InputError(
                f"image {int(wanted[np.argmin(finite)]) + 1} contains NaN or Inf values", path=stack
            )
        assert images is not None
        images[rows] = picked
    assert images is not None
    return images


def read_particles(path: str | os.PathLike[str], *, load_images: bool = True) -> ParticleStack:
    """Read a RELION particle STAR file (3.0 or 3.1) and the images it names.

    Everything is checked before anything is used: the image stacks exist, hold the images named,
    are square, agree in size with each other and with the optics table, and hold finite values;
    the CTF columns are present; origins given both in pixels and in Angstrom agree; random subsets
    are 1 or 2. Any problem is an :class:`InputError` naming the file.
    """
    path = Path(path)
    blocks = read_star(path)
    block, optics = _particle_block(blocks, path)
    n = len(block)
    if n == 0:
        raise InputError("the particle table is empty", path=path)

    # optics groups (3.1)
    index_of_group = None
    groups = None
    if optics is not None and "rlnOpticsGroup" not in getattr(optics, "columns", ()):
        # without it the optics values (pixel size, voltage) cannot be given to any particle
        raise InputError("the optics table has no rlnOpticsGroup column", path=path)
    if optics is not None:
        group_ids = _integers(optics, "rlnOpticsGroup", path)
        ids, counts = np.unique(group_ids, return_counts=True)
        repeated = ids[counts > 1].tolist()
        if repeated:
            raise InputError(f"the optics table lists optics group(s) {repeated} more than once", path=path)
        if "rlnOpticsGroup" in block.columns:
            groups = _integers(block, "rlnOpticsGroup", path)
        elif len(group_ids) == 1:
            groups = np.full(n, group_ids[0])
        else:
            raise InputError(
                "several optics groups but the particles have no rlnOpticsGroup column", path=path
            )
        lookup = {g: i for i, g in enumerate(group_ids)}
        missing = sorted(set(groups.tolist()) - set(lookup))
        if missing:
            raise InputError(
                f"particles name optics group(s) {missing} that the optics table lacks", path=path
            )
        index_of_group = np.array([lookup[g] for g in groups])
    pixel_size = _pixel_size(block, optics, index_of_group, path)
    _check_2d_unmultiplied(block, optics, index_of_group, path)

    # CTF
    defocus_u = _numeric(block, "rlnDefocusU", path, required=False)
    if defocus_u is None:
        raise InputError("no rlnDefocusU column: the CTF parameters are needed", path=path)
    defocus_v = _numeric(block, "rlnDefocusV", path, required=False)
    angle = _numeric(block, "rlnDefocusAngle", path, required=False)
    values = {col: _optics_value(block, optics, index_of_group, col, path, n) for col in OPTICS_COLUMNS}
    if np.any(values["rlnVoltage"] <= 0):
        raise InputError("rlnVoltage must be positive", path=path)
    if np.any((values["rlnAmplitudeContrast"] < 0) | (values["rlnAmplitudeContrast"] >= 1)):
        raise InputError("rlnAmplitudeContrast must be in [0, 1)", path=path)
    # RELION's defocus is positive underfocus and its Cs a magnitude: a negative value is a corrupt or
    # sign-flipped table, which would otherwise refine against a wrong CTF without a word
    for column, value in (("rlnDefocusU", defocus_u), ("rlnDefocusV", defocus_v)):
        if value is not None:
            _refuse_rows(value < 0, column, "a negative value", path)
    if np.any(values["rlnSphericalAberration"] < 0):
        raise InputError("rlnSphericalAberration must not be negative", path=path)
    scale = _numeric(block, "rlnCtfScalefactor", path, required=False)
    if scale is not None and np.any(scale <= 0):
        raise InputError(
            f"column rlnCtfScalefactor must be positive (row {int(np.argmax(scale <= 0)) + 1})", path=path
        )
    ctf = CTFParameters(
        defocus_u=defocus_u,
        defocus_v=defocus_u if defocus_v is None else defocus_v,
        defocus_angle=0.0 if angle is None else angle,
        voltage=values["rlnVoltage"],
        cs=values["rlnSphericalAberration"],
        amplitude_contrast=values["rlnAmplitudeContrast"],
        phase_shift=_phase_shift(block, path),
        bfactor=_numeric(block, "rlnCtfBfactor", path, required=False)
        if "rlnCtfBfactor" in block.columns
        else 0.0,
        scale=1.0 if scale is None else scale,
    )
    if len(ctf) != n:
        ctf = CTFParameters(**{k: np.broadcast_to(getattr(ctf, k), (n,)) for k in ctf.__dataclass_fields__})

    # poses
    rotations = None
    if all(c in block.columns for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
        rotations = euler_to_matrix(
            _numeric(block, "rlnAngleRot", path),
            _numeric(block, "rlnAngleTilt", path),
            _numeric(block, "rlnAnglePsi", path),
        )
    origins = _origins(block, pixel_size, path)
    subsets = None
    if "rlnRandomSubset" in block.columns:
        subsets = _integers(block, "rlnRandomSubset", path)
        if not set(subsets.tolist()) <= {1, 2}:
            raise InputError(
                f"rlnRandomSubset must be 1 or 2, found {sorted(set(subsets.tolist()) - {1, 2})}", path=path
            )

    # images
    names = []
    whole_files: set[Path] = set()
    resolved: dict[str, Path | None] = {}  # one look-up per stack, not per particle
    for row, text in enumerate(block["rlnImageName"], start=1):
        stack, index = _parse_image_name(text, path, row)
        if stack not in resolved:
            resolved[stack] = _resolve_stack(stack, path.parent)
        found = resolved[stack]
        if found is None:
            if load_images:
                where = (
                    ""
                    if Path(stack).is_absolute()
                    else f" beside the STAR file, in a folder above it (a RELION project folder) or in "
                    f"the working folder {Path.cwd()}"
                )
                raise InputError(f"row {row}: the particle stack {stack} does not exist{where}", path=path)
            found = path.parent / stack
        if "@" not in str(text):
            whole_files.add(found)
        names.append((found, index))
    if load_images:
        images = _load_images(names, path, whole_files)
    else:
        images = np.zeros((n, 0, 0), dtype=np.float32)
    box = images.shape[-1] if load_images else None
    if (
        box is not None
        and optics is not None
        and index_of_group is not None
        and "rlnImageSize" in optics.columns
    ):
        sizes = _numeric(optics, "rlnImageSize", path).astype(int)[index_of_group]
        if np.any(sizes != box):
            raise InputError(
                f"rlnImageSize in the optics table is {int(sizes[sizes != box][0])} but the images "
                f"are {box} pixels",
                path=path,
            )

    particles = {col: block[col].to_numpy() for col in block.columns}
    optics_columns = None if optics is None else {col: optics[col].to_numpy() for col in optics.columns}
    return ParticleStack(
        images, pixel_size, ctf, rotations, origins, subsets, particles, optics_columns, names, path
    )


def _phase_shift(block: Any, path: Path) -> np.ndarray | float:
    """The phase-plate shift in degrees: RELION's rlnPhaseShift, or rlnCtfPhaseShift as Scipion writes it
    (which would otherwise be dropped without a word, and the CTF be wrong)."""
    relion = _numeric(block, "rlnPhaseShift", path, required=False)
    other = _numeric(block, "rlnCtfPhaseShift", path, required=False)
    if relion is not None and other is not None and not np.allclose(relion, other, atol=1e-3):
        raise InputError("rlnPhaseShift and rlnCtfPhaseShift disagree", path=path)
    value = relion if relion is not None else other
    return 0.0 if value is None else value


def _check_2d_unmultiplied(block: Any, optics: Any, index_of_group: np.ndarray | None, path: Path) -> None:
    """Refuse subtomograms (RELION 4 pseudo-subtomograms, rlnImageDimensionality 3) and images already
    multiplied by their CTF: both would be read as ordinary 2D particles, and refined wrongly."""
    for column, allowed, what in (
        ("rlnImageDimensionality", 2, "only 2D particle images are supported"),
        ("rlnCtfDataAreCtfPremultiplied", 0, "images already multiplied by their CTF are not supported"),
    ):
        values = []
        if column in block.columns:
            values.append(_numeric(block, column, path))
        if optics is not None and index_of_group is not None and column in optics.columns:
            values.append(_numeric(optics, column, path)[index_of_group])
        for value in values:
            if np.any(value != allowed):
                raise InputError(f"{column} is {value[value != allowed][0]:g}: {what}", path=path)


def _origins(block: Any, pixel_size: float, path: Path) -> np.ndarray | None:
    angst = [c in block.columns for c in ("rlnOriginXAngst", "rlnOriginYAngst")]
    pixels = [c in block.columns for c in ("rlnOriginX", "rlnOriginY")]
    if any(angst) and not all(angst):
        raise InputError("rlnOriginXAngst and rlnOriginYAngst must come together", path=path)
    if any(pixels) and not all(pixels):
        raise InputError("rlnOriginX and rlnOriginY must come together", path=path)
    from_angst = from_pixels = None
    if all(angst):
        from_angst = (
            np.stack(
                [_numeric(block, "rlnOriginXAngst", path), _numeric(block, "rlnOriginYAngst", path)], axis=1
            )
            / pixel_size
        )
    if all(pixels):
        from_pixels = np.stack(
            [_numeric(block, "rlnOriginX", path), _numeric(block, "rlnOriginY", path)], axis=1
        )
    if (
        from_angst is not None
        and from_pixels is not None
        and not np.allclose(from_angst, from_pixels, atol=0.01)
    ):
        raise InputError("rlnOriginX/Y (pixels) and rlnOriginX/YAngst disagree", path=path)
    return from_angst if from_angst is not None else from_pixels


def relative_image_name(stack: Path, index: int, star_dir: Path) -> str:
    """``NNNNNN@path`` with the stack path relative to the folder of the STAR file being written."""
    try:
        rel = os.path.relpath(Path(stack).resolve(), Path(star_dir).resolve())
    except ValueError:  # another drive (Windows)
        rel = str(Path(stack).resolve())
    return f"{index:06d}@{rel}"


_REBUILT_OPTICS = frozenset(
    {
        "rlnOpticsGroup",
        "rlnOpticsGroupName",
        *OPTICS_COLUMNS,
        "rlnImagePixelSize",
        "rlnImageSize",
        "rlnImageDimensionality",
    }
)


def _source_optics_rows(stack: ParticleStack) -> np.ndarray | None:
    """The row of ``stack.optics`` each particle belongs to, or None where there is no optics table."""
    if not stack.optics or "rlnOpticsGroup" not in stack.optics:
        return None
    lookup = {int(g): i for i, g in enumerate(np.asarray(stack.optics["rlnOpticsGroup"]).astype(int))}
    groups = stack.particles.get("rlnOpticsGroup")
    if groups is None:
        return np.zeros(len(stack), dtype=int) if len(lookup) == 1 else None
    try:
        return np.array([lookup[int(g)] for g in groups])
    except (KeyError, TypeError, ValueError):  # read_particles refuses such files; built by hand
        return None


def particles_star_blocks(
    stack: ParticleStack,
    star_dir: Path,
    *,
    rotations: np.ndarray | None = None,
    origins: np.ndarray | None = None,
    subsets: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """RELION 3.1 blocks (``optics``, ``particles``) for ``stack``, with poses and subsets replaced by
    the given ones; other particle columns are kept, image names re-pointed from ``star_dir``."""
    n = len(stack)
    if len(stack.image_names) != n:
        raise InputError(
            "the particles were not read from image files, so a STAR file cannot name their images"
        )
    pixel = stack.pixel_size
    keys = np.stack([stack.ctf.voltage, stack.ctf.cs, stack.ctf.amplitude_contrast], axis=1)
    source = _source_optics_rows(stack)
    if source is not None:  # input groups stay apart (they may differ in beam tilt, MTF, ...)
        keys = np.column_stack([source, keys])
    unique, first, group_index = np.unique(np.round(keys, 6), axis=0, return_index=True, return_inverse=True)
    group_index = group_index.ravel()
    unique = unique[:, -3:]
    k = unique.shape[0]
    ids = np.arange(1, k + 1)
    names = [f"opticsGroup{i + 1}" for i in range(k)]
    carried: dict[str, Any] = {}
    if source is not None and stack.optics is not None:
        rows = source[first]
        input_ids = np.asarray(stack.optics["rlnOpticsGroup"]).astype(int)[rows]
        if len(set(input_ids.tolist())) == k:  # no input group split: keep its number and name
            ids = input_ids
            if "rlnOpticsGroupName" in stack.optics:
                names = [str(v) for v in np.asarray(stack.optics["rlnOpticsGroupName"])[rows]]
        # the optics columns not rebuilt here (rlnMicrographOriginalPixelSize, rlnMtfFileName, beam
        # tilt, ...) are carried on: RELION's later jobs (CtfRefine, Polish) need them
        carried = {
            col: np.asarray(values)[rows]
            for col, values in stack.optics.items()
            if col not in _REBUILT_OPTICS
        }
    optics: dict[str, Any] = {
        "rlnOpticsGroup": ids,
        "rlnOpticsGroupName": names,
        "rlnVoltage": unique[:, 0],
        "rlnSphericalAberration": unique[:, 1],
        "rlnAmplitudeContrast": unique[:, 2],
        "rlnImagePixelSize": np.full(k, pixel),
        "rlnImageSize": np.full(k, stack.box, dtype=int),
        "rlnImageDimensionality": np.full(k, 2, dtype=int),
        **carried,
    }
    dropped = {
        "rlnOpticsGroup",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnPixelSize",
        "rlnImagePixelSize",
        "rlnMagnification",
        "rlnDetectorPixelSize",
        "rlnOriginX",
        "rlnOriginY",
        "rlnImageName",
        "rlnCtfPhaseShift",  # written as RELION's rlnPhaseShift below
    }
    particles: dict[str, Any] = {
        "rlnImageName": [relative_image_name(s, i, star_dir) for s, i in stack.image_names]
    }
    for col, values in stack.particles.items():
        if col not in dropped:
            particles[col] = values
    particles["rlnOpticsGroup"] = ids[group_index]
    particles["rlnDefocusU"] = stack.ctf.defocus_u
    particles["rlnDefocusV"] = stack.ctf.defocus_v
    particles["rlnDefocusAngle"] = stack.ctf.defocus_angle
    if "rlnPhaseShift" in particles or np.any(stack.ctf.phase_shift != 0):
        particles["rlnPhaseShift"] = np.broadcast_to(stack.ctf.phase_shift, (n,))
    rot = rotations if rotations is not None else stack.rotations
    if rot is not None:
        euler = matrix_to_euler(rot)
        particles["rlnAngleRot"], particles["rlnAngleTilt"], particles["rlnAnglePsi"] = euler.T
    org = origins if origins is not None else stack.origins
    if org is not None:
        particles["rlnOriginXAngst"] = org[:, 0] * pixel
        particles["rlnOriginYAngst"] = org[:, 1] * pixel
    sub = subsets if subsets is not None else stack.subsets
    if sub is not None:
        particles["rlnRandomSubset"] = np.asarray(sub, dtype=int)
    for col, values in (extra or {}).items():
        particles[col] = values
    for col, values in particles.items():
        if len(values) != n:
            raise ValueError(f"column {col} has {len(values)} values for {n} particles")
    return {"optics": optics, "particles": particles}
