"""Declarative recipes: ``LoaderSpec`` and ``PipelineSpec`` build the same objects as the imperative path.

``PipelineSpec(...).build()`` equals ``DataLoaderManager([make_loader(...) ...], train_config=
MultiDataLoaderConfig(...))`` with the same arguments: same schedules, batches and state.
``to_dict()`` is a plain-typed snapshot (datasets described by class name and length) that the trainer
stores as the checkpoint's ``config_snapshot``.
"""

from __future__ import annotations

from typing import Any

import attrs

# The config's own converters: the spec reads and compares the mixing arguments exactly as the config
# does (and the config, built from them, validates them).
from statefuldata.config import (
    EpochLengthPolicy,
    MultiDataLoaderConfig,
    SamplingStrategy,
    _to_bool,
    _to_pattern,
    _to_policy,
    _to_strategy,
)
from statefuldata.loader import make_loader
from statefuldata.manager import DataLoaderManager
from statefuldata.persample import PER_SAMPLE_SEED_DEFAULT
from statefuldata.validators import int_at_least, numpy_int_to_int

__all__ = ["LoaderSpec", "PipelineSpec"]


def _describe(dataset: Any) -> dict[str, Any]:
    try:
        length: int | None = len(dataset)
    except TypeError:
        length = None
    return {"class": type(dataset).__name__, "length": length}


@attrs.frozen(kw_only=True)
class LoaderSpec:
    """How to load one dataset. ``seed=None`` takes the pipeline's seed.

    ``per_sample_seed`` and ``shuffle_buffer_size`` are :func:`statefuldata.make_loader`'s options
    of the same names (per-sample seeded global RNGs; a :class:`statefuldata.ShuffleBuffer` for
    ``shuffle=True`` on an iterable).

    Example:
        >>> LoaderSpec(name="digits", dataset=list(range(10)), batch_size=4, shuffle=True).to_dict()["dataset"]
        {'class': 'list', 'length': 10}
    """

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    dataset: Any = attrs.field(eq=False)
    batch_size: int = attrs.field(default=1, validator=int_at_least(1, single=True))
    shuffle: bool = False
    num_workers: int = attrs.field(default=0, validator=int_at_least(0, single=True))
    weight: float | None = None
    drop_last: bool = False
    seed: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(int_at_least(0, single=True))
    )
    per_sample_seed: bool = attrs.field(
        default=PER_SAMPLE_SEED_DEFAULT, validator=attrs.validators.instance_of(bool)
    )
    shuffle_buffer_size: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(int_at_least(1, single=True))
    )
    loader_kwargs: dict[str, Any] = attrs.field(factory=dict, eq=False)

    def build(self, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> Any:
        return make_loader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            seed=seed if self.seed is None else self.seed,
            num_workers=self.num_workers,
            drop_last=self.drop_last,
            rank=rank,
            world_size=world_size,
            per_sample_seed=self.per_sample_seed,
            shuffle_buffer_size=self.shuffle_buffer_size,
            **self.loader_kwargs,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": _describe(self.dataset),
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "num_workers": self.num_workers,
            "weight": self.weight,
            "drop_last": self.drop_last,
            "seed": self.seed,
            "per_sample_seed": self.per_sample_seed,
            "shuffle_buffer_size": self.shuffle_buffer_size,
        }


