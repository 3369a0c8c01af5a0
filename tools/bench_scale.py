"""Benchmarks at scale (issue 16), each part side by side in one run.

- `plan`: time per document and peak RSS of the whole plan phase, the chunked plan against
  the old one (below).
- `build`: `mixdata build` end to end on the demo corpus at a large scale, `--workers 1` vs
  2 and `--engine ray` vs local (`tools/scale_builds.py` says how).

    PYTHONPATH=. .venv/bin/python tools/bench_scale.py --docs 100000 1000000 10000000
    PYTHONPATH=. .venv/bin/python tools/bench_scale.py --parts build --scale 20 1 --repeats 2

The plan phase is everything between prepared units and shard tasks: read the lengths,
exact dedup, the mixture schedule, packing, and shard grouping with every shard's hash.
Each measurement runs in a fresh process (`--child`), so its peak RSS is its own.

Input: synthetic prepared units in the real prepare format (`mixdata.building.prepare`
SCHEMA, Arrow IPC in batches of 256 rows, units of 20,000 documents), with token ids and
image bytes left empty, since the plan reads lengths only. The synthetic VLM mix at
seq_len 4096, with 81 tokens per image view plus 2 marker tokens:
- interleaved (OBELICS-like), weight 40: text log-normal (median 700 tokens), 1-8 images
  (geometric), each 1-3 views; clipped at seq_len (trimmed);
- caption (recaptioned LAION/COYO-like), weight 35: 80-300 caption tokens and one image view;
- ocr (PDFA/IDL-like pages), weight 10: 5-10 views (tiles and a global view) and OCR text
  log-normal (median 500);
- text (FineWeb-like), weight 15: log-normal (median 600); a longer document is chunked at
  seq_len into several documents of one record, as prepare does.
Documents split 22/60/5/13 over the four kinds; 3% of records repeat an earlier record's
dedup key (exact duplicates, found across sources); dedup is on for every source. No budget:
all data, no repeats (what the issue measured).

The old plan is the code at `--old-ref` (default: the commit before the chunked plan),
taken from git into a temporary package and run on the same lengths in its own input format
(dedup keys as hex strings); it runs only up to `--old-max-docs`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
SEQ_LEN = 4096
VIEW_TOKENS = 81 + 2
UNIT_DOCS = 20_000
WEIGHTS = {"interleaved": 40.0, "caption": 35.0, "ocr": 10.0, "text": 15.0}
KIND_SHARE = [0.22, 0.60, 0.05, 0.13]
DUPLICATE_SHARE = 0.03
OLD_REF = "f7b542a"


def synthetic_records(n: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Per source, columns of about `n` documents in all: length, n_images, n_views, record,
    and a dedup key (uint64 pairs)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, KIND_SHARE)
    out = {}
    for kind, count in zip(WEIGHTS, counts):
        length, images, views = _kind(kind, int(count), rng)
        record = np.arange(len(length))
        if kind == "text":
            length, record = _chunked(length, record)
            images = views = np.zeros(len(length), np.int64)
        out[kind] = {"length": length, "n_images": images, "n_views": views, "record": record}
    _dedup_keys(out, rng)
    return out


def _kind(kind: str, n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if kind == "interleaved":
        images = np.minimum(rng.geometric(0.45, n), 8)
        views = images * rng.integers(1, 4, n)
        text = rng.lognormal(np.log(700), 0.9, n).astype(np.int64)
        return np.minimum(text + views * VIEW_TOKENS + 2, SEQ_LEN), images, views
    if kind == "caption":
        one = np.ones(n, np.int64)
        return rng.integers(80, 301, n) + VIEW_TOKENS + 2, one, one
    if kind == "ocr":
        views = rng.integers(5, 11, n)
        text = rng.lognormal(np.log(500), 0.8, n).astype(np.int64)
        return np.minimum(text + views * VIEW_TOKENS + 2, SEQ_LEN), np.ones(n, np.int64), views
    zeros = np.zeros(n, np.int64)
    return rng.lognormal(np.log(600), 1.1, n).astype(np.int64) + 2, zeros, zeros


def _chunked(length: np.ndarray, record: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pieces = -(-length // SEQ_LEN)
    rec = np.repeat(record, pieces)
    first = np.concatenate([[0], np.cumsum(pieces)[:-1]])
    within = np.arange(len(rec)) - np.repeat(first, pieces)
    last = within == np.repeat(pieces - 1, pieces)
    out = np.where(last, np.repeat(length - (pieces - 1) * SEQ_LEN, pieces), SEQ_LEN)
    return out.astype(np.int64), rec


def _dedup_keys(sources: dict, rng) -> None:
    """Random 128-bit keys per record; DUPLICATE_SHARE of records copy an earlier record's key
    (anywhere in the stage, so across sources too)."""
    sizes = [int(cols["record"].max()) + 1 if len(cols["record"]) else 0
             for cols in sources.values()]
    keys = rng.integers(1, 2**63, (sum(sizes), 2), dtype=np.int64).view(np.uint64)
    copies = np.flatnonzero(rng.random(len(keys)) < DUPLICATE_SHARE)
    copies = copies[copies > 0]
    keys[copies] = keys[(rng.random(len(copies)) * copies).astype(np.int64)]
    base = 0
    for cols, size in zip(sources.values(), sizes):
        cols["dedup"] = keys[base + cols["record"]]
        base += size


def _empty_binary(n: int, kind: pa.DataType | None = None) -> pa.Array:
    kind = pa.binary() if kind is None else kind
    offsets = pa.py_buffer(np.zeros(n + 1, np.int32).tobytes())
    return pa.Array.from_buffers(kind, n, [None, offsets, pa.py_buffer(b"")])


def write_units(folder: Path, sources: dict, old_format: bool) -> dict[str, list[str]]:
    """Each source's documents as prepared units; returns unit paths (without `.arrow`)."""
    from mixdata.building.prepare import SCHEMA

    schema = SCHEMA.set(SCHEMA.get_field_index("dedup"), pa.field("dedup", pa.string())) \
        if old_format else SCHEMA
    paths = {}
    for name, cols in sources.items():
        paths[name] = []
        for u, start in enumerate(range(0, len(cols["length"]), UNIT_DOCS)):
            part = {k: v[start:start + UNIT_DOCS] for k, v in cols.items()}
            path = folder / f"{name}-{u:05d}"
            _write_unit(path, part, schema, old_format)
            paths[name].append(str(path))
    return paths


