"""bench.py: the arithmetic of the figures (by hand), the bare loop against train.py's step, the shared JSON
file, bad input, and the three subcommands run as a user runs them (--quick, CPU, lenet)."""
import json
import os
import subprocess
import sys
import time
import types

import pytest
import torch

import bench
import data
import optim
import race
import runtime
from conftest import HERE, run_script
from models import build_model


# ----------------------------------------------------------------------------- the figures, by hand

def test_summary_ratio_overhead_by_hand():
    s = bench.summarize([100.0, 80.0, 120.0])
    assert s["median"] == 100.0 and s["min"] == 80.0 and s["max"] == 120.0 and s["spread"] == pytest.approx(0.4)
    assert bench.summarize([5.0, 7.0])["median"] == 6.0 and bench.summarize([0.0])["spread"] == 0.0
    assert bench.speed_ratio(300.0, 10.0) == 30.0
    assert bench.speed_ratio(s, bench.summarize([10.0, 10.0])) == 10.0
    # overhead = bare / train - 1: train.py at 100 img/s, bare at 104 -> train.py 4% slower
    assert bench.overhead_pct(100.0, 104.0) == pytest.approx(4.0)
    assert bench.overhead_pct(200.0, 190.0) == pytest.approx(-5.0)  # train.py faster: noise, reads negative
    assert bench.overhead_pct(s, bench.summarize([90.0, 110.0, 130.0])) == pytest.approx(10.0)
    # per A B pair: +5%, -5%, +10% -> median +5%
    assert bench.paired_overhead_pct([100.0, 200.0, 100.0], [105.0, 190.0, 110.0]) == pytest.approx(5.0)
    for bad in ((1.0, 0.0), (-1.0, 1.0)):
        with pytest.raises(ValueError):
            bench.speed_ratio(*bad)
    busy = runtime.cpu_busy(0.05)
    assert busy is None or 0 <= busy <= 1


def test_time_passes_alternates_contenders():
    calls = []
    rates = bench.time_passes([lambda: calls.append("A"), lambda: calls.append("B")], 10, 3, torch.device("cpu"))
    assert "".join(calls) == "AB" + "ABABAB"  # one warm-up each, then A B per round
    assert [len(r) for r in rates] == [3, 3] and all(v > 0 for r in rates for v in r)
    calls.clear()
    rates = bench.time_passes([lambda: calls.append("A"), lambda: calls.append("B")], 10, 3, torch.device("cpu"),
                              warmup=0, budget_s=0.0)
    assert "".join(calls) == "AB" and [len(r) for r in rates] == [1, 1]  # over budget: no second round


# ----------------------------------------------------------------------------- the bare loop does train.py's work

def test_bare_step_does_what_train_step_does():
    """Same weights, same batch, two steps each: same weights after, and both schedules moved on twice,
    so the speed comparison weighs the step function's wrapper and nothing else."""
    device, targs = torch.device("cpu"), bench.train_args("lenet", 8)
    torch.manual_seed(0)
    base = build_model("lenet")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    models, schedulers = [], []
    for make_step in (optim.make_train_step, bench.make_bare_step):
        raw, model = bench.place(build_model("lenet"), device, False, False)
        raw.load_state_dict(base.state_dict())
        optimizer, scheduler, scaler, criterion = optim.training_parts(raw, targs, device, None, 10)
        step = make_step(model, optimizer, scheduler, criterion, device, None, scaler)
        for _ in range(2):
            step(x, y)
        models.append(raw)
        schedulers.append(scheduler)
    for a, b in zip(*(m.state_dict().values() for m in models)):
        torch.testing.assert_close(a, b)
    assert schedulers[0].last_epoch == schedulers[1].last_epoch == 2
    assert not torch.equal(models[0].conv1.weight, base.conv1.weight)


# ----------------------------------------------------------------------------- the JSON file

def test_save_section_keeps_other_sections(tmp_path, capsys):
    path = str(tmp_path / "bench.json")
    mark = {"generator": "cifar10-toolkit bench.py"}
    (tmp_path / "bench.json").write_text(json.dumps({**mark, "bench": "data", "ratio": 3.0}))  # keys a user added
    env = {"device": "cpu", "torch": torch.__version__}
    bench.save_section(path, "step", {"rows": [1]}, env)
    bench.save_section(path, "epoch", {"total_s": 2.0}, {**env, "device": "other"})
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res == {**mark, "bench": "data", "ratio": 3.0, "device": "other", "torch": torch.__version__,
                   "step": {"rows": [1]}, "epoch": {"total_s": 2.0}}
    bench.save_section(path, "step", {"rows": [2]}, env)  # a rerun replaces its own section only
    assert json.loads((tmp_path / "bench.json").read_text())["epoch"] == {"total_s": 2.0}
    assert os.listdir(tmp_path) == ["bench.json"]  # the temp file was renamed into place
    (tmp_path / "bench.json").write_text("{half a fi")  # the file broke while the bench ran: it is kept as it is
    assert bench.save_section(path, "data", {"ratio": 1.0}, env) == {**mark, **env, "data": {"ratio": 1.0}}
    assert (tmp_path / "bench.json").read_text() == "{half a fi"
    assert json.loads((tmp_path / "bench.json.new").read_text()) == {**mark, **env, "data": {"ratio": 1.0}}
    assert "bench.json.new" in capsys.readouterr().err


