"""Which variables are embedding tables: an explicit tag, not a name.

The layers that own a large lookup table (`FieldEmbedding`) tag its variable
with `mark_embedding_table` when they create it in `build`. The optimizers
ask `is_embedding_table` to give such a variable its row-wise slots and to
keep it out of weight decay. Because the tag is set in `build`, it is there
again after a `.keras` file is loaded (loading rebuilds the layer, then
restores the values).

A `keras.layers.Embedding` of your own is not tagged: mark its
`embeddings` variable after building the layer if you want the same
treatment.
"""

import keras

# The attribute the tag lives in, on the keras.Variable itself.
_TAG = "tf_fm_embedding_table"


def mark_embedding_table(variable: keras.Variable) -> keras.Variable:
    """Tags a 2-D `(rows, columns)` variable as an embedding table and returns it.

    Args:
        variable: keras.Variable of rank 2.

    Returns:
        `variable`, tagged.
    """
    if len(variable.shape) != 2:
        raise ValueError(
            f"An embedding table is 2-D (rows, columns). Received: shape={variable.shape}"
        )
    setattr(variable, _TAG, True)
    return variable


def is_embedding_table(variable) -> bool:
    """Whether `variable` was tagged by `mark_embedding_table`."""
    return bool(getattr(variable, _TAG, False))