def _write_unit(path: Path, cols: dict, schema: pa.Schema, old_format: bool) -> None:
    import pyarrow.ipc as ipc

    n = len(cols["length"])
    record = cols["record"] - cols["record"][0]
    if old_format:
        dedup = pa.array([k.tobytes().hex()[:32] for k in cols["dedup"]], pa.string())
    else:
        dedup = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(16), n, [None, pa.py_buffer(np.ascontiguousarray(cols["dedup"]).tobytes())])
    images = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), _empty_binary(0))
    arrays = {"record": pa.array(record.astype(np.int32)),
              "sample_id": _empty_binary(n, pa.string()),
              "chunk": pa.array(np.zeros(n, np.int32)), "ids": _empty_binary(n),
              "loss": _empty_binary(n), "length": pa.array(cols["length"].astype(np.int32)),
              "supervised": pa.array(np.zeros(n, np.int32)),
              "n_images": pa.array(cols["n_images"].astype(np.int32)),
              "n_views": pa.array(cols["n_views"].astype(np.int32)), "images": images,
              "meta": _empty_binary(n, pa.string()), "dedup": dedup}
    table = pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)
    with pa.OSFile(f"{path}.arrow", "wb") as sink, ipc.new_file(sink, schema) as writer:
        writer.write_table(table, max_chunksize=256)


def _stage():
    from mixdata.recipe import PackSpec, StageSpec

    return StageSpec(name="pretrain", mixture=dict(WEIGHTS), budget=None, max_epochs=10.0,
                     pack=PackSpec())


CONTEXT = json.dumps({"recipe": "bench", "stage": "pretrain", "v": 1})


