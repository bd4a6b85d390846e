"""Adapters for training frameworks; each module imports its framework only when it is imported.

* :mod:`statefuldata.integrations.lightning`: :class:`ExactResume`, a Lightning callback.
* :mod:`statefuldata.integrations.accelerate`: :class:`ResumableLoader`, for ``Accelerator.prepare``.
"""
