"""Three architectures beyond the built-ins, and two data factories, for the tests.

- :func:`resnet`: a small ResNet (conv stem, residual blocks with identity or 1x1 shortcuts);
- :func:`transformer`: token embedding + ``nn.TransformerEncoder`` + mean pooling + linear head;
- :func:`dict_net`: an MLP whose forward returns ``{"features": ..., "logits": ...}``;
- :func:`blobs`: Gaussian classes as arrays (a mapping), images or vectors;
- :func:`tokens`: token sequences whose class is the majority token, as a (train, test) pair of
  ``torch.utils.data.TensorDataset``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset


class Block(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut, then relu."""

    def __init__(self, n_in: int, n_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and n_in == n_out
            else nn.Sequential(nn.Conv2d(n_in, n_out, 1, stride=stride, bias=False),
                               nn.BatchNorm2d(n_out))
        )  # fmt: skip
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, channels: int, n_classes: int, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(Block(width, width), Block(width, 2 * width, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


def resnet(input_shape, n_classes, width: int = 8) -> ResNet:
    return ResNet(int(input_shape[0]), int(n_classes), width)


class Transformer(nn.Module):
    def __init__(self, vocab: int, n_classes: int, d_model: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(tokens.long()))  # (batch, seq, d_model)
        return self.head(hidden.mean(dim=1))


def transformer(n_classes, vocab: int = 6, d_model: int = 16, layers: int = 2) -> Transformer:
    return Transformer(vocab, int(n_classes), d_model, layers)


class DictNet(nn.Module):
    def __init__(self, n_in: int, n_classes: int, hidden: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.Tanh())
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return {"features": features, "logits": self.out(features)}


def dict_net(input_shape, n_classes, hidden: int = 16) -> DictNet:
    return DictNet(int(np.prod(input_shape)), int(n_classes), hidden)


def blobs(n_train: int = 200, n_test: int = 100, classes: int = 3, shape=(16,), seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.5, size=(classes, *shape))

    def draw(n):
        y = np.arange(n) % classes
        return (means[y] + rng.normal(size=(n, *shape))).astype(np.float32), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def tokens(n_train: int = 200, n_test: int = 100, seq: int = 8, vocab: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)

    def draw(n):
        x = rng.integers(0, vocab, size=(n, seq))
        y = (x < vocab // 2).sum(axis=1) > seq // 2
        return TensorDataset(
            torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y.astype(np.int64))
        )

    return draw(n_train), draw(n_test)


NOT_CALLABLE = 42


def returns_a_string(**kwargs):
    return "not a model"
