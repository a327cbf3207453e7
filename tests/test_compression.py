"""Tests for splitray.compression: Prune-Deprune module (paper §3.1), losses, codecs, Payload."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from splitray.compression import (
    CODECS,
    Compressor,
    Decompressor,
    Payload,
    bytes_per_element,
    decode,
    encode,
    encoded_shape,
    is_scaled,
    payload_nbytes,
    prune_loss,
    total_loss,
)

SHAPES = [(128, 8, 8), (16, 7, 7), (3, 32, 32)]


def _compressor_with_logits(logits: list[float], **kwargs) -> Compressor:
    comp = Compressor(2, out_channels=len(logits), **kwargs)
    with torch.no_grad():
        comp.filter_logits.copy_(torch.tensor(logits))
    return comp


# --- shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_encoder_and_decoder_shapes(shape: tuple[int, int, int], r: int) -> None:
    torch.manual_seed(0)
    channels, height, width = shape
    comp = Compressor(channels, resolution_factor=r)
    dec = Decompressor(shape, comp.num_channels, resolution_factor=r)
    x = torch.randn(2, *shape)
    budget = max(1, channels // 4)
    sent, indices = comp(x, budget)
    phi, h, w = encoded_shape(shape, r)
    assert phi == channels
    assert (h, w) == ((height + r - 2) // r + 1, (width + r - 2) // r + 1)
    assert sent.shape == (2, budget, h, w)
    assert sent.is_contiguous()
    assert indices.dtype == torch.long and indices.shape == (budget,)
    assert dec(sent, indices).shape == (2, *shape)


def test_encoded_shape_values() -> None:
    assert encoded_shape((128, 8, 8), 1) == (128, 8, 8)
    assert encoded_shape((128, 8, 8), 2) == (128, 5, 5)
    assert encoded_shape((128, 8, 8), 3) == (128, 4, 4)
    assert encoded_shape((3, 32, 32), 3, out_channels=8) == (8, 12, 12)
    with pytest.raises(ValueError, match="resolution_factor"):
        encoded_shape((3, 8, 8), 0)


def test_decompressor_restores_every_size_exactly() -> None:
    # output_padding always exists (see Decompressor); sweep non-square sizes to prove it.
    for r in range(1, 5):
        for height in range(1, 14):
            width = height + 3
            comp = Compressor(1, resolution_factor=r, out_channels=2)
            dec = Decompressor((1, height, width), 2, resolution_factor=r)
            sent, indices = comp(torch.randn(2, 1, height, width), 1)
            assert dec(sent, indices).shape == (2, 1, height, width), (r, height)


def test_channel_reduction_changes_phi() -> None:
    comp = Compressor(16, resolution_factor=2, out_channels=6)
    assert comp.num_channels == 6 and comp.filter_logits.shape == (6,)
    sent, _ = comp(torch.randn(2, 16, 7, 7), 6)
    assert sent.shape == (2, 6, 4, 4)


# --- selection and values -----------------------------------------------------------------------


def test_top_budget_selection_picks_largest_f() -> None:
    gen = torch.Generator().manual_seed(1)
    comp = Compressor(4, out_channels=32)
    with torch.no_grad():
        comp.filter_logits.copy_(torch.randn(32, generator=gen) * 3)
    f = comp.filter_values().detach()
    x = torch.randn(2, 4, 5, 5)
    for budget in (1, 5, 31, 32):
        _, indices = comp(x, budget)
        expected = torch.sort(torch.argsort(f, descending=True)[:budget]).values
        assert torch.equal(indices, expected)
        unselected = torch.ones(32, dtype=torch.bool)
        unselected[indices] = False
        if budget < 32:
            assert f[indices].min() >= f[unselected].max()


def test_ties_break_by_lower_index() -> None:
    x = torch.randn(2, 2, 4, 4)
    assert torch.equal(Compressor(2, out_channels=8)(x, 3)[1], torch.tensor([0, 1, 2]))
    comp = _compressor_with_logits([1.0, 2.0, 2.0, 2.0, 0.0])
    assert torch.equal(comp(x, 2)[1], torch.tensor([1, 2]))
    # sigmoid(17), sigmoid(30), sigmoid(20) all round to 1.0 in float32; the true largest f wins.
    comp = _compressor_with_logits([17.0, 30.0, 20.0])
    assert torch.all(comp.filter_values() == 1.0)
    assert torch.equal(comp(x, 1)[1], torch.tensor([1]))


def test_sent_channels_are_f_times_encoded() -> None:
    torch.manual_seed(2)
    comp = _compressor_with_logits([0.5, -2.0, 3.0, 1.0, -0.5, 2.0])
    comp.eval()  # fixed BatchNorm statistics so the reference encoder pass is identical
    x = torch.randn(3, 2, 6, 6)
    sent, indices = comp(x, 3)
    assert torch.equal(indices, torch.tensor([2, 3, 5]))
    encoded = comp.bn(comp.conv(x))
    f = torch.sigmoid(comp.filter_logits)
    torch.testing.assert_close(sent, encoded[:, [2, 3, 5]] * f[[2, 3, 5]].view(1, 3, 1, 1))


@pytest.mark.parametrize("budget", [0, 7, -1, 2.0, True])
def test_bad_budget_rejected(budget) -> None:
    comp = Compressor(2, out_channels=6)
    with pytest.raises(ValueError, match="budget"):
        comp(torch.randn(1, 2, 4, 4), budget)


def test_bad_constructor_arguments_rejected() -> None:
    with pytest.raises(ValueError, match="mask"):
        Compressor(4, mask="relu")
    with pytest.raises(ValueError, match="filter_init"):
        Compressor(4, filter_init="ones")
    with pytest.raises(ValueError, match="resolution_factor"):
        Compressor(4, resolution_factor=0)
    with pytest.raises(ValueError, match="input"):
        Compressor(4)(torch.randn(1, 3, 4, 4), 1)


# --- gradients ----------------------------------------------------------------------------------


def test_gradient_reaches_filter_only_through_sent_channels() -> None:
    torch.manual_seed(3)
    comp = _compressor_with_logits([0.1, 2.0, -1.0, 1.5, 0.3, -0.2])
    comp.eval()
    x = torch.randn(2, 2, 5, 5)
    sent, indices = comp(x, 2)
    assert torch.equal(indices, torch.tensor([1, 3]))
    sent.sum().backward()
    grad = comp.filter_logits.grad
    assert torch.all(grad[[0, 2, 4, 5]] == 0)
    # d sum(f_k * l_hat_k) / d f_hat_k = sigmoid'(f_hat_k) * sum(l_hat_k)
    with torch.no_grad():
        encoded = comp.bn(comp.conv(x))
        s = torch.sigmoid(comp.filter_logits)
        expected = s * (1 - s) * encoded.sum(dim=(0, 2, 3))
    torch.testing.assert_close(grad[[1, 3]], expected[[1, 3]])
    assert torch.all(grad[[1, 3]] != 0)
    # The prune loss, in contrast, reaches every entry of f_hat.
    comp.filter_logits.grad = None
    prune_loss(comp.filter_values(), 2, 0.1, 1.0).backward()
    assert torch.all(comp.filter_logits.grad != 0)


def test_split_step_through_payloads() -> None:
    """Client -> fp16 payload -> server -> gradient payload -> client, as in one training step."""
    torch.manual_seed(4)
    comp = Compressor(8, resolution_factor=2)
    dec = Decompressor((8, 6, 6), 8, resolution_factor=2)
    sent, indices = comp(torch.randn(4, 8, 6, 6), 3)
    up = Payload.from_tensor(sent, "fp16", indices, torch.arange(4))
    received = up.to_tensor().requires_grad_(True)
    out = dec(received, up.indices_tensor())
    torch.nn.functional.mse_loss(out, torch.zeros_like(out)).backward()
    assert received.grad is not None and received.grad.abs().sum() > 0
    assert any(p.grad is not None for p in dec.deconv.parameters())
    down = Payload.from_tensor(received.grad, "fp16")
    sent.backward(down.to_tensor())
    grad = comp.filter_logits.grad
    unsent = [k for k in range(8) if k not in indices.tolist()]
    assert torch.all(grad[unsent] == 0) and torch.all(grad[indices] != 0)
    assert comp.conv.weight.grad is not None


def test_decompressor_zero_fills_unsent_channels() -> None:
    torch.manual_seed(5)
    dec = Decompressor((4, 7, 7), 5, resolution_factor=2).eval()
    sent = torch.randn(2, 2, 4, 4)
    indices = torch.tensor([1, 4])
    full = torch.zeros(2, 5, 4, 4)
    full[:, [1, 4]] = sent
    expected = torch.relu(dec.bn(dec.deconv(full)))
    torch.testing.assert_close(dec(sent, indices), expected)
    with pytest.raises(ValueError, match="sent"):
        dec(torch.randn(2, 2, 5, 5), indices)
    with pytest.raises(ValueError, match="indices"):
        dec(sent, torch.tensor([1, 2, 4]))


# --- losses (equations 1 and 2) -----------------------------------------------------------------


def test_prune_loss_matches_equation_1() -> None:
    f = torch.tensor([0.9, 0.2, 0.7, 0.05])
    budget, delta, lam = 1, 0.8, 0.4
    excess = (0.9 + 0.2 + 0.7 + 0.05) - budget
    expected = math.exp(delta * excess) + lam * math.exp(-delta * excess)
    assert prune_loss(f, budget, delta, lam).item() == pytest.approx(expected, rel=1e-6)
    # lam = 0 leaves only the upper barrier.
    assert prune_loss(f, budget, delta, 0.0).item() == pytest.approx(math.exp(delta * excess))


def test_prune_loss_gradient_matches_equation_1() -> None:
    logits = torch.tensor([0.3, -1.2, 2.0, 0.0, -0.4], dtype=torch.float64, requires_grad=True)
    budget, delta, lam = 2, 0.5, 0.7
    prune_loss(torch.sigmoid(logits), budget, delta, lam).backward()
    s = torch.sigmoid(logits.detach())
    excess = s.sum().item() - budget
    outer = delta * (math.exp(delta * excess) - lam * math.exp(-delta * excess))
    torch.testing.assert_close(logits.grad, outer * s * (1 - s))
    z = logits.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: prune_loss(torch.sigmoid(v), budget, delta, lam), (z,)
    )


def test_total_loss_matches_equation_2() -> None:
    task, prune = torch.tensor(2.5), torch.tensor(1.25)
    assert total_loss(task, prune, 1000.0).item() == pytest.approx(2.5 + 1000.0 * 1.25)
    with pytest.raises(ValueError, match="epsilon"):
        total_loss(task, prune, -1.0)


@pytest.mark.parametrize("lam", [-0.1, 1.01, float("nan")])
def test_lambda_outside_unit_interval_rejected(lam: float) -> None:
    with pytest.raises(ValueError, match="lam"):
        prune_loss(torch.ones(3), 1, 0.001, lam)


# --- filter resets ------------------------------------------------------------------------------

LOGITS = [0.4, -3.0, 2.5, 1.0, -0.1, 5.0, 0.2, -1.0]
ON = [2, 3, 5]  # the top-3 of LOGITS


def _reset(kind: str, seed: int) -> torch.Tensor:
    comp = _compressor_with_logits(LOGITS, filter_scale=15.0)
    comp.reset_filter(kind, 3, generator=torch.Generator().manual_seed(seed))
    return comp.filter_logits.detach().clone()


def test_deprune_reset() -> None:
    new = _reset("deprune", 0)
    off = [k for k in range(8) if k not in ON]
    assert torch.all(new[ON] == 15.0)
    assert torch.all((new[off] >= 0) & (new[off] < 15.0))
    assert len(set(new[off].tolist())) == len(off)  # randomised, not one value
    assert torch.equal(new, _reset("deprune", 0))
    assert not torch.equal(new, _reset("deprune", 1))


def test_prune_reset() -> None:
    new = _reset("prune", 0)
    off = [k for k in range(8) if k not in ON]
    assert torch.all(new[off] == -15.0)
    assert torch.all((new[ON] >= 0) & (new[ON] < 15.0))
    assert len(set(new[ON].tolist())) == len(ON)
    assert torch.equal(new, _reset("prune", 0))
    assert not torch.equal(new, _reset("prune", 1))


def test_reset_keeps_previous_selection_and_validates() -> None:
    for kind in ("deprune", "prune"):
        comp = _compressor_with_logits(LOGITS)
        comp.reset_filter(kind, 3, generator=torch.Generator().manual_seed(0))
        assert comp(torch.randn(1, 2, 3, 3), 3)[1].tolist() == ON
        assert comp.filter_logits.grad is None and comp.filter_logits.requires_grad
    comp = _compressor_with_logits(LOGITS)
    with pytest.raises(ValueError, match="kind"):
        comp.reset_filter("grow", 3)
    with pytest.raises(ValueError, match="budget"):
        comp.reset_filter("prune", 9)


# --- the authors' options -----------------------------------------------------------------------


def test_squared_mask() -> None:
    logits = [0.5, -1.0, 2.0]
    plain = _compressor_with_logits(logits).filter_values()
    squared = _compressor_with_logits(logits, mask="sigmoid_squared").filter_values()
    torch.testing.assert_close(squared, plain**2)
    assert torch.all(squared < plain)


def test_encoder_sigmoid_bounds_output() -> None:
    torch.manual_seed(6)
    x = torch.randn(4, 3, 6, 6) * 10
    plain = Compressor(3, filter_init="zeros")
    bounded = Compressor(3, filter_init="zeros", encoder_sigmoid=True)
    bounded.load_state_dict(plain.state_dict())
    plain_enc = plain(x, 3)[0] / 0.5  # f = sigmoid(0) = 0.5 on every channel
    bounded_enc = bounded(x, 3)[0] / 0.5
    assert plain_enc.min() < 0 and plain_enc.max() > 1
    assert bounded_enc.min() > 0 and bounded_enc.max() < 1
    torch.testing.assert_close(bounded_enc, torch.sigmoid(plain_enc))


def test_filter_inits() -> None:
    assert torch.all(Compressor(4, out_channels=64).filter_logits == 0)
    torch.manual_seed(7)
    logits = Compressor(4, out_channels=64, filter_init="authors").filter_logits.detach()
    assert logits.min() >= 0 and logits.max() < 15.0
    assert logits.std() > 2.0  # uniform [0, 15) has std 4.3
    logits = Compressor(4, out_channels=64, filter_init="authors", filter_scale=2.0).filter_logits
    assert logits.max() < 2.0


# --- the authors' variant (amudvari/VCCprune, shared/METHODS.md §1) -----------------------------


def _authors(logits: list[float], in_channels: int = 3) -> Compressor:
    comp = Compressor(in_channels, out_channels=len(logits), variant="authors")
    with torch.no_grad():
        comp.filter_logits.copy_(torch.tensor(logits))
    return comp


def _vccprune_client_step(
    comp: Compressor, x: Tensor, budget: int, server_grad: Tensor, epsilon: float, delta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """VCCprune's prune() step, ported line by line (fp32, no fp16 cast): the server's input and
    the client's parameter gradients for a server gradient over all phi channels."""
    f_hat = comp.filter_logits
    split_vals = torch.sigmoid(comp.bn(comp.conv(x))) * torch.sigmoid(f_hat).view(1, -1, 1, 1)
    mask = torch.square(torch.sigmoid(f_hat.squeeze())).detach().clone()
    partitioned = np.partition(mask.numpy(), -budget)[-budget]
    mask[mask < float(partitioned)] = 0
    m = mask.view(1, -1, 1, 1)
    server_input = split_vals.detach() * m
    prune = torch.exp(delta * (torch.square(torch.sigmoid(f_hat)).sum() - budget))
    prune = prune + torch.exp(-delta * (torch.square(torch.sigmoid(f_hat)).sum() - budget))
    comp.zero_grad(set_to_none=True)
    (epsilon * prune).backward()  # their pruneLoss reaches f_hat through loss.backward()
    split_vals.backward(server_grad * m)  # pruneBackward: the returned gradient times the mask
    grads = {name: q.grad.clone() for name, q in comp.named_parameters()}
    comp.zero_grad(set_to_none=True)
    return server_input, grads


