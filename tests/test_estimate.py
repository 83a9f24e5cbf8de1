"""``hwmodels.estimate`` of torch modules against hand-listed layers."""
import re
import sys

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import hwmodels
from hwmodels import ConvLayer, GemmLayer, LinearLayer, estimate, layer_cost, load_accelerator, network_cost
from hwmodels.estimate import trace_layers
from hwmodels.zoo import get_model, mobilenet_v2, model_names

ACC = load_accelerator("uboost")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16),
            nn.Dropout(0.5), nn.GroupNorm(4, 16), nn.GELU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.LayerNorm(64),
                                  nn.Linear(64, 32), nn.Identity(), nn.Linear(32, 5))

    def forward(self, x):
        return self.head(self.features(x))


def hand_layers(batch):
    return [ConvLayer("features.0.0", 12, 10, 3, 8, 3, 3, padding=1, batch=batch),
            ConvLayer("features.1", 12, 10, 8, 16, 3, 3, stride=2, padding=1, groups=2, batch=batch),
            ConvLayer("features.3", 3, 2, 16, 16, 3, 3, padding=2, dilation=2, groups=16, batch=batch),
            LinearLayer("head.3", 64, 32, batch=batch),
            LinearLayer("head.5", 32, 5, batch=batch)]


@pytest.mark.parametrize("mode", ["systolic", "uboost"])
@pytest.mark.parametrize("batch", [1, 3])
def test_small_sequential_equals_hand_listed_layers(mode, batch):
    model = Small()
    cost = estimate(model, (3, 12, 10), ACC, batch=batch, mode=mode)
    expected = [layer_cost(layer, ACC, mode) for layer in hand_layers(batch)]
    assert [c.name for c in cost.layers] == [e.name for e in expected]
    for got, want in zip(cost.layers, expected):
        assert got.gemm == want.gemm and got.cycles == want.cycles and got.macs == want.macs
    assert cost.cycles == sum(e.cycles for e in expected)
    assert cost.mode == mode and cost.accelerator is ACC


def test_train_eval_flags_restored_and_stats_untouched():
    model = Small().train()
    model.head.eval()
    before = model.features[0][1].running_mean.clone()
    estimate(model, (3, 12, 10), ACC)
    assert model.training and model.features.training and not model.head.training
    assert not model.head[3].training and model.features[0][1].training
    assert torch.equal(before, model.features[0][1].running_mean)


def test_linear_batch_is_product_of_leading_dims():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    layers = trace_layers(model, (5, 7, 6), batch=2)
    assert [l.batch for l in layers] == [70, 70]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_same_padding_and_shared_module():
    conv = nn.Conv2d(4, 4, 4, padding="same")               # even kernel: torch pads unevenly
    model = nn.Sequential(conv, nn.ReLU(), conv)
    layers = trace_layers(model, (4, 9, 7))
    assert [l.name for l in layers] == ["0", "0#2"]         # one module called twice
    for layer in layers:
        assert (layer.out_h, layer.out_w) == (9, 7)
        assert layer.lower().macs == 9 * 7 * 4 * 4 * 4 * 4
        # the tensor read is the 4 x 9 x 7 input, not a map grown by the uneven padding
        assert (layer.in_h, layer.in_w) == (9, 7) and layer.input_elements() == 4 * 9 * 7


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kernel, dilation", [(2, 1), (4, 1), (2, 3), (3, 1), (5, 2)])
def test_same_padding_is_costed_as_the_tensors_torch_reads_and_writes(kernel, dilation):
    """On a memory-bound accelerator the cost is the bytes moved: with padding='same' they are those
    of the input, weight and output tensors torch holds, whatever the kernel's parity."""
    from hwmodels import Accelerator, estimate
    conv = nn.Conv2d(32, 32, kernel, padding="same", dilation=dilation, groups=32, bias=False)
    shape = (32, 5, 4)
    x = torch.zeros(1, *shape)
    elements = x.numel() + conv.weight.numel() + conv(x).numel()
    slow = Accelerator("slow_memory", 16, 16, bandwidth_bytes_per_s=1e6, onchip_bytes=1 << 30)   # all on chip
    cost = estimate(conv, shape, slow).layers[0]
    assert cost.bytes == elements * slow.bytes_per_element
    assert cost.cycles == pytest.approx(cost.bytes / slow.bandwidth_bytes_per_s * slow.clock_hz)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("conv, length, out_len", [
    (nn.Conv1d(6, 10, 5, stride=2, padding=2, dilation=1, groups=2), 17, 9),
    (nn.Conv1d(6, 8, 4, dilation=3, padding="same"), 13, 13),   # even kernel: torch pads unevenly
    (nn.Conv1d(6, 6, 3, groups=6), 11, 9),
])
def test_conv1d_is_costed_as_its_macs(conv, length, out_len):
    """A 1-D conv costs what its MACs say (by hand: N * C_out * L_out * C_in / groups * k), as a
    1 x L map."""
    for shape, batch in (((6, length), 3), ((6, length), 1)):
        layers = trace_layers(nn.Sequential(conv, nn.ReLU()), shape, batch=batch)
        assert len(layers) == 1 and layers[0].out_w == out_len and layers[0].out_h == 1
        by_hand = batch * conv.out_channels * out_len * conv.in_channels // conv.groups * conv.kernel_size[0]
        assert layers[0].lower().macs == by_hand


