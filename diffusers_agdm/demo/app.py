"""
Attack a digit and watch each defense purify it: a Gradio app, run by `agdm demo` or, unchanged, as the `app.py`
of a Hugging Face Space (with `diffusers-agdm[demo,data]` in the Space's requirements.txt; `data` adds example
digits).

Draw or upload a digit, pick eps, and the app attacks it with exact-gradient PGD (margin loss, Linf) against the
bare classifier and, adaptively, against each defense (the gradient goes through the whole purification), then
shows clean / adversarial / purified side by side with the K-run votes of each defense on the adversarial image.
Budgets are small so it stays interactive on a CPU: a few PGD steps without EOT are a weak attack, and the demo
says so; `agdm evaluate` is the measurement.
"""

import argparse
import tempfile

import numpy as np
import torch

DEFENSES = {
    "undefended": "bare classifier",
    "none": "unguided purification (DiffPure-style)",
    "pixel": "pixel guidance (GDMP-style)",
    "latent": "latent guidance (AGDM)",
}
AUTO_LABEL = "auto (the bare classifier's answer on the clean image)"


def to_model_input(drawn, uploaded, size: int, channels: int) -> torch.Tensor:
    """A `(1, C, size, size)` [0, 1] tensor, light digit on a dark background as in MNIST, prepared by the same
    function as `agdm purify` (`prepare_user_image`: scaled by pixel type, inverted when the background is light,
    cropped to the digit and centred in MNIST's 20/28 box when the size differs).

    `drawn` is a Gradio sketchpad value (its strokes' opacity is the digit, whatever the brush colour), `uploaded`
    an image array."""
    from diffusers_agdm.pipelines.inputs import prepare_user_image

    if drawn is not None and any(np.asarray(layer)[..., -1].any() for layer in drawn.get("layers") or []):
        ink = np.max([np.asarray(layer)[..., -1] for layer in drawn["layers"]], axis=0)  # uint8 opacity
        tensor, _ = prepare_user_image(ink, size, channels, light_on_dark=True, where="the drawing")
    elif uploaded is not None:
        uploaded = uploaded if hasattr(uploaded, "mode") else np.asarray(uploaded)  # a PIL image or an array
        tensor, _ = prepare_user_image(uploaded, size, channels, where="the uploaded image")
    else:
        raise ValueError("Draw a digit or upload an image first.")
    return tensor[None]


def class_names(pipe) -> list[str]:
    config = getattr(pipe.classifier, "config", None)
    labels = getattr(config, "labels", None)
    return [str(name) for name in labels] if labels else [str(i) for i in range(pipe.guidance.config.num_classes)]


def attack_each_defense(pipe, image: torch.Tensor, label: int, *, eps: float, steps: int, runs: int, seed: int = 0,
                        defenses=tuple(DEFENSES), progress=None) -> list[dict]:
    """For each defense: PGD (margin loss, Linf `eps`, `steps` steps) with the exact gradient of that defense, the
    adversarial image purified once, and the defense's K = `runs` votes on the clean and the adversarial image."""
    from diffusers_agdm.attacks import pgd, rescore
    from diffusers_agdm.evaluation.defenses import defense_specs

    labels = torch.tensor([label])
    rows = []
    for i, name in enumerate(defenses):
        done = [0]

        def step(count: int, i=i, name=name, done=done) -> None:  # the attack's callback: one call per iteration
            done[0] += count
            progress((i + done[0] / max(steps, 1)) / len(defenses),
                     desc=f"attacking {DEFENSES[name]}: iteration {done[0]}/{steps}")

        if progress is not None:
            progress(i / len(defenses), desc=f"attacking {DEFENSES[name]}")
        model = defense_specs(pipe, (name,))[0].build(pipe, seed)
        if eps > 0:
            adversarial = pgd(model, image, labels, eps=eps, norm="Linf", steps=steps, loss="margin",
                              generator=torch.Generator().manual_seed(seed),
                              callback=step if progress is not None else None)
        else:
            adversarial = image.clone()
        clean_votes = rescore(model, image, labels, runs=runs, seed=seed + 1).predictions[:, 0].tolist()
        adversarial_votes = rescore(model, adversarial, labels, runs=runs, seed=seed + 2).predictions[:, 0].tolist()
        model.reseed(seed + 3)
        with torch.no_grad():
            purified = model.purify(adversarial)
        rows.append({"defense": name, "clean": image[0], "adversarial": adversarial[0].detach(),
                     "purified": purified[0].detach(), "clean_votes": clean_votes,
                     "adversarial_votes": adversarial_votes})
    if progress is not None:
        progress(1.0, desc="done")
    return rows


