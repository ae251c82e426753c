"""Sharing pipelines on the Hub: the model card and the upload, used by `push_to_hub`, the training scripts and the
CLI."""

import json
import os
import tempfile
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, create_repo, upload_folder

from .settings_table import UNTUNED_DEFAULTS

MODEL_CARD_TEMPLATE = Path(__file__).with_name("model_card_template.md")
PURIFICATION_CONFIG_KEYS = tuple(UNTUNED_DEFAULTS)  # the pipeline config's purification keys, from the table


def _components_table(pipeline) -> str:
    rows = []
    components = pipeline.components if hasattr(pipeline, "components") else {"model": pipeline}
    for name, component in components.items():
        if component is None:
            continue
        params = sum(p.numel() for p in component.parameters()) if hasattr(component, "parameters") else 0
        rows.append(f"| {name} | `{type(component).__name__}` | {params:,} |" if params else
                    f"| {name} | `{type(component).__name__}` | - |")
    return "\n".join(rows)


def _results_markdown(results: list[dict] | None) -> str:
    if not results:
        return "No robustness results have been recorded for this checkpoint yet."
    lines = ["| defense | data | attack | clean accuracy | robust accuracy |", "|---|---|---|---|---|"]
    for r in results:
        robust = "-" if r.get("robust_accuracy") is None else f"{100 * r['robust_accuracy']:.1f}%"
        data = "/".join(str(r[k]) for k in ("dataset", "split") if r.get(k)) or "-"
        data += f" ({r['num_images']} images)" if "num_images" in r else ""
        attack = r.get("attack", "-") + (f" {r['norm']} eps={r['eps']:g}" if r.get("norm") else "")
        lines.append(f"| {r['defense']} | {data} | {attack} | {100 * r['clean_accuracy']:.1f}% | {robust} |")
    return "\n".join(lines)


def _eval_results(results: list[dict] | None, dataset: str | None, split: str | None) -> list[EvalResult] | None:
    """
    The card's `model-index` metadata, so the Hub shows the measured numbers: one result per dataset and split (the
    Hub groups entries by dataset name and split), metric names unique within it, and each robust accuracy with its
    threat model (`norm`, `eps`) as the metric's `args`.
    """
    if not results:
        return None
    entries, seen = [], {}
    for r in results:
        data, data_split = r.get("dataset", dataset), r.get("split", split)
        if not data or not data_split:
            raise ValueError("Each result needs the dataset and the split it was measured on (`dataset=`, `split=` "
                             f"or its own 'dataset'/'split' keys); got {r}.")
        common = dict(task_type="image-classification", task_name="adversarial purification",
                      dataset_type=r.get("dataset_type", data), dataset_name=data, dataset_split=data_split)
        images = f", {r['num_images']} images" if "num_images" in r else ""
        clean = EvalResult(metric_type="accuracy", metric_name=f"clean accuracy ({r['defense']}{images})",
                           metric_value=r["clean_accuracy"], **common)
        metrics = [clean]
        if r.get("robust_accuracy") is not None:
            if r.get("norm") is None or r.get("eps") is None:
                raise ValueError(f"A robust accuracy needs its threat model ('norm' and 'eps'); got {r}.")
            attack = r.get("attack", "attack")
            metrics.append(EvalResult(
                metric_type="robust_accuracy", metric_value=r["robust_accuracy"],
                metric_name=f"robust accuracy ({r['defense']}, {attack} {r['norm']} eps={r['eps']:g}{images})",
                metric_args={"norm": r["norm"], "eps": r["eps"], "attack": attack,
                             **{key: r[key] for key in ("num_images", "score") if key in r}}, **common))
        for metric in metrics:
            key = (metric.unique_identifier, metric.metric_name)
            if key in seen and seen[key] == metric.metric_value and metric is clean:
                continue  # one clean number per defense and data, however many attacks were run on it
            if key in seen:
                raise ValueError(f"Two results for {data} ({data_split}) share the metric {metric.metric_name!r}.")
            seen[key] = metric.metric_value
            entries.append(metric)
    return entries


def make_model_card(pipeline, repo_id: str = "your-name/agdm-pipeline", *, description: str = "",
                    results: list[dict] | None = None, results_details: str = "", training: str = "",
                    limitations: str = "", dataset: str | None = None, split: str | None = None,
                    base_model: str | None = None) -> ModelCard:
    """
    Fill the project's model card template for `pipeline` (or for a single component model).

    `results` is a list of dicts with `defense`, `attack`, `clean_accuracy` and `robust_accuracy` (fractions),
    `norm` and `eps` (the threat model), and optionally `score` (how an image counts as robust) and their own
    `dataset`, `split` and `num_images` (otherwise
    `dataset` and `split`), which also become the card's model-index metadata (validated: one result per dataset
    and split, unique metric names); `results_details` is markdown placed under their table (the
    budgets, sanity checks and commands); `training` is markdown with the command that made it.
    """
    card_data = ModelCardData(library_name="diffusers", license="apache-2.0", base_model=base_model,
                              model_name=repo_id, eval_results=_eval_results(results, dataset, split),
                              datasets=[dataset] if dataset else None,
                              tags=["adversarial-purification", "adversarial-robustness", "diffusion", "agdm",
                                    "diffusers-agdm"],
                              pipeline_tag="image-classification")
    purification = {k: pipeline.config[k] for k in PURIFICATION_CONFIG_KEYS if k in pipeline.config}
    if not purification:
        purification = {"note": "not a purification pipeline: a component to build one with"}
    return ModelCard.from_template(
        card_data, template_path=str(MODEL_CARD_TEMPLATE), title=repo_id.split("/")[-1], repo_id=repo_id,
        description=description, components_table=_components_table(pipeline),
        purification_config=json.dumps(purification, indent=2),
        results=_results_markdown(results) + (f"\n\n{results_details}" if results_details else ""),
        training=training or "Not recorded.", limitations=limitations)


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, *, token: str | None = None,
                       private: bool | None = None, commit_message: str = "Upload AGDM purification pipeline",
                       create_pr: bool = False, ignore_patterns=("checkpoint-*", "logs/*", "step_*", "epoch_*"),
                       path_in_repo: str | None = None):
    """Upload a saved pipeline folder (with its README.md card) to `repo_id`; returns the commit info."""
    repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    return upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, commit_message=commit_message,
                         create_pr=create_pr, ignore_patterns=list(ignore_patterns), path_in_repo=path_in_repo)


def push_pipeline_to_hub(pipeline, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                         token: str | None = None, create_pr: bool = False, safe_serialization: bool = True,
                         variant: str | None = None, subfolder: str | None = None,
                         model_card: str | ModelCard | None = None):
    """
    Save `pipeline` with a model card (ours unless `model_card` is given) and upload it: the arguments of Diffusers'
    `push_to_hub`, each honoured. Weights are safetensors only (`safe_serialization=False` is refused); with
    `subfolder` the files go under that folder of the repo and, as in Diffusers, no card is written.
    """
    if not safe_serialization:
        raise ValueError("diffusers-agdm saves safetensors only; `safe_serialization=False` is not supported.")
    with tempfile.TemporaryDirectory() as tmpdir:
        pipeline.save_pretrained(tmpdir, safe_serialization=True, variant=variant)
        if not subfolder:
            card = model_card if model_card is not None else make_model_card(pipeline, repo_id)
            Path(tmpdir, "README.md").write_text(str(card))
        return push_folder_to_hub(tmpdir, repo_id, token=token, private=private, create_pr=create_pr,
                                  commit_message=commit_message or "Upload AGDM purification pipeline",
                                  path_in_repo=subfolder)
