"""CSV / TSV readers: generic, Criteo DAC and Avazu."""

import csv
import re

import tensorflow as tf

from tf_fm.data import text

COLUMN_TYPES = ("string", "float")

CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL)

AVAZU_COLUMNS = (
    "id",
    "click",
    "hour",
    "C1",
    "banner_pos",
    "site_id",
    "site_domain",
    "site_category",
    "app_id",
    "app_domain",
    "app_category",
    "device_id",
    "device_ip",
    "device_model",
    "device_type",
    "device_conn_type",
    *(f"C{i}" for i in range(14, 22)),
)

_DELIMITER_NAMES = {"\t": "TAB", ",": "comma", ";": "semicolon", " ": "space", "|": "pipe"}
_NUMBER_PY = re.compile(rf"[ ]*{text.NUMBER}[ ]*")


def infer_column_types(rows, column_names, na_values=()):
    """Types of columns from sample rows: `"float"` when every non-empty value is a number.

    A column with no non-empty value in the sample is `"string"`. Integer
    columns are numbers too: declare id-like integer columns (user ids,
    already integer-encoded categories) as `"string"` yourself.

    Args:
        rows: list of lists of str (rows with another field count are ignored).
        column_names: list of str.
        na_values: values that mean missing, ignored like empty ones.

    Returns:
        dict from column name to `"float"` or `"string"`.
    """
    missing = {"", *na_values}
    numeric = dict.fromkeys(column_names, True)
    seen = dict.fromkeys(column_names, False)
    for row in rows:
        if len(row) != len(column_names):
            continue
        for name, value in zip(column_names, row, strict=True):
            if value in missing:
                continue
            seen[name] = True
            if numeric[name] and not _NUMBER_PY.fullmatch(value):
                numeric[name] = False
    return {n: "float" if numeric[n] and seen[n] else "string" for n in column_names}


def _delimiter_name(delimiter):
    return _DELIMITER_NAMES.get(delimiter, f"`{delimiter}`")


