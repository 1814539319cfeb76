"""The exception a caller can fix by asking differently.

`UsageError` is a `ValueError` raised for a request that cannot be done as
asked: a path that matches no file, a run directory that holds no run, a
label column a file does not have, an option that does not apply. Errors in
the data itself (a malformed line) are the readers' `ValueError` /
`tf.errors.InvalidArgumentError`, naming the file and line. The `tf-fm`
command exits with code 2 for a `UsageError`, 1 for the others.
"""


class UsageError(ValueError):
    """A request that cannot be done as asked (a path, option or run directory)."""
