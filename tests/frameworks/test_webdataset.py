"""webdataset through make_loader: its deterministic shard shuffle follows the epoch, and resumes."""

from __future__ import annotations

import warnings

import pytest

wds = pytest.importorskip(
    "webdataset", reason="webdataset is an optional test dependency (extra 'frameworks')"
)

from statefuldata import make_loader, verify_resume  # noqa: E402

SHARDS, PER_SHARD, BATCH = 4, 6, 3
WORKERS = [
    pytest.param(0, False, id="0-workers"),
    pytest.param(2, False, id="2-workers", marks=pytest.mark.slow),
    pytest.param(2, True, id="2-persistent-workers", marks=pytest.mark.slow),
]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def to_id(sample: dict) -> int:
    return int(sample["cls"])


@pytest.fixture(scope="module")
def urls(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    out = []
    for shard in range(SHARDS):
        path = str(root / f"shard-{shard}.tar")
        with wds.TarWriter(path) as writer:
            for i in range(PER_SHARD):
                writer.write(
                    {"__key__": f"{shard}-{i}", "cls": str(shard * PER_SHARD + i).encode()}
                )
        out.append(path)
    return out


def _factory(urls, num_workers: int, persistent: bool):
    def build():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stream = wds.WebDataset(
                urls, shardshuffle=SHARDS, seed=7, detshuffle=True, empty_check=False
            ).map(to_id)
        return make_loader(
            stream, batch_size=BATCH, num_workers=num_workers, persistent_workers=persistent
        )

    return build


def _shard_order(ids: list[int]) -> list[int]:
    return list(dict.fromkeys(i // PER_SHARD for i in ids))


@pytest.mark.parametrize(("num_workers", "persistent"), WORKERS)
def test_each_epoch_is_a_whole_pass_in_that_epochs_shard_order(urls, num_workers, persistent):
    loader = _factory(urls, num_workers, persistent)()
    passes = [[i for batch in loader for i in batch.tolist()] for _ in range(4)]
    assert all(sorted(p) == list(range(SHARDS * PER_SHARD)) for p in passes)
    # without the forwarded epoch, fresh workers would shuffle the shards of epoch 0 every time
    assert len({tuple(_shard_order(p)) for p in passes}) > 1
    again = _factory(urls, num_workers, persistent)()
    assert [[i for batch in again for i in batch.tolist()] for _ in range(4)] == passes


@pytest.mark.parametrize(("num_workers", "persistent"), WORKERS)
def test_verify_resume_passes_at_every_point(urls, num_workers, persistent, caplog) -> None:
    report = verify_resume(_factory(urls, num_workers, persistent), epochs=2)
    assert report.ok, report.first_mismatch
    assert report.points == tuple(range(report.total_batches + 1)) and report.total_batches == 16
    if num_workers == 0:  # webdataset has no state: restores skip, and say how to avoid it
        assert "skip-based fallback" in caplog.text
