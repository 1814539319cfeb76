"""The exception a caller can fix by asking differently.

`UsageError` is a `ValueError` raised for a request that cannot be done as
asked: a path that matches no file, a run directory that holds no run, a
label column a file does not have, an option that does not apply. Errors in
the data itself (a malformed line) are the readers' `ValueError` /
`tf.errors.InvalidArgumentError`, naming the file and line;
`readable_message` digs that line out of TensorFlow's wrapping. The `tf-fm`
command exits with code 2 for a `UsageError`, 1 for the others.
"""

import re


class UsageError(ValueError):
    """A request that cannot be done as asked (a path, option or run directory)."""


_ASSERTION = re.compile(r"assertion failed: \[(.*?)\](?:\s*\[\[|\s*$)", re.S)
_WRAPPER = re.compile(r"\{\{function_node [^}]*\}\}\s*")
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\](?:\s*name:.*)?$")
_RAISED = re.compile(r"^\s*\w+(?:Error|Exception): (.+)$", re.M)


def readable_message(error: BaseException) -> str:
    """The one line that says what went wrong, out of a TensorFlow error's wrapping.

    A failed `tf.debugging.Assert` in the input pipeline or the model (a
    reader's `path:line: reason`, a feature's missing value, an id out of
    range) reaches Python wrapped in `Graph execution error:`, node names,
    a traceback and `{{function_node ...}}` prefixes; this returns the
    assertion's own message. Another TensorFlow error: its last meaningful
    line (the op's message); an error raised inside a traced function
    (`in user code:` and a trace): the message it was raised with; any
    other error: its first line.

    Args:
        error: the exception.

    Returns:
        One line of text.
    """
    text = str(getattr(error, "message", None) or error)
    match = _ASSERTION.search(text)
    if match:
        return " ".join(match.group(1).split())
    if not hasattr(error, "message"):  # not a tf.errors.OpError
        if text.lstrip().startswith("in user code:"):  # autograph's trace: the raised line
            raised = _RAISED.findall(text)
            if raised:
                return raised[-1].strip()
        first = text.strip().splitlines()
        return first[0] if first else type(error).__name__
    lines = []
    for line in _WRAPPER.sub("", text).splitlines():
        line = _OP_SUFFIX.sub("", line).strip()
        skip = line.startswith(("Graph execution error", "Detected at node", "File ", "[["))
        if line and not skip:
            lines.append(line)
    return lines[-1] if lines else type(error).__name__
