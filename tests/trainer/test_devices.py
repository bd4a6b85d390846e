"""trainer/devices.py: batches of every container type reach the device with every tensor moved.

The ``meta`` device stands in for CUDA on CPU machines: a tensor moved there changes device, so a
tensor left behind is seen.
"""

from __future__ import annotations

import dataclasses
from collections import UserDict, namedtuple
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import pytest
import torch

from trainer import move_to_device, resolve_device

META = torch.device("meta")


class Pair(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


LegacyPair = namedtuple("LegacyPair", ["x", "label"])


@dataclasses.dataclass
class Sample:
    x: torch.Tensor
    ids: list[int]
    mask: torch.Tensor | None = None
    cached: torch.Tensor = dataclasses.field(init=False, default_factory=lambda: torch.zeros(1))


class Encoding(UserDict):
    """Like Hugging Face's ``BatchEncoding``: a ``UserDict`` subclass with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None


class Frozen(Mapping):
    """A read-only Mapping whose constructor does not take a dict."""

    def __init__(self, **items: Any) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor reachable inside ``obj`` (independent of the code under test)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in tensors_in(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_in(v)]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in tensors_in(getattr(obj, f.name))]
    return []


BATCHES = {
    "tensor": lambda: torch.ones(3),
    "dict": lambda: {"x": torch.ones(2), "ids": [1, 2], "nested": {"m": torch.zeros(2, 2)}},
    "list": lambda: [torch.ones(2), (torch.zeros(1), "text")],
    "tuple": lambda: (torch.ones(2), torch.zeros(2)),
    "namedtuple": lambda: Pair(torch.ones(2), torch.zeros(2)),
    "collections.namedtuple": lambda: LegacyPair(torch.ones(2), 7),
    "dataclass": lambda: Sample(torch.ones(2), [1, 2], mask=torch.ones(2, dtype=torch.bool)),
    "UserDict (BatchEncoding-like)": lambda: Encoding(
        input_ids=torch.ones(2), attention=[torch.ones(1)]
    ),
    "Mapping with another constructor": lambda: Frozen(x=torch.ones(2), n=3),
    "namedtuple in a list in a dict": lambda: {"pairs": [Pair(torch.ones(1), torch.ones(1))]},
}


@pytest.mark.parametrize("kind", list(BATCHES))
def test_every_tensor_is_moved_and_the_container_type_is_kept(kind: str) -> None:
    batch = BATCHES[kind]()
    before = tensors_in(batch)
    assert before and all(t.device.type == "cpu" for t in before)
    moved = move_to_device(batch, META)
    after = tensors_in(moved)
    assert len(after) == len(before), "a tensor was dropped or duplicated"
    assert all(t.device == META for t in after), f"a tensor stayed behind in a {kind}"
    assert [t.shape for t in after] == [t.shape for t in before]
    assert type(moved) is type(batch) or isinstance(batch, Frozen)
    assert all(t.device.type == "cpu" for t in before), "the input batch was modified in place"


def test_non_tensor_leaves_and_attribute_access_survive() -> None:
    moved = move_to_device(BATCHES["UserDict (BatchEncoding-like)"](), META)
    assert moved.input_ids.device == META and isinstance(moved, Encoding)
    sample = move_to_device(BATCHES["dataclass"](), META)
    assert sample.ids == [1, 2] and sample.x.device == META and sample.mask.dtype == torch.bool
    pair = move_to_device(LegacyPair(torch.ones(1), 7), META)
    assert pair.label == 7 and pair._fields == ("x", "label")
    frozen = move_to_device(Frozen(x=torch.ones(2), n=3), META)
    assert frozen["n"] == 3 and frozen["x"].device == META


def test_a_tensor_already_there_is_returned_as_is() -> None:
    t = torch.ones(2)
    assert move_to_device(t, torch.device("cpu")) is t


def test_pinned_memory_is_copied_without_blocking(monkeypatch) -> None:
    calls: list[bool] = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("non_blocking", False))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
    move_to_device(torch.ones(2), META)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    move_to_device(torch.ones(2), META)
    assert calls == [True, False]


def test_auto_is_cpu_without_cuda_and_cuda_without_a_gpu_says_what_to_use() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: 'auto' resolves to it")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device='cuda' but CUDA is not available.*device='auto'"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"'device' must be 'auto', 'cpu'.*got 'gpu0'"):
        resolve_device("gpu0")


def test_fit_hands_the_step_a_namedtuple_batch_on_the_device(tmp_path) -> None:
    from statefuldata import make_loader
    from trainer import CheckpointConfig, GenericTrainer, GenericTrainerConfig

    data = [Pair(torch.full((2,), float(i)), torch.ones(1)) for i in range(8)]
    model = torch.nn.Linear(2, 1)
    config = GenericTrainerConfig(checkpoint=CheckpointConfig(root_dir=tmp_path), device="cpu")
    trainer = GenericTrainer(config, model, torch.optim.SGD(model.parameters(), lr=0.1))
    seen: list[type] = []

    def step(trainer, batch, batch_idx, loader_idx, name):
        seen.append(type(batch))
        return {"loss": torch.nn.functional.mse_loss(trainer.model(batch.x), batch.y)}

    trainer.set_training_step(step)
    result = trainer.fit([make_loader(data, batch_size=4)], max_epochs=1)
    assert result.global_step == 2 and seen == [Pair, Pair]
