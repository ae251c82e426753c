"""Make Diffusers' generic loaders understand this package, so no `trust_remote_code` is ever needed.

Diffusers 0.42 resolves a pipeline's `_class_name` with `getattr(diffusers, name)` and, for a Hub repo id, rejects
any component library it does not know unless a `<library>.py` file ships in the repo (remote code). Declaring
`diffusers_agdm` a loadable library, the way Diffusers declares `transformers`, fixes both at the root:
`save_pretrained` then records our components as `["diffusers_agdm", "GuidanceModel"]`, the Hub check accepts that
name, and `DiffusionPipeline.from_pretrained(...)` builds our classes from this installed package.
"""

import diffusers
from diffusers.pipelines import pipeline_loading_utils

LIBRARY_NAME = "diffusers_agdm"


def register_with_diffusers(pipeline_classes) -> None:
    pipeline_loading_utils.LOADABLE_CLASSES.setdefault(
        LIBRARY_NAME, {"ModelMixin": ["save_pretrained", "from_pretrained"]})
    for cls in pipeline_classes:
        setattr(diffusers, cls.__name__, cls)
