"""Read a network's layers from a CSV file (one layer per row).

Header (order free, each column once, extra columns ignored -- the calibration
tool appends measured columns -- unless a name is a near miss of a layer column
or of measured_cycles/measured_seconds/measured_utilization, such as ``strides``
or ``measured_utilisation``, which is an error rather than a silently defaulted
field):

    name,kind,in_h,in_w,in_channels,out_channels,kernel_h,kernel_w,stride,padding,dilation,groups,batch

kind is ``conv`` or ``linear`` (case-insensitive).  Required in the header:
name, kind, in_channels, out_channels; conv rows also need in_h, in_w,
kernel_h, kernel_w.  stride, padding, dilation, groups and batch may be absent
or empty (defaults 1, 0, 1, 1 and ``default_batch``), as may ``extra_padding``
(default 0: rows/columns padded at the bottom/right beyond ``padding``).  For linear rows
in_channels/out_channels are the in/out features and in_h, in_w, kernel_h,
kernel_w may be empty or 1.  Blank lines and lines starting with ``#`` are
skipped.  Every problem raises ``HardwareConfigError`` with one line
``FILE:LINE: ...``, LINE being the first line of the row (a quoted cell may
span lines).
"""
from __future__ import annotations

import csv
import difflib
import numbers
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from .accelerator import HardwareConfigError
from .layers import ConvLayer, Layer, LinearLayer
from .yamlio import short_repr

ALWAYS = ("name", "kind", "in_channels", "out_channels")
CONV_ONLY = ("in_h", "in_w", "kernel_h", "kernel_w")
DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "extra_padding": 0}
KINDS = ("conv", "linear")
MAX_INT = 2**31 - 1   # no layer dimension comes near; past it the cycle counts overflow float arithmetic


def whole_number(text: str) -> int:
    """The integer a CSV cell holds: digits exactly (a float would round past 2**53), and 8.0 or
    1e3 through float; ValueError for anything else (3.5, '', 'x', 1e400)."""
    try:
        value = int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else float(text)
        if value != int(value):
            raise ValueError(f"not a whole number: {text!r}")
        return int(value)
    except OverflowError:
        raise ValueError(f"not a finite number: {text!r}") from None


class _Row:
    """One data row with its location, for error messages."""

    def __init__(self, where: str, values: Dict[str, str], header: List[str]):
        self.where, self.values, self.header = where, values, header

    def fail(self, message: str):
        raise HardwareConfigError(f"{self.where}: {message}")

    def raw(self, column: str) -> str:
        return (self.values.get(column) or "").strip()

    def integer(self, column: str, minimum: int = 1, default: Optional[int] = None) -> int:
        """The integer in ``column`` (>= minimum); ``default`` when absent or empty."""
        if column not in self.header and default is None:
            self.fail(f"column '{column}' is required for this row but missing from the header")
        text = self.raw(column)
        if text == "":
            if default is None:
                self.fail(f"column '{column}' expected an integer >= {minimum}, got ''")
            return default
        try:
            value = whole_number(text)
        except ValueError:
            self.fail(f"column '{column}' expected an integer >= {minimum}, got {short_repr(text)}")
        if value < minimum:
            self.fail(f"column '{column}' expected an integer >= {minimum}, got {short_repr(text)}")
        if value > MAX_INT:
            self.fail(f"column '{column}' expected an integer <= {MAX_INT}, got {short_repr(text)}")
        return value


def _parse_row(row: _Row, default_batch: int) -> Layer:
    name = row.raw("name")
    if not name:
        row.fail("column 'name' expected a layer name, got ''")
    kind = row.raw("kind").lower()
    if kind not in KINDS:
        row.fail(f"column 'kind' expected one of {', '.join(KINDS)}, got {short_repr(row.raw('kind'))}")
    cin = row.integer("in_channels")
    cout = row.integer("out_channels")
    batch = row.integer("batch", default=default_batch)
    try:
        if kind == "linear":
            for column in CONV_ONLY + tuple(DEFAULTS):
                text = row.raw(column)
                expected = str(DEFAULTS.get(column, 1))
                if text and text != expected:
                    row.integer(column, minimum=0)   # reports non-integers first
                    if int(float(text)) != int(expected):
                        row.fail(f"column '{column}' expected empty or {expected} for a linear layer, "
                                 f"got {short_repr(text)}")
            return LinearLayer(name, in_features=cin, out_features=cout, batch=batch)
        fields = {c: row.integer(c) for c in CONV_ONLY}
        fields.update({c: row.integer(c, minimum=0 if "padding" in c else 1, default=d)
                       for c, d in DEFAULTS.items()})
        return ConvLayer(name, in_channels=cin, out_channels=cout, batch=batch, **fields)
    except HardwareConfigError:
        raise
    except ValueError as exc:   # the layer's own consistency checks (groups, kernel fit)
        row.fail(str(exc))


