"""Recipe validation: each error names the file, key path, what was found and what was
expected; `mixdata validate` prints resolved shares and exits 0, or exits 2; every shipped
recipe validates."""
import copy
from pathlib import Path

import pytest
import yaml

from mixdata.cli import main
from mixdata.errors import RecipeError
from mixdata.recipe import RecipeLoader, Relative, load_recipe

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))

BASE = {
    "name": "toy", "seed": 3, "seq_len": 256, "image_tokens_per_tile": 16,
    "sources": {
        "web": {"format": "obelics", "uri": "/data/obelics/*.parquet"},
        "pairs": {"format": "img2dataset", "uri": "/data/pairs/{00000..00003}.tar"},
        "text": {"format": "parquet-text", "uri": "/data/text.parquet", "text_field": "body"},
        "general": {"format": "llava", "uri": "/data/llava.json"},
        "math": {"format": "cauldron", "uri": "/data/math/*.parquet"},
        "code": {"format": "cauldron", "uri": "/data/code/*.parquet"},
    },
    "stages": {
        "pretrain": {"budget": {"tokens": "1.0e6"}, "image": {"preset": "none", "max_side": 64},
                     "mixture": {"web": 45, "pairs": 45, "text": 10}},
        "sft": {"image": {"preset": "idefics3", "longest_edge": 128, "tile": 64},
                "mixture": {"general": {"weight": 2.0}, "math": {"alpha": 0.5, "relative_to": "general"},
                            "code": {"alpha": 0.25, "relative_to": "general"}}},
    },
    "train": {"model": "tiny"},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def edited(change) -> dict:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def test_base_recipe_resolves_alpha_shares(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE))
    assert recipe.name == "toy" and recipe.stages["pretrain"].budget.tokens == 1e6
    assert isinstance(recipe.stages["sft"].mixture["math"], Relative)
    # general 2.0, math 0.5 * 2.0 = 1.0, code 0.25 * 2.0 = 0.5: total 3.5
    shares = recipe.stages["sft"].shares()
    assert shares == pytest.approx({"general": 2 / 3.5, "math": 1 / 3.5, "code": 0.5 / 3.5})
    assert recipe.stages["pretrain"].shares() == pytest.approx({"web": .45, "pairs": .45, "text": .1})


