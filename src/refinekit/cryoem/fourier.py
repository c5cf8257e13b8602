"""Fourier-slice projection and back-projection by trilinear interpolation on an oversampled grid.

The map is padded ``pad`` times in real space (default 2) so that its transform is sampled finely
enough for trilinear interpolation; interpolating with the trilinear kernel multiplies the real-space
map by ``sinc^2`` along each axis, which the *gridding correction* undoes (the map is divided by it
before projection, the reconstruction after back-projection).

Frequencies are integer indices ``k`` of a ``box``-pixel image (spatial frequency ``k / (box * pixel)``).
Transforms are of the *centred* map: ``V^(k) = sum_r v(r) exp(-2 pi i k.r / box)`` with ``r`` measured
from the box centre ``box // 2``; the projection of a map at rotation ``A`` is the central slice
``P^(kx, ky) = V^(A^T (kx, ky, 0))`` (see :mod:`refinekit.cryoem.geometry`).

For the interpolation the padded transform is stored centred, with one extra layer on each face (a
copy of the periodic neighbour), so that a point's eight neighbours have fixed offsets from its base
index and no wrap-around arithmetic is needed; the two ``x`` neighbours are stored side by side, so one
gather reads both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import Array, Backend, NumpyBackend


# ------------------------------------------------------------------------------- frequency points
def fft_indices(n: int) -> np.ndarray:
    """The integer frequencies of an ``n``-point FFT in numpy's order, as exact floats
    (``numpy.fft.fftfreq(n) * n`` is off by rounding, e.g. 6.999999999999999 for 7).

    >>> fft_indices(5).tolist(), fft_indices(4).tolist()
    ([0.0, 1.0, 2.0, -2.0, -1.0], [0.0, 1.0, -2.0, -1.0])
    """
    k = np.arange(n)
    return np.where(k < (n + 1) // 2, k, k - n).astype(np.float64)


@dataclass(frozen=True)
class FourierPoints:
    """A set of 2D Fourier indices of a ``box``-pixel image: the half plane ``kx > 0`` or
    ``kx = 0, ky > 0`` (each point stands for itself and its Hermitian mate), within radii.

    ``flat`` indexes the points in a ``numpy.fft.fft2`` array raveled to ``box * box``; ``shell`` is the
    rounded radius.
    """

    box: int
    kx: np.ndarray
    ky: np.ndarray
    flat: np.ndarray
    shell: np.ndarray

    def __len__(self) -> int:
        return self.kx.size

    @property
    def radius(self) -> np.ndarray:
        return np.hypot(self.kx, self.ky)


def half_plane_points(box: int, r_max: float, r_min: float = 0.5) -> FourierPoints:
    """The half-plane Fourier points with ``r_min <= |k| <= r_max`` (``r_max`` is capped at the largest
    radius below Nyquist, ``box / 2 - 0.5``), ordered by radius.

    >>> pts = half_plane_points(16, 2.0)
    >>> len(pts), sorted(set(pts.shell.tolist()))
    (6, [1, 2])
    """
    r_max = min(float(r_max), box / 2 - 0.5)
    freq = fft_indices(box)
    ky, kx = np.meshgrid(freq, freq, indexing="ij")
    radius = np.hypot(kx, ky)
    keep = (radius >= r_min) & (radius <= r_max) & ((kx > 0) | ((kx == 0) & (ky > 0)))
    iy, ix = np.nonzero(keep)
    order = np.argsort(radius[iy, ix], kind="stable")
    iy, ix = iy[order], ix[order]
    kxs, kys = kx[iy, ix], ky[iy, ix]
    return FourierPoints(
        box,
        kxs.astype(np.float64),
        kys.astype(np.float64),
        (iy * box + ix).astype(np.int64),
        np.rint(np.hypot(kxs, kys)).astype(np.int64),
    )


def centred_fft2(images: np.ndarray) -> np.ndarray:
    """2D transforms (``numpy.fft.fft2`` layout) of images whose origin is the centre ``box // 2``."""
    return np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1))).astype(np.complex64)


def centred_ifft2(transforms: np.ndarray) -> np.ndarray:
    """Inverse of :func:`centred_fft2` (real part)."""
    return np.fft.fftshift(np.fft.ifft2(transforms).real, axes=(-2, -1))


