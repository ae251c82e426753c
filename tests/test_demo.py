"""The Gradio demo through its real HTTP API (gradio_client against a local server), on the tiny pipeline; and the
input handling without Gradio."""

import socket

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_agdm.demo.app import DEFENSES, adversarial_files, attack_each_defense, caption, to_model_input
from dummies import dummy_pipeline


def test_a_drawing_becomes_a_centred_light_digit_on_black():
    layer = np.zeros((280, 280, 4), np.uint8)
    layer[20:120, 200:220, 3] = 255  # a stroke in the top right corner, any colour
    image = to_model_input({"background": None, "layers": [layer], "composite": None}, None, 28, 1)
    assert image.shape == (1, 1, 28, 28) and 0.9 < image.max() <= 1 and image.min() == 0
    rows, cols = torch.nonzero(image[0, 0] > 0.5, as_tuple=True)
    assert abs(rows.float().mean() - 13.5) < 2 and abs(cols.float().mean() - 13.5) < 2  # centred as in MNIST
    paper = np.full((50, 50), 255, np.uint8)
    paper[10:40, 20:30] = 0  # a dark digit on white paper is inverted
    uploaded = to_model_input(None, paper, 28, 1)
    assert uploaded.mean() < 0.5 and uploaded[0, 0, 14, 14] > 0.9
    with pytest.raises(ValueError, match="Draw a digit"):
        to_model_input({"layers": [np.zeros((4, 4, 4), np.uint8)]}, None, 28, 1)


def test_attack_each_defense_attacks_the_bare_classifier_for_real():
    pipe = dummy_pipeline()
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 1, 8, 8)
    label = int(pipe.classifier_logits(image).argmax(-1))
    ticks = []
    rows = attack_each_defense(pipe, image, label, eps=0.5, steps=3, runs=3,
                               progress=lambda fraction, desc: ticks.append((fraction, desc)))
    assert [row["defense"] for row in rows] == list(DEFENSES)
    # The progress bar moves with every attack iteration, not only between defenses.
    assert sum("iteration" in desc for _, desc in ticks) == 3 * len(DEFENSES)
    assert [f for f, _ in ticks] == sorted(f for f, _ in ticks) and ticks[-1][0] == 1.0
    bare = rows[0]
    assert bare["clean_votes"] == [label] * 3 and label not in bare["adversarial_votes"]  # 0.5 Linf breaks it
    for row in rows:
        assert (row["adversarial"] - image[0]).abs().max() <= 0.5 + 1e-6
        assert len(row["adversarial_votes"]) == 3 and row["purified"].shape == (1, 8, 8)
    assert torch.equal(bare["purified"], bare["adversarial"])  # nothing purifies the bare classifier
    assert "**fooled**: bare classifier" in caption(rows, [str(i) for i in range(10)], label, 3, 0.5)


def test_downloads_are_the_exact_adversarial_images(tmp_path):
    from safetensors.torch import load_file

    from diffusers_agdm.utils.images import image_to_unit_range

    pipe = dummy_pipeline()
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 1, 8, 8)
    rows = attack_each_defense(pipe, image, 0, eps=0.3, steps=2, runs=1, defenses=("undefended", "latent"))
    paths = adversarial_files(rows, tmp_path)
    assert all(p.endswith((".png", ".safetensors")) for p in paths) and len(paths) == 5
    exact = load_file(paths[-1])
    for row in rows:
        assert torch.equal(exact[f"{row['defense']}/adversarial"], row["adversarial"].clamp(0, 1))
        with Image.open(tmp_path / f"{row['defense']}_adversarial.png") as png:  # lossless 16-bit, not WebP
            assert png.format == "PNG" and png.mode.startswith("I")
            read = torch.from_numpy(image_to_unit_range(png))
        assert (read - row["adversarial"][0]).abs().max() <= 0.5 / 65535 + 1e-7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_answers_through_gradio_client(tmp_path):
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file

    from diffusers_agdm.demo.app import build_demo

    digit = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8), mode="L").save(digit)
    demo = build_demo(dummy_pipeline(), steps=2)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        picture, explained, table, files = client.predict(None, handle_file(str(digit)), "0", 0.3, 2, 3,
                                                          api_name="/attack")
    finally:
        demo.close()
    shown = Image.open(picture)
    assert shown.size[0] > 400 and shown.size[1] > 4 * 112  # four rows of clean / adversarial / purified
    assert "True digit **0**" in table
    assert "weak interactive budget" in explained and "PGD-2" in explained
    assert len(files) == 2 * len(DEFENSES) + 1
    for title in DEFENSES.values():
        assert title in table
