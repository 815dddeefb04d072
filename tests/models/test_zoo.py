import pytest
import torch

from bioprop.errors import BiopropError
from bioprop.models import LayerSpec, build_network, create_model, list_models
from bioprop.nn import LocallyConnected2d

# Weight counts (biases excluded) derived in the reference notes (Bartunov et al. 2018, Table 3).
PAPER_WEIGHTS = {"mnist-fc": 0.47e6, "mnist-lc": 4.2e6, "cifar-fc": 5.25e6, "cifar-lc": 50e6, "imagenet-lc": 260e6}


def meta_model(name):
    with torch.device("meta"):
        return create_model(name)


def test_registry_holds_every_network_of_the_paper():
    assert set(list_models()) == {"mnist-fc", "mnist-lc", "mnist-conv", "cifar-fc", "cifar-lc", "cifar-conv",
                                  "imagenet-lc", "imagenet-conv", "mnist-autoencoder"}


@pytest.mark.parametrize("name", sorted(PAPER_WEIGHTS))
def test_weight_counts_match_the_paper(name):
    assert meta_model(name).num_weights() == pytest.approx(PAPER_WEIGHTS[name], rel=0.03)


def test_exact_layer_weight_counts_of_cifar_lc():
    counts = [layer.weight.numel() for layer in meta_model("cifar-lc").layers]
    assert counts == [16 * 16 * 64 * 3 * 25, 8 * 8 * 128 * 64 * 25, 8 * 8 * 256 * 128 * 9, 16384 * 1024, 1024 * 10]


@pytest.mark.parametrize("family", ["mnist", "cifar", "imagenet"])
def test_conv_twin_has_the_lc_shapes(family):
    lc, conv = meta_model(f"{family}-lc"), meta_model(f"{family}-conv")
    assert len(lc.layers) == len(conv.layers)
    for lc_layer, conv_layer in zip(lc.layers, conv.layers):
        if isinstance(lc_layer, LocallyConnected2d):
            assert conv_layer.out_size == lc_layer.out_size
            assert conv_layer.weight.shape == lc_layer.weight.shape[2:]  # one shared kernel
        else:
            assert conv_layer.weight.shape == lc_layer.weight.shape


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("imagenet")])
def test_forward_shapes_tanh_hidden_and_glorot(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(3, *model.input_shape)
    activations = model.hidden_activations(x)
    assert activations[-1].shape == (3, model.output_units)
    assert [tuple(h.shape[1:]) for h in activations] == model.output_shapes()  # what the rules size from
    for h in activations[:-1]:
        assert h.abs().max() <= 1  # tanh
    assert [b.activation for b in model.blocks] == ["tanh"] * (len(model.blocks) - 1) + ["identity"]
    for layer in model.layers:
        assert torch.count_nonzero(layer.bias) == 0
        shape = layer.weight.shape
        if len(shape) == 2:
            fan_out, fan_in = shape
        else:  # (..., out_channels, in_channels, kernel_h, kernel_w)
            area = shape[-1] * shape[-2]
            fan_out, fan_in = shape[-4] * area, shape[-3] * area
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.9 * bound


def test_output_shapes_of_the_lc_network_are_the_papers():
    assert create_model("mnist-lc").output_shapes() == [(32, 14, 14), (64, 7, 7), (1024,), (10,)]


def test_same_padding_gives_ceil_sizes():
    model = meta_model("mnist-conv")
    assert [layer.out_size for layer in model.layers[:2]] == [(14, 14), (7, 7)]
    assert model.layers[0].same_pad == (0, 1, 0, 1)  # TensorFlow SAME puts the extra row at the bottom


def test_same_seed_same_weights():
    torch.manual_seed(3)
    first = create_model("mnist-lc").state_dict()
    torch.manual_seed(3)
    second = create_model("mnist-lc").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_unknown_model_names_the_choices():
    with pytest.raises(BiopropError, match="unknown model 'mnist-xl'.*mnist-fc"):
        create_model("mnist-xl")


def test_fc_then_lc_is_rejected():
    with pytest.raises(ValueError, match="cannot follow"):
        build_network("bad", (1, 8, 8), [LayerSpec("fc", 4), LayerSpec("lc", 2, 3)], 2)


def test_mnist_autoencoder_is_784_512_64_512_784_tanh_with_a_linear_output():
    """App. 5.5: "784-512-64-512-784 on MNIST"; tanh hidden units, a linear output reconstructing x."""
    model = meta_model("mnist-autoencoder")
    assert [(layer.in_features, layer.out_features) for layer in model.layers] == \
        [(784, 512), (512, 64), (64, 512), (512, 784)]
    assert [block.activation for block in model.blocks] == ["tanh", "tanh", "tanh", "identity"]
    assert model.task == "reconstruction" and model.num_classes is None and model.output_units == 784
    assert model.num_weights() == 2 * (784 * 512 + 512 * 64)
    assert create_model("mnist-fc").task == "classification"
