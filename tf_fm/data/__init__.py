"""Input data for tf_fm models: file readers (`tf_fm.data.readers`) and synthetic data."""

from tf_fm.data import readers
from tf_fm.data.readers import *  # noqa: F403 (the readers' public API, listed in readers.__all__)
from tf_fm.data.synthetic import SyntheticData, make_fm_data

__all__ = ["SyntheticData", "make_fm_data", *readers.__all__]