def test_authors_variant_matches_vccprune_step() -> None:
    """Forward and every client gradient equal a port of VCCprune's deprune.py prune() step."""
    torch.manual_seed(11)
    comp = _authors([4.0, -1.0, 2.5, 0.3, 7.0, -3.0])
    x, budget = torch.randn(4, 3, 5, 5), 3
    grad_full = torch.randn(4, 6, 5, 5)
    epsilon, delta = 1000.0, 0.01
    reference = copy.deepcopy(comp)
    expected_input, expected_grads = _vccprune_client_step(
        reference, x, budget, grad_full, epsilon, delta
    )
    sent, indices = comp(x, budget)
    assert indices.tolist() == [0, 2, 4]
    full = Decompressor((3, 5, 5), 6, variant="authors")
    server_input = torch.zeros(4, 6, 5, 5).index_copy(1, indices, sent.detach())
    torch.testing.assert_close(server_input, expected_input)
    assert full(sent.detach(), indices).shape == (4, 3, 5, 5)
    pl = prune_loss(comp.filter_values(), budget, delta, 1.0)
    torch.autograd.backward([sent, epsilon * pl], [grad_full[:, indices], None])
    for name, q in comp.named_parameters():
        torch.testing.assert_close(q.grad, expected_grads[name], msg=name)


