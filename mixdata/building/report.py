"""Human-readable summaries of a stage manifest (used by `build` and `stats`)."""
from __future__ import annotations

from collections import Counter

from ..manifest import Manifest


def summary_table(manifest: Manifest) -> str:
    """Shares realised against target, accounting per source, packing, rejects and unused
    records by reason, and retries."""
    pack, mix = manifest.packing, manifest.mixture
    lines = [f"stage {manifest.stage} of recipe {manifest.recipe.name}: {len(manifest.shards)} "
             f"shards, {pack.sequences} sequences of {manifest.seq_len} tokens"]
    head = (f"  {'source':<18}{'target':>8}{'tokens%':>9}{'samples%':>9}{'epochs':>8}"
            f"{'read':>8}{'written':>8}{'rejected':>9}{'unused':>8}{'tokens':>11}{'images':>8}")
    lines += [head, "  " + "-" * (len(head) - 2)]
    rejected, unused = Counter(), Counter()
    for name, src in manifest.sources.items():
        rejected.update({f"{name}:{k}": v for k, v in src.rejected_by_reason.items()})
        unused.update({f"{name}:{k}": v for k, v in src.unused_by_reason.items()})
        lines.append(
            f"  {name:<18}{src.target_share * 100:7.2f}%{src.share_tokens * 100:8.2f}%"
            f"{src.share_samples * 100:8.2f}%{src.epochs:8.2f}{src.read:8d}"
            f"{src.written:8d}{src.rejected:9d}{src.unused:8d}{src.tokens:11d}"
            f"{src.images:8d}" + ("" if src.balanced else "  (UNBALANCED)"))
    lines.append(f"packing efficiency {pack.efficiency * 100:.2f}% ({pack.tokens} real tokens "
                 f"in {pack.sequences} x {pack.seq_len}); largest share deviation over "
                 f"1000-sequence windows {mix.max_window_deviation * 100:.2f} points")
    lines += _by_reason("rejects", rejected) + _by_reason("unused", unused)
    retries = {k: v for k, v in manifest.run.retries.items() if v}
    if retries:
        lines.append("retried reads: " + ", ".join(f"{k} {v}" for k, v in retries.items()))
    if manifest.run.task_retries:
        lines.append("tasks re-run after their worker died: " + ", ".join(
            f"{k} {v}" for k, v in manifest.run.task_retries.items()))
    return "\n".join(lines)


def _by_reason(title: str, counts: Counter) -> list[str]:
    if not counts:
        return [f"{title}: none"]
    return [f"{title} by reason:"] + [f"  {k:<40}{v:8d}" for k, v in sorted(counts.items())]
