"""Smoke tests of the benchmark scripts on a tiny MNIST-shaped pipeline (28x28, 10 classes, random weights) and tiny
budgets: each script runs end to end, writes only where it is told, and its numbers follow the rules it states
(clean-and-robust scoring, one seed's 95% interval, resumed evaluations, t* + 1 steps at most). The real benchmarks
take hours; none runs here."""

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
from diffusers import DDIMScheduler

from diffusers_agdm import AdversarialGuidedPurificationPipeline
from diffusers_agdm.evaluation import EvaluationConfig
from diffusers_agdm.evaluation.execution import UnitRunner
from diffusers_agdm.evaluation.report import format_accuracy
from dummies import dummy_classifier, dummy_guidance, dummy_unet

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
COMMITTED = BENCHMARKS / "results"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed_state() -> dict:
    """The committed results and pages, which no test may change."""
    paths = [*COMMITTED.glob("*.json"), BENCHMARKS / "RESULTS.md", ROOT / "README.md"]
    return {path: path.read_bytes() for path in paths}


@pytest.fixture(scope="module")
def mnist_pipeline(tmp_path_factory):
    """A pipeline the MNIST benchmarks accept: 28x28 grey images, 10 classes, a 100-step schedule, t* = 30."""
    unet, guidance, classifier = dummy_unet(size=28), dummy_guidance(10, size=28), dummy_classifier(10, size=28)
    pipe = AdversarialGuidedPurificationPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100),
                                                 guidance=guidance, classifier=classifier, strength=0.3,
                                                 num_inference_steps=2, guidance_scale=5.0)
    folder = tmp_path_factory.mktemp("benchmarks") / "tiny-mnist"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def table_run(mnist_pipeline, tmp_path_factory):
    """robustness_table.py on 2 images, 1 APGD step, one seed, K = 3; its output folders and printed table."""
    work = tmp_path_factory.mktemp("robustness_table")
    before = _committed_state()
    argv = ["--pipeline", str(mnist_pipeline), "--norms", "Linf", "--num_images", "2", "--seeds", "0", "--steps", "1",
            "--rescore_runs", "3", "--autoattack_images", "0", "--sanity_images", "0", "--batch_size", "2",
            "--output_dir", str(work / "out"), "--results_dir", str(work / "results")]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        _script("robustness_table").main(argv)
    assert _committed_state() == before  # the committed numbers are never touched by a test
    return SimpleNamespace(work=work, argv=argv, printed=printed.getvalue(),
                           table=json.loads((work / "results" / "robustness_table.json").read_text()))


