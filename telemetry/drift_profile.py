"""Reference profiles for drift statistics: how they are built, counted into, stored and checked.

A *profile* describes one model version's reference data (what it was trained or
validated on) as fixed bins per tensor; :mod:`batchwire.telemetry.drift_window`
counts live requests into the same bins and compares the two with the population
stability index.

Tensors and features. Every profiled tensor is batch-first: axis 0 indexes *items*
(the rows of a batch). A tensor is profiled one of three ways (``TensorProfile.kind``
and ``features``):

- per feature (``kind="bins"``, features ``"0"``, ``"1"``, ... ``"E-1"``): each of the
  ``E`` elements of an item (flat, C order, batch axis excluded) is a feature with its
  own bins. :func:`build_profile` picks this when ``E <= max_features`` and the tensor
  is not named in ``pooled``.
- pooled (``kind="bins"``, the one feature ``"*"``): every element of every item counts
  into one set of bins, whatever the item's shape. For variable-shape (ragged) tensors
  and tensors with more than ``max_features`` elements per item.
- classes (``kind="classes"``, the one feature ``"top1"``): an output of class scores
  whose last axis has ``C`` classes; each row along that axis (one per item for a
  ``(N, C)`` output) counts as one value, its class the argmax (the first maximum on
  ties). The reference proportions are the classes' top-1 frequencies.

Bins (``B`` = the profile's ``bins``, for ``kind="bins"``). Feature ``f`` has ``B - 1``
inner edges ``e_1 <= ... <= e_{B-1}``: ``numpy.quantile`` (its default, linear
interpolation) of the feature's finite reference values at ``k / B``, ``k = 1..B-1``,
made non-decreasing (a running maximum, against rounding). A value ``x`` falls in bin
``#{k : x > e_k}``: bins are ``(-inf, e_1]``, ``(e_1, e_2]``, ..., ``(e_{B-1}, +inf)``, so
the outer bins are open and catch values outside the reference range. Equal edges are
allowed (a feature with few distinct values): the bins between them stay empty, in the
reference and live alike, because both are counted by the one function
:func:`count_bins` -- ties and duplicate edges fall the same way on both sides.

Values counted apart (the bin counts cover finite values only):

- non-finite (NaN, +-inf): counted separately and never into a bin; for classes, a
  row with any non-finite score is such a value.
- out of range: finite values outside ``[low, high]``, the feature's reference minimum
  and maximum; they are counted into the outer bins *and* counted separately.

Values are compared as float64: integers beyond 2**53 lose precision, BOOL counts as
0/1. BYTES and BF16 tensors (BF16 travels as raw uint16 storage) cannot be profiled.

The file (:data:`PROFILE_FILE` in the version folder ``<repo>/<model>/<version>/``; the
config parameter ``batchwire.drift_profile`` may name another, see
:mod:`batchwire.server.drift_stage`) is JSON::

    {"format": "batchwire-drift-profile/1", "bins": B, "reference_items": N,
     "tensors": [{"name": ..., "kind": "bins" | "classes", "features": [...],
                  "edges": [[...] * F], "expected": [[...] * F], "low": [...], "high": [...]}]}

``edges`` is ``F`` rows of ``B - 1`` numbers (``[]`` for classes), ``expected`` ``F`` rows
of ``B`` proportions summing to 1 (one row of ``C`` for classes), ``low``/``high`` ``F``
numbers (``[]`` for classes). Floats are written as Python's ``repr``, so a load gives
back the very same float64 values; NaN and infinities are not allowed anywhere.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from batchwire.core.spec import ModelSpec

__all__ = [
    "FORMAT",
    "PROFILE_FILE",
    "DriftProfile",
    "ProfileError",
    "TensorProfile",
    "build_profile",
    "check_profile",
    "count_bins",
    "dumps_profile",
    "load_profile",
    "save_profile",
]

#: The profile's file name in the version folder ``<repo>/<model>/<version>/``.
PROFILE_FILE = "drift_profile.json"
#: The ``format`` a profile file declares; another value is refused.
FORMAT = "batchwire-drift-profile/1"

BINS = "bins"
CLASSES = "classes"
POOLED = "*"
TOP1 = "top1"
#: Datatypes whose arrays do not hold their values as numbers numpy can compare.
_UNPROFILABLE = ("BYTES", "BF16")
#: How far a row of stored proportions may sum from 1 (they are float64 quotients).
_SUM_TOLERANCE = 1e-9


class ProfileError(ValueError):
    """A profile file that cannot be used; one line naming the file, the expected and the found."""


def _frozen(array: np.ndarray) -> np.ndarray:
    out = np.array(array, dtype=np.float64)  # a private copy
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class TensorProfile:
    """The reference bins of one tensor (see the module docstring for the rules).

    ``edges`` float64 ``(F, B-1)``, rows non-decreasing (``(0, 0)`` for classes);
    ``expected`` float64 ``(F, B)`` reference proportions, rows summing to 1 (``(1, C)``
    for classes); ``low``/``high`` float64 ``(F,)`` reference minimum and maximum (empty
    for classes). The arrays are read-only copies. Equality compares every value exactly.
    """

    name: str
    kind: str
    features: tuple[str, ...]
    edges: np.ndarray
    expected: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def __post_init__(self) -> None:
        for field_name in ("edges", "expected", "low", "high"):
            object.__setattr__(self, field_name, _frozen(getattr(self, field_name)))
        problem = _shape_problem(self)
        if problem is not None:
            raise ValueError(f"tensor '{self.name}': {problem}")

    @property
    def pooled(self) -> bool:
        """True when every element counts into one set of bins (the feature ``"*"``)."""
        return self.kind == BINS and self.features == (POOLED,)

    @property
    def classes(self) -> int:
        """C for a classes profile; 0 otherwise."""
        return self.expected.shape[1] if self.kind == CLASSES else 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorProfile):
            return NotImplemented
        return (
            (self.name, self.kind, self.features) == (other.name, other.kind, other.features)
            and _same(self.edges, other.edges)
            and _same(self.expected, other.expected)
            and _same(self.low, other.low)
            and _same(self.high, other.high)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking arrays: not hashable


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _shape_problem(t: TensorProfile) -> str | None:
    """Why the arrays of ``t`` do not fit together, or None."""
    if t.kind not in (BINS, CLASSES):
        return f"kind must be '{BINS}' or '{CLASSES}', got '{t.kind}'"
    if not t.features or len(set(t.features)) != len(t.features):
        return f"features must be non-empty and distinct, got {len(t.features)} label(s)"
    if t.expected.ndim != 2:
        return f"expected must be 2-D, got shape {t.expected.shape}"
    if t.kind == CLASSES:
        if t.features != (TOP1,):
            return f"a classes profile has the one feature '{TOP1}', got {list(t.features)[:4]}"
        if t.expected.shape[0] != 1 or t.expected.shape[1] < 1:
            return f"expected must be (1, C) with C >= 1, got {t.expected.shape}"
        if t.edges.shape != (0, 0) or t.low.shape != (0,) or t.high.shape != (0,):
            return "a classes profile has edges of shape (0, 0) and empty low/high"
        return None
    features, bins = t.expected.shape
    if features != len(t.features) or bins < 2:
        return f"expected must be ({len(t.features)}, B) with B >= 2, got {t.expected.shape}"
    if t.edges.shape != (features, bins - 1):
        return f"edges must be ({features}, {bins - 1}), got {t.edges.shape}"
    if t.low.shape != (features,) or t.high.shape != (features,):
        return f"low and high must be ({features},), got {t.low.shape} and {t.high.shape}"
    return None


@dataclass(frozen=True)
class DriftProfile:
    """One model version's reference: its tensors' profiles (inputs and outputs by name)."""

    tensors: dict[str, TensorProfile]
    #: Items (batch rows) of the reference data.
    reference_items: int
    #: B: bins per feature of the ``kind="bins"`` tensors.
    bins: int

    def __post_init__(self) -> None:
        if self.bins < 2 or self.reference_items < 1:
            raise ValueError(
                f"expected bins >= 2 and reference_items >= 1, got {self.bins} and "
                f"{self.reference_items}"
            )
        for name, tensor in self.tensors.items():
            if name != tensor.name:
                raise ValueError(f"tensor '{tensor.name}' is filed under the name '{name}'")
            if tensor.kind == BINS and tensor.expected.shape[1] != self.bins:
                raise ValueError(
                    f"tensor '{name}': {tensor.expected.shape[1]} bins, expected {self.bins} "
                    "(the profile's bins)"
                )


# -- counting ---------------------------------------------------------------------------


def _numeric(name: str, array: object) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"tensor '{name}': expected numbers (bool, int or float), got {a.dtype}")
    return a


def count_bins(profile: TensorProfile, array: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """Count a batch-first ``array`` into ``profile``'s bins.

    Returns ``(counts, values, nonfinite, out_of_range)``: ``counts`` int64 ``(F, B)``
    (``(1, C)`` for classes), ``values`` the values seen (elements; rows of scores for
    classes), ``nonfinite`` how many of them were NaN or infinite (not in ``counts``, so
    ``counts.sum() == values - nonfinite``), ``out_of_range`` how many finite ones lay
    outside ``[low, high]`` (0 for classes). Per-feature tensors need ``F`` elements per
    item; pooled ones take any shape. ValueError when the shape does not fit.

    Vectorised over items and features: one comparison pass per bin edge (``B - 1`` of
    them), then one ``np.bincount`` over ``bin + B * feature``.
    """
    a = _numeric(profile.name, array)
    if profile.kind == CLASSES:
        return _count_classes(profile, a)
    features = len(profile.features)
    bins = profile.expected.shape[1]
    if profile.pooled:
        x = a.reshape(-1, 1)
    else:
        items = a.shape[0] if a.ndim else 0
        if a.ndim == 0 or a.size != items * features:
            raise ValueError(
                f"tensor '{profile.name}': expected {features} element(s) per item "
                f"(batch-first), got shape {a.shape}"
            )
        x = a.reshape(items, features)
    x = x.astype(np.float64, copy=False)
    index = np.zeros(x.shape, dtype=np.intp)
    for k in range(bins - 1):  # a loop over edges; each pass covers every value at once
        index += x > profile.edges[:, k]
    index += np.arange(features, dtype=np.intp) * bins
    finite = np.isfinite(x)
    n_finite = int(np.count_nonzero(finite))
    counted = index.ravel() if n_finite == x.size else index[finite]
    counts = np.bincount(counted, minlength=features * bins).astype(np.int64, copy=False)
    outside = ((x < profile.low) | (x > profile.high)) & finite
    return (
        counts.reshape(features, bins),
        int(x.size),
        int(x.size - n_finite),
        int(np.count_nonzero(outside)),
    )


def _count_classes(profile: TensorProfile, a: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    classes = profile.classes
    if a.ndim < 2 or a.shape[-1] != classes:
        raise ValueError(
            f"tensor '{profile.name}': expected class scores with {classes} classes on the "
            f"last axis, got shape {a.shape}"
        )
    scores = a.reshape(-1, classes)
    finite = np.isfinite(scores).all(axis=1)
    top = scores.argmax(axis=1)
    n_finite = int(np.count_nonzero(finite))
    counted = top if n_finite == len(top) else top[finite]
    counts = np.bincount(counted, minlength=classes).astype(np.int64, copy=False)
    return counts.reshape(1, classes), len(top), len(top) - n_finite, 0


def _proportions(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum(axis=1, keepdims=True)


# -- building ---------------------------------------------------------------------------


def build_profile(
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
    *,
    bins: int = 10,
    class_scores: Collection[str] = (),
    max_features: int = 1024,
    pooled: Collection[str] = (),
) -> DriftProfile:
    """The profile of reference ``inputs`` and ``outputs`` (batch-first arrays, N items each).

    ``class_scores``: outputs profiled as top-1 class frequencies; ``pooled``: tensors
    pooled into one feature whatever their size (variable-shape ones); any other tensor
    with more than ``max_features`` elements per item is pooled too. ValueError for
    arrays of different item counts, unknown names, or a feature without a finite value.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    if max_features < 1:
        raise ValueError(f"max_features must be >= 1, got {max_features}")
    both = sorted(set(inputs) & set(outputs))
    if both:
        raise ValueError(f"tensor name(s) {', '.join(both)} given as both input and output")
    arrays = {**inputs, **outputs}
    if not arrays:
        raise ValueError("no tensors to profile: expected at least one input or output")
    unknown = sorted(set(class_scores) - set(outputs)) + sorted(set(pooled) - set(arrays))
    if unknown:
        raise ValueError(
            f"unknown tensor name(s) {', '.join(unknown)}; class_scores must name outputs "
            f"({', '.join(outputs) or 'none'}), pooled inputs or outputs"
        )
    items = {name: np.shape(a)[0] if np.ndim(a) else 0 for name, a in arrays.items()}
    if len(set(items.values())) != 1 or min(items.values()) < 1:
        found = ", ".join(f"{name}: {n}" for name, n in items.items())
        raise ValueError(f"expected the same item count N >= 1 for every tensor, got {found}")
    tensors = {
        name: _tensor_profile(
            name, _numeric(name, a), bins, name in class_scores, name in pooled, max_features
        )
        for name, a in arrays.items()
    }
    return DriftProfile(tensors=tensors, reference_items=next(iter(items.values())), bins=bins)