def test_a_bench_json_from_before_the_mark_is_still_added_to(tmp_path):
    env = {"device": "cpu", "torch": "2.4", "torchvision": "0.19", "python": "3.12", "threads": 2,
           "measured": "2026-11-30T10:00:00"}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({**env, "race": {**env, "ratio_window": 1.76}}))
    bench.main(["data", "--images", "64", "--repeats", "1", "--workers", "0", "--device", "cpu", "--out", str(path)])
    res = json.loads(path.read_text())
    assert res["generator"] == "cifar10-toolkit bench.py" and res["race"]["ratio_window"] == 1.76 and "data" in res


def test_an_earlier_race_is_replaced_only_with_force(tmp_path, monkeypatch, capsys):
    """A race took hours: a rerun into its --out is refused before any work; the other sections are simply rerun."""
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"generator": "cifar10-toolkit bench.py", "data": {"images": 1},
                                "race": {"measured": "2026-12-01T10:00:00"}}))
    bench.main(["data", "--images", "64", "--repeats", "1", "--workers", "0", "--device", "cpu", "--out", str(path)])
    assert json.loads(path.read_text())["data"]["images"] == 64
    monkeypatch.setitem(sys.modules, "airbench", types.ModuleType("airbench"))
    monkeypatch.setattr(race, "run_lanes", lambda args: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as e:
        bench.main(["race", "--work", str(tmp_path / "w"), "--device", "cpu", "--out", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "already holds a 'race' section (measured 2026-12-01T10:00:00); use --force" in err


@pytest.mark.parametrize("content", ["my notes, not JSON", "[1, 2]", '{"data": {"mean": [0.5]}, "device": "cpu"}',
                                     None])
def test_out_that_is_not_a_bench_json_is_refused_before_any_work(tmp_path, content):
    """A --out that is a user's other file, JSON ones too (a run's config.json, whose "data" and "device" a section
    would replace), or one in a missing folder, stops the run at once, the file untouched."""
    out = tmp_path / "notes.txt" if content is not None else tmp_path / "missing" / "bench.json"
    if content is not None:
        out.write_text(content)
    r = run_script("bench.py", "data", "--images", "64", "--out", str(out), timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ("not a bench.json" if content is not None else "does not exist") in r.stderr
    assert (out.read_text() == content) if content is not None else not out.parent.exists()


def test_out_that_is_a_folder_is_refused_before_any_work(tmp_path):
    r = run_script("bench.py", "data", "--images", "64", "--out", str(tmp_path), timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"--out {tmp_path} is a folder; name a file" in r.stderr


# ----------------------------------------------------------------------------- bad input

def test_unknown_arch_one_line_exit_2():
    r = run_script("bench.py", "step", "--arch", "lenet5", timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "lenet5" in r.stderr and "resnet18" in r.stderr


@pytest.mark.parametrize("argv, words", [
    (["step", "--batch-size", "0"], "--batch-size"),
    (["step", "--warmup", "0"], "--warmup"),
    (["epoch", "--subset", "-5"], "--subset"),
    (["epoch", "--device", "bogus"], "--device"),
    (["data", "--device", "cuda"], "CUDA"),
    (["data", "--workers", "-1"], "--workers must be >= 0, got -1"),
    (["data", "--out", ""], "--out '' names no file"),
])
def test_bad_flags_one_line_exit_2(argv, words, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and words in err


# ----------------------------------------------------------------------------- the subcommands, as a user runs them

# the three subcommands end to end take about 20 s of a 2-core CPU: the full suite only
@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """data, step and epoch --quick on the CPU, all into one JSON file: (that file's content, {cmd: process})."""
    out = str(tmp_path_factory.mktemp("bench") / "bench.json")
    # one thread: on a small CPU that something else keeps busy, two threads wait on each other many times
    # longer (see runtime.cpu_busy); these tests check what is written, not how fast it ran
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        "data": run_script("bench.py", "data", "--quick", "--images", "1024", "--repeats", "1", "--batch-size", 256,
                           "--device", "cpu", "--out", out, timeout=120, env=env),
        "step": run_script("bench.py", "step", "--arch", "lenet", "--quick", "--repeats", 3, "--device", "cpu",
                           "--out", out, timeout=120, env=env),
        "epoch": run_script("bench.py", "epoch", "--arch", "lenet", "--quick", "--data", data_dir, "--subset", 1000,
                            "--device", "cpu", "--out", out, timeout=120, env=env),
    }
    for cmd, p in procs.items():
        assert p.returncode == 0, f"bench.py {cmd}: {p.stderr}"
    with open(out) as f:
        return json.load(f), procs


@pytest.mark.slow
def test_one_file_holds_every_section(runs):
    res, _ = runs
    assert list(res) == ["generator", "device", "torch", "torchvision", "python", "threads", "measured", "data", "step",
                         "epoch"]
    assert res["torch"] == torch.__version__ and res["device"].startswith("cpu")
    for cmd in ("data", "step", "epoch"):
        assert res[cmd]["torch"] == torch.__version__ and res[cmd]["device"] == res["device"]


@pytest.mark.slow
def test_data_quick(runs):
    res, procs = runs
    d = res["data"]
    assert d["ratio"] > 0 and d["ours_images_per_s"] > 0 and d["torchvision_images_per_s"] > 0
    assert "ratio" in procs["data"].stdout


@pytest.mark.slow
def test_step_quick(runs):
    res, procs = runs
    s = res["step"]
    assert s["arch"] == "lenet" and s["batch_size"] == 128 and s["limit_overhead_pct"] == 5.0
    assert "--quick on the CPU" in s["compile_skipped"] and "compile settings skipped" in procs["step"].stdout
    assert [(r["amp"], r["channels_last"], r["compile"]) for r in s["rows"]] == [
        ("fp32", False, False), ("fp32", True, False), ("bf16", False, False), ("bf16", True, False)]
    for r in s["rows"]:
        assert r["train_images_per_s"] > 0 and r["bare_images_per_s"] > 0 and r["steps_per_repeat"] >= 1
        # a slowed-down machine may end the rounds early (time_passes' budget), always after whole A B pairs
        assert 1 <= len(r["train"]["runs"]) == len(r["bare"]["runs"]) <= s["repeats"] == 3
        assert r["overhead_pct"] == pytest.approx((r["bare_images_per_s"] / r["train_images_per_s"] - 1) * 100)
        assert r["pass"] == (r["overhead_pct"] < 5.0) and isinstance(r["noisy"], bool)
    assert s["all_pass"] == all(r["pass"] for r in s["rows"])
    table = [line for line in procs["step"].stdout.splitlines() if line.startswith(("  fp32", "  bf16"))]
    assert len(table) == 4 and all(("PASS" in line) != ("FAIL" in line) for line in table)


def test_a_timed_epoch_shows_its_steps_on_a_terminal_only(monkeypatch, capsys):
    class Loader:  # a stand-in for data.py's loader: three batches of 4
        num_samples = 12

        def set_epoch(self, epoch):
            pass

        def __len__(self):
            return 3

        def __iter__(self):
            return iter([(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))] * 3)

    def step(x, y):
        return torch.tensor(1.0), torch.zeros(len(x), 10)
    for tty in (True, False):
        monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
        res = bench.timed_epoch(Loader(), step, torch.device("cpu"), 0, split=True)
        out = capsys.readouterr().out
        assert res["images"] == 12 and ("timed epoch" in out and "/3 " in out) == tty, out


@pytest.mark.slow
def test_epoch_quick(runs):
    res, procs = runs
    e = res["epoch"]
    assert (e["arch"], e["n_train"], e["steps"], e["amp"]) == ("lenet", 1000, 8, "bf16") and 0 < e["n_test"] <= 1000
    for key in ("data_s", "compute_s", "eval_s", "train_s", "total_s", "train_images_per_s", "total_images_per_s",
                "peak_memory_bytes"):
        assert e[key] > 0, key
    assert e["data_s"] + e["compute_s"] <= e["train_s"] and e["total_s"] == pytest.approx(e["train_s"] + e["eval_s"])
    assert "RSS" in e["peak_memory_kind"] and "peak memory" in procs["epoch"].stdout
    assert 0 <= e["test_acc"] <= 1


def test_data_from_a_missing_folder_is_refused(tmp_path):
    r = run_script("bench.py", "data", "--quick", "--data", tmp_path / "nowhere", "--out", tmp_path / "b.json")
    assert r.returncode == 2 and "CIFAR-10 in" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "b.json").exists()


def loads_recorded(monkeypatch):
    """data.load_cifar10 that records (root, download) and finds nothing there (DataError, as a missing folder)."""
    calls = []

    def load(root, download=False):
        calls.append((root, download))
        raise data.DataError(f"CIFAR-10 in {root}: folder not found; fetch the official files with --download")
    monkeypatch.setattr(data, "load_cifar10", load)
    return calls


@pytest.mark.parametrize("cmd", ["data", "race"])
def test_download_reaches_load_cifar10_as_the_data_error_advises(cmd, tmp_path, monkeypatch, capsys):
    """Every subcommand that reads CIFAR-10 takes --download, which DataError's one line advises; race fetches
    once, in this process, before any lane starts (its lanes then read --data as it is)."""
    calls = loads_recorded(monkeypatch)
    monkeypatch.setitem(sys.modules, "airbench", types.ModuleType("airbench"))
    monkeypatch.setattr(race, "run_lanes", lambda args: pytest.fail("a lane started"))
    for flags in ([], ["--download"]):
        with pytest.raises(SystemExit) as e:
            bench.main([cmd, "--data", str(tmp_path / "d"), *flags, "--device", "cpu", "--out",
                        str(tmp_path / "b.json"), *(["--work", str(tmp_path / "race")] if cmd == "race" else [])])
        assert e.value.code == 2 and "with --download" in capsys.readouterr().err
    assert calls == [(str(tmp_path / "d"), False), (str(tmp_path / "d"), True)]
    assert "--download" not in race.race_flags("fast", "d", 0, "o")  # the fast lane's train.py: no second fetch


@pytest.mark.parametrize("cmd", ["data", "epoch"])
def test_download_without_data_is_refused_in_one_line(cmd, capsys, monkeypatch):
    """Their default is synthetic images: --download alone would fetch nothing, silently."""
    add_args, _, help_ = bench.SUBCOMMANDS[cmd]
    monkeypatch.setitem(bench.SUBCOMMANDS, cmd, (add_args, lambda args: pytest.fail("it ran"), help_))
    with pytest.raises(SystemExit) as e:
        bench.main([cmd, "--download", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--download fetches CIFAR-10 into --data" in err, err


def test_help_shows_no_empty_default(capsys):
    """'(default: )' after --fast-args (an empty string) says nothing: the default of "" or [] is left out,
    a default of 0 is told."""
    with pytest.raises(SystemExit) as e:
        bench.main(["race", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and text.endswith("--fast-args='--cuda-graph'") and "(default: )" not in text, text
    ap = runtime.OneLineParser(prog="p")
    for flag, default in (("--s", ""), ("--l", []), ("--z", 0), ("--x", "x")):
        ap.add_argument(flag, default=default, nargs="*" if default == [] else None, help=f"flag{flag}")
    text = " ".join(ap.format_help().split())
    assert "flag--s --l" in text and "flag--l --z" in text and "flag--z (default: 0)" in text, text
    assert "flag--x (default: x)" in text and "(default: [])" not in text, text


# ----------------------------------------------------------------------------- race: fast against airbench94

def fake_lanes(monkeypatch, fast_s=0.02, air_s=0.3, air_fails=False, busy=0.0):
    """race's two kinds of run replaced by sleeps that return records shaped like the real ones; a run
    that finds the race stopped ends as launch ends it (Cancelled). Returns the list of runs started."""
    started_runs = []

    def fake(kind, length):
        def run(args, seed, core, started, stopped):
            started_runs.append((kind, seed))
            t0 = time.time() - started
            if kind == "airbench94" and air_fails:
                raise race.RaceError("a run exited with 1; its output: x.log", code=1)
            time.sleep(length)
            if stopped():  # as fast_run does: a cut run tells how many epochs it finished (2 of 4) and half its 3rd
                e = race.Cancelled()
                e.epoch_times, e.part = [length / 4] * 2, 0.5
                raise e
            # fast's seeds after the race's 0-2 (filling its lane) score below every bar: they are not judged
            acc = (0.905 + seed / 1000 if seed < 3 else 0.5) if kind == "fast" else 0.904
            return {"seed": seed, "tta_acc": acc, "acc": 0.9,
                    "whole_s": length, "counted_s": length / 2, "epoch_times": [length / 4] * 4, "core": core,
                    "start_s": t0, "end_s": time.time() - started}
        return run
    monkeypatch.setattr(race, "fast_run", fake("fast", fast_s))
    monkeypatch.setattr(race, "airbench_run", fake("airbench94", air_s))
    monkeypatch.setattr(race, "airbench_data", lambda data_dir, work, download: None)
    monkeypatch.setitem(sys.modules, "airbench", types.ModuleType("airbench"))
    monkeypatch.setattr(runtime, "cpu_busy", lambda seconds=0.5: busy)
    return started_runs


def test_race_runs_both_lanes_at_once_and_writes_the_ratio(tmp_path, monkeypatch, capsys):
    fake_lanes(monkeypatch)
    out = str(tmp_path / "bench.json")
    bench.main(["race", "--seeds", "0", "1", "2", "--work", str(tmp_path / "race"), "--device", "cpu", "--out", out])
    s = json.load(open(out))["race"]
    fast, air = s["fast"], s["airbench94"]
    # airbench94 starts no run once fast has done its seeds (0.06 s): one run of 0.3 s, on the other core ...
    assert [r["seed"] for r in air] == [0] and air[0]["core"] == 1 and air[0]["start_s"] < fast[0]["end_s"]
    # ... while fast goes on with the next seeds until it ends; the run in progress then is cut, not counted
    assert [r["seed"] for r in fast] == list(range(len(fast))) and len(fast) >= 6 and all(r["core"] == 0 for r in fast)
    assert s["fast_runs_cut"] == 1 and fast[-1]["end_s"] <= air[0]["end_s"] and s["race_s"] >= 0.3
    assert s["ratio_whole"] == pytest.approx(0.3 / 0.02) and s["ratio_counted"] == pytest.approx(0.3 / 0.02)
    assert s["ratio_window"] == pytest.approx(len(fast) + 0.625)  # the cut run: 2.5 of a run's 4 epochs
    assert s["fast_cut_epoch_times"] == [[pytest.approx(0.005)] * 2] and s["fast_cut_part_epoch"] == [0.5]
    assert s["fast_min_tta_acc"] == pytest.approx(0.905) and s["airbench94_mean_tta_acc"] == pytest.approx(0.904)
    assert s["bar"] == {"every_seed_90.4": True, "every_seed_at_least_airbench94_same_seed": True,
                        "every_seed_at_least_airbench94_mean": True, "pace_2x": True}
    assert s["drift"] == {"fast": {"runs": pytest.approx(1.0), "epochs": pytest.approx(1.0)},
                          "airbench94": {"runs": pytest.approx(1.0), "epochs": pytest.approx(1.0)}}
    runs = [{"whole_s": 10.0, "epoch_times": [9.0, 3.0, 4.0, 0.5]}, {"whole_s": 12.0, "epoch_times": [1.0, 6.0, 5.0, 1.0]}]
    assert race.drift(runs) == {"runs": pytest.approx(1.2), "epochs": pytest.approx(2.0)}  # first, last left out
    printed, work = capsys.readouterr().out, tmp_path / "race"
    assert f"race: each run's epochs as they go: {work}/fast-seed<S>.log and {work}/airbench94-seed<S>.log" in printed
    assert "pace: fast is 15.00x airbench94" in printed and "bar: every_seed_90.4 yes" in printed
    assert printed.count("[after --seeds: not in the bar]") == len(fast) - 3 and s["threads_per_lane"] == 1
    assert f"fast trained {len(fast) + 0.625:.2f} runs to airbench94's 1, {len(fast) + 0.625:.2f}x" in printed


def test_race_warns_when_other_processes_load_the_cpu(tmp_path, monkeypatch, capsys):
    fake_lanes(monkeypatch, busy=0.6)  # they would slow one lane more than the other
    out = str(tmp_path / "bench.json")
    bench.main(["race", "--seeds", "0", "--work", str(tmp_path / "race"), "--device", "cpu", "--out", out])
    assert "other processes keep 60% of the CPU busy" in capsys.readouterr().err
    assert json.load(open(out))["race"]["cpu_busy_before"] == pytest.approx(0.6)


def test_the_window_ratio_counts_runs_in_the_same_stretch_of_time():
    # airbench94's 2 runs took as long as fast's 3 and a cut one; the machine sped up once fast's runs had
    # ended (airbench94's second run: 60 s, its first 100 s), so whole-process times say 80 / 50 = 1.6x
    fast = [{"whole_s": whole, "epoch_times": epochs}
            for whole, epochs in [(50.0, [20.0, 10.0, 10.0]), (60.0, [20.0, 10.0, 20.0]), (40.0, [10.0, 10.0, 10.0])]]
    air = [{"whole_s": 100.0}, {"whole_s": 60.0}]
    def cut(epochs, part=0.0):
        return [{"epoch_times": epochs, "part": part}]
    # the cut run finished 2 epochs: in the finished runs 30 of 50 s, 30 of 60, 20 of 40 (0.6, 0.5, 0.5 of a run)
    assert race.window_ratio(fast, air, cut([12.0, 6.0])) == pytest.approx((3 + (0.6 + 0.5 + 0.5) / 3) / 2)
    # ... and half its third: 5 of 50 s, 10 of 60, 5 of 40 more
    assert race.window_ratio(fast, air, cut([12.0, 6.0], 0.5)) == pytest.approx((3 + (0.7 + 2 / 3 + 0.625) / 3) / 2)
    assert race.window_ratio(fast, air, cut([], 0.25)) == pytest.approx((3 + (0.1 + 1 / 12 + 0.0625) / 3) / 2)
    # all 3 epochs of the finished runs done, and no 4th to take a part of: 40 of 50 s, 50 of 60, 30 of 40
    assert race.window_ratio(fast, air, cut([1.0] * 3, 0.5)) == pytest.approx((3 + (0.8 + 5 / 6 + 0.75) / 3) / 2)
    assert race.window_ratio(fast, air, cut([])) == pytest.approx(1.5)  # cut at its start
    assert race.window_ratio(fast, air, []) == pytest.approx(1.5) and race.window_ratio([], air, []) is None
    assert race.epoch_times("/nonexistent") == []


def test_the_bar_reads_airbench94s_accuracy_per_seed_and_by_its_mean():
    def runs(*seed_accs):
        return [{"seed": seed, "tta_acc": acc} for seed, acc in seed_accs]
    # fast at or above airbench94's mean on every seed, but below its seed 0; fast's seed 2 has no airbench94 run;
    # airbench94's runs listed in another order than fast's, so seeds pair by number, not by place
    # fast's seed 5 ran after the race's seeds, only to keep its lane loaded: below airbench94's seed 5, not judged
    s = {"seeds": [0, 1, 2], "fast": runs((0, 0.906), (1, 0.907), (2, 0.905), (5, 0.901)),
         "airbench94": runs((1, 0.902), (0, 0.908), (5, 0.903)),
         "ratio_whole": 2.0, "fast_min_tta_acc": 0.905, "airbench94_mean_tta_acc": 0.905}
    assert race.bar(s) == {"every_seed_90.4": True, "every_seed_at_least_airbench94_same_seed": False,
                           "every_seed_at_least_airbench94_mean": True, "pace_2x": True}
    # a tie passes, also against airbench94's float32 figure; fast's seed 2 (no airbench94 run) fails 90.4 and the
    # mean reading, not the same-seed one
    s["airbench94"][1]["tta_acc"], s["fast"][2]["tta_acc"] = torch.tensor(0.906).item(), 0.903
    s["fast_min_tta_acc"], s["airbench94_mean_tta_acc"], s["ratio_whole"] = 0.903, 0.904, 1.99
    assert race.bar(s) == {"every_seed_90.4": False, "every_seed_at_least_airbench94_same_seed": True,
                           "every_seed_at_least_airbench94_mean": False, "pace_2x": False}
    s["airbench94"] = runs((3, 0.5))  # no seed in common: nothing shows fast at airbench94's level seed by seed
    assert not race.bar(s)["every_seed_at_least_airbench94_same_seed"]
    s["ratio_whole"], s["ratio_window"] = 2.1, 1.9  # the pace reads the window ratio where a race has one
    assert not race.bar(s)["pace_2x"]
    s["ratio_whole"], s["ratio_window"] = 1.9, 2.0
    assert race.bar(s)["pace_2x"]
    s["ratio_whole"], s["ratio_window"] = 2.0, None  # a CUDA race has none: the whole-process ratio
    assert race.bar(s)["pace_2x"]


def test_a_failed_run_stops_both_lanes_in_one_line(tmp_path, monkeypatch, capsys):
    runs = fake_lanes(monkeypatch, fast_s=0.1, air_fails=True)
    t0 = time.time()
    with pytest.raises(SystemExit) as e:
        bench.main(["race", "--seeds", "0", "1", "2", "3", "4", "--work", str(tmp_path), "--device", "cpu",
                    "--out", str(tmp_path / "b.json")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and len(err.strip().splitlines()) == 1 and "exited with 1" in err, err
    assert [k for k, _ in runs].count("fast") == 1 and time.time() - t0 < 0.5  # fast's lane stopped at once
    assert not os.path.exists(tmp_path / "b.json")


def test_race_pins_each_run_to_its_core_with_one_thread(tmp_path):
    log = str(tmp_path / "log")
    code = "import os, torch; print(sorted(os.sched_getaffinity(0)), torch.get_num_threads())"
    assert race.launch([sys.executable, "-c", code], log, 1, None) > 0
    assert open(log).read().split() == ["[1]", "1"]
    with pytest.raises(race.RaceError, match="exited with 3"):
        race.launch([sys.executable, "-c", "raise SystemExit(3)"], log, 0, None)
    t0 = time.time()
    with pytest.raises(race.Cancelled):  # a run the race no longer needs is stopped, not waited for
        race.launch([sys.executable, "-c", "import time; time.sleep(30)"], log, 0, None, stopped=lambda: True)
    assert time.time() - t0 < 10


def test_race_passes_fast_args_to_the_fast_lane(tmp_path, monkeypatch):
    """--fast-args='--cuda-graph --epochs 9' reach train.py's command line as two more flags; the run's count holds
    its init, training and TTA."""
    seen = []

    def launch(cmd, log, core, cwd, env=None, stopped=None):
        seen.append(cmd)
        out = cmd[cmd.index("--out") + 1]
        os.makedirs(out)
        json.dump({"init_time_s": 1, "train_time_s": 2, "tta_eval_s": 0.25, "final_test_acc": 0.9,
                   "tta_test_acc": 0.91}, open(os.path.join(out, "summary.json"), "w"))
        open(os.path.join(out, "metrics.jsonl"), "w").write('{"epoch_time": 2, "eval_time": 0.5}\n')  # not counted
        return 3.0
    monkeypatch.setattr(race, "launch", launch)
    args = types.SimpleNamespace(recipe="fast-cpu", fast_args="--cuda-graph  --epochs 9")
    race.check_fast_args(args)
    args = types.SimpleNamespace(**vars(args), work=str(tmp_path), data="D", lane_env={})
    r = race.fast_run(args, 4, 0, time.time(), lambda: False)
    assert seen[0][-3:] == ["--cuda-graph", "--epochs", "9"] and r["tta_acc"] == 0.91 and r["counted_s"] == 3.25
    assert seen[0][seen[0].index("--recipe") + 1] == "fast-cpu"


def test_a_cut_fast_run_tells_the_epochs_it_finished_and_how_far_into_the_next(tmp_path, monkeypatch):
    stale = []

    def launch(cmd, log, core, cwd, env=None, stopped=None):  # stopped during epoch 3
        out = cmd[cmd.index("--out") + 1]
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "metrics.jsonl")
        if stale:  # stopped before its first epoch ended: the folder holds an earlier race's file
            os.utime(path, (time.time() - 60, time.time() - 60))
            stop = "train.py: stopped by signal SIGTERM at epoch 1, step 93; resume with: ..."
        else:
            open(path, "w").write('{"epoch_time": 2.5, "eval_time": 0.5}\n{"epoch_time": 2}\n')
            stop = "train.py: stopped by signal SIGTERM at epoch 3, step 230; resume with: ..."
        open(log, "w").write(f"fastnet: ... | batch 500x1 | 100 steps/epoch | run folder {out}\n{stop}\n")
        raise race.Cancelled()
    monkeypatch.setattr(race, "launch", launch)
    args = types.SimpleNamespace(recipe="fast", work=str(tmp_path), data="D", fast_flags=[], lane_env={})
    with pytest.raises(race.Cancelled) as e:
        race.fast_run(args, 3, 0, time.time(), lambda: True)
    assert e.value.epoch_times == [2.5, 2] and e.value.part == pytest.approx(0.3)
    stale.append(1)
    with pytest.raises(race.Cancelled) as e:
        race.fast_run(args, 3, 0, time.time(), lambda: True)
    assert e.value.epoch_times == [] and e.value.part == pytest.approx(0.93)
    log = tmp_path / "fast-seed3.log"
    log.write_text("100 steps/epoch\ntrain.py: stopped by signal SIGTERM at epoch 3, step 230; resume with: ...\n")
    assert race.part_epoch(str(log), 1) == 0  # epoch 3 is not the one after the first (metrics and log disagree)
    log.write_text("100 steps/epoch\ntrain.py: stopped by signal SIGTERM after epoch 2; resume with: ...\n")
    assert race.part_epoch(str(log), 2) == 0 and race.part_epoch(str(tmp_path / "none.log"), 0) == 0


@pytest.mark.parametrize("fast_args, says", [
    ("--epochs 0", "bench.py race --fast-args: error: --epochs must be positive, got 0"),
    ("--cuda-graph --optimizer sgd", "--cuda-graph needs --optimizer muon"),
    ("--tta 'flip", "--fast-args \"--tta 'flip\": No closing quotation"),
    ("--seed=3 --out x", "--fast-args cannot set --seed=3, --out: the race sets --recipe, --data"),
    ("--see 3", "bench.py race --fast-args: error: unrecognized arguments: --see 3"),
    ("--tta none", "--fast-args cannot set --tta none: the race compares both lanes' TTA accuracy"),
    ("--list-recipes", "--fast-args cannot hold --list-recipes: train.py prints and exits, with no run"),
    ("-h", "--fast-args cannot hold -h: train.py prints and exits, with no run"),
])
def test_race_refuses_bad_fast_args_in_one_line_before_any_run(fast_args, says, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "airbench", types.ModuleType("airbench"))
    monkeypatch.setattr(race, "run_lanes", lambda args: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as e:
        bench.main(["race", "--out", str(tmp_path / "b.json"), f"--fast-args={fast_args}", "--work", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and says in err, err


@pytest.mark.parametrize("seeds", [["0", "0"], ["-1"], [str(2**62)]])  # the lanes go on with the next seeds
def test_race_refuses_seeds_repeated_negative_or_near_the_end(seeds, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "airbench", types.ModuleType("airbench"))
    with pytest.raises(SystemExit) as e:
        bench.main(["race", "--out", str(tmp_path / "b.json"), "--seeds", *seeds, "--work", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--seeds must be different and from 0 to 2**62 - 1, got {' '.join(seeds)}" in err, err


def test_a_run_that_refuses_its_settings_stops_the_race_with_its_own_line(tmp_path):
    """What only the data can check (--val beyond the images) is found by train.py in the lane: its line is said."""
    say = "import sys; print('loading'); print('train.py: error: --val 60000 is too big', file=sys.stderr); sys.exit(2)"
    with pytest.raises(race.RaceError) as e:
        race.launch([sys.executable, "-c", say], str(tmp_path / "x.log"), None, None)
    assert e.value.code == 1 and str(e.value).startswith("a run exited with 2 (train.py: error: --val 60000 is too big)")


def test_race_py_run_by_hand_says_what_to_run_instead():
    r = subprocess.run([sys.executable, os.path.join(HERE, "race.py")], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (2, "") and r.stderr.endswith("not a script of its own: python bench.py race\n")


def test_race_without_airbench_says_how_to_install_it(tmp_path, monkeypatch, capsys, data_dir):
    monkeypatch.setitem(sys.modules, "airbench", None)  # import airbench raises ImportError
    with pytest.raises(SystemExit) as e:
        bench.main(["race", "--out", str(tmp_path / "b.json"), "--data", data_dir, "--work", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "pip install airbench" in err, err
    monkeypatch.setitem(sys.modules, "airbench", types.ModuleType("airbench"))
    with pytest.raises(SystemExit) as e:
        bench.main(["race", "--out", str(tmp_path / "b.json"), "--cores", "0", "0",
                    "--data", data_dir, "--work", str(tmp_path), "--device", "cpu"])
    assert e.value.code == 2 and "--cores" in capsys.readouterr().err


def test_race_leaves_an_earlier_races_runs_alone(tmp_path, monkeypatch, capsys, data_dir):
    """Its lanes write fast-seedS/ and airbench94-seedS.* into --work: one that holds an earlier race's is refused."""
    class Started(Exception):
        pass

    def start(args):
        raise Started
    monkeypatch.setitem(sys.modules, "airbench", types.ModuleType("airbench"))
    monkeypatch.setattr(race, "airbench_data", lambda data, work, download: None)
    monkeypatch.setattr(race, "run_lanes", start)
    (tmp_path / "cifar10").mkdir()  # airbench's copy of the data is no run: shared by races
    with pytest.raises(Started):
        bench.main(["race", "--out", str(tmp_path / "b.json"), "--data", data_dir, "--work", str(tmp_path), "--device", "cpu"])
    (tmp_path / "airbench94-seed0.log").write_text("an earlier race's log")
    monkeypatch.setattr(race, "run_lanes", lambda args: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as e:
        bench.main(["race", "--out", str(tmp_path / "b.json"), "--data", data_dir, "--work", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--work {tmp_path} holds an earlier race's runs (airbench94-seed0.log)" in err, err


def test_race_rewrites_its_own_cifar10_copy_and_keeps_one_it_did_not_write(tmp_path, monkeypatch, capsys, data_dir):
    """airbench94 reads --work/cifar10/{train,test}.pt, which each race writes from --data: a copy there that no
    race wrote (airbench's own official one, say) is refused, not replaced."""
    class Started(Exception):
        pass

    def start(args):
        raise Started
    monkeypatch.setitem(sys.modules, "airbench", types.ModuleType("airbench"))
    monkeypatch.setattr(race, "run_lanes", start)
    argv = ["race", "--out", str(tmp_path / "b.json"), "--data", data_dir, "--work", str(tmp_path), "--device", "cpu"]
    copy = tmp_path / "cifar10"
    for _ in range(2):  # the race's own copy: written, then rewritten by the next race
        with pytest.raises(Started):
            bench.main(argv)
        assert (copy / race.MARK).exists() and torch.load(copy / "test.pt")["images"].shape[1:] == (32, 32, 3)
    (copy / race.MARK).unlink()
    (copy / "train.pt").write_bytes(b"not the race's")
    monkeypatch.setattr(race, "run_lanes", lambda args: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{copy} holds train.pt and test.pt that no race wrote" in err, err
    assert (copy / "train.pt").read_bytes() == b"not the race's"


def test_race_refuses_a_bad_work_or_data_before_making_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "airbench", types.ModuleType("airbench"))
    monkeypatch.setattr(race, "run_lanes", lambda args: pytest.fail("a run started"))
    (tmp_path / "file").write_text("not a folder")
    for flags, says in [(["--work", str(tmp_path / "file" / "race")], f"{tmp_path / 'file'} is a file, not a folder"),
                        (["--work", str(tmp_path / "race"), "--data", str(tmp_path / "none")], "folder not found")]:
        with pytest.raises(SystemExit) as e:
            bench.main(["race", *flags, "--device", "cpu", "--out", str(tmp_path / "b.json")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
        assert not (tmp_path / "race").exists() and not (tmp_path / "b.json").exists()


def test_race_names_the_cpu_model_and_keeps_a_cuda_race_on_the_gpu_asked_for(tmp_path, monkeypatch):
    model = runtime.cpu_model()  # on Linux the model name lscpu shows, not just the architecture
    assert model and model in runtime.device_name(torch.device("cpu"))
    if os.path.exists("/proc/cpuinfo") and "model name" in open("/proc/cpuinfo").read():
        assert model not in ("x86_64", "aarch64", "")
    monkeypatch.setitem(sys.modules, "airbench", types.ModuleType("airbench"))
    args = types.SimpleNamespace(device=torch.device("cuda:1"), seeds=[0], cores=[0, 1], recipe="fast", fast_args="",
                                 work=str(tmp_path), data=str(tmp_path))
    for visible, lane in [(None, "1"), ("2,3", "3"), ("GPU-aa,GPU-bb", "GPU-bb")]:  # cuda:1 is the 2nd one seen
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        race.check_race(args)
        assert args.lane_env == {"CUDA_VISIBLE_DEVICES": lane}


def airbench_or_skip():
    """pip's airbench is an optional extra; .ci/run installs it and sets REQUIRE_AIRBENCH so this never skips there."""
    try:
        import airbench  # noqa: F401
    except ImportError:
        if os.environ.get("REQUIRE_AIRBENCH"):
            raise
        pytest.skip("pip's airbench is not installed (pip install airbench); the race's CPU shim needs it")


@pytest.mark.slow
def test_airbench94_trains_on_the_cpu_through_the_shim(tmp_path, data_dir):
    airbench_or_skip()
    d = data.load_cifar10(data_dir)
    os.makedirs(tmp_path / "cifar10")
    for split, n in (("train", 1024), ("test", 500)):  # one batch of 1024 per epoch: 10 steps in all
        x, y = d[split]
        torch.save({"images": x[:n].permute(0, 2, 3, 1).contiguous(), "labels": y[:n], "classes": d["classes"]},
                   tmp_path / "cifar10" / f"{split}.pt")
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, race.__file__, "--seed", "0", "--device", "cpu", "--out", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(out))
    assert 0 <= res["tta_acc"] <= 1 and 0 <= res["acc"] <= 1 and res["threads"] == 1
    assert len(res["epoch_times"]) == 10 and all(t > 0 for t in res["epoch_times"])  # ceil(9.9) epochs
    assert res["counted_s"] >= sum(res["epoch_times"]) and res["process_s"] > res["counted_s"]
    assert "tta_val_acc" in r.stdout  # airbench's own table, printed as published