def test_authors_sent_channel_is_sigmoid_cubed_times_encoder_output() -> None:
    torch.manual_seed(12)
    logits = [1.5, -0.5, 3.0, 0.2]
    comp = _authors(logits)
    x = torch.randn(2, 3, 4, 4)
    sent, indices = comp(x, 2)
    encoder_out = torch.sigmoid(comp.bn(comp.conv(x)))  # sigmoid(BN(conv(x)))
    gate = torch.sigmoid(torch.tensor(logits))
    expected = encoder_out[:, indices] * (gate[indices] ** 3).view(1, -1, 1, 1)
    torch.testing.assert_close(sent, expected)


def test_authors_mask_is_constant_for_autograd() -> None:
    """f_hat gets the task gradient through the encoder's sigmoid(f_hat) only (times the constant
    m), not d(sigmoid^3)/d f_hat; the prune loss sums m = sigmoid(f_hat)^2."""
    torch.manual_seed(13)
    logits = [0.8, -0.4, 1.7, 0.1, -2.0]
    comp = _authors(logits)
    x, g = torch.randn(3, 3, 4, 4), torch.randn(3, 2, 4, 4)
    sent, indices = comp(x, 2)
    sent.backward(g)
    gate = torch.sigmoid(torch.tensor(logits))
    with torch.no_grad():
        encoder_out = torch.sigmoid(comp.bn(comp.conv(x)))[:, indices]
    per_channel = (g * encoder_out).sum(dim=(0, 2, 3))
    s = gate[indices]
    expected = torch.zeros(5)
    expected[indices] = per_channel * s**2 * s * (1 - s)  # m_k * d sigmoid / d f_hat
    torch.testing.assert_close(comp.filter_logits.grad, expected)
    not_detached = per_channel * 3 * s**2 * s * (1 - s)
    assert not torch.allclose(comp.filter_logits.grad[indices], not_detached)
    torch.testing.assert_close(comp.filter_values(), gate**2)


