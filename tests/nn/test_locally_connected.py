"""Known-answer tests of the locally-connected layer (bioprop.nn.locally_connected)."""

import math

import pytest
import torch
import torch.nn.functional as F

from bioprop.nn import (LocallyConnected2d, lc_forward, lc_input_grad, lc_weight_grad,
                        locally_connected2d, locally_connected2d_transpose, same_padding)

# (in_channels, out_channels, (H, W), kernel, stride, padding): kernels 1, 2, 3, 5 (incl. even and
# non-square), strides 1, 2, 3 (incl. stride == kernel and stride > kernel), odd / even /
# non-square sizes, padding "same" / "valid" / int / pair.
GRID = [
    (1, 1, (5, 5), 1, 1, "same"),
    (2, 3, (7, 7), 3, 1, "same"),
    (2, 3, (8, 8), 2, 1, "same"),
    (3, 2, (9, 6), 3, 2, "same"),
    (2, 2, (8, 8), 5, 2, "same"),
    (2, 3, (7, 10), 5, 3, "same"),
    (1, 2, (6, 7), 2, 2, "same"),
    (2, 2, (9, 9), 2, 3, "same"),
    (2, 2, (7, 8), (3, 2), (2, 1), "same"),
    (3, 4, (7, 7), 3, 2, "valid"),
    (2, 2, (8, 5), 1, 3, "valid"),
    (2, 3, (6, 6), 3, 1, 1),
    (2, 3, (7, 5), 5, 2, 2),
    (1, 2, (5, 8), 3, 3, (1, 0)),
]
DOUBLE = torch.float64


def grid_id(case):
    c, o, size, k, s, p = case
    return f"c{c}o{o}-{size[0]}x{size[1]}-k{k}-s{s}-p{p}"


def make_layer(case, bias=True, dtype=DOUBLE, seed=0):
    c, o, size, k, s, p = case
    torch.manual_seed(seed)
    layer = LocallyConnected2d(c, o, size, k, s, p, bias=bias, dtype=dtype)
    if bias:
        with torch.no_grad():
            layer.bias.normal_()
    return layer


def tie_to_conv_kernel(layer, kernel):
    with torch.no_grad():
        layer.weight.copy_(kernel.expand_as(layer.weight))


def conv_reference(x, kernel, layer):
    top, bottom, left, right = layer.padding
    return F.conv2d(F.pad(x, (left, right, top, bottom)), kernel, stride=layer.stride)


def naive_lc(x, weight, bias, stride, padding):
    """Reference LC: F.unfold + einsum, autograd does the backward."""
    out_h, out_w, o, c, kh, kw = weight.shape
    top, bottom, left, right = padding
    patches = F.unfold(F.pad(x, (left, right, top, bottom)), (kh, kw), stride=stride)
    out = torch.einsum("nkl,lok->nol", patches, weight.reshape(out_h * out_w, o, -1))
    out = out.reshape(x.shape[0], o, out_h, out_w)
    return out if bias is None else out + bias


@pytest.mark.parametrize("case", GRID, ids=grid_id)
def test_tied_weights_equal_conv2d_forward_and_gradients(case):
    layer = make_layer(case)
    c, o = case[0], case[1]
    kernel = torch.randn(o, c, *layer.kernel_size, dtype=DOUBLE, requires_grad=True)
    tie_to_conv_kernel(layer, kernel.detach())
    x = torch.randn(3, c, *case[2], dtype=DOUBLE, requires_grad=True)

    out = layer(x)
    expected = conv_reference(x, kernel, layer) + layer.bias.detach()
    assert out.shape == expected.shape == (3, o, *layer.out_size)
    if case[5] == "same":
        strides = (case[4],) * 2 if isinstance(case[4], int) else case[4]
        assert layer.out_size == tuple(math.ceil(n / s) for n, s in zip(case[2], strides))
    torch.testing.assert_close(out, expected)

    grad_out = torch.randn_like(expected)
    grad_x, grad_w, grad_b = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad_out)
    ref_grad_x, ref_grad_kernel = torch.autograd.grad(expected, (x, kernel), grad_out)
    torch.testing.assert_close(grad_x, ref_grad_x)
    torch.testing.assert_close(grad_w.sum((0, 1)), ref_grad_kernel)
    torch.testing.assert_close(grad_b, grad_out.sum(0))


@pytest.mark.parametrize("case", GRID, ids=grid_id)
def test_transpose_equals_vjp_of_forward(case):
    layer = make_layer(case)
    x = torch.randn(2, case[0], *case[2], dtype=DOUBLE, requires_grad=True)
    y = torch.randn(2, case[1], *layer.out_size, dtype=DOUBLE)
    (vjp,) = torch.autograd.grad(layer(x), x, grad_outputs=y)
    torch.testing.assert_close(layer.transpose(y), vjp)
    functional = locally_connected2d_transpose(y, layer.weight, case[2], layer.stride,
                                               layer.padding)
    torch.testing.assert_close(functional, vjp)


