"""libSVM / libFM and libFFM readers: rows that already are sparse feature vectors.

A libSVM/libFM line is `label idx:val idx:val ...`, a libFFM line
`label field:idx:val ...`. Such a row is one weighted multi-valued field of
the FM: the readers yield `"<name>"` int64 ids `(batch, max_length)` padded
with -1 and `"<name>_weights"` float32 values (0 at padding), what
`MultiValuedFeature(name, encoding="integer", num_ids=..., max_length=...,
weighted=True)` declares (see `libsvm_feature`). libFFM adds
`"<name>_fields"` int64, the field of each entry (-1 at padding). Indices
are kept as written (0- or 1-based).
"""

import warnings
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tf_fm.data import text
from tf_fm.features import MultiValuedFeature, weights_input_name

_MAX_DIGITS = 15  # exact in float64
_NO_TOKEN = 2**31 - 1


class LibSVMStats(NamedTuple):
    """What one scan of libSVM/libFFM files found.

    Attributes:
        rows: int. Well-formed lines (`label idx:val ...`).
        malformed: int. Other non-blank lines (not counted below).
        max_length: int. Most entries in a row.
        max_index: int. Largest feature index, -1 when there is none.
        max_field: int. Largest field (libFFM), -1 otherwise.
    """

    rows: int
    malformed: int
    max_length: int
    max_index: int
    max_field: int


class LibFFMField(NamedTuple):
    """One field of libFFM files, as `scan_libffm_fields` found it.

    Attributes:
        field: int. The field number of the files.
        max_length: int. Most entries of this field in one row.
    """

    field: int
    max_length: int

    @property
    def name(self) -> str:
        """Its feature's name, `"field_<field>"`."""
        return f"field_{self.field}"


class _FieldLayout:
    """Where each libFFM entry goes when a row is split into one feature per field.

    Entry e of field f is the p-th entry of f in its row (in line order):
    it fills column p of feature `field_<f>`, so a row splits into a
    `(batch, max_length)` block per field, padded with -1 (ids) and 0
    (values). A row with an entry of a field that is not in the layout, or
    with more entries of a field than its `max_length`, does not fit.
    """

    def __init__(self, fields):
        self.fields = [LibFFMField(*f) for f in fields]
        self.lengths = [f.max_length for f in self.fields]
        slot_of = [-1] * (max(f.field for f in self.fields) + 1)
        for slot, f in enumerate(self.fields):
            slot_of[f.field] = slot
        self.slot_of = tf.constant(slot_of, tf.int64)
        self.length_of = tf.constant(self.lengths, tf.int64)
        self.starts = tf.constant(np.cumsum([0, *self.lengths[:-1]]), tf.int64)
        self.width = sum(self.lengths)

    def slots(self, fields):
        """Per entry: the index of its field in the layout, and whether it has one."""
        number_ok = (fields >= 0) & (fields < tf.size(self.slot_of, out_type=tf.int64))
        slot = tf.gather(self.slot_of, tf.where(number_ok, fields, 0))
        return tf.maximum(slot, 0), number_ok & (slot >= 0)

    def split(self, splits, fields, ids, values):
        """`{field_<f>: ids, field_<f>_weights: values}` blocks, and the rows that fit."""
        slot, known = self.slots(fields)
        rows = tf.ragged.row_splits_to_segment_ids(splits, out_type=tf.int64)
        position = _rank_in_group(rows * len(self.fields) + slot)  # p-th entry of its field
        fits = known & (position < tf.gather(self.length_of, slot))
        num_rows = tf.size(splits, out_type=tf.int64) - 1
        misfits = tf.math.unsorted_segment_sum(tf.cast(~fits, tf.int64), rows, num_rows)
        column = tf.gather(self.starts, slot) + position
        at = tf.boolean_mask(tf.stack([rows, column], axis=1), fits)
        shape = tf.stack([num_rows, self.width])

        def block(flat, pad):
            filled = tf.fill(shape, tf.constant(pad, flat.dtype))
            return tf.split(
                tf.tensor_scatter_nd_update(filled, at, tf.boolean_mask(flat, fits)),
                self.lengths,
                axis=1,
            )

        features = {}
        for f, id_block, value_block in zip(
            self.fields, block(ids, -1), block(values, 0.0), strict=True
        ):
            features[f.name] = id_block
            features[weights_input_name(f.name)] = value_block
        return features, misfits == 0

    def reasons(self, splits, fields):
        """`[(condition, reason)]` per line: an unknown field, or too many entries of one."""
        slot, known = self.slots(fields)
        rows = tf.ragged.row_splits_to_segment_ids(splits, out_type=tf.int64)
        num_rows = tf.size(splits, out_type=tf.int64) - 1
        unknown = tf.math.unsorted_segment_sum(tf.cast(~known, tf.int64), rows, num_rows)
        has = ", ".join(str(f.field) for f in self.fields)
        cases = [(unknown > 0, f"an entry of a field the training files do not have ({has})")]
        for i, f in enumerate(self.fields):
            in_field = tf.cast(known & (slot == i), tf.int64)
            count = tf.math.unsorted_segment_sum(in_field, rows, num_rows)
            reason = tf.strings.join(
                [
                    f"field {f.field} has ",
                    tf.strings.as_string(count),
                    f" entries, more than the {f.max_length} of the training files",
                ]
            )
            cases.append((count > f.max_length, reason))
        return cases