def test_authors_returned_gradient_is_multiplied_by_mask() -> None:
    """The gradient reaching the encoder output is the server's gradient times m (and sigmoid(f_hat)),
    zero for unsent channels."""
    torch.manual_seed(14)
    logits = [2.0, -1.0, 0.5]
    comp = _authors(logits)
    x, g = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4)
    seen: list[Tensor] = []

    def keep_grad(_module: nn.Module, _inputs: tuple[Tensor], out: Tensor) -> None:
        out.register_hook(seen.append)  # the gradient w.r.t. BN(conv(x))

    handle = comp.bn.register_forward_hook(keep_grad)
    sent, indices = comp(x, 2)
    handle.remove()
    sent.backward(g)
    gate = torch.sigmoid(torch.tensor(logits))
    with torch.no_grad():
        bn_out = comp.bn(comp.conv(x))
    d_sigmoid = torch.sigmoid(bn_out) * (1 - torch.sigmoid(bn_out))
    expected = torch.zeros(2, 3, 4, 4)
    expected[:, indices] = g * (gate[indices] ** 2 * gate[indices]).view(1, -1, 1, 1)
    torch.testing.assert_close(seen[0], expected * d_sigmoid)


def test_authors_batchnorm_momentum_and_eps() -> None:
    comp, decomp = Compressor(4, variant="authors"), Decompressor((4, 6, 6), 4, variant="authors")
    for bn in (comp.bn, decomp.bn):
        assert (bn.momentum, bn.eps) == (0.03, 1e-4)
    paper, paper_decomp = Compressor(4), Decompressor((4, 6, 6), 4)
    for bn in (paper.bn, paper_decomp.bn):
        assert (bn.momentum, bn.eps) == (0.1, 1e-5)


