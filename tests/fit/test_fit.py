"""The fit application: free set, priors, bounds, callables, the overfitting alarm, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from refinekit.core import FreeFlags, InputError, Status
from refinekit.fit import Expression, Parameters, fit, parse_param_spec


def _exponential(seed=0, n=60, noise=0.02):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 4, n)
    return x, 3.0 * np.exp(-1.3 * x) + 0.5 + rng.normal(0, noise, n)


def test_free_points_never_guide_a_correction():
    x, y = _exponential()
    params = {"a": 1.0, "k": 1.0, "c": 0.0}
    first = fit("a*exp(-k*x) + c", params, {"x": x}, y, free_fraction=0.1, seed=3)
    assert first.nfree == 6 and first.free_flags.free.sum() == 6
    corrupted = y.copy()
    corrupted[first.free_flags.free] += 100.0  # wild free observations
    second = fit("a*exp(-k*x) + c", params, {"x": x}, corrupted, free_flags=first.free_flags)
    assert np.array_equal(second.free_flags.values, first.free_flags.values)
    # the corrections, driven by the working points only, are the same: the same path, the same end
    assert np.array_equal(second.x_last, first.x_last)
    assert [r.work for r in second.history] == [r.work for r in first.history]
    assert all(s.free > 50 * f.free for s, f in zip(second.history, first.history, strict=True))


def test_fit_recovers_known_parameters_with_honest_standard_errors():
    x, y = _exponential(noise=0.05, n=400)
    res = fit("a*exp(-k*x) + c", {"a": 1.0, "k": 1.0, "c": 0.0}, {"x": x}, y)
    for name, true in {"a": 3.0, "k": 1.3, "c": 0.5}.items():
        p = res.params[name]
        assert abs(p.value - true) < 4 * p.stderr, name  # truth within 4 standard errors
    assert res.best.free == pytest.approx(0.05, rel=0.35) and res.best.work == pytest.approx(0.05, rel=0.15)


def test_a_fit_scipy_agrees_with():
    from scipy.optimize import least_squares

    x, y = _exponential(seed=4)
    res = fit("a*exp(-k*x) + c", {"a": 1.0, "k": 1.0, "c": 0.0}, {"x": x}, y, free_fraction=0)
    ref = least_squares(lambda p: p[0] * np.exp(-p[1] * x) + p[2] - y, [1.0, 1.0, 0.0],
                        xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert [res.params[n].value for n in "akc"] == pytest.approx(ref.x, rel=1e-8)


def test_callable_models_are_fitted_too():
    x, y = _exponential(seed=1)

    def decay(x, a, k, c):
        return a * np.exp(-k * x) + c

    res = fit(decay, {"a": 1.0, "k": 1.0, "c": 0.0}, x=x, y=y, free_fraction=0)
    ref = fit("a*exp(-k*x) + c", {"a": 1.0, "k": 1.0, "c": 0.0}, {"x": x}, y, free_fraction=0)
    assert [res.params[n].value for n in "akc"] == pytest.approx([ref.params[n].value for n in "akc"], rel=1e-7)


def test_a_strong_prior_pulls_the_parameter_to_its_mean_and_a_weak_one_does_not():
    x, y = _exponential()
    free = fit("a*exp(-k*x) + c", {"a": 1.0, "k": 1.0, "c": 0.0}, {"x": x}, y, free_fraction=0)
    strong = Parameters().add("a", 1).add("k", 1, prior=(2.0, 1e-6)).add("c", 0)
    weak = Parameters().add("a", 1).add("k", 1, prior=(2.0, 1e6)).add("c", 0)
    res_strong = fit("a*exp(-k*x) + c", strong, {"x": x}, y, free_fraction=0)
    res_weak = fit("a*exp(-k*x) + c", weak, {"x": x}, y, free_fraction=0)
    assert res_strong.params["k"].value == pytest.approx(2.0, abs=1e-5)
    assert res_weak.params["k"].value == pytest.approx(free.params["k"].value, rel=1e-6)
    assert res_strong.best.restraint is not None and res_strong.to_dict()["parameters"]["k"]["prior"]


def test_bounds_hold_and_fixed_parameters_stay_put():
    x, y = _exponential()
    params = Parameters().add("a", 1.0).add("k", 1.0, max=1.0).add("c", 0.25, vary=False)
    res = fit("a*exp(-k*x) + c", params, {"x": x}, y, free_fraction=0)
    assert res.params["k"].value <= 1.0 and res.params["c"].value == 0.25 and res.nvarys == 2
    assert res.params["c"].stderr is None


def test_the_overfitting_alarm_fires_on_a_too_flexible_model_and_not_on_the_right_one():
    fired, silent = 0, 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        x = np.linspace(-1, 1, 40)
        y = 1 + 2 * x - 1.5 * x**2 + rng.normal(0, 0.3, x.size)
        flexible = " + ".join(f"c{k}*x**{k}" for k in range(13))
        res = fit(flexible, {f"c{k}": 0.0 for k in range(13)}, {"x": x}, y, free_fraction=0.2, seed=seed)
        if res.status is Status.OVERFITTING:
            fired += 1
            assert res.best.free < res.last.free and res.last.work < res.best.work
            assert res.x is not res.x_last and res.kept_cycle == res.best_cycle
        else:  # the documented silence: an easy free set whose score stays below the work score
            assert all(r.free <= r.work for r in res.history[res.best_cycle:])
        right = fit("c0 + c1*x + c2*x**2", {"c0": 0, "c1": 0, "c2": 0}, {"x": x}, y,
                    free_fraction=0.2, seed=seed)
        silent += not right.alarms and right.status is Status.CONVERGED
    assert fired >= 7 and silent == 8


def test_expressions_are_parsed_safely():
    assert Expression("b1*x^2")({"b1": 2.0, "x": 3.0}) == 18.0
    assert Expression("-pi + e*0")({}) == pytest.approx(-np.pi)
    for bad, match in [
        ("__import__('os').system('true')", "only plain function calls"),
        ("__import__('os')", "unknown function"),
        ("x.real", "Attribute is not allowed"),
        ("(lambda: 1)()", "only plain function calls"),
        ("x[0]", "Subscript is not allowed"),
        ("exp(x, 2)", "exactly one argument"),
        ("gamma(x)", "unknown function 'gamma'"),
        ("a +* b", "does not parse"),
        ("'text'", "Constant is not allowed|not allowed"),
        ("x if x else 1", "IfExp is not allowed"),
        ("exp", "is a function"),
        ("", "empty"),
    ]:
        with pytest.raises(InputError, match=match):
            Expression(bad)


def test_complex_step_derivatives_are_exact():
    from refinekit.fit.api import _complex_step

    x = np.linspace(0.1, 2, 7)
    expr = Expression("a*exp(-k*x) + arctan(a*x)/sqrt(k) + abs(a - 3)*x")
    def predict(v):
        return expr({"x": x, "a": v[0], "k": v[1]})
    jac = _complex_step(predict, 2)(np.array([1.5, 0.7]))
    a, k = 1.5, 0.7
    da = np.exp(-k * x) + x / (1 + (a * x) ** 2) / np.sqrt(k) - x
    dk = -a * x * np.exp(-k * x) - 0.5 * np.arctan(a * x) * k**-1.5
    assert jac[:, 0] == pytest.approx(da, rel=1e-14) and jac[:, 1] == pytest.approx(dk, rel=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "a*exp(-k*x) + q"}, "unknown name"),
        ({"params": {"a": 1, "k": 1, "c": 0, "z": 1}}, "not in the model"),
        ({"params": {"a": 1, "k": 1e6, "c": 0}, "model": "a*exp(k*x) + c"}, "not finite at the starting"),
        ({"y": np.full(60, np.nan)}, "NaN or Inf"),
        ({"y": np.ones(59)}, "shape"),
        ({"sigma": -1.0}, "sigma must be finite and positive"),
        ({"free_flags": FreeFlags(np.zeros(10, int))}, "free flags are for 10 points"),
        ({"precision": "quad"}, "precision"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(kwargs, match):
    x, y = _exponential()
    args = {"model": "a*exp(-k*x) + c", "params": {"a": 1, "k": 1, "c": 0}, "y": y}
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        fit(args.pop("model"), args.pop("params"), {"x": x}, args.pop("y"), **args)


@pytest.mark.parametrize(
    ("spec", "match"),
    [("b1", "expected NAME=VALUE"), ("b1=abc", "not a number"), ("b1=1,min=2", "impossible bounds|outside"),
     ("b1=1,min=2,max=1", "impossible bounds"), ("b1=1,step=2", "unknown option"), ("1b=1", "invalid"),
     ("b1=nan", "finite"), ("b1=1,prior=1:0", "positive sigma")],
)
def test_parameter_specs(spec, match):
    with pytest.raises(InputError, match=match):
        parse_param_spec(spec)
    p = parse_param_spec("b1=500,min=0,max=1000")
    assert (p.value, p.min, p.max, p.vary) == (500, 0, 1000, True)
    assert not parse_param_spec("b1=1,fixed").vary


def test_prior_weight_chosen_by_the_free_score_trusts_a_right_prior_and_not_a_wrong_one():
    rng = np.random.default_rng(11)
    x = np.linspace(0, 3, 24)
    y = 2.0 * np.exp(-1.3 * x) + rng.normal(0, 0.15, x.size)
    weights = {}
    for label, mean in (("right", 1.3), ("wrong", 4.0)):
        params = Parameters().add("a", 1.0).add("k", 1.0, prior=(mean, 0.05))
        res = fit("a*exp(-k*x)", params, {"x": x}, y, free_fraction=0.25, seed=1, prior_weight="auto")
        choice = res.figures["weight_choice"]
        frees = [t["free"] for t in choice["trials"]]
        assert min(frees) == next(t["free"] for t in choice["trials"] if t["weight"] == choice["weight"])
        weights[label] = res.figures["prior_weight"]
    assert weights["right"] > 100 * weights["wrong"]
    assert weights["wrong"] < 0.1


def test_a_model_without_data_columns_fits_the_weighted_mean():
    """``a`` alone predicts one value for every point (it was an IndexError: the size of the points
    was taken from the first data column, and there was none)."""
    y = np.array([2.1, 1.9, 2.0, 2.05, 1.95, 2.3])
    result = fit("a", {"a": 1.0}, {}, y, free_fraction=0)
    assert result.success
    assert abs(result.params["a"].value - y.mean()) < 1e-9
    assert abs(result.params["a"].stderr - y.std(ddof=1) / np.sqrt(y.size)) < 1e-9