@pytest.mark.parametrize("case", [GRID[4], GRID[5], GRID[8], GRID[12]], ids=grid_id)
def test_adjoint_identity(case):
    layer = make_layer(case, bias=False)
    x = torch.randn(4, case[0], *case[2], dtype=DOUBLE)
    y = torch.randn(4, case[1], *layer.out_size, dtype=DOUBLE)
    with torch.no_grad():
        lhs = (layer(x) * y).sum()
        rhs = (x * layer.transpose(y)).sum()
    assert math.isclose(lhs.item(), rhs.item(), rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("case", [(2, 2, (5, 4), 3, 2, "same"), (1, 2, (4, 4), 2, 1, "same"),
                                  (2, 1, (5, 5), 3, 1, "valid")], ids=grid_id)
def test_gradcheck_forward_and_transpose_functions(case):
    layer = make_layer(case)
    x = torch.randn(2, case[0], *case[2], dtype=DOUBLE, requires_grad=True)
    y = torch.randn(2, case[1], *layer.out_size, dtype=DOUBLE, requires_grad=True)
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    geometry = (layer.stride, layer.padding)
    tolerance = {"atol": 1e-8, "rtol": 1e-6}   # float64: tight enough to catch a 1e-3 error
    assert torch.autograd.gradcheck(lambda a, w, b: locally_connected2d(a, w, b, *geometry),
                                    (x, weight, bias), **tolerance)
    assert torch.autograd.gradcheck(
        lambda b, w: locally_connected2d_transpose(b, w, case[2], *geometry), (y, weight),
        **tolerance)


@pytest.mark.parametrize("case", [GRID[2], GRID[4], GRID[7], GRID[9]], ids=grid_id)
def test_transpose_gradients_equal_double_backward_of_naive_reference(case):
    """d/dy and d/dW of <g, LC^T(y; W)>, against autograd through the naive layer's VJP."""
    layer = make_layer(case, bias=False)
    y = torch.randn(2, case[1], *layer.out_size, dtype=DOUBLE, requires_grad=True)
    g = torch.randn(2, case[0], *case[2], dtype=DOUBLE)
    grads = torch.autograd.grad((layer.transpose(y) * g).sum(), (y, layer.weight))

    x = torch.zeros_like(g, requires_grad=True)
    naive_out = naive_lc(x, layer.weight, None, layer.stride, layer.padding)
    (ref_transpose,) = torch.autograd.grad(naive_out, x, y, create_graph=True)
    ref_grads = torch.autograd.grad((ref_transpose * g).sum(), (y, layer.weight))
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref)
    torch.testing.assert_close(grads[0], lc_forward(g, layer.weight, None, layer.stride,
                                                    layer.padding))


@pytest.mark.parametrize("case", [GRID[3], GRID[4], GRID[11]], ids=grid_id)
def test_module_gradients_equal_naive_reference(case):
    layer = make_layer(case, dtype=torch.float32)
    x = torch.randn(5, case[0], *case[2], requires_grad=True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad_out)
    ref_out = naive_lc(x, layer.weight, layer.bias, layer.stride, layer.padding)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    ref_grads = torch.autograd.grad(ref_out, (x, layer.weight, layer.bias), grad_out)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-5)


def test_primitives_reproduce_module_gradients_bit_for_bit():
    """Feedback alignment with B == W must give exactly the module's own gradients."""
    layer = make_layer((3, 4, (9, 8), 5, 2, "same"), dtype=torch.float32)
    x = torch.randn(6, 3, 9, 8, requires_grad=True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    grad_x, grad_w, grad_b = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad_out)
    feedback = layer.weight.detach().clone()
    assert torch.equal(grad_x, lc_input_grad(grad_out, feedback, (9, 8), 2, layer.padding))
    assert torch.equal(grad_w, lc_weight_grad(x.detach(), grad_out, 5, 2, layer.padding))
    assert torch.equal(grad_b, grad_out.sum(0))
    raw = lc_forward(x.detach(), layer.weight.detach(), layer.bias.detach(), 2, "same")
    assert torch.equal(raw, out.detach())


def _layouts(t):
    """The same values in several memory layouts: contiguous, channels_last, permuted, sliced."""
    n, c, h, w = t.shape
    sliced = torch.zeros(n, c + 1, h, 2 * w, dtype=t.dtype)[:, 1:, :, ::2].copy_(t)
    return [t.contiguous(), t.contiguous(memory_format=torch.channels_last),
            t.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1), sliced]


