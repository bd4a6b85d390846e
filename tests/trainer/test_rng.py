from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.rng import RNG_KEYS, capture_rng_states, restore_rng_states


def _round_trip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _draw() -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.standard_normal(3).tolist(),
        torch.rand(4),
        torch.randint(0, 1000, (3,)),
    )


def _assert_same(a: tuple, b: tuple) -> None:
    assert a[:4] == b[:4]
    assert torch.equal(a[4], b[4]) and torch.equal(a[5], b[5])


def test_capture_returns_the_spec_shape_in_plain_types() -> None:
    states = capture_rng_states()
    assert tuple(states) == RNG_KEYS
    assert isinstance(states["python_random"], tuple)
    name, keys, pos, has_gauss, cached = states["numpy_random"]
    assert name == "MT19937" and isinstance(keys, torch.Tensor) and keys.dtype == torch.int64
    assert (
        keys.shape == (624,)
        and type(pos) is int
        and type(has_gauss) is int
        and type(cached) is float
    )
    assert (
        isinstance(states["torch_cpu"], torch.Tensor) and states["torch_cpu"].dtype == torch.uint8
    )
    if torch.cuda.is_available():
        assert isinstance(states["torch_cuda"], list)
    else:
        assert states["torch_cuda"] is None


def test_draws_after_restore_equal_draws_after_capture_through_weights_only_load() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave cached gaussians in Python's and numpy's state
    np.random.standard_normal()
    states = capture_rng_states()
    expected = _draw()
    _draw()  # move on
    restore_rng_states(_round_trip(states))
    _assert_same(_draw(), expected)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), before=st.integers(0, 20))
def test_restore_at_any_point_reproduces_the_stream(seed: int, before: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    for _ in range(before):
        _draw()
    states = _round_trip(capture_rng_states())
    expected = [_draw() for _ in range(2)]
    random.seed(seed + 1)
    restore_rng_states(states)
    for want in expected:
        _assert_same(_draw(), want)


def test_capture_is_a_copy() -> None:
    states = capture_rng_states()
    before = states["torch_cpu"].clone()
    torch.rand(10)
    assert torch.equal(states["torch_cpu"], before)


def test_restore_is_strict_about_keys() -> None:
    states = capture_rng_states()
    del states["numpy_random"]
    states["jax"] = None
    with pytest.raises(ValueError, match=r"missing \['numpy_random'\], unknown \['jax'\]"):
        restore_rng_states(states)


def test_restore_rejects_a_bad_torch_state() -> None:
    states = capture_rng_states()
    states["torch_cpu"] = [1, 2]
    with pytest.raises(ValueError, match=r"'torch_cpu'\] must be a uint8 tensor \(got list\)"):
        restore_rng_states(states)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_cuda_states_saved_elsewhere_are_skipped_with_a_warning(caplog) -> None:
    states = capture_rng_states()
    states["torch_cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    restore_rng_states(states)
    assert "CUDA is unavailable" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_round_trip() -> None:
    torch.cuda.manual_seed_all(7)
    states = _round_trip(capture_rng_states())
    assert (
        isinstance(states["torch_cuda"], list)
        and len(states["torch_cuda"]) == torch.cuda.device_count()
    )
    expected = torch.rand(5, device="cuda")
    torch.rand(5, device="cuda")
    restore_rng_states(states)
    assert torch.equal(torch.rand(5, device="cuda"), expected)


def test_the_trainer_saves_numpy_global_state_with_the_same_conversion() -> None:
    from statefuldata.seeding import mt19937_to_plain
    from trainer.rng import KEY_NUMPY

    np.random.seed(3)
    ours = mt19937_to_plain(np.random.get_state(legacy=True))
    saved = capture_rng_states()[KEY_NUMPY]
    assert saved[0] == ours[0] and saved[2:] == ours[2:] and torch.equal(saved[1], ours[1])