def _rank_in_group(keys):
    """Per element: how many earlier elements have the same key (its rank in its group)."""
    order = tf.argsort(keys, stable=True)
    ordered = tf.gather(keys, order)
    index = tf.range(tf.size(keys, out_type=tf.int64))
    starts = tf.concat([tf.ones([1], tf.bool), ordered[1:] != ordered[:-1]], 0)[: tf.size(keys)]
    group = tf.cumsum(tf.cast(starts, tf.int64)) - 1
    rank = index - tf.gather(tf.boolean_mask(index, starts), group)  # in sorted order
    return tf.gather(rank, tf.math.invert_permutation(order))


class _SparseParser:
    def __init__(self, ffm, max_length=None, name="features", with_fields=True, layout=None):
        self.ffm = ffm
        self.layout = _FieldLayout(layout) if layout else None
        self.with_fields = with_fields
        self.max_length = max_length
        self.name = name
        index = rf"\d{{1,{_MAX_DIGITS}}}"
        self.token = (f"{index}:" if ffm else "") + f"{index}:{text.FINITE_NUMBER}"
        self.pattern = f"[ \\t]*(?:{text.NUMBER})(?:[ \\t]+{self.token})*[ \\t]*"
        entry = "field:idx:val" if ffm else "idx:val"
        self.entry = f"{entry} (indices of up to {_MAX_DIGITS} digits, a finite val)"

    def tokens(self, lines):
        """Labels, row splits of the entries, ids, values, fields of well-formed lines.

        The entries' pieces (split at whitespace, then `:`) are parsed at once
        as float64 (exact for ids up to 15 digits; values are then rounded to
        float32).
        """
        head = tf.strings.split(lines, maxsplit=1).to_tensor("", shape=[None, 2])
        labels = tf.strings.to_number(head[:, 0], tf.float32)
        tokens = tf.strings.split(head[:, 1])
        pieces = tf.strings.split(tokens.flat_values, ":").flat_values
        parts = 3 if self.ffm else 2
        numbers = tf.reshape(tf.strings.to_number(pieces, tf.float64), [-1, parts])
        ids = tf.cast(numbers[:, parts - 2], tf.int64)
        values = tf.cast(numbers[:, parts - 1], tf.float32)
        fields = tf.cast(numbers[:, 0], tf.int64) if self.ffm else None
        return labels, tokens.row_splits, ids, values, fields

    def parse(self, lines, task):
        well_formed = tf.strings.regex_full_match(lines, self.pattern)
        labels, splits, ids, values, fields = self.tokens(tf.where(well_formed, lines, "0"))
        lengths = splits[1:] - splits[:-1]
        label, label_ok = text.check_labels(labels, task)
        fits = lengths <= self.max_length
        ok = well_formed & label_ok & fits
        shape = [None, self.max_length]

        def pad(flat, value):
            return tf.RaggedTensor.from_row_splits(flat, splits, validate=False).to_tensor(
                value, shape=shape
            )

        if self.layout is not None:
            features, layout_fits = self.layout.split(splits, fields, ids, values)
            ok &= layout_fits
        else:
            features = {
                self.name: pad(ids, tf.constant(-1, tf.int64)),
                f"{self.name}_weights": pad(values, 0.0),
            }
            if self.ffm and self.with_fields:
                features[f"{self.name}_fields"] = pad(fields, tf.constant(-1, tf.int64))

        def explain(bad):
            return self.reasons(tf.gather(lines, bad), tf.gather(well_formed, bad), task)

        return (features, label), ok, explain, lambda rows: rows

    def reasons(self, lines, well_formed, task):
        """What is wrong with each of these bad lines (`well_formed`: their pattern match)."""
        tokens = tf.strings.split(lines)
        count = tokens.row_lengths()
        first_bad, shown, label_token = _first_bad_token(tokens, self.token)
        has_bad = first_bad < _NO_TOKEN
        entries = count - 1
        entry_reason = tf.strings.join(
            ["entry ", tf.strings.as_string(first_bad), " ", shown, f" is not {self.entry}"]
        )
        length_reason = tf.strings.join(
            [tf.strings.as_string(entries), f" entries, more than max_length={self.max_length}"]
        )
        return text.first_reason(
            [
                (count == 0, "no label (a line of only spaces)"),
                (
                    has_bad & (first_bad == 0),
                    tf.strings.join(["label ", shown, " is not a number"]),
                ),
                (has_bad, entry_reason),
                (
                    tf.logical_not(well_formed),
                    "malformed line (entries must be separated by spaces or tabs)",
                ),
                (entries > self.max_length, length_reason),
                *self._layout_reasons(lines, well_formed),
            ],
            text.label_reason(label_token, task),
        )

    def _layout_reasons(self, lines, well_formed):
        if self.layout is None:
            return []
        _, splits, _, _, fields = self.tokens(tf.where(well_formed, lines, "0"))
        return [(well_formed & bad, reason) for bad, reason in self.layout.reasons(splits, fields)]


