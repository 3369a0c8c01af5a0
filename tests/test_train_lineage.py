"""Stage chains (`--skip`), what each stage starts from, refusing to mix chains in one run
folder, reusing stages with the same lineage, and the tables that say so."""
import json

import pytest

from mixdata.errors import MixdataError
from mixdata.train.checkpoint import FINAL
from mixdata.train.lineage import (
    Chain,
    check_continuation,
    copy_stage,
    reusable,
    stage_chain,
    stage_seeds,
    stages_to_train,
)
from mixdata.train.report import compare_runs, format_table, record_eval
from mixdata.train.run import previous_final

STAGES = ["pretrain", "highres", "sft"]


def test_skip_takes_the_stage_out_of_the_chain():
    full, skipped = stage_chain(STAGES), stage_chain(STAGES, ("highres",))
    assert full == Chain(("pretrain", "highres", "sft")) and full.before("sft") == "highres"
    assert skipped.stages == ("pretrain", "sft") and skipped.skipped == ("highres",)
    assert skipped.before("sft") == "pretrain" and skipped.before("pretrain") is None
    assert skipped.describe() == "pretrain -> sft (skipped: highres)"
    assert stage_chain(STAGES, ("pretrain", "highres")).before("sft") is None
    assert stages_to_train(skipped, "all", "demo") == ["pretrain", "sft"]
    assert stages_to_train(skipped, "sft", "demo") == ["sft"]


@pytest.mark.parametrize("skip, stage, message", [
    (("nosuch",), "all", "--skip 'nosuch': recipe 'demo' has no such stage"),
    (tuple(STAGES), "all", "leaves no stage"),
    (("highres",), "highres", "also given to --skip"),
    ((), "other", "stage 'other' is not in recipe 'demo'"),
])
def test_bad_skips_are_refused_with_the_reason(skip, stage, message):
    with pytest.raises(MixdataError, match=message):
        stages_to_train(stage_chain(STAGES, skip, "demo"), stage, "demo")


def write_run(folder, chain: Chain, seed=1, recipe="abc", finished=(), table=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({
        "recipe_sha256": recipe, "seed": seed, "stages": list(chain.stages),
        "skipped": list(chain.skipped)}))
    for name in finished:
        (folder / name).mkdir(exist_ok=True)
        (folder / name / FINAL).write_bytes(f"weights of {folder.name}/{name}".encode())
    for name, results in (table or {}).items():
        record_eval(folder, name, results)
    return folder


def test_previous_final_follows_the_chain(tmp_path):
    skipped = stage_chain(STAGES, ("highres",))
    run = write_run(tmp_path / "run", skipped, finished=["pretrain"])
    assert previous_final(skipped, run, "sft") == run / "pretrain" / FINAL
    assert previous_final(stage_chain(STAGES), run, "sft") is None  # highres never ran here


def test_a_run_folder_is_not_continued_with_another_chain_seed_or_recipe(tmp_path):
    full = stage_chain(STAGES)
    run = write_run(tmp_path / "run", full)
    check_continuation(run, full, stage_seeds(full, 1), "abc")  # the same: fine
    check_continuation(tmp_path / "fresh", full, stage_seeds(full, 1), "abc")  # no run.json yet
    skipped = stage_chain(STAGES, ("highres",))
    with pytest.raises(MixdataError, match=r"stages 'pretrain -> highres -> sft'.*skipped: highres"):
        check_continuation(run, skipped, stage_seeds(skipped, 1), "abc")
    with pytest.raises(MixdataError, match="seeds"):
        check_continuation(run, full, stage_seeds(full, 2), "abc")
    with pytest.raises(MixdataError, match="seeds"):
        check_continuation(run, full, stage_seeds(full, 1, {"sft": 2}), "abc")
    with pytest.raises(MixdataError, match="recipe"):
        check_continuation(run, full, stage_seeds(full, 1), "def")