def test_modules_called_with_keyword_inputs():
    class Keywords(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 6, 3, stride=2), nn.Linear(6 * 4 * 3, 5)

        def forward(self, x):
            return self.fc(input=self.conv(input=x).flatten(1))

    layers = trace_layers(Keywords(), (3, 9, 8), batch=2)
    assert layers == [ConvLayer("conv", 9, 8, 3, 6, 3, 3, stride=2, batch=2), LinearLayer("fc", 72, 5, batch=2)]


def test_resnet18_cifar_macs_and_layers():
    layers = trace_layers(get_model("resnet18-cifar"), (3, 32, 32))
    cost = network_cost(layers, ACC)
    assert cost.macs == pytest.approx(0.556e9, rel=0.01)     # the well-known 0.56 GMACs
    convs = [c for c in cost.layers if c.kind == "conv"]
    assert len(convs) == 20                                  # stem + 16 block convs + 3 downsamples
    downsample = [(l.in_channels, l.out_channels, l.stride) for l in layers
                  if l.kind == "conv" and l.kernel_h == 1]
    assert downsample == [(64, 128, (2, 2)), (128, 256, (2, 2)), (256, 512, (2, 2))]
    assert [l.out_h for l in layers if l.kind == "conv"][-1] == 4          # 32 -> 16 -> 8 -> 4
    assert [c.name for c in cost.layers if c.kind == "linear"] == ["fc"]


def test_mobilenetv2_imagenet_figures():
    # Sandler et al. 2018, Table 3: 300 M multiply-adds, 3.4 M parameters at 224x224.
    with torch.device("meta"):          # shapes only: no arithmetic at 224 x 224
        model = mobilenet_v2(num_classes=1000, cifar=False)
    cost = estimate(model, (3, 224, 224), ACC)
    assert cost.macs == pytest.approx(300e6, rel=0.01)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(3.4e6, rel=0.04)
    with torch.device("meta"):
        cifar = estimate(get_model("mobilenetv2-cifar"), (3, 32, 32), ACC)
    assert sum(c.gemm.repeats > 1 for c in cifar.layers) == 17   # one depthwise conv per block
    assert set(model_names()) == {"resnet18-cifar", "mobilenetv2-cifar"}


class Bilinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return x @ self.weight


def test_unknown_parameterised_module_and_handler():
    model = nn.Sequential(nn.Linear(8, 8), nn.Sequential(Bilinear()))
    with pytest.raises(ValueError) as info:
        estimate(model, (8,), ACC)
    message = str(info.value)
    assert "'1.0'" in message and "Bilinear" in message and "register_layer_handler" in message
    with pytest.raises(ValueError, match="unknown model"):
        get_model("vgg")

    def handler(module, inputs, output, batch):
        rows = inputs[0].numel() // inputs[0].shape[-1]
        return [GemmLayer("ignored", rows, *module.weight.shape)]

    hwmodels.estimate.register_layer_handler(Bilinear, handler)   # the spelling the error names
    try:
        cost = estimate(model, (8,), ACC, batch=4)
        assert [c.name for c in cost.layers] == ["0", "1.0"]
        assert cost.layers[1].gemm == layer_cost(GemmLayer("x", 4, 8, 8), ACC).gemm
    finally:
        sys.modules["hwmodels.estimate"]._HANDLERS.pop(Bilinear, None)   # the module, not the function