def shift_phases(kx: np.ndarray, ky: np.ndarray, origins: np.ndarray, box: int) -> np.ndarray:
    """``exp(-2 pi i k.o / box)``, shape ``(n, K)``: multiplying a transform by it translates the image
    by ``+o`` pixels (RELION's origin: the translation that centres the particle)."""
    phase = -2 * np.pi / box * (origins[:, 0:1] * kx[None, :] + origins[:, 1:2] * ky[None, :])
    return np.exp(1j * phase).astype(np.complex64)


# ---------------------------------------------------------------------------------- gridding
def gridding_kernel(box: int, padded: int) -> np.ndarray:
    """``sinc^2(x / padded)`` per axis on a ``box^3`` grid centred at ``box // 2``: what trilinear
    interpolation on a ``padded``-point transform multiplies the real-space map by."""
    x = np.arange(box) - box // 2
    s = np.sinc(x / padded) ** 2
    return s[:, None, None] * s[None, :, None] * s[None, None, :]


def _extended_index(size: int) -> tuple[np.ndarray, int, int]:
    """Periodic indices of the centred, extended layout: extended ``i`` holds frequency ``i - offset``."""
    offset = size // 2 + 1
    extent = size + 3
    return (np.arange(extent) - offset) % size, offset, extent


def padded_transform(volume: np.ndarray, pad: int = 2) -> np.ndarray:
    """The ``(pad*box)^3`` transform (fft layout, complex128) of the gridding-corrected, zero-padded map."""
    box = volume.shape[0]
    size = pad * box
    corrected = volume / gridding_kernel(box, size)
    padded = np.zeros((size,) * 3)
    start = size // 2 - box // 2
    padded[start : start + box, start : start + box, start : start + box] = corrected
    return np.fft.fftn(np.fft.ifftshift(padded))


