import random

import pytest
import torch

from aether_arch import PRESET_FACTORIES


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


def train_steps(model: torch.nn.Module, steps: int = 3, size: int = 12) -> None:
    """Move weights and BatchNorm running statistics away from their init."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.5
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.rand(2, 3, size, size)
        loss = (model(x) - 0.5).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="session")
def trained_models():
    """One trained training-form model per (preset, scale), built once per test session."""
    cache = {}

    def get(name: str, scale: int):
        if (name, scale) not in cache:
            torch.manual_seed(1)
            model = PRESET_FACTORIES[name](scale=scale)
            train_steps(model)
            cache[name, scale] = model
        return cache[name, scale]

    return get
