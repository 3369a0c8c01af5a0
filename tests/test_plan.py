"""The plan's pure cores and its chunked streaming: budgets, prefixes, dedup, accounting,
window shares and caps across chunk boundaries, references and shard identity."""
from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixdata.building import units as units_module
from mixdata.building.plan import (
    SourceInput,
    pack_chunk,
    plan_stage,
    prefix_length,
    shard_hash,
    stage_budget,
)
from mixdata.building.prepare import SCHEMA, _write_table
from mixdata.building.units import UnitTable, scan, scan_sources
from mixdata.mix import StreamSchedule, default_span, window_deviation
from mixdata.recipe import Budget, PackSpec, StageSpec

SEQ_LEN = 512


def write_unit(path: Path, lengths, images=None, views=None, records=None, keys=None) -> str:
    """A prepared unit in prepare's real Arrow format (token ids and images left empty: the
    plan reads lengths only). `keys[i]`: an int naming the document's dedup key, 0 for none."""
    n = len(lengths)
    images = [0] * n if images is None else images
    views = list(images) if views is None else views
    records = list(range(n)) if records is None else records
    keys = [0] * n if keys is None else keys
    rows = [{"record": int(records[i]), "sample_id": f"r{records[i]}", "chunk": 0,
             "ids": b"", "loss": b"", "length": int(lengths[i]), "supervised": 0,
             "n_images": int(images[i]), "n_views": int(views[i]), "images": [], "meta": "[]",
             "dedup": int(keys[i]).to_bytes(16, "little")} for i in range(n)]
    _write_table(Path(f"{path}.arrow"), rows)
    return str(path)


def stage(mixture, budget=None, weight_by="tokens", **pack) -> StageSpec:
    return StageSpec(name="s", mixture=mixture, budget=budget, weight_by=weight_by,
                     max_epochs=20.0, pack=PackSpec(**pack))


