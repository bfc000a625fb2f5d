"""Procedurally drawn fine-grained "birds" in clutter, written in the exact CUB-200-2011 layout.

Every species shares the body shape, the body colours and the pose distribution; species differ only in small parts:
the crown patch colour, the number of wing bars and the tail tip (a few percent of the bird's area). The bird covers a
minority of the image at a random place, size, tilt and facing; the clutter holds body-coloured blobs and crown-coloured
dots, so neither the coarse shape nor the presence of a colour gives the class away: the model has to look at the
bird's head, wing and tail. Everything is deterministic per (seed, split, index).

The scene code (background, clutter, painter) is shared with the pretext stream of generic objects
(``ramstrans.data.synthetic.pretext``), which draws other families with it.
"""

import itertools
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ramstrans.errors import DataError, UsageError
from ramstrans.fields import number
from ramstrans.runtime.files import FileLock, full_disk_error, is_full_disk, umask_mode

__all__ = [
    "BirdSpecies",
    "Painter",
    "species_list",
    "render_background",
    "render_clutter",
    "draw_bird",
    "render_scene",
    "render_bird_scene",
    "write_cub_layout",
    "make_synthetic",
    "ensure_synthetic",
    "PALETTE",
    "BODY_COLOURS",
]

RGB = tuple[int, int, int]
PALETTE: dict[str, RGB] = {
    "red": (220, 30, 35),
    "yellow": (245, 215, 30),
    "blue": (40, 90, 230),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 130, 20),
    "green": (40, 170, 60),
    "purple": (140, 50, 170),
}
CROWNS = ("red", "yellow", "blue", "white", "black")
WING_BARS = (0, 1, 2)
TAIL_TIPS = ("body", "white")
# Size of the species-specific parts in the fine-grained set: at the demo's 128 px the crown patch is about 4 to 8 px
# wide and a wing bar 1 px, under half a 16-px patch; the zoom makes them two to three times larger.
FINE_DETAIL = 0.65
SMALLEST_IMAGE = 16  # px: a smaller bird has no parts to tell apart
BODY_COLOURS: tuple[RGB, ...] = ((140, 100, 60), (120, 90, 70), (160, 120, 80), (110, 105, 95))


@dataclass(frozen=True)
class BirdSpecies:
    crown: str
    wing_bars: int
    tail_tip: str

    @property
    def name(self) -> str:
        tail = "" if self.tail_tip == "body" else f"_{self.tail_tip}-tailed"
        return f"{self.crown}-crowned_{self.wing_bars}-barred{tail}"


def species_list(num_classes: int) -> list[BirdSpecies]:
    """The first ``num_classes`` species of a fixed order that varies the crown and the wing bars first."""
    combos = [BirdSpecies(c, b, t) for t, b, c in itertools.product(TAIL_TIPS, WING_BARS, CROWNS)]
    if not 1 <= num_classes <= len(combos):
        raise UsageError(f"the synthetic birds have 1 to {len(combos)} species, asked for {num_classes}")
    return combos[:num_classes]


