"""recipes.py through train.py: a recipe fills the defaults and flags given win, fast-cpu is the race's flags,
--list-recipes names every recipe's source and report figure, and every recipe trains a step."""
import json

import pytest

import recipes
import train
from conftest import BIG, slow_if


def test_recipe_fills_defaults_and_explicit_flags_win():
    args = recipes.parse_args(train.get_parser(), ["--recipe", "report004-dainet7", "--lr", "0.01", "--epochs", "3"])
    assert (args.arch, args.optimizer, args.batch_size, args.betas) == ("dainet7", "adam", 128, [0.9, 0.99])
    assert args.gamma == [0.5, 0.3, 0.1, 0.01, 0.001] and args.lr == 0.01 and args.epochs == 3
    plain = recipes.parse_args(train.get_parser(), [])
    assert (plain.arch, plain.lr, plain.epochs) == ("resnet18", 0.1, 200)


def test_help_with_a_recipe_shows_the_recipes_defaults(capsys):
    """--help after (or before) --recipe NAME shows what the run would use: the recipe's values, not train.py's."""
    for name, argv in (("fast", ["--recipe", "fast", "--help"]), ("fast-cpu", ["--help", "--recipe=fast-cpu"])):
        with pytest.raises(SystemExit) as e:
            recipes.parse_args(train.get_parser(), argv)
        out = " ".join(capsys.readouterr().out.split())
        epochs = recipes.RECIPES[name]["epochs"]
        assert e.value.code == 0 and f"passes over the training images (default: {epochs})" in out
        assert "Nesterov SGD for the rest) (default: muon)" in out  # --optimizer


def test_fast_cpu_is_the_fast_recipe_with_the_flags_the_cpu_race_measured():
    """RESULTS.md's race 23 ran these flags (fast-cpu's earlier ones with --epochs 9 --select-frac 0.58);
    --recipe fast-cpu must train the same run."""
    flags = "--select-by loss --select-frac 0.58 --epochs 9 --image-sizes 24 32 --batch-size 400 --lr 0.1073 " \
            "--aux-lr 0.0041"
    by_flags = vars(recipes.parse_args(train.get_parser(), ["--recipe", "fast", *flags.split()]))
    by_name = vars(recipes.parse_args(train.get_parser(), ["--recipe", "fast-cpu"]))
    assert {**by_flags, "recipe": "fast-cpu"} == by_name


def test_list_recipes_names_source_and_the_reports_figure(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--list-recipes"])
    out = " ".join(capsys.readouterr().out.split())  # wrapped lines joined
    assert e.value.code == 0 and "RESULTS.md" in out
    for name, r in recipes.RECIPES.items():
        assert name in out and r["source"] in out and r.get("report", "(ours: no report figure)") in out
        assert name.startswith("report") == ("assumes" in r) and r.get("assumes", "") in out  # every report recipe
    assert "DaiNet7's (Adam 1e-3, step decay, batch 128, crop+flip, 250 epochs) is our guess" in out


def test_abbreviations_are_read_as_train_py_reads_them(capsys):
    """An abbreviation means what it means to train.py's whole parser, not to the two-option pre-parser: --l is
    ambiguous (--lr, --lookahead, --list-recipes...), --list-r the list, --rec the recipe."""
    with pytest.raises(SystemExit) as e:
        recipes.parse_args(train.get_parser(), ["--l", "0.1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "ambiguous option: --l could match" in err, err
    with pytest.raises(SystemExit) as e:
        recipes.parse_args(train.get_parser(), ["--list-r"])
    assert e.value.code == 0 and "fast-cpu" in capsys.readouterr().out
    args = recipes.parse_args(train.get_parser(), ["--rec=fast", "--epo", "3"])
    assert (args.arch, args.epochs, args.optimizer) == ("fastnet", 3, "muon")


def test_unknown_recipe(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--recipe", "fastest"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "unknown --recipe 'fastest'; choose from: report000" in err


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=slow_if(recipes.RECIPES[r]["arch"] in BIG))
                                    for r in recipes.RECIPES])
def test_every_recipe_runs_a_tiny_step(tmp_path, data_dir, recipe, capsys):
    out = tmp_path / recipe
    assert train.main(["--recipe", recipe, "--epochs", "1", "--subset", "20", "--batch-size", "10",
                       "--eval-batch-size", "20", "--data", data_dir, "--out", str(out)]) == 0
    config = json.load(open(out / "config.json"))["args"]
    assert config["recipe"] == recipe and config["arch"] == recipes.RECIPES[recipe]["arch"]
    assert ("warning: --warmup-epochs" in capsys.readouterr().err) == (config["warmup_epochs"] >= 1)  # said, not refused