class _DelimitedParser:
    """Parses batches of delimited lines into (features, label) with row checks.

    Fast path: one regular expression per line checks the field count, that
    numeric cells are numbers and that there is no quote; when every line of
    the batch matches, the batch is split at once. Otherwise (a quote, a bad
    line, or bytes that are not UTF-8) the batch takes the exact path: field
    counts from a byte-level split, numeric cells checked one by one, and
    `tf.io.decode_csv` for the lines that have quotes.
    """

    def __init__(self, column_names, column_types, label, features, delimiter, quoting, na_values):
        self.names = list(column_names)
        self.ncols = len(self.names)
        self.delimiter = delimiter
        self.quoting = quoting
        self.na_values = [v for v in na_values if v != ""]
        position = {name: i for i, name in enumerate(self.names)}
        self.label_pos = None if label is None else position[label]
        self.features = list(features)
        self.types = {name: column_types[name] for name in self.features}
        self.num_pos = [position[n] for n in self.features if self.types[n] == "float"]
        self.num_index = {position[n]: k for k, n in enumerate(self.features_of("float"))}
        self.string_pos = {position[n] for n in self.features if self.types[n] == "string"}
        self.checked = sorted(self.num_pos + ([] if label is None else [self.label_pos]))
        self.checked_names = [
            "label" if p == self.label_pos else f"column `{self.names[p]}` =" for p in self.checked
        ]
        self.dummy = delimiter * (self.ncols - 1)

        d = f"\\x{ord(delimiter):02x}"
        pad = "" if delimiter == " " else "[ ]*"
        na = "".join("|" + re.escape(v) for v in self.na_values)
        self.num_cell = f"(?:{pad}(?:{text.NUMBER}){pad}{na})?"
        self.label_cell = f"{pad}(?:{text.NUMBER}){pad}"
        string_cell = f'[^{d}"]*' if quoting else f"[^{d}]*"
        num_set = set(self.num_pos)
        cells = []
        for i in range(self.ncols):
            if i == self.label_pos:
                cells.append(self.label_cell)
            elif i in num_set:
                cells.append(self.num_cell)
            else:
                cells.append(string_cell)
        self.fast_pattern = d.join(cells)
        quoted_field = '"(?:[^"]|"")*"'
        field = f'(?:[^{d}"]*|{quoted_field})'
        self.quoted_pattern = f"{field}(?:{d}{field})*"
        self.quoted_field = quoted_field

    def features_of(self, kind):
        return [n for n in self.features if self.types[n] == kind]

    def _fast(self, lines):
        n = tf.shape(lines)[0]
        cells = tf.reshape(tf.strings.split(lines, self.delimiter).flat_values, [-1, self.ncols])
        count = tf.fill([n], tf.constant(self.ncols, tf.int64))
        return cells, count, tf.ones([n], tf.bool), tf.ones([n, len(self.checked)], tf.bool)

    def _exact(self, lines):
        n = tf.shape(lines)[0]
        if self.quoting:
            has_quote = tf.strings.split(lines, '"').row_lengths() > 1
            plain = tf.where(has_quote, self.dummy, lines)
        else:
            plain = lines
        parts = tf.strings.split(plain, self.delimiter)
        count = parts.row_lengths()
        cells = parts.to_tensor("", shape=[None, self.ncols])
        structure = tf.ones([n], tf.bool)
        if self.quoting:
            at = tf.where(has_quote)
            quoted_lines = tf.gather_nd(lines, at)
            quoted_ok = tf.strings.regex_full_match(quoted_lines, self.quoted_pattern)
            outside = tf.strings.regex_replace(quoted_lines, self.quoted_field, "")
            quoted_count = tf.strings.split(outside, self.delimiter).row_lengths()
            decodable = quoted_ok & (quoted_count == self.ncols)
            decoded = tf.io.decode_csv(
                tf.where(decodable, quoted_lines, self.dummy),
                record_defaults=[[""]] * self.ncols,
                field_delim=self.delimiter,
                use_quote_delim=True,
            )
            cells = tf.tensor_scatter_nd_update(cells, at, tf.stack(decoded, axis=1))
            count = tf.tensor_scatter_nd_update(count, at, quoted_count)
            structure = tf.tensor_scatter_nd_update(structure, at, quoted_ok)
        checks = []
        for p in self.checked:
            pattern = self.label_cell if p == self.label_pos else self.num_cell
            checks.append(tf.strings.regex_full_match(cells[:, p], pattern))
        cell_ok = tf.stack(checks, axis=1) if checks else tf.ones([n, 0], tf.bool)
        return cells, count, structure, cell_ok

    def parse(self, lines, task):
        fast = tf.reduce_all(tf.strings.regex_full_match(lines, self.fast_pattern))
        cells, count, structure, cell_ok = tf.cond(
            fast, lambda: self._fast(lines), lambda: self._exact(lines)
        )
        row_ok = (count == self.ncols) & structure & tf.reduce_all(cell_ok, axis=1)

        numbers = tf.zeros([tf.shape(cells)[0], 0])
        if self.num_pos:
            numbers = tf.gather(cells, self.num_pos, axis=1)
            missing = numbers == ""
            for value in self.na_values:
                missing = missing | (numbers == value)
            numbers = tf.strings.to_number(
                tf.where(missing | tf.logical_not(row_ok)[:, None], "nan", numbers), tf.float32
            )
        ok = row_ok
        if self.label_pos is not None:
            label, label_ok = text.label_values(cells[:, self.label_pos], row_ok, task)
            ok = row_ok & label_ok
            rows = (cells, numbers, label)
        else:
            rows = (cells, numbers)

        def explain(bad):
            return self.reasons(
                tf.gather(cells, bad),
                tf.gather(count, bad),
                tf.gather(structure, bad),
                tf.logical_not(tf.gather(cell_ok, bad)),
                task,
            )

        return rows, ok, explain, self.finish

    def reasons(self, cells, count, structure, bad_checks, task):
        """What is wrong with each of these bad rows (`bad_checks`: their failed cell checks)."""
        m = tf.size(count)
        if self.checked:
            first = tf.argmax(tf.cast(bad_checks, tf.int32), axis=1, output_type=tf.int32)
            column = tf.gather(tf.constant(self.checked, tf.int32), first)
            value = tf.gather_nd(cells, tf.stack([tf.range(m), column], axis=1))
            name = tf.gather(tf.constant(self.checked_names), first)
            cell_reason = tf.strings.join([name, " ", text.quoted(value), " is not a number"])
        else:
            cell_reason = tf.fill([m], "")
        if self.label_pos is not None:
            other = text.label_reason(cells[:, self.label_pos], task)
        else:
            other = tf.fill([m], "bad line")
        expected = f"expected {self.ncols} {_delimiter_name(self.delimiter)}-separated fields"
        count_reason = tf.strings.join([expected, ", found ", tf.strings.as_string(count)])
        structure_reason = (
            "malformed quoting (a quoted field must end with a quote, double the "
            "quotes inside it, and be valid UTF-8)"
        )
        return text.first_reason(
            [
                (tf.logical_not(structure), structure_reason),
                (count != self.ncols, count_reason),
                (tf.reduce_any(bad_checks, axis=1), cell_reason),
            ],
            other,
        )

    def finish(self, rows):
        """The per-column outputs from the (checked) cell and number matrices."""
        cells, numbers = rows[:2]
        wanted = [p for p in range(self.ncols) if p in self.string_pos]
        if len(wanted) == self.ncols:
            columns = tf.unstack(cells, num=self.ncols, axis=1)
        else:
            # Copy only the string columns (one slice each), not the whole matrix.
            columns = {p: cells[:, p] for p in wanted}
        values = tf.unstack(numbers, num=len(self.num_pos), axis=1) if self.num_pos else []
        features = {}
        position = {name: i for i, name in enumerate(self.names)}
        for name in self.features:
            p = position[name]
            if self.types[name] == "float":
                features[name] = values[self.num_index[p]]
            else:
                column = columns[p]
                for value in self.na_values:
                    column = tf.where(column == value, "", column)
                features[name] = column
        return (features, rows[2]) if len(rows) == 3 else features


