"""Model cards: metadata that huggingface_hub parses, one model-index result per dataset and split, unique metric
names, robust metrics with their threat model; and `push_to_hub` honouring Diffusers' arguments."""

from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from diffusers_agdm import default_pipeline_path, make_model_card
from dummies import dummy_pipeline

REPO = Path(__file__).resolve().parents[1]
# Every card in model_cards/ (the template aside) and the embedded default's own.
CARDS = sorted({p.resolve() for p in (REPO / "model_cards").glob("*.md") if p.read_text().startswith("---\n")
                and "{{" not in p.read_text()} | {default_pipeline_path() / "README.md"})


def check_card_metadata(card: ModelCard) -> int:
    """Everything the Hub needs to show the numbers; returns the number of metrics."""
    index = card.data.to_dict().get("model-index")
    if not index:
        return 0
    _, results = model_index_to_eval_results(index)  # huggingface_hub's own parser of the metadata
    groups = {}
    for result in results:
        assert result.dataset_split, f"{result.dataset_name}: the split is not named"
        groups.setdefault((result.dataset_name, result.dataset_split), []).append(result)
        if result.metric_type == "robust_accuracy":
            assert {"eps", "norm"} <= set(result.metric_args or {}), result.metric_name
    for (dataset, split), metrics in groups.items():
        names = [m.metric_name for m in metrics]
        assert len(names) == len(set(names)), f"{dataset}/{split} repeats a metric name: {names}"
    assert len(index[0]["results"]) == len(groups)  # one model-index result per dataset and split
    return len(results)


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.name if p.name != "README.md" else p.parent.name)
def test_shipped_cards_have_valid_unique_metadata(path):
    card = ModelCard.load(path)
    if path.parent.name == "agdm-mnist":
        assert check_card_metadata(card) == 16  # 4 defenses x (clean, robust) on mnist/test and foolbox-mnist/test
        datasets = {r["dataset"]["name"] for r in card.data.to_dict()["model-index"][0]["results"]}
        assert datasets == {"mnist", "foolbox-mnist"}
    else:
        check_card_metadata(card)


def _result(defense="latent", **extra):
    return {"defense": defense, "attack": "pgd", "norm": "Linf", "eps": 0.3, "clean_accuracy": 0.9,
            "robust_accuracy": 0.5, **extra}


def test_make_model_card_groups_by_dataset_and_split_and_refuses_ambiguity():
    pipe = dummy_pipeline()
    results = [_result(), _result(defense="none"), _result(dataset="foolbox-mnist", num_images=20),
               _result(attack="bpda", robust_accuracy=0.8)]  # same clean number under two attacks: listed once
    card = make_model_card(pipe, "org/x", results=results, dataset="mnist", split="test")
    assert check_card_metadata(ModelCard(str(card))) == 7
    with pytest.raises(ValueError, match="split"):
        make_model_card(pipe, "org/x", results=[_result()], dataset="mnist")
    with pytest.raises(ValueError, match="share the metric"):
        make_model_card(pipe, "org/x", results=[_result(), _result(robust_accuracy=0.4)], dataset="m", split="test")
    with pytest.raises(ValueError, match="threat model"):
        make_model_card(pipe, "org/x", results=[_result(norm=None)], dataset="m", split="test")


def test_push_to_hub_forwards_diffusers_arguments():
    uploads = []

    def fake_upload(repo_id, folder_path, **kwargs):
        uploads.append((sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*")
                               if p.is_file()), kwargs))
        return "https://huggingface.co/org/x/commit/1"

    pipe = dummy_pipeline()
    with mock.patch("diffusers_agdm.hub.create_repo", lambda repo_id, **k: SimpleNamespace(repo_id=repo_id)), \
            mock.patch("diffusers_agdm.hub.upload_folder", fake_upload):
        pipe.push_to_hub("org/x", variant="fp16", commit_message="hello", create_pr=True)
        pipe.push_to_hub("org/x", subfolder="v2")
        with pytest.raises(ValueError, match="safetensors"):
            pipe.push_to_hub("org/x", safe_serialization=False)
        with pytest.raises(TypeError):
            pipe.push_to_hub("org/x", no_such_argument=1)  # never silently dropped
    (files, kwargs), (sub_files, sub_kwargs) = uploads
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in files and "README.md" in files
    assert kwargs["commit_message"] == "hello" and kwargs["create_pr"] is True and kwargs["path_in_repo"] is None
    assert sub_kwargs["path_in_repo"] == "v2" and "README.md" not in sub_files
    assert "unet/diffusion_pytorch_model.safetensors" in sub_files

