"""Tests for the split-able model zoo: exact splits, split-point shapes, bytes and FLOPs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from splitray.models import (
    MODEL_NAMES,
    Normalize,
    SplittableModel,
    build_model,
    format_split_points_table,
    split,
    split_points,
)
from splitray.models.core import resolve_head

CIFAR_SHAPE = (3, 32, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These tensors are too small to gain from threads, and busy-waiting worker threads stall
    # badly when other processes share the CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(shape: tuple[int, int, int] = CIFAR_SHAPE, batch: int = 2) -> torch.Tensor:
    return torch.rand((batch, *shape), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_split_reproduces_the_full_model(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    points = split_points(model, CIFAR_SHAPE)
    assert len(points) == len(model.units) == len(model.unit_names)
    assert model.unit_names[0] == "normalize" and isinstance(model.units[0], Normalize)
    x = _batch()
    model_param_ids = {id(p) for p in model.parameters()}
    with torch.no_grad():
        full = model(x)
        assert full.shape == (2, 10)
        for point in points:
            client, server = split(model, point.index)
            shared = {id(p) for p in client.parameters()} | {id(p) for p in server.parameters()}
            assert shared == model_param_ids
            activation = client(x)
            assert tuple(activation.shape[1:]) == point.shape
            assert torch.equal(server(activation), full), f"{name} split {point.index}"


def test_vgg11_split_5_is_the_papers_128x8x8() -> None:
    model = build_model("vgg11")
    assert model.unit_names[:6] == ["normalize", "conv1_64", "pool1", "conv2_128", "pool2",
                                    "conv3_256"]
    point = split_points(model, CIFAR_SHAPE)[5]
    assert (point.index, point.name, point.shape) == (5, "pool2", (128, 8, 8))
    assert point.bytes_per_sample_fp32 == 4 * 128 * 8 * 8
    client, _ = split(model, 5)
    assert client(_batch()).shape == (2, 128, 8, 8)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_split_point_costs_are_consistent(name: str) -> None:
    points = split_points(build_model(name), CIFAR_SHAPE)
    total = points[0].server_flops
    total_train = points[0].server_train_flops
    assert points[0].name == "input" and points[0].shape == CIFAR_SHAPE
    assert points[0].client_flops == points[0].client_train_flops == 0
    assert total > 0 and total_train > 2 * total
    for before, after in zip(points, points[1:], strict=False):
        assert after.client_flops >= before.client_flops
        assert after.client_train_flops >= before.client_train_flops
    for p in points:
        assert p.client_flops + p.server_flops == total
        assert p.client_train_flops + p.server_train_flops == total_train
        assert p.bytes_per_sample_fp32 == 4 * p.shape[0] * p.shape[1] * p.shape[2]
    assert points[-1].server_flops > 0 and points[-1].name != "head"


def test_flops_match_a_hand_count() -> None:
    # tiny_cnn on 3x16x16: conv 3->16 at 16x16, conv 16->32 at 8x8, linear 32->10; 2 FLOPs per MAC.
    conv1 = 2 * 16 * 16 * 16 * 3 * 9
    conv2 = 2 * 8 * 8 * 32 * 16 * 9
    linear = 2 * 32 * 10
    points = split_points(build_model("tiny_cnn", input_shape=(3, 16, 16)), (3, 16, 16))
    assert [p.client_flops for p in points] == [0, 0, conv1, conv1, conv1 + conv2, conv1 + conv2]
    # conv1's input needs no gradient (only Normalize precedes it): forward + weight grad.
    assert points[-1].client_train_flops == 2 * conv1 + 3 * conv2
    assert points[-1].server_train_flops == 3 * linear


def test_depthwise_backward_is_counted_per_group() -> None:
    # torch's stock formula overcounts a depthwise conv's weight gradient by its channel count.
    channels, px = 8, 6
    model = SplittableModel(
        [
            Normalize(channels),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Flatten(),
        ],
        ["normalize", "pointwise", "depthwise", "head"],
    )
    points = split_points(model, (channels, px, px))
    depthwise = 2 * px * px * channels * 9
    assert points[3].client_flops - points[2].client_flops == depthwise
    assert points[3].client_train_flops - points[2].client_train_flops == 3 * depthwise


def test_split_points_leaves_the_model_untouched() -> None:
    model = build_model("resnet18_cifar").train()
    model.units[3].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split_points(model, CIFAR_SHAPE)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and not model.units[3].training and model.units[4].training


def test_split_training_matches_full_model_gradients() -> None:
    torch.manual_seed(0)
    model = build_model("tiny_cnn")
    x = _batch()
    model(x).square().sum().backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    client, server = split(model, 3)
    sent = client(x).detach().requires_grad_(True)
    server(sent).square().sum().backward()
    client(x).backward(sent.grad)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), full_grads, strict=True))


def test_split_parts_are_keyed_by_unit_name() -> None:
    model = build_model("vgg11_bn")
    client, server = split(model, 2)
    assert client.conv1_64 is model.units[1]
    assert "conv2_128.0.weight" in server.state_dict()
    empty_client, whole = split(model, 0)
    x = _batch()
    assert torch.equal(empty_client(x), x) and len(whole) == len(model.units)


@pytest.mark.parametrize("n", [-1, 15, 2.0, True])
def test_invalid_split_raises(n: object) -> None:
    model = build_model("vgg11")
    with pytest.raises(ValueError, match=r"0\.\.14"):
        split(model, n)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "vgg19"}, "unknown model"),
        ({"name": "vgg11", "head": "tiny"}, "head"),
        ({"name": "vgg11", "num_classes": 0}, "num_classes"),
        ({"name": "vgg11", "input_shape": (3, 16, 16)}, "too small"),
        ({"name": "tiny_cnn", "input_shape": (3, 32)}, "input_shape"),
    ],
)
def test_bad_build_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


def test_imagenet_heads() -> None:
    assert resolve_head("auto", (3, 64, 64)) == "cifar"
    assert resolve_head("auto", (3, 224, 224)) == "imagenet"
    torch.manual_seed(0)
    vgg = build_model("vgg11", num_classes=7, input_shape=(3, 64, 64), head="imagenet").eval()
    linears = [m for m in vgg.units[-1].modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (512 * 7 * 7, 4096), (4096, 4096), (4096, 7)
    ]
    resnet = build_model("resnet18_imagenet", input_shape=(3, 64, 64)).eval()
    assert resnet.unit_names[:4] == ["normalize", "stem", "maxpool", "layer1_block1"]
    x = _batch((3, 64, 64))
    with torch.no_grad():
        assert vgg(x).shape == (2, 7)
        client, server = split(resnet, 3)
        assert torch.equal(server(client(x)), resnet(x))
    assert split_points(resnet, (3, 64, 64))[3].shape == (64, 16, 16)


def test_mobilenet_stem_stride_follows_input_size() -> None:
    small = split_points(build_model("mobilenet_v2"), CIFAR_SHAPE)
    large = split_points(build_model("mobilenet_v2", input_shape=(3, 96, 96)), (3, 96, 96))
    assert small[2].shape == (32, 32, 32) and large[2].shape == (32, 48, 48)
    assert [p.name for p in small[-3:]] == ["block16", "block17", "conv_last"]


def test_num_classes_sets_the_logits() -> None:
    for name in MODEL_NAMES:
        head_linears = [m for m in build_model(name, 100).units[-1].modules()
                        if isinstance(m, nn.Linear)]
        assert head_linears[-1].out_features == 100, name
    assert build_model("resnet18_cifar", 100).eval()(_batch()).shape == (2, 100)


def test_build_is_deterministic_given_the_seed() -> None:
    torch.manual_seed(3)
    first = build_model("vgg11_bn").state_dict()
    torch.manual_seed(3)
    second = build_model("vgg11_bn").state_dict()
    torch.manual_seed(4)
    third = build_model("vgg11_bn").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["units.1.0.weight"], third["units.1.0.weight"])


def test_tiny_cnn_takes_any_channel_count_and_small_inputs() -> None:
    for shape in [(1, 8, 8), (5, 12, 20)]:
        model = build_model("tiny_cnn", input_shape=shape).eval()
        assert model(_batch(shape)).shape == (2, 10)
        assert torch.equal(model.units[0].mean.flatten(), torch.full((shape[0],), 0.5))


def test_normalize_uses_cifar10_statistics_for_rgb() -> None:
    normalize = Normalize(3)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert torch.allclose(normalize(mean + std), torch.ones(1, 3, 1, 1))
    with pytest.raises(ValueError, match="mean and std"):
        Normalize(2, mean=(0.5,), std=(0.5,))


def test_split_point_serialises_and_prints() -> None:
    points = split_points(build_model("vgg11"), CIFAR_SHAPE)
    row = json.loads(json.dumps(points[5].to_dict()))
    assert row["shape"] == [128, 8, 8] and row["bytes_per_sample_fp32"] == 32768
    table = format_split_points_table(points).splitlines()
    assert len(table) == len(points) + 1
    assert table[0].split()[:3] == ["n", "name", "shape"]
    assert "pool2" in table[6] and "128x8x8" in table[6] and "32,768" in table[6]
    assert len({len(line) for line in table}) == 1  # right-aligned last column