def child_new(paths: dict[str, list[str]], scratch: Path) -> dict:
    from mixdata.building.plan import SourceInput, plan_stage, shard_hash

    stage = _stage()
    baseline = _rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    sources = {s: SourceInput(units=tuple(f"{s}/{i}" for i in range(len(p))), paths=tuple(p),
                              dedup=True) for s, p in paths.items()}
    plan = plan_stage(stage, sources, seq_len=SEQ_LEN, seed=1, folder=scratch)
    keys = {s: [os.path.basename(p) for p in paths[s]] for s in paths}
    hashes = [shard_hash(plan.refs(r.start, len(r)), plan.sources, keys, CONTEXT)
              for r in plan.shard_ranges(512)]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    documents = sum(a.documents for a in plan.per_source.values())
    return {"seconds": seconds, "cpu_seconds": cpu, "rss_mib": _rss_mib(), "baseline_mib": baseline,
            "sequences": plan.sequences, "documents": documents, "shards": len(hashes),
            "efficiency": plan.tokens / (plan.sequences * SEQ_LEN),
            "window_deviation": plan.window_deviation}


def child_old(paths: dict[str, list[str]], package: Path) -> dict:
    sys.path.insert(0, str(package))
    from oldmixdata.building import plan as old  # the plan at --old-ref, from git
    from oldmixdata.mix import window_deviation

    stage = _stage()
    baseline = _rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    units = {s: [f"{s}/{i}" for i in range(len(p))] for s, p in paths.items()}
    docs = {s: old.load_docs(units[s], paths[s]) for s in paths}
    old.apply_dedup(docs, list(paths))
    plan = old.plan_stage(stage, docs, seq_len=SEQ_LEN, seed=1)
    keys = {s: [os.path.basename(p) for p in paths[s]] for s in paths}
    hashes = [old.shard_hash(plan, group, keys, CONTEXT)
              for group in old.shard_groups(plan, 512)]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = sum(sum(t.values()) for t in plan.seq_sources_tokens)
    total = sum(WEIGHTS.values())
    return {"seconds": seconds, "cpu_seconds": cpu, "rss_mib": _rss_mib(),
            "baseline_mib": baseline, "sequences": len(plan.sequences), "shards": len(hashes),
            "documents": sum(len(s) for s in plan.sequences),
            "efficiency": tokens / (len(plan.sequences) * SEQ_LEN),
            "window_deviation": window_deviation(
                plan.seq_sources_tokens, {s: w / total for s, w in WEIGHTS.items()})}


