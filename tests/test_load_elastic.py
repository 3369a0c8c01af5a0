"""Elastic resume: the global batch order does not depend on the world size, a state resumes
exactly on another number of ranks, and each rank reads only what it delivers."""
from __future__ import annotations

import pytest
from resume_check import assert_same, check_resume, take
from shard_fixtures import write_stage
from test_load import _rows

from mixdata import load
from mixdata.errors import MixdataError
from mixdata.loading import reader

SIZES = [20, 17, 19, 24]   # 80 sequences: 5 rounds of 2 streams x global batch 8 per epoch
GLOBAL_BATCH, CANONICAL, STREAMS = 8, 4, 2


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("elastic")
    write_stage(folder, SIZES, seed=21)
    return folder


class World:
    """`world` ranks of one job, simulated in one process: iterating yields global batches
    (the rows of rank 0's batch, then rank 1's, ...); the state is the ranks' common one."""

    def __init__(self, stage, world: int, workers: int = 0, **kwargs) -> None:
        self.datasets = [load(stage, batch_size=GLOBAL_BATCH // world, rank=r,
                              world_size=world, seed=3, shuffle_buffer=6, streams=STREAMS,
                              canonical_ranks=CANONICAL, **kwargs) for r in range(world)]
        self.loaders = [ds.loader(num_workers=workers) if workers else ds
                        for ds in self.datasets]

    def __iter__(self):
        iterators = [iter(loader) for loader in self.loaders]
        while True:
            batches = [next(it, None) for it in iterators]
            if all(b is None for b in batches):
                return
            assert all(b is not None for b in batches), "every rank has as many batches"
            yield [row for batch in batches for row in _rows(batch)]

    def state_dict(self) -> dict:
        states = [loader.state_dict() for loader in self.loaders]
        assert all(s == states[0] for s in states), "the position is the same on every rank"
        return states[0]

    def load_state_dict(self, state: dict) -> None:
        for loader in self.loaders:
            loader.load_state_dict(state)


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (2, 4)])
@pytest.mark.parametrize("stop", [6, 13])  # mid-epoch 0, and mid-epoch 1 (10 per epoch)
def test_resume_on_another_world_size_gives_the_uninterrupted_global_batches(
        stage, before, after, stop):
    batches = check_resume(lambda: World(stage, before, epochs=2), total=20, stop=stop,
                           make_resumed=lambda: World(stage, after, epochs=2))
    assert len(batches) == 20 and all(len(b) == GLOBAL_BATCH for b in batches)
    every = [row for batch in batches[:10] for row in batch]
    assert len(set(every)) == len(every)  # an epoch never repeats a sequence


def test_the_global_order_is_the_same_for_every_world_size(stage):
    runs = [list(World(stage, world, epochs=1)) for world in (1, 2, 4)]
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 10


def test_resume_with_dataloader_workers_on_fewer_ranks(stage):
    check_resume(lambda: World(stage, 2, workers=2, epochs=1), total=10, stop=5,
                 make_resumed=lambda: World(stage, 1, workers=2, epochs=1))


def test_each_rank_reads_exactly_what_it_delivers(stage, monkeypatch):
    reads: list[tuple[int, int]] = []
    original = reader.Positions.read

    def recording(self, epoch, start, stop):
        reads.append((start, stop))
        return original(self, epoch, start, stop)

    monkeypatch.setattr(reader.Positions, "read", recording)
    per_rank = []
    for rank in range(2):
        reads.clear()
        ds = load(stage, batch_size=GLOBAL_BATCH // 2, rank=rank, world_size=2, seed=3,
                  streams=STREAMS, canonical_ranks=CANONICAL, epochs=1)
        delivered = sum(len(_rows(b)) for b in ds)
        assert sum(b - a for a, b in reads) == delivered
        per_rank.append({p for a, b in reads for p in range(a, b)})
    assert not per_rank[0] & per_rank[1]  # no rank reads a sequence another delivers


def test_layouts_that_cannot_continue_exactly_are_refused(stage, caplog):
    world = World(stage, 2, epochs=1)
    take(world, 3)
    state = world.state_dict()
    assert state["canonical_ranks"] == CANONICAL and state["global_batch"] == GLOBAL_BATCH
    with pytest.raises(MixdataError, match="global batch is 8 sequences, this one is 4"):
        load(stage, batch_size=2, rank=0, world_size=2, streams=STREAMS).load_state_dict(state)
    with pytest.raises(MixdataError, match="laid out for canonical_ranks=4"):
        load(stage, batch_size=4, rank=0, world_size=2, streams=STREAMS,
             canonical_ranks=2).load_state_dict(state)
    with pytest.raises(MixdataError, match="world size 3 does not divide canonical_ranks=4"):
        load(stage, batch_size=4, rank=0, world_size=3, streams=STREAMS,
             canonical_ranks=4)
    approximate = load(stage, batch_size=2, rank=0, world_size=2, streams=STREAMS,
                       approximate_resume=True)
    approximate.load_state_dict(state)
    assert "approximate resume" in caplog.text
    assert approximate.state_dict()["batches"] == 3 * approximate.batches_per_epoch // 10


def test_a_default_state_resumes_exactly_on_a_world_size_dividing_it(stage):
    """canonical_ranks defaults to the world size the run started with, and the state
    carries it: a 2-rank run continues exactly on 1 rank without naming it again."""
    def ranks(world):
        return [load(stage, batch_size=GLOBAL_BATCH // world, rank=r, world_size=world,
                     seed=3, streams=STREAMS, epochs=1) for r in range(world)]

    two = ranks(2)
    expected = [[row for b in step for row in _rows(b)] for step in zip(*two)]
    first = ranks(2)
    iterators = [iter(ds) for ds in first]
    for _ in range(4):
        for it in iterators:
            next(it)
    state = first[0].state_dict()
    one = load(stage, batch_size=GLOBAL_BATCH, rank=0, world_size=1, seed=3, streams=STREAMS,
               epochs=1)
    one.load_state_dict(state)
    assert_same([_rows(b) for b in one], expected[4:])


def test_stateful_dataloader_state_resumes_on_more_ranks(stage):
    import copy

    from torchdata.stateful_dataloader import StatefulDataLoader

    class StatefulWorld(World):
        def __init__(self, stage, world: int) -> None:
            super().__init__(stage, world, epochs=1)
            self.loaders = [StatefulDataLoader(ds, batch_size=None, num_workers=2)
                            for ds in self.datasets]

        def state_dict(self) -> dict:
            return self.loaders[0].state_dict()  # holds each worker's (rank-free) position

    check_resume(lambda: StatefulWorld(stage, 1), total=10, stop=3,
                 make_resumed=lambda: StatefulWorld(stage, 2), roundtrip=copy.deepcopy)
