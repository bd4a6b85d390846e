from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from statefuldata import derive_seed, sample_rng, seed_everything, seed_worker


def test_derive_seed_splits_never_adds() -> None:
    seeds = {derive_seed(0, a, b) for a in range(20) for b in range(20)}
    assert len(seeds) == 400
    assert derive_seed(1, 0) != derive_seed(0, 1)
    assert derive_seed(5) != derive_seed(5, 0)
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(3, 1, 2) == derive_seed(3, 1, 2)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1,), r"'seed' must be >= 0 \(got -1\)"),
        ((1, 0, -2), r"'path\[1\]' must be >= 0 \(got -2\)"),
    ],
)
def test_derive_seed_bad_input(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        derive_seed(*args)


def test_seed_worker_seeds_all_three_libraries() -> None:
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_worker(1, seed=10, epoch=2, rank=0)
    a = draw()
    seed_worker(1, seed=10, epoch=2, rank=0)
    assert draw() == a
    seed_worker(1, seed=10, epoch=3, rank=0)
    assert draw() != a
    with pytest.raises(RuntimeError, match="must run inside a DataLoader worker"):
        seed_worker(0)


def test_sample_rng_depends_only_on_sample() -> None:
    a = torch.rand(4, generator=sample_rng(1, 0, 5))
    assert torch.equal(a, torch.rand(4, generator=sample_rng(1, 0, 5)))
    assert not torch.equal(a, torch.rand(4, generator=sample_rng(1, 1, 5)))
    assert (
        sample_rng(1, 0, 5, backend="numpy").random()
        == sample_rng(1, 0, 5, backend="numpy").random()
    )
    with pytest.raises(ValueError, match=r"'backend' must be 'torch' or 'numpy' \(got 'jax'\)"):
        sample_rng(1, 0, 5, backend="jax")


def test_seed_everything_is_reproducible() -> None:
    seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())


def test_mt19937_plain_round_trip_is_exact_and_safe_to_load() -> None:
    import io

    from statefuldata.seeding import mt19937_from_plain, mt19937_to_plain

    rs = np.random.RandomState(7)
    rs.standard_normal()  # a cached gaussian is part of the state
    plain = mt19937_to_plain(rs.get_state(legacy=True))
    assert [type(x) for x in plain] == [str, torch.Tensor, int, int, float]
    assert plain[1].dtype == torch.int64 and plain[1].shape == (624,)
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    buffer.seek(0)
    again = np.random.RandomState(0)
    again.set_state(mt19937_from_plain(torch.load(buffer, weights_only=True)))
    assert again.standard_normal() == rs.standard_normal()
    assert again.randint(0, 2**31, size=4).tolist() == rs.randint(0, 2**31, size=4).tolist()
    with pytest.raises(ValueError, match=r"an MT19937 state must be \('MT19937', keys, pos"):
        mt19937_from_plain(("PCG64", plain[1], 0, 0, 0.0))
    with pytest.raises(ValueError, match=r"MT19937 keys must be 624 words .*\(got 2 words\)"):
        mt19937_from_plain(("MT19937", torch.zeros(2, dtype=torch.int64), 0, 0, 0.0))


def test_sample_rng_backend_takes_the_enum_or_its_value() -> None:
    from statefuldata import RngBackend

    by_enum = sample_rng(3, 1, 9, backend=RngBackend.NUMPY)
    assert isinstance(by_enum, np.random.Generator)
    assert by_enum.random() == sample_rng(3, 1, 9, backend="numpy").random()
    g = sample_rng(3, 1, 9, backend=RngBackend.TORCH)
    assert isinstance(g, torch.Generator)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=sample_rng(3, 1, 9)))