def render(rows: list[dict], names: list[str], label: int, eps: float):
    """One picture: a row per defense, clean | adversarial | purified, with the votes."""
    from PIL import Image, ImageDraw, ImageFont

    cell, pad, text_width, header = 112, 8, 300, 24
    font = ImageFont.load_default(size=13)
    canvas = Image.new("RGB", (3 * (cell + pad) + text_width + pad, header + len(rows) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(("clean", f"attacked, eps {eps:g}", "purified")):
        draw.text((pad + j * (cell + pad), 4), title, fill="black", font=font)
    for i, row in enumerate(rows):
        top = header + i * (cell + pad)
        for j, key in enumerate(("clean", "adversarial", "purified")):
            array = (row[key].clamp(0, 1).mean(0).numpy() * 255).astype(np.uint8)
            canvas.paste(Image.fromarray(array).resize((cell, cell), Image.NEAREST).convert("RGB"),
                         (pad + j * (cell + pad), top))
        correct = sum(v == label for v in row["adversarial_votes"])
        verdict = "holds" if correct == len(row["adversarial_votes"]) else "fooled" if correct == 0 else "wavers"
        lines = [DEFENSES[row["defense"]], f"clean votes: {' '.join(names[v] for v in row['clean_votes'])}",
                 f"attacked votes: {' '.join(names[v] for v in row['adversarial_votes'])}",
                 f"{verdict} ({correct}/{len(row['adversarial_votes'])} runs say {names[label]})"]
        draw.multiline_text((3 * (cell + pad) + pad, top + 8), "\n".join(lines), fill="black", font=font, spacing=6)
    return canvas


def verdicts(rows: list[dict], label: int) -> dict[str, list[str]]:
    """The defenses that held (every K-run vote on the attacked image correct), wavered and were fooled."""
    groups = {"held": [], "wavered": [], "fooled": []}
    for row in rows:
        correct = sum(v == label for v in row["adversarial_votes"])
        key = "held" if correct == len(row["adversarial_votes"]) else "fooled" if correct == 0 else "wavered"
        groups[key].append(DEFENSES[row["defense"]])
    return groups


def caption(rows: list[dict], names: list[str], label: int, steps: int, eps: float) -> str:
    """What the picture shows, in words: the attack's (weak) budget and which defense held."""
    groups = verdicts(rows, label)
    said = "; ".join(f"**{key}**: {', '.join(found)}" for key, found in groups.items() if found)
    return (f"The digit {names[label]}, attacked at Linf eps {eps:g} by PGD-{steps} (margin loss, exact gradient "
            f"through each defense, no EOT): a weak interactive budget, so a defense that holds here can still fall "
            f"to `agdm evaluate`'s APGD-EOT, while one fooled here is fooled by this very image. {said}.")


def adversarial_files(rows: list[dict], folder) -> list[str]:
    """Each defense's adversarial and purified images as lossless PNG (16-bit for grey images, so they read back
    within 1/131070 of the attack's float values), plus all of them as exact float32 tensors in one safetensors
    file."""
    from pathlib import Path

    from PIL import Image
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, tensors = [], {}
    for row in rows:
        for key in ("adversarial", "purified"):
            tensor = row[key].detach().clamp(0, 1).float().contiguous()
            tensors[f"{row['defense']}/{key}"] = tensor
            if tensor.shape[0] == 1:
                image = Image.fromarray(np.round(tensor[0].numpy() * 65535).astype(np.uint16))
            else:
                image = Image.fromarray(np.round(tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
            path = folder / f"{row['defense']}_{key}.png"
            image.save(path)
            paths.append(str(path))
    save_file(tensors, str(folder / "adversarial_and_purified.safetensors"))
    return [*paths, str(folder / "adversarial_and_purified.safetensors")]


def votes_markdown(rows: list[dict], names: list[str], label: int, steps: int) -> str:
    lines = [f"True digit **{names[label]}**. Attack: PGD-{steps}, margin loss, exact gradient through each defense, "
             "no EOT (a weak, interactive budget: `agdm evaluate` measures robustness).", "",
             "| defense | K-run votes, clean | K-run votes, attacked | attacked: correct runs |", "|---|---|---|---|"]
    for row in rows:
        clean, attacked = (" ".join(names[v] for v in row[key]) for key in ("clean_votes", "adversarial_votes"))
        correct = f"{sum(v == label for v in row['adversarial_votes'])}/{len(row['adversarial_votes'])}"
        lines.append(f"| {DEFENSES[row['defense']]} | {clean} | {attacked} | {correct} |")
    return "\n".join(lines)


def build_demo(pipe=None, *, steps: int = 5, runs: int = 3, examples=None, preview: str | None = None):
    """The Gradio app around `pipe` (default: the embedded MNIST pipeline). `preview`, an image file, is attacked
    once before the app starts and shown on first load (a worked example; `scripts/screenshot_demo.py` uses it)."""
    import gradio as gr

    from diffusers_agdm import load_pipeline

    pipe = load_pipeline() if pipe is None else pipe
    if pipe.classifier is None:
        raise ValueError("The demo needs a pipeline with a classifier: it shows what the classifier answers.")
    pipe.set_progress_bar_config(disable=True)
    names = class_names(pipe)
    size, channels = pipe.sample_size, pipe.unet.config.in_channels

    def run(drawn, uploaded, true_label, eps, attack_steps, k, progress=gr.Progress()):
        try:
            image = to_model_input(drawn, uploaded, size, channels)
        except ValueError as err:
            raise gr.Error(str(err)) from err
        if true_label in (None, "", AUTO_LABEL):
            with torch.no_grad():
                label = int(pipe.classifier_logits(image).argmax(-1))
        else:
            label = names.index(str(true_label))
        rows = attack_each_defense(pipe, image, label, eps=float(eps), steps=int(attack_steps), runs=int(k),
                                   progress=progress)
        return (render(rows, names, label, float(eps)), caption(rows, names, label, int(attack_steps), float(eps)),
                votes_markdown(rows, names, label, int(attack_steps)),
                adversarial_files(rows, tempfile.mkdtemp(prefix="agdm-demo-out-")))

    shown = (None, "", "", None)
    if preview is not None:
        from PIL import Image

        shown = run(None, Image.open(preview), AUTO_LABEL, 0.3, steps, runs, progress=None)

    with gr.Blocks(title="diffusers-agdm: adversarial purification") as demo:
        gr.Markdown("# Adversarial purification with AGDM\nDraw or upload a digit, pick eps, and attack it: the "
                    "exact-gradient attack is run against the bare classifier and against each defense, and every "
                    "defense then votes K times (fresh purification noise each run).")
        with gr.Row():
            drawn = gr.Sketchpad(label="draw a digit", canvas_size=(280, 280), type="numpy")
            uploaded = gr.Image(preview, label="or upload one", type="numpy", image_mode="L",
                                sources=["upload", "clipboard"])
        with gr.Row():
            true_label = gr.Dropdown([AUTO_LABEL, *names], value=AUTO_LABEL, label="true digit")
            eps = gr.Slider(0.0, 0.5, value=0.3, step=0.01, label="eps (Linf, in [0, 1] pixel units)")
            attack_steps = gr.Slider(1, 20, value=steps, step=1, label="PGD steps")
            k = gr.Slider(1, 9, value=runs, step=2, label="K: defense runs that vote")
        button = gr.Button("attack and purify", variant="primary")
        picture = gr.Image(shown[0], label="clean / adversarial / purified, one row per defense", type="pil",
                           format="png")
        explained = gr.Markdown(shown[1])
        table = gr.Markdown(shown[2])
        files = gr.File(shown[3], label="the exact adversarial and purified images (16-bit PNG; float32 "
                        "safetensors)", file_count="multiple")
        if examples:
            gr.Examples(examples=[[None, path] for path in examples], inputs=[drawn, uploaded])
        button.click(run, inputs=[drawn, uploaded, true_label, eps, attack_steps, k],
                     outputs=[picture, explained, table, files], api_name="attack")
    return demo


def example_images(folder, count: int = 4) -> list[str]:
    """A few real MNIST test digits (foolbox's, when installed) as PNG files for the example gallery."""
    from pathlib import Path

    from PIL import Image

    try:
        from diffusers_agdm.data import load_labelled_images

        data = load_labelled_images("foolbox-mnist", "test")
    except (ImportError, OSError, ValueError):
        return []
    paths = []
    for i in range(min(count, len(data))):
        path = Path(folder) / f"mnist_test_{i}.png"
        Image.fromarray((data.images[i, 0].numpy() * 255).astype(np.uint8), mode="L").save(path)
        paths.append(str(path))
    return paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="pipeline folder or Hub id (default: the embedded MNIST one)")
    parser.add_argument("--server_name", default="127.0.0.1", help="the address to serve on (0.0.0.0 to share it "
                        "on your network)")
    parser.add_argument("--server_port", type=int, default=7860, help="the port to serve on")
    parser.add_argument("--attack_steps", type=int, default=5, help="the PGD steps the app starts with")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    from diffusers_agdm import load_pipeline

    args = parse_args(argv)
    demo = build_demo(load_pipeline(args.pipeline), steps=args.attack_steps,
                      examples=example_images(tempfile.mkdtemp(prefix="agdm-demo-")))
    demo.launch(server_name=args.server_name, server_port=args.server_port)


if __name__ == "__main__":  # a Hugging Face Space runs `python app.py`
    main()