def _loader_specs(value: Any) -> tuple[LoaderSpec, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class PipelineSpec:
    """A whole data pipeline: train (and optional val) loaders and how they are mixed.

    The mixing arguments (``sampling_strategy``, ``epoch_length_policy``, ``steps_per_epoch``,
    ``alternating_pattern``, ``cycle_short_loaders``, ``burst_size``) take
    :class:`~statefuldata.MultiDataLoaderConfig`'s converters, and with the loaders' names and weights
    they build the one config the spec holds (``mixing``, also :meth:`train_config`), once, at
    construction: ``sampling_strategy="weighted"`` gives the same spec as
    ``SamplingStrategy.WEIGHTED``, a bad value raises the config's error, and ``attrs.evolve``
    rebuilds the config from the changed arguments.

    Example:
        >>> spec = PipelineSpec(
        ...     loaders=[LoaderSpec(name="a", dataset=list(range(8)), batch_size=2, weight=0.75),
        ...              LoaderSpec(name="b", dataset=list(range(8)), batch_size=2, weight=0.25)],
        ...     sampling_strategy="weighted", epoch_length_policy="fixed_num_steps", steps_per_epoch=4)
        >>> spec.sampling_strategy
        <SamplingStrategy.WEIGHTED: 'weighted'>
        >>> [name for _, name, _ in spec.build().create_epoch_iterator("train", 0)]
        ['a', 'a', 'a', 'b']
    """

    loaders: tuple[LoaderSpec, ...] = attrs.field(converter=_loader_specs)
    sampling_strategy: SamplingStrategy = attrs.field(
        default=SamplingStrategy.SEQUENTIAL, converter=_to_strategy
    )
    epoch_length_policy: EpochLengthPolicy = attrs.field(
        default=EpochLengthPolicy.SUM_OF_LENGTHS, converter=_to_policy
    )
    steps_per_epoch: int | None = attrs.field(default=None, converter=numpy_int_to_int)
    seed: int = attrs.field(default=0, validator=int_at_least(0, single=True))
    alternating_pattern: tuple[int, ...] | None = attrs.field(default=None, converter=_to_pattern)
    cycle_short_loaders: bool = attrs.field(default=True, converter=_to_bool)
    burst_size: int = attrs.field(default=1, converter=numpy_int_to_int)
    val_loaders: tuple[LoaderSpec, ...] = attrs.field(default=(), converter=_loader_specs)
    rank: int = 0
    world_size: int = 1
    #: The train loaders' mixing config, built from the fields above (derived: not compared).
    mixing: MultiDataLoaderConfig = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.loaders:
            raise ValueError("PipelineSpec needs at least one LoaderSpec in 'loaders' (got none)")
        weights = [spec.weight for spec in self.loaders]
        mixing = MultiDataLoaderConfig(  # validates strategy, weights and names once, here
            sampling_strategy=self.sampling_strategy,
            dataloader_weights=None if all(w is None for w in weights) else weights,
            alternating_pattern=self.alternating_pattern,
            dataloader_names=[spec.name for spec in self.loaders],
            epoch_length_policy=self.epoch_length_policy,
            steps_per_epoch=self.steps_per_epoch,
            cycle_short_loaders=self.cycle_short_loaders,
            burst_size=self.burst_size,
            choice_rng_seed=self.seed,
        )
        object.__setattr__(self, "mixing", mixing)
        if self.val_loaders:
            self.val_config()

    def train_config(self) -> MultiDataLoaderConfig:
        """The train loaders' :class:`~statefuldata.MultiDataLoaderConfig` (held, not rebuilt)."""
        return self.mixing

    def val_config(self) -> MultiDataLoaderConfig:
        return MultiDataLoaderConfig(
            sampling_strategy=SamplingStrategy.SEQUENTIAL,
            dataloader_names=[spec.name for spec in self.val_loaders],
        )

    def build(self) -> DataLoaderManager:
        def make(specs: tuple[LoaderSpec, ...]) -> list[Any]:
            return [
                s.build(seed=self.seed, rank=self.rank, world_size=self.world_size) for s in specs
            ]

        manager = DataLoaderManager(
            make(self.loaders),
            make(self.val_loaders) or None,
            train_config=self.train_config(),
            val_config=self.val_config() if self.val_loaders else None,
        )
        manager.config_snapshot = self.to_dict()
        return manager

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed snapshot (JSON-serialisable) of the recipe."""
        return {
            "loaders": [spec.to_dict() for spec in self.loaders],
            "val_loaders": [spec.to_dict() for spec in self.val_loaders],
            "train_config": self.train_config().to_dict(),
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
        }
