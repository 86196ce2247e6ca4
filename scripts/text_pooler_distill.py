"""Teach MiniLM's [CLS] pooler to give its mean-pooled sentence embedding (text only, minutes).

all-MiniLM-L6-v2 was trained with mean pooling; HF's ``get_text_features`` (what
VisionTextDualEncoderModel and every CLIP evaluator call) reads the BERT pooler, dense+tanh on
[CLS], which MiniLM never trained. Its [CLS] embeddings of "a photo of a {class}." barely separate
the classes. This step tunes the last BERT layer and the pooler so that pooler([CLS]) points
where the original model's mean pooling points (cosine loss), on a corpus that contains no
evaluation prompt: the training captions, the Flickr8k captions and the training templates
filled with random whole words of the tokenizer's vocabulary (so any class name, not only the
training ones, is covered). The frozen lower layers' outputs are computed once.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vitq.data import data_path
from vitq.data.captions import read_caption_csv

MAX_TOKENS = 48


def corpus(captions: list[str], templates: tuple[str, ...], tokenizer, seed: int, n_words: int = 16000) -> list[str]:
    """Training captions + Flickr8k captions + templates filled with one or two random vocabulary words."""
    rng = random.Random(seed)
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 3)
    texts = list(captions)
    flickr = data_path("flickr8k-1k", "captions.csv", must_exist=False)
    if flickr.is_file():
        texts += [c for _, c in read_caption_csv(flickr)]
    for _ in range(n_words):
        name = " ".join(rng.choice(words) for _ in range(rng.choice((1, 1, 1, 2))))
        texts.append(rng.choice(templates).format(name))
    return texts


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' pooling: the average of the unpadded token states."""
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


@torch.no_grad()
def _cache(text_model, tok: dict, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the last layer (bf16) and the original model's mean-pooled outputs (fp32)."""
    inputs, targets = [], []
    for i in tqdm(range(0, len(tok["input_ids"]), batch), desc="text cache", mininterval=5, leave=False):
        part = {k: v[i : i + batch] for k, v in tok.items()}
        states = text_model(**part, output_hidden_states=True).hidden_states
        inputs.append(states[-2].to(torch.bfloat16))
        targets.append(mean_pool(states[-1], part["attention_mask"]))
    return torch.cat(inputs), torch.cat(targets)


def pooled_from_last_input(text_model, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last BERT layer and the pooler on cached last-layer inputs."""
    additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
    h = text_model.encoder.layer[-1](hidden, attention_mask=additive)
    h = h[0] if isinstance(h, tuple) else h
    return text_model.pooler(h)


def distill(text_model, tokenizer, texts: list[str], seed: int, epochs: int = 3, batch: int = 128,
            lr: float = 2e-4, pooler_lr: float = 1e-3) -> dict:
    """Tune ``text_model``'s last layer and pooler in place; returns the corpus size, epochs and
    per-epoch mean cosine loss."""
    text_model.eval()  # no dropout: the cached inputs and the targets are deterministic
    tok = tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    tok = {k: tok[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in tok}
    hidden, target = _cache(text_model, tok)
    mask = tok["attention_mask"]
    last, pooler = text_model.encoder.layer[-1], text_model.pooler
    params = [{"params": list(last.parameters()), "lr": lr}, {"params": list(pooler.parameters()), "lr": pooler_lr}]
    for group in params:
        for p in group["params"]:
            p.requires_grad = True
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    steps = epochs * (len(texts) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, pooler_lr], total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        order = torch.randperm(len(texts), generator=g)
        total, n = 0.0, 0
        for i in tqdm(range(len(texts) // batch), desc=f"distil pooler {epoch + 1}/{epochs}", mininterval=10, leave=False):
            idx = order[i * batch : (i + 1) * batch]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = pooled_from_last_input(text_model, hidden[idx].float(), mask[idx])
            loss = 1 - F.cosine_similarity(out.float(), target[idx], dim=-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item(), n + 1
        history.append(round(total / n, 5))
        print(f"distil pooler epoch {epoch + 1}: cosine loss {history[-1]}", flush=True)
    for p in text_model.parameters():
        p.requires_grad = False
    return {"texts": len(texts), "epochs": epochs, "loss": history}


@torch.no_grad()
def mean_embeddings(text_model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Normalised mean-pooled embeddings: call before ``distill`` to keep the original's."""
    tok = tokenizer(texts, padding=True, return_tensors="pt")
    return F.normalize(mean_pool(text_model(**tok).last_hidden_state, tok["attention_mask"]), dim=-1)


@torch.no_grad()
def agreement(text_model, tokenizer, texts: list[str], reference: torch.Tensor) -> dict:
    """On held-out texts: cosine of the pooler output to the original mean pooling
    (``reference``), and how well the pairwise-similarity structure that zero-shot
    classification reads is kept."""
    tok = tokenizer(texts, padding=True, return_tensors="pt")
    pooled = F.normalize(text_model(**tok).pooler_output, dim=-1)
    sims_p, sims_m = pooled @ pooled.T, reference @ reference.T
    off = ~torch.eye(len(texts), dtype=torch.bool)
    corr = torch.corrcoef(torch.stack([sims_p[off], sims_m[off]]))[0, 1].item()
    return {"texts": len(texts), "mean_cosine": round((pooled * reference).sum(-1).mean().item(), 4),
            "similarity_correlation": round(corr, 4)}
