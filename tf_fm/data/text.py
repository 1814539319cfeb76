"""Line-level machinery shared by the text readers.

Files are read in 1 MiB chunks (`tf.data.FixedLengthRecordDataset`) and cut
into lines by a per-file `scan` that carries the partial last line and the
line number, so a batch of lines arrives as three tensors: file index, 1-based
line number and the line's text. Parsing then works on whole batches
(`tf.strings.split`, `tf.strings.to_number`), never on one line at a time.
Compressed files (`.gz`) go through `tf.data.TextLineDataset` instead.

Bad lines: a parser returns, next to its outputs, a boolean `ok` per row and a
function that explains the bad rows. With `on_error="raise"` the batch fails
through `tf.debugging.Assert` with `path:line: reason` of its first bad line
(pure TensorFlow, so it also works where Python is not available). With
`on_error="skip"` bad rows are dropped and a `tf.py_function`, called only for
batches that have a bad row, records them in a `ReadReport`.
"""

import logging
import os
import threading
from typing import NamedTuple

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
ON_ERROR_MODES = ("raise", "skip")
TASKS = ("binary", "regression")

# What `tf.strings.to_number` accepts, minus hex: 12, -1.5, .5, 5., 1e-3, nan, inf.
NUMBER = r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:nan|inf|infinity))"
# A finite number: feature values of libSVM / libFM rows (a NaN or inf value
# there is a malformed line, not a missing value: it would train NaN weights).
FINITE_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"

CHUNK_BYTES = 1 << 20
_LINES_PER_BLOCK = 8192
_GLOB_CHARS = "*?["

logger = logging.getLogger("tf_fm.data")

# The pipeline functions have no Python control flow on tensors: tracing them
# without AutoGraph builds the same graph, faster.
graph_function = tf.autograph.experimental.do_not_convert


class ReadReport:
    """Malformed lines a reader skipped (`on_error="skip"`), filled during iteration.

    The reader records each bad line the first time the pipeline reaches it,
    so the report is complete once the dataset has been iterated to the end;
    a line seen again in a later epoch is not counted twice. The first
    `log_first` skipped lines are also logged as warnings on the
    `"tf_fm.data"` logger, so skipping is never silent. Thread-safe: tf.data
    parses batches in parallel, so lines are recorded in the order their
    batches were parsed, not always in file order.

    The readers record through a `tf.py_function` that runs only for a batch
    with a bad line, so the dataset must be iterated in the Python process
    that built it (as `model.fit` does), not shipped to another process
    (tf.data service). `on_error="raise"` is pure TensorFlow and has no such
    limit.

    Args:
        max_examples: int. How many skipped lines to keep in `examples`.
            Defaults to 20.
        log_first: int. How many skipped lines to log. Defaults to 5.

    Attributes:
        skipped: int. Number of distinct skipped lines.
        examples: list of str. The first `max_examples` skipped lines, as
            `"path:line: reason"`.
        locations: list of `(path, line)` of every skipped line, in the order
            they were found.
    """

    def __init__(self, max_examples=20, log_first=5):
        self.max_examples = max_examples
        self.log_first = log_first
        self._lock = threading.Lock()
        self._seen = set()
        self.locations = []
        self.examples = []

    @property
    def skipped(self):
        with self._lock:
            return len(self.locations)

    def record(self, paths, lines, reasons):
        """Records skipped lines (called by the readers; values may be bytes).

        Args:
            paths: sequence of file paths.
            lines: sequence of 1-based line numbers.
            reasons: sequence of what was wrong, one per line.

        Returns:
            int. Number of lines that were new to the report.
        """
        new = 0
        with self._lock:
            for path, line, reason in zip(paths, lines, reasons, strict=True):
                path, reason = _text(path), _text(reason)
                key = (path, int(line))
                if key in self._seen:
                    continue
                self._seen.add(key)
                self.locations.append(key)
                new += 1
                message = f"{path}:{int(line)}: {reason}"
                if len(self.examples) < self.max_examples:
                    self.examples.append(message)
                count = len(self.locations)
                if count <= self.log_first:
                    logger.warning("Skipped malformed line %s", message)
                    if count == self.log_first:
                        logger.warning("Further skipped lines are only counted in the ReadReport.")
        return new

    def _record_tensors(self, paths, lines, reasons):
        return self.record(paths.numpy(), lines.numpy(), reasons.numpy())

    def __repr__(self):
        shown = ", ".join(repr(e) for e in self.examples[:3])
        more = ", ..." if len(self.examples) > 3 else ""
        return f"ReadReport(skipped={self.skipped}, examples=[{shown}{more}])"