def test_robustness_table_with_one_seed_shows_three_scores_with_intervals(table_run):
    entry = table_run.table["results"]["Linf/apgd+apgd-guidance"]
    assert entry["attacks"] == ["apgd", "apgd-guidance"] and entry["rescore_runs"] == 3 and entry["images"] == 2
    assert "clean" in entry["robust_rule"] and entry["attack"]["loss"] == "margin"
    latent, unguided = entry["results"]["latent"], entry["results"]["none"]
    assert "apgd-guidance" in latent and "apgd-guidance" not in unguided  # the guidance-target row: latent only
    for kind in ("all", "majority", "single"):
        stat = latent["apgd"][kind]
        assert stat["std"] is None and len(stat["ci95"]) == 2  # one seed: no std (the old crash), an interval
        assert stat["mean"] <= latent["clean"][kind]["mean"]  # robust only if clean-correct
    printed = table_run.printed.split("| norm | attack |", 1)[1]
    row = next(line for line in printed.splitlines() if line.startswith("| Linf | apgd | 2 | latent |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[4:] == [format_accuracy(latent["clean"]["all"]),
                         *(format_accuracy(latent["apgd"][kind]) for kind in ("all", "majority", "single"))]
    assert "[" in cells[5] and "±" not in cells[5]
    assert (table_run.work / "out" / "linf" / "results.json").is_file()


def test_robustness_table_resumes_from_its_output_folder(table_run, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("a finished unit was computed again")

    monkeypatch.setattr(UnitRunner, "run", no_work)
    module = _script("robustness_table")
    with contextlib.redirect_stdout(io.StringIO()):
        module.main(table_run.argv)  # the same command: every unit is read back
        again = json.loads((table_run.work / "results" / "robustness_table.json").read_text())
        assert again["results"]["Linf/apgd+apgd-guidance"]["results"] == \
            table_run.table["results"]["Linf/apgd+apgd-guidance"]["results"]
        with pytest.raises(AssertionError, match="computed again"):  # --no-resume does recompute
            module.main([*table_run.argv, "--no-resume"])


def test_robustness_table_refuses_bad_settings_before_loading(monkeypatch, capsys):
    module = _script("robustness_table")
    monkeypatch.setattr(module, "load", lambda *a, **k: pytest.fail("the pipeline was loaded"))
    for extra, says in [(["--loss", "hinge"], "invalid choice"), (["--steps", "0"], "`steps` must be an integer"),
                        (["--num_images", "1", "2", "3"], "--num_images takes one value or one per norm"),
                        (["--seeds", "0", "0"], "`seeds` has repeats"),
                        (["--autoattack_images", "-1"], "--autoattack_images >= 0")]:
        with pytest.raises(SystemExit) as exit_info:
            module.main(extra)
        assert exit_info.value.code == 2
        assert says in capsys.readouterr().err, extra


def test_write_results_md_renders_the_three_scores_and_reads_older_results(table_run, tmp_path):
    module = _script("write_results_md")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{module.README_START}\nold table\n{module.README_END}\nrest\n")
    with contextlib.redirect_stdout(io.StringIO()):
        module.main(["--results_dir", str(table_run.work / "results"), "--output", str(tmp_path / "RESULTS.md"),
                     "--readme", str(readme)])
    page = (tmp_path / "RESULTS.md").read_text()
    latent = table_run.table["results"]["Linf/apgd+apgd-guidance"]["results"]["latent"]
    assert "robust % (all 3) | robust % (majority of 3) | robust % (one run)" in page
    assert "| latent | apgd-guidance | " + format_accuracy(latent["clean"]["all"]) in page
    assert "each number shows its 95% (Wilson) interval" in page and "Not measured yet" in page
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "only if the defense classifies it correctly both clean and attacked, in all K = 3" in text
    assert f"| latent guidance (AGDM) | {format_accuracy(latent['clean']['all'])} | " in text
    # The committed results of the earlier benchmark (PGD with CE, two seeds, not clean-and-robust) are not shown as
    # a section any more (their numbers and command describe an earlier version): the page says so and why. The
    # README table, when nothing newer exists, does not claim the clean-correct rule for them.
    older = tmp_path / "older"
    older.mkdir()
    shutil.copy(COMMITTED / "robustness_table.json", older)
    with contextlib.redirect_stdout(io.StringIO()):
        module.main(["--results_dir", str(older), "--output", str(tmp_path / "OLD.md"), "--readme", str(readme)])
    old_page = (tmp_path / "OLD.md").read_text()
    assert "| latent | pgd |" not in old_page and "Not shown: `results/robustness_table.json` was measured by an " \
        "earlier version" in " ".join(old_page.split())
    rendered = "\n".join(module.table(json.loads((COMMITTED / "robustness_table.json").read_text())))
    assert "| latent | pgd | 92.6 ± 0.0 | 49.1 ± 2.6 | 69.8 ± 1.5 | n/a |" in rendered  # still renders on request
    assert "(clean-correct or not)" in readme.read_text()


def test_steps_vs_robustness_runs_the_full_chain_at_t_star_plus_one_steps(mnist_pipeline, tmp_path, monkeypatch,
                                                                          capsys):
    module = _script("steps_vs_robustness")
    base = ["--pipeline", str(mnist_pipeline), "--num_images", "2", "--clean_images", "2", "--steps", "1",
            "--rescore_runs", "1", "--batch_size", "2", "--results_dir", str(tmp_path)]
    loaded = module.load_labelled_images
    monkeypatch.setattr(module, "load_labelled_images", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(SystemExit) as exit_info:  # t* = 30 of 100: at most 31 steps
        module.main([*base, "--ddim_steps", "2", "40", "--no-full_ddpm"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "DDIM with 40 steps" in err and "at most 31 steps" in err
    monkeypatch.setattr(module, "load_labelled_images", loaded)
    module.main([*base, "--ddim_steps", "2"])
    rows = json.loads((tmp_path / "steps_vs_robustness.json").read_text())["results"]["rows"]
    assert [(r["scheduler"], r["steps"], r["first_timestep"]) for r in rows] == [("DDIM", 2, 30),
                                                                                 ("DDPM (full chain)", 31, 30)]
    for row in rows:
        assert row["robust_all"] <= row["robust_majority"] and 0 <= row["robust_single"] <= 1


def test_attack_convergence_summarize_scores_hand_made_units(tmp_path, monkeypatch, capsys):
    module = _script("attack_convergence")
    monkeypatch.setattr(module, "WORK_DIR", tmp_path / "units")
    monkeypatch.setattr(module, "RESULTS_DIR", tmp_path)
    # K = 3 runs x 4 images. Image 0: always right; 1: clean right, attacked right in 2 of 3 runs; 2: clean wrong in
    # run 1, attacked always right; 3: attacked wrong in run 0 only.
    clean = [[1, 1, 1, 1], [1, 1, 0, 1], [1, 1, 1, 1]]
    attacked = {"5": [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]],
                "10": [[1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 1]]}
    unit = {"defense": "latent", "start": 0, "end": 4, "labels": [0, 1, 2, 3], "clean_correct": clean,
            "adversarial_correct": attacked, "gradient_evaluations": {"5": 5, "10": 10}, "attack_cpu_s": 1.0,
            "cpu_s": 2.0, "settings": {"loss": "margin"}}
    (tmp_path / "units" / "margin").mkdir(parents=True)
    (tmp_path / "units" / "margin" / "latent-00000.json").write_text(json.dumps(unit))
    module.main(["--summarize"])
    capsys.readouterr()
    result = json.loads((tmp_path / "attack_convergence.json").read_text())["results"]["margin"]["latent"]
    assert result["clean"] == {"all": 0.75, "majority": 1.0, "single": 1.0, "num_images": 4}
    first, last = result["curve"]
    assert (first["iterations"], first["all"], first["majority"], first["single"]) == (5, 0.75, 1.0, 1.0)
    # at 10: all K = images 0 only (1 lost run 1, 2 clean-wrong in run 1, 3 lost run 0); majority = all 4; run 0: 0-2
    assert (last["iterations"], last["all"], last["majority"], last["single"]) == (10, 0.25, 1.0, 0.75)
    assert (tmp_path / "attack_convergence.png").is_file()


def test_purification_throughput_times_every_mode(mnist_pipeline, monkeypatch):
    module = _script("purification_throughput")
    written = {}
    monkeypatch.setattr(module, "write_results", lambda name, settings, numbers, started: written.update(numbers))
    with contextlib.redirect_stdout(io.StringIO()):
        module.main(["--pipeline", str(mnist_pipeline), "--batch_size", "2", "--repeats", "1", "--no-cifar10_scale"])
    (result,) = written.values()
    assert set(result["modes"]) == {"none", "latent", "pixel"}
    assert result["modes"]["none"]["ratio_to_unguided"] == 1.0 and result["modes"]["latent"]["images_per_s"] > 0


def test_attack_memory_checkpointing_leaves_the_gradient_unchanged(mnist_pipeline, monkeypatch):
    module = _script("attack_memory")
    written = {}

    def in_process(command, **kwargs):  # each worker in this process instead of a fresh one: a smoke test
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            module.main(command[2:])
        return SimpleNamespace(stdout=out.getvalue())

    monkeypatch.setattr(module.subprocess, "run", in_process)
    monkeypatch.setattr(module, "write_results", lambda name, settings, numbers, started: written.update(numbers))
    with contextlib.redirect_stdout(io.StringIO()):
        module.main(["--pipeline", str(mnist_pipeline), "--steps", "1", "2", "--batch_size", "1"])
    by = {(row["steps"], row["checkpointing"]): row for row in written["rows"]}
    assert set(by) == {(1, False), (1, True), (2, False), (2, True)}
    for steps in (1, 2):
        plain, checkpointed = by[(steps, False)]["grad_abs_sum"], by[(steps, True)]["grad_abs_sum"]
        assert plain > 0 and checkpointed == pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize("script, norm, eps", [("evaluate_mnist.sh", "Linf", "0.3"),
                                               ("evaluate_mnist_l2.sh", "L2", "2.0")])
def test_evaluate_mnist_scripts_pass_only_settings_the_evaluation_knows(tmp_path, script, norm, eps):
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')  # records the command line
    (stub / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}{os.pathsep}{os.environ['PATH']}", "ARGS_FILE": str(tmp_path / "args")}
    subprocess.run(["bash", str(BENCHMARKS / script), "runs/pipe", str(tmp_path / "out")], env=env, check=True,
                   timeout=60)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:3] == ["-m", "diffusers_agdm.cli", "evaluate"]
    flags = {arg[2:] for arg in args if arg.startswith("--")}
    known = {f.name for f in fields(EvaluationConfig)} | {"pipeline", "split", "num_images", "output_dir"}
    assert flags <= known, flags - known
    value = {flag: args[args.index(f"--{flag}") + 1] for flag in ("norm", "eps", "steps", "loss", "rescore_runs")}
    assert value == {"norm": norm, "eps": eps, "steps": "100", "loss": "margin", "rescore_runs": "5"}


def test_attack_comparison_runs_both_attacks_paired_and_resumes(mnist_pipeline, tmp_path, capsys):
    module = _script("attack_comparison")
    argv = ["--pipeline", str(mnist_pipeline), "--num_images", "2", "--chunk", "1", "--steps", "2", "--restarts", "1",
            "--targeted_restarts", "1", "--eot_samples", "1", "--rescore_runs", "3", "--defenses", "none",
            "--work_dir", str(tmp_path / "units"), "--results_dir", str(tmp_path)]
    before = _committed_state()
    module.main(argv)
    assert _committed_state() == before
    printed = capsys.readouterr().out
    assert "CPU-min left" in printed and "default not weaker" in printed
    (folder,) = (tmp_path / "units").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["none-00000.json", "none-00001.json"]
    unit = json.loads((folder / "none-00000.json").read_text())
    assert len(unit["clean_correct"]) == 3 and len(unit["default"]["correct"][0]) == 1
    # On a purifier the default's 2 steps x (1 + 1 targeted) runs are one run of 4: (4 steps + start) x EOT 1 = 5
    # evaluations at most; the plain loop (EOT 2) spends as many as fit: 2 iterations x 2 draws.
    assert unit["plain"]["gradient_evaluations"] == [4]
    assert 0 < unit["default"]["gradient_evaluations"][0] <= 5
    assert "steps4-runs1+0t" in folder.name
    result = json.loads((tmp_path / "attack_comparison.json").read_text())["results"]["none"]
    assert result["num_images"] == 2
    for method in ("default", "plain"):
        for score in ("all", "majority", "single"):
            assert 0 <= result[method][score] <= 1
    assert result["default"]["all"] <= result["default"]["majority"]
    module.run_unit = lambda *a, **k: pytest.fail("a saved unit was computed again")
    module.main(argv)  # every unit is read back
    rendered = "\n".join(_script("write_results_md").attack_comparison(
        json.loads((tmp_path / "attack_comparison.json").read_text())))
    verdict = "not weaker under any score" if result["default_not_weaker"] else "WEAKER under at least one score"
    assert "## 7. The default attack against an independent loop" in rendered and verdict in rendered
    assert f"| none | plain | {100 * result['plain']['all']:.1f} |" in rendered and "early stop off" in rendered


def test_attack_comparison_counts_paired_disagreements():
    module = _script("attack_comparison")
    clean = [[1, 1, 1], [1, 1, 1], [1, 1, 1]]  # K = 3 runs x 3 images, all clean-correct
    unit = {"clean_correct": clean,
            "default": {"correct": [[0, 1, 1], [0, 1, 1], [0, 1, 0]], "gradient_evaluations": [2, 8, 8],
                        "attack_cpu_s": 1.0},
            "plain": {"correct": [[1, 0, 1], [1, 0, 1], [1, 0, 1]], "gradient_evaluations": [8, 8, 8],
                      "attack_cpu_s": 1.0}}
    result = module.summarize([unit])
    assert result["default"]["all"] == 1 / 3 and result["plain"]["all"] == 2 / 3
    assert result["default"]["majority"] == 2 / 3 and result["plain"]["majority"] == 2 / 3
    assert result["paired"]["majority"] == {"robust_to_default_broken_by_plain": 1,
                                            "robust_to_plain_broken_by_default": 1}
    assert result["default"]["mean_gradient_evaluations"] == 6 and result["default_not_weaker"]
    # Every run as a one-run trial: default robust on 5 of 9 image-runs, plain on 6; paired per image and run.
    assert result["default"]["per_run_mean"] == 5 / 9 and result["plain"]["per_run_mean"] == 6 / 9
    assert result["paired_image_runs"] == {"robust_to_default_broken_by_plain": 3,
                                           "robust_to_plain_broken_by_default": 4, "image_runs": 9}


def test_plain_attack_breaks_an_undefended_linear_classifier_inside_the_ball():
    import torch
    from torch import nn

    module = _script("attack_comparison")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(-1)
    x_adv = module.plain_attack(model, x, y, eps=1.0, gradient_evaluations=20, generator=torch.Generator())
    assert (x_adv - x).abs().max() <= 1.0 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (model(x_adv).argmax(-1) != y).float().mean() > 0.5


def test_guidance_weight_sweep_scores_every_weight_and_the_worst_case(mnist_pipeline, tmp_path, capsys):
    module = _script("guidance_weight")
    module.main(["--pipeline", str(mnist_pipeline), "--num_images", "1", "--chunk", "1", "--steps", "1",
                 "--targeted_restarts", "1", "--rescore_runs", "2", "--weights", "0", "1",
                 "--work_dir", str(tmp_path / "units"), "--results_dir", str(tmp_path)])
    result = json.loads((tmp_path / "guidance_weight.json").read_text())["results"]
    assert set(result) == {"w0", "w1", "worst case over weights", "strongest", "strongest_worst_case"}
    for score in ("all", "majority", "single"):
        assert result["worst case over weights"][score] <= min(result["w0"][score], result["w1"][score])
    # The `worst-case` row beside `apgd`: per image, the example misclassified on more selection runs, then scored.
    (settings,) = (tmp_path / "units").iterdir()
    plain, guided = (json.loads((settings / f"{key}-00000.json").read_text()) for key in ("w0", "w1"))
    pick = guided if (guided["selection_wrong"][0], guided["selection_loss"][0]) > (
        plain["selection_wrong"][0], plain["selection_loss"][0]) else plain
    expected = module.score_units([{"clean_correct": plain["clean_correct"], "correct": pick["correct"]}])
    assert {k: result["w1"]["worst_case_with_apgd"][k] for k in ("all", "majority", "single")} == {
        k: expected[k] for k in ("all", "majority", "single")}
    assert result["strongest_worst_case"] == "w1" and "worst_case_with_apgd" not in result["w0"]
    key = lambda w: (result[w]["majority"], result[w]["all"], result[w]["single"], result[w]["per_run_mean"])  # noqa
    assert result["strongest"] == min(("w0", "w1"), key=key)
    assert "CPU-min left" in capsys.readouterr().out
    rendered = "\n".join(_script("write_results_md").guidance_weight(
        json.loads((tmp_path / "guidance_weight.json").read_text())))
    assert "## 8. The guidance-target weight" in rendered and f"**{result['strongest']}**" in rendered
    assert f"| w1 | {100 * result['w1']['all']:.1f} |" in rendered
    assert f"| apgd + apgd-guidance w1 | {100 * result['w1']['worst_case_with_apgd']['all']:.1f} |" in rendered


def test_guidance_weight_keeps_examples_rejudges_them_and_refuses_other_work(mnist_pipeline, tmp_path):
    module = _script("guidance_weight")
    args = ["--pipeline", str(mnist_pipeline), "--num_images", "1", "--chunk", "1", "--steps", "1",
            "--rescore_runs", "2", "--selection_runs", "3", "--weights", "0", "1", "--work_dir",
            str(tmp_path / "units"), "--results_dir", str(tmp_path), "--no_reuse"]
    module.main(args)
    (settings,) = (tmp_path / "units").iterdir()
    assert not list(settings.glob("*.safetensors"))
    # Keeping examples recomputes the units that lack them (checked to be the same work), then re-judges them.
    module.main([*args, "--keep_examples", "--selection_study", "3", "9"])
    assert sorted(p.name for p in settings.glob("*.safetensors")) == ["w0-00000.safetensors", "w1-00000.safetensors"]
    result = json.loads((tmp_path / "guidance_weight.json").read_text())["results"]
    # The units' own 3 selection runs re-judged from the kept images: the very row chosen from the records.
    assert result["selection_study"]["3"]["w1"] == result["w1"]["worst_case_with_apgd"]
    assert set(result["selection_study"]["9"]) == {"w1"}
    rendered = "\n".join(module.markdown_lines(result))
    row = result["selection_study"]["9"]["w1"]
    assert f"| apgd + apgd-guidance w1 | 9 | {100 * row['all']:.1f} | {100 * row['majority']:.1f} |" in rendered
    # Another number of selection runs re-judges the kept images (no attack): the scoring records stay.
    before = json.loads((settings / "w1-00000.json").read_text())
    module.main([*args[:-1], "--selection_runs", "9", "--no_reuse"])
    after = json.loads((settings / "w1-00000.json").read_text())
    assert after["selection_runs"] == 9 and after["correct"] == before["correct"]
    assert after["attack_cpu_s"] == before["attack_cpu_s"]
    # A unit whose records differ from what its recomputation gives is not silently replaced.
    unit_file = settings / "w1-00000.json"
    unit = json.loads(unit_file.read_text())
    unit["correct"] = [[1 - c for c in run] for run in unit["correct"]]
    unit_file.write_text(json.dumps(unit))
    (settings / "w1-00000.safetensors").unlink()
    with pytest.raises(SystemExit, match="other results"):
        module.main([*args, "--keep_examples"])
    assert json.loads(unit_file.read_text()) == unit


def test_guidance_weight_zero_reuses_the_comparisons_identical_job(mnist_pipeline, tmp_path):
    budget = ["--pipeline", str(mnist_pipeline), "--num_images", "1", "--chunk", "1", "--steps", "1",
              "--targeted_restarts", "1", "--rescore_runs", "2"]
    _script("attack_comparison").main([*budget, "--defenses", "latent", "--work_dir", str(tmp_path / "comparison"),
                                       "--results_dir", str(tmp_path)])
    module = _script("guidance_weight")
    units = {}
    for name, reuse in (("reused", ["--comparison_dir", str(tmp_path / "comparison")]),
                        ("computed", ["--no_reuse", "--no-gradient_checkpointing"])):
        module.main([*budget, "--weights", "0", "--work_dir", str(tmp_path / name), "--results_dir",
                     str(tmp_path), *reuse])
        (unit,) = (tmp_path / name).glob("*/w0-00000.json")
        units[name] = json.loads(unit.read_text())
    # Recomputed here without checkpointing: the very same numbers (only time and memory differ).
    assert units["reused"]["from"].endswith("latent-00000.json") and "from" not in units["computed"]
    for key in ("labels", "clean_correct", "correct", "gradient_evaluations"):
        assert units["reused"][key] == units["computed"][key], key


def test_gradient_throughput_reports_multiples_of_a_unet_forward(mnist_pipeline, tmp_path, capsys):
    module = _script("gradient_throughput")
    module.main(["--pipeline", str(mnist_pipeline), "--num_images", "1", "--repeats", "1",
                 "--results_dir", str(tmp_path)])
    numbers = json.loads((tmp_path / "gradient_throughput.json").read_text())["results"]
    rows = {(r["defense"], r["guidance_path"]): r for r in numbers["rows"]}
    assert set(rows) == {("undefended", "n/a"), ("none", "n/a"), ("pixel", "n/a"), ("latent", "two calls"),
                         ("latent", "one batch (before)")}
    assert rows[("none", "n/a")]["vs_unguided"] == 1.0
    for row in rows.values():
        assert row["unet_forwards"] == pytest.approx(row["seconds_per_image_gradient"]
                                                     / numbers["units"]["unet_forward_s"])
    assert "UNet forwards" in capsys.readouterr().out


def test_results_name_repository_paths_relative_to_its_root():
    common = _script("common")
    settings = {"work_dir": common.RESULTS_DIR / "units", "results_dir": str(common.RESULTS_DIR), "other": "/tmp/x",
                "files": [str(common.REPO_ROOT / "README.md")], "steps": 3}
    assert common.portable(settings) == {"work_dir": "benchmarks/results/units", "results_dir": "benchmarks/results",
                                         "other": "/tmp/x", "files": ["README.md"], "steps": 3}