def _first_bad_token(tokens, token_pattern):
    """The first bad token of each line of `tokens` (the lines split at whitespace).

    A token is bad when it is the first (the label) and not a number, or an
    entry that does not match `token_pattern`.

    Returns:
        `(first_bad, shown, label)`, each `(lines,)`: the 0-based position
        of the first bad token (`_NO_TOKEN` when there is none), that token
        as `text.quoted` shows it (an empty one when there is none), and the
        line's first token ("" for a line of only spaces).
    """
    flat = tokens.flat_values
    count = tokens.row_lengths()
    rows = tokens.value_rowids()
    starts = tokens.row_starts()
    lines = tf.size(count)
    position = tf.range(tf.size(flat, out_type=tf.int64)) - tf.gather(starts, rows)
    token_ok = tf.where(
        position == 0,
        tf.strings.regex_full_match(flat, text.NUMBER),
        tf.strings.regex_full_match(flat, token_pattern),
    )
    first_bad = tf.math.unsorted_segment_min(
        tf.where(token_ok, tf.constant(_NO_TOKEN, tf.int64), position), rows, lines
    )
    first_bad = tf.minimum(first_bad, _NO_TOKEN)
    has_bad = first_bad < _NO_TOKEN
    shown = text.quoted(_token_or_empty(flat, starts + first_bad, has_bad))
    return first_bad, shown, _token_or_empty(flat, starts, count > 0)


def _token_or_empty(flat, at, valid):
    """`flat[at]` where `valid`, else ""."""
    padded = tf.concat([flat, [""]], 0)
    return tf.gather(padded, tf.where(valid, at, tf.size(flat, out_type=tf.int64)))