class Painter:
    """Draws anti-aliased shapes on an RGB image and, optionally, on an object mask (for the box).

    Coordinates are floats in pixels; cv2's fixed-point ``shift`` keeps sub-pixel precision.
    """

    SHIFT = 4

    def __init__(self, image: np.ndarray, mask: np.ndarray | None = None) -> None:
        self.image, self.mask = image, mask

    def _fx(self, v: float) -> int:
        return int(round(v * (1 << self.SHIFT)))

    def _targets(self, colour: Sequence[int]) -> Iterator[tuple[np.ndarray, tuple[int, ...] | int]]:
        yield self.image, tuple(int(c) for c in colour)
        if self.mask is not None:
            yield self.mask, 255

    def ellipse(self, c: tuple[float, float], axes: tuple[float, float], angle: float, colour: Sequence[int]) -> None:
        for img, col in self._targets(colour):
            cv2.ellipse(
                img,
                (self._fx(c[0]), self._fx(c[1])),
                (max(1, self._fx(axes[0])), max(1, self._fx(axes[1]))),
                angle,
                0,
                360,
                col,
                -1,
                cv2.LINE_AA,
                self.SHIFT,
            )

    def polygon(self, pts: np.ndarray, colour: Sequence[int]) -> None:
        p = np.round(np.asarray(pts) * (1 << self.SHIFT)).astype(np.int32)[None]
        for img, col in self._targets(colour):
            cv2.fillPoly(img, [p[0]], col, cv2.LINE_AA, self.SHIFT)

    def line(self, a: tuple[float, float], b: tuple[float, float], colour: Sequence[int], width: float) -> None:
        for img, col in self._targets(colour):
            cv2.line(
                img,
                (self._fx(a[0]), self._fx(a[1])),
                (self._fx(b[0]), self._fx(b[1])),
                col,
                max(1, int(round(width))),
                cv2.LINE_AA,
                self.SHIFT,
            )


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: int = 18) -> RGB:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)
    return r, g, b


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) uint8 RGB background: a vertical sky/foliage gradient with blurred noise."""
    top = np.array(_jitter(rng, (150, 185, 210), 30), np.float32)
    bottom = np.array(_jitter(rng, (95, 130, 80), 30), np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    img = top * (1 - t) + bottom * t
    noise = cv2.GaussianBlur(rng.normal(0, 14, (size, size, 3)).astype(np.float32), (0, 0), size / 40)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def render_clutter(rng: np.random.Generator, painter: Painter, size: int, count: int) -> None:
    """Branches, leaves, body-coloured blobs and crown-coloured dots (distractors that share coarse features)."""
    for _ in range(count):
        kind = rng.choice(["branch", "leaf", "blob", "dot"], p=[0.25, 0.35, 0.25, 0.15])
        c = rng.uniform(0, size, 2)
        if kind == "branch":
            d = rng.normal(0, 1, 2)
            d = d / (np.linalg.norm(d) + 1e-6) * rng.uniform(0.2, 0.6) * size
            painter.line(tuple(c - d / 2), tuple(c + d / 2), _jitter(rng, (90, 65, 40), 20), rng.uniform(1, 4))
        elif kind == "leaf":
            ax = rng.uniform(0.03, 0.08) * size
            painter.ellipse(
                tuple(c), (ax, ax * rng.uniform(0.3, 0.6)), rng.uniform(0, 180), _jitter(rng, (60, 140, 50), 30)
            )
        elif kind == "blob":
            ax = rng.uniform(0.05, 0.12) * size
            col = BODY_COLOURS[rng.integers(len(BODY_COLOURS))]
            painter.ellipse(tuple(c), (ax, ax * rng.uniform(0.4, 0.8)), rng.uniform(0, 180), _jitter(rng, col))
        else:
            r = rng.uniform(0.012, 0.025) * size
            painter.ellipse(
                tuple(c),
                (r, r * rng.uniform(0.5, 1.0)),
                rng.uniform(0, 180),
                PALETTE[CROWNS[rng.integers(len(CROWNS))]],
            )


def draw_bird(
    rng: np.random.Generator,
    painter: Painter,
    centre: tuple[float, float],
    length: float,
    species: BirdSpecies,
    detail: float = 1.0,
) -> None:
    """Draw one bird of body length ``length`` pixels, random tilt and facing, species-specific small parts
    (the crown patch and the wing bars scaled by ``detail``)."""
    facing = 1.0 if rng.random() < 0.5 else -1.0
    theta = np.deg2rad(rng.uniform(-20, 20))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cx, cy = centre

    def at(x: float, y: float) -> tuple[float, float]:
        p = rot @ np.array([facing * x * length, y * length])
        return float(cx + p[0]), float(cy + p[1])

    ang = float(np.rad2deg(theta))
    body = _jitter(rng, BODY_COLOURS[rng.integers(len(BODY_COLOURS))])
    dark = tuple(int(c * 0.7) for c in body)
    tail_pts = np.array([at(-0.28, -0.04), at(-0.58, -0.12), at(-0.60, 0.06), at(-0.28, 0.06)])
    painter.polygon(tail_pts, dark)
    tip = body if species.tail_tip == "body" else PALETTE[species.tail_tip]
    painter.polygon(
        np.array([at(-0.50, -0.10), at(-0.58, -0.12), at(-0.60, 0.06), at(-0.52, 0.05)]),
        tuple(int(c) for c in tip) if species.tail_tip != "body" else dark,
    )
    for lx in (-0.05, 0.06):  # legs
        painter.line(at(lx, 0.15), at(lx + 0.02, 0.32), (60, 50, 40), max(1.0, 0.025 * length))
    painter.ellipse(at(0.0, 0.0), (0.32 * length, 0.19 * length), ang, body)
    painter.ellipse(at(-0.04, -0.02), (0.21 * length, 0.10 * length), ang - facing * 8, dark)  # wing
    for i in range(species.wing_bars):
        x = -0.12 + 0.09 * i
        painter.line(at(x, -0.09), at(x + 0.02, 0.07), PALETTE["white"], max(1.0, 0.035 * detail * length))
    head = at(0.30, -0.17)
    painter.ellipse(head, (0.125 * length, 0.125 * length), 0, body)
    painter.ellipse(at(0.31, -0.245), (0.085 * detail * length, 0.05 * detail * length), ang, PALETTE[species.crown])
    painter.polygon(np.array([at(0.40, -0.20), at(0.55, -0.15), at(0.40, -0.12)]), (70, 60, 50))  # beak
    painter.ellipse(at(0.35, -0.18), (0.022 * length, 0.022 * length), 0, (10, 10, 10))  # eye


def render_scene(
    rng: np.random.Generator,
    size: int,
    draw: Callable[[Painter, tuple[float, float], float], None],
    length_range: tuple[float, float] = (0.32, 0.5),
    clutter: int = 14,
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """One (size, size, 3) RGB scene: background, clutter, then one object drawn by ``draw(painter, centre, length)``.

    Returns:
        The image and the object's box (x, y, w, h) in pixels, measured from what was drawn.
    """
    img = render_background(rng, size)
    render_clutter(rng, Painter(img), size, clutter)
    length = rng.uniform(*length_range) * size
    margin = 0.62 * length
    centre = tuple(rng.uniform(margin, size - margin, 2))
    mask = np.zeros((size, size), np.uint8)
    draw(Painter(img, mask), centre, length)
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return img, (float(x0), float(y0), float(x1 - x0), float(y1 - y0))


def render_bird_scene(
    rng: np.random.Generator, size: int, species: BirdSpecies, detail: float = FINE_DETAIL
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """One scene with one bird of ``species`` whose parts have size ``detail``; returns the image and the bird's box
    (x, y, w, h)."""
    return render_scene(rng, size, lambda p, c, n: draw_bird(rng, p, c, n, species, detail))


def write_cub_layout(
    out_dir: Path,
    num_classes: int = 10,
    train_per_class: int = 150,
    test_per_class: int = 50,
    image_size: int = 160,
    seed: int = 0,
    detail: float = FINE_DETAIL,
) -> Path:
    """Generate the fine-grained set in the CUB-200-2011 layout under ``out_dir`` (the species' parts of size
    ``detail``: the demo's ``FINE_DETAIL``, or smaller, so that only pixels beyond the model input resolve them).

    Files: images/<NNN.Class>/<name>.jpg, images.txt, classes.txt, image_class_labels.txt, train_test_split.txt,
    bounding_boxes.txt (1-based ids, boxes as x y width height).

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    species = species_list(num_classes)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, labels, split, boxes = [], [], [], []
    img_id = 0
    for split_id, per_class in ((1, train_per_class), (0, test_per_class)):
        for k, sp in enumerate(species):
            folder = f"{k + 1:03d}.{sp.name}"
            (out_dir / "images" / folder).mkdir(exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([seed, split_id, k, i])
                img, (x, y, w, h) = render_bird_scene(rng, image_size, sp, detail)
                img_id += 1
                rel = f"{folder}/{sp.name}_{split_id}_{i:04d}.jpg"
                ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                (out_dir / "images" / rel).write_bytes(jpg.tobytes())  # a full disk raises (imwrite only says False)
                images.append(f"{img_id} {rel}")
                labels.append(f"{img_id} {k + 1}")
                split.append(f"{img_id} {split_id}")
                boxes.append(f"{img_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
    (out_dir / "classes.txt").write_text("".join(f"{k + 1} {k + 1:03d}.{sp.name}\n" for k, sp in enumerate(species)))
    for name, rows in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("bounding_boxes.txt", boxes),
    ):
        (out_dir / name).write_text("\n".join(rows) + "\n")
    return out_dir


def long_tail_counts(num_classes: int, largest: int, ratio: float) -> np.ndarray:
    """(K,) images per class of an exponential profile: class c keeps round(largest · ratio^(−c / (K − 1))), at least 1
    (class 0 keeps ``largest``, the last class ``largest / ratio``)."""
    decay = np.arange(num_classes) / max(num_classes - 1, 1)
    return np.maximum(1, np.floor(largest * float(ratio) ** -decay + 0.5)).astype(np.int64)


def long_tailed(table: pd.DataFrame, ratio: float) -> pd.DataFrame:
    """The first ``long_tail_counts`` images of every class of a balanced split, in the table's order (the generator
    draws every image independently, so the first ones are a random subset)."""
    counts = long_tail_counts(int(table["label"].max()) + 1, int(table["label"].value_counts().max()), ratio)
    rank = table.groupby("label").cumcount().to_numpy()
    return table[rank < counts[table["label"].to_numpy()]].reset_index(drop=True)


def default_cache_dir() -> Path:
    """Where the demo data set is generated on first use (``$RAMSTRANS_CACHE`` or ~/.cache/ramstrans)."""
    return Path(os.environ.get("RAMSTRANS_CACHE", Path.home() / ".cache" / "ramstrans"))


def _generate(
    out: Path,
    num_classes: int,
    train_per_class: int,
    test_per_class: int,
    image_size: int,
    seed: int,
    detail: float = FINE_DETAIL,
) -> None:
    """Write the set into a temp folder beside ``out``, then rename it to ``out`` (which must not exist or be empty):
    a half-written set never has the final name."""
    import tempfile

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        if is_full_disk(e):
            raise full_disk_error(out) from e
        raise
    try:
        write_cub_layout(tmp, num_classes, train_per_class, test_per_class, image_size, seed, detail)
        tmp.chmod(umask_mode(0o777))  # mkdtemp's private 0700 would survive the rename
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        tmp.rename(out)
    except OSError as e:
        if is_full_disk(e):
            raise full_disk_error(out) from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_synthetic(
    out: Path,
    num_classes: int = 10,
    train_per_class: int = 150,
    test_per_class: int = 50,
    image_size: int = 160,
    seed: int = 0,
    overwrite: bool = False,
    detail: float = FINE_DETAIL,
) -> Path:
    """``ramstrans make-synthetic``: the set at ``out``, which must be new or empty unless ``overwrite``.

    Raises:
        DataError: ``out`` holds files and ``overwrite`` is off.
    """
    out = Path(out).expanduser()
    for name, value, least in (
        ("--train-per-class", train_per_class, 1),
        ("--test-per-class", test_per_class, 1),
        ("--image-size", image_size, SMALLEST_IMAGE),
    ):
        number(value, f"make-synthetic {name}", low=least, integer=True, error=DataError)
    number(detail, "make-synthetic --detail", above=0, high=2, error=DataError)
    species_list(num_classes)  # refuses a class count the generator cannot draw
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise DataError(f"{out} is not empty: give a new or empty folder, or pass --overwrite to replace it")
    with FileLock(out.parent / f".{out.name}.lock", f"the synthetic set {out}"):
        if out.exists() and overwrite:
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)  # the old set goes only after the new one is complete
            try:
                _generate(out, num_classes, train_per_class, test_per_class, image_size, seed, detail)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old)
        else:
            _generate(out, num_classes, train_per_class, test_per_class, image_size, seed, detail)
    return out


