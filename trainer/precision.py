"""Precision: a no-op object for full precision and one for autocast that owns the GradScaler.

The loop calls the same methods whatever the precision, never ``if use_amp``::

    with precision.autocast():
        loss = step_fn(batch)["loss"]
    precision.backward(loss / accumulation_steps)
    if at_boundary:
        precision.unscale_(optimizer)      # before clipping
        clip_grad_norm_(...)
        stepped = precision.step(optimizer)  # False when a scaler skipped an inf/nan step
        precision.update()                   # once per optimizer-step boundary
        optimizer.zero_grad()

State (``state_dict``): the GradScaler state dict (``scale``, ``growth_factor``,
``backoff_factor``, ``growth_interval``, ``_growth_tracker``), or None without a scaler. It is the
checkpoint's ``amp_scaler_state``.

Example:
    >>> precision = make_precision(PerformanceConfig(), torch.device("cpu"))
    >>> precision.scaler is None
    True
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from trainer.config import AmpDtype, PerformanceConfig

__all__ = ["MixedPrecision", "Precision", "make_precision"]

logger = logging.getLogger(__name__)

_NO_AUTOCAST = contextlib.nullcontext()
_DTYPES = {AmpDtype.BFLOAT16: torch.bfloat16, AmpDtype.FLOAT16: torch.float16}


class Precision:
    """Full precision: every method does the plain thing (no autocast, no scaler)."""

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The GradScaler, or None when there is none."""
        return None

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Context for the forward pass (here: nothing; one shared context, entered every batch)."""
        return _NO_AUTOCAST

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled first when a scaler is present)."""
        loss.backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale the gradients of ``optimizer`` in place before clipping (here: nothing)."""

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step ``optimizer``; return whether the step happened."""
        optimizer.step()
        return True

    def update(self) -> None:
        """Update the loss scale; call once per optimizer-step boundary (here: nothing)."""

    def state_dict(self) -> dict[str, Any] | None:
        """Return the scaler state, or None when there is no scaler."""
        scaler = self.scaler
        return None if scaler is None else scaler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any] | None, *, strict: bool = True) -> None:
        """Restore the scaler state saved by :meth:`state_dict`.

        Args:
            state: A GradScaler state dict, or None.
            strict: Raise when ``state`` holds a scaler state but this precision has no scaler.

        Raises:
            ValueError: ``strict`` and a scaler state is given to a precision without scaler.
        """
        _load_scaler_state(self.scaler, state, strict=strict, owner=repr(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MixedPrecision(Precision):
    """Autocast to ``dtype`` on ``device_type``, with an optional GradScaler (fp16).

    Args:
        device_type: ``"cpu"`` or ``"cuda"``.
        dtype: ``torch.bfloat16`` or ``torch.float16``.
        scaler: The GradScaler used for fp16, or None (bf16 needs none).
    """

    def __init__(
        self, *, device_type: str, dtype: torch.dtype, scaler: torch.amp.GradScaler | None = None
    ) -> None:
        self.device_type = device_type
        self.dtype = dtype
        self._scaler = scaler

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The GradScaler, or None for bf16."""
        return self._scaler

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Run the enclosed forward pass under ``torch.autocast(device_type, dtype)``."""
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss``, multiplied by the loss scale when a scaler is present."""
        if self._scaler is None:
            loss.backward()
        else:
            self._scaler.scale(loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients of ``optimizer`` by the loss scale (at most once per step)."""
        if self._scaler is not None:
            self._scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step ``optimizer``; with a scaler the step is skipped when a gradient is inf/nan.

        Returns:
            True when ``optimizer.step()`` ran.
        """
        if self._scaler is None:
            optimizer.step()
            return True
        stepped: list[bool] = []
        handle = optimizer.register_step_post_hook(lambda *_: stepped.append(True))
        try:
            self._scaler.step(optimizer)
        finally:
            handle.remove()
        if not stepped:
            logger.debug(
                "Skipped an optimizer step: inf/nan gradients at scale %s", self._scaler.get_scale()
            )
        return bool(stepped)

    def update(self) -> None:
        """Update the loss scale (backs off after a skipped step, grows after enough good ones)."""
        if self._scaler is not None:
            self._scaler.update()

    def __repr__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"MixedPrecision(device_type={self.device_type!r}, dtype={dtype}, scaler={self._scaler is not None})"


def _load_scaler_state(
    scaler: torch.amp.GradScaler | None,
    state: Mapping[str, Any] | None,
    *,
    strict: bool,
    owner: str,
) -> None:
    """Load ``state`` into ``scaler`` (both may be None); shared by Precision and checkpoints."""
    if state is None:
        if scaler is not None:
            logger.warning(
                "The checkpoint holds no GradScaler state but %s uses one; the scaler starts at "
                "its initial scale %s (as a new run would)",
                owner,
                scaler.get_scale(),
            )
        return
    if scaler is None:
        if strict:
            raise ValueError(
                f"The checkpoint holds a GradScaler state (scale {state.get('scale')!r}) but {owner} "
                "has no scaler; resume with the precision it was saved under "
                "(use_amp=True, amp_dtype='float16'), or pass strict=False to drop the scaler state"
            )
        logger.warning("Dropping the checkpoint's GradScaler state: %s has no scaler", owner)
        return
    scaler.load_state_dict(dict(state))


def make_precision(performance_config: PerformanceConfig, device: torch.device | str) -> Precision:
    """Build the precision object for ``performance_config`` on ``device``.

    ``use_amp=False`` gives the no-op :class:`Precision`. Otherwise: bf16 autocast without a
    scaler, or fp16 autocast with a ``GradScaler`` for the device (CPU included, so scaler state
    is exercised without a GPU).

    Raises:
        ValueError: AMP is requested on a device type other than CPU or CUDA.
    """
    if not performance_config.use_amp:
        return Precision()
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        raise ValueError(
            f"use_amp supports the device types 'cpu' and 'cuda' (got {device_type!r}); "
            "set PerformanceConfig(use_amp=False) on this device"
        )
    dtype = _DTYPES[performance_config.amp_dtype]
    scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None
    return MixedPrecision(device_type=device_type, dtype=dtype, scaler=scaler)
