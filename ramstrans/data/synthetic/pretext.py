"""The pretext task: generic objects of many families in clutter, labelled by family, generated on the fly.

Drawn by the same scene code as the fine-grained birds (background, clutter, painter), so a ViT pretrained here learns
to find objects in that clutter, the way ImageNet pretraining prepares a ViT for CUB. Labels are coarse families;
"bird" is one of them with random crown / bars / tail, so no fine-grained species is a pretext label. Items are a
pure function of (seed, position): the stream is never stored, never repeats and is the same for any worker count.
"""

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ramstrans.data.synthetic.birds import BODY_COLOURS, PALETTE, BirdSpecies, Painter, draw_bird, render_scene

__all__ = ["FAMILIES", "PretextDataset", "render_pretext"]

Pt = tuple[float, float]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    if rng.random() < 0.3:  # some objects share the birds' body colours, so colour alone does not name the family
        return BODY_COLOURS[rng.integers(len(BODY_COLOURS))]
    r, g, b = (int(v) for v in rng.integers(20, 236, 3))
    return r, g, b


def _frame(rng: np.random.Generator, centre: Pt, length: float) -> Callable[[float, float], Pt]:
    theta = np.deg2rad(rng.uniform(-30, 30))
    flip = 1.0 if rng.random() < 0.5 else -1.0
    c, s = np.cos(theta), np.sin(theta)
    return lambda x, y: (centre[0] + (c * flip * x - s * y) * length, centre[1] + (s * flip * x + c * y) * length)