class FourierVolume:
    """A map ready for Fourier-slice projection (trilinear interpolation, gridding-corrected).

    >>> import numpy as np
    >>> vol = np.zeros((16, 16, 16)); vol[8, 8, 8] = 1.0            # a point at the centre
    >>> fv = FourierVolume(vol)
    >>> pts = half_plane_points(16, 7)
    >>> values = fv.slices(np.eye(3)[None], pts)
    >>> bool(np.allclose(values, 1.0, atol=0.05))                     # its transform is flat
    True
    """

    def __init__(self, volume: np.ndarray, pad: int = 2, backend: Backend | None = None) -> None:
        volume = np.asarray(volume, dtype=float)
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise ValueError(f"a map must be a cube, got shape {volume.shape}")
        self.backend = backend or NumpyBackend()
        self.box = volume.shape[0]
        self.pad = int(pad)
        self.size = self.pad * self.box
        grid = padded_transform(volume, self.pad)
        index, self.offset, self.extent = _extended_index(self.size)
        ext = grid[np.ix_(index, index, index)].astype(np.complex64).ravel()
        # each entry holds a point and its +x neighbour, so that one gather reads both
        pairs = np.stack([ext, np.roll(ext, -1)], axis=1)
        self.pairs = self.backend.asarray(pairs, "complex64")
        self._pairs_void = pairs.view("V16").ravel() if self.backend.name == "numpy" else None

    def _gather(self, index: Array) -> tuple[Array, Array]:
        if self._pairs_void is not None:  # numpy: a 16-byte gather is several times faster than rows
            g = np.take(self._pairs_void, index).view(np.complex64).reshape((*index.shape, 2))
        else:
            g = self.pairs[index]
        return g[..., 0], g[..., 1]

    def sample(self, px: Array, py: Array, pz: Array) -> Array:
        """Trilinear values (complex64) at padded-grid coordinates ``(px, py, pz)`` (arrays of one
        shape, float32, on the backend, within the sphere of radius ``size / 2``)."""
        be = self.backend
        s = self.extent
        off = float(self.offset)
        ix, tx = be.floor_int(px + off)
        iy, ty = be.floor_int(py + off)
        iz, tz = be.floor_int(pz + off)
        base = (iz * s + iy) * s + ix
        planes = []
        for dz in (0, s * s):
            rows = []
            for dy in (0, s):
                v0, v1 = self._gather(base + (dz + dy))
                rows.append(v0 + tx * (v1 - v0))
            planes.append(rows[0] + ty * (rows[1] - rows[0]))
        return planes[0] + tz * (planes[1] - planes[0])

    def slices(self, rotations: np.ndarray | Array, points: FourierPoints, chunk: int = 1 << 16) -> Array:
        """Central slices at ``rotations`` (``(n, 3, 3)``) on ``points``: complex64, ``(n, K)``."""
        be = self.backend
        rot = be.asarray(rotations, "float32")
        kx, ky = be.asarray(points.kx, "float32"), be.asarray(points.ky, "float32")
        n, k = rot.shape[0], kx.shape[0]
        per = max(1, chunk // max(k, 1))
        parts = []
        for start in range(0, n, per):
            r = rot[start : start + per] * float(self.pad)
            coords = [
                kx[None, :] * r[:, 0, axis, None] + ky[None, :] * r[:, 1, axis, None] for axis in range(3)
            ]
            parts.append(self.sample(*coords))
        return parts[0] if len(parts) == 1 else be.concatenate(parts)


def _negated(grid: np.ndarray) -> np.ndarray:
    """``grid[-g]`` on a periodic fft-layout grid."""
    return np.roll(np.flip(grid), 1, axis=(0, 1, 2))


class BackProjector:
    """Accumulates central slices into an oversampled 3D transform: data ``D`` (CTF-weighted images)
    and weights ``W`` (CTF^2), both splatted with the trilinear kernel; :meth:`reconstruct` divides
    ``D / (W + lambda)`` shell by shell and undoes the gridding.

    Only the half-plane points are splatted; their Hermitian mates (``-p``, conjugated) are added
    when the grid is read out, ``D(g) + conj(D(-g))``, which is the same thing at half the cost.

    >>> import numpy as np
    >>> from refinekit.cryoem.geometry import random_rotations
    >>> vol = np.zeros((16, 16, 16)); vol[6:10, 7:9, 5:11] = 1.0
    >>> rotations = random_rotations(300, np.random.default_rng(0))
    >>> pts = half_plane_points(16, 7.5)
    >>> values = FourierVolume(vol).slices(rotations, pts)
    >>> bp = BackProjector(16)
    >>> bp.insert(rotations, pts, values, np.ones(values.shape, dtype=np.float32))
    >>> rec = bp.reconstruct(np.full(9, 1e-3))
    >>> bool(np.corrcoef(rec.ravel(), vol.ravel())[0, 1] > 0.95)
    True
    """

    def __init__(self, box: int, pad: int = 2, backend: Backend | None = None) -> None:
        self.backend = backend or NumpyBackend()
        self.box = int(box)
        self.pad = int(pad)
        self.size = self.pad * self.box
        _, self.offset, self.extent = _extended_index(self.size)
        n = self.extent**3
        be = self.backend
        self.data_re = be.zeros((n,), "float64")
        self.data_im = be.zeros((n,), "float64")
        self.weight = be.zeros((n,), "float64")
        self.dc_value = 0.0
        self.dc_weight = 0.0

    def insert(
        self,
        rotations: np.ndarray | Array,
        points: FourierPoints,
        values: Array,
        weights: Array,
        chunk: int = 1 << 18,
    ) -> None:
        """Add slices at ``rotations``: ``values`` (complex, CTF x image transform, ``(n, K)``) and
        ``weights`` (real, CTF^2, ``(n, K)``) on the half-plane ``points``."""
        be = self.backend
        rot = be.asarray(rotations, "float32")
        kx, ky = be.asarray(points.kx, "float32"), be.asarray(points.ky, "float32")
        n, k = rot.shape[0], kx.shape[0]
        per = max(1, chunk // max(k, 1))
        for start in range(0, n, per):
            r = rot[start : start + per] * float(self.pad)
            coords = [
                kx[None, :] * r[:, 0, axis, None] + ky[None, :] * r[:, 1, axis, None] for axis in range(3)
            ]
            stop = start + r.shape[0]
            self._splat(coords, values[start:stop], weights[start:stop])

    def insert_dc(self, value: float, weight: float) -> None:
        """Add to the zero-frequency term (it has no Hermitian mate)."""
        self.dc_value += float(value)
        self.dc_weight += float(weight)

    def _splat(self, coords: list[Array], values: Array, weights: Array) -> None:
        be = self.backend
        s = self.extent
        off = float(self.offset)
        ix, fx = be.floor_int(coords[0] + off)
        iy, fy = be.floor_int(coords[1] + off)
        iz, fz = be.floor_int(coords[2] + off)
        base = (iz * s + iy) * s + ix
        gx, gy, gz = 1 - fx, 1 - fy, 1 - fz
        indices, kernel = [], []
        for dz, wz in ((0, gz), (s * s, fz)):
            for dy, wy in ((0, gy), (s, fy)):
                wzy = wz * wy
                for dx, wx in ((0, gx), (1, fx)):
                    indices.append(base + (dz + dy + dx))
                    kernel.append(wzy * wx)
        index = be.stack(indices)
        kern = be.stack(kernel)
        size = s**3
        self.data_re = self.data_re + be.scatter_add(index, kern * values.real[None], size)
        self.data_im = self.data_im + be.scatter_add(index, kern * values.imag[None], size)
        self.weight = self.weight + be.scatter_add(index, kern * weights[None], size)

    def merged_with(self, other: BackProjector) -> BackProjector:
        """A back-projector holding the sum of this one's and ``other``'s data (e.g. two half sets)."""
        out = BackProjector(self.box, self.pad, self.backend)
        out.data_re = self.data_re + other.data_re
        out.data_im = self.data_im + other.data_im
        out.weight = self.weight + other.weight
        out.dc_value = self.dc_value + other.dc_value
        out.dc_weight = self.dc_weight + other.dc_weight
        return out

    # -------------------------------------------------------------------- reconstruction
    def _folded(self) -> tuple[np.ndarray, np.ndarray]:
        """``D`` (complex) and ``W`` on the periodic ``size^3`` grid (fft layout), as numpy arrays."""
        be = self.backend
        index, _, _extent = _extended_index(self.size)
        target = (
            (index[:, None, None] * self.size + index[None, :, None]) * self.size + index[None, None, :]
        ).ravel()
        n = self.size**3
        d_re = np.bincount(target, weights=be.to_numpy(self.data_re), minlength=n)
        d_im = np.bincount(target, weights=be.to_numpy(self.data_im), minlength=n)
        w = np.bincount(target, weights=be.to_numpy(self.weight), minlength=n)
        shape = (self.size,) * 3
        data = (d_re + 1j * d_im).reshape(shape)
        weight = w.reshape(shape)
        # the Hermitian mates: D(g) + conj(D(-g)), W(g) + W(-g)
        data = data + np.conj(_negated(data))
        weight = weight + _negated(weight)
        data[0, 0, 0] += self.dc_value
        weight[0, 0, 0] += self.dc_weight
        return data, weight

    def shell_of_padded_grid(self) -> np.ndarray:
        """Shell (rounded radius in ``box`` frequency units) of every padded-grid point."""
        freq = fft_indices(self.size) / self.pad
        r = np.sqrt(freq[:, None, None] ** 2 + freq[None, :, None] ** 2 + freq[None, None, :] ** 2)
        return np.rint(r).astype(np.int64)

    def weight_by_shell(self) -> np.ndarray:
        """Mean ``W`` per shell ``0 .. box // 2`` (the amount of data per Fourier voxel)."""
        _, w = self._folded()
        shell = self.shell_of_padded_grid()
        n = self.box // 2 + 1
        inside = shell < n
        total = np.bincount(shell[inside], weights=w[inside], minlength=n)
        count = np.bincount(shell[inside], minlength=n)
        return total / np.maximum(count, 1)

    def reconstruct(self, regularisation: np.ndarray) -> np.ndarray:
        """The map ``F^-1[D / (W + lambda)]`` with ``lambda`` given per shell ``0 .. box // 2``
        (beyond the last shell the transform is set to zero), gridding-corrected, ``box^3``."""
        data, weight = self._folded()
        shell = self.shell_of_padded_grid()
        n = self.box // 2 + 1
        lam = np.asarray(regularisation, dtype=float)
        if lam.shape != (n,):
            raise ValueError(f"regularisation needs {n} shells, got {lam.shape}")
        inside = shell < n
        denominator = weight + lam[np.minimum(shell, n - 1)]
        transform = np.where(inside & (denominator > 0), data / np.where(denominator > 0, denominator, 1), 0)
        padded = np.fft.fftshift(np.fft.ifftn(transform).real)
        start = self.size // 2 - self.box // 2
        box = self.box
        volume = padded[start : start + box, start : start + box, start : start + box]
        return volume / gridding_kernel(box, self.size)