COLUMNS = ALWAYS + CONV_ONLY + tuple(DEFAULTS) + ("batch",)
# the columns hwmodels.references reads from a measured CSV: a near miss of one is refused as well
MEASURED_COLUMNS = ("measured_cycles", "measured_seconds", "measured_utilization")
# other tools' names for a layer column, too far off for the near-miss check (batch_size is 0.67
# like batch): refused with the column meant, not ignored
# (unless the header also has the column meant: then it is an extra column like any other)
ALIASES = {"batch_size": "batch", "bs": "batch", "pad": "padding", "pads": "padding", "group": "groups",
           "dilations": "dilation", "dil": "dilation", "kernel": "kernel_h", "kernel_size": "kernel_h",
           "cin": "in_channels", "cout": "out_channels", "c_in": "in_channels", "c_out": "out_channels",
           # Keras / ONNX / PyTorch spellings
           "dilation_rate": "dilation", "num_groups": "groups", "groups_count": "groups", "pad_h": "padding",
           "pad_w": "padding", "padding_size": "padding", "stride_h": "stride", "stride_w": "stride",
           "kernel_height": "kernel_h", "kernel_width": "kernel_w", "filters": "out_channels",
           "in_features": "in_channels", "out_features": "out_channels",
           "n": "batch", "stride_size": "stride", "pad_size": "padding"}


def _squeezed(name: str) -> str:
    """A column name without case, spaces, '_' or '-': 'Batch Size', 'batchsize' and 'batch-size'
    all read as one."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


_SQUEEZED_ALIASES = {_squeezed(alias): column for alias, column in ALIASES.items()}


def _refuse_near_misses(header: List[str], where: str) -> None:
    """Extra columns are ignored, so a misspelt optional column (``strides``, ``measured_utilisation``)
    would silently take its default; refuse an unknown column that is one or two letters off a layer
    column or a measured column, and a column named twice (one of the two would be ignored)."""
    known = COLUMNS + MEASURED_COLUMNS
    for index, column in enumerate(header):
        if column in header[:index]:
            raise HardwareConfigError(f"{where}: column '{column}' appears twice in the header "
                                      f"(expected each column once)")
        if column in known:
            continue
        squeezed = _squeezed(column)
        alias = _SQUEEZED_ALIASES.get(squeezed)
        alike = [k for k in known if _squeezed(k) == squeezed]   # in-channels, Out Channels
        if alias or alike:
            meant = alike[0] if alike else alias
            close = [] if meant in header else [meant]
        else:
            close = difflib.get_close_matches(column, known, n=1, cutoff=0.8)
            close = [] if close and close[0] in header else close   # measured_cycles_std beside measured_cycles
        if close:
            kind = "measured" if close[0] in MEASURED_COLUMNS else "layer"
            names = MEASURED_COLUMNS if kind == "measured" else COLUMNS
            raise HardwareConfigError(f"{where}: unknown column '{column}' (did you mean '{close[0]}'? "
                                      f"{kind} columns: {','.join(names)})")


@dataclass(frozen=True)
class LayerRow:
    """A parsed data row: its layer, its location ``FILE:LINE`` and its raw cells (stripped, keyed by
    the lower-cased header), so callers that read extra columns keep row and layer together."""

    layer: Layer
    where: str
    values: Dict[str, str]


@dataclass(frozen=True)
class LayerTable:
    """A layer CSV: its header (lower-cased), where the header is (``FILE:LINE``) and its data rows."""

    header: List[str]
    header_where: str
    rows: List[LayerRow]


def _undecodable_line(path) -> int:
    """The line of the first byte of ``path`` that is not UTF-8 (the text reader decodes ahead
    in chunks, so its own line count is not where the bad byte is)."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        raw.decode("utf-8")   # a BOM is valid UTF-8 and holds no newline
    except UnicodeDecodeError as exc:
        return raw[:exc.start].count(b"\n") + 1
    return 1


