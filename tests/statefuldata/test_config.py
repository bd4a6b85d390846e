from __future__ import annotations

import logging

import attrs
import numpy as np
import pytest
import torch

from statefuldata.config import EpochLengthPolicy, MultiDataLoaderConfig, SamplingStrategy


def weighted(weights: object, **kwargs: object) -> MultiDataLoaderConfig:
    return MultiDataLoaderConfig(sampling_strategy="weighted", dataloader_weights=weights, **kwargs)


def test_enum_values_are_lowercase_strings() -> None:
    assert [s.value for s in SamplingStrategy] == [
        "sequential",
        "round_robin",
        "weighted",
        "weighted_random",
        "alternating",
    ]
    assert [p.value for p in EpochLengthPolicy] == [
        "sum_of_lengths",
        "max_of_lengths",
        "min_of_lengths",
        "fixed_num_steps",
    ]


def test_defaults() -> None:
    cfg = MultiDataLoaderConfig()
    assert cfg.sampling_strategy is SamplingStrategy.SEQUENTIAL
    assert cfg.epoch_length_policy is EpochLengthPolicy.SUM_OF_LENGTHS
    assert cfg.dataloader_weights is None
    assert cfg.alternating_pattern is None
    assert cfg.dataloader_names is None
    assert cfg.steps_per_epoch is None
    assert cfg.cycle_short_loaders is True
    assert cfg.burst_size == 1
    assert cfg.choice_rng_seed == 0


def test_strings_and_lists_are_converted() -> None:
    cfg = MultiDataLoaderConfig(
        sampling_strategy="WEIGHTED_RANDOM",
        dataloader_weights=[1, np.float64(2.5)],
        dataloader_names=["a", "b"],
        epoch_length_policy="fixed_num_steps",
        steps_per_epoch=np.int64(7),
    )
    assert cfg.sampling_strategy is SamplingStrategy.WEIGHTED_RANDOM
    assert cfg.epoch_length_policy is EpochLengthPolicy.FIXED_NUM_STEPS
    assert cfg.dataloader_weights == (1.0, 2.5)
    assert cfg.dataloader_names == ("a", "b")
    assert type(cfg.steps_per_epoch) is int
    alt = MultiDataLoaderConfig(sampling_strategy="alternating", alternating_pattern=[0, 0, 1])
    assert alt.alternating_pattern == (0, 0, 1)


def test_frozen_hashable_and_evolve_revalidates() -> None:
    cfg = weighted([0.5, 0.5])
    assert cfg == weighted((0.5, 0.5))
    assert hash(cfg) == hash(weighted((0.5, 0.5)))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.burst_size = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"'burst_size' must be >= 1 \(got 0\)"):
        attrs.evolve(cfg, burst_size=0)