# f_hat 0.9 sits on the threshold; 0.95 and 1.2 are above it though sigmoid(f_hat) < 0.9 for both.
RAW_LOGITS = [0.9, 0.89, 5.0, -2.0, 0.95, 1.2]


def _authors_reset(kind: str, seed: int = 0) -> Tensor:
    comp = _authors(RAW_LOGITS)
    comp.reset_filter(kind, 1, generator=torch.Generator().manual_seed(seed))  # top-1 is only 5.0
    return comp.filter_logits.detach().clone()


def test_authors_deprune_reset_compares_raw_logits_with_0_9() -> None:
    new = _authors_reset("deprune")
    kept, relearned = [0, 2, 4, 5], [1, 3]  # f_hat >= 0.9 (VCCprune re-learns f_hat < 0.9)
    assert torch.all(new[kept] == 15.0)
    assert torch.all((new[relearned] >= 0) & (new[relearned] < 3.0))
    assert len(set(new[relearned].tolist())) == len(relearned)
    assert torch.equal(new, _authors_reset("deprune"))


def test_authors_prune_reset_compares_raw_logits_with_0_9() -> None:
    new = _authors_reset("prune")
    kept, off = [2, 4, 5], [0, 1, 3]  # f_hat > 0.9 strictly: 0.9 itself goes off
    assert torch.all((new[kept] >= 0) & (new[kept] < 3.0))
    assert len(set(new[kept].tolist())) == len(kept)
    assert torch.all(new[off] == -15.0)
    assert not torch.equal(new, _authors_reset("prune", seed=1))
    with pytest.raises(ValueError, match="budget"):
        _authors(RAW_LOGITS).reset_filter("prune", 7)