def _text(value):
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def check_options(*, batch_size, on_error, task=None, report=None):
    """Validates the options every reader shares."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive integer. Received: {batch_size!r}")
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"`on_error` must be one of {ON_ERROR_MODES}. Received: {on_error!r}")
    if task is not None and task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
    if report is not None and not isinstance(report, ReadReport):
        raise TypeError(f"`report` must be a ReadReport. Received: {type(report).__name__}")


class PipelineOptions(NamedTuple):
    """The options every text reader hands to `text_dataset` as given.

    Their meaning is documented once, in `tf_fm.data.read_csv`.
    """

    batch_size: int
    shuffle_buffer: int | None
    seed: int | None
    drop_remainder: bool
    on_error: str
    report: ReadReport | None
    deterministic: bool | None
    cycle_length: int | None
    prefetch: bool

    @classmethod
    def of(cls, arguments):
        """The options among a reader's arguments (a mapping such as its `locals()`)."""
        return cls(**{name: arguments[name] for name in cls._fields})

    def check(self, task):
        """Validates the options and `task` (see `check_options`)."""
        check_options(
            batch_size=self.batch_size, on_error=self.on_error, task=task, report=self.report
        )


def resolve_paths(paths):
    """Expands a path, a glob pattern, or a list of them into a list of files.

    Args:
        paths: str or `os.PathLike`, or a list of them. Patterns (`*`, `?`,
            `[`) are expanded with `tf.io.gfile.glob` and sorted.

    Returns:
        list of str, in the given order (each pattern's matches sorted).

    Raises:
        FileNotFoundError: a path does not exist or a pattern matches nothing.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files = []
    for path in paths:
        path = os.fspath(path)
        if any(c in path for c in _GLOB_CHARS):
            matches = sorted(m for m in tf.io.gfile.glob(path) if not tf.io.gfile.isdir(m))
            if not matches:
                raise FileNotFoundError(f"No file matches the pattern {path!r}.")
            files.extend(matches)
        elif tf.io.gfile.isdir(path):
            raise FileNotFoundError(f"{path!r} is a directory; give files or a glob.")
        elif not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"No such file: {path!r}.")
        else:
            files.append(path)
    if not files:
        raise ValueError("No input files given.")
    return files


def compression_of(files, compression_type):
    """`"GZIP"`/`"ZLIB"`/`""`; None means GZIP when every file ends in `.gz`."""
    if compression_type is not None:
        if compression_type not in ("", "GZIP", "ZLIB"):
            raise ValueError(
                f"`compression_type` must be None, '', 'GZIP' or 'ZLIB'. "
                f"Received: {compression_type!r}"
            )
        return compression_type
    gz = [f.endswith(".gz") for f in files]
    if any(gz) and not all(gz):
        raise ValueError(
            "Some files end in .gz and some do not; read them separately or pass "
            "`compression_type`."
        )
    return "GZIP" if all(gz) else ""


def first_lines(path, count, compression_type=""):
    """The first `count` lines of a file as str (CR, LF and a BOM removed)."""
    lines = []
    if compression_type:
        dataset = tf.data.TextLineDataset(path, compression_type=compression_type).take(count)
        lines = [_text(x) for x in dataset.as_numpy_iterator()]
    else:
        with tf.io.gfile.GFile(path, "rb") as f:
            while len(lines) < count:
                line = f.readline()
                if not line:
                    break
                lines.append(_text(line).rstrip("\n").rstrip("\r"))
    if lines:
        lines[0] = lines[0].lstrip("\ufeff")
    return lines


def _chunk_lines(path, size, file_index, skip_header):
    """Blocks of (file index, line number, line) of one uncompressed file."""
    full = size // CHUNK_BYTES * CHUNK_BYTES
    body = tf.data.FixedLengthRecordDataset(
        path, CHUNK_BYTES, footer_bytes=size - full, buffer_size=4 * CHUNK_BYTES
    )
    # The tail (size - full bytes) as one record; a 1-byte record of an empty
    # remainder reads nothing.
    tail = tf.data.FixedLengthRecordDataset(
        path, tf.maximum(size - full, tf.constant(1, tf.int64)), header_bytes=full
    )
    # A final newline flushes a last line that has none.
    chunks = body.concatenate(tail).concatenate(tf.data.Dataset.from_tensors(tf.constant("\n")))

    @graph_function
    def step(state, chunk):
        carry, first = state
        text = tf.strings.regex_replace(tf.strings.join([carry, chunk]), "\r\n", "\n")
        text = tf.strings.regex_replace(text, "^\ufeff", "")
        parts = tf.strings.split(text, "\n")
        count = tf.size(parts, out_type=tf.int64) - 1
        numbers = first + tf.range(count + 1)
        # One copy: drops the unfinished last part, blank lines and the header.
        keep = (tf.strings.length(parts) > 0) & (numbers <= first + count - 1)
        if skip_header:
            keep = keep & (numbers > 1)
        numbers = tf.boolean_mask(numbers, keep)
        block = (tf.fill(tf.shape(numbers), file_index), numbers, tf.boolean_mask(parts, keep))
        return (parts[-1], first + count), block

    return chunks.scan((tf.constant(""), tf.constant(1, tf.int64)), step)


def _compressed_lines(path, file_index, compression_type, skip_header):
    """Blocks of (file index, line number, line) of one compressed file."""
    lines = tf.data.TextLineDataset(path, compression_type=compression_type, buffer_size=1 << 20)

    @graph_function
    def block(index, lines):
        numbers = index * _LINES_PER_BLOCK + 1 + tf.range(tf.size(lines, out_type=tf.int64))
        lines = tf.cond(
            index == 0, lambda: tf.strings.regex_replace(lines, "^\ufeff", ""), lambda: lines
        )
        keep = tf.strings.length(lines) > 0
        if skip_header:
            keep = keep & (numbers > 1)
        numbers = tf.boolean_mask(numbers, keep)
        return tf.fill(tf.shape(numbers), file_index), numbers, tf.boolean_mask(lines, keep)

    return lines.batch(_LINES_PER_BLOCK).enumerate().map(block)


def line_blocks(
    files,
    *,
    skip_header,
    compression_type="",
    shuffle_files=False,
    seed=None,
    cycle_length=None,
    deterministic=None,
):
    """Dataset of line blocks `(file_index int32, line int64, text string)`, all (n,).

    Blank lines are dropped (their numbers are kept by the other lines), the
    first line of each file too when `skip_header`. CRLF line endings and a
    UTF-8 BOM are removed. Files are interleaved `cycle_length` at a time
    (default: up to 4), one chunk (~1 MiB) from each in turn.
    """
    if compression_type:
        columns = (files, list(range(len(files))))
        dtypes = (tf.string, tf.int32)

        @graph_function
        def open_file(path, index):
            return _compressed_lines(path, index, compression_type, skip_header)

    else:
        sizes = [tf.io.gfile.stat(f).length for f in files]
        columns = (files, sizes, list(range(len(files))))
        dtypes = (tf.string, tf.int64, tf.int32)

        @graph_function
        def open_file(path, size, index):
            return _chunk_lines(path, size, index, skip_header)

    columns = [tf.constant(c, d) for c, d in zip(columns, dtypes, strict=True)]
    if len(files) == 1:
        return open_file(*(c[0] for c in columns))
    source = tf.data.Dataset.from_tensor_slices(tuple(columns))
    if shuffle_files:
        source = source.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    cycle = max(1, min(len(files), cycle_length or 4))
    return source.interleave(
        open_file,
        cycle_length=cycle,
        block_length=1,
        num_parallel_calls=AUTOTUNE if cycle > 1 else None,
        deterministic=deterministic,
    )


def shuffle_windows(dataset, window, seed=None):
    """Shuffles rows of a dataset of 1-D blocks within windows of `window` rows.

    Each window is a full random permutation (one gather, vectorized); a new
    permutation is drawn every epoch. With `seed` the order is reproducible.
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    @graph_function
    def permute(block, pair):
        size = tf.shape(tf.nest.flatten(block)[0])[0]
        order = tf.random.experimental.stateless_shuffle(tf.range(size), seed=pair)
        return tf.nest.map_structure(lambda t: tf.gather(t, order), block)

    return tf.data.Dataset.zip((dataset.rebatch(window), seeds)).map(permute)