def test_unused_unknown_module_is_not_an_error():
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)
            self.aux = Bilinear()              # never called in forward

        def forward(self, x):
            return self.fc(x)

    layers = trace_layers(WithAux(), (8,), batch=2)
    assert [(l.name, l.batch) for l in layers] == [("fc", 2)]


def test_a_failing_layer_handler_keeps_its_own_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.weight[0]

    def broken(module, inputs, output, batch):
        raise RuntimeError("bug in the handler")
    hwmodels.estimate.register_layer_handler(Odd, broken)
    try:
        with pytest.raises(RuntimeError, match="bug in the handler"):   # not 'does not run on input'
            trace_layers(Odd(), (3,))
    finally:
        from hwmodels.estimate import _HANDLERS
        _HANDLERS.pop(Odd, None)


class Attention(nn.Module):
    """One head of self-attention with its scores written inline, as most attention code is."""

    def __init__(self, dim):
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):   # x (B, T, dim)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj((q @ k.transpose(-2, -1)).softmax(-1) @ v)


def test_inline_attention_scores_are_refused_not_left_out():
    """q @ k^T and attn @ v are 2 * B * T * T * dim MACs that no module call shows: the estimate
    used to report the two Linears alone, half this block's compute missing."""
    model = nn.Sequential(nn.Linear(6, 8), Attention(8))
    batch, tokens, dim = 2, 5, 8
    with pytest.raises(ValueError) as info:
        trace_layers(model, (tokens, 6), batch=batch)
    message = str(info.value)
    assert "module '1' (" in message and "Attention) computes matmul inline" in message
    assert f"({2 * batch * tokens * tokens * dim:,} MACs)" in message
    assert "register_layer_handler(Attention, fn)" in message

    def handler(module, inputs, output, batch_):   # the whole block by hand: it claims its Linears too
        b, t, d = inputs[0].shape
        return [LinearLayer("", d, 3 * d, batch=b * t), GemmLayer("", t, d, t, repeats=b),
                GemmLayer("", t, t, d, repeats=b), LinearLayer("", d, d, batch=b * t)]
    hwmodels.estimate.register_layer_handler(Attention, handler)
    try:
        layers = trace_layers(model, (tokens, 6), batch=batch)
    finally:
        sys.modules["hwmodels.estimate"]._HANDLERS.pop(Attention, None)
    macs = sum(layer.lower().macs for layer in layers)
    want = batch * tokens * (6 * 8 + 8 * 24 + 8 * 8) + 2 * batch * tokens * tokens * dim
    assert [l.name for l in layers] == ["0", "1.0", "1.1", "1.2", "1.3"] and macs == want


def _regroup(y):
    return y.reshape(7, -1)   # a bug of the network's: 7 does not divide its size


class FailsInAHelper(nn.Module):
    def __init__(self, error=None):
        super().__init__()
        self.conv, self.error = nn.Conv2d(3, 4, 3), error

    def forward(self, x):
        if self.error:
            raise self.error
        return _regroup(self.conv(x))


def test_a_network_that_fails_is_named_with_the_line_of_its_code_that_raised():
    """A user's RuntimeError (a wrong reshape in a helper) lost every frame of the user's code, even
    in the chained traceback, and a ValueError of theirs came out bare, as if the estimator's."""
    import inspect
    line = inspect.getsourcelines(_regroup)[1] + 1
    with pytest.raises(ValueError, match=r"^FailsInAHelper does not run on input \(2, 3, 8, 8\) \(batch x 3x8x8\): "
                       rf"shape '\[7, -1\]' is invalid .* \(raised at {re.escape(__file__)}:{line} in _regroup\)$") as info:
        trace_layers(FailsInAHelper(), (3, 8, 8), batch=2)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ValueError, match=r"^FailsInAHelper does not run on input .*: bad size \(raised at .* in forward\)$"):
        trace_layers(FailsInAHelper(ValueError("bad size")), (3, 8, 8))
    # an error raised inside a library the network calls (here the standard library's json) names the
    # network's line that called it, not the library's
    class CallsALibrary(nn.Module):
        def forward(self, x):
            import json
            return x * json.loads("not json")
    line = inspect.getsourcelines(CallsALibrary.forward)[1] + 2
    with pytest.raises(ValueError, match=rf"Expecting value: .* \(raised at {re.escape(__file__)}:{line} in forward\)$"):
        trace_layers(nn.Sequential(nn.Linear(4, 4), CallsALibrary()), (4,))
    # a layer the module's settings make invalid stays the estimator's own message
    with pytest.warns(UserWarning, match="zero-element"), \
            pytest.raises(ValueError, match=r"^module '1' \(torch.nn.modules.linear.Linear\): .*out_features"):
        trace_layers(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 0)), (4,))


class TextCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.conv, self.fc = nn.Embedding(100, 16), nn.Conv1d(16, 8, 3), nn.Linear(8, 2)

    def forward(self, tokens):   # (B, T) int64
        y = self.conv(self.embed(tokens).transpose(1, 2))
        return self.fc(y.amax(dim=2))


class NormedTextCNN(TextCNN):
    def __init__(self):
        nn.Module.__init__(self)
        self.norm = nn.LayerNorm(16)   # the first parameters are not the embedding's
        self.embed, self.conv, self.fc = nn.Embedding(100, 16), nn.Conv1d(16, 8, 3), nn.Linear(8, 2)

    def forward(self, tokens):
        y = self.conv(self.norm(self.embed(tokens)).transpose(1, 2))
        return self.fc(y.amax(dim=2))


class PositionsFirst(nn.Module):
    """Learned positions (an embedding registered first) beside a patch conv: takes images."""

    def __init__(self):
        super().__init__()
        self.pos, self.patch, self.head = nn.Embedding(64, 32), nn.Conv2d(3, 32, 4, 4), nn.Linear(32, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.pos(torch.arange(x.shape[1], device=x.device))
        return self.head(x.mean(1))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_network_that_feeds_its_input_to_an_embedding_is_fed_token_indices(device):
    """A text CNN could never be traced: the input was always float, which nn.Embedding refuses.  An
    embedding that the input does not reach (learned positions) leaves the input float."""
    with torch.device(device):
        text, normed, vit = TextCNN(), NormedTextCNN(), PositionsFirst()
    for model in (text, normed):
        layers = trace_layers(model, (50,), batch=3)
        assert [l.name for l in layers] == ["conv", "fc"]
        assert [l.lower().macs for l in layers] == [3 * 8 * 48 * 16 * 3, 3 * 8 * 2]
    layers = trace_layers(vit, (3, 32, 32), batch=3)
    assert [l.name for l in layers] == ["patch", "head"]
    assert [l.lower().macs for l in layers] == [3 * 8 * 8 * 32 * 3 * 4 * 4, 3 * 32 * 10]


class FunctionalConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):   # the module's weight, but not its call: no hook sees it
        return F.conv2d(x, self.conv.weight, padding=1)


