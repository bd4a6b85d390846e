"""Errors raised by statefuldata.

Built-in exception types cover bad input (``ValueError``, ``TypeError``); the one error of our own is
:class:`IncompatibleStateError`, raised when a state is loaded under a configuration other than the one
it was taken under.
"""

from __future__ import annotations


class IncompatibleStateError(ValueError):
    """A state was made under another configuration (or another version) than the one loading it.

    The message prints both values and says how to override (usually: rebuild the pipeline with the
    configuration the state was taken under, or pass ``strict=False`` where offered).
    """