ERROR_CASES = {
    "unknown top-level key": (lambda d: d.update(sed=1), "sed", "1",
                              "no such key; allowed keys are name, seed"),
    "unknown key in a source": (lambda d: d["sources"]["text"].update(txt_field="x"),
                                "sources.text.txt_field", "'x'", "allowed keys are text_field"),
    "unknown key in a stage": (lambda d: d["stages"]["sft"].update(mixtures={}),
                               "stages.sft.mixtures", "{}", "allowed keys are name, mixture"),
    "unknown key in image": (lambda d: d["stages"]["pretrain"]["image"].update(max_sid=9),
                             "stages.pretrain.image.max_sid", "9", "allowed keys are preset"),
    "wrong type": (lambda d: d.update(seq_len="long"), "seq_len", "'long'", "an integer"),
    "wrong type in image": (lambda d: d["stages"]["sft"]["image"].update(tile="big"),
                            "stages.sft.image.tile", "'big'", "an integer or null"),
    "undefined source": (lambda d: d["stages"]["pretrain"]["mixture"].update(laion=5),
                         "stages.pretrain.mixture.laion", "'laion'",
                         "a source defined under sources: web, pairs"),
    "all-zero weights": (lambda d: d["stages"]["pretrain"].update(mixture={"web": 0, "text": 0}),
                         "stages.pretrain.mixture", "{'web': 0, 'text': 0}",
                         "weights that are not all zero"),
    "alpha without relative_to": (
        lambda d: d["stages"]["sft"]["mixture"].update(math={"alpha": 0.5}),
        "stages.sft.mixture.math.relative_to", "'nothing'", "(required)"),
    "relative_to outside the mixture": (
        lambda d: d["stages"]["sft"]["mixture"].update(code={"alpha": 1, "relative_to": "web"}),
        "stages.sft.mixture.code.relative_to", "'web'", "another source of this stage's mixture"),
    "only alpha entries": (
        lambda d: d["stages"]["sft"].update(mixture={"math": {"alpha": 1, "relative_to": "code"},
                                                     "code": {"alpha": 1, "relative_to": "math"}}),
        "stages.sft.mixture", "{'math'", "at least one source with a weight"),
    "negative weight": (lambda d: d["stages"]["pretrain"]["mixture"].update(web=-1),
                        "stages.pretrain.mixture.web", "-1.0", "a non-negative weight"),
    "negative budget": (lambda d: d["stages"]["pretrain"].update(budget={"tokens": -5}),
                        "stages.pretrain.budget.tokens", "-5.0", "a positive budget"),
    "two budget units": (lambda d: d["stages"]["pretrain"].update(budget={"tokens": 5, "samples": 3}),
                         "stages.pretrain.budget", "{'tokens': 5.0, 'samples': 3}",
                         "exactly one of tokens, sequences, samples"),
    "unknown format": (lambda d: d["sources"]["text"].update(format="parquet-txt"),
                       "sources.text.format", "'parquet-txt'", "one of cauldron,"),
    "missing uri": (lambda d: d["sources"]["web"].pop("uri"), "sources.web.uri", "'nothing'",
                    "a path, glob or URL (required)"),
    "share above 1": (lambda d: d["stages"]["pretrain"]["mixture"].update(text={"share": 1.5}),
                      "stages.pretrain.mixture.text.share", "1.5", "a share between 0 and 1"),
    "shares leaving nothing to weigh": (
        lambda d: d["stages"]["pretrain"]["mixture"].update(text={"share": 1.0}),
        "stages.pretrain.mixture", "{'web'", "fixed shares summing below 1, leaving a part for "
        "the weighted sources (they sum to 1)"),
    "shares alone not summing to 1": (
        lambda d: d["stages"]["pretrain"].update(mixture={"web": {"share": 0.5},
                                                          "text": {"share": 0.2}}),
        "stages.pretrain.mixture", "{'web'", "fixed shares summing to 1 when no source has a "
        "weight (they sum to 0.7)"),
    "prompt on a text source": (lambda d: d["sources"]["text"].update(prompt="Read it."),
                                "sources.text.prompt", "'Read it.'",
                                "no prompt: only caption and ocr formats become conversations"),
    "empty prompt": (lambda d: d["sources"]["pairs"].update(prompt=" "), "sources.pairs.prompt",
                     "' '", "a non-empty instruction"),
    "prompt not text": (lambda d: d["sources"]["pairs"].update(prompt=3), "sources.pairs.prompt",
                        "3", "a string"),
    "unknown preset": (lambda d: d["stages"]["sft"]["image"].update(preset="llava"),
                       "stages.sft.image.preset", "'llava'", "one of 'none', 'idefics3'"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_recipe_error_names_file_key_found_and_expected(tmp_path, case):
    change, key, found, expected = ERROR_CASES[case]
    path = write(tmp_path, edited(change))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    err = info.value
    assert (err.file, err.key) == (str(path), key)
    message = str(err)
    assert message.startswith(f"{path}: {key}: found {found}"), message
    assert expected in message, message


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(RecipeError, match="a readable recipe file"):
        load_recipe(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml: <root>: found 'invalid YAML', expected valid YAML"):
        load_recipe(bad)


def test_exponent_numbers_read_as_yaml_1_2_floats(tmp_path):
    text = yaml.safe_dump(BASE, sort_keys=False).replace(
        "tokens: 1.0e6", "sequences: 2e3").replace("weight: 2.0", "weight: 2E+0")
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    recipe = load_recipe(path)
    assert recipe.stages["pretrain"].budget.sequences == 2000  # an integer field
    assert recipe.stages["sft"].mixture["general"].weight == 2.0
    loaded = yaml.load("[7.68e6, 1e-4, .5e1, -3E2, e5, 1e, 2e3x, '1e3', 12]",
                       Loader=RecipeLoader)
    assert loaded == [7.68e6, 1e-4, 5.0, -300.0, "e5", "1e", "2e3x", "1e3", 12]
    path.write_text(text.replace("sequences: 2e3", "sequences: 2.5e0"))
    with pytest.raises(RecipeError, match=r"sequences: found 2\.5, expected an integer"):
        load_recipe(path)


def test_share_entries_are_fixed_and_the_rest_split_by_weight(tmp_path):
    data = edited(lambda d: d["stages"]["sft"]["mixture"].update(
        code={"share": 0.1}, math={"alpha": 0.5, "relative_to": "code"}))
    shares = load_recipe(write(tmp_path, data)).stages["sft"].shares()
    # code 0.1 and math 0.5 x 0.1 are fixed; general, the only weight, takes the 0.85 left
    assert shares == pytest.approx({"general": 0.85, "math": 0.05, "code": 0.1})
    data = edited(lambda d: d["stages"]["pretrain"].update(
        mixture={"web": {"share": 0.25}, "pairs": {"share": 0.75}}))
    shares = load_recipe(write(tmp_path, data)).stages["pretrain"].shares()
    assert shares == pytest.approx({"web": 0.25, "pairs": 0.75})


def test_validate_prints_shares_and_exits_0(tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, BASE))]) == 0
    out = capsys.readouterr().out
    assert "recipe toy: valid" in out
    lines = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.startswith("  ")}
    assert lines["web"] == "45.00%" and lines["text"] == "10.00%"
    assert (lines["general"], lines["math"], lines["code"]) == ("57.14%", "28.57%", "14.29%")