def scan_libsvm(paths, *, ffm=False, compression_type=None):
    """Scans libSVM/libFM (or libFFM) files once: row count, longest row, largest index.

    Lines that are not well formed are counted in `malformed` and otherwise
    ignored (the readers report them).

    Args:
        paths: a file, a glob pattern, or a list of them.
        ffm: bool. libFFM lines (`label field:idx:val ...`). Defaults to False.
        compression_type: `""`, `"GZIP"` or `"ZLIB"`. Defaults to GZIP when
            every file ends in `.gz`.

    Returns:
        `LibSVMStats`.
    """
    files = text.resolve_paths(paths)
    compression = text.compression_of(files, compression_type)
    parser = _SparseParser(ffm)
    blocks = text.line_blocks(files, skip_header=False, compression_type=compression)

    @text.graph_function
    def stats(file_index, line, lines):
        del file_index, line
        ok = tf.strings.regex_full_match(lines, parser.pattern)
        _, splits, ids, _, fields = parser.tokens(tf.where(ok, lines, "0"))
        none = tf.constant([-1], tf.int64)
        return (
            tf.reduce_sum(tf.cast(ok, tf.int64)),
            tf.reduce_sum(tf.cast(tf.logical_not(ok), tf.int64)),
            tf.reduce_max(tf.concat([[0], splits[1:] - splits[:-1]], 0)),
            tf.reduce_max(tf.concat([none, ids], 0)),
            tf.reduce_max(tf.concat([none, fields if ffm else none], 0)),
        )

    @text.graph_function
    def combine(a, b):
        return (a[0] + b[0], a[1] + b[1], *map(tf.maximum, a[2:], b[2:]))

    zero = tf.constant(0, tf.int64)
    minus_one = tf.constant(-1, tf.int64)
    result = blocks.map(stats, num_parallel_calls=text.AUTOTUNE).reduce(
        (zero, zero, zero, minus_one, minus_one), combine
    )
    return LibSVMStats(*(int(x) for x in result))


def scan_libffm_fields(
    paths, *, num_fields: int | None = None, compression_type=None
) -> list[LibFFMField]:
    """Scans libFFM files: each field that has an entry, and its most entries in a row.

    Well-formed lines only (as `scan_libsvm`); the result is in field order.
    `num_fields` (`scan_libsvm(...).max_field + 1`, when the caller has it)
    saves the pass that finds it.
    """
    files = text.resolve_paths(paths)
    compression = text.compression_of(files, compression_type)
    if num_fields is None:
        num_fields = scan_libsvm(files, ffm=True, compression_type=compression).max_field + 1
    if num_fields <= 0:
        return []
    parser = _SparseParser(True)
    blocks = text.line_blocks(files, skip_header=False, compression_type=compression)

    @text.graph_function
    def longest(file_index, line, lines):
        del file_index, line
        ok = tf.strings.regex_full_match(lines, parser.pattern)
        _, splits, _, _, fields = parser.tokens(tf.boolean_mask(lines, ok))
        rows = tf.ragged.row_splits_to_segment_ids(splits, out_type=tf.int64)
        num_rows = tf.size(splits, out_type=tf.int64) - 1
        cells = tf.math.unsorted_segment_sum(
            tf.ones_like(fields), rows * num_fields + fields, num_rows * num_fields
        )
        per_row = tf.concat(
            [tf.zeros([1, num_fields], tf.int64), tf.reshape(cells, [-1, num_fields])], 0
        )
        return tf.reduce_max(per_row, axis=0)

    most = blocks.map(longest, num_parallel_calls=text.AUTOTUNE).reduce(
        tf.zeros([num_fields], tf.int64), tf.maximum
    )
    return [LibFFMField(f, int(n)) for f, n in enumerate(most.numpy()) if n > 0]


def libffm_features(
    fields: "list[LibFFMField]", num_ids: int, *, combiner: str = "sum", table: str = "features"
) -> list[MultiValuedFeature]:
    """The feature declarations of `read_libffm(..., fields=fields)`: one per libFFM field.

    Each is `MultiValuedFeature("field_<f>", encoding="integer",
    num_ids=num_ids, max_length=..., weighted=True, table=table)`: the
    fields share one id space (a libFFM index is the same feature whatever
    field it comes in, as in libFFM's own model), so the model's table
    has `num_ids` rows, not one block per field, while a field-aware model
    (`FFM`, `FwFM`) sees the files' fields. An FM on them equals the FM on
    one multi-valued feature of all the entries (it sums every pair).
    """
    return [
        MultiValuedFeature(
            f.name,
            encoding="integer",
            num_ids=num_ids,
            max_length=f.max_length,
            weighted=True,
            combiner=combiner,
            table=table,
        )
        for f in (LibFFMField(*f) for f in fields)
    ]


