"""`mixdata train` and `mixdata eval` end to end on a tiny demo corpus: shards built on
demand, three stages handed over, metrics, checkpoints, eval table; resume and refusals."""
import json
from pathlib import Path

import pytest
import yaml

from mixdata.cli import main
from mixdata.train.checkpoint import CHECKPOINT, FINAL, load_file

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"


@pytest.fixture
def tiny_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXDATA_DEMO_SCALE", "0.02")
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(DEMO.read_text())
    for stage in raw["stages"].values():
        stage["budget"] = {"tokens": 4000}
    quick = {"budget": {"steps": 2}, "warmup": 1, "eval": {"max_examples": 3}}
    raw["train"] = {"model": "tiny", "micro_batch": 2, "checkpoint_every": 1,
                    "stages": dict.fromkeys(raw["stages"], quick)}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))  # stage order is recipe order
    return path


@pytest.mark.slow  # ~15-30 s: four builds, four stages, five evals
def test_train_runs_every_stage_then_eval_and_resume(tiny_recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_recipe), "--out", str(run), "--device", "cpu", "--quiet",
                 "--workers", "1"]) == 0
    stages = ["pretrain", "read", "highres", "sft"]
    for stage in stages:
        assert (tmp_path / "shards" / "demo" / stage / "manifest.json").exists()
        assert (run / stage / FINAL).exists()
        assert load_file(run / stage / CHECKPOINT)["step"] == 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in lines] == [(s, i) for s in stages for i in (1, 2)]
    table = json.loads((run / "eval.json").read_text())
    assert list(table) == stages
    assert table["sft"]["vqa"]["n"] == 3 and 0 < table["sft"]["vqa"]["chance"] < 1
    out = capsys.readouterr().out
    assert "VQA acc" in out and "starting from" in out

    assert main(["train", str(tiny_recipe), "--out", str(run), "--device", "cpu"]) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(tiny_recipe), "--out", str(run), "--device", "cpu", "--resume"]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 4

    (run / "eval.json").unlink()
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert list(json.loads((run / "eval.json").read_text())) == stages


@pytest.mark.slow  # ~10-20 s: the full chain, then the ablation reusing its pretrain stage
def test_skip_changes_the_chain_and_the_eval_table(tiny_recipe, tmp_path, capsys):
    full, ablation = tmp_path / "full", tmp_path / "ablation"
    common = ["--device", "cpu", "--quiet", "--workers", "1"]
    assert main(["train", str(tiny_recipe), "--out", str(full), *common]) == 0
    capsys.readouterr()
    assert main(["train", str(tiny_recipe), "--out", str(ablation), "--skip", "read",
                 "--skip", "highres", "--reuse", str(full), *common]) == 0
    out = capsys.readouterr().out
    assert f"stage pretrain: reused {full / 'pretrain' / FINAL}" in out
    assert f"starting from {ablation / 'pretrain' / FINAL} (read, highres skipped)" in out
    assert not (ablation / "read").exists() and not (ablation / "highres").exists()
    assert (ablation / "pretrain" / FINAL).read_bytes() == (full / "pretrain" / FINAL).read_bytes()
    assert load_file(ablation / "sft" / FINAL)["extra"]["started_from"] == "pretrain"
    saved = json.loads((ablation / "run.json").read_text())
    assert (saved["stages"], saved["skipped"]) == (["pretrain", "sft"], ["read", "highres"])
    table = json.loads((ablation / "eval.json").read_text())
    assert list(table) == ["pretrain", "sft"]
    assert table["sft"]["started_from"] == "pretrain"
    assert json.loads((full / "eval.json").read_text())["sft"]["started_from"] == "highres"
    assert "sft          pretrain" in out  # the printed table says what SFT started from
    lines = [json.loads(x) for x in (ablation / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in lines} == {"sft"}  # pretrain was copied, not trained

    # the same folder is not continued with another chain
    assert main(["train", str(tiny_recipe), "--out", str(ablation), "--resume", *common]) == 1
    assert "skipped: read, highres" in capsys.readouterr().err
    assert main(["eval", str(full), str(ablation), "--saved"]) == 0
    side = capsys.readouterr().out
    assert "pretrain > read > highres > sft" in side and "pretrain > sft" in side
    assert "difference" in side


def test_eval_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 1
    assert "not a training run folder" in capsys.readouterr().err


def test_token_mismatch_is_reported_before_any_work(tiny_recipe, tmp_path, capsys):
    raw = yaml.safe_load(tiny_recipe.read_text())
    raw["train"]["model"] = {"preset": "tiny", "connector": "perceiver", "perceiver_latents": 9}
    tiny_recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["train", str(tiny_recipe), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "image_tokens_per_tile is 16" in err and "makes 9 tokens" in err
    assert not (tmp_path / "shards").exists()


def test_bad_stage_seeds_are_refused_before_any_work(tmp_path, capsys):
    out = ["--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main(["train", str(DEMO), "--stage-seed", "sft", *out]) == 1
    assert "expected STAGE=N with an integer N" in capsys.readouterr().err
    assert main(["train", str(DEMO), "--skip", "highres", "--stage-seed", "highres=2", *out]) == 1
    assert "--stage-seed highres=...: the run trains no such stage" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
