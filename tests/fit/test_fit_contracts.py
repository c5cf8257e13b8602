"""Edge cases of the fit API and the expression parser: refused with a one-line InputError, never
another exception, and never a silently different fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refinekit.core import InputError
from refinekit.fit import Expression, Parameter, Parameters, fit, parse_param_spec


def _exponential(n=40):
    x = np.linspace(0, 4, n)
    return x, 3.0 * np.exp(-1.3 * x) + 0.5 + 0.01 * np.sin(9 * x)


# ---------------------------------------------------------------------------------- expressions
@pytest.mark.parametrize("text", [
    "-" * 5000 + "x",             # RecursionError in the parser
    "x" + "+x" * 4000,            # RecursionError in the parser
    "x" + "**x" * 3000,           # MemoryError in the parser
    "-" * 600 + "x",              # parsed, but the closures recursed past Python's limit
    "x" + "+x" * 900,
])
def test_deep_nesting_is_refused_not_a_recursion_error(text):
    with pytest.raises(InputError, match="nested too deeply"):
        Expression(text)


def test_a_model_that_compiles_never_hits_the_recursion_limit_in_a_fit():
    # "-"*990 compiled, then raised RecursionError inside fit(); now the depth limit refuses it early
    x, y = _exponential()
    with pytest.raises(InputError, match="nested too deeply"):
        fit("a*" + "-" * 990 + "x", {"a": 1}, {"x": x}, y)
    assert fit("a*" + "--" * 90 + "x", {"a": 1}, {"x": x}, 2 * x, free_fraction=0).success


@pytest.mark.parametrize("text", ["9" * 400, "1e400*x", "x + 1" + "0" * 320])
def test_numbers_beyond_float_are_refused(text):
    with pytest.raises(InputError, match="too large for a float"):  # was OverflowError, or a silent inf
        Expression(text)


def test_unicode_names_are_read_as_written():
    # Python folds the micro sign into Greek mu and fullwidth letters into ASCII (NFKC): the column
    # "µ" was then reported unknown, and "ｘ" silently read the column "x"
    assert Expression("a*\u00b5").names == {"a", "\u00b5"}
    assert Expression("\uff58").names == {"\uff58"}
    x, _ = _exponential()
    res = fit("a*\u00b5", {"a": 1}, {"\u00b5": x}, 2 * x, free_fraction=0)
    assert res.params["a"].value == pytest.approx(2.0)


def test_null_bytes_are_refused_without_a_column_none():
    with pytest.raises(InputError) as info:
        Expression("x\x00")
    assert "None" not in str(info.value)


_TOKENS = st.sampled_from([
    "x", "a", "1", "2.5", "1e308", "9" * 30, "1j", "pi", "e", "exp", "log", "abs", "foo", "(", ")", "+",
    "-", "*", "/", "**", "^", ",", ".", "[", "]", "=", ":=", "<", "and", "lambda", "'s'", "b'b'", "f'{x}'",
    "__import__", "real", " ", "\u00b5", "\uff58", "*", "%", "~", "if", "else", "None", "True", "@",
])


def _check(text: str) -> None:
    try:
        expr = Expression(text)
    except InputError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    env = {name: np.array([0.5, 2.0]) for name in expr.names}
    with np.errstate(all="ignore"):
        out = np.asarray(expr(env))
    assert out.dtype.kind == "f"  # numbers only: nothing else can come out of the closures


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TOKENS, max_size=25).map("".join))
def test_fuzzed_expressions_compile_or_raise_input_error(text):
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_text_compiles_or_raises_input_error(text):
    _check(text)


# ---------------------------------------------------------------------------------- parameters
def test_parameter_options_given_twice_are_refused():
    for spec in ("b=1,min=0,min=2", "b=1,prior=0:1,prior=5:1", "b=1,fixed,fixed"):
        with pytest.raises(InputError, match="given twice"):  # the last silently won
            parse_param_spec(spec)


def test_parameter_names_must_match_whole():
    with pytest.raises(InputError, match="invalid parameter name"):
        Parameter("a\n", 1.0)  # re.match with "$" accepted a trailing newline


def test_parameters_add_takes_lmfit_style_arguments():
    p = Parameters().add("a", 1, min=None, max=None, prior=[0, 1])  # a list prior was stored unchecked
    assert (p["a"].min, p["a"].max, p["a"].prior.sigma) == (-math.inf, math.inf, 1.0)
    for kwargs in ({"prior": (0,)}, {"min": "low"}):
        with pytest.raises(InputError, match="parameter a"):
            Parameters().add("a", 1, **kwargs)
    with pytest.raises(InputError, match="parameter a"):
        Parameters().add("a", 10**400)


@pytest.mark.parametrize("name", ["pi", "exp", "e", "lambda"])
def test_parameter_names_reserved_by_expressions_say_so(name):
    x, y = _exponential()
    with pytest.raises(InputError, match="reserved"):  # was "parameter(s) not in the model: pi"
        fit("a*x", {"a": 1, name: 1}, {"x": x}, y)


# ---------------------------------------------------------------------------------- fit() input
M, P = "a*exp(-k*x) + c", {"a": 1, "k": 1, "c": 0}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sigma": np.ones(5)}, "sigma has shape"),             # numpy's broadcast ValueError
    ({"sigma": np.ones((40, 1))}, "sigma has shape"),
    ({"sigma": "a"}, "sigma is not numeric"),
    ({"free_fraction": -1.0}, "free_fraction"),             # silently fitted every point
    ({"free_fraction": math.nan}, "free_fraction"),
    ({"prior_weight": math.inf}, "finite number"),         # every score non-finite
    ({"x": np.linspace(0, 8, 40)}, "both as x= and"),       # x= silently ignored
    ({"data": {"x": np.linspace(0, 4, 40), "a": np.ones(40)}}, "both parameters and data columns"),
    ({"data": {"x": np.linspace(0, 4, 40), "e": np.ones(40)}, "model": "a*exp(-k*x) + c*e"},
     "share a name with a constant"),                        # the column was silently ignored
    ({"data": {"x": np.linspace(0, 4, 40) + 0j}}, "complex"),  # the imaginary part silently dropped
    ({"y": np.ones(40) + 1j}, "complex"),
    ({"data": {"x": np.linspace(0, 4, 40), "name": ["s"] * 40}}, "not numeric"),
    ({"params": [1, 1, 0]}, "mapping"),
])
def test_fit_input_is_refused_with_a_clear_message(kwargs, match):
    x, y = _exponential()
    args = {"model": M, "params": P, "data": {"x": x}, "y": y, **kwargs}
    with pytest.raises(InputError, match=match):
        fit(args.pop("model"), args.pop("params"), args.pop("data"), args.pop("y"), **args)


def test_x_keyword_feeds_an_expression():
    x, y = _exponential()
    res = fit(M, P, None, y, x=x, free_fraction=0)  # was "unknown name(s) in the model: x"
    assert res.params["k"].value == pytest.approx(fit(M, P, {"x": x}, y, free_fraction=0).params["k"].value)


@pytest.mark.parametrize(("model", "match"), [
    (lambda x, a, k, c: np.ones(3) * a, r"returned shape \(3,\)"),        # ValueError from numpy
    (lambda x, a, k, c: (a * np.exp(-k * x) + c)[:, None], r"shape \(40, 1\)"),
    (lambda x, a, k, c: a * np.exp(-k * x) + c + 1j, "complex"),          # imaginary part dropped
    (lambda x, a, k, c: "abc", "not real numbers"),
    (lambda x, a, k, c: None, "not real numbers"),
])
def test_callable_models_returning_the_wrong_thing_are_refused(model, match):
    x, y = _exponential()
    with pytest.raises(InputError, match=match):
        fit(model, P, None, y, x=x)


def test_callable_model_with_both_x_and_data_columns_is_refused():
    x, y = _exponential()
    with pytest.raises(InputError, match="both as x= and"):
        fit(lambda x, a, k, c: a * np.exp(-k * x) + c, P, {"x": x}, y, x=x)


def test_a_callable_returning_a_constant_fits_the_mean():
    x, y = _exponential()
    res = fit(lambda x, m: m, {"m": 0.0}, None, y, x=x, free_fraction=0)  # was an IndexError
    assert res.params["m"].value == pytest.approx(y.mean())


def test_extended_precision_reaches_callable_models():
    # the callable's long double output was cast to double: extended precision did nothing for it
    t = np.linspace(0, 4, 40)
    y = 3 * np.exp(-np.longdouble(1.3) * t.astype(np.longdouble)) + np.longdouble(1) / 3
    def model(x, a, k, c):
        return a * np.exp(-k * x["t"]) + c
    double = fit(model, P, {"t": t}, y, free_fraction=0)
    extended = fit(model, P, {"t": t}, y, free_fraction=0, precision="extended")
    if np.finfo(np.longdouble).eps < np.finfo(float).eps:
        assert extended.chisqr < 1e-3 * double.chisqr


# ---------------------------------------------------------------------------------- the fit itself
def test_a_parameter_on_its_bound_converges_quickly():
    # with k held on max=1 the clipped coupled steps zig-zagged a and c for all 20000 cycles
    x, y = _exponential()
    params = Parameters().add("a", 1).add("k", 0.5, max=1.0).add("c", 0)
    for geodesic in (False, True):
        res = fit(M, params, {"x": x}, y, free_fraction=0, geodesic=geodesic, max_cycles=500)
        assert res.success, res.message
        assert res.params["k"].value == 1.0
        # scipy.optimize.least_squares(..., bounds) gives a = 2.89920343, c = 0.36684244
        assert res.params["a"].value == pytest.approx(2.89920343, rel=1e-7)
        assert res.params["c"].value == pytest.approx(0.36684244, rel=1e-7)


def test_undetermined_standard_errors_are_none_and_the_report_says_why():
    x, y = _exponential()
    res = fit("a*b*x + c", {"a": 1, "b": 1, "c": 0}, {"x": x}, 2 * x + 1 + 0.01 * np.sin(9 * x))
    assert all(p.stderr is None for p in res.params.values())
    assert np.all(np.isnan(res.covar))
    assert "rank-deficient" in res.fit_report()
    exact = fit("a*x + b", {"a": 1, "b": 0}, {"x": x[:2]}, x[:2], free_fraction=0)
    assert "no degrees of freedom" in exact.fit_report()
    assert "n/a:" not in fit(M, P, {"x": x}, y).fit_report()
