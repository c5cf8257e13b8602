"""Model expressions such as ``b1*(1-exp(-b2*x))``, parsed safely.

The text is parsed with Python's ``ast`` and only numbers, names, ``+ - * / ** ^`` (``^`` means
power), unary signs and calls of a fixed set of mathematical functions are accepted; everything else
(attributes, subscripts, keywords, strings, lambdas, ...) is refused. The tree is turned into nested
closures over numpy functions: nothing is ever passed to ``eval``. Evaluation works on float, long
double and complex arrays, so derivatives can be taken by the complex step.
"""

from __future__ import annotations

import ast
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
        try:
            # "^" means power, with power's precedence (Python would read it as xor, below "*")
            tree = ast.parse(self.text.replace("^", "**"), mode="eval")
        except SyntaxError as exc:
            raise InputError(f"model expression does not parse: {exc.msg} at column {exc.offset} "
                             f"in {self.text!r}") from None
        self.names: set[str] = set()
        self.constants: set[str] = set()  # the constants it reads (pi, e): never a data column
        self.uses_abs = False
        self._root = self._build(tree.body)

    def __call__(self, env: Mapping[str, Any]) -> Any:
        return self._root(env)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def _build(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
                and not isinstance(node.value, bool):
            value = float(node.value)
            return lambda env: value
        if isinstance(node, ast.Name):
            name = node.id
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
            left, right = self._build(node.left), self._build(node.right)
            return lambda env: op(left(env), right(env))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self._build(node.operand)
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
            self.uses_abs |= fname == "abs"
            arg = self._build(node.args[0])
            return lambda env: func(arg(env))
        what = type(node).__name__
        if isinstance(node, ast.BinOp):
            what = type(node.op).__name__
        raise InputError(f"model expression: {what} is not allowed (only numbers, names, + - * / ** ^ "
                         f"and functions) in {self.text!r}")
