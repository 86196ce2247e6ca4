"""``p4q``: P4Q (Learning to Prompt for Quantization in Visual-language Models). A PTQ model (the
``base`` method, OMSE by default) stays frozen; a learnable prompt and a low-bit adapter after the
image encoder are trained to realign its image and text features, with the full-precision model as
teacher.

- **Prompt** (CoOp): ``n_ctx`` context vectors shared by all classes replace the template; the class
  name goes at the ``end``, ``middle`` or ``front``; initialised from ``ctx_init`` (its words fill the
  last context vectors, the others start at N(0, 0.02²)) or at random. The prompted token sequence
  passes a ``prompt_bits`` quantization point (its range follows the sequence at every step, fixed at
  the end) and then the quantized text encoder.
- **QAdapter**: QFC(D → D/reduction) → ReLU → QFC(D/reduction → D) at ``adapter_bits``, mixed as
  f' = α·QAdapter(f) + (1 − α)·f after the image projection (α = ``adapt_ratio``).
- **Loss**: L_cls (cross-entropy over the logit-scaled cosine logits) + λ·L_kd (cross-entropy between
  the full-precision teacher's softmax, with the template prompt, and the student's).
- **Training** (:func:`vitq.train.train`): SGD (momentum 0.9) at ``prompt_lr`` for the prompt, AdamW
  at ``adapter_lr`` (no weight decay) for the adapter, ``batch_size`` images a step, checkpoints after
  every epoch and ``resume``; data parallel under torchrun. The image encoders are frozen, so their
  features (teacher and quantized student) are computed once and cached in memory: no augmentation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QuantConfig
from ..errors import ConfigError
from . import MethodResult, get_method, register
from .common import run_identity
from .options import MethodOptions

DEFAULT_TRAIN_LIMIT = 5000


@dataclass(frozen=True)
class P4QOptions(MethodOptions):
    base: str = "omse"
    train_data: Optional[str] = None
    train_limit: int = DEFAULT_TRAIN_LIMIT
    epochs: int = 10
    batch_size: int = 128
    prompt: bool = True
    adapter: bool = True
    n_ctx: int = 16
    ctx_init: str = "a photo of a"
    class_position: str = "end"
    prompt_bits: int = 8
    adapt_ratio: float = 0.2
    adapter_bits: int = 8
    adapter_reduction: int = 4
    loss: str = "both"
    kd_weight: float = 1.0
    prompt_lr: float = 5e-4
    adapter_lr: float = 1e-3
    feature_batch_size: int = 64
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    stop_after: Optional[int] = None

    CHOICES = {"class_position": ("end", "middle", "front"), "loss": ("both", "cls", "kd")}
    HELP = {
        "base": "PTQ method whose model is kept frozen (omse: P4Q's baseline; any static method; none: the full-precision model)",
        "train_data": "labelled training images: a folder or .zip of class folders (the CLI passes --calib)",
        "train_limit": "training images, class-balanced (0: all)",
        "epochs": "training epochs (the paper: 50)",
        "batch_size": "images per step",
        "prompt": "learn the prompt (false: the template 'a photo of a {}.')",
        "adapter": "learn the QAdapter after the image encoder",
        "n_ctx": "context vectors of the prompt",
        "ctx_init": "words that initialise the last context vectors, or 'random'",
        "class_position": "where the class name goes: end, middle or front",
        "prompt_bits": "bits of the quantization point on the prompted token sequence",
        "adapt_ratio": "alpha of f' = alpha * QAdapter(f) + (1 - alpha) * f",
        "adapter_bits": "bits of the QAdapter's weights and inputs (QFC)",
        "adapter_reduction": "bottleneck: hidden width = feature width / reduction",
        "loss": "both: L_cls + kd_weight * L_kd; cls or kd alone (ablations)",
        "kd_weight": "lambda, the weight of the distillation loss",
        "prompt_lr": "SGD learning rate of the prompt",
        "adapter_lr": "AdamW learning rate of the QAdapter",
        "feature_batch_size": "images per batch while caching features",
        "checkpoint_dir": "write a checkpoint after every epoch here",
        "resume": "continue from checkpoint_dir (same settings): the result equals an uninterrupted run",
        "stop_after": "stop after this many epochs (then resume)",
    }

    def __post_init__(self):
        super().__post_init__()
        if not (self.prompt or self.adapter):
            raise ConfigError("p4q with prompt=false and adapter=false learns nothing", hint="keep the prompt, the adapter or both")
        if self.epochs < 1 or self.batch_size < 1 or self.n_ctx < 1 or self.adapter_reduction < 1 or self.train_limit < 0:
            raise ConfigError("epochs, batch_size, n_ctx and adapter_reduction must be positive, train_limit >= 0")
        if not 0.0 <= self.adapt_ratio <= 1.0:
            raise ConfigError(f"option adapt_ratio={self.adapt_ratio} must lie in [0, 1]", hint="P4Q uses 0.2")
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("option resume needs checkpoint_dir", hint="give checkpoint_dir=DIR (the CLI: --checkpoint-dir DIR)")


@dataclass
class P4QData:
    """What training needs, cached: the quantized model's image features (before the adapter), the
    labels, the teacher's logits, and the class prompts."""

    student_features: torch.Tensor  # [N, D]
    labels: torch.Tensor  # [N]
    teacher_logits: torch.Tensor  # [N, C]
    tokens: object  # models.prompting.PromptTokens
    template_features: torch.Tensor  # [C, D]: the quantized text tower on the template (no prompt)