def test_authors_init_and_options_it_implies() -> None:
    """f_hat starts uniform in [0, 15) whatever filter_init says; mask and encoder_sigmoid are
    implied, and the variant is validated."""
    torch.manual_seed(15)
    comp = Compressor(4, out_channels=64, variant="authors", filter_init="zeros", mask="sigmoid")
    logits = comp.filter_logits.detach()
    assert logits.min() >= 0 and logits.max() < 15.0 and logits.std() > 2.0
    torch.manual_seed(15)
    torch.testing.assert_close(
        Compressor(4, out_channels=64, filter_init="authors").filter_logits.detach(), logits
    )
    assert comp.encoder_sigmoid and comp.mask == "sigmoid_squared"
    with pytest.raises(ValueError, match="variant"):
        Compressor(4, variant="vcc")
    with pytest.raises(ValueError, match="variant"):
        Decompressor((4, 6, 6), 4, variant="vcc")


def test_config_variant_reaches_the_modules() -> None:
    from splitray.config import ConfigError, load_config
    from splitray.roles import make_compressor, make_decompressor

    assert load_config().compression.variant == "paper"
    cfg = load_config(overrides=["compression.variant=authors"])
    comp, decomp = make_compressor(cfg, (8, 4, 4)), make_decompressor(cfg, (8, 4, 4))
    assert comp.variant == decomp.variant == "authors"
    assert comp.bn.eps == decomp.bn.eps == 1e-4
    with pytest.raises(ConfigError, match="compression.variant"):
        load_config(overrides=["compression.variant=vcc"])


# --- payload bytes ------------------------------------------------------------------------------


def test_issue_example_bytes() -> None:
    sent = torch.randn(16, 4, 8, 8)
    payload = Payload.from_tensor(sent, "fp16", torch.tensor([3, 9, 40, 127]), torch.arange(16))
    assert payload.nbytes == 16 * 4 * 8 * 8 * 2 + 2 * 4 + 2 * 16 == 8232
    assert payload_nbytes(16, 4, 8, 8, "fp16", with_indices=True, with_labels=True) == 8232


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("shape", [(16, 4, 8, 8), (1, 1, 1, 1), (3, 17, 5, 2), (8, 128, 4, 4)])
def test_payload_nbytes_matches_formula(codec: str, shape: tuple[int, int, int, int]) -> None:
    n, b, h, w = shape
    t = torch.randn(shape)
    for with_indices in (False, True):
        for with_labels in (False, True):
            payload = Payload.from_tensor(
                t,
                codec,
                torch.arange(b) * 2 if with_indices else None,
                torch.randint(0, 10, (n,)) if with_labels else None,
            )
            expected = payload_nbytes(n, b, h, w, codec, with_indices, with_labels)
            assert payload.nbytes == expected
            assert expected == (
                n * b * h * w * bytes_per_element(codec)
                + 2 * b * with_indices
                + 2 * n * with_labels
                + 4 * is_scaled(codec)
            )


