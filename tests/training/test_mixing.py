"""TransMix / CutMix / Mixup weights on hand-worked cases, the zoomed-scale rule, targets, and a CLI run."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TRAIN

from ramstrans.cli import main
from ramstrans.training.mixing import Mixer, MixInfo, patch_box_mask, transmix_lambda, zoomed_lambda

IMG, GRID = (32, 64), (2, 4)  # non-square: 16-px patches, 2 x 4 grid
FULL = torch.tensor([[0.0, 0.0, 64.0, 32.0]])


def test_uniform_attention_gives_the_area_share_for_a_patch_aligned_box():
    box = (0, 16, 16, 48)  # y0, y1, x0, x1: 2 of 8 patches, area share 0.25
    lam = transmix_lambda(torch.full((3, 8), 1 / 8), box, 0.25, IMG, GRID)
    torch.testing.assert_close(lam, torch.full((3,), 0.25))


def test_all_or_no_attention_inside_the_box():
    box = (0, 16, 16, 48)
    inside = torch.zeros(1, 8)
    inside[0, 1] = inside[0, 2] = 0.5  # both boxed patches (row 0, columns 1 and 2)
    outside = torch.zeros(1, 8)
    outside[0, 5] = 1.0
    assert transmix_lambda(inside, box, 0.25, IMG, GRID).item() == pytest.approx((0.25 + 1) / 2)
    assert transmix_lambda(outside, box, 0.25, IMG, GRID).item() == pytest.approx(0.25 / 2)
    assert transmix_lambda(inside, box, 0.25, IMG, GRID, area_weight=1.0).item() == pytest.approx(0.25)


def test_patch_mask_is_nearest_neighbour_downsampling_of_the_pixel_mask():
    for box in [(3, 20, 7, 50), (0, 32, 0, 64), (16, 17, 47, 49), (5, 6, 5, 6)]:
        y0, y1, x0, x1 = box
        pix = torch.zeros(1, 1, *IMG)
        pix[..., y0:y1, x0:x1] = 1
        want = F.interpolate(pix, size=GRID, mode="nearest").flatten(1)  # the official TransMix rule
        assert torch.equal(patch_box_mask(box, FULL, IMG, GRID), want), box


def test_zoomed_scale_rule_on_hand_worked_crops():
    box = (0, 16, 32, 64)  # the pasted region: top-right quarter of a 32 x 64 image
    crops = torch.tensor(
        [
            [0.0, 16.0, 32.0, 32.0],  # bottom-left quarter: misses the box
            [32.0, 0.0, 64.0, 16.0],  # exactly the box
            [40.0, 4.0, 56.0, 12.0],  # inside the box
            [16.0, 0.0, 48.0, 16.0],
        ]
    )  # half over the box (right half)
    attn = torch.zeros(4, 8)
    attn[:, 3] = 1.0  # each zoomed view attends to its top-right patch only
    lam = zoomed_lambda(attn, crops, box, IMG, GRID)
    assert lam[0].item() == 0.0 and lam[1].item() == 1.0 and lam[2].item() == 1.0
    assert lam[3].item() == pytest.approx((0.5 + 1.0) / 2)  # area half covered, all attention on the box side
    attn_left = torch.zeros(4, 8)
    attn_left[:, 0] = 1.0
    assert zoomed_lambda(attn_left, crops, box, IMG, GRID)[3].item() == pytest.approx(0.5 / 2)


def test_targets_are_rows_summing_to_one_with_smoothing_once():
    m = Mixer(num_classes=4, image_size=IMG, grid_size=GRID, label_smoothing=0.2)
    y = torch.tensor([0, 1, 3])
    (t,) = m.targets(y, MixInfo("cutmix", 0.3), [torch.tensor([0.25, 0.5, 0.0])])
    torch.testing.assert_close(t.sum(1), torch.ones(3))
    off, on = 0.05, 0.85
    # sample 0: partner is sample 2 (label 3), weight 0.25
    torch.testing.assert_close(t[0], torch.tensor([0.75 * on + 0.25 * off, off, off, 0.75 * off + 0.25 * on]))
    torch.testing.assert_close(t[1], torch.tensor([off, on, off, off]))  # the middle of an odd batch: itself
    torch.testing.assert_close(t[2], torch.tensor([off, off, off, on]))  # weight 0: its own smoothed label


def test_cutmix_pastes_the_partner_and_mixup_blends():
    x = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 3, *IMG).clone()
    cut = Mixer(num_classes=4, image_size=IMG, grid_size=GRID, mixup_alpha=0.0)
    mixed, info = cut.mix(x, 3)
    y0, y1, x0, x1 = info.box
    assert info.kind == "cutmix" and 0 < info.lam_area < 1
    assert info.lam_area == pytest.approx((y1 - y0) * (x1 - x0) / (32 * 64))
    assert torch.equal(mixed[0, :, y0:y1, x0:x1], x[3, :, y0:y1, x0:x1])
    assert (mixed[0] == 3).sum().item() == 3 * (y1 - y0) * (x1 - x0)
    again, info2 = cut.mix(x, 3)
    assert torch.equal(again, mixed) and info2.box == info.box  # a function of (seed, rank, step)
    up = Mixer(num_classes=4, image_size=IMG, grid_size=GRID, cutmix_alpha=0.0)
    blended, info = up.mix(x[:3], 0)  # odd batch
    assert info.kind == "mixup"
    torch.testing.assert_close(blended[0], x[0] * (1 - info.lam_area) + x[2] * info.lam_area)
    lams = up.scale_lambdas(info, [torch.rand(3, 8), torch.rand(3, 8)], [FULL.expand(3, 4)])
    assert all(torch.allclose(lam, torch.full((3,), info.lam_area)) for lam in lams)  # mixup keeps λ at every scale
    off = Mixer(num_classes=4, image_size=IMG, grid_size=GRID, prob=0.0)
    assert off.mix(x, 0)[1].kind == "none"


def test_switch_prob_sets_the_share_of_cutmix():
    import numpy as np

    m = Mixer(num_classes=4, image_size=IMG, grid_size=GRID, switch_prob=0.8)
    kinds = [m.mix(torch.zeros(2, 3, *IMG), key)[1].kind for key in range(400)]
    # the documented rule, drawn independently: mixed if u1 < prob, then CutMix if u2 < switch_prob
    want = []
    for key in range(400):
        rng = np.random.default_rng([0, 0, key])
        want.append("cutmix" if rng.random() < 1.0 and rng.random() < 0.8 else "mixup")
    assert kinds == want and 0.72 < kinds.count("cutmix") / 400 < 0.88


def test_the_box_is_timms_rule_and_numpys_global_generator_is_untouched(monkeypatch):
    import numpy as np
    from timm.data import mixup as timm_mixup

    for lam, centre in [(0.75, (10, 40)), (0.3, (0, 0)), (0.9, (31, 63))]:
        draws = iter(centre)
        monkeypatch.setattr(timm_mixup.np.random, "randint", lambda lo, hi, size=None, draws=draws: next(draws))
        want = timm_mixup.rand_bbox((2, 3) + IMG, lam)  # timm's own rule with the same centre
        monkeypatch.undo()

        class Fixed:
            def __init__(self, centre=centre):
                self.values = iter(centre)

            def integers(self, lo, hi):
                return next(self.values)

        from ramstrans.training.mixing import cutmix_box

        assert cutmix_box(Fixed(), IMG, lam) == tuple(int(v) for v in want)
    np.random.seed(123)
    state = np.random.get_state()
    Mixer(num_classes=4, image_size=IMG, grid_size=GRID, mixup_alpha=0.0).mix(torch.zeros(2, 3, *IMG), 5)
    assert all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(np.random.get_state(), state)
    )


def test_correct_lam_off_keeps_the_beta_draw_as_the_area_weight():
    import numpy as np

    x = torch.zeros(2, 3, *IMG)
    for correct in (True, False):
        m = Mixer(num_classes=4, image_size=IMG, grid_size=GRID, mixup_alpha=0.0, correct_lam=correct, transmix=False)
        _, info = m.mix(x, 7)
        rng = np.random.default_rng([0, 0, 7])
        rng.random()  # mixed or not
        keep = rng.beta(1.0, 1.0)  # cutmix only: no switch draw
        y0, y1, x0, x1 = info.box
        want = (y1 - y0) * (x1 - x0) / (32 * 64) if correct else 1.0 - keep
        assert info.lam_area == pytest.approx(want)
        lam = m.scale_lambdas(info, [torch.rand(2, 8)], [])[0]
        torch.testing.assert_close(lam, torch.full((2,), want))  # transmix off: the area weight alone


def test_bad_mix_settings():
    with pytest.raises(ValueError, match="area_weight"):
        Mixer(num_classes=2, image_size=IMG, grid_size=GRID, area_weight=2.0)
    with pytest.raises(ValueError, match="mix.prob"):
        Mixer(num_classes=2, image_size=IMG, grid_size=GRID, prob=1.5)


def test_transmix_training_through_the_cli_logs_lambda(tmp_path):
    sets = TINY_TRAIN + [
        "mix.enabled=true",
        "mix.switch_prob=1.0",
        "mix.transmix=false",
        f"train.output_dir={tmp_path}",
    ]
    assert main(["train", "--no-progress"] + [a for s in sets for a in ("--set", s)]) == 0
    mix = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "mix"]
    assert [r["step"] for r in mix] == [1, 2, 3] and all(r["cutmix"] == r["batches"] == 1 for r in mix)
    again = Mixer(num_classes=3, image_size=(64, 64), grid_size=(4, 4), seed=42, switch_prob=1.0, transmix=False)
    for key, r in enumerate(mix):  # batch position = key; the logged scale-1 weight is the box's area share
        info = again.mix(torch.zeros(4, 3, 64, 64), key)[1]
        assert r["lam_scale1"] == pytest.approx(info.lam_area)