def test_any_input_and_grad_layout_gives_the_same_result():
    layer = make_layer((3, 4, (7, 6), 3, 2, "same"))
    x0 = torch.randn(3, 3, 7, 6, dtype=DOUBLE)
    g0 = torch.randn(3, 4, *layer.out_size, dtype=DOUBLE)
    ref_out = naive_lc(x0, layer.weight, layer.bias, layer.stride, layer.padding)
    ref = torch.autograd.grad(ref_out, layer.weight, g0)[0]
    for x in _layouts(x0):
        for grad in _layouts(g0):
            x = x.detach().requires_grad_()
            out = layer(x)
            torch.testing.assert_close(out, ref_out)
            grad_x, grad_w = torch.autograd.grad(out, (x, layer.weight), grad)
            torch.testing.assert_close(grad_w, ref)
            torch.testing.assert_close(layer.transpose(grad), grad_x)
    # loss = out.sum() hands backward an expanded (all-zero-stride) grad
    x = x0.clone().requires_grad_()
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.transpose(torch.ones_like(g0)))


def test_chain_of_two_layers_and_downstream_reshape():
    torch.manual_seed(1)
    first = LocallyConnected2d(2, 3, (9, 9), 3, 2, "same", dtype=DOUBLE)
    second = LocallyConnected2d(3, 4, first.out_size, 2, 1, "valid", dtype=DOUBLE)
    x = torch.randn(4, 2, 9, 9, dtype=DOUBLE, requires_grad=True)
    hidden = torch.tanh(first(x))
    assert hidden.permute(2, 3, 1, 0).is_contiguous()    # batch-innermost layout is kept
    out = second(hidden)
    loss = (out.reshape(4, -1) ** 2).sum() + out.contiguous().sum()
    params = (x, first.weight, first.bias, second.weight, second.bias)
    grads = torch.autograd.grad(loss, params)

    ref_hidden = torch.tanh(naive_lc(x, first.weight, first.bias, first.stride, first.padding))
    ref_out = naive_lc(ref_hidden, second.weight, second.bias, second.stride, second.padding)
    torch.testing.assert_close(out, ref_out)
    ref_loss = (ref_out.reshape(4, -1) ** 2).sum() + ref_out.sum()
    for grad, ref in zip(grads, torch.autograd.grad(ref_loss, params)):
        torch.testing.assert_close(grad, ref)


def test_no_grad_and_functional_api():
    layer = make_layer(GRID[3])
    x = torch.randn(2, 3, 9, 6, dtype=DOUBLE)
    with torch.no_grad():
        out = layer(x)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, locally_connected2d(x, layer.weight, layer.bias, 2, "same"))
    torch.testing.assert_close(out, naive_lc(x, layer.weight, layer.bias, 2, layer.padding))


def test_parameter_shapes_and_count_cifar_layer():
    layer = LocallyConnected2d(64, 128, 16, 5, stride=2, padding="same")
    assert layer.out_size == (8, 8)
    assert layer.padding == (1, 2, 1, 2)
    assert layer.weight.shape == (8, 8, 128, 64, 5, 5)
    assert layer.weight.numel() == 8 * 8 * 128 * 64 * 5 * 5 == 13_107_200
    assert layer.bias.shape == (128, 8, 8)
    assert sum(p.numel() for p in layer.parameters()) == 13_107_200 + 128 * 8 * 8
    assert LocallyConnected2d(3, 4, 8, 3, bias=False).bias is None
    assert "in_size=(16, 16)" in repr(layer) and "padding=(1, 2, 1, 2)" in repr(layer)