def test_bytes_per_element_and_scaled() -> None:
    assert [bytes_per_element(c) for c in CODECS] == [4, 2, 2, 1, 1, 1]
    assert [is_scaled(c) for c in CODECS] == [False, False, False, True, True, True]
    for bad in (
        lambda: bytes_per_element("fp4"),
        lambda: is_scaled("FP16"),
        lambda: encode(torch.ones(2), "int4"),
        lambda: payload_nbytes(1, 1, 1, 1, "fp64", False, False),
    ):
        with pytest.raises(ValueError, match="codec"):
            bad()


@pytest.mark.parametrize("shape, codec", [((16, 64, 8, 8), "fp32"), ((1, 1, 1, 1), "int8")])
def test_pickle_overhead_is_small(shape: tuple[int, ...], codec: str) -> None:
    # Measured ~360-370 bytes (class path, field names, numpy array headers) on Python 3.11.
    t = torch.randn(shape)
    payload = Payload.from_tensor(t, codec, torch.arange(shape[1]), torch.arange(shape[0]))
    overhead = len(pickle.dumps(payload)) - payload.nbytes
    assert 0 < overhead <= 512


def test_payload_round_trip_and_validation() -> None:
    t = torch.randn(4, 3, 2, 2)
    payload = Payload.from_tensor(t, "bf16", torch.tensor([0, 5, 9]), torch.tensor([1, 0, 7, -100]))
    out = payload.to_tensor()
    assert out.dtype == torch.float32 and out.shape == t.shape
    torch.testing.assert_close(out, t.bfloat16().float(), rtol=0, atol=0)
    assert payload.indices_tensor().dtype == torch.long
    assert payload.indices_tensor().tolist() == [0, 5, 9]
    assert payload.labels_tensor().tolist() == [1, 0, 7, -100]
    assert payload.channel_indices.dtype == np.int16 and payload.labels.dtype == np.int16
    plain = Payload.from_tensor(t, "fp32")
    assert plain.indices_tensor() is None and plain.labels_tensor() is None
    clone = pickle.loads(pickle.dumps(payload))
    assert torch.equal(clone.to_tensor(), out)


def test_payload_rejects_bad_values() -> None:
    t = torch.randn(2, 3, 2, 2)
    with pytest.raises(ValueError, match="labels"):
        Payload.from_tensor(t, "fp16", labels=torch.tensor([0, 40000]))
    with pytest.raises(ValueError, match="indices"):
        Payload.from_tensor(t, "fp16", channel_indices=torch.tensor([0, 1, 32768]))
    with pytest.raises(ValueError, match="indices"):
        Payload.from_tensor(t, "fp16", channel_indices=torch.tensor([-1, 1, 2]))
    with pytest.raises(ValueError, match="codec"):
        Payload.from_tensor(t, "fp12")
    with pytest.raises(ValueError, match="channel_indices"):
        Payload.from_tensor(t, "fp16", channel_indices=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="float16"):
        Payload(data=np.zeros(3, dtype=np.float32), codec="fp16")
    with pytest.raises(ValueError, match="scale"):
        Payload(data=np.zeros(3, dtype=np.int8), codec="int8")


# --- codec round trips --------------------------------------------------------------------------


def _normal(n: int = 4096) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(8))


def test_fp32_is_exact() -> None:
    t = _normal()
    arr, scale = encode(t, "fp32")
    assert scale is None and arr.dtype == np.float32
    assert torch.equal(decode(arr, "fp32", None), t)


def test_fp16_and_bf16_round_to_nearest() -> None:
    t = _normal()
    for codec, dtype, np_dtype, significand_bits in (
        ("fp16", torch.float16, np.float16, 11),
        ("bf16", torch.bfloat16, np.uint16, 8),
    ):
        arr, scale = encode(t, codec)
        assert scale is None and arr.dtype == np_dtype
        out = decode(arr, codec, None)
        assert torch.equal(out, t.to(dtype).float())
        # Round to nearest: relative error <= unit roundoff 2^-p (p significand bits, 11 for fp16,
        # 8 for bf16); the absolute floor covers fp16 subnormals (spacing 2^-24) near zero.
        bound = torch.maximum(t.abs() * 2.0**-significand_bits, torch.tensor(2.0**-25))
        err = (out - t).abs()
        assert torch.all(err <= bound)
        assert err.max() > 0.25 * bound.max()  # the codec really rounds


