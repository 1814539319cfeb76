"""Input data for tf_fm models."""

from tf_fm.data.synthetic import SyntheticData, make_fm_data

__all__ = ["SyntheticData", "make_fm_data"]
