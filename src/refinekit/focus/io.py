"""Reading focal stacks and writing what the focus domain produces (the edges of the domain).

A stack is read lazily: :func:`read_stack` checks every frame's header (size, bit depth, channels) and
decodes a frame only when :meth:`FrameStack.read` asks for it, so a long stack never has to sit in
memory at full precision. Every writer encodes in memory first and then replaces the target
atomically, so a failure leaves no partial file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import InputError
from ..core.atomic import atomic_write_bytes
from ..core.errors import error_reason, os_error_text

#: File name extensions read as frames when a folder is given.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
_TIFF = (".tif", ".tiff")
_SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
FrameProps = tuple[tuple[int, int], int, np.dtype]  # (height, width), channels, dtype


@dataclass(frozen=True)
class FrameRef:
    """Where one frame lives: a file, the frame's index inside a multi-frame TIFF (else None), and the
    EXIF orientation it is decoded with (read once, with the header)."""

    path: Path
    index: int | None = None
    orientation: int = 1

    @property
    def name(self) -> str:
        return self.path.name if self.index is None else f"{self.path.name}[{self.index}]"


class _Frames:
    """What the two kinds of stack share: the bit depth of their ``dtype`` and ``read_float``."""

    dtype: np.dtype

    def read(self, i: int) -> np.ndarray:  # pragma: no cover - each stack reads its own way
        raise NotImplementedError

    @property
    def bits(self) -> int:
        return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(self.dtype, 32)

    @property
    def scale(self) -> float:
        """What a frame is divided by to bring it to [0, 1]."""
        return {8: 255.0, 16: 65535.0}.get(self.bits, 1.0)

    def read_float(self, i: int) -> np.ndarray:
        image = self.read(i)
        if image.dtype == np.float32:
            return image
        return np.multiply(image, np.float32(1.0 / self.scale), dtype=np.float32)  # one pass


@dataclass
class FrameStack(_Frames):
    """A focal stack on disk: ``len(stack)`` frames of one size, bit depth and channel count.

    Frames are decoded on demand. ``read(i)`` returns the native array (``uint8``, ``uint16`` or
    ``float32``; ``(H, W)`` grey or ``(H, W, 3)`` RGB); ``read_float(i)`` the same scaled to [0, 1] as
    ``float32``. ``reordered(order)`` gives the same frames in another order.

    >>> import numpy as np, tempfile, pathlib, cv2
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for k in range(3):
    ...     _ = cv2.imwrite(str(folder / f"f{k}.png"), np.full((4, 6), 10 * k, np.uint8))
    >>> stack = read_stack([folder])
    >>> len(stack), stack.shape, stack.channels, stack.dtype.name, stack.names
    (3, (4, 6), 1, 'uint8', ['f0.png', 'f1.png', 'f2.png'])
    >>> float(stack.read_float(2)[0, 0])
    0.0784313753247261
    """

    refs: list[FrameRef]
    shape: tuple[int, int]
    channels: int
    dtype: np.dtype

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.refs]

    @property
    def paths(self) -> list[Path]:
        """The distinct files the frames come from, in order."""
        seen: dict[Path, None] = {}
        for ref in self.refs:
            seen.setdefault(ref.path, None)
        return list(seen)

    def reordered(self, order: Sequence[int]) -> FrameStack:
        return FrameStack([self.refs[i] for i in order], self.shape, self.channels, self.dtype)

    def subset(self, indices: Iterable[int]) -> FrameStack:
        return self.reordered(list(indices))

    def read(self, i: int) -> np.ndarray:
        """Frame ``i`` as stored (grey ``(H, W)`` or RGB ``(H, W, 3)``), checked against the stack."""
        ref = self.refs[i]
        image = _decode(ref)
        if image.shape[:2] != self.shape or _channels(image) != self.channels or image.dtype != self.dtype:
            raise InputError(f"frame decodes as {_describe(image)}, the stack is "
                             f"{self.shape[1]}x{self.shape[0]} {self.channels}-channel {self.dtype}",
                             path=ref.name if ref.index is not None else ref.path)
        _check_finite(image, ref.name if ref.index is not None else ref.path)
        return image


class ArrayStack(_Frames):
    """Frames already in memory (``(n, H, W)`` or ``(n, H, W, 3)``), read like a :class:`FrameStack`.

    ``uint8`` and ``uint16`` arrays are scaled by their type's range; float (and bool) arrays are taken
    to be in [0, 1]. Other integer types are refused: their bit depth is unknown (an ``int64`` array
    may hold 8-, 12- or 16-bit data), and taking their values as [0, 1] fractions gave a fused image
    far out of range.

    >>> stack = ArrayStack(np.zeros((3, 4, 5, 3), np.uint8))
    >>> len(stack), stack.shape, stack.channels, stack.bits
    (3, (4, 5), 3, 8)
    """

    def __init__(self, frames: np.ndarray, names: Sequence[str] | None = None) -> None:
        frames = np.asarray(frames)
        if frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[3] not in (1, 3)):
            raise InputError(f"frames must be shaped (n, H, W) or (n, H, W, 3), got {frames.shape}")
        if frames.shape[0] < 2:
            raise InputError(f"a focal stack needs at least 2 frames, got {frames.shape[0]}")
        if frames.ndim == 4 and frames.shape[3] == 1:
            frames = frames[..., 0]
        if frames.dtype.kind in "iu" and frames.dtype not in _SUPPORTED_DTYPES:
            raise InputError(f"integer frames must be uint8 or uint16, got {frames.dtype}: convert them, "
                             "or scale them to float in [0, 1]")
        if frames.dtype.kind not in "uifb":  # complex would lose its imaginary part, objects may not convert
            raise InputError(f"unsupported pixel type {frames.dtype} (uint8, uint16, float or bool)")
        if frames.dtype not in _SUPPORTED_DTYPES:
            frames = frames.astype(np.float32)
        self.frames = frames
        self.shape = (int(frames.shape[1]), int(frames.shape[2]))
        self.channels = 1 if frames.ndim == 3 else 3
        self.dtype = frames.dtype
        self.names = list(names) if names is not None else [f"frame[{k}]" for k in range(len(frames))]
        if len(self.names) != len(frames):
            raise InputError(f"{len(self.names)} names for {len(frames)} frames")
        if frames.dtype == np.float32:
            for frame, name in zip(frames, self.names, strict=True):
                _check_finite(frame, name)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def read(self, i: int) -> np.ndarray:
        return self.frames[i]

    def reordered(self, order: Sequence[int]) -> ArrayStack:
        return ArrayStack(self.frames[list(order)], [self.names[i] for i in order])


Stack = FrameStack | ArrayStack


def as_stack(frames: Stack | np.ndarray | Sequence[str | os.PathLike[str]]) -> Stack:
    """A stack from a :class:`FrameStack`/:class:`ArrayStack`, an array of frames, or paths."""
    if isinstance(frames, FrameStack | ArrayStack):
        return frames
    if isinstance(frames, np.ndarray):
        return ArrayStack(frames)
    return read_stack(frames)


def _channels(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else image.shape[2]


def _describe(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]} {_channels(image)}-channel {image.dtype}"


def _check_finite(image: np.ndarray, where: object) -> None:
    """Refuse a float frame with NaN or Inf pixels: one such pixel spreads through the pyramid fusion
    and the alignment to a whole patch of the output (integer frames cannot hold them)."""
    if image.dtype.kind == "f":
        bad = image.size - int(np.count_nonzero(np.isfinite(image)))
        if bad:
            raise InputError(f"{bad} pixel value(s) are NaN or infinite: frames must be finite", path=where)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def read_stack(inputs: Sequence[str | os.PathLike[str]]) -> FrameStack:
    """Open a focal stack: image files, folders of images (sorted by name, numbers in numeric order),
    or multi-page / ImageJ / OME TIFF files (one frame per page or Z slice), in the order given.

    Frames are turned upright as their EXIF orientation says; an alpha channel is dropped; 1-bit
    images read as 8-bit (0 and 255), float16 and float64 as float32. 12-bit data in 16-bit files is
    taken as 16-bit (the result keeps its values). Refuses (:class:`~refinekit.core.InputError`, one
    line naming the file): a missing, unreadable or empty file, an empty folder, fewer than two
    frames, frames of different sizes, bit depths or channel counts, integer types other than 8- and
    16-bit unsigned, a TIFF whose frames are channels (C) or that spans two stack axes, and a TIFF
    compression tifffile cannot decode here.
    """
    if not inputs:
        raise InputError("no frames given")
    refs: list[FrameRef] = []
    props: list[FrameProps] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
                            and not p.name.startswith(".")), key=_natural_key)
            if not files:
                raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder", path=path)
        else:
            files = [path]
        for file in files:
            for ref, prop in _probe(file):
                refs.append(ref)
                props.append(prop)
    if len(refs) < 2:
        raise InputError(f"a focal stack needs at least 2 frames, got {len(refs)}"
                         + (f" ({refs[0].name})" if refs else ""))
    # one frame twice (a file given again, or inside a folder also given) would sit at two focus
    # positions at once: the depth map and the frame order would be wrong without a word
    seen: dict[tuple[Path, int | None], int] = {}
    for k, ref in enumerate(refs):
        first = seen.setdefault((ref.path.resolve(), ref.index), k)
        if first != k:
            raise InputError(f"the same frame is given twice (frames {first + 1} and {k + 1} of the stack)",
                             path=ref.name if ref.index is not None else ref.path)
    shape, channels, dtype = props[0]
    for ref, (s, c, d) in zip(refs[1:], props[1:], strict=True):
        where = ref.name if ref.index is not None else ref.path
        if s != shape:
            raise InputError(f"frame is {s[1]}x{s[0]} but {refs[0].name} is {shape[1]}x{shape[0]}: "
                             f"all frames of a stack must have one size", path=where)
        if d != dtype:
            raise InputError(f"mixed bit depths: this frame is {d}, {refs[0].name} is {dtype}", path=where)
        if c != channels:
            raise InputError(f"mixed grey and colour frames: this frame has {c} channel(s), "
                             f"{refs[0].name} has {channels}", path=where)
    return FrameStack(refs, shape, channels, dtype)


def _probe(path: Path) -> list[tuple[FrameRef, FrameProps]]:
    """Each frame in ``path`` with its (size, channels, dtype), from the header where possible."""
    if not path.exists():
        raise InputError("no such file", path=path)
    if path.is_dir():
        raise InputError("is a directory", path=path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read ({os_error_text(exc)})", path=path) from None
    if size == 0:
        raise InputError("empty file", path=path)
    if path.suffix.lower() in _TIFF:
        return _probe_tiff(path)
    png = _probe_png(path)
    if png is not None:
        orientation = _exif_orientation(path)
        return [(FrameRef(path, orientation=orientation), _oriented(png, orientation))]
    try:
        import imageio.v3 as iio

        props = iio.improps(path, plugin="pillow")
        shape = tuple(int(s) for s in props.shape)
        dtype = np.dtype(props.dtype)
    except Exception as exc:  # any decoder failure means an unreadable image
        raise InputError(f"not a readable image ({error_reason(exc)})", path=path) from None
    frames = (props.n_images or 1) if not props.is_batch else shape[0]
    if frames > 1:
        raise InputError("animated or multi-frame image: give multi-frame stacks as TIFF", path=path)
    if props.is_batch:  # Pillow reports any GIF as a batch, one of a single frame too
        shape = shape[1:]
    checked = _check_props(path, shape, dtype)
    orientation = _exif_orientation(path)
    return [(FrameRef(path, orientation=orientation), _oriented(checked, orientation))]


def _exif_orientation(path: Path) -> int:
    """The EXIF orientation (1-8) of a JPEG, PNG or WebP file, 1 where it has none. Phones and many
    cameras store a portrait picture sideways with this tag; viewers, Pillow's ``exif_transpose`` and
    ``cv2.imread`` turn it upright, but OpenCV's ``IMREAD_UNCHANGED`` and a header probe do not. Only
    the header is read; a file Pillow cannot open is left to the decoder's own error."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            raw = image.info.get("exif")  # parsed with the header: no pixel is decoded
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            orientation = int(exif.get(0x0112, 1))
    except Exception:
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _oriented(props: FrameProps, orientation: int) -> FrameProps:
    """Frame properties after :func:`_upright`: orientations 5-8 swap height and width."""
    (height, width), channels, dtype = props
    return ((width, height) if orientation >= 5 else (height, width)), channels, dtype


