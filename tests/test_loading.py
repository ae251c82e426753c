import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from diffusers import DiffusionPipeline

import diffusers_agdm
from diffusers_agdm import AdversarialGuidedPurificationPipeline, GuidanceModel, SmallImageClassifier
from dummies import dummy_images, dummy_pipeline, put_in_hub_cache, repo_files


def _purified(pipe, x):
    return pipe(x, generator=torch.Generator().manual_seed(0), output_type="pt")


def _assert_same_pipeline(loaded, original):
    assert type(loaded) is AdversarialGuidedPurificationPipeline
    assert isinstance(loaded.guidance, GuidanceModel) and isinstance(loaded.classifier, SmallImageClassifier)
    assert loaded.config.guidance_scale == original.config.guidance_scale
    assert loaded.config.strength == original.config.strength
    loaded.set_progress_bar_config(disable=True)
    x = dummy_images()
    a, b = _purified(original, x), _purified(loaded, x)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=5e-6)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=5e-6)


def test_save_writes_safetensors_and_library_names(tmp_path):
    pipe = dummy_pipeline(guidance_scale=12.5)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "AdversarialGuidedPurificationPipeline"
    assert index["guidance"] == ["diffusers_agdm", "GuidanceModel"]
    assert index["classifier"] == ["diffusers_agdm", "SmallImageClassifier"]
    assert index["guidance_scale"] == 12.5
    weights = [f for f in repo_files(tmp_path) if f.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt"))]
    assert weights and all(f.endswith(".safetensors") for f in weights)


@pytest.mark.parametrize("entry_point", [AdversarialGuidedPurificationPipeline, DiffusionPipeline])
def test_local_round_trip(tmp_path, entry_point):
    pipe = dummy_pipeline(guidance_scale=12.5, strength=0.4)
    pipe.save_pretrained(tmp_path)
    _assert_same_pipeline(entry_point.from_pretrained(tmp_path), pipe)


def test_optional_components_round_trip(tmp_path):
    pipe = dummy_pipeline(with_classifier=False)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert loaded.classifier is None and isinstance(loaded.guidance, GuidanceModel)
    # a classifier can be attached at load time
    from dummies import dummy_classifier

    with_clf = DiffusionPipeline.from_pretrained(tmp_path, classifier=dummy_classifier())
    assert isinstance(with_clf.classifier, SmallImageClassifier)


def _fake_repo_tree(default_cache):
    """Hub's cached file listing (`trees/<sha>.json`), which a hand-built cache lacks, read back from the snapshot."""
    def listing(repo_id, revision=None, cache_dir=None, **_):
        repo = Path(cache_dir or default_cache) / ("models--" + repo_id.replace("/", "--"))
        sha = (repo / "refs" / "main").read_text().strip()
        return [SimpleNamespace(path=p) for p in repo_files(repo / "snapshots" / sha)]
    return listing


@pytest.mark.parametrize("entry_point", [AdversarialGuidedPurificationPipeline, DiffusionPipeline])
def test_load_repo_id_offline_with_hub_file_listing(tmp_path, hub_cache, entry_point):
    """Regression test: for a repo id, Diffusers checks every component library against the repo's file listing
    and rejects ours unless `diffusers_agdm` is registered as a loadable library."""
    pipe = dummy_pipeline(guidance_scale=3.0)
    pipe.save_pretrained(tmp_path / "saved")
    put_in_hub_cache(tmp_path / "saved", "testorg/agdm-tiny", hub_cache)
    with mock.patch("diffusers.pipelines.pipeline_utils.get_cached_repo_tree", _fake_repo_tree(hub_cache)) as _:
        loaded = entry_point.from_pretrained("testorg/agdm-tiny")
    _assert_same_pipeline(loaded, pipe)


def test_the_hub_check_really_runs(tmp_path, hub_cache):
    """Guard for the regression test above: without the registration the same load must fail, so that test proves
    something."""
    from diffusers.pipelines import pipeline_loading_utils

    dummy_pipeline().save_pretrained(tmp_path / "saved")
    put_in_hub_cache(tmp_path / "saved", "testorg/agdm-guard", hub_cache)
    entry = pipeline_loading_utils.LOADABLE_CLASSES.pop("diffusers_agdm")
    try:
        with mock.patch("diffusers.pipelines.pipeline_utils.get_cached_repo_tree", _fake_repo_tree(hub_cache)):
            with pytest.raises(ValueError, match="does not exist in testorg/agdm-guard"):
                DiffusionPipeline.from_pretrained("testorg/agdm-guard")
    finally:
        pipeline_loading_utils.LOADABLE_CLASSES["diffusers_agdm"] = entry


def test_missing_repo_offline_fails_clearly():
    with pytest.raises(OSError):
        AdversarialGuidedPurificationPipeline.from_pretrained("testorg/does-not-exist")


def test_push_to_hub_then_load(tmp_path, hub_cache):
    pushed = {}

    def fake_create_repo(repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def fake_upload_folder(repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, tmp_path / "uploaded")
        pushed.update(repo_id=repo_id, files=repo_files(folder_path), **kwargs)
        return f"https://huggingface.co/{repo_id}/commit/0"

    pipe = dummy_pipeline(guidance_scale=9.0)
    with mock.patch("diffusers_agdm.hub.create_repo", fake_create_repo), \
            mock.patch("diffusers_agdm.hub.upload_folder", fake_upload_folder):
        pipe.push_to_hub("testorg/agdm-pushed")
    assert pushed["repo_id"] == "testorg/agdm-pushed"
    assert "README.md" in pushed["files"] and "model_index.json" in pushed["files"]
    assert not [f for f in pushed["files"] if f.endswith((".bin", ".pt", ".pth"))]
    card = (tmp_path / "uploaded" / "README.md").read_text()
    assert "library_name: diffusers" in card and "adversarial-purification" in card
    assert '"guidance_scale": 9.0' in card and "testorg/agdm-pushed" in card

    put_in_hub_cache(tmp_path / "uploaded", "testorg/agdm-pushed", hub_cache)
    with mock.patch("diffusers.pipelines.pipeline_utils.get_cached_repo_tree", _fake_repo_tree(hub_cache)):
        loaded = DiffusionPipeline.from_pretrained("testorg/agdm-pushed")
    _assert_same_pipeline(loaded, pipe)


def test_import_registers_pipeline_with_diffusers():
    import diffusers

    assert diffusers.AdversarialGuidedPurificationPipeline is diffusers_agdm.AdversarialGuidedPurificationPipeline


# ---------------------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize("missing", ["classifier", "guidance", "unet"])
@pytest.mark.parametrize("entry_point", ["pipeline", "load_pipeline", "load_diffusion_source"])
def test_missing_component_folder_is_named(tmp_path, missing, entry_point):
    from diffusers_agdm.loading import load_diffusion_source

    dummy_pipeline().save_pretrained(tmp_path)
    shutil.rmtree(tmp_path / missing)
    load = {"pipeline": AdversarialGuidedPurificationPipeline.from_pretrained,
            "load_pipeline": diffusers_agdm.load_pipeline, "load_diffusion_source": load_diffusion_source}[entry_point]
    with pytest.raises(ValueError, match=f"lists `{missing}` .* no `{missing}/` folder"):
        load(str(tmp_path))


def test_missing_optional_folder_can_be_replaced_at_load(tmp_path):
    dummy_pipeline().save_pretrained(tmp_path)
    shutil.rmtree(tmp_path / "classifier")
    assert AdversarialGuidedPurificationPipeline.from_pretrained(tmp_path, classifier=None).classifier is None


def test_wrong_component_class_fails_at_load_not_at_call(tmp_path):
    dummy_pipeline().save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["guidance"] = ["diffusers_agdm", "SmallImageClassifier"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    for entry_point in (AdversarialGuidedPurificationPipeline, DiffusionPipeline):
        with pytest.raises(ValueError, match="`guidance` must be a GuidanceModel, got SmallImageClassifier"):
            entry_point.from_pretrained(tmp_path)


def _corrupt_safetensors_data(path: Path) -> None:
    """Overwrite the tensor bytes (not the header) with 0xFF, which reads back as NaN."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    raw[start:] = b"\xff" * (len(raw) - start)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("component", ["unet", "guidance", "classifier"])
def test_corrupted_weights_fail_at_load(tmp_path, component):
    dummy_pipeline().save_pretrained(tmp_path)
    (weights,) = (tmp_path / component).glob("*.safetensors")
    _corrupt_safetensors_data(weights)
    with pytest.raises(ValueError, match=f"`{component}` has non-finite weights"):
        AdversarialGuidedPurificationPipeline.from_pretrained(tmp_path)


def test_every_way_of_setting_the_classifier_checks_its_class_count():
    from dummies import dummy_classifier

    pipe = dummy_pipeline()
    original = pipe.classifier
    with pytest.raises(ValueError, match="classifier predicts 7 classes but the guidance model 4"):
        pipe.register_modules(classifier=dummy_classifier(7))
    with pytest.raises(ValueError, match="classifier predicts 7 classes but the guidance model 4"):
        pipe.classifier = dummy_classifier(7)
    assert pipe.classifier is original and pipe.config.classifier[1] == "SmallImageClassifier"
    with pytest.raises(ValueError, match="classifier predicts 4 classes but the guidance model 9"):
        pipe.register_modules(guidance=__import__("dummies").dummy_guidance(9))
    pipe.register_modules(classifier=dummy_classifier(4))  # a matching one is accepted
    assert pipe.classifier is not original
