"""A small CNN trained on scikit-learn's digits (real data, about a second on one thread), for
tests that check accuracy on a trained model: int8 (tests/passes/quant/test_digits.py) and the
native backend's Winograd convolutions (tests/backends/test_native_winograd.py)."""

from __future__ import annotations

import torch
from torch import nn

N_TRAIN = 1300  # images 0..1299 train, the remaining 497 are held out


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def trained(epochs: int = 8) -> tuple[DigitsNet, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor]:
    """(model in eval mode, train images, train labels, held-out images, held-out labels);
    images [N, 1, 8, 8] in [0, 1]. Seeded: the same model every time."""
    from sklearn import datasets

    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    x_train, y_train = x[:N_TRAIN], y[:N_TRAIN]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: threads only add overhead on a busy machine
    try:
        torch.manual_seed(0)
        model = DigitsNet()
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(epochs):
            perm = torch.randperm(N_TRAIN)
            for i in range(0, N_TRAIN, 64):
                idx = perm[i:i + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), x_train, y_train, x[N_TRAIN:], y[N_TRAIN:]
