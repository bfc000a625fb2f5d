"""CUB loader on fixtures written in the distributed format; decoding; transforms; the synthetic generator."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ramstrans.data import DataError, ImageDataset, ImageReadError, Transform, collate, read_image
from ramstrans.data.formats.cub import load_cub
from ramstrans.data.loader import StepSampler, stratified_split
from ramstrans.data.synthetic.birds import Painter, draw_bird, render_bird_scene, species_list, write_cub_layout


def write_cub(root, images, classes, labels, split, boxes=None):
    """Write the five CUB text files exactly as distributed ('<id> <value>' per line)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images.txt").write_text("".join(f"{i} {p}\n" for i, p in images))
    (root / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in classes))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, c in labels))
    (root / "train_test_split.txt").write_text("".join(f"{i} {s}\n" for i, s in split))
    if boxes is not None:
        (root / "bounding_boxes.txt").write_text("".join(f"{i} {x} {y} {w} {h}\n" for i, (x, y, w, h) in boxes))


@pytest.fixture
def cub_root(tmp_path):
    root = tmp_path / "CUB_200_2011"
    classes = [(1, "001.Black_footed_Albatross"), (2, "002.Mr.Dot.Bird"), (3, "003.Parakeet_Auklet")]
    images = [
        (3, "002.Mr.Dot.Bird/b.jpg"),
        (1, "001.Black_footed_Albatross/a.jpg"),
        (2, "003.Parakeet_Auklet/c.jpg"),
        (4, "001.Black_footed_Albatross/d.jpg"),
    ]  # ids out of order
    for _, p in images:
        (root / "images" / p).parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "images" / images[0][1]), rgb[..., ::-1].copy())
    cv2.imwrite(str(root / "images" / images[1][1]), rgb[..., 0].copy())  # grayscale JPEG
    cv2.imwrite(str(root / "images" / images[2][1]), rgb[..., ::-1].copy())
    cv2.imwrite(str(root / "images" / images[3][1]), rgb[..., ::-1].copy())
    write_cub(
        root,
        images,
        classes,
        [(1, 1), (3, 2), (2, 3), (4, 1)],
        [(2, 0), (1, 1), (3, 1), (4, 0)],
        [(1, (1.0, 2.0, 10.0, 20.0)), (2, (0, 0, 60, 40)), (3, (5.5, 6.5, 7.0, 8.0)), (4, (0, 0, 1, 1))],
    )
    return root


def test_cub_loader_maps_ids_labels_names_and_boxes(cub_root):
    idx = load_cub(cub_root)
    assert idx.class_names == ["001.Black_footed_Albatross", "002.Mr.Dot.Bird", "003.Parakeet_Auklet"]
    train, test = idx.split("train"), idx.split("test")
    assert train["path"].tolist() == ["images/001.Black_footed_Albatross/a.jpg", "images/002.Mr.Dot.Bird/b.jpg"]
    assert train["label"].tolist() == [0, 1] and test["label"].tolist() == [2, 0]
    assert train[["x0", "y0", "x1", "y1"]].values.tolist()[1] == [5.5, 6.5, 12.5, 14.5]
    ds = ImageDataset(idx.root, train, idx.class_names)
    item = ds[0]  # the grayscale image comes back as 3-channel RGB
    assert item["image"].shape == (3, 40, 60) and item["label"] == 0
    assert torch.equal(item["image"][0], item["image"][1])


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda r: (r / "train_test_split.txt").unlink(), "train_test_split.txt is missing"),
        (lambda r: _append(r / "images.txt", "1 001.Black_footed_Albatross/x.jpg\n"), "lists id 1 more than once"),
        (lambda r: _append(r / "images.txt", "9 001.Black_footed_Albatross/a.jpg\n"), "lists the image .* twice"),
        (lambda r: _append(r / "images.txt", "5 001.Black_footed_Albatross/e.jpg\n"), "misses image id 5"),
        (lambda r: _replace(r / "image_class_labels.txt", "4 1", "4 7"), "label 7, which classes.txt does not define"),
        (lambda r: _replace(r / "image_class_labels.txt", "4 1", "4 x"), "'x' in column cid is not a number"),
        (lambda r: _replace(r / "train_test_split.txt", "4 0", "4 2"), "flag each image 1"),
        (lambda r: _replace(r / "images.txt", "001.Black_footed_Albatross/d.jpg", "../../etc/passwd"), "leaves"),
        (lambda r: _replace(r / "images.txt", "001.Black_footed_Albatross/d.jpg", "/etc/passwd"), "leaves"),
        (lambda r: _replace(r / "bounding_boxes.txt", "4 0 0 1 1\n", ""), "bounding_boxes.txt misses image id 4"),
        (lambda r: _replace(r / "images.txt", "2 003", "2"), "must have 2 fields"),
    ],
)
def test_inconsistent_metadata_is_refused(cub_root, edit, match):
    edit(cub_root)
    with pytest.raises(DataError, match=match):
        load_cub(cub_root)


