"""PNG plots of an evaluation, drawn with matplotlib's Agg canvas (no display, no global pyplot state)."""

from pathlib import Path

import numpy as np
import torch

from .attacks_registry import ATTACK_SPECS, ATTACK_TITLES, WORST_CASE
from .defenses import DEFENSE_SHORT_TITLES


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def curve_attack(report: dict) -> str:
    """The attack the eps curve was measured with: the first attack that applies to every defense (as the plan
    chooses it), so a plot's title names what produced it."""
    return next((a for a in report["settings"]["attacks"] if not ATTACK_SPECS[a].guided_only), "apgd")


def plot_accuracy_vs_eps(report: dict, path) -> Path:
    """
    Robust accuracy under the evaluation's first attack against eps, one colour per defense: solid for "correct in
    all K runs", dashed for "majority of K", error bars = std over seeds; eps = 0 is clean accuracy. With a single
    eps there is no curve to draw: grouped bars (clean, all K, majority of K) per defense instead.
    """
    figure = _figure(6.4, 4.4)
    ax = figure.add_subplot()
    norm = report["settings"]["threat_model"]["norm"]
    k = report["settings"]["rescore_runs"]
    attack = ATTACK_TITLES.get(curve_attack(report), curve_attack(report))
    curve = report["eps_curve"]
    single = all(len(points) <= 2 for points in curve.values())  # eps 0 (clean) and one eps
    if single:
        eps_value = next(iter(curve.values()))[-1]["eps"]
        bars = (("clean, all K", 0, "all", 1.0), (f"{norm} {eps_value:g}, all {k}", -1, "all", 1.0),
                (f"{norm} {eps_value:g}, majority", -1, "majority", 0.5))
        width = 0.8 / len(bars)
        for j, (label, point, kind, alpha) in enumerate(bars):
            means = [100 * points[point][kind]["mean"] for points in curve.values()]
            stds = [100 * (points[point][kind]["std"] or 0.0) for points in curve.values()]
            ax.bar(np.arange(len(curve)) + (j - 1) * width, means, width, yerr=stds, capsize=2, label=label,
                   color=f"C{j}", alpha=alpha)
        ax.set_xticks(np.arange(len(curve)),
                      [DEFENSE_SHORT_TITLES.get(d, report["defenses"][d]["title"]) for d in curve], fontsize=8)
        ax.set_title(f"Accuracy under {attack}, {norm} eps {eps_value:g} (K = {k} runs)", fontsize=9)
    else:
        for i, (defense, points) in enumerate(curve.items()):
            color = f"C{i}"
            eps = [p["eps"] for p in points]
            for kind, style in (("all", "-"), ("majority", "--")):
                mean = np.array([100 * p[kind]["mean"] for p in points])
                std = np.array([100 * (p[kind]["std"] or 0.0) for p in points])
                label = report["defenses"][defense]["title"] if kind == "all" else None
                ax.errorbar(eps, mean, yerr=std, color=color, linestyle=style, marker="o", markersize=3, capsize=2,
                            label=label)
            worst = report.get("results", {}).get(defense, {}).get(WORST_CASE)
            if worst is not None:  # the per-image worst case over all attacks, at the nominal eps
                ax.plot([report["settings"]["threat_model"]["eps"]], [100 * worst["all"]["mean"]], color=color,
                        marker="*", markersize=10, linestyle="none")
        ax.axvline(report["settings"]["threat_model"]["eps"], color="gray", linewidth=0.8, linestyle=":")
        ax.set_xlabel(f"{norm} eps")
        ax.set_title(f"Robust accuracy under {attack} (solid: all {k} runs correct; dashed: majority; "
                     "star: worst case over all attacks)", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def _as_image(tensor: torch.Tensor) -> tuple[np.ndarray, str | None]:
    array = tensor.detach().float().cpu().clamp(0, 1).numpy()
    if array.shape[0] == 1:
        return array[0], "gray"
    return array.transpose(1, 2, 0), None


def plot_examples_grid(examples: dict, path, report: dict | None = None) -> Path:
    """
    A grid with one column per image: the clean image (true label), then for each defense the adversarial image the
    attack made against it (with the undefended classifier's prediction on it) and, for purifying defenses, that
    image after purification (with the defense's prediction: a check mark when it is the true label).
    """
    names = (report or {}).get("data", {}).get("class_names") or []

    def name(label: int) -> str:
        return names[label] if label < len(names) else str(label)


    labels = examples["labels"].tolist()
    rows = [("clean", examples["images"], [f"true {name(y)}" for y in labels])]
    for defense, ex in examples["defenses"].items():
        title = DEFENSE_SHORT_TITLES.get(defense, defense)
        rows.append((f"adversarial\nvs {title}", ex["adversarial"],
                     [f"classifier: {name(p)}" for p in ex["raw_predictions"].tolist()]))
        if defense != "undefended":
            purifies = "strength" in (report or {}).get("defenses", {}).get(defense, {"strength": None})
            rows.append((f"{'purified by' if purifies else 'classified by'}\n{title}", ex["purified"],
                         [f"{name(p)} {'✓' if p == y else '✗'}"
                          for p, y in zip(ex["purified_predictions"].tolist(), labels)]))
    columns = len(labels)
    figure = _figure(max(1.8 + 1.35 * columns, 6.0), 0.4 + 1.5 * len(rows))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, (row_title, images, cell_titles) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            image, cmap = _as_image(images[c])
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(cell_titles[c], fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row_title, fontsize=7)
    figure.suptitle(f"{ATTACK_TITLES.get(examples['attack'], examples['attack'])} at {examples['norm']} "
                    f"eps={examples['eps']:g}: each adversarial image was attacked through that defense",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)