def _tensor_profile(
    name: str, a: np.ndarray, bins: int, classes: bool, pooled: bool, max_features: int
) -> TensorProfile:
    empty = np.zeros(0)
    if classes:
        if a.ndim < 2 or a.shape[-1] < 1:
            raise ValueError(f"class scores '{name}': expected shape (N, ..., C), got {a.shape}")
        provisional = TensorProfile(
            name, CLASSES, (TOP1,), np.zeros((0, 0)), np.ones((1, a.shape[-1])), empty, empty
        )
        counts = count_bins(provisional, a)[0]
        if counts.sum() == 0:
            raise ValueError(f"class scores '{name}': no row of finite scores")
        return TensorProfile(
            name, CLASSES, (TOP1,), np.zeros((0, 0)), _proportions(counts), empty, empty
        )
    elements = math.prod(a.shape[1:])
    if elements == 0:
        raise ValueError(f"tensor '{name}': no elements per item (shape {a.shape})")
    if pooled or elements > max_features:
        features: tuple[str, ...] = (POOLED,)
        x = a.reshape(-1, 1).astype(np.float64)
    else:
        features = tuple(str(i) for i in range(elements))
        x = a.reshape(a.shape[0], elements).astype(np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        x = np.where(finite, x, np.nan)
        empty_features = np.flatnonzero(~finite.any(axis=0))
        if empty_features.size:
            labels = ", ".join(features[i] for i in empty_features[:8])
            raise ValueError(f"tensor '{name}': feature(s) {labels} have no finite value")
        quantile, minimum, maximum = np.nanquantile, np.nanmin, np.nanmax
    else:
        quantile, minimum, maximum = np.quantile, np.min, np.max
    levels = np.arange(1, bins) / bins
    edges = np.maximum.accumulate(quantile(x, levels, axis=0).T, axis=1)
    low, high = minimum(x, axis=0), maximum(x, axis=0)
    provisional = TensorProfile(
        name, BINS, features, edges, np.ones((len(features), bins)), low, high
    )
    counts = count_bins(provisional, x)[0]
    return TensorProfile(name, BINS, features, edges, _proportions(counts), low, high)


# -- the file ---------------------------------------------------------------------------


def _rows(array: np.ndarray, indent: str) -> str:
    if array.size == 0 and array.ndim == 1:
        return "[]"
    if array.ndim == 1:
        return json.dumps([float(v) for v in array], allow_nan=False)
    if array.shape[0] == 0:
        return "[]"
    inner = f",\n{indent}  ".join(_rows(row, indent) for row in array)
    return f"[\n{indent}  {inner}\n{indent}]"


def dumps_profile(profile: DriftProfile) -> str:
    """The JSON text :func:`save_profile` writes (one row of numbers per line)."""
    pad = "      "
    entries = []
    for t in profile.tensors.values():
        fields = [
            f'"name": {json.dumps(t.name)}',
            f'"kind": {json.dumps(t.kind)}',
            f'"features": {json.dumps(list(t.features))}',
            f'"edges": {_rows(t.edges, pad)}',
            f'"expected": {_rows(t.expected, pad)}',
            f'"low": {_rows(t.low, pad)}',
            f'"high": {_rows(t.high, pad)}',
        ]
        entries.append("    {\n" + ",\n".join(f"{pad}{f}" for f in fields) + "\n    }")
    return (
        "{\n"
        f'  "format": {json.dumps(FORMAT)},\n'
        f'  "bins": {profile.bins},\n'
        f'  "reference_items": {profile.reference_items},\n'
        '  "tensors": [\n' + ",\n".join(entries) + "\n  ]\n}\n"
    )


def save_profile(profile: DriftProfile, path: Path) -> None:
    """Write ``profile`` to ``path`` as JSON, atomically (a temporary file, then a rename)."""
    path = Path(path)
    text = dumps_profile(profile)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _Said(str):
    """A description of what was found, shown as it is (not as a JSON value)."""


def _describe(value: object) -> str:
    if isinstance(value, _Said):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value) if value is None or isinstance(value, bool | str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Reader:
    """Checks the parsed JSON, failing with ProfileError "<file>: <where>: expected ..."."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, expected: str, found: object) -> ProfileError:
        return ProfileError(f"{self.path}: {where}: expected {expected}, found {_describe(found)}")

    def integer(self, value: object, where: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(where, f"an integer >= {minimum}", value)
        return value

    def numbers(self, value: object, where: str, length: int | None) -> list[float]:
        what = "a list of numbers" if length is None else f"a list of {length} numbers"
        if not isinstance(value, list) or (length is not None and len(value) != length):
            raise self.fail(where, what, value)
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise self.fail(f"{where}[{i}]", "a number", v)
        return [float(v) for v in value]

    def matrix(self, value: object, where: str, rows: int, columns: int | None) -> np.ndarray:
        if not isinstance(value, list) or len(value) != rows:
            raise self.fail(where, f"a list of {rows} row(s)", value)
        data = [self.numbers(row, f"{where}[{i}]", columns) for i, row in enumerate(value)]
        if columns is None:
            widths = {len(row) for row in data}
            if len(widths) > 1 or widths == {0}:
                raise self.fail(
                    where, "rows of one length >= 1", _Said(f"lengths {sorted(widths)}")
                )
            columns = widths.pop()
        return np.array(data, dtype=np.float64).reshape(rows, columns)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a profile may hold")


def load_profile(path: Path) -> DriftProfile:
    """Read a profile written by :func:`save_profile`; ProfileError naming what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read the drift profile: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ProfileError(f"{path}: expected UTF-8 JSON, found undecodable bytes") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ProfileError(
            f"{path}: expected a JSON drift profile, found invalid JSON: {exc}"
        ) from None
    r = _Reader(path)
    if not isinstance(doc, dict):
        raise r.fail("top level", "an object", doc)
    if doc.get("format") != FORMAT:
        raise r.fail('"format"', json.dumps(FORMAT), doc.get("format"))
    for key in ("bins", "reference_items", "tensors"):
        if key not in doc:
            raise r.fail("top level", f'a "{key}" field', _Said(f"only {', '.join(doc)}"))
    bins = r.integer(doc["bins"], '"bins"', 2)
    reference_items = r.integer(doc["reference_items"], '"reference_items"', 1)
    entries = doc["tensors"]
    if not isinstance(entries, list) or not entries:
        raise r.fail('"tensors"', "a non-empty list", entries)
    tensors: dict[str, TensorProfile] = {}
    for i, entry in enumerate(entries):
        tensor = _load_tensor(r, entry, f"tensors[{i}]", bins)
        if tensor.name in tensors:
            raise r.fail(f"tensors[{i}].name", "a name not used before", tensor.name)
        tensors[tensor.name] = tensor
    return DriftProfile(tensors=tensors, reference_items=reference_items, bins=bins)


def _load_tensor(r: _Reader, entry: object, where: str, bins: int) -> TensorProfile:
    if not isinstance(entry, dict):
        raise r.fail(where, "an object", entry)
    for key in ("name", "kind", "features", "edges", "expected", "low", "high"):
        if key not in entry:
            raise r.fail(where, f'a "{key}" field', _Said(f"only {', '.join(entry) or 'nothing'}"))
    name, kind, features = entry["name"], entry["kind"], entry["features"]
    if not isinstance(name, str) or not name:
        raise r.fail(f"{where}.name", "a non-empty string", name)
    where = f"{where} ('{name}')"
    if kind not in (BINS, CLASSES):
        raise r.fail(f"{where}.kind", f'"{BINS}" or "{CLASSES}"', kind)
    if (
        not isinstance(features, list)
        or not features
        or not all(isinstance(f, str) for f in features)
        or len(set(features)) != len(features)
    ):
        raise r.fail(f"{where}.features", "a non-empty list of distinct strings", features)
    count = len(features)
    if kind == CLASSES:
        if features != [TOP1]:
            raise r.fail(f"{where}.features", f'["{TOP1}"] for classes', features)
        for key in ("edges", "low", "high"):
            if entry[key] != []:
                raise r.fail(f"{where}.{key}", "[] for classes", entry[key])
        expected = r.matrix(entry["expected"], f"{where}.expected", 1, None)
        edges, low, high = np.zeros((0, 0)), np.zeros(0), np.zeros(0)
    else:
        edges = r.matrix(entry["edges"], f"{where}.edges", count, bins - 1)
        expected = r.matrix(entry["expected"], f"{where}.expected", count, bins)
        low = np.array(r.numbers(entry["low"], f"{where}.low", count))
        high = np.array(r.numbers(entry["high"], f"{where}.high", count))
        bad = np.flatnonzero((np.diff(edges, axis=1) < 0).any(axis=1))
        if bad.size:
            raise r.fail(f"{where}.edges[{bad[0]}]", "non-decreasing edges", list(edges[bad[0]]))
        bad = np.flatnonzero(low > high)
        if bad.size:
            raise r.fail(f"{where}.low[{bad[0]}]", f"<= high ({high[bad[0]]!r})", low[bad[0]])
    if not np.isfinite(edges).all() or not np.isfinite(low).all() or not np.isfinite(high).all():
        raise r.fail(where, "finite edges, low and high", _Said("a non-finite number"))
    negative = np.argwhere(expected < 0)
    if negative.size:
        row, column = negative[0]
        raise r.fail(
            f"{where}.expected[{row}][{column}]", "a proportion >= 0", expected[row, column]
        )
    sums = expected.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOLERANCE)
    if off.size:
        raise r.fail(
            f"{where}.expected[{off[0]}]",
            "proportions summing to 1",
            _Said(f"sum {float(sums[off[0]])!r}"),
        )
    return TensorProfile(name, kind, tuple(features), edges, expected, low, high)