def test_only_stages_with_the_same_lineage_are_reused(tmp_path):
    full, skipped = stage_chain(STAGES), stage_chain(STAGES, ("highres",))
    other = write_run(tmp_path / "full", full, finished=STAGES)
    one, two = stage_seeds(skipped, 1), stage_seeds(skipped, 2)
    assert reusable(other, "pretrain", skipped, one, "abc") == other / "pretrain" / FINAL
    assert reusable(other, "sft", skipped, one, "abc") is None       # started from highres there
    assert reusable(other, "pretrain", skipped, two, "abc") is None  # another seed
    assert reusable(other, "pretrain", skipped, one, "xyz") is None  # another recipe
    # an SFT seed sweep: pretrain and highres are the same, SFT is not
    sweep = stage_seeds(full, 1, {"sft": 2})
    assert sweep == {"pretrain": 1, "highres": 1, "sft": 2}
    assert reusable(other, "highres", full, sweep, "abc") == other / "highres" / FINAL
    assert reusable(other, "sft", full, sweep, "abc") is None
    assert reusable(other, "highres", full, stage_seeds(full, 1, {"pretrain": 3}), "abc") is None
    copied = copy_stage(other / "pretrain" / FINAL, tmp_path / "ablation", "pretrain")
    assert copied.read_bytes() == b"weights of full/pretrain"
    with pytest.raises(MixdataError, match="not a training run folder"):
        reusable(tmp_path / "nothing", "pretrain", skipped, one, "abc")
    with pytest.raises(MixdataError, match="--stage-seed highres"):
        stage_seeds(skipped, 1, {"highres": 2})  # skipped: not trained


def results(vqa, ocr, origin):
    return {"vqa": {"accuracy": vqa, "chance": 0.25, "n": 4},
            "ocr": {"exact_match": ocr, "token_accuracy": 0.25 + ocr, "n": 2},
            "caption": {"loss": 0.5, "shuffled_loss": 0.9, "n": 4}, "started_from": origin}


def test_tables_say_what_each_stage_started_from(tmp_path):
    full = write_run(tmp_path / "full", stage_chain(STAGES), table={
        "pretrain": results(0.3, 0.0, None), "highres": results(0.3, 0.1, "pretrain"),
        "sft": results(0.7, 0.5, "highres")})
    ablation = write_run(tmp_path / "skip", stage_chain(STAGES, ("highres",)), table={
        "pretrain": results(0.3, 0.0, None), "sft": results(0.65, 0.1, "pretrain")})
    rows = format_table(json.loads((ablation / "eval.json").read_text())).splitlines()
    assert rows[0].split()[:2] == ["stage", "from"] and "shuffled" in rows[0]
    assert rows[2].split()[:2] == ["pretrain", "-"] and rows[3].split()[:2] == ["sft", "pretrain"]
    assert rows[3].split()[2:] == ["0.650", "0.250", "0.100", "0.350", "0.500", "0.900"]
    side = compare_runs([full, ablation]).splitlines()
    assert "pretrain > highres > sft" in side[1] and "pretrain > sft" in side[1]
    ocr = next(line for line in side if line.startswith("OCR exact match"))
    assert ocr.split()[-3:] == ["0.500", "0.100", "+0.400"]
    reading = next(line for line in side if line.startswith("OCR token accuracy"))
    assert reading.split()[-3:] == ["0.750", "0.350", "+0.400"]
    vqa = next(line for line in side if line.startswith("VQA accuracy"))
    assert vqa.split()[-1] == "+0.050"
    assert not any("VQA accuracy," in line for line in side)  # no run reports kinds


def test_the_side_by_side_table_has_vqa_by_kind_where_a_run_has_it(tmp_path):
    kinds = results(0.6, 0.0, None)
    kinds["vqa"]["by_kind"] = {"colour": {"accuracy": 0.9, "chance": 0.17, "n": 2},
                               "shape": {"accuracy": 0.3, "chance": 0.25, "n": 2}}
    full = write_run(tmp_path / "full", stage_chain(("pretrain",)), table={"pretrain": kinds})
    plain = write_run(tmp_path / "plain", stage_chain(("pretrain",)),
                      table={"pretrain": results(0.5, 0.0, None)})
    side = compare_runs([full, plain]).splitlines()
    labels = [line.split("  ")[0].strip() for line in side[3:]]
    assert labels[:4] == ["VQA accuracy", "VQA chance", "VQA accuracy, colour",
                          "VQA accuracy, shape"]
    colour = next(line for line in side if line.startswith("VQA accuracy, colour"))
    assert colour.split()[-2:] == ["0.900", "-"]  # the other run has no kinds: no difference