def logit_scale(model) -> float:
    from ..models.adapter import unwrap

    return float(unwrap(model).logit_scale.detach().float().exp())


def cosine_logits(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T


def p4q_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "both",
             kd_weight: float = 1.0) -> torch.Tensor:
    """L_cls + λ·L_kd (or either alone)."""
    from ..train.losses import soft_cross_entropy

    loss = logits.new_zeros(())
    if kind in ("both", "cls"):
        loss = loss + F.cross_entropy(logits, labels)
    if kind in ("both", "kd"):
        loss = loss + kd_weight * soft_cross_entropy(logits, teacher_logits)
    return loss


@torch.no_grad()
def image_features(model, dataset, batch_size: int, desc: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected image features and labels of every image of ``dataset``."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..models.families import family_of
    from ..tensors import device_of

    adapter, device = family_of(model), device_of(model)
    feats, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for x, y in tqdm(loader, desc=desc, disable=not progress, mininterval=10, leave=False):
        feats.append(adapter.run(model, "image", {"pixel_values": x.to(device)}).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def template_text_features(model, tokenizer, class_names, template: str | None = None) -> torch.Tensor:
    from ..data.calibration import CALIB_TEMPLATE
    from ..models.families import family_of

    template = template or CALIB_TEMPLATE
    tok = tokenizer([template.format(c) for c in class_names], padding=True, truncation=True, return_tensors="pt")
    return family_of(model).run(model, "text", dict(tok)).float().cpu()


def build_prompt(model, tokenizer, opts: P4QOptions, seed: int):
    """A :class:`vitq.nn.LearnedPrompt` initialised from ``ctx_init`` (its words last) or at random."""
    from ..models.prompting import token_table
    from ..nn import LearnedPrompt

    table = token_table(model)
    prompt = LearnedPrompt(opts.n_ctx, table.weight.shape[1], opts.class_position, opts.prompt_bits)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        prompt.ctx.copy_(torch.randn(prompt.ctx.shape, generator=g) * 0.02)
        if opts.ctx_init.strip().lower() != "random":
            words = tokenizer(opts.ctx_init, add_special_tokens=False)["input_ids"]
            if len(words) > opts.n_ctx:
                raise ConfigError(f"ctx_init {opts.ctx_init!r} has {len(words)} tokens, more than n_ctx={opts.n_ctx}",
                                  hint="use a shorter ctx_init or more context vectors")
            if words:
                prompt.ctx[-len(words):] = table(torch.tensor(words, device=table.weight.device)).float().cpu()
    return prompt.to(table.weight.device)


def refresh_prompt_scale(model, prompt, tokens) -> None:
    """The prompt point's range from the prompted sequence as it is now (min/max)."""
    from ..models.prompting import token_table

    with torch.no_grad():
        prompt.input_quantizer.calibrate_on([prompt.assemble(token_table(model)(tokens.input_ids), tokens.ctx_index)])


def train_prompt_adapter(model, data: P4QData, opts: P4QOptions, seed: int = 0, progress: bool = True, prompt=None,
                         projection=None, context: str | None = None):
    """Train ``prompt`` (a LearnedPrompt, or None: the template features) and ``projection`` (an
    AdaptedProjection, or None) on the cached ``data``; returns the loop's state."""
    from ..models.prompting import prompted_text_features
    from ..train import MultiOptimizer, TrainConfig, train

    parts, optimizers = nn.ModuleDict(), []
    if prompt is not None:
        parts["prompt"] = prompt
        optimizers.append(torch.optim.SGD([prompt.ctx], lr=opts.prompt_lr, momentum=0.9))
    if projection is not None:
        parts["adapter"] = projection.adapter
        optimizers.append(torch.optim.AdamW(projection.adapter.parameters(), lr=opts.adapter_lr, weight_decay=0.0))
    frozen = [p for p in model.parameters() if p.requires_grad and not any(p is q for q in parts.parameters())]
    for p in frozen:
        p.requires_grad_(False)
    scale = logit_scale(model)

    def text_features():
        if prompt is None:
            return data.template_features
        refresh_prompt_scale(model, prompt, data.tokens)
        return prompted_text_features(model, data.tokens, prompt)

    def step(idx, ctx):
        image = data.student_features[idx]
        if projection is not None:
            image = projection.mix(image)
        logits = cosine_logits(image, text_features(), scale)
        return p4q_loss(logits, data.labels[idx], data.teacher_logits[idx], opts.loss, opts.kd_weight)

    def full_loss() -> float:
        """The loss on every cached image at once (the epoch's running mean mixes the steps' states)."""
        with torch.no_grad():
            image = projection.mix(data.student_features) if projection is not None else data.student_features
            logits = cosine_logits(image, text_features(), scale)
            return float(p4q_loss(logits, data.labels, data.teacher_logits, opts.loss, opts.kd_weight))

    def epoch_end(epoch, mean_loss):
        if projection is not None:
            projection.adapter.eval()
        return {"full_loss": round(full_loss(), 5)}

    def epoch_start(epoch, g):
        model.eval()  # the frozen towers stay in inference mode; only the adapter trains
        if projection is not None:
            projection.adapter.calibrate_inputs(data.student_features)
            projection.adapter.train()

    config = TrainConfig(epochs=opts.epochs, batch_size=min(opts.batch_size, len(data.labels)), seed=seed, grad_clip=1.0,
                         checkpoint_dir=opts.checkpoint_dir, resume=opts.resume, stop_after=opts.stop_after,
                         progress=progress, desc=None, context=context)
    if projection is not None:
        projection.adapter.calibrate_inputs(data.student_features)
    initial = full_loss()
    try:
        state = train(parts, MultiOptimizer(optimizers), len(data.labels), step, config, on_epoch_start=epoch_start,
                      on_epoch_end=epoch_end)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if prompt is not None:
        refresh_prompt_scale(model, prompt, data.tokens)
    if projection is not None:
        projection.adapter.calibrate_inputs(data.student_features)
        projection.adapter.eval()
    state.initial_loss = initial
    return state


@register("p4q", options=P4QOptions, trains=True, dtypes=("float32",))
def p4q(model, calib, cfg: QuantConfig, opts: P4QOptions, progress: bool = True):
    """P4Q: a learnable prompt and a low-bit adapter, distilled from the full-precision model, realign a frozen PTQ CLIP."""
    from ..data.imagefolder import ImageFolder
    from ..data.preprocess import image_transform
    from ..models.prompting import attach_image_adapter, attach_prompt, check_dual_encoder, prompt_tokens, text_length_limit
    from ..models.tokenizers import resolve_tokenizer
    from ..nn import QAdapter

    check_dual_encoder(model)
    if not opts.train_data:
        raise ConfigError("p4q trains on labelled images, and no training data was given",
                          hint="pass a folder or .zip of class folders (--calib TRAIN_DATA, or --option train_data=PATH)")
    base = None if opts.base == "none" else get_method(opts.base)
    if base is not None and (base.name in ("p4q", "recon", "dq-clip") or not base.needs_calibration or base.trains or "float32" not in base.dtypes):
        raise ConfigError(f"p4q cannot start from {opts.base!r}", hint="use a static calibration method as base: omse, minmax, percentile, ema, repq-vit")
    if sorted(cfg.components) != ["image", "text"]:
        raise ConfigError("p4q quantizes and realigns both towers", hint="use --components image,text")
    start = time.time()
    tokenizer = resolve_tokenizer(model)
    dataset = ImageFolder(opts.train_data, transform=image_transform(model), limit=opts.train_limit or None, seed=cfg.seed)
    names = dataset.class_names
    with torch.no_grad():  # the teacher: the full-precision model with the template prompt
        teacher_image, labels = image_features(model, dataset, opts.feature_batch_size, "teacher features", progress)
        teacher_text = template_text_features(model, tokenizer, names)
    teacher_logits = cosine_logits(teacher_image, teacher_text, logit_scale(model))
    with torch.no_grad():
        if base is None:  # base=none: prompt learning on the full-precision model (CoOp; P4Q's "+ Prompt" row)
            from ..models.families import family_of

            base_result = MethodResult(family=family_of(model).name, components=list(cfg.components))
        else:
            model, base_result = base.fn(model, calib, cfg, base.parse_options({}), progress=progress)
        student_image, _ = image_features(model, dataset, opts.feature_batch_size, "quantized features", progress)
        template = template_text_features(model, tokenizer, names)
    cached = time.time() - start
    tokens = prompt_tokens(tokenizer, names, opts.n_ctx, opts.class_position, text_length_limit(model, tokenizer))
    data = P4QData(student_image, labels, teacher_logits, tokens, template)
    prompt = projection = None
    torch.manual_seed(cfg.seed)  # the adapter's first layer starts at PyTorch's default init: the same for a seed
    if opts.prompt:
        prompt = build_prompt(model, tokenizer, opts, cfg.seed)
        prompt.input_quantizer.enabled = base is not None  # a full-precision model keeps its input in float
        attach_prompt(model, prompt)
    if opts.adapter:
        dim = student_image.shape[1]
        projection = attach_image_adapter(model, QAdapter(dim, max(1, dim // opts.adapter_reduction), opts.adapter_bits), opts.adapt_ratio)
    with torch.enable_grad():
        state = train_prompt_adapter(model, data, opts, cfg.seed, progress, prompt, projection, context=run_identity(cfg))
    record = {
        "base": base.name if base is not None else "none", "train_data": str(opts.train_data), "train_images": len(dataset), "classes": len(names),
        "epochs": opts.epochs, "batch_size": opts.batch_size, "prompt": opts.prompt, "adapter": opts.adapter,
        "n_ctx": opts.n_ctx, "ctx_init": opts.ctx_init, "class_position": opts.class_position, "adapt_ratio": opts.adapt_ratio,
        "adapter_bits": opts.adapter_bits, "prompt_bits": opts.prompt_bits, "loss": opts.loss, "kd_weight": opts.kd_weight,
        "cached_features": True, "feature_seconds": round(cached, 1), "train_seconds": round(state.train_seconds, 1),
        "initial_loss": round(state.initial_loss, 5), "history": state.history, "stopped_early": state.stopped_early
    }
    details = {**base_result.details, "p4q": record}
    return model, MethodResult(family=base_result.family, components=base_result.components, calibration=base_result.calibration,
                               scope=base_result.scope, float_attention=base_result.float_attention, details=details)
