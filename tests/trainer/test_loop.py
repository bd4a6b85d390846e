from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.trainer.harness import SignalAt, assert_same, build, loaders, snapshot

EPOCHS = 2
BATCHES = 100 * EPOCHS


def reference(tmp_path_factory, amp: bool):
    log: list = []
    trainer = build(tmp_path_factory.mktemp("ref"), amp=amp, log=log)
    result = trainer.fit(loaders(), max_epochs=EPOCHS)
    assert result.status == "completed" and result.global_step == 100
    return snapshot(trainer), log


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return {amp: reference(tmp_path_factory, amp) for amp in (False, True)}


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(k=st.integers(1, BATCHES - 1), amp=st.booleans())
@example(k=3, amp=False)  # mid accumulation window: the window completes before the save
@example(k=100, amp=False)  # the last batch of epoch 0
@example(k=101, amp=True)  # first batch of epoch 1, bf16 autocast
def test_preempted_and_resumed_equals_uninterrupted(
    uninterrupted, tmp_path_factory, k, amp
) -> None:
    expected, expected_log = uninterrupted[amp]
    root = tmp_path_factory.mktemp("run")
    first_log: list = []
    first = build(root, amp=amp, callbacks=(SignalAt(k),), log=first_log)
    result = first.fit(loaders(), max_epochs=EPOCHS)
    assert result.status == "preempted"
    assert result.global_step == (k + 1) // 2  # the window containing batch k completed
    resumed_log: list = []
    second = build(root, amp=amp, ambient_seed=1234, log=resumed_log)
    assert second.fit(loaders(), max_epochs=EPOCHS).status == "completed"
    assert_same(snapshot(second), expected)
    assert first_log + resumed_log == expected_log
