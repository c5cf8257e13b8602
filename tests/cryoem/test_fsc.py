"""FSC, resolution, masks and the phase-randomisation correction, on constructed known answers."""

from __future__ import annotations

import numpy as np
import pytest

from refinekit.cryoem.fsc import (
    crossing_shell,
    fourier_shell_correlation,
    frequency_shells,
    gold_standard_fsc,
    lowpass,
    phase_randomised,
    resolution,
    solvent_mask,
    spherical_mask,
)
from refinekit.cryoem.reconstruct import regularisation_from_fsc


def shell_filter(box: int, profile) -> np.ndarray:
    return profile(frequency_shells(box).astype(float))


def test_fsc_of_signal_plus_independent_noise_follows_the_ssnr():
    # halves = signal + noise with shell SNR s(k): expected FSC = s / (1 + s)
    box = 48
    rng = np.random.default_rng(0)
    signal = np.fft.fftn(rng.normal(size=(box,) * 3))
    ssnr = shell_filter(box, lambda k: 50.0 * np.exp(-k / 4.0))
    halves = [
        np.fft.ifftn(signal * np.sqrt(ssnr) + np.fft.fftn(rng.normal(size=(box,) * 3))).real for _ in range(2)
    ]
    fsc = fourier_shell_correlation(*halves)
    k = np.arange(fsc.size)
    expected = 50 * np.exp(-k / 4) / (1 + 50 * np.exp(-k / 4))
    assert np.abs(fsc[2:] - expected[2:]).max() < 0.06
    # the 0.143 crossing is where s = 1/6
    k_cross = -4 * np.log(1 / (6 * 50))
    assert crossing_shell(fsc) == pytest.approx(k_cross, abs=0.6)
    assert resolution(fsc, box, 2.0) == pytest.approx(box * 2.0 / crossing_shell(fsc))


def test_fsc_identical_and_independent():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 32, 32, 32))
    assert np.allclose(fourier_shell_correlation(a, 3 * a), 1.0)
    fsc = fourier_shell_correlation(a, b)
    counts = np.bincount(frequency_shells(32).ravel())[:17]
    assert np.all(np.abs(fsc[2:]) < 4 / np.sqrt(counts[2:]))


def test_crossing_interpolates_and_caps():
    assert crossing_shell(np.array([1.0, 0.8, 0.2, 0.0]), 0.5) == pytest.approx(1.5)
    assert crossing_shell(np.array([1.0, 0.9, 0.8]), 0.143) == 2.0  # never crosses: the last shell


def test_phase_randomisation_keeps_amplitudes_and_low_shells():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(24, 24, 24))
    r = phase_randomised(v, 6, rng)
    fv, fr = np.fft.fftn(v), np.fft.fftn(r)
    shells = frequency_shells(24)
    assert np.allclose(np.abs(fv), np.abs(fr), rtol=1e-6, atol=1e-6)
    assert np.allclose(fv[shells < 6], fr[shells < 6])
    assert np.abs(fourier_shell_correlation(v, r)[8:]).max() < 0.2


def test_mask_correlation_is_removed_by_phase_randomisation():
    # two halves share only low-resolution signal (to shell 6); a hard mask spreads it to high shells,
    # inflating the masked FSC; the corrected FSC is back near zero there
    box = 40
    rng = np.random.default_rng(3)
    signal = lowpass(rng.normal(size=(box,) * 3), 6.0, 1.0) * 20
    halves = [signal + rng.normal(size=(box,) * 3) for _ in range(2)]
    hard = (spherical_mask(box, 10, 0.01) > 0.5).astype(float)
    report = gold_standard_fsc(halves[0], halves[1], 1.0, hard)
    high = slice(12, 20)
    assert report.masked[high].mean() > 0.25  # the mask's own correlation
    assert abs(report.corrected[high].mean()) < 0.1
    assert np.allclose(report.corrected[: report.randomised_from], report.masked[: report.randomised_from])
    assert report.randomised_from is not None and report.randomised_from <= 8


def test_solvent_mask_covers_the_particle_softly():
    box = 40
    x = np.arange(box) - box // 2
    z, y, xx = np.meshgrid(x, x, x, indexing="ij")
    particle = ((xx / 9.0) ** 2 + (y / 6.0) ** 2 + (z / 5.0) ** 2 < 1).astype(float)
    noisy = particle + np.random.default_rng(4).normal(0, 0.05, particle.shape)
    mask = solvent_mask(noisy, 2.0, lowpass_resolution=8.0)
    assert mask[particle > 0].min() > 0.99  # all of the particle inside
    assert mask.max() <= 1.0 and mask.min() >= 0.0
    assert mask.sum() < 0.25 * box**3  # much less than the box
    assert 0.1 < np.mean((mask > 0.01) & (mask < 0.99)) / np.mean(mask > 0.99) < 3  # a soft edge


def test_regularisation_from_fsc():
    weight = np.full(5, 10.0)
    lam = regularisation_from_fsc(np.array([1.0, 0.9, 0.5, 0.1, -0.2]), weight, floor=0.05)
    # lambda = W / SSNR, SSNR = FSC / (1 - FSC); floored at 5 % of W
    assert lam[1] == pytest.approx(max(10 / 9, 0.5))
    assert lam[2] == pytest.approx(10.0)
    assert lam[3] == pytest.approx(90.0)
    assert lam[4] == pytest.approx(10 / (0.001 / 0.999))
    assert np.all(regularisation_from_fsc(None, weight) == 0.5)


def test_fsc_refuses_maps_it_cannot_measure():
    """A NaN map gave FSC 0 in every shell (a resolution of one shell, no error); non-cubic maps were
    IndexErrors; a negative pixel size a negative resolution."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(16, 16, 16))
    broken = v.copy()
    broken[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fourier_shell_correlation(broken, v)
    with pytest.raises(ValueError, match="NaN"):
        gold_standard_fsc(v, broken, 2.0)
    with pytest.raises(ValueError, match="cubic"):
        fourier_shell_correlation(v[:, :, :8], v[:, :, :8])
    with pytest.raises(ValueError, match="cubic"):
        fourier_shell_correlation(v[0], v[0])
    with pytest.raises(ValueError, match="pixel size"):
        gold_standard_fsc(v, v, -1.0)
    with pytest.raises(ValueError, match="mask"):
        gold_standard_fsc(v, v, 1.0, mask=np.ones((8, 8, 8)))
