"""Data sets drawn by the toolkit itself: the synthetic fine-grained birds (``birds``, written in the CUB layout, the
demo's data) and the generic pretext stream (``pretext``, drawn on the fly, for pretraining)."""

from ramstrans.data.synthetic.birds import (
    BirdSpecies,
    default_cache_dir,
    ensure_synthetic,
    make_synthetic,
    render_bird_scene,
    species_list,
    write_cub_layout,
)
from ramstrans.data.synthetic.pretext import FAMILIES, PretextDataset

__all__ = [
    "BirdSpecies",
    "default_cache_dir",
    "ensure_synthetic",
    "make_synthetic",
    "render_bird_scene",
    "species_list",
    "write_cub_layout",
    "FAMILIES",
    "PretextDataset",
]