def read_csv(
    paths,
    *,
    label,
    column_names=None,
    header=None,
    delimiter=",",
    column_types=None,
    columns=None,
    drop_columns=(),
    na_values=(),
    quoting=True,
    infer_rows=1000,
    task="binary",
    batch_size=1024,
    shuffle_buffer=None,
    seed=None,
    drop_remainder=False,
    on_error="raise",
    report=None,
    deterministic=None,
    cycle_length=None,
    compression_type=None,
    prefetch=True,
):
    """Reads CSV / TSV files into a `tf.data.Dataset` of `(features, label)` batches.

    Streams the files (never whole in memory), parses whole batches at once
    in parallel, and checks every line. `features` maps each feature column
    to a `(batch,)` tensor: `tf.string` raw values for string columns (empty
    string when missing; a multi-valued cell such as `"Action|Comedy"` stays
    one string), `tf.float32` for float columns (NaN when the cell is empty
    or in `na_values`; "nan" and "inf" are kept as NaN / inf). The label is
    `tf.float32` `(batch,)`.

    A line is malformed when its field count is wrong, a float column or the
    label is not a number (an empty float cell is a missing value, not an
    error), the label is not allowed by `task`, or its quoting is broken.
    With `on_error="raise"` iteration stops with a `tf.errors.InvalidArgumentError`
    whose message reads `Malformed input at <path>:<line>: <what is wrong>`
    (line numbers are 1-based and count the header). With `on_error="skip"`
    such lines are dropped and recorded in `report` (see `ReadReport`),
    which is complete once the dataset has been iterated.

    Blank lines are ignored; CRLF line endings, a missing final newline and a
    UTF-8 BOM are handled; with a header, the first line of every file is
    skipped and all files must have the same header.

    Args:
        paths: a file, a glob pattern, or a list of them (`.gz` files are read
            as GZIP).
        label: str or None. The label column; None yields features only.
        column_names: list of str, the names of all columns in file order.
            Defaults to the header's names.
        header: bool. Whether each file starts with a header line. Defaults
            to True when `column_names` is None, else False.
        delimiter: str. One character, e.g. `","` or `"\\t"`. Defaults to `","`.
        column_types: dict from column name to `"string"` or `"float"`.
            Columns not given are inferred from the first `infer_rows` rows of
            the first file (`"float"` when every non-empty value is a number).
        columns: list of str. The feature columns, in output order. Defaults
            to every column except the label and `drop_columns`.
        drop_columns: columns not to return. Defaults to none.
        na_values: extra strings that mean missing (NaN in float columns, ""
            in string columns), e.g. `("NA",)`. Defaults to none.
        quoting: bool. Whether `"` quotes fields (CSV style; `""` is a quote
            inside a quoted field; a quoted field cannot span lines). Defaults
            to True.
        infer_rows: int. Rows sampled for type inference. Defaults to 1000.
        task: `"binary"` (labels 0/1, or -1/+1 mapped to 0/1) or
            `"regression"` (any finite number). Defaults to `"binary"`.
        batch_size: int. Rows per batch. Defaults to 1024. With
            `on_error="skip"`, a batch that lost lines is that much shorter
            (with `drop_remainder=True` batches are refilled to exactly
            `batch_size`).
        shuffle_buffer: int or None. When set, the file order is shuffled
            and rows are shuffled within consecutive windows of this many
            rows (a full random permutation of each window, new every epoch);
            as with `Dataset.shuffle`, a larger window mixes more. Defaults
            to None (file order).
        seed: int or None. Seed of the shuffling. Defaults to None.
        drop_remainder: bool. Drop the last, smaller batch. Defaults to False.
        on_error: `"raise"` or `"skip"`. Defaults to `"raise"`.
        report: `ReadReport` that receives the skipped lines when
            `on_error="skip"`. Defaults to a new one (the skipped lines are
            then only logged).
        deterministic: bool or None. Whether parallel reading and parsing
            keep the order (passed to tf.data). Defaults to tf.data's default
            (deterministic).
        cycle_length: int. Files read at the same time. Defaults to
            `min(4, number of files)`; 1 reads the files one after another.
        compression_type: `""`, `"GZIP"` or `"ZLIB"`. Defaults to GZIP when
            every file ends in `.gz`.
        prefetch: bool. Prefetch batches (`AUTOTUNE`). Defaults to True.

    Returns:
        `tf.data.Dataset` of `(features, label)` batches, or of `features`
        when `label` is None.

    Raises:
        FileNotFoundError: a file is missing or a pattern matches nothing.
        ValueError: bad arguments, files with different headers, unknown
            column names.
    """
    options = text.PipelineOptions.of(locals())
    options.check(task)
    _check_delimiter(delimiter)
    files = text.resolve_paths(paths)
    compression = text.compression_of(files, compression_type)
    if header is None:
        header = column_names is None
    dialect = {"delimiter": delimiter, "quoting": csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE}
    header_names = _header_names(files, compression, dialect) if header else None
    column_names = _column_names(column_names, header_names)
    columns = _feature_columns(column_names, label, columns, drop_columns, column_types)
    types = _checked_types(column_types)
    missing = [c for c in columns if c not in types]
    if missing:
        sample = text.first_lines(files[0], infer_rows + int(header), compression)[int(header) :]
        rows = list(csv.reader(sample, **dialect))
        inferred = infer_column_types(rows, column_names, na_values)
        types.update({c: inferred[c] for c in missing})

    parser = _DelimitedParser(
        column_names, types, label, columns, delimiter, quoting, tuple(na_values)
    )
    return text.text_dataset(
        files,
        lambda lines: parser.parse(lines, task),
        skip_header=header,
        compression_type=compression,
        options=options,
    )