def vlm_lengths(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, images) of a caption-like, interleaved-like or text-like source."""
    rng = np.random.default_rng(seed)
    if kind == "caption":
        return rng.integers(20, 120, n) + 66, np.ones(n, np.int64)
    if kind == "interleaved":
        images = rng.integers(1, 4, n)
        return np.minimum(rng.lognormal(5.0, 0.7, n).astype(int) + 66 * images, SEQ_LEN), images
    return np.minimum(rng.lognormal(5.2, 1.0, n).astype(int) + 2, SEQ_LEN), np.zeros(n, np.int64)


def sources_for(tmp_path: Path, kinds: dict[str, str], docs: int, seed: int, unit_size: int = 700,
                dedup: bool = False) -> dict[str, SourceInput]:
    out = {}
    for k, (name, kind) in enumerate(kinds.items()):
        lengths, images = vlm_lengths(kind, docs, seed + k)
        paths = [write_unit(tmp_path / f"{name}-{u}", lengths[a:a + unit_size],
                            images[a:a + unit_size])
                 for u, a in enumerate(range(0, docs, unit_size))]
        out[name] = SourceInput(units=tuple(f"{name}/{u}" for u in range(len(paths))),
                                paths=tuple(paths), dedup=dedup)
    return out


def plan_sequences(plan, tables_by_path) -> list[list[tuple[str, int, int]]]:
    refs = plan.refs(0, plan.sequences)
    names = plan.sources
    docs = list(zip(refs.source.tolist(), refs.unit.tolist(), refs.row.tolist()))
    bounds = refs.offsets.tolist()
    return [[(names[s], u, r) for s, u, r in docs[a:b]] for a, b in itertools.pairwise(bounds)]


def lengths_of(sources: dict[str, SourceInput]) -> dict[str, list[np.ndarray]]:
    from mixdata.building.units import column, open_unit

    return {s: [(column(open_unit(p), "length"), column(open_unit(p), "n_images"))
                for p in src.paths] for s, src in sources.items()}


# --- pure cores ---------------------------------------------------------------------------

def test_stage_budget_converts_units():
    shares, mean = {"a": 0.5, "b": 0.5}, {"a": 100.0, "b": 300.0}
    assert stage_budget(stage({"a": 1, "b": 1}), 512, mean, shares) is None
    tokens = stage({"a": 1, "b": 1}, Budget(tokens=1000))
    assert stage_budget(tokens, 512, mean, shares) == 1000
    samples = stage({"a": 1, "b": 1}, Budget(samples=10))
    assert stage_budget(samples, 512, mean, shares) == pytest.approx(10 * 200)
    by_samples = stage({"a": 1, "b": 1}, Budget(tokens=4000), weight_by="samples")
    assert stage_budget(by_samples, 512, mean, shares) == pytest.approx(20)
    seqs = stage({"a": 1, "b": 1}, Budget(sequences=99))
    assert stage_budget(seqs, 512, mean, shares) == pytest.approx(99 * 512 / 0.99)


def test_prefix_length_stops_at_the_need():
    assert prefix_length([10, 10, 10], 15) == 2
    assert prefix_length([10, 10, 10], 30) == 3
    assert prefix_length([10, 10, 10], 31) == 3  # everything there is
    assert prefix_length([10, 10, 10], None) == 3
    assert prefix_length([10, None, 10], 15) is None  # unknown before the need is met
    assert prefix_length([10, None], 5) == 1


def test_duplicates_first_record_wins_across_sources_and_units(tmp_path):
    # source a: unit 0 records 0 (key 7, two documents: a chunked record), 1 (key 8);
    #           unit 1 record 0 (key 7 again)          -> duplicate of a/0 record 0
    # source b: record 0 (key 8), 1 (no key), 2 (key 9) -> record 0 duplicate of a's key 8
    a0 = write_unit(tmp_path / "a0", [5, 6, 7], records=[0, 0, 1], keys=[7, 7, 8])
    a1 = write_unit(tmp_path / "a1", [4], records=[0], keys=[7])
    b0 = write_unit(tmp_path / "b0", [3, 3, 3], keys=[8, 0, 9])
    found = scan_sources([([a0, a1], True), ([b0], True)], tmp_path)
    assert [d.tolist() for _, d, _ in found] == [[3], [0]]
    assert [tokens for _, _, tokens in found] == [4, 3]
    assert [d.tolist() for _, d, _ in scan_sources([([a0, a1], False), ([b0], True)],
                                                     tmp_path)] == [[], []]


def test_spilled_dedup_equals_in_memory(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    paths, seen = [], set()
    for u in range(6):
        keys = rng.integers(1, 300, 200)
        seen.update(keys.tolist())
        paths.append(write_unit(tmp_path / f"u{u}", rng.integers(1, 50, 200), keys=keys))
    groups = [(paths[:3], True), (paths[3:], True)]
    in_memory = scan_sources(groups, tmp_path)
    monkeypatch.setattr(units_module, "PARTITION_DOCS", 100)
    spilled = scan_sources(groups, tmp_path)
    assert [(d.tolist(), t) for _, d, t in spilled] == [(d.tolist(), t) for _, d, t in in_memory]
    assert len(in_memory[0][1]) + len(in_memory[1][1]) == 1200 - len(seen)
    assert not list(tmp_path.glob("dedup-*"))  # spill files are removed


def test_unit_table_reads_ranges_across_units_without_duplicates(tmp_path):
    a = write_unit(tmp_path / "a", [5, 6, 7], images=[0, 1, 2])
    b = write_unit(tmp_path / "b", [8, 9])
    table = UnitTable(scan([a, b], tmp_path / "columns.bin"), np.array([3]), 8, "tokens")
    cols = table.read(1, 5)
    assert cols["length"].tolist() == [6, 7, 8, 9] and cols["images"].tolist() == [1, 2, 0, 0]
    assert cols["keep"].tolist() == [True, True, False, True]
    assert (table.kept, table.kept_cost) == (4, 27.0)
    assert [x.tolist() for x in table.locate(np.array([0, 2, 3, 4]))] == [[0, 0, 1, 1],
                                                                           [0, 2, 0, 1]]


# --- the chunked plan ---------------------------------------------------------------------

MIX = {"interleaved": 45.0, "caption": 45.0, "text": 10.0}


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), chunk=st.sampled_from([300, 1000, 4000]),
       max_images=st.sampled_from([None, 3]))
def test_window_shares_and_caps_hold_across_chunk_boundaries(tmp_path_factory, seed, chunk,
                                                              max_images):
    tmp = tmp_path_factory.mktemp("plan")
    sources = sources_for(tmp, {k: k for k in MIX}, 9000, seed)
    spec = stage(MIX, Budget(sequences=2300), max_images=max_images)
    plan = plan_stage(spec, sources, seq_len=SEQ_LEN, seed=seed, folder=tmp / "plan",
                      chunk_docs=chunk)
    assert plan.sequences == 2300 and len(plan.chunk_starts) > 1
    table = lengths_of(sources)
    per_seq = []
    for seq in plan_sequences(plan, None):
        tokens = {}
        for s, u, r in seq:
            tokens[s] = tokens.get(s, 0) + int(table[s][u][0][r])
        images = sum(int(table[s][u][1][r]) for s, u, r in seq)
        assert sum(tokens.values()) <= SEQ_LEN and (max_images is None or images <= max_images)
        per_seq.append(tokens)
    total = sum(MIX.values())
    shares = {s: v / total for s, v in MIX.items()}
    assert window_deviation(per_seq, shares) <= 0.005
    assert plan.window_deviation == pytest.approx(window_deviation(per_seq, shares))


def test_plan_is_deterministic_and_reports_every_record(tmp_path):
    sources = sources_for(tmp_path, {k: k for k in MIX}, 3000, 5)
    spec = stage(MIX, Budget(tokens=400_000))
    one = plan_stage(spec, sources, seq_len=SEQ_LEN, seed=3, folder=tmp_path / "one",
                     chunk_docs=700)
    two = plan_stage(spec, sources, seq_len=SEQ_LEN, seed=3, folder=tmp_path / "two",
                     chunk_docs=700)
    files = sorted(p.name for p in (tmp_path / "one").glob("chunk-*.npz"))
    assert files and files == sorted(p.name for p in (tmp_path / "two").glob("chunk-*.npz"))
    for name in files:
        a, b = np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name)
        assert all(np.array_equal(a[k], b[k]) for k in ("offsets", "source", "unit", "row"))
    assert one.per_source.keys() == two.per_source.keys()
    assert one.tokens >= 400_000 and one.tokens - 400_000 < SEQ_LEN
    for name, account in one.per_source.items():
        assert account.written + sum(account.unused.values()) == 3000, name  # one doc each
        assert account.unused.get("budget", 0) > 0 and account.unused.get("duplicate", 0) == 0
    refs = one.refs(0, one.sequences)
    assert sum(a.documents for a in one.per_source.values()) == len(refs.source)


def test_sequences_budget_cuts_and_counts_what_it_cut(tmp_path):
    sources = sources_for(tmp_path, {"caption": "caption", "text": "text"}, 2000, 8)
    spec = stage({"caption": 1, "text": 1}, Budget(sequences=101))
    plan = plan_stage(spec, sources, seq_len=SEQ_LEN, seed=0, folder=tmp_path / "p")
    assert plan.sequences == 101
    cut = sum(a.unused.get("sequence_budget", 0) for a in plan.per_source.values())
    assert cut > 0  # the schedule aimed past 101 sequences (packing slack) and was cut


def test_no_budget_uses_every_kept_document_once(tmp_path):
    sources = sources_for(tmp_path, {"caption": "caption", "text": "text"}, 1500, 2,
                          dedup=True)
    plan = plan_stage(stage({"caption": 1, "text": 1}), sources, seq_len=SEQ_LEN, seed=1,
                      folder=tmp_path / "p", chunk_docs=400)
    refs = plan.refs(0, plan.sequences)
    pairs = list(zip(refs.source.tolist(), refs.unit.tolist(), refs.row.tolist()))
    assert len(pairs) == len(set(pairs))  # nothing repeats
    assert max(a.epochs for a in plan.per_source.values()) <= 1.0


def test_chunks_are_pure_picklable_tasks(tmp_path):
    sources = sources_for(tmp_path, {k: k for k in MIX}, 2000, 4)
    tables = {s: UnitTable(scan(list(src.paths), tmp_path / f"{s}.bin"), np.zeros(0, np.int64),
                           0, "tokens") for s, src in sources.items()}
    shares = {s: v / 100 for s, v in MIX.items()}
    chunks = list(StreamSchedule(shares, tables, budget=300_000, max_epochs=5, seed=2,
                                 span=default_span(shares, tables, 500)))
    assert len(chunks) > 3
    packed = [pack_chunk(c, SEQ_LEN, (None, None)) for c in chunks]
    # in another order, after a pickle round trip (what a process pool or Ray task does)
    for k in reversed(range(len(chunks))):
        again = pack_chunk(pickle.loads(pickle.dumps(chunks[k])), SEQ_LEN, (None, None))
        assert np.array_equal(again.order, packed[k].order)
        assert np.array_equal(again.offsets, packed[k].offsets)


def test_refs_across_chunks_and_shard_identity(tmp_path):
    sources = sources_for(tmp_path, {"caption": "caption", "text": "text"}, 3000, 6)
    plan = plan_stage(stage({"caption": 1, "text": 1}, Budget(tokens=300_000)),
                      sources, seq_len=SEQ_LEN, seed=4, folder=tmp_path / "p", chunk_docs=500)
    boundary = plan.chunk_starts[1]
    whole = plan.refs(boundary - 3, 6)
    parts = [plan.refs(boundary - 3 + i, 1) for i in range(6)]
    assert np.array_equal(whole.source, np.concatenate([p.source for p in parts]))
    assert np.array_equal(whole.row, np.concatenate([p.row for p in parts]))
    assert np.diff(whole.offsets).tolist() == [len(p.source) for p in parts]
    keys = {s: [f"key-{s}-{u}" for u in range(len(src.paths))] for s, src in sources.items()}
    context = "ctx"
    first = shard_hash(whole, plan.sources, keys, context)
    assert first == shard_hash(plan.refs(boundary - 3, 6), plan.sources, keys, context)
    assert first != shard_hash(plan.refs(boundary - 2, 6), plan.sources, keys, context)
    assert first != shard_hash(whole, plan.sources, keys, "other build")
    used = whole.unit[0]
    changed = {**keys, plan.sources[whole.source[0]]: [
        k + "!" if u == used else k for u, k in enumerate(keys[plan.sources[whole.source[0]]])]}
    assert first != shard_hash(whole, plan.sources, changed, context)
    unused = {**keys, "caption": keys["caption"] + ["never-used"]}
    assert first == shard_hash(whole, plan.sources, unused, context)


def test_prepared_schema_has_a_fixed_size_dedup_key():
    assert SCHEMA.field("dedup").type.byte_width == 16