class ForwardCalledDirectly(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(7, 3)

    def forward(self, x):
        return self.fc.forward(x)   # bypasses __call__ and its hooks


@pytest.mark.parametrize("model, shape, op, macs", [
    (FunctionalConv(), (3, 6, 5), "conv2d", 2 * 4 * 6 * 5 * 3 * 9),
    (ForwardCalledDirectly(), (7,), "linear", 2 * 3 * 7)])
def test_compute_that_bypasses_the_hooks_is_refused(model, shape, op, macs):
    with pytest.raises(ValueError, match=rf"module '<root>' \(.*\) computes {op} inline in its forward "
                                         rf"\({macs:,} MACs\)"):
        trace_layers(model, shape, batch=2)


class CaughtChildFailure(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 4), nn.Linear(4, 4)

    def forward(self, x):
        try:
            self.a(x)   # 4 features into Linear(5, 4): raises, and the caller goes on
        except RuntimeError:
            pass
        y = self.b(x)
        return y @ y.transpose(-2, -1)


class Inline(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("model, shape, op, macs", [
    (CaughtChildFailure(), (3, 4), "matmul", 2 * 3 * 3 * 4),   # a failed costed child leaves no count up
    (Inline(lambda x: torch.matmul(input=x, other=x.transpose(-2, -1))), (3, 4), "matmul", 2 * 3 * 3 * 4),
    (Inline(lambda x: torch.einsum("bij,bkj->bik", x, x)), (3, 4), "einsum", 2 * 3 * 3 * 4),
    (Inline(lambda x: F.scaled_dot_product_attention(x, x, x)), (3, 4), "scaled_dot_product_attention",
     2 * (3 * 3 * 4 + 3 * 4 * 3)),
    # a distance matrix (a prototype head) and dot products, which were left out without a word
    (Inline(lambda x: -torch.cdist(x, x)), (3, 4), "cdist", 2 * 3 * 3 * 4),
    (Inline(lambda x: torch.dot(x.flatten(), x.flatten())), (3, 4), "dot", 2 * 3 * 4),
    (Inline(lambda x: torch.vdot(x.flatten(), x.flatten())), (3, 4), "vdot", 2 * 3 * 4),
    (Inline(lambda x: torch.linalg.vecdot(x, x[:1], dim=1)), (3, 4), "linalg_vecdot", 2 * 3 * 4),
    (Inline(lambda x: torch.inner(x, x)), (3, 4), "inner", 2 * 3 * 2 * 3 * 4),
    (Inline(lambda x: torch.linalg.vecdot(x, y=x[:1])), (3, 4), "linalg_vecdot", 2 * 3 * 4),   # was 0 MACs
    (Inline(lambda x: torch.einsum("...ij,...kj->...ik", x, x)), (3, 4), "einsum", 2 * 3 * 3 * 4),
    (Inline(lambda x: torch.einsum("bij,bkj", x, x)), (3, 4), "einsum", 3 * 3 * 2 * 4)])   # implicit: sums b, j
def test_inline_gemms_of_every_spelling_are_refused_with_their_macs(model, shape, op, macs):
    with pytest.raises(ValueError, match=rf"computes {op} inline in its forward \({macs:,} MACs\)"):
        trace_layers(model, shape, batch=2)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_what_the_inline_check_must_not_refuse():
    """No accumulation (an einsum transpose, a one-operand einsum sum or trace, with an ellipsis or
    an implicit output too, an inner product with a scalar), weight preprocessing in a costed module's pre-hook
    (spectral_norm's power iteration), and a scripted child without parameters; no hook stays."""
    def hooks(model):
        return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()
                if not isinstance(m, torch.jit.ScriptModule)]
    transpose = nn.Sequential(nn.Linear(4, 4), Inline(lambda x: torch.einsum("bij->bji", x)),
                              Inline(lambda x: torch.einsum("bij->b", x) + torch.einsum("bii->b", x)))
    traces = nn.Sequential(nn.Linear(4, 4), Inline(lambda x: torch.einsum("...ii->...", x) + torch.einsum("bii", x)))
    scaled = nn.Sequential(nn.Linear(4, 4), Inline(lambda x: torch.inner(x, torch.tensor(2.0))))
    normed = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(3, 4, 3)))
    scripted = nn.Sequential(nn.Linear(4, 4), torch.jit.script(nn.ReLU()))
    for model, shape in ((transpose, (4, 4)), (traces, (4, 4)), (scaled, (4, 4)), (normed, (3, 8, 8)), (scripted, (4,))):
        before = hooks(model)
        assert [l.name for l in trace_layers(model, shape)] == ["0"]
        assert hooks(model) == before