def test_glorot_uniform_init():
    torch.manual_seed(0)
    layer = LocallyConnected2d(16, 32, 8, 3, stride=1)
    bound = math.sqrt(6 / (16 * 9 + 32 * 9))
    assert layer.weight.abs().max() <= bound
    assert layer.weight.abs().max() > 0.99 * bound
    assert math.isclose(layer.weight.var().item(), bound ** 2 / 3, rel_tol=0.02)
    assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (32, 5, 2, (1, 2, 1, 2)), (16, 5, 2, (1, 2, 1, 2)), (8, 3, 1, (1, 1, 1, 1)),
    (28, 3, 2, (0, 1, 0, 1)), ((7, 6), (2, 4), (1, 3), (0, 1, 0, 1)), (5, 1, 2, (0, 0, 0, 0)),
])
def test_same_padding_matches_tensorflow(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("kwargs, message", [
    ({"in_size": 3, "kernel_size": 5, "padding": "valid"}, "larger than the padded input"),
    ({"in_size": 8, "kernel_size": 3, "stride": 0}, "stride must be positive"),
    ({"in_size": 8, "kernel_size": 3, "stride": (1, -2)}, "stride must be positive"),
    ({"in_size": 8, "kernel_size": 3, "padding": "full"}, "unknown string 'full'"),
    ({"in_size": 8, "kernel_size": 3, "padding": -1}, "non-negative"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LocallyConnected2d(2, 3, **kwargs)


def test_wrong_input_shape_names_expected_shape():
    layer = LocallyConnected2d(3, 4, (8, 6), 3)
    with pytest.raises(ValueError, match=r"\(C, H, W\) = \(3, 8, 6\).*\(2, 3, 6, 8\)"):
        layer(torch.randn(2, 3, 6, 8))
    with pytest.raises(ValueError, match=r"\(C, H, W\) = \(3, 8, 6\)"):
        layer(torch.randn(3, 8, 6))
    with pytest.raises(ValueError, match=r"\(C, H, W\) = \(4, 8, 6\)"):
        layer.transpose(torch.randn(2, 3, 8, 6))
    with pytest.raises(ValueError, match="weight must have shape"):
        layer.transpose(torch.randn(2, 4, 8, 6), weight=torch.randn(8, 6, 4, 3, 3, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    layer = make_layer(GRID[4], dtype=torch.float32)
    x = torch.randn(8, 2, 8, 8, requires_grad=True)
    y = torch.randn(8, 2, *layer.out_size)
    results = []
    for device in ("cpu", "cuda"):
        module = layer.to(device)
        xd = x.detach().to(device).requires_grad_()
        out = module(xd)
        grads = torch.autograd.grad(out, (xd, module.weight, module.bias), y.to(device))
        results.append([t.cpu() for t in (out, *grads, module.transpose(y.to(device)))])
    for cpu, cuda in zip(*results):
        torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows_per_chunk", [1, 2])
@pytest.mark.parametrize("case", [GRID[3], GRID[5], GRID[11]], ids=grid_id)
def test_cpu_chunking_gives_the_same_result(monkeypatch, case, rows_per_chunk):
    """Work split into chunks of output rows (incl. a shorter last chunk) changes nothing."""
    from bioprop.nn import locally_connected
    layer = make_layer(case)
    x = torch.randn(3, case[0], *case[2], dtype=DOUBLE, requires_grad=True)
    y = torch.randn(3, case[1], *layer.out_size, dtype=DOUBLE)

    def run():
        out = layer(x)
        return (out, *torch.autograd.grad(out, (x, layer.weight), y), layer.transpose(y))

    whole = run()
    patch_row_bytes = layer.out_size[1] * case[0] * math.prod(layer.kernel_size) * 3 * 8
    monkeypatch.setattr(locally_connected, "_CPU_CHUNK_BYTES", rows_per_chunk * patch_row_bytes)
    for chunked, expected in zip(run(), whole):
        torch.testing.assert_close(chunked, expected)


@pytest.mark.parametrize("batch_innermost", [False, True])
def test_input_grad_comes_back_in_the_layout_of_the_input(batch_innermost):
    layer = make_layer((2, 3, (6, 6), 3, 2, "same"))
    x = torch.randn(6, 6, 2, 4, dtype=DOUBLE).permute(3, 2, 0, 1) if batch_innermost \
        else torch.randn(4, 2, 6, 6, dtype=DOUBLE)
    x.requires_grad_()
    captured = []
    hidden = x * 1.0                  # a non-leaf keeps x's layout; its grad is not re-laid out
    hidden.register_hook(captured.append)
    out = layer(hidden)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    (grad,) = captured
    assert grad.is_contiguous() != batch_innermost
    assert (grad.stride(0) == 1) == batch_innermost
    torch.testing.assert_close(grad, layer.transpose(grad_out))


def test_bf16_autocast_runs_the_layer_in_bf16_with_float32_gradients():
    """Under autocast the LC matmuls run in bf16 like a Conv2d's (autocast does not cast bmm(out=)
    itself), fp32 or bf16 inputs alike; weight gradients stay in the weight's float32; float64
    stays float64 (autocast leaves it alone)."""
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 8, (10, 10), 3, 2)
    x = torch.randn(4, 3, 10, 10, requires_grad=True)
    reference = layer(x)
    reference_grads = torch.autograd.grad(reference, (x, layer.weight, layer.bias), torch.ones_like(reference))
    for inputs in (x, x.bfloat16()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(inputs)
            assert out.dtype == torch.bfloat16
            assert layer.transpose(out).dtype == torch.bfloat16
            grads = torch.autograd.grad(out, (x, layer.weight, layer.bias), torch.ones_like(out))
        assert [g.dtype for g in grads] == [torch.float32] * 3
        torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)
        for grad, expected in zip(grads, reference_grads):
            cosine = F.cosine_similarity(grad.flatten(), expected.flatten(), dim=0)
            assert cosine > 0.999
    double = LocallyConnected2d(3, 8, (10, 10), 3, dtype=DOUBLE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert double(x.detach().double()).dtype == DOUBLE
