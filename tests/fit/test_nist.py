"""Known answers: the 27 NIST StRD nonlinear regression problems from both starting points.

Certified to at least 6 significant digits (log relative error, LRE >= 6) in every parameter, its
standard error and the residual sum of squares. Lanczos1 has a residual sum of squares of 1.4e-25,
below what double precision resolves, so its RSS needs ``precision="extended"``.
"""

from __future__ import annotations

import math

import pytest

from refinekit.fit import fit_nist, read_nist

PROBLEMS = [
    "Bennett5", "BoxBOD", "Chwirut1", "Chwirut2", "DanWood", "ENSO", "Eckerle4", "Gauss1", "Gauss2",
    "Gauss3", "Hahn1", "Kirby2", "Lanczos1", "Lanczos2", "Lanczos3", "MGH09", "MGH10", "MGH17",
    "Misra1a", "Misra1b", "Misra1c", "Misra1d", "Nelson", "Rat42", "Rat43", "Roszman1", "Thurber",
]


def lre(estimate: float | None, certified: float) -> float:
    """Log relative error: the number of correct significant digits."""
    if estimate is None or not math.isfinite(estimate):
        return 0.0
    if estimate == certified:
        return 15.0
    return -math.log10(abs(estimate - certified) / abs(certified))


@pytest.fixture(scope="module")
def nist_dir():
    """The NIST files bundled with refinekit (byte-identical to ../shared/data/fit/nist-strd)."""
    from refinekit.fit.demo import nist_directory

    return nist_directory()


@pytest.mark.parametrize("start", [1, 2])
@pytest.mark.parametrize("name", PROBLEMS)
def test_certified_values_to_six_digits(nist_dir, name, start):
    problem = read_nist(nist_dir / f"{name}.dat")
    result = fit_nist(problem, start, precision="extended")
    assert result.success, result.message
    for b, certified in problem.certified.items():
        assert lre(result.params[b].value, certified) >= 6, (b, result.params[b].value, certified)
        assert lre(result.params[b].stderr, problem.certified_stderr[b]) >= 6, b
    assert lre(result.chisqr, problem.certified_rss) >= 6, (result.chisqr, problem.certified_rss)


@pytest.mark.parametrize("name", ["Lanczos1", "MGH09", "Misra1a"])
def test_double_precision_gets_the_parameters_and_says_when_the_rss_is_beyond_it(nist_dir, name):
    problem = read_nist(nist_dir / f"{name}.dat")
    result = fit_nist(problem, 1)
    for b, certified in problem.certified.items():
        assert lre(result.params[b].value, certified) >= 6
    digits = lre(result.chisqr, problem.certified_rss)
    if name == "Lanczos1":  # RSS 1.4e-25: the data's rounding in double precision dominates
        assert digits < 6
    else:
        assert digits >= 6


def test_the_nist_reader(nist_dir):
    p = read_nist(nist_dir / "Nelson.dat")
    assert p.response == "log(y)" and set(p.data) == {"y", "x1", "x2"} and p.data["y"].size == 128
    assert p.starts[0] == {"b1": 2.0, "b2": 0.0001, "b3": -0.01}
    r = read_nist(nist_dir / "Roszman1.dat")
    assert "arctan" in r.model and "pi" in r.model and r.certified_rss == pytest.approx(4.9484847331e-04)


def test_the_bundled_files_are_the_shared_ones(nist_dir, shared_data):
    shared = sorted((shared_data / "fit" / "nist-strd").glob("*.dat"))
    assert len(shared) == 27
    for path in shared:
        assert (nist_dir / path.name).read_bytes() == path.read_bytes()
