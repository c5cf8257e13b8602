"""Reading data for fits: CSV tables with a header row, and NIST StRD nonlinear-regression files."""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import InputError, os_error_text


def _read_text(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise InputError(f"is a directory, not a {what}", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read {what} ({os_error_text(exc)})", path=path) from None
    if not data.strip():
        raise InputError(f"empty {what}", path=path)
    if b"\x00" in data:
        raise InputError(f"not a text {what} (binary content)", path=path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"not a UTF-8 text {what}", path=path) from None


def read_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Columns of a CSV file with a header row, as float arrays keyed by column name.

    Every cell must be a finite number; a malformed file is refused with its line and column named.
    """
    path = Path(path)
    text = _read_text(path, "CSV file")
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [row for row in csv.reader(text.splitlines(), dialect) if any(c.strip() for c in row)]
    header = [h.strip() for h in rows[0]]
    if any(not h for h in header):
        raise InputError("the header row has an empty column name", path=path)
    if len(set(header)) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise InputError(f"duplicate column name(s) in the header: {', '.join(dupes)}", path=path)
    for h in header:
        if _is_number(h):
            raise InputError(f"the first row must be a header of column names, found the number {h!r}",
                             path=path)
    if len(rows) < 2:
        raise InputError("no data rows after the header", path=path)
    values = np.empty((len(rows) - 1, len(header)))
    for i, row in enumerate(rows[1:]):
        line = i + 2
        if len(row) != len(header):
            raise InputError(f"line {line}: {len(row)} fields, the header has {len(header)}", path=path)
        for j, cell in enumerate(row):
            try:
                if "_" in cell:  # float() reads "1_000" as Python's digit grouping: no CSV means that
                    raise ValueError(cell)
                value = float(cell)
            except ValueError:
                raise InputError(f"line {line}, column {header[j]!r}: not a number: {cell.strip()!r}",
                                 path=path) from None
            if not math.isfinite(value):
                raise InputError(f"line {line}, column {header[j]!r}: non-finite value {cell.strip()!r}",
                                 path=path)
            values[i, j] = value
    return {name: values[:, j].copy() for j, name in enumerate(header)}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------ NIST StRD
@dataclass(frozen=True)
class NistProblem:
    """One NIST StRD nonlinear regression problem, as its ``.dat`` file states it."""

    name: str
    model: str  # our expression syntax
    response: str  # "y", or "log(y)" (Nelson)
    data: dict[str, np.ndarray]  # "y" and the predictor columns
    starts: tuple[dict[str, float], dict[str, float]]
    certified: dict[str, float]
    certified_stderr: dict[str, float]
    certified_rss: float
    difficulty: str

    @property
    def parameter_names(self) -> list[str]:
        return list(self.certified)


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def read_nist(path: str | os.PathLike[str]) -> NistProblem:
    """Parse a NIST StRD nonlinear regression ``.dat`` file (data kept in long double, so that every
    printed digit survives)."""
    path = Path(path)
    lines = _read_text(path, "NIST StRD file").splitlines()
    try:
        return _parse_nist(path, lines)
    except (IndexError, KeyError, ValueError, StopIteration):
        raise InputError("not a well-formed NIST StRD nonlinear regression file", path=path) from None


def _parse_nist(path: Path, lines: list[str]) -> NistProblem:
    name = re.search(r"Dataset Name:\s+(\S+)", "\n".join(lines[:5])).group(1)
    difficulty = next((ln.strip() for ln in lines if "Level of Difficulty" in ln), "")
    # the model: from the "y = ..." line to the "+ e" that ends it
    start = next(i for i, ln in enumerate(lines) if re.match(r"\s*(y|log\[y\])\s*=", ln))
    text = []
    for ln in lines[start:]:
        text.append(ln.strip())
        if re.search(r"\+\s*e\s*$", ln):
            break
    model_text = " ".join(text)
    lhs, rhs = model_text.split("=", 1)
    rhs = re.sub(r"\+\s*e\s*$", "", rhs.strip()).strip()
    expr = rhs.replace("[", "(").replace("]", ")")
    response = "log(y)" if "log" in lhs else "y"
    # starting and certified values: lines "  b1 =   start1   start2   cert   stderr"
    starts: tuple[dict[str, float], dict[str, float]] = ({}, {})
    certified: dict[str, float] = {}
    stderr: dict[str, float] = {}
    for ln in lines:
        m = re.match(rf"\s*(b\d+)\s*=\s*({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})\s*$", ln)
        if m:
            b = m.group(1)
            starts[0][b], starts[1][b] = float(m.group(2)), float(m.group(3))
            certified[b], stderr[b] = float(m.group(4)), float(m.group(5))
    rss_line = next(ln for ln in lines if ln.strip().startswith("Residual Sum of Squares"))
    rss = float(re.search(_NUMBER + r"\s*$", rss_line).group(0))
    # the data block: the last "Data:" header line names the columns
    data_start = max(i for i, ln in enumerate(lines) if re.match(r"\s*Data:\s+y\b", ln))
    columns = lines[data_start].split(":", 1)[1].split()
    rows = [ln.split() for ln in lines[data_start + 1:] if ln.strip()]
    table = np.array(rows, dtype=np.longdouble)
    if table.ndim != 2 or table.shape[1] != len(columns) or not certified:
        raise ValueError("inconsistent NIST file")
    data = {c: table[:, j].copy() for j, c in enumerate(columns)}
    del path
    return NistProblem(name, expr, response, data, starts, certified, stderr, rss, difficulty)
