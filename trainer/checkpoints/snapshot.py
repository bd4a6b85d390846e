"""A payload copied to host memory, so that it can be written while training goes on.

:meth:`StagingArea.snapshot` walks a payload once: it checks every value is a plain type or a
tensor (what :func:`~trainer.checkpoints.io.check_plain_types` checks), rebuilds every container
and copies every tensor's storage into a host buffer: CPU storages with one plain ``memcpy`` each
(``torch``'s ``copy_`` wakes its thread team for every tensor, which on a busy machine costs
several times the copy). Views, shared storages (tied weights) and strides are kept, so the file is
the one a synchronous save writes. The buffers are kept for the next snapshot (same storage, same
size: no new allocation, no page faults); on CUDA they are pinned and the copies are asynchronous,
so the caller does not wait for them: :meth:`Snapshot.wait`, called by the background writer
before it reads the buffers, does.

The caller must not start another snapshot while the previous one is being written (the manager
waits for the save in flight first): the buffers are reused.

Deferred copies: the storages named in ``defer`` (CPU tensors that only an optimizer step
changes: parameters, optimizer state) are not copied by :meth:`StagingArea.snapshot` but by
:meth:`Snapshot.copy_deferred`, which the background writer runs first, while training computes
its next forward and backward; the caller calls :meth:`Snapshot.wait_copied` before it changes
any of them (the trainer: right before the next optimizer step). Every deferred tensor's version
counter is read at the snapshot and again after its copy: a tensor changed in place meanwhile
(outside the promise) fails the snapshot with :class:`SnapshotChangedError`, naming the tensor,
instead of writing a torn copy. Only a change through ``.data`` escapes the counter.

Example:
    >>> staging = StagingArea()
    >>> snap = staging.snapshot({"w": torch.ones(2)})
    >>> snap.wait(); snap.payload["w"]
    tensor([1., 1.])
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs
import numpy as np
import torch

from trainer.checkpoints.crc import default_threads
from trainer.checkpoints.errors import SnapshotChangedError
from trainer.checkpoints.io import check_plain_types

__all__ = ["Snapshot", "StagingArea"]

_SCALARS = frozenset({bool, int, float, str, type(None), torch.dtype, torch.device})
_ROWS = frozenset({list, tuple})
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_StorageKey = tuple[int, int, str]
#: Host copies are split into slices of this many bytes, shared among threads ...
COPY_SLICE = 4 << 20
#: ... when the snapshot copies at least this many bytes.
SHARE_BYTES = 32 << 20


def _helpers() -> concurrent.futures.ThreadPoolExecutor | None:
    """The process's copy helper threads (the usable cores but one; kept between snapshots), or
    None on one core or when the interpreter is exiting."""
    global _HELPERS
    if _HELPERS is None and default_threads() > 1:
        with contextlib.suppress(RuntimeError):
            _HELPERS = concurrent.futures.ThreadPoolExecutor(
                max_workers=default_threads() - 1, thread_name_prefix="checkpoint-snapshot"
            )
    return _HELPERS


_HELPERS: concurrent.futures.ThreadPoolExecutor | None = None


def copy_shared(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """``np.copyto(target, source)`` for every pair, in slices of :data:`COPY_SLICE` bytes that
    this thread and the helper threads take in turn (``np.copyto`` releases the GIL).

    A helper that is not scheduled (a busy machine) takes nothing: this thread copies what is
    left, so sharing never costs more than one slice of waiting.
    """
    slices = [
        (target[lo : lo + COPY_SLICE], source[lo : lo + COPY_SLICE])
        for target, source in (
            (t.reshape(-1).view(np.uint8), s.reshape(-1).view(np.uint8)) for t, s in pairs
        )
        for lo in range(0, target.size, COPY_SLICE)
    ]
    todo = iter(slices)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            np.copyto(item[0], item[1])

    pool = _helpers() if sum(t.nbytes for t, _ in pairs) >= SHARE_BYTES else None
    futures = []
    if pool is not None:
        with contextlib.suppress(RuntimeError):  # the interpreter is exiting: copy alone
            futures = [pool.submit(work) for _ in range(default_threads() - 1)]
    try:
        work()
    finally:
        for future in futures:
            future.result()


_Pairs = list[tuple[np.ndarray, np.ndarray]]
_Versions = list[tuple[torch.Tensor, int, str]]


@attrs.define(eq=False)
class Snapshot:
    """A payload whose tensors live in staging buffers; :meth:`wait` before reading them.

    With deferred copies (see the module docstring), :meth:`copy_deferred` makes them and
    :meth:`wait_copied` waits for them.
    """

    payload: dict[str, Any]
    _ready: tuple[Callable[[], object], ...] = ()
    _later: _Pairs = attrs.field(factory=list)
    _versions: _Versions = attrs.field(factory=list)
    _copied: threading.Event = attrs.field(init=False, factory=threading.Event)
    #: Whether :meth:`copy_deferred` failed (its error is raised where it ran).
    failed: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        if not self._later:
            self._copied.set()

    @property
    def deferred_bytes(self) -> int:
        """Bytes whose copy is deferred and not yet made."""
        return 0 if self._copied.is_set() else sum(t.nbytes for t, _ in self._later)

    def wait(self) -> None:
        """Wait for the asynchronous device-to-host copies (a no-op for CPU tensors)."""
        for ready in self._ready:
            ready()

    def copy_deferred(self) -> None:
        """Make the deferred copies, then check no deferred tensor changed meanwhile.

        Raises:
            SnapshotChangedError: One did (this snapshot must not be written).
        """
        if self._copied.is_set():
            return
        try:
            copy_shared(self._later)
            changed = [where for t, version, where in self._versions if t._version != version]
            self.failed = bool(changed)
        except BaseException:
            self.failed = True
            raise
        finally:
            self._later, self._versions = [], []  # the caller's tensors are not held any longer
            self._copied.set()
        if changed:
            shown = ", ".join(changed[:3]) + (
                f" and {len(changed) - 3} more" if changed[3:] else ""
            )
            raise SnapshotChangedError(
                f"{shown} changed in place after the save and before its deferred copy was made "
                "(while the next forward and backward ran), so this checkpoint was not written; "
                "earlier checkpoints and latest are unchanged. Something other than the optimizer "
                "step changes the parameters or the optimizer state in place (a training step or "
                "a callback): set CheckpointConfig(defer_snapshot=False) to copy everything "
                "inside the save"
            )

    def wait_copied(self) -> None:
        """Block until the deferred copies are made (at once when there are none)."""
        self._copied.wait()


def _plain_strided(t: torch.Tensor) -> bool:
    return (
        type(t) in _PLAIN_TENSORS
        and t.layout is torch.strided
        and not t.is_quantized
        and not t.is_nested
        and t.device.type != "meta"
        and not t.is_conj()
        and not t.is_neg()
    )


@attrs.define(eq=False)
class StagingArea:
    """Host buffers for snapshots, reused from one snapshot to the next (pinned for CUDA tensors).

    Holds, between saves, one copy of every tensor storage of the last payload (the memory an
    asynchronous save costs).
    """

    _buffers: dict[_StorageKey, torch.UntypedStorage] = attrs.field(init=False, factory=dict)
    _pending: _Pairs = attrs.field(init=False, factory=list)
    _later: _Pairs = attrs.field(init=False, factory=list)
    _versions: _Versions = attrs.field(init=False, factory=list)
    _defer: Collection[int] = attrs.field(init=False, default=())

    @property
    def nbytes(self) -> int:
        """Bytes held in staging buffers."""
        return sum(b.nbytes() for b in self._buffers.values())

    def snapshot(self, payload: Mapping[str, Any], *, defer: Collection[int] = ()) -> Snapshot:
        """A copy of ``payload`` that later changes of its tensors and containers do not reach.

        Args:
            payload: The v1 payload (or any tree of plain values and tensors).
            defer: ``data_ptr()`` of the CPU storages whose copy :meth:`Snapshot.copy_deferred`
                makes later (see the module docstring); the rest is copied now.

        Raises:
            TypeError: ``payload`` holds a value ``torch.load(weights_only=True)`` would refuse
                (the message names where, as :func:`check_plain_types` does).
        """
        used: dict[_StorageKey, torch.UntypedStorage] = {}
        devices: set[torch.device] = set()
        self._pending, self._later, self._versions = [], [], []
        self._defer = defer
        try:
            copied = self._copy(dict(payload), "payload", used, devices)
            copy_shared(self._pending)
            later, versions = self._later, self._versions
        finally:
            self._pending, self._later, self._versions, self._defer = [], [], [], ()
        self._buffers = used
        ready = []
        for device in devices:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            ready.append(event.synchronize)
        return Snapshot(copied, tuple(ready), later, versions)

    def _copy(
        self,
        obj: Any,
        where: str,
        used: dict[_StorageKey, torch.UntypedStorage],
        devices: set[torch.device],
    ) -> Any:
        kind = type(obj)
        if kind in _SCALARS:
            return obj
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(obj, where, used, devices)
        if kind is tuple or kind is list:
            types = set(map(type, obj))
            if types <= _SCALARS:  # e.g. the RNG's 625 ints: one pass at C speed
                return obj if kind is tuple else list(obj)
            if types <= _ROWS and all(set(map(type, row)) <= _SCALARS for row in obj):
                return kind(row if type(row) is tuple else list(row) for row in obj)  # a history
            return kind(self._copy(v, f"{where}[{i}]", used, devices) for i, v in enumerate(obj))
        if isinstance(obj, dict) and kind.__module__ in ("builtins", "collections"):
            check_plain_types(dict.fromkeys(obj), where)  # the keys
            new = {} if kind is dict else copy.copy(obj)  # an OrderedDict keeps its _metadata
            for key, value in obj.items():
                new[key] = self._copy(value, f"{where}[{key!r}]", used, devices)
            if kind is not dict and getattr(obj, "__dict__", None):
                new.__dict__ = copy.deepcopy(obj.__dict__)
            return new
        check_plain_types(obj, where)  # raises, naming where and the type
        raise TypeError(f"{where} is a {kind.__qualname__}, which cannot be snapshotted")

    def _copy_tensor(
        self,
        t: torch.Tensor,
        where: str,
        used: dict[_StorageKey, torch.UntypedStorage],
        devices: set[torch.device],
    ) -> torch.Tensor:
        if not _plain_strided(t):  # sparse, quantized, subclasses, ...: a plain copy
            return t.detach().to("cpu", copy=True)
        source = t.untyped_storage()
        size = source.nbytes()
        key = (source.data_ptr(), size, str(t.device))
        staged = used.get(key) if size else None
        if staged is None:
            staged = self._buffers.get(key) if size else None
            cuda = t.device.type == "cuda"
            if staged is None or staged.nbytes() != size:
                staged = torch.empty(size, dtype=torch.uint8, pin_memory=cuda).untyped_storage()
            if size:
                target = torch.empty(0, dtype=torch.uint8).set_(staged)
                origin = torch.empty(0, dtype=torch.uint8, device=t.device).set_(source)
                if t.device.type == "cpu":  # plain memcpys, without the GIL (torch's copy_
                    pair = (target.numpy(), origin.numpy())  # wakes its team)
                    if source.data_ptr() in self._defer:
                        self._later.append(pair)
                    else:
                        self._pending.append(pair)
                else:
                    target.copy_(origin, non_blocking=cuda)
                used[key] = staged
                if cuda:
                    devices.add(t.device)
        if key[0] in self._defer and t.device.type == "cpu":
            self._versions.append((t, t._version, where))
        copied = torch.empty(0, dtype=t.dtype).set_(
            staged, t.storage_offset(), t.size(), t.stride()
        )
        if type(t) is torch.nn.Parameter:
            return torch.nn.Parameter(copied, requires_grad=t.requires_grad)
        return copied.requires_grad_(t.requires_grad) if t.requires_grad else copied