class BufferConv(nn.Module):
    """A conv on a buffer: no parameter marks it as a layer, and scripted no hook or mode sees it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(8, 3, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.w)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("compile_", ["script", "trace"])
def test_scripted_modules_with_gemms_are_refused_not_left_out(compile_):
    sub = torch.jit.script(BufferConv()) if compile_ == "script" else \
        torch.jit.trace(BufferConv(), torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"module '0' .* is TorchScript .* runs (_convolution|conv2d)"):
        trace_layers(nn.Sequential(sub, nn.Conv2d(8, 8, 1)), (3, 16, 16))
    # a scripted conv holding parameters: the same refusal, not torch's hook error
    with pytest.raises(ValueError, match=r"module '1' .* is TorchScript .* runs conv2d"):
        trace_layers(nn.Sequential(nn.ReLU(), torch.jit.script(nn.Conv2d(3, 4, 3))), (3, 8, 8))
    # one whose parameters do no GEMM (a scripted BatchNorm) is free, as its eager twin
    model = nn.Sequential(nn.Conv2d(3, 4, 3), torch.jit.script(nn.BatchNorm2d(4)))
    assert [l.name for l in trace_layers(model, (3, 8, 8))] == ["0"]


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")
def test_invalid_layer_from_a_module_names_the_module():
    with pytest.raises(ValueError, match=r"module '1' \(torch.nn.modules.linear.Linear\): .*out_features must be >= 1"):
        trace_layers(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 0)), (4,))


@pytest.mark.parametrize("bad", [torch.zeros(1, 3, 8, 8), 3, "3x8x8", (3, "a", 8)])
def test_input_shape_that_is_not_a_shape_says_what_is_expected(bad):
    with pytest.raises(ValueError, match=r"per-sample shape without the batch, such as \(3, 32, 32\)"):
        estimate(nn.Conv2d(3, 4, 3), bad, ACC)


def test_rms_norm_is_free_like_layer_norm():
    if not hasattr(nn, "RMSNorm"):
        pytest.skip("torch < 2.4 has no RMSNorm")
    layers = trace_layers(nn.Sequential(nn.Linear(8, 8), nn.RMSNorm(8)), (8,))
    assert [l.name for l in layers] == ["0"]


class LowRankLinear(nn.Linear):
    """A LoRA-style Linear: its own forward adds x A^T B^T to the costed x W^T."""

    def __init__(self):
        super().__init__(32, 32)
        self.a = nn.Parameter(torch.randn(4, 32))
        self.b = nn.Parameter(torch.randn(32, 4))

    def forward(self, x):
        return F.linear(x, self.weight) + (x @ self.a.t()) @ self.b.t()


class StandardisedConv(nn.Conv2d):
    """Weight standardisation: its own forward, still one convolution per call."""

    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class ConvTwice(nn.Conv2d):
    def forward(self, x):
        return super().forward(super().forward(x))


def test_a_subclass_with_its_own_forward_is_costed_only_when_it_runs_one_gemm_per_call():
    """A Linear/Conv2d subclass used to be costed by its base's handler whatever its forward did:
    the LoRA Linear below as 65,536 MACs of its 81,920, a conv applied twice once."""
    with pytest.raises(ValueError, match=r"computes linear, matmul inline in its forward \(81,920 MACs\), more "
                                         r"than the one call per module call that its base class's handler"):
        trace_layers(LowRankLinear(), (32,), batch=64)   # 64*32*32 + 64*32*4 + 64*4*32 by hand
    with pytest.raises(ValueError, match=r"computes conv2d inline .* \(18,432 MACs\), more than the one call"):
        trace_layers(ConvTwice(4, 4, 3, padding=1), (4, 8, 8))   # 2 calls x 64 pixels x 4 x 36
    net = nn.Sequential(StandardisedConv(3, 8, 3), nn.ReLU(), StandardisedConv(8, 8, 3))
    layers = trace_layers(net, (3, 8, 8))
    assert [layer.lower().macs for layer in layers] == [36 * 8 * 27, 16 * 8 * 72]   # out pixels x out ch x taps


def test_estimate_takes_a_preset_name_or_yaml_path_for_the_accelerator(tmp_path):
    """A name was an AttributeError inside exact.py."""
    from hwmodels import save_accelerator
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 10))
    by_object = estimate(net, (3, 8, 8), load_accelerator("edge_16x16")).cycles
    assert estimate(net, (3, 8, 8), "edge_16x16").cycles == by_object
    save_accelerator(load_accelerator("edge_16x16"), tmp_path / "mine.yaml")
    assert estimate(net, (3, 8, 8), tmp_path / "mine.yaml").cycles == by_object
    with pytest.raises(hwmodels.HardwareConfigError):
        estimate(net, (3, 8, 8), "no_such_preset")


def test_a_tensor_whose_size_overflows_int64_is_a_one_line_error():
    """A cat of eight 2**60-element maps (a spec's widths and map sizes each within bounds) made torch
    raise a TypeError ('Overflow when unpacking long long') out of the meta trace: a traceback."""
    class Widening(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1, device="meta"))   # traced on the meta device

        def forward(self, x):
            return torch.cat([x * self.scale] * 8, dim=1)
    with pytest.raises(ValueError, match="makes a tensor too large to describe"):
        estimate(Widening(), (2**20, 2**20, 2**20), "uboost")

    class Buggy(Widening):   # a TypeError of another kind is a bug in the module: not hidden
        def forward(self, x):
            return torch.cat(x, "one")
    with pytest.raises(TypeError):
        estimate(Buggy(), (1, 4, 4), "uboost")