def _rss_mib() -> float:
    """Peak RSS of this process so far. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    from the parent across fork and exec, so a child would report the parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def old_package(ref: str, into: Path) -> Path:
    """The plan, mix, pack and errors modules at git `ref` as package `oldmixdata`."""
    pkg = into / "oldmixdata"
    (pkg / "building").mkdir(parents=True)
    for rel in ("mixdata/errors.py", "mixdata/mix.py", "mixdata/pack.py",
                "mixdata/building/plan.py"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{rel}"], check=True,
                              capture_output=True, text=True).stdout
        (pkg / rel.removeprefix("mixdata/")).write_text(text)
    (pkg / "__init__.py").write_text("")
    (pkg / "building" / "__init__.py").write_text("")
    return into


def run_child(kind: str, paths: dict, extra: Path, timeout: float) -> dict | None:
    spec = json.dumps({"kind": kind, "paths": paths, "extra": str(extra)})
    try:
        out = subprocess.run([sys.executable, __file__, "--child", spec], check=True,
                             capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(n: int, tmp: Path, args) -> dict:
    row = {"docs_requested": n}
    t = time.perf_counter()
    records = synthetic_records(n, seed=n)
    row["docs"] = sum(len(c["length"]) for c in records.values())
    new_paths = write_units(tmp / "new", records, old_format=False)
    old_paths = write_units(tmp / "old", records, old_format=True) \
        if n <= args.old_max_docs else None
    del records
    print(f"[{n:,}] {row['docs']:,} documents generated in {time.perf_counter() - t:.0f} s",
          file=sys.stderr, flush=True)
    row["new"] = run_child("new", new_paths, tmp / "plan", args.timeout)
    print(f"[{n:,}] new: {row['new']}", file=sys.stderr, flush=True)
    if old_paths is not None:
        row["old"] = run_child("old", old_paths, args.old_package, args.timeout)
        print(f"[{n:,}] old: {row['old']}", file=sys.stderr, flush=True)
    for folder in ("new", "old", "plan"):
        shutil.rmtree(tmp / folder, ignore_errors=True)
    return row


def fit(xs, ys) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys against xs."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def report(rows: list[dict]) -> str:
    lines = ["| documents | plan | time | µs / document | CPU µs / document | peak RSS "
             "| RSS / previous size | efficiency | window dev. (pp) | old time / new time |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    previous = {}
    for row in rows:
        for kind in ("old", "new"):
            result = row.get(kind)
            if kind not in row:
                continue
            if result is None:
                lines.append(f"| {row['docs']:,} | {kind} | timed out | | | | | | | |")
                continue
            growth = (f"{result['rss_mib'] / previous[kind]:.2f}x" if kind in previous else "")
            previous[kind] = result["rss_mib"]
            ratio = (f"{row['old']['seconds'] / result['seconds']:.1f}x"
                     if kind == "new" and row.get("old") else "")
            lines.append(
                f"| {row['docs']:,} | {kind} | {result['seconds']:.1f} s | "
                f"{1e6 * result['seconds'] / row['docs']:.2f} | "
                f"{1e6 * result['cpu_seconds'] / row['docs']:.2f} | {result['rss_mib']:.0f} MiB | "
                f"{growth} | {100 * result['efficiency']:.2f}% | "
                f"{100 * result['window_deviation']:.3f} | {ratio} |")
    return "\n".join(lines)


def projection(rows: list[dict]) -> str:
    done = [r for r in rows if r.get("new")]
    if len(done) < 2:
        return ""
    docs = [r["docs"] for r in done]
    t0, dt = fit(docs, [r["new"]["cpu_seconds"] for r in done])
    m0, dm = fit(docs, [r["new"]["rss_mib"] for r in done])
    lines = [f"Linear fit of the new plan over {', '.join(f'{d:,}' for d in docs)} documents: "
             f"{t0:.1f} CPU s + {1e6 * dt:.2f} CPU µs per document; peak RSS {m0:.0f} MiB + "
             f"{dm * 2**20:.1f} bytes per document.", "",
             "| documents | projected CPU time | µs / document | projected peak RSS |",
             "| ---: | ---: | ---: | ---: |"]
    for n in (10**8, 10**9):
        seconds, rss = t0 + dt * n, m0 + dm * n
        lines.append(f"| {n:,} | {seconds / 60:.0f} min | {1e6 * seconds / n:.2f} | "
                     f"{rss / 1024:.1f} GiB |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000],
                    help="approximate document counts to measure")
    ap.add_argument("--old-ref", default=OLD_REF, help="git revision of the old plan")
    ap.add_argument("--old-max-docs", type=int, default=1_000_000,
                    help="largest size the old plan is run at (it grows superlinearly)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--parts", nargs="+", choices=("plan", "build"), default=["plan", "build"],
                    help="which benchmarks to run (default: both)")
    ap.add_argument("--scale", type=float, nargs="+", default=[20, 1],
                    help="build: demo corpus scales, each measured on its own (default 20, "
                         "where prepare takes over a minute on one worker, and 1, a small "
                         "build that should not pay for a pool)")
    ap.add_argument("--repeats", type=int, default=2, help="build: runs of each configuration")
    ap.add_argument("--configs", nargs="+", choices=("w1", "w2", "ray"),
                    default=["w1", "w2", "ray"], help="build: which builds (ray needs the "
                    "ray extra)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        run = child_new if spec["kind"] == "new" else child_old
        print(json.dumps(run(spec["paths"], Path(spec["extra"]))))
        return
    if "plan" in args.parts:
        with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.tmp) as tmp:
            tmp = Path(tmp)
            args.old_package = old_package(args.old_ref, tmp / "oldpkg")
            rows = []
            for n in args.docs:
                (tmp / "new").mkdir()
                (tmp / "old").mkdir()
                rows.append(measure(n, tmp, args))
        print(report(rows))
        print()
        print(projection(rows))
        print()
    if "build" in args.parts:
        import scale_builds  # beside this file

        for scale in args.scale:
            with tempfile.TemporaryDirectory(prefix="bench-builds-", dir=args.tmp) as tmp:
                runs = scale_builds.measure(scale, args.repeats, Path(tmp), args.configs)
            print(scale_builds.report(runs, scale))
            print()


if __name__ == "__main__":
    main()
