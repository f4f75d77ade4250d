"""The decoded-example keys by their older name; they are defined in rethink_st/features.py.

The keys sit below every room that reads examples (data, augment, losses, evaluation, ...), so
that `rethink_st.augment`, which the data pipelines call, can name them without importing
`rethink_st.data`. This module keeps `from rethink_st.data import features` working; new
code imports `rethink_st.features`.
"""
from rethink_st.features import *  # noqa: F401,F403  pylint: disable=wildcard-import
