"""Human-readable summaries of a stage manifest (used by `build` and `stats`)."""
from __future__ import annotations

from collections import Counter


def summary_table(manifest: dict) -> str:
    """Shares realised against target, accounting per source, packing and rejects by reason."""
    lines = [f"stage {manifest['stage']} of recipe {manifest['recipe']['name']}: "
             f"{len(manifest['shards'])} shards, {manifest['packing']['sequences']} sequences "
             f"of {manifest['seq_len']} tokens"]
    head = (f"  {'source':<18}{'target':>8}{'tokens%':>9}{'samples%':>9}{'epochs':>8}"
            f"{'read':>8}{'written':>8}{'rejected':>9}{'unused':>8}{'tokens':>11}{'images':>8}")
    lines += [head, "  " + "-" * (len(head) - 2)]
    reasons = Counter()
    for name, src in manifest["sources"].items():
        reasons.update({f"{name}:{k}": v for k, v in src["rejected_by_reason"].items()})
        balanced = src["read"] == src["written"] + src["rejected"] + src["unused"]
        lines.append(
            f"  {name:<18}{src['target_share'] * 100:7.2f}%{src['share_tokens'] * 100:8.2f}%"
            f"{src['share_samples'] * 100:8.2f}%{src['epochs']:8.2f}{src['read']:8d}"
            f"{src['written']:8d}{src['rejected']:9d}{src['unused']:8d}{src['tokens']:11d}"
            f"{src['images']:8d}" + ("" if balanced else "  (UNBALANCED)"))
    pack = manifest["packing"]
    mix = manifest["mixture"]
    lines.append(f"packing efficiency {pack['efficiency'] * 100:.2f}% ({pack['tokens']} real tokens "
                 f"in {pack['sequences']} x {pack['seq_len']}); largest share deviation over "
                 f"1000-sequence windows {mix['max_window_deviation'] * 100:.2f} points")
    if reasons:
        lines.append("rejects by reason:")
        lines += [f"  {k:<40}{v:8d}" for k, v in sorted(reasons.items())]
    else:
        lines.append("rejects: none")
    return "\n".join(lines)
