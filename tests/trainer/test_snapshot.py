"""Snapshots for asynchronous saves: every tensor copied (views, ties and strides kept), buffers
reused, the copy shared among threads in slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trainer.checkpoints.snapshot as snapshot_module
from trainer.checkpoints.snapshot import StagingArea


def test_a_snapshot_copies_every_tensor_keeping_views_ties_and_strides() -> None:
    base = torch.arange(24.0).reshape(4, 6)
    state = torch.nn.Linear(3, 2).state_dict()  # an OrderedDict carrying _metadata
    payload = {
        "model": state,
        "tied": [base, base],  # one storage, twice
        "view": base[1:, ::2],  # offset and strides into the same storage
        "transposed": base.t(),
        "param": torch.nn.Parameter(torch.ones(3)),
        "ints": torch.arange(5),
        "empty": torch.zeros(0),
        "rng": (3, tuple(range(625)), None),
        "history": {"loss": [[1, 0.5], [2, 0.25]]},
    }
    expected = {
        k: [t.clone() for t in v] if k == "tied" else v.clone()
        for k, v in payload.items()
        if k in ("tied", "view", "transposed", "param", "ints")
    }
    staging = StagingArea()
    snap = staging.snapshot(payload)
    snap.wait()
    first_buffer = snap.payload["tied"][0].untyped_storage().data_ptr()
    with torch.no_grad():  # training goes on: the snapshot must not see it
        base.add_(100.0)
        payload["param"].mul_(7.0)
    copy = snap.payload
    assert all(torch.equal(a, b) for a, b in zip(copy["tied"], expected["tied"], strict=True))
    for key in ("view", "transposed", "param", "ints"):
        assert torch.equal(copy[key], expected[key]) and copy[key].stride() == payload[key].stride()
    ptr = copy["tied"][0].untyped_storage().data_ptr
    assert ptr() == copy["tied"][1].untyped_storage().data_ptr()  # still tied
    assert copy["view"].untyped_storage().data_ptr() == ptr() != base.untyped_storage().data_ptr()
    assert type(copy["param"]) is torch.nn.Parameter and copy["param"].requires_grad
    assert copy["model"]._metadata == state._metadata and list(copy["model"]) == list(state)
    assert copy["rng"] == payload["rng"] and copy["history"] == payload["history"]
    assert copy["history"]["loss"] is not payload["history"]["loss"]  # containers rebuilt
    again = staging.snapshot(payload).payload  # the buffers are reused, with the new values
    assert again["tied"][0].untyped_storage().data_ptr() == first_buffer
    assert torch.equal(again["view"], base[1:, ::2])
    with pytest.raises(TypeError, match=r"payload\['history'\]\['x'\] is a numpy.ndarray"):
        staging.snapshot({"history": {"x": np.zeros(2)}})


@pytest.mark.parametrize("shared", [True, False])
def test_a_snapshot_shared_among_copy_threads_in_slices_copies_every_byte(
    monkeypatch: pytest.MonkeyPatch, shared: bool
) -> None:
    monkeypatch.setattr(snapshot_module, "COPY_SLICE", 1000)  # slices end inside elements
    monkeypatch.setattr(snapshot_module, "SHARE_BYTES", 1 if shared else 1 << 62)
    generator = torch.Generator().manual_seed(0)
    payload = {
        "a": torch.randn(3001, generator=generator),
        "b": [torch.randint(0, 1 << 30, (77, 13), generator=generator), torch.zeros(0)],
        "c": torch.randn(5, 7, generator=generator).t(),
    }
    snap = StagingArea().snapshot(payload)
    snap.wait()
    assert torch.equal(snap.payload["a"], payload["a"])
    assert torch.equal(snap.payload["b"][0], payload["b"][0]) and snap.payload["b"][1].numel() == 0
    assert torch.equal(snap.payload["c"], payload["c"])
    assert snap.payload["c"].stride() == payload["c"].stride()
