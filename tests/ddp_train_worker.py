"""Run under torchrun by tests/test_train.py: train a linear model on the shared toy data and save
rank 0's weights to argv[1] (alone, without torchrun, it trains in one process)."""

import sys

import torch

from vitq.train import TrainConfig, train


def toy_data():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    return x, (x[:, :2].sum(1) > 0).long()


def main(out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    x, y = toy_data()
    model = torch.nn.Linear(8, 2)
    torch.nn.init.zeros_(model.bias)
    with torch.no_grad():
        model.weight.copy_(torch.arange(16.0).reshape(2, 8) / 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, opt, len(x), lambda idx, ctx: torch.nn.functional.cross_entropy(model(x[idx]), y[idx]),
          TrainConfig(epochs=2, batch_size=16, progress=False, grad_clip=None))
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(model.state_dict(), out)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