def _check_delimiter(delimiter):
    if not isinstance(delimiter, str) or len(delimiter) != 1 or ord(delimiter) > 127:
        raise ValueError(f"`delimiter` must be one ASCII character. Received: {delimiter!r}")
    if delimiter == '"':
        raise ValueError("`delimiter` cannot be a double quote.")


def _header_names(files, compression, dialect):
    """The names in the files' header line (all files must have the same); None if all are empty."""
    first_header = None
    for path in files:
        lines = text.first_lines(path, 1, compression)
        if not lines:
            continue
        if first_header is None:
            first_header = (path, lines[0])
        elif lines[0] != first_header[1]:
            raise ValueError(
                f"{path}: header {lines[0]!r} differs from the header of "
                f"{first_header[0]}: {first_header[1]!r}."
            )
    if first_header is None:
        return None
    return next(csv.reader([first_header[1]], **dialect))


def _column_names(column_names, header_names):
    """The names of all columns: the given ones, checked against the header, or the header's."""
    if column_names is None:
        if header_names is None:
            raise ValueError("No column names: pass `column_names` or read files with a header.")
        column_names = header_names
    column_names = list(column_names)
    if len(set(column_names)) != len(column_names):
        raise ValueError(f"Column names must be unique. Received: {column_names}")
    if header_names is not None and len(header_names) != len(column_names):
        raise ValueError(
            f"The header has {len(header_names)} columns but {len(column_names)} column "
            f"names were given: {header_names} vs {column_names}."
        )
    return column_names


