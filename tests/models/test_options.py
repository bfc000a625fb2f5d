"""The distilled transformer's architecture options: sliding-window attention and the convolutional feed-forward."""

import pytest
import timm
import torch
from conftest import eval_summary
from timm.layers import Mlp
from timm.models.pvt_v2 import MlpWithDepthwiseConv

from ramstrans.models import RAMSTrans, ViTBackbone, create_model, create_vit
from ramstrans.models.blocks.attention import WindowAttention, window_mask
from ramstrans.models.blocks.ffn import ConvMlp


def test_window_mask_rows_at_a_corner_and_in_the_centre_and_global_tokens():
    r, prefix, (gh, gw) = 1, 2, (5, 5)
    m = window_mask((gh, gw), prefix, r)
    assert m.shape == (prefix + gh * gw,) * 2
    assert m[:prefix].all() and m[:, :prefix].all()  # class and distillation tokens are global both ways
    corner, centre = prefix + 0, prefix + 2 * gw + 2
    assert m[corner].sum() == prefix + (r + 1) ** 2 and m[centre].sum() == prefix + (2 * r + 1) ** 2
    assert window_mask((gh, gw), prefix, 2)[centre].sum() == prefix + 25
    edge = prefix + 0 * gw + 2  # top row, middle column: 2 rows x 3 columns
    assert m[edge].sum() == prefix + 6


