"""Sharing pipelines on the Hub: the model card and the upload, used by `push_to_hub`, the training scripts and the CLI."""

import json
import os
import tempfile
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, create_repo, upload_folder

MODEL_CARD_TEMPLATE = Path(__file__).with_name("model_card_template.md")
PURIFICATION_CONFIG_KEYS = ("strength", "num_inference_steps", "guidance_scale", "guidance_mode", "pixel_guidance_scale",
                            "feature_weight", "class_guidance", "guidance_target", "eta")


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
    lines = ["| defense | attack | clean accuracy | robust accuracy |", "|---|---|---|---|"]
    for r in results:
        robust = "-" if r.get("robust_accuracy") is None else f"{100 * r['robust_accuracy']:.1f}%"
        lines.append(f"| {r['defense']} | {r.get('attack', '-')} | {100 * r['clean_accuracy']:.1f}% | {robust} |")
    return "\n".join(lines)


def _eval_results(results: list[dict] | None, dataset: str | None) -> list[EvalResult] | None:
    """The card's `model-index` metadata, so the Hub shows the measured numbers."""
    if not results:
        return None
    common = dict(task_type="image-classification", task_name="adversarial purification",
                  dataset_type=dataset or "unknown", dataset_name=dataset or "unknown")
    entries = []
    for r in results:
        entries.append(EvalResult(metric_type="accuracy", metric_name=f"clean accuracy ({r['defense']})",
                                  metric_value=r["clean_accuracy"], **common))
        if r.get("robust_accuracy") is not None:
            entries.append(EvalResult(metric_type="robust_accuracy",
                                      metric_name=f"robust accuracy ({r['defense']}, {r['attack']})",
                                      metric_value=r["robust_accuracy"], **common))
    return entries


def make_model_card(pipeline, repo_id: str = "your-name/agdm-pipeline", *, description: str = "",
                    results: list[dict] | None = None, results_details: str = "", training: str = "",
                    limitations: str = "", dataset: str | None = None, base_model: str | None = None) -> ModelCard:
    """
    Fill the project's model card template for `pipeline` (or for a single component model).

    `results` is a list of dicts with `defense`, `attack`, `clean_accuracy` and `robust_accuracy` (fractions),
    which also become the card's model-index metadata; `results_details` is markdown placed under their table (the
    budgets, sanity checks and commands); `training` is markdown with the command that made it.
    """
    card_data = ModelCardData(library_name="diffusers", license="apache-2.0", base_model=base_model,
                              model_name=repo_id, eval_results=_eval_results(results, dataset),
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
                       create_pr: bool = False, ignore_patterns=("checkpoint-*", "logs/*", "step_*", "epoch_*")):
    """Upload a saved pipeline folder (with its README.md card) to `repo_id`; returns the commit info."""
    repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    return upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, commit_message=commit_message,
                         create_pr=create_pr, ignore_patterns=list(ignore_patterns))


def push_pipeline_to_hub(pipeline, repo_id: str, *, model_card: str | ModelCard | None = None, token=None,
                         private=None, commit_message: str | None = None, create_pr: bool = False):
    """Save `pipeline` as safetensors with a model card (ours unless `model_card` is given) and upload it."""
    with tempfile.TemporaryDirectory() as tmpdir:
        pipeline.save_pretrained(tmpdir, safe_serialization=True)
        card = model_card if model_card is not None else make_model_card(pipeline, repo_id)
        Path(tmpdir, "README.md").write_text(str(card))
        return push_folder_to_hub(tmpdir, repo_id, token=token, private=private, create_pr=create_pr,
                                  commit_message=commit_message or "Upload AGDM purification pipeline")
