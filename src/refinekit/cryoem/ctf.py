"""The contrast transfer function (RELION's convention, for contrast-inverted particles).

``CTF(k) = -scale * exp(-B s^2 / 4) * sin(gamma)`` with RELION's phase
``gamma = -pi lambda dz s^2 + pi/2 Cs lambda^3 s^4 - phi - atan(Q0 / sqrt(1 - Q0^2))``,
``dz(theta) = (dU + dV)/2 + (dU - dV)/2 cos(2 (theta - angle))`` (positive = underfocus), ``s`` the
spatial frequency in 1/A and ``theta`` its direction. This makes the CTF positive, ``Q0``, at zero
frequency: RELION's particles are contrast-inverted (protein white).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def electron_wavelength(voltage_kv: np.ndarray | float) -> np.ndarray:
    """Relativistic electron wavelength in Angstrom.

    >>> round(float(electron_wavelength(300.0)), 5)
    0.01969
    """
    volts = np.asarray(voltage_kv, dtype=float) * 1e3
    return 12.2642598 / np.sqrt(volts * (1 + 0.978466e-6 * volts))


@dataclass
class CTFParameters:
    """Per-particle CTF parameters (arrays of length ``n``; scalars broadcast).

    Defocus in Angstrom (positive underfocus), angle in degrees, voltage in kV, Cs in mm, amplitude
    contrast as a fraction, phase shift in degrees, B-factor in A^2, scale as a factor.
    """

    defocus_u: np.ndarray
    defocus_v: np.ndarray
    defocus_angle: np.ndarray
    voltage: np.ndarray
    cs: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift: np.ndarray = field(default_factory=lambda: np.zeros(1))
    bfactor: np.ndarray = field(default_factory=lambda: np.zeros(1))
    scale: np.ndarray = field(default_factory=lambda: np.ones(1))

    def __post_init__(self) -> None:
        names = (
            "defocus_u",
            "defocus_v",
            "defocus_angle",
            "voltage",
            "cs",
            "amplitude_contrast",
            "phase_shift",
            "bfactor",
            "scale",
        )
        arrays = np.broadcast_arrays(
            *(np.atleast_1d(np.asarray(getattr(self, k), dtype=float)) for k in names)
        )
        for name, value in zip(names, arrays, strict=True):
            setattr(self, name, np.ascontiguousarray(value))

    def __len__(self) -> int:
        return self.defocus_u.size

    def subset(self, index: np.ndarray) -> CTFParameters:
        """The parameters of the particles ``index``."""
        return CTFParameters(**{k: getattr(self, k)[index] for k in self.__dataclass_fields__})

    def evaluate(
        self,
        kx: np.ndarray,
        ky: np.ndarray,
        box: int,
        pixel_size: float,
        index: np.ndarray | slice | None = None,
    ) -> np.ndarray:
        """CTF values, shape ``(n_particles, *kx.shape)``, at integer Fourier indices ``(kx, ky)`` of a
        ``box``-pixel image with ``pixel_size`` A (``index`` picks particles).

        >>> import numpy as np
        >>> ctf = CTFParameters(20000.0, 20000.0, 0.0, 300.0, 2.7, 0.1)
        >>> round(float(ctf.evaluate(np.zeros(1), np.zeros(1), 64, 2.0)[0, 0]), 6)   # Q0 at k = 0
        0.1
        """
        sel = slice(None) if index is None else index
        kx = np.asarray(kx, dtype=float)
        ky = np.asarray(ky, dtype=float)
        sx, sy = kx / (box * pixel_size), ky / (box * pixel_size)
        s2 = sx * sx + sy * sy
        theta = np.arctan2(sy, sx)

        def col(values: np.ndarray) -> np.ndarray:
            return values[sel].reshape((-1,) + (1,) * kx.ndim)

        wavelength = electron_wavelength(col(self.voltage))
        mean = (col(self.defocus_u) + col(self.defocus_v)) / 2
        half_diff = (col(self.defocus_u) - col(self.defocus_v)) / 2
        defocus = mean + half_diff * np.cos(2 * (theta - np.radians(col(self.defocus_angle))))
        q0 = np.clip(col(self.amplitude_contrast), 0.0, 0.999999)
        gamma = (
            -np.pi * wavelength * defocus * s2
            + np.pi / 2 * col(self.cs) * 1e7 * wavelength**3 * s2 * s2
            - np.radians(col(self.phase_shift))
            - np.arctan(q0 / np.sqrt(1 - q0 * q0))
        )
        envelope = col(self.scale) * np.exp(-col(self.bfactor) * s2 / 4)
        return -envelope * np.sin(gamma)
