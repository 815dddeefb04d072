"""``bioprop.wrap`` on a model bioprop knows nothing about: a small ResNet (conv, batch norm, ReLU, skip
connections, pooling, linear). With B = W the wrapped model is backprop; every feedback rule trains it;
feedback state lives in the module's state_dict; TP rules and non-modules are refused; the Trainer
trains it by import path."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bioprop
from bioprop.data import DataConfig
from bioprop.data.info import DatasetInfo
from bioprop.data.batching import TensorSplit
from bioprop.data.splits import DataBundle
from bioprop.errors import BiopropError
from bioprop.nn import LocallyConnected2d
from bioprop.rules import create_rule
from bioprop.rules.base import wrappable_rules
from bioprop.training import TrainConfig, Trainer

WRAP_RULES = ["fa", "usf", "brsf", "frsf", "kp", "wm"]
LEARNED = {"kp", "wm"}
STORED = {"fa", "frsf", "kp", "wm"}


class BasicBlock(nn.Module):
    def __init__(self, channels_in, channels_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """3x32x32 -> 10 logits: stem, two residual blocks (one downsampling), max- and average pooling."""

    def __init__(self, width=8, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(2)
        self.block1 = BasicBlock(width, width)
        self.block2 = BasicBlock(width, 2 * width, stride=2)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.stem(x))))
        x = self.block2(self.block1(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def small_resnet():
    return SmallResNet()


class ConvVariety(nn.Module):
    """Every nn.Conv2d option the generic primitives handle, plus an LC layer and Linear on 3-D input."""

    def __init__(self):
        super().__init__()
        self.dilated = nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2)
        self.same = nn.Conv2d(4, 4, 4, padding="same", bias=False)
        self.reflect = nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")
        self.grouped = nn.Conv2d(6, 6, 3, stride=(2, 1), padding=(1, 0), groups=2)
        self.local = LocallyConnected2d(6, 3, (8, 14), 3, 1, padding="same")
        self.tokens = nn.Linear(6, 5)
        self.out = nn.Linear(56 * 5, 10)

    def forward(self, x):
        x = torch.tanh(self.grouped(torch.tanh(self.reflect(self.same(torch.tanh(self.dilated(x)))))))
        x = torch.tanh(self.local(x))  # (N, 3, 8, 14)
        x = torch.tanh(self.tokens(x.reshape(len(x), 56, 6)))  # Linear over the last dimension
        return self.out(x.flatten(1))


def data(size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 32, 32, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def named_grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def forward_parameters(module):
    return {name: p for name, p in module.named_parameters() if not name.endswith("feedback_weight")}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("builder", [small_resnet, ConvVariety])
def test_feedback_equal_to_forward_weights_gives_backprop_for_every_parameter(builder):
    torch.manual_seed(0)
    reference = builder()
    wrapped = bioprop.wrap(copy.deepcopy(reference), rule="fa", seed=3)
    with torch.no_grad():
        for site in wrapped.bioprop_rule.sites:
            site.stored.copy_(site.weight)
    x, y = data(8)
    F.cross_entropy(reference(x), y).backward()
    F.cross_entropy(wrapped(x), y).backward()
    expected, got = named_grads(reference), named_grads(wrapped)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_true_backprop_switches_the_feedback_off_on_the_same_parameters():
    torch.manual_seed(0)
    reference = small_resnet()
    wrapped = bioprop.wrap(copy.deepcopy(reference), rule="frsf")
    x, y = data(8)
    F.cross_entropy(reference(x), y).backward()
    with wrapped.bioprop_rule.true_backprop():
        F.cross_entropy(wrapped(x), y).backward()
    expected, bp_grads = named_grads(reference), named_grads(wrapped)
    for name in expected:
        assert torch.equal(bp_grads[name], expected[name]), name
    wrapped.zero_grad()
    F.cross_entropy(wrapped(x), y).backward()  # the patching is back after the context
    assert not torch.allclose(wrapped.stem.weight.grad, expected["stem.weight"])


@pytest.mark.parametrize("rule_name", WRAP_RULES)
def test_every_rule_trains_the_resnet(rule_name):
    torch.manual_seed(0)
    net = bioprop.wrap(small_resnet(), rule=rule_name, seed=1)
    assert net.bioprop_rule.name == rule_name
    feedback = {name: t.detach().clone() for name, t in net.state_dict().items() if name.endswith("feedback_weight")}
    assert len(feedback) == (len(net.bioprop_rule.sites) if rule_name in STORED else 0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)  # trains kp's and wm's B too
    x, y = data(16)
    losses = []
    for step in range(20):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        if step == 0:
            for name, parameter in forward_parameters(net).items():
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    for name, before in feedback.items():
        assert torch.equal(net.state_dict()[name], before) == (rule_name not in LEARNED), name
    if rule_name == "brsf":
        assert net.bioprop_rule.feedback_step == 20


def test_kolen_pollack_feedback_gradient_is_the_weight_gradient():
    torch.manual_seed(0)
    net = bioprop.wrap(small_resnet(), rule="kp")
    F.cross_entropy(net(data(4)[0]), data(4)[1]).backward()
    for site in net.bioprop_rule.sites:
        assert torch.equal(site.stored.grad, site.weight.grad), site.name
        assert site.stored.grad.data_ptr() != site.weight.grad.data_ptr()


def test_wrap_refuses_non_modules_tp_rules_and_double_wrapping():
    with pytest.raises(BiopropError, match="nn.Module"):
        bioprop.wrap("resnet", rule="fa")
    with pytest.raises(BiopropError, match="'dtp'"):
        bioprop.wrap(small_resnet(), rule="dtp")
    net = bioprop.wrap(small_resnet(), rule="fa")
    with pytest.raises(BiopropError, match="already wrapped by rule 'fa'"):
        bioprop.wrap(net, rule="usf")
    with pytest.raises(BiopropError, match="already wrapped by a feedback rule"):  # a part of a wrapped module
        bioprop.wrap(nn.Sequential(net.block1), rule="usf")
    with pytest.raises(BiopropError, match="no layer whose backward pass it could replace"):
        bioprop.wrap(nn.Sequential(nn.ReLU()), rule="kp")
    with pytest.raises(BiopropError, match="mirror_noise"):
        bioprop.wrap(small_resnet(), rule="wm", mirror_noise=-1.0)


REFUSING_RULES = [name for name in bioprop.list_rules() if name not in wrappable_rules()]
# each says why, not the generic reason: what it needs that a wrapped module's loss.backward() cannot give
OWN_REASONS = {"pc": "transposed map", "pc-fixed": "transposed map", "ep": "transposed map", "drtp": "labels",
               "ff": "goodness", "fg": "forward-mode", "pepita": "second forward pass"}


@pytest.mark.parametrize("rule_name", REFUSING_RULES)
def test_every_rule_that_cannot_wrap_refuses_by_name_with_its_reason(rule_name):
    module = small_resnet()
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(BiopropError, match=rf"rule '{rule_name}' cannot wrap .*: .*"
                                           + OWN_REASONS.get(rule_name, "inverse per block")) as refusal:
        bioprop.wrap(module, rule=rule_name)
    assert "the rules that can wrap: bp, " in str(refusal.value)
    with pytest.raises(BiopropError, match="is not wrapped"):  # the module is left as it was
        bioprop.rule_of(module)
    assert all(torch.equal(before[key], value) for key, value in module.state_dict().items())


def test_the_refusing_rules_are_the_ones_with_reasons():
    assert set(OWN_REASONS) <= set(REFUSING_RULES)
    assert set(REFUSING_RULES) - set(OWN_REASONS) <= {"tp", "dtp", "sdtp", "ao-sdtp", "drl", "l-drl", "hybrid"}


@pytest.mark.parametrize("rule_name", ["fa", "kp", "brsf", "wm"])
def test_state_dict_round_trip_and_device_moves(rule_name):
    torch.manual_seed(0)
    net = bioprop.wrap(small_resnet(), rule=rule_name, seed=2)
    x, y = data(8)
    F.cross_entropy(net(x), y).backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    state = copy.deepcopy(net.state_dict())
    if rule_name in STORED:
        assert "block2.shortcut.0.feedback_weight" in state and "fc.feedback_weight" in state
    torch.manual_seed(1)
    other = bioprop.wrap(small_resnet(), rule=rule_name, seed=5)
    other.load_state_dict(state)
    if rule_name in ("brsf", "wm"):  # what seeds the per-batch draws is in the module's state_dict too
        assert state["bioprop_feedback_state"].tolist() == [1, 2]  # [batches seen, seed], an int64 tensor
        assert other.bioprop_rule.feedback_step == 1
    for module in (net, other):
        module.zero_grad()
        F.cross_entropy(module(x), y).backward()
    expected, got = named_grads(net), named_grads(other)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    copied = copy.deepcopy(net).double()  # a copy stays wired to its own layers, and feedback moves with it
    assert copied.bioprop_rule.sites[0].layer is copied.stem
    if rule_name in STORED:
        assert copied.fc.feedback_weight.dtype == torch.float64
    F.cross_entropy(copied(x.double()), y).backward()
    assert copied.stem.weight.grad is not None


def test_rule_on_a_user_model_layer_names_groups_and_alignment_pairs():
    torch.manual_seed(0)
    rule = create_rule("kp", small_resnet(), seed=0)
    names = ["stem", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2", "block2.shortcut.0", "fc"]
    assert list(rule.layer_weights()) == names == list(rule.feedback_pairs())
    groups = rule.parameter_groups()
    assert len(groups["feedback"]) == len(names)
    assert {id(p) for p in groups["feedback"]}.isdisjoint(id(p) for p in groups["forward"])
    x, y = data(4)
    step = rule.compute_gradients(x, y, ("forward", "feedback"))
    assert step.logits.shape == (4, 10) and all(p.grad is not None for p in groups["feedback"])
    assert "model.fc.feedback_weight" in rule.state_dict()


def in_memory_cifar(n_train=64, n_test=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = lambda n: torch.randint(0, 10, (n,), generator=generator)
    mean, std = [0.5] * 3, [0.29] * 3
    info = DatasetInfo("cifar10", (3, 32, 32), 10, tuple(mean), tuple(std))
    return DataBundle(info, TensorSplit(images(n_train), labels(n_train), mean, std), None,
                      TensorSplit(images(n_test), labels(n_test), mean, std), {"mean": mean, "std": std}, False,
                      [str(k) for k in range(10)])


@pytest.mark.parametrize("rule_name", ["kp", "brsf"])
def test_trainer_trains_a_user_model_named_by_import_path(rule_name, tmp_path):
    config = TrainConfig(data=DataConfig("cifar10", val_size=0), model="tests.rules.test_wrap:small_resnet",
                         rule=rule_name, epochs=2, batch_size=16, eval_batch_size=32, device="cpu")
    trainer = Trainer(config, out=tmp_path, progress=False, data=in_memory_cifar(), log=lambda *a: None)
    assert set(trainer.optimizers) == set(trainer.rule.groups)
    metrics = trainer.fit()
    assert len(metrics) == 2 and metrics[-1]["train_loss_running"] < metrics[0]["train_loss_running"] + 1.0
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    keys = set(checkpoint["rule"])
    assert rule_name != "kp" or "model.fc.feedback_weight" in keys
    assert rule_name != "brsf" or checkpoint["rule"]["model.bioprop_feedback_state"].tolist() == [8, 0]
