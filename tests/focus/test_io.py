"""Reading stacks (folders, files, multi-page and ImageJ TIFF, 8/16 bit, grey/colour) and refusing
bad ones with one line that names the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from refinekit.core import InputError
from refinekit.focus.io import ArrayStack, check_image_format, encode_image, read_stack, to_dtype, write_image


def _write(path: Path, image: np.ndarray) -> Path:
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    assert cv2.imwrite(str(path), data)
    return path


def test_folder_is_read_in_natural_order(tmp_path: Path) -> None:
    for k in (10, 2, 1):
        _write(tmp_path / f"z{k}.png", np.full((5, 7), k, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    stack = read_stack([tmp_path])
    assert stack.names == ["z1.png", "z2.png", "z10.png"]
    assert [int(stack.read(i)[0, 0]) for i in range(3)] == [1, 2, 10]
    assert stack.shape == (5, 7) and stack.channels == 1 and stack.bits == 8


def test_colour_png_comes_back_as_rgb(tmp_path: Path) -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 200  # red
    paths = [_write(tmp_path / f"c{k}.png", image) for k in range(2)]
    stack = read_stack(paths)
    frame = stack.read(0)
    assert frame.shape == (4, 4, 3) and frame[0, 0].tolist() == [200, 0, 0]


def test_sixteen_bit_frames_keep_their_depth(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"d{k}.png", np.full((6, 6), 40000 + k, np.uint16)) for k in range(3)]
    stack = read_stack(paths)
    assert stack.dtype == np.uint16 and stack.bits == 16
    assert stack.read(2)[0, 0] == 40002
    assert abs(float(stack.read_float(0)[0, 0]) - 40000 / 65535) < 1e-6


def test_multipage_and_imagej_tiff(tmp_path: Path) -> None:
    data = np.arange(4 * 6 * 8, dtype=np.uint16).reshape(4, 6, 8)
    tifffile.imwrite(tmp_path / "plain.tif", data, photometric="minisblack")
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, metadata={"axes": "ZYX"})  # as ImageJ writes a z-stack
    rgb = (np.arange(3 * 5 * 7 * 3) % 251).astype(np.uint8).reshape(3, 5, 7, 3)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    for name in ("plain.tif", "ij.tif"):
        stack = read_stack([tmp_path / name])
        assert len(stack) == 4 and stack.shape == (6, 8) and stack.dtype == np.uint16
        assert np.array_equal(stack.read(3), data[3])
        assert stack.names[3] == f"{name}[3]"
    stack = read_stack([tmp_path / "rgb.tif"])
    assert len(stack) == 3 and stack.channels == 3
    assert np.array_equal(stack.read(1), rgb[1])


def test_reordered_stack(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"f{k}.png", np.full((3, 3), k, np.uint8)) for k in range(3)]
    stack = read_stack(paths).reordered([2, 0, 1])
    assert [int(stack.read(i)[0, 0]) for i in range(3)] == [2, 0, 1]


@pytest.mark.parametrize("case", ["single", "sizes", "depths", "channels", "empty", "garbage", "missing",
                                  "empty_folder"])
def test_bad_stacks_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    good = [_write(tmp_path / f"g{k}.png", np.zeros((8, 8), np.uint8)) for k in range(2)]
    if case == "single":
        inputs, needle = good[:1], "at least 2 frames"
    elif case == "sizes":
        inputs, needle = [*good, _write(tmp_path / "big.png", np.zeros((9, 8), np.uint8))], "one size"
    elif case == "depths":
        inputs, needle = [*good, _write(tmp_path / "w.png", np.zeros((8, 8), np.uint16))], "mixed bit depths"
    elif case == "channels":
        inputs, needle = [*good, _write(tmp_path / "c.png", np.zeros((8, 8, 3), np.uint8))], "grey and colour"
    elif case == "empty":
        (tmp_path / "e.png").write_bytes(b"")
        inputs, needle = [*good, tmp_path / "e.png"], "empty file"
    elif case == "garbage":
        (tmp_path / "x.jpg").write_bytes(b"this is not a jpeg at all" * 10)
        inputs, needle = [*good, tmp_path / "x.jpg"], "not a readable image"
    elif case == "missing":
        inputs, needle = [*good, tmp_path / "nope.png"], "no such file"
    else:
        (tmp_path / "void").mkdir()
        inputs, needle = [tmp_path / "void"], "no images"
    with pytest.raises(InputError) as info:
        read_stack(inputs)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_output_formats_follow_the_bit_depth(tmp_path: Path) -> None:
    check_image_format(tmp_path / "a.jpg", np.dtype(np.uint8))
    check_image_format(tmp_path / "a.png", np.dtype(np.uint16))
    with pytest.raises(InputError, match="uint16"):
        check_image_format(tmp_path / "a.jpg", np.dtype(np.uint16))
    with pytest.raises(InputError, match="float32"):
        check_image_format(tmp_path / "a.png", np.dtype(np.float32))


def test_writers_round_trip(tmp_path: Path) -> None:
    rgb16 = (np.arange(5 * 6 * 3).reshape(5, 6, 3) * 997 % 65536).astype(np.uint16)
    write_image(rgb16, tmp_path / "x.png")
    back = cv2.cvtColor(cv2.imread(str(tmp_path / "x.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, rgb16)
    depth = np.linspace(0, 7.25, 30, dtype=np.float32).reshape(5, 6)
    write_image(depth, tmp_path / "d.tif")
    assert np.array_equal(tifffile.imread(tmp_path / "d.tif"), depth)
    assert to_dtype(np.array([-0.1, 0.5, 2.0]), np.dtype(np.uint8)).tolist() == [0, 128, 255]
    assert encode_image(np.zeros((2, 2), np.uint8), "a.jpg")[:2] == b"\xff\xd8"


def test_single_page_tiffs_as_frames(tmp_path: Path) -> None:
    paths = []
    for k in range(3):
        path = tmp_path / f"p{k}.tif"
        tifffile.imwrite(path, np.full((5, 6, 3), 1000 * k, np.uint16), photometric="rgb")
        paths.append(path)
    stack = read_stack(paths)
    assert len(stack) == 3 and stack.channels == 3 and stack.bits == 16
    assert stack.names == ["p0.tif", "p1.tif", "p2.tif"] and int(stack.read(2)[0, 0, 0]) == 2000


def test_a_tiff_written_page_by_page_gives_every_page(tmp_path: Path) -> None:
    """tifffile's ``TiffWriter.write`` per frame makes one series per page; reading the first series
    alone gave one frame. Pages of another size are refused, naming the page (they were dropped)."""
    pages = [np.full((4, 6), 10 * k, np.uint8) for k in range(3)]
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for page in pages:
            tif.write(page)
    stack = read_stack([tmp_path / "pages.tif"])
    assert stack.names == ["pages.tif[0]", "pages.tif[1]", "pages.tif[2]"]
    assert [int(stack.read(k)[0, 0]) for k in range(3)] == [0, 10, 20]
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        for page in [*pages, np.zeros((2, 2), np.uint8)]:
            tif.write(page, metadata=None)
    with pytest.raises(InputError, match=r"mixed.tif\[3\]: frame is 2x2"):
        read_stack([tmp_path / "mixed.tif"])


def test_a_float_frame_with_nan_is_refused_naming_it() -> None:
    frames = np.zeros((3, 4, 5), np.float32)
    frames[2, 1, 1] = np.inf
    with pytest.raises(InputError, match=r"^frame\[2\]: 1 pixel value\(s\) are NaN or infinite"):
        ArrayStack(frames)


def test_single_frame_gifs_are_frames_and_an_animated_one_is_refused(tmp_path: Path) -> None:
    """Pillow reports every GIF as a batch; one of a single frame is a frame like a PNG (it was refused
    as "animated")."""
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    images = [(rng.random((20, 30, 3)) * 255).astype(np.uint8) for _ in range(3)]
    paths = []
    for k, image in enumerate(images):
        iio.imwrite(path := tmp_path / f"frame_{k}.gif", image)
        paths.append(path)
    stack = read_stack(paths)
    assert len(stack) == 3 and stack.shape == (20, 30) and stack.channels == 3
    assert stack.read_float(2).shape == (20, 30, 3)
    iio.imwrite(animated := tmp_path / "animated.gif", np.stack(images[:2]))
    with pytest.raises(InputError, match="animated"):
        read_stack([animated, paths[0]])


def test_exif_orientation_turns_frames_upright(tmp_path: Path) -> None:
    """A phone's portrait JPEG is stored sideways with EXIF orientation 6. OpenCV's IMREAD_UNCHANGED
    and the header probe ignored the tag: frames came out sideways, and refused as "another size"
    beside an untagged frame of the upright size."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        image = Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8))
        exif = image.getexif()
        exif[0x0112] = 6
        image.save(path := tmp_path / f"phone{k}.jpg", exif=exif, quality=95)
        paths.append(path)
    Image.fromarray((rng.random((30, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / "plain.jpg")
    stack = read_stack([*paths, tmp_path / "plain.jpg"])
    assert stack.shape == (30, 20)
    for k, path in enumerate(stack.paths):
        assert np.array_equal(stack.read(k), np.asarray(ImageOps.exif_transpose(Image.open(path))))


def test_grey_alpha_png_is_a_grey_frame(tmp_path: Path) -> None:
    """OpenCV decodes a grey + alpha PNG as BGRA: it was read as a colour frame, and refused beside
    a grey PNG of the same camera."""
    grey_alpha = (np.random.default_rng(1).random((6, 8, 2)) * 255).astype(np.uint8)
    Image.fromarray(grey_alpha, "LA").save(tmp_path / "la.png")
    grey = _write(tmp_path / "grey.png", np.full((6, 8), 9, np.uint8))
    stack = read_stack([tmp_path / "la.png", grey])
    assert stack.channels == 1 and np.array_equal(stack.read(0), grey_alpha[..., 0])


def test_one_bit_and_float16_frames_are_read(tmp_path: Path) -> None:
    """Pillow reports a 1-bit BMP (and tifffile a 1-bit TIFF) as bool, refused as a pixel type;
    float16 TIFF was refused too (ArrayStack takes any float)."""
    bits = np.random.default_rng(2).random((2, 6, 8)) > 0.5
    for k in range(2):
        Image.fromarray(bits[k]).save(tmp_path / f"b{k}.bmp")
    stack = read_stack([tmp_path / "b0.bmp", tmp_path / "b1.bmp"])
    assert stack.dtype == np.uint8 and np.array_equal(stack.read(1), bits[1] * np.uint8(255))
    tifffile.imwrite(tmp_path / "bits.tif", bits, photometric="minisblack")
    assert np.array_equal(read_stack([tmp_path / "bits.tif"]).read(0), bits[0] * np.uint8(255))
    half = np.linspace(0, 1, 2 * 6 * 8, dtype=np.float16).reshape(2, 6, 8)
    tifffile.imwrite(tmp_path / "half.tif", half, photometric="minisblack")
    stack = read_stack([tmp_path / "half.tif"])
    assert stack.dtype == np.float32 and np.array_equal(stack.read(1), half[1].astype(np.float32))


def test_planar_rgb_tiff_is_one_colour_frame(tmp_path: Path) -> None:
    """An RGB TIFF stored as three planes (planar configuration "separate", axes SYX) was read as
    three grey frames R, G and B; several such pages were refused as "more than one stack axis"."""
    rgb = (np.arange(3 * 5 * 7 * 3) % 251).astype(np.uint8).reshape(3, 5, 7, 3)
    planes = np.ascontiguousarray(np.moveaxis(rgb, -1, 1))  # (n, 3, H, W)
    for k in range(2):
        tifffile.imwrite(tmp_path / f"p{k}.tif", planes[k], photometric="rgb", planarconfig="separate")
    stack = read_stack([tmp_path / "p0.tif", tmp_path / "p1.tif"])
    assert len(stack) == 2 and stack.channels == 3 and np.array_equal(stack.read(1), rgb[1])
    tifffile.imwrite(tmp_path / "pages.tif", planes, photometric="rgb", planarconfig="separate")
    stack = read_stack([tmp_path / "pages.tif"])
    assert len(stack) == 3 and all(np.array_equal(stack.read(k), rgb[k]) for k in range(3))


def test_tiff_channels_are_not_taken_for_focal_planes(tmp_path: Path) -> None:
    """An ImageJ or OME TIFF of channels only (axes CYX: dyes, not focal planes) was fused as a
    z-stack; one with Z and C is refused, one with Z and a single channel is read along Z."""
    data = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    tifffile.imwrite(tmp_path / "c.tif", data[0], imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "c.ome.tif", data[0], metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "zc.tif", np.moveaxis(data, 0, 1), imagej=True, metadata={"axes": "ZCYX"})
    for name, needle in (("c.tif", "are channels"), ("c.ome.tif", "are channels"),
                         ("zc.tif", "more than one stack axis")):
        with pytest.raises(InputError, match=needle):
            read_stack([tmp_path / name])
    tifffile.imwrite(tmp_path / "z.ome.tif", data[:1], metadata={"axes": "CZYX"})
    stack = read_stack([tmp_path / "z.ome.tif"])
    assert len(stack) == 3 and np.array_equal(stack.read(2), data[0, 2])


def test_tiff_compression_without_its_codec_is_refused_up_front(tmp_path: Path) -> None:
    """LZW (and JPEG, PackBits...) TIFFs need imagecodecs; without it the stack was accepted and
    failed when the frame was first decoded, in the middle of the work."""
    try:
        tifffile.TIFF.DECOMPRESSORS[5]
        pytest.skip("imagecodecs is installed: LZW decodes")
    except KeyError:
        pass
    tifffile.imwrite(tmp_path / "lzw.tif", np.zeros((3, 4, 4), np.uint8), photometric="minisblack")
    with tifffile.TiffFile(tmp_path / "lzw.tif", mode="r+b") as tif:
        for page in tif.pages:
            page.tags["Compression"].overwrite(5)  # as an LZW file says (no LZW writer here)
    with pytest.raises(InputError, match="imagecodecs"):
        read_stack([tmp_path / "lzw.tif"])
