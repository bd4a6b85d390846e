from __future__ import annotations

import io
import json

import pytest
import torch

from statefuldata import (
    DataLoaderManager,
    LoaderSpec,
    MultiDataLoaderConfig,
    PipelineSpec,
    make_loader,
    verify_resume,
)
from tests.data import CountingStream, Ids, PlainStream


def spec() -> PipelineSpec:
    return PipelineSpec(
        loaders=[
            LoaderSpec(name="images", dataset=Ids(30), batch_size=4, shuffle=True, weight=0.5),
            LoaderSpec(
                name="captions", dataset=CountingStream(20, offset=100), batch_size=2, weight=0.3
            ),
            LoaderSpec(name="logs", dataset=PlainStream(12, offset=200), batch_size=3, weight=0.2),
        ],
        sampling_strategy="weighted",
        epoch_length_policy="fixed_num_steps",
        steps_per_epoch=17,
        seed=9,
    )


def imperative() -> DataLoaderManager:
    return DataLoaderManager(
        [
            make_loader(Ids(30), batch_size=4, shuffle=True, seed=9),
            make_loader(CountingStream(20, offset=100), batch_size=2, seed=9),
            make_loader(PlainStream(12, offset=200), batch_size=3, seed=9),
        ],
        train_config=MultiDataLoaderConfig(
            sampling_strategy="weighted",
            dataloader_weights=[0.5, 0.3, 0.2],
            dataloader_names=["images", "captions", "logs"],
            epoch_length_policy="fixed_num_steps",
            steps_per_epoch=17,
            choice_rng_seed=9,
        ),
    )


def run(manager: DataLoaderManager, epochs: int = 2):
    out = []
    for epoch in range(epochs):
        it = manager.create_epoch_iterator("train", epoch)
        out.append((it.schedule, [(name, batch.tolist()) for _, name, batch in it]))
    return out