def read_layer_table(path: Union[str, os.PathLike], default_batch: int = 1) -> LayerTable:
    """Every data row of ``path`` in file order (blank and ``#`` lines skipped); raises
    HardwareConfigError on any bad row."""
    if isinstance(default_batch, bool) or not isinstance(default_batch, numbers.Integral) or default_batch < 1:
        raise HardwareConfigError(f"{path}: default batch must be an integer >= 1, got {default_batch!r}")
    try:
        handle = open(path, newline="", encoding="utf-8-sig")   # tolerate a spreadsheet BOM
    except OSError as exc:
        raise HardwareConfigError(f"{path}: cannot read layer CSV ({exc.strerror or exc})") from None
    # (first line, cells) of every record; a quoted cell may span lines, so a record's line is
    # counted by the reader (line_num: lines read so far), not by splitting the file into lines
    numbered, comments = [], []
    with handle:
        reader = csv.reader(handle, strict=True)   # else an unterminated quote swallows the rest of the file
        first = 1
        try:
            for values in reader:
                line_no, first = first, reader.line_num + 1
                if not any(v.strip() for v in values):   # blank line, or a spreadsheet's ",,,," row
                    continue
                if values[0].lstrip().startswith("#"):
                    comments.append((line_no, values))
                    continue
                numbered.append((line_no, values))
        except UnicodeDecodeError as exc:
            raise HardwareConfigError(f"{path}:{_undecodable_line(path)}: not a UTF-8 text CSV "
                                      f"({exc.reason})") from None
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise HardwareConfigError(f"{path}:{first}: a quoted cell that starts in this record is never "
                                          f"closed (a stray '\"'?)") from None
            raise HardwareConfigError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    if not numbered:
        raise HardwareConfigError(f"{path}:1: empty layer CSV (expected a header row: "
                                  f"{','.join(ALWAYS + CONV_ONLY + tuple(DEFAULTS))},batch)")
    rows = [values for _, values in numbered]
    header_line = numbered[0][0]
    header = [h.strip().lower() for h in rows[0]]
    while header and not header[-1]:   # a spreadsheet's empty trailing header cells
        header.pop()
    for column in ALWAYS:
        if column not in header:
            data_first = not set(header) & set(COLUMNS)   # the first row read is data, not a header
            for line_no, values in comments if data_first else ():   # numpy.savetxt's '# name,kind,...'
                cells = {v.strip().lstrip("#").strip().lower() for v in values}
                if set(ALWAYS) <= cells:
                    raise HardwareConfigError(
                        f"{path}:{line_no}: this looks like the header, but a line starting with '#' is a "
                        f"comment (remove the '#' or rename that column)")
            raise HardwareConfigError(
                f"{path}:{header_line}: missing required column '{column}' in the header "
                f"(got {','.join(header)})")
    _refuse_near_misses(header, f"{path}:{header_line}")
    out: List[LayerRow] = []
    for (line_no, _), values in zip(numbered[1:], rows[1:]):
        where = f"{path}:{line_no}"
        if len(values) > len(header) and not any(v.strip() for v in values[len(header):]):
            values = values[:len(header)]   # empty cells under the header's empty trailing ones
        if len(values) != len(header):
            # a short row would shift its values into the wrong columns (a dropped padding made
            # the measured cycles the padding), so it is refused like a long one
            raise HardwareConfigError(f"{where}: {len(values)} fields but the header has {len(header)} "
                                      f"(an empty cell is written as nothing between two commas)")
        cells = {h: values[i].strip() for i, h in enumerate(header)}
        out.append(LayerRow(_parse_row(_Row(where, cells, header), int(default_batch)), where, cells))
    if not out:
        raise HardwareConfigError(f"{path}:{header_line}: no layer rows after the header")
    return LayerTable(header, f"{path}:{header_line}", out)


def read_layers_csv(path: Union[str, os.PathLike], default_batch: int = 1) -> List[Layer]:
    """Layers of ``path`` in file order; raises HardwareConfigError on any bad row."""
    return [row.layer for row in read_layer_table(path, default_batch).rows]
