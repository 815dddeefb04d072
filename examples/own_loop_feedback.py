"""Feedback alignment (or any feedback rule) on your own network, in your own PyTorch loop.

    python examples/own_loop_feedback.py [--rule fa] [--steps 300] [--data-dir DIR] [--synthetic]

``bioprop.wrap(net, rule="fa")`` returns ``net`` itself with the backward pass of every
``nn.Linear`` and ``nn.Conv2d`` replaced by the rule's: the error reaches the layer below through a
fixed random feedback weight ``B`` instead of ``W^T``. Everything else (ReLU, the loss, the
optimiser) is ordinary PyTorch, so ``loss.backward()`` on *any* loss gives the rule's gradients.
``--rule`` takes every feedback rule: fa, usf, brsf, frsf, kp, wm (kp and wm also learn ``B``: it is
a parameter of the wrapped layers, so ``net.parameters()`` hands it to the optimiser).

Trains on MNIST when a copy is found (``--data-dir``, ``$BIOPROP_DATA``, ``../shared/data``, the
cache), else on a synthetic problem; prints the loss falling, the test error, and the angle
between the rule's gradient and backprop's for each layer (the output layer's is 0: it gets the
true error). See docs/own-loop.md.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import bioprop
import own_loop_data


class SmallCNN(nn.Module):
    """An ordinary PyTorch model: two strided convolutions and two linear layers, ReLU between."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, stride=2, padding=2)   # 28 -> 14
        self.conv2 = nn.Conv2d(16, 32, 5, stride=2, padding=2)  # 14 -> 7
        self.fc = nn.Linear(32 * 7 * 7, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.out(F.relu(self.fc(x.flatten(1))))


def train(net: nn.Module, data, steps: int, batch_size: int, lr: float, log_every: int) -> list[float]:
    """The loop: nothing in it knows about the learning rule."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    losses: list[float] = []
    while len(losses) < steps:
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()          # the rule's backward pass
            optimizer.step()
            losses.append(loss.item())
            if len(losses) % log_every == 0 or len(losses) == steps:
                recent = losses[-log_every:]
                print(f"step {len(losses):5d}  loss {sum(recent) / len(recent):.4f}")
            if len(losses) == steps:
                break
    return losses


def gradient_angles(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Per layer, the angle (degrees) between the rule's weight gradient and backprop's on one batch."""
    layers = {name: module for name, module in net.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))}

    def weight_gradients():
        return torch.autograd.grad(F.cross_entropy(net(x), y), [m.weight for m in layers.values()])

    rule_gradients = weight_gradients()
    with net.bioprop_rule.true_backprop():  # the feedback switched off: autograd's exact gradient
        true_gradients = weight_gradients()
    return {name: torch.rad2deg(torch.arccos(F.cosine_similarity(a.flatten(), b.flatten(), dim=0).clamp(-1, 1))).item()
            for name, a, b in zip(layers, rule_gradients, true_gradients)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="fa", help="a feedback rule: fa, usf, brsf, frsf, kp, wm")
    own_loop_data.add_arguments(parser)
    args = parser.parse_args(argv)

    train_set, test_set, source = own_loop_data.load(args.data_dir, args.synthetic)
    torch.manual_seed(args.seed)
    net = bioprop.wrap(SmallCNN(), rule=args.rule, seed=args.seed)  # the same module, its backward replaced
    print(f"{args.rule} on a small CNN, {source}: {args.steps} steps of {args.batch_size}")
    losses = train(net, train_set, args.steps, args.batch_size, args.lr, log_every=max(1, args.steps // 10))
    error = own_loop_data.test_error(net, test_set)
    x, y = next(iter(DataLoader(test_set, batch_size=256)))
    angles = gradient_angles(net, x, y)
    print(f"test error {error:.2f}%")
    print("angle to backprop's gradient: " + ", ".join(f"{name} {angle:.0f} deg" for name, angle in angles.items()))
    return {"losses": losses, "test_error": error, "angles": angles}


if __name__ == "__main__":
    main()