# -- against the model ------------------------------------------------------------------


def check_profile(profile: DriftProfile, spec: ModelSpec) -> list[str]:
    """What keeps ``profile`` from fitting the model ``spec`` (empty when it fits).

    Every profiled tensor must be an input or output of the model, of a datatype with
    numeric values (not BYTES or BF16); a per-feature profile needs fixed dims whose
    product is its feature count; a classes profile needs a fixed last dim equal to C.
    Dims are the config's (batch dimension excluded).
    """
    problems = []
    tensors = {**spec.output_map, **spec.input_map}
    for name, t in profile.tensors.items():
        found = tensors.get(name)
        if found is None:
            inputs = ", ".join(spec.input_map) or "none"
            outputs = ", ".join(spec.output_map) or "none"
            problems.append(
                f"tensor '{name}': the model has no input or output of that name "
                f"(inputs: {inputs}; outputs: {outputs})"
            )
            continue
        dims = list(found.dims)
        if found.datatype in _UNPROFILABLE:
            problems.append(f"tensor '{name}': {found.datatype} values cannot be profiled")
        elif t.kind == CLASSES:
            if not dims or dims[-1] != t.classes:
                problems.append(
                    f"tensor '{name}': expected dims ending in {t.classes} (the profile's "
                    f"classes), got {dims}"
                )
        elif not t.pooled:
            if -1 in dims:
                problems.append(
                    f"tensor '{name}': a profile of {len(t.features)} features needs fixed dims, "
                    f"got {dims}; expected a pooled profile ('{POOLED}') for a variable shape"
                )
            elif math.prod(dims) != len(t.features):
                problems.append(
                    f"tensor '{name}': expected {math.prod(dims)} features (dims {dims}), "
                    f"got {len(t.features)}"
                )
    return problems
