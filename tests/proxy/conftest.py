"""Real NetworkStats of a tiny real network (conv, conv, linear) on random images, computed once per session."""
import pytest
import torch
import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def make_stats(seed: int = 0, hessian: bool = True, act_images: int = 6):
    from proxylab.stats import compute_stats

    torch.manual_seed(seed)
    model = TinyNet()
    x = torch.randn(24, 3, 8, 8)
    y = torch.randint(0, 4, (24,))
    # a few SGD steps so gradients and Hessians are those of a network that has started to fit
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return compute_stats(model, x, y, bit_choices=(2, 3, 4), batch_size=16, seed=seed, hessian=hessian,
                         act_images=act_images, hessian_probes=2, hessian_iters=5)


@pytest.fixture(scope="session")
def stats():
    return make_stats()