def _upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` turned as its EXIF orientation asks (as Pillow's ``ImageOps.exif_transpose``)."""
    turns = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
             7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}
    return turns[orientation](image) if orientation in turns else image


def _probe_png(path: Path) -> FrameProps | None:
    """Size, channels and dtype from a PNG's IHDR chunk as OpenCV will decode it (Pillow reports a
    16-bit colour PNG as 8-bit); None if the file is not a PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError as exc:
        raise InputError(f"cannot read ({os_error_text(exc)})", path=path) from None
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise InputError("not a readable image (truncated PNG header)", path=path)
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    bit_depth, colour_type = head[24], head[25]
    # OpenCV gives grey for type 0, BGR(A) for 2 (RGB), 3 (palette), 4 (grey + alpha), 6 (RGBA);
    # _decode takes grey + alpha back to grey (it is a grey image: as RGB it was refused beside grey
    # frames of the same camera, and cost three times the memory and work)
    channels = 1 if colour_type in (0, 4) else 3
    dtype = np.dtype(np.uint16) if bit_depth == 16 else np.dtype(np.uint8)
    if width < 1 or height < 1:
        raise InputError("empty image", path=path)
    return (height, width), channels, dtype


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs each damaged tag or page it skips; with logging not set up, Python prints those
    records to stderr beside the one-line error. A handler of our own for the while keeps them from
    that last-resort printer (an application's own logging still gets them)."""
    logger = logging.getLogger("tifffile")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _probe_tiff(path: Path) -> list[tuple[FrameRef, FrameProps]]:
    """Every frame of every image series in the file. A file written page by page (tifffile's
    ``TiffWriter.write`` per frame, or pages of different shapes) holds one series per write: reading
    the first alone dropped the others without a word."""
    import tifffile

    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            layouts = [(tuple(int(s) for s in series.shape), np.dtype(series.dtype), series.axes)
                       for series in tif.series]
            compressions = {int(series.keyframe.compression) for series in tif.series}
    except Exception as exc:
        raise InputError(f"not a readable TIFF ({error_reason(exc)})", path=path) from None
    for compression in compressions - {1}:
        # LZW, JPEG, PackBits, zstd... need the imagecodecs package: found here, not when the frame
        # is first decoded in the middle of the work
        try:
            tifffile.TIFF.DECOMPRESSORS[compression]
        except KeyError as exc:
            raise InputError(f"cannot decode this TIFF: {exc.args[0]}", path=path) from None
    if not layouts:
        raise InputError("not a readable TIFF (no image in it)", path=path)
    props: list[FrameProps] = []
    for shape, dtype, axes in layouts:
        frame_shape, n_frames = _tiff_layout(path, shape, axes)
        props += [_check_props(path, frame_shape, dtype)] * n_frames
    if len(props) == 1:
        return [(FrameRef(path), props[0])]
    return [(FrameRef(path, i), prop) for i, prop in enumerate(props)]


def _frame_axes(shape: tuple[int, ...], axes: str) -> tuple[int, bool] | None:
    """How many trailing axes of a TIFF series make one frame (YX, YXS, or SYX: RGB stored as one
    plane per colour, planar configuration "separate"), and whether the samples come first (SYX);
    None for a layout that ends in no frame."""
    if axes.endswith("YXS") and shape[-1] in (3, 4):
        return 3, False
    if axes.endswith("SYX") and shape[-3] in (3, 4):  # was read as three grey frames R, G, B
        return 3, True
    if axes.endswith("YX"):
        return 2, False
    return None


def _tiff_layout(path: Path, shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], int]:
    """(shape of one frame, number of frames) of a TIFF series: YX, YXS or SYX, then any leading
    frame axes."""
    layout = _frame_axes(shape, axes)
    if layout is None:
        raise InputError(f"unsupported TIFF layout (axes {axes}, shape {shape})", path=path)
    dims, planar = layout
    frame, lead = shape[-dims:], shape[:-dims]
    if planar:
        frame = (*frame[1:], frame[0])
    stacked = [(axis, n) for axis, n in zip(axes, lead, strict=False) if n > 1]
    if len(stacked) > 1:
        raise InputError(f"TIFF has more than one stack axis (axes {axes}, shape {shape}): "
                         "give a single z-series", path=path)
    if stacked and stacked[0][0] in "CS":
        # channels (fluorescence dyes, colours) are not focal planes: fused as such they gave
        # nonsense without a word. tifffile writes an (n, H, W) array as channels for imagej=True
        # and OME-TIFF unless it is told metadata={"axes": "ZYX"}.
        raise InputError(f"the TIFF's {stacked[0][1]} images are channels (axes {axes}), not focal "
                         "planes: give a z-series (axes ZYX)", path=path)
    return frame, int(np.prod(lead)) if lead else 1


def _check_props(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> FrameProps:
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)  # 1-bit (bilevel): _decode gives black and white as 0 and 255
    elif dtype.kind == "f":
        dtype = np.dtype(np.float32)  # float16 and float64: _decode converts them
    if len(shape) == 2:
        channels = 1
    elif len(shape) == 3 and shape[2] in (1, 3, 4):
        channels = 1 if shape[2] == 1 else 3  # an alpha channel is dropped
    else:
        raise InputError(f"unsupported image shape {shape}", path=path)
    if dtype not in _SUPPORTED_DTYPES:
        raise InputError(f"unsupported pixel type {dtype} (8- or 16-bit integer, or float)", path=path)
    if shape[0] < 1 or shape[1] < 1:
        raise InputError("empty image", path=path)
    return (int(shape[0]), int(shape[1])), channels, dtype


def _decode(ref: FrameRef) -> np.ndarray:
    """Decode one frame: OpenCV for the common formats (fast), tifffile for TIFF, imageio otherwise."""
    path = ref.path
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
                image = _tiff_frame(tif.series, ref.index or 0)
        else:
            import cv2

            raw = np.fromfile(path, dtype=np.uint8)
            cut = _cut_short(raw)
            if cut:
                raise InputError(f"cannot decode image ({cut})", path=path)
            image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
            if image is not None and image.ndim == 3 and raw.size > 25 and raw[25] == 4 \
                    and raw[:8].tobytes() == b"\x89PNG\r\n\x1a\n":
                image = image[:, :, 0]  # a grey + alpha PNG (OpenCV gives it as BGRA, B = G = R)
            elif image is not None and image.ndim == 3:
                code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
                image = cv2.cvtColor(image, code)
            if image is None:
                import imageio.v3 as iio

                image = np.asarray(iio.imread(path))
            image = _upright(image, ref.orientation)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot decode image ({error_reason(exc)})", path=path) from None
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * np.uint8(255)
    elif image.dtype.kind == "f" and image.dtype != np.float32:
        image = image.astype(np.float32)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.size == 0:
        raise InputError("empty image", path=path)
    return np.ascontiguousarray(image)


def _cut_short(raw: np.ndarray) -> str | None:
    """Why a PNG or JPEG file is cut short (its end marker is missing), or None. Their decoders would
    otherwise print to stderr themselves (libpng) or return the part that was there (libjpeg)."""
    head, tail = raw[:8].tobytes(), raw[-4096:].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" not in tail:
        return "the PNG is truncated: no IEND chunk"
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail:
        return "the JPEG is truncated: no end-of-image marker"
    return None


def _tiff_frame(all_series: Sequence, index: int) -> np.ndarray:
    """Frame ``index`` of a TIFF's frames (its series one after the other, as :func:`_probe_tiff`
    counts them), reading only its page where each page is one frame."""
    for series in all_series:
        frame_dims, planar = _frame_axes(series.shape, series.axes) or (2, False)
        frame_shape = tuple(series.shape[-frame_dims:])
        n_frames = int(np.prod(series.shape[:-frame_dims]))
        if index >= n_frames:
            index -= n_frames
            continue
        pages = series.pages
        if len(pages) == n_frames and pages[index] is not None:
            frame = np.asarray(pages[index].asarray()).reshape(frame_shape)
        else:
            frame = np.asarray(series.asarray()).reshape((n_frames, *frame_shape))[index]
        return np.moveaxis(frame, 0, -1) if planar else frame  # planes R, G, B to (H, W, 3)
    raise IndexError("the file holds fewer frames than when it was first read")


# ------------------------------------------------------------------------------------------ writing
def to_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A [0, 1] float image as ``dtype`` (rounded and clipped for integer types)."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return np.asarray(image, dtype=np.float32)
    top = 255.0 if dtype == np.uint8 else 65535.0
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * top), 0, top).astype(dtype)


def encode_image(image: np.ndarray, path: str | os.PathLike[str]) -> bytes:
    """Encode ``image`` (native dtype, grey or RGB) in the format named by ``path``'s extension.

    8-bit fits every format; 16-bit needs PNG or TIFF; 32-bit float needs TIFF.
    """
    path = Path(path)
    ext = path.suffix.lower()
    check_image_format(path, image.dtype)
    if ext in _TIFF:
        import tifffile

        buffer = io.BytesIO()
        tifffile.imwrite(buffer, image, photometric="rgb" if image.ndim == 3 else "minisblack",
                         compression="zlib" if image.dtype != np.float32 else None)
        return buffer.getvalue()
    import cv2

    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(ext, data, params)
    if not ok:
        raise InputError(f"cannot encode a {image.dtype} image as {ext}", path=path)
    return encoded.tobytes()


def check_image_format(path: str | os.PathLike[str], dtype: np.dtype) -> None:
    """Refuse, before any work is done, an output format that cannot hold ``dtype`` losslessly."""
    path = Path(path)
    ext = path.suffix.lower()
    dtype = np.dtype(dtype)
    allowed = {np.dtype(np.uint8): (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"),
               np.dtype(np.uint16): (".png", ".tif", ".tiff"),
               np.dtype(np.float32): (".tif", ".tiff")}[dtype]
    if ext not in allowed:
        raise InputError(f"cannot write a {dtype} image as {ext or 'a file without extension'} "
                         f"(use {', '.join(allowed)})", path=path)


def write_image(image: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write ``image`` (native dtype) atomically in the format of ``path``'s extension."""
    atomic_write_bytes(path, encode_image(image, path))


def depth_png(depth: np.ndarray, confidence: np.ndarray | None = None, cmap: str = "viridis") -> np.ndarray:
    """The depth map as an 8-bit RGB image, coloured with a matplotlib colour map; where confidence is
    low the colour fades to grey (weak texture: the depth there is the restraint's guess)."""
    from matplotlib import colormaps

    lo, hi = np.nanpercentile(depth, [0.5, 99.5])
    scaled = np.clip((depth - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = colormaps[cmap](scaled)[..., :3].astype(np.float32)
    if confidence is not None:
        alpha = np.clip(np.asarray(confidence, dtype=np.float32), 0, 1)[..., None] ** 0.5
        rgb = rgb * alpha + 0.5 * (1 - alpha)
    return to_dtype(rgb, np.dtype(np.uint8))