def _append(path, text):
    path.write_text(path.read_text() + text)


def _replace(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cub(tmp_path / "nowhere")


def test_read_image_decodes_by_content(tmp_path):
    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "png_bytes.jpg"), rgb[..., ::-1].copy())
    (tmp_path / "real.png").write_bytes((tmp_path / "png_bytes.jpg").read_bytes())
    png = tmp_path / "png.jpg"
    ok, buf = cv2.imencode(".png", rgb[..., ::-1].copy())
    png.write_bytes(buf.tobytes())  # PNG bytes behind a .jpg name
    assert np.array_equal(read_image(png), rgb)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    cmyk = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (8, 12, 3) and abs(int(cmyk[..., 0].mean()) - 200) < 10 and cmyk[..., 2].mean() < 20
    Image.fromarray(np.dstack([rgb, np.full((8, 12), 128, np.uint8)])).save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgba.png").shape == (8, 12, 3)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="corrupt.jpg cannot be decoded"):
        read_image(tmp_path / "corrupt.jpg")
    with pytest.raises(ImageReadError, match="gone.jpg does not exist"):
        read_image(tmp_path / "gone.jpg")


def test_skip_corrupt_counts_instead_of_failing(cub_root):
    idx = load_cub(cub_root)
    (cub_root / "images" / "002.Mr.Dot.Bird" / "b.jpg").write_bytes(b"not an image")
    train = idx.split("train")
    with pytest.raises(DataError, match="b.jpg cannot be decoded"):
        ImageDataset(idx.root, train, idx.class_names)[1]
    ds = ImageDataset(idx.root, train, idx.class_names, skip_corrupt=True)
    batch = collate([ds[0], ds[1]])
    assert batch["skipped"] == 1 and batch["image"].shape[0] == 1