def apply_on_error(outputs, ok, explain, *, file_index, line, paths, on_error, report):
    """Raises on, or drops and reports, the rows of a parsed batch that are not `ok`.

    Args:
        outputs: nested structure of tensors with the batch as first axis.
        ok: (n,) bool, True for a good row.
        explain: function from the int64 indices of the bad rows to a string
            tensor saying what is wrong with each; only called when there is
            a bad row.
        file_index: (n,) int32 index into `paths`.
        line: (n,) int64 line numbers.
        paths: string tensor of the file paths.
        on_error: `"raise"` or `"skip"`.
        report: `ReadReport` (skip mode).

    Returns:
        `outputs`, with the bad rows removed in skip mode.
    """
    bad = tf.where(tf.logical_not(ok))[:, 0]
    has_bad = tf.size(bad) > 0

    def describe():
        where = tf.gather(paths, tf.gather(file_index, bad))
        return where, tf.gather(line, bad), explain(bad)

    if on_error == "raise":

        def first_message():
            where, numbers, reasons = describe()
            return tf.strings.join(
                [
                    "Malformed input at ",
                    where[0],
                    ":",
                    tf.strings.as_string(numbers[0]),
                    ": ",
                    reasons[0],
                    " (on_error=skip skips and reports such lines)",
                ]
            )

        message = tf.cond(has_bad, first_message, lambda: tf.constant(""))
        check = tf.debugging.Assert(tf.logical_not(has_bad), [message], summarize=1)
        with tf.control_dependencies([check]):
            return tf.nest.map_structure(tf.identity, outputs)

    def record():
        where, numbers, reasons = describe()
        return tf.py_function(report._record_tensors, [where, numbers, reasons], Tout=tf.int64)

    recorded = tf.cond(has_bad, record, lambda: tf.constant(0, tf.int64))
    with tf.control_dependencies([recorded]):
        return tf.cond(
            has_bad,
            lambda: tf.nest.map_structure(lambda t: tf.boolean_mask(t, ok), outputs),
            lambda: tf.nest.map_structure(tf.identity, outputs),
        )


