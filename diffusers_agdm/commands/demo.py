"""`agdm demo`: the Gradio app (`diffusers_agdm/demo/app.py`) on a local server."""

import argparse

from ..utils.flags import HelpFormatter
from . import (
    EXIT_OK,
    BaseAgdmCLICommand,
    add_num_threads_argument,
    add_pipeline_argument,
    load_pipeline,
    set_num_threads,
)


class DemoCommand(BaseAgdmCLICommand):
    name = "demo"
    help = "a Gradio app: draw a digit, attack it, see each defense purify it (needs diffusers-agdm[demo])"

    @classmethod
    def register_subcommand(cls, subparsers):
        parser = subparsers.add_parser(
            cls.name, help=cls.help,
            description="Serve the demo: draw or upload a digit, pick eps, attack it with exact-gradient PGD against "
                        "the bare classifier and each defense, and see clean / adversarial / purified side by side "
                        "with the K-run votes. The same app file runs as a Hugging Face Space.",
            formatter_class=HelpFormatter, allow_abbrev=False)
        add_pipeline_argument(parser)
        parser.add_argument("--server_name", default="127.0.0.1",
                            help="the address to serve on (0.0.0.0 makes it reachable from your network)")
        parser.add_argument("--server_port", type=int, default=7860, help="the port to serve on")
        parser.add_argument("--steps", "--attack_steps", dest="attack_steps", type=int, default=5,
                            help="the PGD steps the app starts with (the attack budget, named as in `agdm evaluate`)")
        parser.add_argument("--share", action=argparse.BooleanOptionalAction, default=False,
                            help="also open a temporary public gradio.live link")
        add_num_threads_argument(parser)
        parser.set_defaults(func=cls)
        return parser

    def run(self) -> int:
        import tempfile

        args = self.args
        if not 1 <= args.attack_steps <= 20:
            raise ValueError(f"--steps (--attack_steps) must be in [1, 20] (the app's slider), got "
                             f"{args.attack_steps}.")
        if not 0 < args.server_port < 65536:
            raise ValueError(f"--server_port must be a port number, got {args.server_port}.")
        try:
            import gradio  # noqa: F401
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError("agdm demo needs Gradio: pip install 'diffusers-agdm[demo]'") from err
        from ..demo.app import build_demo, example_images

        set_num_threads(args.num_threads)
        demo = build_demo(load_pipeline(args.pipeline), steps=args.attack_steps,
                          examples=example_images(tempfile.mkdtemp(prefix="agdm-demo-")))
        demo.launch(server_name=args.server_name, server_port=args.server_port, share=args.share)
        return EXIT_OK
