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


@pytest.mark.slow  # ~10-25 s: three builds, three stages, four evals
def test_train_runs_every_stage_then_eval_and_resume(tiny_recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_recipe), "--out", str(run), "--device", "cpu", "--quiet",
                 "--workers", "1"]) == 0
    stages = ["pretrain", "highres", "sft"]
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
    assert capsys.readouterr().out.count("finished earlier") == 3

    (run / "eval.json").unlink()
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert list(json.loads((run / "eval.json").read_text())) == stages


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