@pytest.mark.parametrize(
    "codec, max_finite, mantissa_bits, subnormal_spacing",
    [("fp8_e4m3", 448.0, 3, 2.0**-9), ("fp8_e5m2", 57344.0, 2, 2.0**-16)],
)
def test_fp8_error_bounds(
    codec: str, max_finite: float, mantissa_bits: int, subnormal_spacing: float
) -> None:
    t = _normal()
    arr, scale = encode(t, codec)
    amax = t.abs().max().item()
    assert arr.dtype == np.uint8 and scale == pytest.approx(amax / max_finite, rel=1e-6)
    out = decode(arr, codec, scale)
    err = (out - t).abs()
    # Scaled values are rounded to m mantissa bits: relative error <= 2^-(m+1) for normal values,
    # i.e. 6.25% (E4M3) and 12.5% (E5M2) at worst, so error/max-abs stays under that too; below the
    # smallest normal the error is at most half the subnormal spacing times the scale.
    bound = torch.maximum(
        t.abs() * 2.0 ** -(mantissa_bits + 1), torch.tensor(subnormal_spacing / 2 * scale)
    )
    assert torch.all(err <= bound * (1 + 1e-6))
    assert err.max() / amax <= 2.0 ** -(mantissa_bits + 1)
    assert err.max() / amax > 2.0 ** -(mantissa_bits + 4)  # the codec really quantises
    assert out.abs().max().item() == pytest.approx(amax, rel=1e-6)  # amax maps to max_finite
    assert len(np.unique(arr)) <= 256


def test_int8_error_bound() -> None:
    t = _normal() * 3
    arr, scale = encode(t, "int8")
    amax = t.abs().max().item()
    assert arr.dtype == np.int8 and scale == pytest.approx(amax / 127, rel=1e-6)
    assert arr.min() >= -127 and arr.max() <= 127
    err = (decode(arr, "int8", scale) - t).abs()
    # Symmetric rounding to the grid k * scale: at most half a step (plus float32 slack).
    assert err.max() <= scale / 2 * (1 + 1e-5)
    assert err.max() > scale / 4


@pytest.mark.parametrize("codec", CODECS)
def test_codec_edge_cases(codec: str) -> None:
    zeros = torch.zeros(2, 3)
    arr, scale = encode(zeros, codec)
    assert scale == (1.0 if is_scaled(codec) else None)
    assert torch.equal(decode(arr, codec, scale, (2, 3)), zeros)
    # Grad-requiring, non-contiguous input; C-contiguous wire array; writable decoded copy.
    t = torch.randn(4, 5, requires_grad=True)
    arr, scale = encode(t.t(), codec)
    assert arr.flags.c_contiguous and arr.shape == (5, 4)
    arr.setflags(write=False)
    out = decode(arr, codec, scale, (5, 4))
    out += 1.0
    torch.testing.assert_close(out - 1.0, t.detach().t(), atol=0.2, rtol=0.15)
    with pytest.raises(ValueError, match="shape"):
        decode(arr, codec, scale, (3, 3))
    with pytest.raises(ValueError, match="scale"):
        decode(arr, codec, None if is_scaled(codec) else 1.0)
    # Without a shape the wire array's own is kept, a 0-d one's included.
    for kept in (torch.tensor(0.5), torch.full((2, 1, 3), 0.5)):
        arr, scale = encode(kept, codec)
        assert decode(arr, codec, scale).shape == kept.shape


@pytest.mark.parametrize("codec", ["fp8_e4m3", "fp8_e5m2", "int8"])
def test_scaled_codecs_keep_a_tensor_with_a_tiny_max_abs_finite(codec: str) -> None:
    # A confident server's gradient: zeros and one value near float32's subnormal range, where
    # max-abs / the format's largest value would round the scale to a subnormal or 0.
    t = torch.zeros(2, 4, 3, 3)
    t[0, 0, 0, 0] = 3e-41
    arr, scale = encode(t, codec)
    decoded = decode(arr, codec, scale, tuple(t.shape))
    assert torch.isfinite(decoded).all()
    assert (decoded.abs() <= 1e-40).all() and (decoded.flatten()[1:] == 0).all()


def test_fp32_wire_does_not_alias_input() -> None:
    t = torch.ones(3)
    arr, _ = encode(t, "fp32")
    t.add_(1.0)
    assert np.all(arr == 1.0)


def test_scaled_codecs_reject_non_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        encode(torch.tensor([1.0, float("inf")]), "fp8_e4m3")