def ensure_synthetic(
    root: str,
    num_classes: int,
    train_per_class: int,
    test_per_class: int,
    image_size: int,
    seed: int,
    detail: float = FINE_DETAIL,
) -> Path:
    """The synthetic set's folder, generated there on first use (atomically: a half-written folder never counts).
    Processes that need the same set at once wait for one of them to generate it.

    Args:
        root: folder to use; empty for a cache folder named after the parameters.
        num_classes, train_per_class, test_per_class, image_size, seed, detail: generator parameters.

    Raises:
        DataError: ``root`` holds other files than a synthetic set.
    """
    name = f"synthetic-birds-v2-k{num_classes}-n{train_per_class}-{test_per_class}-s{image_size}-seed{seed}"
    name += "" if detail == FINE_DETAIL else f"-d{detail:g}"  # the demo's set keeps its name
    out = Path(root).expanduser() if root else default_cache_dir() / name
    if out.exists() and not out.is_dir():
        raise DataError(f"data set root {out} is a file; data.root names the data set's folder")
    if (out / "images.txt").is_file():
        return out
    with FileLock(out.parent / f".{out.name}.lock", f"the synthetic set {out}"):
        if (out / "images.txt").is_file():  # another process generated it while this one waited
            return out
        if out.is_dir() and any(out.iterdir()):
            raise DataError(
                f"data.root {out} is not empty and holds no synthetic data set (no images.txt): give an "
                "empty or new folder, or leave data.root empty for the cache"
            )
        for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a generation that was killed
            shutil.rmtree(stale, ignore_errors=True)
        _generate(out, num_classes, train_per_class, test_per_class, image_size, seed, detail)
    return out
