"""Precision: a no-op object for full precision and one for autocast that owns the GradScaler.

The loop calls the same methods whatever the precision, never ``if use_amp``::

    with precision.autocast():             # or precision.forward(step_fn, batch)
        loss = step_fn(batch)["loss"]
    precision.backward(loss / accumulation_steps)
    if at_boundary:
        precision.unscale_(optimizer)      # before clipping
        clip_grad_norm_(...)
        stepped = precision.step(optimizer)  # False when a scaler skipped an inf/nan step
        precision.update()                   # once per optimizer-step boundary
        optimizer.zero_grad()

(``precision.step_optimizers(optimizers, ids, clip_grad_norm)`` does the boundary's four lines
for several optimizers at once: what the trainer calls.)

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch

from trainer.config import AmpDtype, PerformanceConfig

__all__ = ["MixedPrecision", "Precision", "make_precision"]

logger = logging.getLogger(__name__)

_NO_AUTOCAST = contextlib.nullcontext()
_T = TypeVar("_T")
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

    def forward(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` under :meth:`autocast` (here: a plain call, no context to enter)."""
        return fn(*args)

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

    def step_optimizers(
        self,
        optimizers: Sequence[torch.optim.Optimizer],
        ids: Sequence[int],
        clip_grad_norm: float | None,
    ) -> Sequence[int]:
        """One optimizer-step boundary: unscale, clip (all of ``ids`` together), step, update.

        Returns the optimizers of ``ids`` that stepped. Here every one steps, so the loop pays no
        call for the no-op ``unscale_`` and ``update`` of full precision.
        """
        if clip_grad_norm is not None and ids:
            _clip_gradients(optimizers, ids, clip_grad_norm)
        for i in ids:
            optimizers[i].step()
        return ids

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

    def forward(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` under ``torch.autocast(device_type, dtype)``."""
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            return fn(*args)

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

    def step_optimizers(
        self,
        optimizers: Sequence[torch.optim.Optimizer],
        ids: Sequence[int],
        clip_grad_norm: float | None,
    ) -> Sequence[int]:
        """Unscale, clip, step (a scaler may skip an inf/nan step: that optimizer is left out of
        the result, so its scheduler does not step either), update the scale."""
        for i in ids:
            self.unscale_(optimizers[i])
        if clip_grad_norm is not None and ids:
            _clip_gradients(optimizers, ids, clip_grad_norm)
        stepped = [i for i in ids if self.step(optimizers[i])]
        self.update()
        return stepped

    def __repr__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"MixedPrecision(device_type={self.device_type!r}, dtype={dtype}, scaler={self._scaler is not None})"


def is_plain(precision: Precision) -> bool:
    """Whether ``precision`` does the plain thing at every boundary (forward a plain call,
    backward ``loss.backward()``, each optimizer stepped): the loop then makes those calls itself,
    with no call into the precision per batch or step."""
    kind = type(precision)
    return all(
        getattr(kind, name) is getattr(Precision, name)
        for name in ("forward", "backward", "step_optimizers")
    )


def _clip_gradients(
    optimizers: Sequence[torch.optim.Optimizer], ids: Sequence[int], max_norm: float
) -> None:
    """Clip the gradients of the optimizers ``ids`` together to a total norm of ``max_norm``."""
    params = [
        p
        for i in ids
        for g in optimizers[i].param_groups
        for p in g["params"]
        if p.grad is not None
    ]
    torch.nn.utils.clip_grad_norm_(params, max_norm)


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