def _feature_columns(column_names, label, columns, drop_columns, column_types):
    """The feature columns (`columns`, or all but the label and `drop_columns`), checked."""
    known = set(column_names)
    for name in [label] if label is not None else []:
        if name not in known:
            raise ValueError(f"Label column {name!r} is not a column: {column_names}.")
    drop = set(drop_columns)
    if columns is None:
        columns = [c for c in column_names if c != label and c not in drop]
    columns = list(columns)
    unknown = [c for c in [*columns, *drop, *(column_types or {})] if c not in known]
    if unknown:
        raise ValueError(f"Unknown columns {unknown}; the columns are {column_names}.")
    if label in columns:
        raise ValueError(f"The label column {label!r} cannot also be a feature column.")
    return columns


def _checked_types(column_types):
    """A copy of the declared column types, each checked to be one of `COLUMN_TYPES`."""
    types = dict(column_types or {})
    bad_types = {k: v for k, v in types.items() if v not in COLUMN_TYPES}
    if bad_types:
        raise ValueError(f"Column types must be one of {COLUMN_TYPES}. Received: {bad_types}")
    return types


def read_criteo(paths, *, with_label=True, **kwargs):
    """Reads raw Criteo DAC files (Kaggle `train.txt` format).

    TAB separated, no header: `label, I1..I13, C1..C26`, any field may be
    empty. `I*` become float32 (NaN when empty), `C*` stay raw strings (the
    hashed hex values, "" when empty).

    Args:
        paths: a file, a glob pattern, or a list of them.
        with_label: bool. False for the unlabeled test files
            (`I1..I13, C1..C26` only). Defaults to True.
        **kwargs: any other argument of `read_csv` (`batch_size`,
            `shuffle_buffer`, `seed`, `on_error`, `report`, `columns`, ...).

    Returns:
        `tf.data.Dataset` of `(features, label)` batches (`features` only
        when `with_label=False`).
    """
    names = CRITEO_COLUMNS if with_label else CRITEO_COLUMNS[1:]
    types = {
        **dict.fromkeys(CRITEO_NUMERIC, "float"),
        **dict.fromkeys(CRITEO_CATEGORICAL, "string"),
    }
    options = {"delimiter": "\t", "quoting": False, "header": False, **kwargs}
    return read_csv(
        paths,
        label="label" if with_label else None,
        column_names=list(names),
        column_types=types,
        **options,
    )


def read_avazu(paths, *, header=True, drop_columns=("id",), **kwargs):
    """Reads Avazu CTR files (`id, click, hour, C1, banner_pos, ...`).

    Comma separated; label `click`; every other column is a categorical
    string (`hour` stays the raw `YYMMDDHH` string). The Kaggle files have a
    header; files cut from them without one need `header=False` (the
    standard 24 column names are then used).

    Args:
        paths: a file, a glob pattern, or a list of them.
        header: bool. Whether each file starts with the header line.
            Defaults to True.
        drop_columns: columns not returned. Defaults to `("id",)`.
        **kwargs: any other argument of `read_csv`.

    Returns:
        `tf.data.Dataset` of `(features, label)` batches.
    """
    kwargs.setdefault("column_names", None if header else list(AVAZU_COLUMNS))
    names = kwargs["column_names"] or list(AVAZU_COLUMNS)
    kwargs.setdefault("column_types", {n: "string" for n in names if n != "click"})
    return read_csv(paths, label="click", header=header, drop_columns=drop_columns, **kwargs)