def test_dict_round_trip_is_plain_and_safe_to_load(tmp_path) -> None:
    cfg = MultiDataLoaderConfig(
        sampling_strategy=SamplingStrategy.ALTERNATING,
        alternating_pattern=(0, 1, 1),
        dataloader_names=("a", "b"),
        epoch_length_policy=EpochLengthPolicy.MAX_OF_LENGTHS,
        cycle_short_loaders=False,
        burst_size=3,
        choice_rng_seed=11,
    )
    data = cfg.to_dict()
    assert data == {
        "sampling_strategy": "alternating",
        "dataloader_weights": None,
        "alternating_pattern": [0, 1, 1],
        "dataloader_names": ["a", "b"],
        "epoch_length_policy": "max_of_lengths",
        "steps_per_epoch": None,
        "cycle_short_loaders": False,
        "burst_size": 3,
        "choice_rng_seed": 11,
    }
    torch.save(data, tmp_path / "cfg.pt")
    loaded = torch.load(tmp_path / "cfg.pt", weights_only=True)
    assert MultiDataLoaderConfig.from_dict(loaded) == cfg
    assert MultiDataLoaderConfig.from_dict({}) == MultiDataLoaderConfig()


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown MultiDataLoaderConfig keys \['weights'\]"):
        MultiDataLoaderConfig.from_dict({"weights": [1.0]})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sampling_strategy": "shuffled"}, ValueError, r"'sampling_strategy' must be one of "
         r"'sequential', 'round_robin', 'weighted', 'weighted_random', 'alternating' \(got 'shuffled'\)"),
        ({"epoch_length_policy": "longest"}, ValueError, r"'epoch_length_policy' must be one of "
         r"'sum_of_lengths', 'max_of_lengths', 'min_of_lengths', 'fixed_num_steps'"),
        ({"sampling_strategy": 3}, ValueError, r"must be one of .* \(got 3\)"),
        ({"dataloader_weights": []}, ValueError, r"'dataloader_weights' must not be empty \(got \[\]\)"),
        ({"dataloader_weights": [0.5, -0.1]}, ValueError, r"'dataloader_weights\[1\]' must be >= 0 \(got -0.1\)"),
        ({"dataloader_weights": [0.0, 0.0]}, ValueError, r"must have a positive sum \(got \[0.0, 0.0\]\)"),
        ({"dataloader_weights": [float("nan"), 1.0]}, ValueError, r"'dataloader_weights\[0\]' must be finite \(got nan\)"),
        ({"dataloader_weights": [float("inf"), 1.0]}, ValueError, r"must be finite \(got inf\)"),
        ({"dataloader_weights": ["0.5"]}, TypeError, r"'dataloader_weights\[0\]' must be a number"),
        ({"dataloader_weights": 0.5}, TypeError, r"'dataloader_weights' must be a list or tuple \(got 0.5\)"),
        ({"sampling_strategy": "weighted"}, ValueError, r"sampling_strategy='weighted' needs 'dataloader_weights' \(got None\)"),
        ({"sampling_strategy": "weighted_random"}, ValueError, r"'weighted_random' needs 'dataloader_weights'"),
        ({"sampling_strategy": "alternating"}, ValueError, r"'alternating' needs 'alternating_pattern' \(got None\)"),
        ({"alternating_pattern": []}, ValueError, r"'alternating_pattern' must not be empty"),
        ({"alternating_pattern": [0, -1]}, ValueError, r"'alternating_pattern\[1\]' must be a loader index >= 0 \(got -1\)"),
        ({"alternating_pattern": [0, 1.0]}, TypeError, r"'alternating_pattern\[1\]' must be a loader index"),
        ({"burst_size": 0}, ValueError, r"'burst_size' must be >= 1 \(got 0\); use 1 for no bursts"),
        ({"burst_size": True}, TypeError, r"'burst_size' must be an int \(got True\)"),
        ({"epoch_length_policy": "fixed_num_steps"}, ValueError, r"'fixed_num_steps' needs 'steps_per_epoch' \(got None\)"),
        ({"steps_per_epoch": -1}, ValueError, r"'steps_per_epoch' must be >= 0 \(got -1\)"),
        ({"dataloader_names": ["a", "b", "a"]}, ValueError, r"'dataloader_names' must be unique .*repeated: \['a'\]"),
        ({"dataloader_names": "ab"}, TypeError, r"'dataloader_names' must be a list or tuple"),
        ({"choice_rng_seed": -3}, ValueError, r"'choice_rng_seed' must be >= 0 \(got -3\)"),
        ({"cycle_short_loaders": "yes"}, TypeError, r"'cycle_short_loaders' must be True or False"),
    ],
)  # fmt: skip
def test_bad_config_raises_clear_error(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        MultiDataLoaderConfig(**kwargs)


def test_unused_fields_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="statefuldata.config"):
        MultiDataLoaderConfig(sampling_strategy="round_robin", dataloader_weights=[1.0, 2.0])
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "dataloader_weights ignored" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="statefuldata.config"):
        weighted([1.0, 2.0])
    assert caplog.records == []


def test_validate_for_accepts_a_fitting_config() -> None:
    weighted([0.2, 0.8], dataloader_names=["a", "b"]).validate_for(2, ["a", "b"])
    MultiDataLoaderConfig(sampling_strategy="alternating", alternating_pattern=[2, 0]).validate_for(
        3
    )
    MultiDataLoaderConfig().validate_for(5, names=["a", "b", "c", "d", "e"])


@pytest.mark.parametrize(
    ("cfg", "num", "names", "match"),
    [
        (weighted([0.5, 0.5]), 3, None, r"'dataloader_weights' has 2 entries \[0.5, 0.5\] but there are 3 loaders"),
        (MultiDataLoaderConfig(sampling_strategy="alternating", alternating_pattern=[0, 1, 2]), 2, None,
         r"'alternating_pattern\[2\]' is 2, out of range for 2 loaders; use indices 0..1"),
        (MultiDataLoaderConfig(dataloader_names=["a"]), 2, None, r"'dataloader_names' has 1 entries \['a'\] but there are 2 loaders"),
        (MultiDataLoaderConfig(), 2, ["a"], r"got 1 loader names \['a'\] for 2 loaders"),
        (MultiDataLoaderConfig(), 2, ["a", "a"], r"loader names must be unique"),
        (MultiDataLoaderConfig(dataloader_names=["a", "b"]), 2, ["b", "a"], r"differ from the config's 'dataloader_names'"),
        (MultiDataLoaderConfig(), 0, None, r"need at least one loader \(got 0\)"),
    ],
)  # fmt: skip
def test_validate_for_rejects_mismatches(
    cfg: MultiDataLoaderConfig, num: int, names: list[str] | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        cfg.validate_for(num, names)