def test_transforms_shapes_normalisation_and_boxes():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :100] = 255  # left half white
    test = Transform(train=False, crop=64, resize=80, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x, box = test(img, (50.0, 25.0, 150.0, 75.0), 0)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    # resize: 100x200 -> 80x160 (scale 0.8); center crop 64: offsets x 48, y 8
    assert box == pytest.approx((0.0, 12.0, 64.0, 52.0), abs=1e-4)
    assert x.max().item() == pytest.approx((1 - 0.5) / 0.25) and x.min().item() == pytest.approx(-0.5 / 0.25)
    assert test(img, None, 0)[1] is None
    train = Transform(train=True, crop=64, resize=80, mean=(0.5,) * 3, std=(0.5,) * 3)
    a, b, _c = train(img, (50.0, 25.0, 150.0, 75.0), 7), train(img, (50.0, 25.0, 150.0, 75.0), 7), None
    assert torch.equal(a[0], b[0]) and a[1] == b[1]  # augmentation is a function of the seed
    outs = {train(img, (50.0, 25.0, 150.0, 75.0), s)[1] for s in range(20)}
    assert len(outs) > 5
    for bx in outs:
        if bx is not None:
            assert 0 <= bx[0] < bx[2] <= 64 and 0 <= bx[1] < bx[3] <= 64
    with pytest.raises(ValueError, match="data.resize"):
        Transform(train=True, crop=64, resize=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_flip_moves_the_box():
    img = np.zeros((64, 64, 3), np.uint8)
    t = Transform(train=True, crop=64, resize=64, mean=(0,) * 3, std=(1,) * 3)
    boxes = {t(img, (0.0, 0.0, 16.0, 32.0), s)[1] for s in range(16)}
    assert boxes == {(0.0, 0.0, 16.0, 32.0), (48.0, 0.0, 64.0, 32.0)}


def test_step_sampler_is_resumable_and_sharded():
    full = StepSampler(10, 3, seed=5)
    it = iter(full)
    stream = [next(it) for _ in range(3 * 9)]  # 3 epochs of 3 steps (tail of 1 dropped)
    resumed = iter(StepSampler(10, 3, seed=5, start_batch=4))
    assert [next(resumed) for _ in range(3 * 5)] == stream[12:]
    assert len({i for i, _ in stream[:9]}) == 9  # no repeats within an epoch
    r0, r1 = iter(StepSampler(10, 2, 5, rank=0, world_size=2)), iter(StepSampler(10, 2, 5, rank=1, world_size=2))
    both = [next(r0) for _ in range(2)] + [next(r1) for _ in range(2)]
    g = iter(StepSampler(10, 4, 5))
    assert [next(g) for _ in range(4)] == both  # ranks split each global batch
    accum = iter(StepSampler(10, 2, 5, grad_accum=2))
    assert [next(accum) for _ in range(4)] == both  # so do the accumulated batches of one step
    a0 = iter(StepSampler(10, 1, 5, rank=0, world_size=2, grad_accum=2))
    a1 = iter(StepSampler(10, 1, 5, rank=1, world_size=2, grad_accum=2, start_batch=2))  # rank 1 from its step 1
    g2 = [next(g) for _ in range(4)]  # step 1 of the batch-of-4 stream
    assert [next(a0) for _ in range(2)] == both[:2] and [next(a1) for _ in range(2)] == g2[2:]
    with pytest.raises(DataError, match="fewer than one optimizer step of 4"):
        StepSampler(3, 2, 0, world_size=2)


def test_stratified_split_is_seeded_and_per_class():
    import pandas as pd

    table = pd.DataFrame({"path": [f"{i}.jpg" for i in range(30)], "label": [i % 3 for i in range(30)]})
    tr, val = stratified_split(table, 0.2, seed=1)
    assert len(val) == 6 and sorted(val["label"].value_counts().tolist()) == [2, 2, 2]
    assert set(tr["path"]).isdisjoint(val["path"]) and len(tr) + len(val) == 30
    assert stratified_split(table, 0.2, seed=1)[1].equals(val)


def test_synthetic_layout_is_deterministic_and_loads(tmp_path):
    a = write_cub_layout(tmp_path / "a", num_classes=3, train_per_class=2, test_per_class=1, image_size=64, seed=1)
    b = write_cub_layout(tmp_path / "b", num_classes=3, train_per_class=2, test_per_class=1, image_size=64, seed=1)
    idx = load_cub(a)
    assert len(idx.split("train")) == 6 and len(idx.split("test")) == 3 and idx.has_boxes
    for p in idx.split("train")["path"]:
        assert (a / p).read_bytes() == (b / p).read_bytes()
    for f in ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
        assert (a / f).read_text() == (b / f).read_text()


def test_synthetic_species_differ_only_in_small_parts():
    species = species_list(10)
    assert len({s.name for s in species}) == 10
    rng = lambda: np.random.default_rng(42)  # noqa: E731
    img_a, box = render_bird_scene(rng(), 160, species[0])
    img_b, box_b = render_bird_scene(rng(), 160, species[1])  # same scene, another crown colour
    assert box == box_b
    x, y, w, h = box
    differ = np.abs(img_a.astype(int) - img_b.astype(int)).sum(-1) > 30
    assert differ.sum() > 0
    assert differ.sum() < 0.06 * w * h  # the crown is a few percent of the bird's box
    assert w * h < 0.35 * 160 * 160  # the bird covers a minority of the image
    with pytest.raises(ValueError, match="1 to 30 species"):
        species_list(31)


def test_detail_scales_the_crown_area_by_its_square():
    """The crown is an ellipse with both semi-axes times ``detail``: its area (the pixels where two crown colours
    differ, on a blank canvas) is pi a b with those semi-axes (hand-worked), so it scales by detail ** 2."""
    species = species_list(10)

    def crown_area(detail: float) -> int:
        imgs = []
        for s in species[:2]:  # red against yellow crown, same bird otherwise
            img = np.zeros((600, 600, 3), np.uint8)
            draw_bird(np.random.default_rng(7), Painter(img), (300.0, 300.0), 400.0, s, detail)
            imgs.append(img.astype(int))
        return int((np.abs(imgs[0] - imgs[1]).sum(-1) > 30).sum())

    for detail in (1.0, 0.65):
        a, b = 0.085 * detail * 400, 0.05 * detail * 400  # the crown's semi-axes in pixels
        # between the exact ellipse and one 1.5 px wider all round (cv2's anti-aliased fill spreads about a pixel)
        assert np.pi * a * b <= crown_area(detail) <= np.pi * (a + 1.5) * (b + 1.5), detail


def test_the_parts_size_knob_scales_the_crown_by_its_square():
    """``data.synthetic.detail`` scales the species' parts: the crown patch's area goes with its square (0.2 against
    the demo's 0.65), on the same bird."""
    from ramstrans.data.synthetic.birds import PALETTE

    species = species_list(1)[0]
    assert species.crown == "red"

    def crown_pixels(detail: float) -> int:
        img = np.zeros((320, 320, 3), np.uint8)
        draw_bird(np.random.default_rng(0), Painter(img), (160.0, 160.0), 150.0, species, detail)
        return int((np.abs(img.astype(int) - np.array(PALETTE["red"])).sum(-1) < 40).sum())

    big, small = crown_pixels(0.65), crown_pixels(0.2)
    assert small > 0 and small / big == pytest.approx((0.2 / 0.65) ** 2, rel=0.35)


def test_a_variant_of_the_parts_size_is_cached_under_its_own_name(tmp_path, monkeypatch):
    from ramstrans.data.synthetic.birds import ensure_synthetic

    monkeypatch.setenv("RAMSTRANS_CACHE", str(tmp_path))
    demo = ensure_synthetic("", 2, 1, 1, 32, 0)
    small = ensure_synthetic("", 2, 1, 1, 32, 0, detail=0.2)
    assert demo.name == "synthetic-birds-v2-k2-n1-1-s32-seed0" and small.name == demo.name + "-d0.2"
    assert (demo / "images.txt").is_file() and (small / "images.txt").is_file()


def test_a_uint8_training_batch_is_normalised_on_the_device_to_the_float_pipeline():
    """The source batch travels as uint8 (a quarter of float32's bytes): the same seeded crop and flip, and the
    training step's normalisation equals albumentations' to float32 rounding."""
    from ramstrans.training.steps import BatchStep

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    box = (10.0, 20.0, 80.0, 70.0)
    floats = Transform(train=True, crop=64, resize=72, mean=mean, std=std)
    uint8s = Transform(train=True, crop=64, resize=72, mean=mean, std=std, uint8=True)
    step = BatchStep(
        model=torch.nn.Identity(), criterion=lambda *a: {}, device=torch.device("cpu"), normalization=(mean, std)
    )
    for seed in range(6):  # both flips among them
        (f, fbox), (u, ubox) = floats(image, box, seed), uint8s(image, box, seed)
        assert u.dtype == torch.uint8 and f.dtype == torch.float32 and fbox == ubox
        x, y = step.inputs({"image": u[None], "label": torch.tensor([1])})
        assert x.dtype == torch.float32 and int(y) == 1
        torch.testing.assert_close(x[0], f, atol=2e-6, rtol=0)
        same_float = step.inputs({"image": f[None], "label": torch.tensor([1])})[0]
        assert torch.equal(same_float[0], f)  # a float batch arrives normalised and is left as it is
