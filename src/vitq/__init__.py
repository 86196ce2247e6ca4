"""vitq: post-training quantization for vision transformers, CLIP-style models and diffusion UNets.

    import vitq
    model = vitq.load_model("zoo:clip-tiny")
    batches = vitq.calibration_data("images/", model, num=32)   # a folder, "synthetic", or any iterable
    cfg = vitq.QuantConfig(method="minmax", bits="W8A8", components=("image", "text"))
    qmodel = vitq.quantize(model, cfg, calib=batches)
    vitq.save(qmodel, "out/")
    same = vitq.load("out/")
"""

from ._version import __version__  # noqa: E402

import logging as _logging

# torchao (pulled in by transformers when installed) logs about GPU kernels a CPU build cannot load,
# and registers enums with torch's pytree the deprecated way; neither concerns vitq's users.
_logging.getLogger("torchao").setLevel(_logging.ERROR)
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)

from .api import quantize  # noqa: E402
from .config import BitSpec, QuantConfig, parse_bits  # noqa: E402
from .errors import VitqError  # noqa: E402
from .methods import available_methods  # noqa: E402
from .api import calibration_data, load  # noqa: E402
from .data.paths import data_root  # noqa: E402
from .models.loading import load_model  # noqa: E402
from .saving import save  # noqa: E402


def evaluate(model, task: str, data=None, reference=None, **options):
    """Evaluate a model on a task (see :func:`vitq.eval.evaluate`)."""
    from .eval import evaluate as _evaluate

    return _evaluate(model, task=task, data=data, reference=reference, **options)


__all__ = ["quantize", "QuantConfig", "BitSpec", "parse_bits", "VitqError", "available_methods", "load", "save", "evaluate",
           "load_model", "calibration_data", "data_root", "__version__"]
