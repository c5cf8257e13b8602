"""X-ray targets: the sigma-A fit recovers known parameters, derivatives are exact, map coefficients
follow their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from refinekit.core import FreeFlags
from refinekit.xtal.io import read_reflections
from refinekit.xtal.reflections import ReflectionData
from refinekit.xtal.targets import LeastSquares, MaximumLikelihood, SigmaA, map_coefficients


def _simulated(bundled, d_true=0.8, s_true=400.0, seed=0):
    """Observations drawn from the sigma-A model itself around a random 'calculated' set."""
    real = read_reflections(bundled / "r5wkdsf.ent")
    rng = np.random.default_rng(seed)
    n = 6000
    hkl = np.repeat(real.hkl, n // len(real) + 1, axis=0)[:n]
    fc = rng.rayleigh(30.0, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    eps = np.ones(n)
    err = rng.normal(0, np.sqrt(s_true / 2), n) + 1j * rng.normal(0, np.sqrt(s_true / 2), n)
    fo = np.abs(d_true * fc * np.exp(1j * phase) + err)
    data = ReflectionData(real.cell, real.spacegroup, hkl, fo, np.full(n, 1e-3), FreeFlags(np.ones(n, int), 0),
                          real.mtz, np.arange(n))
    data.centric[:] = False
    data.epsilon = eps
    return data, fc


def test_sigmaa_recovers_the_parameters_it_was_simulated_with(bundled):
    data, fc = _simulated(bundled)
    sigmaa = SigmaA(data, n_per_bin=6000, max_bins=1)
    sigmaa.fit(fc, np.ones(len(data), bool))
    assert sigmaa.d[0] == pytest.approx(0.8, rel=0.03) and sigmaa.s[0] == pytest.approx(400.0, rel=0.06)


@pytest.mark.parametrize("target_class", [MaximumLikelihood, LeastSquares])
def test_target_derivatives_by_model_amplitude_are_exact(bundled, target_class):
    data = read_reflections(bundled / "r5wkdsf.ent")
    rng = np.random.default_rng(1)
    fm = data.f_obs * rng.uniform(0.7, 1.3, len(data)) + 1.0
    target = target_class(data)
    target.prepare(fm)
    terms = target.terms(fm, data.work)
    assert terms.value == pytest.approx(target.value(fm, data.work), rel=1e-12)
    for j in np.flatnonzero(data.work)[:15]:
        up, down = fm.copy(), fm.copy()
        up[j] += 1e-4
        down[j] -= 1e-4
        numeric = (target.value(up, data.work) - target.value(down, data.work)) / 2e-4
        assert terms.d_fm[j] == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    assert np.all(terms.d_fm[data.free] == 0) and np.all(terms.curvature[data.work] > 0)


def test_map_coefficients_follow_their_definitions(bundled):
    data = read_reflections(bundled / "r5wkdsf.ent")
    rng = np.random.default_rng(2)
    fmodel = data.f_obs * np.exp(1j * rng.uniform(0, 2 * np.pi, len(data)))
    sigmaa = SigmaA(data)
    sigmaa.fit(np.abs(fmodel), data.work)
    two, diff, fom = map_coefficients(data, fmodel, sigmaa)
    d, _ = sigmaa.per_reflection()
    acentric = ~data.centric
    assert np.all((fom >= 0) & (fom <= 1))
    assert np.allclose(two[acentric], (2 * fom * data.f_obs - d * np.abs(fmodel))[acentric]
                       * np.exp(1j * np.angle(fmodel[acentric])))
    assert np.allclose(two[data.centric], (fom * data.f_obs)[data.centric] * np.exp(1j * np.angle(fmodel[data.centric])))
    assert np.allclose(two - diff, (fom * data.f_obs * np.exp(1j * np.angle(fmodel)))[acentric].sum() * 0
                       + np.where(acentric, fom * data.f_obs, d * np.abs(fmodel)) * np.exp(1j * np.angle(fmodel)))