def _brute_force(attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Per query: softmax over the keys its mask row allows, in float64."""
    B, N, C = x.shape
    H, d = attn.num_heads, C // attn.num_heads
    qkv = attn.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    out = torch.zeros(B, H, N, d, dtype=x.dtype)
    for i in range(N):
        keys = attn.window_mask[i].nonzero().flatten()
        w = (q[:, :, i : i + 1] @ k[:, :, keys].transpose(-2, -1) * d**-0.5).softmax(-1)
        out[:, :, i] = (w @ v[:, :, keys])[:, :, 0]
    return attn.proj(out.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_window_attention_equals_a_per_query_loop_and_the_capture_is_masked(grid):
    torch.manual_seed(0)
    img = (grid[0] * 16, grid[1] * 16)  # a non-square grid: the backbone is built from its parts
    options = dict(depth=2, embed_dim=32, num_heads=2, window_attention=True, attn_window=1, dist_token=True)
    vit = create_vit("vit_tiny_patch16_224", img, 4, **options)
    model = RAMSTrans(backbone=ViTBackbone(vit=vit, attn_window=1, dist_token=True)).double().eval()
    attn = model.backbone.vit.blocks[0].attn
    assert isinstance(attn, WindowAttention) and attn.window_mask.shape == (2 + grid[0] * grid[1],) * 2
    x = torch.randn(2, 2 + grid[0] * grid[1], 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _brute_force(attn, x), rtol=0, atol=1e-10)
        maps = model.backbone.forward_features(torch.randn(2, 3, *img, dtype=torch.float64), capture="all").attentions
    for a in maps:
        assert (a[:, ~attn.window_mask] == 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]), rtol=0, atol=1e-6)  # float32 capture
    assert model.forward_multiscale(torch.randn(2, 3, *img, dtype=torch.float64)).boxes[0].shape == (2, 4)


def test_conv_ffn_equals_timms_depthwise_mlp_and_starts_as_timms_mlp():
    torch.manual_seed(0)
    grid, d, hidden = (3, 5), 16, 32
    ours = ConvMlp(in_features=d, hidden_features=hidden, grid_size=grid, num_prefix_tokens=0, kernel=3)
    ref = MlpWithDepthwiseConv(d, hidden)
    torch.nn.init.normal_(ours.dwconv.weight)
    ref.load_state_dict({k: v for k, v in ours.state_dict().items()})
    x = torch.randn(2, 15, d)
    torch.testing.assert_close(ours(x), ref(x, list(grid)), rtol=0, atol=1e-6)
    fresh = ConvMlp(  # identity-initialised
        in_features=d, hidden_features=hidden, grid_size=grid, num_prefix_tokens=2, kernel=5, prefix="mlp"
    )
    mlp = Mlp(d, hidden)
    mlp.load_state_dict({k: v for k, v in fresh.state_dict().items() if not k.startswith("dwconv")})
    x = torch.randn(2, 17, d)
    torch.testing.assert_close(fresh(x), mlp(x), rtol=0, atol=1e-6)
    bypass = ConvMlp(
        in_features=d, hidden_features=hidden, grid_size=grid, num_prefix_tokens=2, kernel=5, prefix="bypass"
    )
    bypass.load_state_dict(fresh.state_dict())
    out = bypass(x)
    assert (out[:, :2] == 0).all() and torch.allclose(out[:, 2:], mlp(x)[:, 2:], atol=1e-6)


def test_a_pretrained_vit_with_the_conv_ffn_is_the_same_function_at_initialisation(tmp_path):
    torch.manual_seed(1)
    plain = timm.create_model(
        "vit_tiny_patch16_224", img_size=(48, 80), depth=2, embed_dim=32, num_heads=2, num_classes=4
    ).eval()
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    options = dict(depth=2, embed_dim=32, num_heads=2, conv_ffn=True, ffn_kernel=3)
    backbone = ViTBackbone(vit=create_vit("vit_tiny_patch16_224", (48, 80), 4, **options), ffn_kernel=3)
    backbone.load_pretrained(str(tmp_path / "plain.pth"))
    model = RAMSTrans(backbone=backbone).eval()
    x = torch.randn(2, 3, 48, 80)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=1e-5)


def test_blocks_are_built_sized_and_a_model_built_elsewhere_is_resized_to_the_backbone():
    import pickle

    from ramstrans.models import ViTBackbone, create_vit

    options = dict(depth=1, embed_dim=32, num_heads=2, window_attention=True, conv_ffn=True)
    vit = create_vit("vit_tiny_patch16_224", (48, 80), 4, attn_window=1, ffn_kernel=5, dist_token=True, **options)
    attn, mlp = vit.blocks[0].attn, vit.blocks[0].mlp
    assert type(attn) is WindowAttention and attn.window_mask.shape == (2 + 3 * 5,) * 2 and vit.num_prefix_tokens == 2
    assert mlp.grid == (3, 5) and mlp.num_prefix_tokens == 2 and mlp.dwconv.kernel_size == (5, 5)
    assert type(pickle.loads(pickle.dumps(attn))) is WindowAttention
    plain = create_vit("vit_tiny_patch16_224", 64, 4, **options)  # global, one prefix token, kernel 3
    bb = ViTBackbone(vit=plain, attn_window=2, ffn_kernel=5, ffn_prefix="bypass", dist_token=True)
    attn, mlp = bb.vit.blocks[0].attn, bb.vit.blocks[0].mlp
    assert attn.radius == 2 and attn.window_mask.shape == (2 + 16,) * 2
    assert (mlp.num_prefix_tokens, mlp.dwconv.kernel_size, mlp.prefix) == (2, (5, 5), "bypass")
    assert bb(torch.randn(1, 3, 64, 64)).shape == (1, 4)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"attn_window": 4}, "model.attn_window must be 0"),
        ({"attn_window": -1}, "config key 'model.attn_window' must be >= 0"),
        ({"ffn": "conv", "ffn_kernel": 2}, "config key 'model.ffn_kernel' must be odd"),
    ],
)
def test_options_out_of_range_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("vit_tiny_patch16_224", num_classes=4, img_size=64, depth=1, **kwargs)


def test_fwt_is_the_identity_in_eval_and_has_the_specified_train_time_spread():
    from ramstrans.models.blocks.fwt import FeatureWiseTransform

    layer = FeatureWiseTransform(4)
    x = torch.randn(3, 5, 4)
    assert torch.equal(layer.eval()(x), x)
    layer.train()
    ones = torch.ones(20000, 1, 4)
    draws = torch.stack([layer(ones[i]) - 1 for i in range(20000)])  # γ - 1 + β per draw, (20000, 1, 4)
    zeros = torch.stack([layer(torch.zeros(1, 4)) for _ in range(20000)])  # β alone
    sp = torch.nn.functional.softplus
    want_beta, want_gamma = sp(torch.tensor(0.5)).item(), sp(torch.tensor(0.3)).item()
    assert zeros.mean().item() == pytest.approx(0.0, abs=0.02) and zeros.std().item() == pytest.approx(
        want_beta, rel=0.03
    )
    total = (want_gamma**2 + want_beta**2) ** 0.5  # γ - 1 and β independent
    assert draws.mean().item() == pytest.approx(0.0, abs=0.03) and draws.std().item() == pytest.approx(total, rel=0.03)


def test_the_learning_to_learn_gradient_matches_a_finite_difference():
    from ramstrans.models import MultiScaleForward
    from ramstrans.training.l2l import meta_losses

    torch.manual_seed(0)
    model = (
        create_model(
            "vit_tiny_patch16_224",
            num_classes=3,
            img_size=32,
            depth=1,
            embed_dim=8,
            num_heads=2,
            num_scales=1,
            fwt="learned",
        )
        .double()
        .train()
    )
    for blk in model.backbone.vit.blocks:
        blk.attn.fused_attn = False
    module = MultiScaleForward(model)

    def criterion(inputs, output, targets):  # float64 throughout (MultiScaleLoss computes in float32)
        return {"ce": torch.nn.functional.cross_entropy(output.logits[0], targets)}

    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    unseen, layers = y == 2, model.backbone.fwt
    theta = layers[0].theta_gamma

    def loss_unseen():
        torch.manual_seed(5)  # the same ε in every evaluation
        return meta_losses(module, criterion, x, y, unseen, layers, inner_lr=0.5)[1]

    (grad,) = torch.autograd.grad(loss_unseen(), [theta])
    h = 1e-6
    for i in range(3):
        with torch.no_grad():
            theta[i] += h
        up = loss_unseen().item()
        with torch.no_grad():
            theta[i] -= 2 * h
        down = loss_unseen().item()
        with torch.no_grad():
            theta[i] += h
        assert grad[i].item() == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-9)
    assert grad.abs().sum() > 0


def test_a_run_with_learned_fwt_moves_theta_and_logs_the_unseen_loss(tmp_path):
    import json

    from conftest import TINY_TRAIN, sets

    from ramstrans.checkpoint import load_checkpoint
    from ramstrans.cli import main
    from ramstrans.models.blocks.fwt import FWT_INIT

    out = tmp_path / "run"
    assert (
        main(
            ["train", "--no-progress", "--output-dir", str(out)]
            + sets(*TINY_TRAIN, "model.fwt=learned", "model.attn_window=1", "model.ffn=conv", "train.warmup_steps=0")
        )
        == 0
    )
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert all("l2l_unseen" in r and r["l2l_unseen"] > 0 for r in train)
    state = load_checkpoint(out / "checkpoint.pth")["model"]
    assert not torch.all(state["backbone.fwt.0.theta_gamma"] == FWT_INIT[0])  # learned
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(out / "checkpoint.pth"),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "m.onnx"),
            ]
        )
        == 0
    )  # eval: the layers are the identity, nothing of them exported
    import onnx

    names = {i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    assert not any("fwt" in n or "theta" in n for n in names)


def test_a_shifted_test_set_changes_the_pixels_deterministically_and_is_named_in_the_output(trained, tmp_path, capsys):
    import shutil

    import numpy as np

    from ramstrans.cli import main
    from ramstrans.data.transforms import Transform

    img = (np.random.default_rng(0).random((80, 80, 3)) * 255).astype(np.uint8)
    plain = Transform(train=False, crop=64, resize=72, mean=(0.5,) * 3, std=(0.5,) * 3)(img, None, 0)[0]
    for shift in (["colour"], ["blur"], ["contrast"], ["colour", "blur", "contrast"]):
        t = Transform(train=False, crop=64, resize=72, mean=(0.5,) * 3, std=(0.5,) * 3, shift=shift)
        a, b = t(img, None, 0)[0], t(img, None, 1)[0]
        assert torch.equal(a, b) and (a - plain).abs().mean() > 0.02, shift
    low = Transform(train=False, crop=64, resize=72, mean=(0.5,) * 3, std=(0.5,) * 3, shift=["contrast"])(img, None, 0)
    assert low[0].std() < 0.6 * plain.std()  # halved contrast
    run = shutil.copytree(trained, tmp_path / "run")
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(run / "checkpoint.pth"),
                "--shift",
                "blur,contrast",
                "--no-progress",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    res = eval_summary(capsys)
    assert res["shift"] == ["blur", "contrast"]
    assert (run / "eval_test_scales1_raw_shift-blur+contrast" / "summary.json").is_file()
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pth"), "--shift", "fog"]) == 2
    assert "unknown shift 'fog'" in capsys.readouterr().err


def test_a_copied_or_pickled_model_hooks_its_own_feature_wise_layers():
    import copy
    import pickle

    model = create_model("vit_tiny_patch16_224", num_classes=3, img_size=64, depth=2, fwt="fixed").train()
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        for blk, layer in zip(twin.backbone.vit.blocks, twin.backbone.fwt):
            (hook,) = blk.norm2._forward_hooks.values()
            assert hook.__self__ is layer  # the copy's own registered layer, not the original's
        with torch.no_grad():
            twin.backbone.fwt[0].theta_gamma.fill_(5.0)
        assert model.backbone.fwt[0].theta_gamma[0].item() != 5.0
