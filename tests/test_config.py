"""Config: defaults are the paper recipe, files and overrides are strict about keys and types."""

import pytest
import yaml

from ramstrans.config import Config, ConfigError, config_from_dict, load_config, save_config


def test_defaults_are_the_paper_recipe():
    c = Config()
    assert (c.model.backbone, c.model.img_size, c.model.alpha, c.model.num_scales) == (
        "vit_base_patch16_224",
        448,
        1.3,
        2,
    )
    t = c.train
    assert (t.opt, t.lr, t.momentum, t.weight_decay, t.batch_size, t.warmup_steps, t.steps, t.clip_grad) == (
        "momentum",
        0.03,
        0.9,
        0.0,
        16,
        500,
        10000,
        1.0,
    )
    assert c.data.resize == 600 and c.loss.scale_weights == [1.0, 1.0]


def test_shipped_configs_load_and_hold_only_differences():
    cub = load_config("cub_vitb16_448")
    assert cub.model.pretrained == "path/to/ViT-B_16.npz" and cub.train.lr == 0.03 and cub.model.img_size == 448
    demo = load_config("synthetic_cpu")
    assert demo.data.dataset == "synthetic"


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(
        None,
        [
            "train.lr=0.1",
            "train.steps=7",
            "model.pretrained=null",
            "loss.scale_weights=[1, 0.5]",
            "model.backbone_kwargs={depth: 2}",
            "data.synthetic.seed=3",
            "train.amp=false",
        ],
    )
    assert cfg.train.lr == 0.1 and isinstance(cfg.train.lr, float) and cfg.train.steps == 7
    assert cfg.model.pretrained is None and cfg.loss.scale_weights == [1.0, 0.5]
    assert cfg.model.backbone_kwargs == {"depth": 2} and cfg.data.synthetic.seed == 3 and cfg.train.amp is False
    save_config(cfg, tmp_path / "c.yaml")
    assert config_from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text())) == cfg


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["train.lrr=0.1"], "unknown config key 'train.lrr'"),
        (["nope.x=1"], "unknown config key 'nope'"),
        (["train.steps=ten"], "'train.steps' must be int"),
        (["train.steps=1.5"], "'train.steps' must be int"),
        (["train.steps=true"], "'train.steps' must be int"),
        (["train.amp=3"], "'train.amp' must be bool"),
        (["loss.scale_weights=1"], "'loss.scale_weights' must be a list"),
        (["loss.scale_weights=[1, a]"], r"'loss.scale_weights\[1\]' must be float"),
        (["train=3"], "section 'train' must be a mapping"),
        (["train.lr"], "must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "typo.yaml").write_text("model:\n  alpah: 1.0\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.alpah'"):
        load_config(str(tmp_path / "typo.yaml"))
    with pytest.raises(FileNotFoundError, match="config nope.yaml not found"):
        load_config("nope.yaml")


def test_a_config_builds_on_a_base_and_a_base_cycle_is_refused(tmp_path):
    from dataclasses import asdict

    from ramstrans.config import ConfigError, load_config

    (tmp_path / "a.yaml").write_text("base: synthetic_cpu\ntrain: {steps: 7}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\nmodel: {{alpha: 2.0}}\n")
    got = load_config(str(tmp_path / "b.yaml"))
    want = load_config("synthetic_cpu", ["train.steps=7", "model.alpha=2.0"])
    assert asdict(got) == asdict(want)
    (tmp_path / "c.yaml").write_text(f"base: {tmp_path / 'd.yaml'}\n")
    (tmp_path / "d.yaml").write_text(f"base: {tmp_path / 'c.yaml'}\n")
    with pytest.raises(ConfigError, match="is its own base"):
        load_config(str(tmp_path / "c.yaml"))


def test_shipped_configs_are_package_data():
    """Every config in ramstrans/configs/ is listed as package data, so a wheel (a regular or --user install) finds
    them by name: the setup's package_data patterns must match every shipped file."""
    import fnmatch
    from pathlib import Path

    import ramstrans
    from ramstrans.config.load import CONFIG_DIRS, find_config

    root = Path(ramstrans.__file__).parent
    assert CONFIG_DIRS == (root / "configs",)
    setup = (root.parent / "setup.py").read_text()
    patterns = [p for p in ("configs/*.yaml", "configs/README.md") if f'"{p}"' in setup]
    shipped = sorted(p.relative_to(root).as_posix() for p in (root / "configs").iterdir())
    assert shipped and all(any(fnmatch.fnmatch(f, p) for p in patterns) for f in shipped)
    assert find_config("synthetic_cpu") == root / "configs" / "synthetic_cpu.yaml"
