"""Direct feedback alignment on your own network, in your own PyTorch loop.

    python examples/own_loop_dfa.py [--steps 300] [--data-dir DIR] [--synthetic]

``bioprop.wrap(net, rule="dfa", deliver_at=[...])`` installs hooks on ``net`` itself: the outputs
of the named submodules (the delivery points) are cut from the graph, and the backward pass of
whatever loss you differentiate sends the output error ``e = dL/dlogits`` to the layers above the
last delivery point and ``B_k e`` (a fixed random projection) to delivery point k; inside each
segment (here: Linear then Tanh, so ``f'`` is applied) autograd does the rest. Calling ``net(x)``
and ``loss.backward()`` is therefore DFA, for any loss: the loop is ``own_loop_feedback.train``,
unchanged. ``wrap`` returns ``net`` itself (as for every rule), with the feedback matrix as its buffer
``feedback_matrix``; the rule is ``bioprop.rule_of(net)``.

Trains on MNIST when a copy is found (``--data-dir``, ``$BIOPROP_DATA``, ``../shared/data``, the
cache), else on a synthetic problem; prints the loss falling and the test error. See
docs/own-loop.md.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import bioprop
import own_loop_data
from own_loop_feedback import train  # the same plain loop as for FA: nothing in it knows the rule


class MLP(nn.Module):
    """An ordinary PyTorch model; each hidden block's output is a delivery point for DFA."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.hidden1 = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.Tanh())
        self.hidden2 = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        self.out = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.out(self.hidden2(self.hidden1(x)))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    own_loop_data.add_arguments(parser)
    args = parser.parse_args(argv)

    train_set, test_set, source = own_loop_data.load(args.data_dir, args.synthetic)
    torch.manual_seed(args.seed)
    net = MLP()
    net = bioprop.wrap(net, rule="dfa", deliver_at=["hidden1", "hidden2"], seed=args.seed)
    rule = bioprop.rule_of(net)
    print(f"dfa on a 784-256-256-10 MLP, {source}: {args.steps} steps of {args.batch_size}")
    losses = train(net, train_set, args.steps, args.batch_size, args.lr, log_every=max(1, args.steps // 10))
    error = own_loop_data.test_error(net, test_set)
    print(f"test error {error:.2f}%  (feedback matrix {tuple(rule.feedback_matrix.shape)}, net.feedback_matrix, a buffer)")
    return {"losses": losses, "test_error": error, "rule": rule, "net": net}


if __name__ == "__main__":
    main()
