"""Model expressions such as ``b1*(1-exp(-b2*x))``, parsed safely.

The text is parsed with Python's ``ast`` and only numbers, names, ``+ - * / ** ^`` (``^`` means
power), unary signs and calls of a fixed set of mathematical functions are accepted; everything else
(attributes, subscripts, keywords, strings, lambdas, ...) is refused. The tree is turned into nested
closures over numpy functions: nothing is ever passed to ``eval``. Evaluation works on float, long
double and complex arrays, so derivatives can be taken by the complex step.
"""

from __future__ import annotations

import ast
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.special

from ..core.errors import InputError

Node = Callable[[Mapping[str, Any]], Any]


def _abs(z: Any) -> Any:
    # |z| that stays analytic under the complex step: sign of the real part times z
    if np.iscomplexobj(z):
        return np.where(np.real(z) < 0, -z, z)
    return np.abs(z)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "exp": np.exp, "log": np.log, "ln": np.log, "log10": np.log10, "log2": np.log2,
    "sqrt": np.sqrt, "sin": np.sin, "cos": np.cos, "tan": np.tan,
    "arcsin": np.arcsin, "asin": np.arcsin, "arccos": np.arccos, "acos": np.arccos,
    "arctan": np.arctan, "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh,
    "abs": _abs, "erf": scipy.special.erf, "erfc": scipy.special.erfc,
}
CONSTANTS = {"pi": np.pi, "e": np.e}
MAX_LENGTH = 10_000
# deepest nesting of operations accepted: building and evaluating the closures recurses once per level,
# so a deeper tree would hit Python's recursion limit (at compile time, or worse, in the middle of a fit)
MAX_DEPTH = 200

_BINARY = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
    ast.Pow: np.power,
}


class Expression:
    """A parsed model expression: ``names`` are the free names (parameters and data columns).

    >>> e = Expression("b1*(1-exp(-b2*x))")
    >>> sorted(e.names)
    ['b1', 'b2', 'x']
    >>> float(e({"b1": 2.0, "b2": 1.0, "x": 0.0}))
    0.0
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise InputError("the model expression is empty")
        if len(text) > MAX_LENGTH:
            raise InputError(f"the model expression is longer than {MAX_LENGTH} characters")
        self.text = text.strip()
        # "^" means power, with power's precedence (Python would read it as xor, below "*")
        self._source = self.text.replace("^", "**")
        try:
            with warnings.catch_warnings():  # "1and x": a SyntaxWarning line beside our own message
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(self._source, mode="eval")
        except SyntaxError as exc:
            where = f" at column {exc.offset}" if exc.offset is not None else ""
            raise InputError(f"model expression does not parse: {exc.msg}{where} in {self.text!r}") from None
        except (RecursionError, MemoryError):  # the parser's own limits ("-"*5000 + "x")
            raise InputError(f"model expression is nested too deeply (at most {MAX_DEPTH} levels)") from None
        except ValueError as exc:  # null bytes, on Pythons that raise ValueError for them
            raise InputError(f"model expression does not parse: {exc}") from None
        self.names: set[str] = set()
        self.constants: set[str] = set()  # the constants it reads (pi, e): never a data column
        self._root = self._build(tree.body, 0)

    def __call__(self, env: Mapping[str, Any]) -> Any:
        return self._root(env)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def _build(self, node: ast.AST, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise InputError(f"model expression is nested too deeply (at most {MAX_DEPTH} levels)")
        depth += 1
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
                and not isinstance(node.value, bool):
            try:
                value = float(node.value)
            except OverflowError:  # an integer literal beyond float's range
                value = math.inf
            if not math.isfinite(value):
                number = self._segment(node) or ""
                number = number if len(number) <= 20 else number[:17] + "..."
                raise InputError(f"model expression: the number {number} is too large for a float")
            return lambda env: value
        if isinstance(node, ast.Name):
            # the name as written: Python folds Unicode names (NFKC: micro sign to Greek mu, fullwidth
            # letters to ASCII), which would no longer match the data column or parameter so spelled
            name = self._segment(node) or node.id
            if name in CONSTANTS:
                self.constants.add(name)
                const = CONSTANTS[name]
                return lambda env: const
            if name in FUNCTIONS:
                raise InputError(f"model expression: {name} is a function; call it as {name}(...)")
            self.names.add(name)
            return lambda env: env[name]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            op = _BINARY[type(node.op)]
            left, right = self._build(node.left, depth), self._build(node.right, depth)
            return lambda env: op(left(env), right(env))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self._build(node.operand, depth)
            if isinstance(node.op, ast.USub):
                return lambda env: np.negative(operand(env))
            return operand
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise InputError(f"model expression: only plain function calls are allowed in {self.text!r}")
            fname = node.func.id
            if fname not in FUNCTIONS:
                known = ", ".join(sorted(FUNCTIONS))
                raise InputError(f"model expression: unknown function {fname!r} (known: {known})")
            if node.keywords or len(node.args) != 1:
                raise InputError(f"model expression: {fname}() takes exactly one argument")
            func = FUNCTIONS[fname]
            arg = self._build(node.args[0], depth)
            return lambda env: func(arg(env))
        what = type(node).__name__
        if isinstance(node, ast.BinOp):
            what = type(node.op).__name__
        raise InputError(f"model expression: {what} is not allowed (only numbers, names, + - * / ** ^ "
                         f"and functions) in {self.text!r}")

    def _segment(self, node: ast.AST) -> str | None:
        return ast.get_source_segment(self._source, node)