def test_validate_json_plan(tmp_path, capsys):
    import json

    assert main(["validate", "--json", str(write(tmp_path, BASE))]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["stages"]["sft"]["shares"]["math"] == pytest.approx(1 / 3.5, abs=1e-6)
    assert plan["stages"]["sft"]["budget"] == "all data, no repeats"


def test_validate_exits_2_on_invalid_recipe(tmp_path, capsys):
    path = write(tmp_path, edited(lambda d: d["stages"]["pretrain"]["mixture"].update(laion=5)))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"invalid recipe: {path}: stages.pretrain.mixture.laion: found 'laion'" in err


def test_validate_checks_the_train_section_too(tmp_path, capsys):
    path = write(tmp_path, {**BASE, "train": {"model": "tiny", "stages": {
        "pretrain": {"warmpu": 10}}}})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: train.stages.pretrain.warmpu: found 10, expected no such key" in err
    path = write(tmp_path, {**BASE, "train": {"stages": {"nope": {}}}})
    assert main(["validate", str(path)]) == 2
    assert "train.stages.nope: found 'nope', expected a stage defined under stages" in \
        capsys.readouterr().err


def test_image_keys_of_another_preset_are_refused(tmp_path, capsys):
    path = write(tmp_path, edited(lambda d: d["stages"]["pretrain"].update(
        image={"preset": "none", "tile": 364})))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert ("stages.pretrain.image.tile: found 364, expected no tile for preset 'none', "
            "which takes resize, max_side, min_side, upscale, filter") in err


def test_shipped_recipes_are_all_there():
    assert {p.stem for p in RECIPES} >= {"demo", "mm1", "mm15", "idefics2", "idefics3",
                                         "prismatic"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert f"recipe {path.stem}: valid" in capsys.readouterr().out
    if path.stem != "demo":  # real-corpus recipes say which paper they follow
        assert path.read_text().startswith("# ")


def test_demo_recipe_stages_and_shares():
    recipe = load_recipe(RECIPES[[p.stem for p in RECIPES].index("demo")])
    assert list(recipe.stages) == ["pretrain", "read", "highres", "sft"]
    pretrain = recipe.stages["pretrain"].shares()
    text = pretrain["fineweb"] + pretrain["dolma"]
    assert (pretrain["obelics"], pretrain["laion"], text) == pytest.approx((0.45, 0.45, 0.10))
    assert recipe.stages["read"].shares() == {"renderedtext": 1.0}
    assert recipe.stages["read"].image == recipe.stages["highres"].image
    assert recipe.stages["highres"].image.preset == "idefics3"
    assert any(isinstance(e, Relative) for e in recipe.stages["sft"].mixture.values())
    assert recipe.demo is not None
    assert all(s.uri.startswith(recipe.demo.root) for s in recipe.sources.values())