def _bird(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    names = list(PALETTE)
    sp = BirdSpecies(
        crown=names[rng.integers(len(names))],
        wing_bars=int(rng.integers(0, 4)),
        tail_tip=(["body"] + names)[rng.integers(len(names) + 1)],
    )
    draw_bird(rng, p, centre, length, sp)


def _fish(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    at, col = _frame(rng, centre, length), _colour(rng)
    p.polygon(np.array([at(-0.30, 0), at(-0.55, -0.2), at(-0.55, 0.2)]), col)
    p.ellipse(at(0, 0), (0.35 * length, 0.16 * length), 0, col)
    p.polygon(np.array([at(-0.05, -0.12), at(0.1, -0.3), at(0.15, -0.1)]), _colour(rng))
    p.ellipse(at(0.22, -0.03), (0.03 * length, 0.03 * length), 0, (10, 10, 10))


def _butterfly(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    at, col = _frame(rng, centre, length), _colour(rng)
    for sx in (-1, 1):
        p.ellipse(at(0.17 * sx, -0.12), (0.18 * length, 0.13 * length), 30 * sx, col)
        p.ellipse(at(0.13 * sx, 0.14), (0.12 * length, 0.09 * length), -30 * sx, _colour(rng))
    p.line(at(0, -0.25), at(0, 0.25), (30, 30, 30), max(1.0, 0.04 * length))


def _flower(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    at, col, n = _frame(rng, centre, length), _colour(rng), int(rng.integers(5, 9))
    p.line(at(0, 0), at(0.05, 0.55), (50, 130, 40), max(1.0, 0.04 * length))
    for k in range(n):
        a = 2 * np.pi * k / n
        p.ellipse(at(0.15 * np.cos(a), 0.15 * np.sin(a) - 0.1), (0.12 * length, 0.05 * length), np.rad2deg(a), col)
    p.ellipse(at(0, -0.1), (0.07 * length, 0.07 * length), 0, _colour(rng))


def _mushroom(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    at, col = _frame(rng, centre, length), _colour(rng)
    p.polygon(np.array([at(-0.07, 0), at(0.07, 0), at(0.08, 0.35), at(-0.08, 0.35)]), (230, 220, 200))
    cap = [at(0.32 * np.cos(a), -0.25 * np.sin(a)) for a in np.linspace(0, np.pi, 12)]
    p.polygon(np.array(cap), col)
    for _ in range(3):
        p.ellipse(
            at(rng.uniform(-0.2, 0.2), rng.uniform(-0.18, -0.05)), (0.03 * length, 0.03 * length), 0, (245, 245, 245)
        )


def _house(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    at, col = _frame(rng, centre, length), _colour(rng)
    p.polygon(np.array([at(-0.3, -0.05), at(0.3, -0.05), at(0.3, 0.35), at(-0.3, 0.35)]), col)
    p.polygon(np.array([at(-0.36, -0.05), at(0, -0.35), at(0.36, -0.05)]), _colour(rng))
    p.polygon(np.array([at(-0.06, 0.12), at(0.06, 0.12), at(0.06, 0.35), at(-0.06, 0.35)]), (60, 40, 30))


def _car(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    at, col = _frame(rng, centre, length), _colour(rng)
    p.polygon(np.array([at(-0.45, -0.05), at(0.45, -0.05), at(0.45, 0.15), at(-0.45, 0.15)]), col)
    p.polygon(np.array([at(-0.25, -0.05), at(-0.15, -0.22), at(0.2, -0.22), at(0.3, -0.05)]), col)
    for wx in (-0.28, 0.28):
        p.ellipse(at(wx, 0.16), (0.09 * length, 0.09 * length), 0, (25, 25, 25))


def _tree(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    at = _frame(rng, centre, length)
    p.polygon(np.array([at(-0.05, 0), at(0.05, 0), at(0.06, 0.45), at(-0.06, 0.45)]), (100, 70, 40))
    green = (int(rng.integers(30, 90)), int(rng.integers(110, 190)), int(rng.integers(30, 90)))
    for dx, dy, r in ((0, -0.2, 0.2), (-0.15, -0.05, 0.15), (0.15, -0.05, 0.15)):
        p.ellipse(at(dx, dy), (r * length, r * length), 0, green)


def _boat(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    at = _frame(rng, centre, length)
    p.polygon(np.array([at(-0.45, 0.1), at(0.45, 0.1), at(0.3, 0.28), at(-0.3, 0.28)]), _colour(rng))
    p.line(at(0, 0.1), at(0, -0.45), (60, 50, 40), max(1.0, 0.03 * length))
    p.polygon(np.array([at(0.02, -0.42), at(0.35, 0.05), at(0.02, 0.05)]), (240, 240, 235))


def _snake(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    at, col = _frame(rng, centre, length), _colour(rng)
    xs = np.linspace(-0.5, 0.5, 9)
    pts = [at(x, 0.15 * np.sin(4 * x + rng.uniform(0, 6))) for x in xs]
    for a, b in zip(pts[:-1], pts[1:]):
        p.line(a, b, col, max(2.0, 0.09 * length))
    p.ellipse(pts[-1], (0.07 * length, 0.05 * length), 0, col)


def _cat(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    at, col = _frame(rng, centre, length), _colour(rng)
    for sx in (-1, 1):
        p.polygon(np.array([at(0.1 * sx, -0.18), at(0.28 * sx, -0.38), at(0.3 * sx, -0.08)]), col)
    p.ellipse(at(0, 0), (0.3 * length, 0.26 * length), 0, col)
    for sx in (-1, 1):
        p.ellipse(at(0.11 * sx, -0.04), (0.05 * length, 0.035 * length), 0, (200, 220, 60))
    p.polygon(np.array([at(-0.04, 0.08), at(0.04, 0.08), at(0, 0.13)]), (230, 120, 140))


def _kite(rng: np.random.Generator, p: Painter, centre: Pt, length: float) -> None:
    at = _frame(rng, centre, length)
    p.polygon(np.array([at(0, -0.4), at(0.25, -0.05), at(0, 0.3), at(-0.25, -0.05)]), _colour(rng))
    p.line(at(0, -0.4), at(0, 0.3), _colour(rng), max(1.0, 0.03 * length))
    p.line(at(0, 0.3), at(0.12, 0.5), (40, 40, 40), max(1.0, 0.02 * length))


FAMILIES: dict[str, Callable] = {
    "bird": _bird,
    "fish": _fish,
    "butterfly": _butterfly,
    "flower": _flower,
    "mushroom": _mushroom,
    "house": _house,
    "car": _car,
    "tree": _tree,
    "boat": _boat,
    "snake": _snake,
    "cat": _cat,
    "kite": _kite,
}


def render_pretext(rng: np.random.Generator, size: int, family: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """One scene with one object of ``FAMILIES``' ``family``-th family; returns image and box (x, y, w, h)."""
    draw = list(FAMILIES.values())[family]
    return render_scene(rng, size, lambda p, c, n: draw(rng, p, c, n), length_range=(0.2, 0.6))


class PretextDataset(Dataset):
    """Generic objects in clutter, labelled by family; item = f(seed, position).

    ``length=None`` makes the training stream endless (``endless`` tells the loader to read positions in order);
    a number gives a fixed evaluation set (use another seed than training).

    Args:
        image_size: side of the generated images.
        seed: stream seed.
        transform: ``Transform``-like callable(image, box, seed) -> (tensor, box).
        length: number of items, or None for endless.
    """

    def __init__(
        self, image_size: int, seed: int, transform: Callable | None = None, length: int | None = None
    ) -> None:
        self.image_size, self.seed, self.transform, self.length = image_size, seed, transform, length
        self.class_names = list(FAMILIES)
        self.endless = length is None

    def __len__(self) -> int:
        return self.length if self.length is not None else 2**62

    def __getitem__(self, item: int) -> dict:
        position, aug_seed = item if isinstance(item, tuple) else (item, item)
        rng = np.random.default_rng([self.seed, position])
        family = int(rng.integers(len(FAMILIES)))
        image, (x, y, w, h) = render_pretext(rng, self.image_size, family)
        box = (x, y, x + w, y + h)
        if self.transform is not None:
            tensor, box = self.transform(image, box, aug_seed)
        else:
            tensor = torch.from_numpy(image).permute(2, 0, 1).float()
        box_t = torch.tensor(box, dtype=torch.float32) if box is not None else torch.full((4,), float("nan"))
        return {"image": tensor, "label": family, "box": box_t, "index": position}