def libsvm_feature(
    paths=None,
    *,
    name="features",
    vocabulary_size=None,
    max_length=None,
    ffm=False,
    combiner="sum",
    compression_type=None,
):
    """The feature declaration of the libSVM/libFFM readers' output.

    Args:
        paths: files to scan when `vocabulary_size` or `max_length` is not
            given (one pass, see `scan_libsvm`).
        name: str. Input name; must match the reader's `name`. Defaults to
            `"features"`.
        vocabulary_size: int. Defaults to the largest index seen + 1.
        max_length: int. Defaults to the most entries seen in a row.
        ffm: bool. Scan libFFM lines. Defaults to False.
        combiner: str. See `MultiValuedFeature`. Defaults to `"sum"` (libFM).
        compression_type: see `scan_libsvm`.

    Returns:
        `MultiValuedFeature(name, encoding="integer", num_ids=vocabulary_size,
        max_length=max_length, weighted=True, combiner=combiner)`: it needs
        no adapting, so `FeatureSchema([feature])` or `FM([feature])` takes it.
    """
    if vocabulary_size is None or max_length is None:
        if paths is None:
            raise ValueError("Pass `paths` to scan, or both `vocabulary_size` and `max_length`.")
        stats = scan_libsvm(paths, ffm=ffm, compression_type=compression_type)
        if vocabulary_size is None:
            if stats.max_index < 0:
                raise ValueError(f"No feature index found in {paths!r}.")
            vocabulary_size = stats.max_index + 1
        if max_length is None:
            max_length = max(stats.max_length, 1)
    return MultiValuedFeature(
        name,
        encoding="integer",
        num_ids=vocabulary_size,
        max_length=max_length,
        weighted=True,
        combiner=combiner,
    )


def libsvm_field(*args, **kwargs):
    """Deprecated name of `libsvm_feature` (removed in the next release)."""
    warnings.warn(
        "tf_fm.data.libsvm_field is deprecated; use tf_fm.data.libsvm_feature.",
        DeprecationWarning,
        stacklevel=2,
    )
    return libsvm_feature(*args, **kwargs)


def _read_sparse(
    paths, *, ffm, max_length, task, name, compression_type, with_fields=True, fields=None,
    **pipeline,
):  # fmt: skip
    """The libSVM / libFFM reader; `pipeline`: the `text.PipelineOptions` arguments."""
    options = text.PipelineOptions(**pipeline)
    options.check(task)
    files = text.resolve_paths(paths)
    compression = text.compression_of(files, compression_type)
    if fields is not None and not fields:
        raise ValueError("`fields` must list at least one LibFFMField, or be None.")
    if max_length is None and fields:
        max_length = sum(LibFFMField(*f).max_length for f in fields)
    if max_length is None:
        max_length = max(scan_libsvm(files, ffm=ffm, compression_type=compression).max_length, 1)
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
        raise ValueError(f"`max_length` must be a positive integer. Received: {max_length!r}")
    parser = _SparseParser(ffm, max_length, name, with_fields, fields)
    return text.text_dataset(
        files,
        lambda lines: parser.parse(lines, task),
        skip_header=False,
        compression_type=compression,
        options=options,
    )


