"""Run under torchrun by tests/test_p4q.py: train a prompt and a QAdapter (P4Q) on a tiny random
CLIP with fixed features, and save rank 0's trained parameters to argv[1] (alone: one process)."""

import sys

import torch


def toy_setup():
    from conftest import tiny_models

    from vitq.methods.p4q import P4QData, P4QOptions, cosine_logits, logit_scale
    from vitq.models.prompting import PromptTokens, attach_image_adapter, attach_prompt
    from vitq.nn import LearnedPrompt, QAdapter

    model = tiny_models()["CLIPModel"].eval()
    g = torch.Generator().manual_seed(0)
    classes, n, dim = 3, 24, model.config.projection_dim
    ids = torch.tensor([[0, 1, 1, 1, 10 + c, 11, 119] for c in range(classes)])
    ctx_index = torch.tensor([[-1, 0, 1, 2, -1, -1, -1]] * classes)
    tokens = PromptTokens(ids, torch.ones_like(ids), ctx_index, torch.full((classes,), 6))
    feats = torch.randn(n, dim, generator=g)
    labels = torch.arange(n) % classes
    teacher = cosine_logits(torch.randn(n, dim, generator=g), torch.randn(classes, dim, generator=g), logit_scale(model))
    data = P4QData(feats, labels, teacher, tokens, torch.randn(classes, dim, generator=g))
    prompt = LearnedPrompt(3, model.config.text_config.hidden_size)
    with torch.no_grad():
        prompt.ctx.copy_(torch.randn(prompt.ctx.shape, generator=g) * 0.1)
    attach_prompt(model, prompt)
    adapter = QAdapter(dim, 4)
    with torch.no_grad():
        adapter.fc2.weight.normal_(0, 0.1, generator=g)
    projection = attach_image_adapter(model, adapter, 0.2)
    opts = P4QOptions(epochs=1, batch_size=8, prompt_lr=0.05, adapter_lr=0.01)
    return model, data, opts, prompt, projection


def main(out: str) -> None:
    import torch.distributed as dist

    from vitq.methods.p4q import train_prompt_adapter

    torch.set_num_threads(1)
    model, data, opts, prompt, projection = toy_setup()
    train_prompt_adapter(model, data, opts, seed=0, progress=False, prompt=prompt, projection=projection)
    if not dist.is_initialized() or dist.get_rank() == 0:
        state = {f"prompt.{k}": v for k, v in prompt.state_dict().items()}
        state.update({f"adapter.{k}": v for k, v in projection.adapter.state_dict().items()})
        torch.save(state, out)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    main(sys.argv[1])