def text_dataset(files, parse, *, skip_header, compression_type, options):
    """The whole text pipeline: lines -> (shuffle) -> batches -> parse -> check.

    `parse(lines)` returns `(rows, ok, explain, finish)`: `rows`, `ok` and
    `explain` as `apply_on_error` takes them (a few batch-major tensors, so
    dropping bad rows is cheap), `finish(rows)` the dataset element.
    `options` is a `PipelineOptions`.
    """
    on_error, batch_size = options.on_error, options.batch_size
    report = options.report
    if on_error == "skip" and report is None:
        report = ReadReport()
    paths = tf.constant(files)
    blocks = line_blocks(
        files,
        skip_header=skip_header,
        compression_type=compression_type,
        shuffle_files=bool(options.shuffle_buffer),
        seed=options.seed,
        cycle_length=options.cycle_length,
        deterministic=options.deterministic,
    )
    if options.shuffle_buffer:
        blocks = shuffle_windows(blocks, options.shuffle_buffer, options.seed)
    # Skipped lines make batches shorter; only drop_remainder needs them refilled.
    refill = on_error == "skip" and options.drop_remainder
    blocks = blocks.rebatch(batch_size, drop_remainder=options.drop_remainder and not refill)

    @graph_function
    def parse_block(file_index, line, text):
        rows, ok, explain, finish = parse(text)
        rows = apply_on_error(
            rows,
            ok,
            explain,
            file_index=file_index,
            line=line,
            paths=paths,
            on_error=on_error,
            report=report,
        )
        return finish(rows)

    dataset = blocks.map(
        parse_block, num_parallel_calls=AUTOTUNE, deterministic=options.deterministic
    )
    if refill:
        dataset = dataset.rebatch(batch_size, drop_remainder=True)
    if options.prefetch:
        dataset = dataset.prefetch(AUTOTUNE)
    return dataset


def first_reason(cases, otherwise):
    """Per row, the reason of the first `(condition, reason)` case that holds, else `otherwise`.

    What nested `tf.where(condition, reason, ...)` calls say, listed in order.
    """
    reason = otherwise
    for condition, case_reason in reversed(cases):
        reason = tf.where(condition, case_reason, reason)
    return reason


def quoted(values, limit=40):
    """Values for messages: in backticks, cut to `limit` bytes, valid UTF-8.

    Backticks because `tf.debugging.Assert` escapes quotes in its message;
    invalid UTF-8 would make the error itself fail to convert to Python.
    """
    values = tf.strings.unicode_transcode(
        tf.strings.substr(values, 0, limit), "UTF-8", "UTF-8", errors="replace"
    )
    return tf.strings.join(["`", values, "`"])


def label_values(text, ok, task):
    """Label text of good rows to float32, and whether each label is allowed."""
    return check_labels(tf.strings.to_number(tf.where(ok, text, "0"), tf.float32), task)


def check_labels(value, task):
    """Labels as float32 and whether each is allowed.

    Binary: 0 or 1, or -1/+1 with -1 mapped to 0. Regression: any finite value.
    """
    value = tf.cast(value, tf.float32)
    if task == "binary":
        allowed = (value == 0.0) | (value == 1.0) | (value == -1.0)
        value = tf.maximum(value, 0.0)
    else:
        allowed = tf.math.is_finite(value)
    return value, allowed


def label_reason(text, task):
    """Why a well-formed number is not an allowed label."""
    if task == "binary":
        return tf.strings.join(
            ["label ", quoted(text), " is not 0 or 1 (or -1/+1) as task=binary needs"]
        )
    return tf.strings.join(["label ", quoted(text), " is not a finite number"])