def read_libsvm(
    paths,
    *,
    max_length=None,
    task="binary",
    name="features",
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
    """Reads libSVM / libFM files (`label idx:val idx:val ...`).

    Any number of entries per row, separated by spaces or tabs. A line is
    malformed when its label is not a number or not allowed by `task`, an
    entry is not `idx:val` (idx up to 15 digits, val a number), or it has
    more than `max_length` entries. With `on_error="raise"` iteration stops
    with an error naming the file, the line and what is wrong; with
    `on_error="skip"` such lines are dropped and recorded in `report`
    (see `tf_fm.data.read_csv` and `ReadReport`). Blank lines are ignored.

    Args:
        paths: a file, a glob pattern, or a list of them.
        max_length: int. Entries per row after padding. Defaults to the
            longest row (one extra pass over the files, see `scan_libsvm`).
        task: `"binary"` (labels 0/1, or -1/+1 mapped to 0/1) or
            `"regression"` (any finite label, kept). Defaults to `"binary"`.
        name: str. Name of the feature (and prefix of `_weights`).
            Defaults to `"features"`.
        batch_size: int. Rows per batch. Defaults to 1024.
        shuffle_buffer: int or None. Shuffle window, as in `read_csv`.
            Defaults to None (file order).
        seed: int or None. Seed of the shuffling. Defaults to None.
        drop_remainder: bool. Drop the last, smaller batch. Defaults to False.
        on_error: `"raise"` or `"skip"`. Defaults to `"raise"`.
        report: `ReadReport` for the skipped lines. Defaults to a new one.
        deterministic: bool or None. Passed to tf.data. Defaults to None.
        cycle_length: int. Files read at the same time. Defaults to
            `min(4, number of files)`.
        compression_type: `""`, `"GZIP"` or `"ZLIB"`. Defaults to GZIP when
            every file ends in `.gz`.
        prefetch: bool. Prefetch batches. Defaults to True.

    Returns:
        `tf.data.Dataset` of `(features, label)` batches: `features` is
        `{name: int64 (batch, max_length) ids padded with -1,
        name + "_weights": float32 (batch, max_length) values, 0 at padding}`,
        the label float32 `(batch,)`.
    """
    return _read_sparse(ffm=False, **locals())  # every argument, by name


def read_libffm(
    paths,
    *,
    max_length=None,
    with_fields=True,
    fields=None,
    task="binary",
    name="features",
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
    """Reads libFFM files (`label field:idx:val ...`).

    Same as `read_libsvm`, each entry also carrying its field.

    Args:
        paths: a file, a glob pattern, or a list of them.
        max_length: int. Entries per row after padding. Defaults to the
            longest row (one extra pass over the files); with `fields`, the
            sum of their `max_length`.
        with_fields: bool. Also yield `name + "_fields"`. False leaves only
            the inputs a weighted `MultiValuedFeature` declares (an FM ignores fields).
            Defaults to True.
        fields: list of `LibFFMField` (`scan_libffm_fields` of the training
            files) or None. Given: one weighted multi-valued input per field,
            `"field_<f>"` ids and `"field_<f>_weights"`, instead of `name`
            (`libffm_features` declares them); a line with an entry of
            another field, or with more entries of a field than its
            `max_length`, is malformed. Defaults to None.
        task: `"binary"` or `"regression"`, as in `read_libsvm`.
        name: str. Name of the feature (and prefix of `_weights`,
            `_fields`). Defaults to `"features"`.
        batch_size: int. Rows per batch. Defaults to 1024.
        shuffle_buffer: int or None. Shuffle window. Defaults to None.
        seed: int or None. Seed of the shuffling. Defaults to None.
        drop_remainder: bool. Drop the last, smaller batch. Defaults to False.
        on_error: `"raise"` or `"skip"`. Defaults to `"raise"`.
        report: `ReadReport` for the skipped lines. Defaults to a new one.
        deterministic: bool or None. Passed to tf.data. Defaults to None.
        cycle_length: int. Files read at the same time. Defaults to
            `min(4, number of files)`.
        compression_type: `""`, `"GZIP"` or `"ZLIB"`. Defaults to GZIP when
            every file ends in `.gz`.
        prefetch: bool. Prefetch batches. Defaults to True.

    Returns:
        `tf.data.Dataset` of `(features, label)` batches: as `read_libsvm`,
        plus (with `with_fields`) `name + "_fields"`: int64
        `(batch, max_length)`, the field of each entry, -1 at padding. With
        `fields`: per field, `"field_<f>"` int64 `(batch, its max_length)`
        ids in line order, padded with -1, and `"field_<f>_weights"`.
    """
    return _read_sparse(ffm=True, **locals())  # every argument, by name