def saved(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_declarative_and_imperative_build_the_same_pipeline() -> None:
    declared, built = spec().build(), imperative()
    assert run(declared) == run(built)
    assert declared.fingerprint() == built.fingerprint()
    a, b = declared.state_dict(), built.state_dict()
    assert torch.load(io.BytesIO(saved(a)), weights_only=True).keys() == b.keys()
    assert a["train_iterator_state"]["loader_states"] == b["train_iterator_state"]["loader_states"]
    assert a["train_iterator_state"]["fingerprint"] == b["train_iterator_state"]["fingerprint"]
    # a state from one path loads into the other
    fresh = spec().build()
    fresh.load_state_dict(b)


def test_to_dict_is_plain_and_round_trips_through_json() -> None:
    snapshot = spec().to_dict()
    assert json.loads(json.dumps(snapshot)) == snapshot
    assert snapshot["loaders"][0]["dataset"] == {"class": "Ids", "length": 30}
    assert snapshot["loaders"][1]["dataset"] == {"class": "CountingStream", "length": 20}
    assert MultiDataLoaderConfig.from_dict(snapshot["train_config"]) == spec().train_config()
    assert spec().build().config_snapshot == snapshot


def test_spec_pipeline_resumes_exactly() -> None:
    report = verify_resume(lambda: spec().build().as_loader(), epochs=2, points=range(35))
    assert report.ok, report.first_mismatch


def test_spec_validation() -> None:
    with pytest.raises(
        ValueError, match=r"needs at least one LoaderSpec in 'loaders' \(got none\)"
    ):
        PipelineSpec(loaders=[])
    with pytest.raises(ValueError, match=r"'batch_size' must be an int >= 1 \(got 0\)"):
        LoaderSpec(name="a", dataset=Ids(3), batch_size=0)
    with pytest.raises(ValueError, match=r"must be unique \(got \[.a., .a.\]; repeated: \[.a.\]\)"):
        PipelineSpec(
            loaders=[LoaderSpec(name="a", dataset=Ids(3)), LoaderSpec(name="a", dataset=Ids(3))]
        )


def _mixed(**mixing) -> PipelineSpec:
    loaders = [
        LoaderSpec(name="a", dataset=Ids(8), batch_size=2, weight=0.75),
        LoaderSpec(name="b", dataset=Ids(8), batch_size=2, weight=0.25),
    ]
    return PipelineSpec(loaders=loaders, steps_per_epoch=6, **mixing)


def test_string_modes_give_the_same_spec_as_the_enum_form() -> None:
    from statefuldata import EpochLengthPolicy, SamplingStrategy

    by_string = _mixed(sampling_strategy="weighted", epoch_length_policy="FIXED_NUM_STEPS")
    by_enum = _mixed(
        sampling_strategy=SamplingStrategy.WEIGHTED,
        epoch_length_policy=EpochLengthPolicy.FIXED_NUM_STEPS,
    )
    assert by_string == by_enum and hash(by_string) == hash(by_enum)
    assert by_string.sampling_strategy is SamplingStrategy.WEIGHTED
    assert by_string.epoch_length_policy is EpochLengthPolicy.FIXED_NUM_STEPS
    assert by_string.train_config() is by_string.mixing  # held, not rebuilt per call
    assert by_string.mixing == MultiDataLoaderConfig(
        sampling_strategy=SamplingStrategy.WEIGHTED,
        dataloader_weights=[0.75, 0.25],
        dataloader_names=["a", "b"],
        epoch_length_policy=EpochLengthPolicy.FIXED_NUM_STEPS,
        steps_per_epoch=6,
    )
    assert by_string.to_dict() == by_enum.to_dict()
    assert run(by_string.build(), epochs=1) == run(by_enum.build(), epochs=1)
    assert by_string != _mixed(
        sampling_strategy="weighted_random", epoch_length_policy="fixed_num_steps"
    )


def test_mixing_arguments_get_the_configs_converters_and_checks() -> None:
    with pytest.raises(
        ValueError,
        match=r"'sampling_strategy' must be one of 'sequential', 'round_robin', 'weighted', "
        r"'weighted_random', 'alternating' \(got 'weigthed'\)",
    ):
        _mixed(sampling_strategy="weigthed")
    with pytest.raises(ValueError, match=r"'epoch_length_policy' must be one of .* \(got 'max'\)"):
        _mixed(epoch_length_policy="max")
    with pytest.raises(
        ValueError, match=r"'burst_size' must be >= 1 \(got 0\); use 1 for no bursts"
    ):
        _mixed(burst_size=0, epoch_length_policy="fixed_num_steps")
    with pytest.raises(
        TypeError, match=r"'cycle_short_loaders' must be True or False \(got 'no'\)"
    ):
        _mixed(cycle_short_loaders="no", epoch_length_policy="fixed_num_steps")
    with pytest.raises(ValueError, match=r"'seed' must be an int >= 0 \(got -1\)"):
        _mixed(seed=-1)
    pattern = _mixed(sampling_strategy="alternating", alternating_pattern=[0, 0, 1])
    assert pattern.alternating_pattern == (0, 0, 1)  # the config's converter: a tuple


def test_attrs_evolve_rebuilds_the_held_config_from_the_changed_arguments() -> None:
    import attrs

    from statefuldata import SamplingStrategy

    spec = _mixed(sampling_strategy="weighted", epoch_length_policy="fixed_num_steps")
    mixed = attrs.evolve(spec, sampling_strategy="round_robin", seed=3)
    assert mixed.sampling_strategy is SamplingStrategy.ROUND_ROBIN
    assert mixed.mixing.sampling_strategy is SamplingStrategy.ROUND_ROBIN
    assert mixed.mixing.choice_rng_seed == 3
    assert mixed.steps_per_epoch == spec.steps_per_epoch == 6  # unchanged arguments are kept
    assert attrs.evolve(spec) == spec
    with pytest.raises(ValueError, match=r"'sampling_strategy' must be one of .* \(got 'nope'\)"):
        attrs.evolve(spec, sampling_strategy="nope")
