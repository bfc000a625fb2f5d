"""Speed and memory of indexing iNaturalist 2017 (``ramstrans bench inat``).

Writes a generated ``train2017.json`` of the real size (579,184 images, 5,089 categories, the real fields, annotations
in another order than the images, categories shuffled) and a ``val2017.json`` (95,986 images), then times
``load_inat17`` in a fresh Python process and reads that process's peak resident memory (``ru_maxrss``), so the
generator's memory does not count; then times the check that every listed training image exists (an empty file is
written for each), and the set-up of the class-balanced sampler over the training images (its per-image weights and
the first epoch's draws; goal <= 2 s and <= 100 MiB resident beyond the index). Goal of the index: <= 10 s and
<= 1 GiB resident. ``peak_rss_mib`` is the whole process; ``index_rss_mib`` is that peak less the memory resident once
the imports are done (importing torch alone is ~600 MiB on Linux, which a training process pays anyway).
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ramstrans.errors import UsageError

__all__ = ["bench_inat_index", "write_inat_json"]

SUPERCATEGORIES = (
    "Plantae",
    "Insecta",
    "Aves",
    "Reptilia",
    "Mammalia",
    "Fungi",
    "Amphibia",
    "Mollusca",
    "Animalia",
    "Arachnida",
    "Actinopterygii",
    "Chromista",
    "Protozoa",
)
CHUNK = 20000  # entries written per write() call
CHILD = """
import json, os, resource, sys, time
from pathlib import Path
import numpy as np
from ramstrans.data.formats.inat import load_inat17
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if os.path.exists("/proc/self/statm"):  # resident now, in KiB (the import peak may have been higher)
    imported = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
start = time.perf_counter()
index = load_inat17(Path(sys.argv[1]))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
labels = index.splits["train"]["label"].to_numpy()
from ramstrans.data.dataset import missing_files
start = time.perf_counter()
missing = len(missing_files(index.root, index.splits["train"]["path"]))
check_seconds = time.perf_counter() - start
from ramstrans.data.loader import StepSampler, sampling_weights
def resident():  # KiB resident now
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
before = resident()
start = time.perf_counter()
sampler = StepSampler(len(labels), 32, 0, weights=sampling_weights(labels, "class_balanced", len(index.class_names)))
order = sampler.epoch_order(0)
sampler_seconds = time.perf_counter() - start
sampler_kib = resident() - before
drawn = np.bincount(labels[order.numpy()], minlength=len(index.class_names))
print(json.dumps({"seconds": seconds, "check_seconds": check_seconds, "missing": missing, "imported": imported,
                  "sampler_seconds": sampler_seconds, "sampler_kib": sampler_kib,
                  "sampler_classes_drawn": int((drawn > 0).sum()),
                  "peak": peak, "train": len(labels),
                  "test": len(index.splits["test"]), "classes": len(index.class_names),
                  "checksum": int((labels * np.arange(len(labels))).sum())}))
"""


def _category_name(k: int) -> str:
    return f"Genus{k // 7} species{k}"


def write_inat_json(path: Path, num_images: int, num_classes: int, first_id: int = 0, seed: int = 0) -> np.ndarray:
    """Write an iNat 2017-style JSON (images, annotations in a shuffled order, categories); return the category id of
    each image in image order. Every category has images when ``num_images >= num_classes``."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(num_images) % num_classes)[rng.permutation(num_images)]
    hashes = rng.bytes(16 * num_images).hex()
    sizes = rng.integers(300, 801, size=(num_images, 2))
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            '{"info": {"year": 2017, "version": "generated", "description": "ramstrans bench inat"}, '
            '"licenses": [{"id": 1, "name": "CC BY", "url": "http://creativecommons.org/licenses/by/4.0/"}], '
            '"images": ['
        )
        for s in range(0, num_images, CHUNK):
            f.write(
                (", " if s else "")
                + ", ".join(
                    f'{{"license": 1, "file_name": "train_val_images/{SUPERCATEGORIES[c % 13]}/{_category_name(c)}/'
                    f'{hashes[32 * i : 32 * i + 32]}.jpg", "rights_holder": "Observer {i % 9973}", '
                    f'"height": {sizes[i, 0]}, "width": {sizes[i, 1]}, "id": {first_id + i}}}'
                    for i, c in zip(range(s, min(s + CHUNK, num_images)), labels[s : s + CHUNK])
                )
            )
        f.write('], "annotations": [')
        order = rng.permutation(num_images)  # annotation order differs from image order
        for s in range(0, num_images, CHUNK):
            f.write(
                (", " if s else "")
                + ", ".join(
                    f'{{"id": {first_id + j}, "image_id": {first_id + i}, "category_id": {labels[i]}}}'
                    for j, i in zip(range(s, s + CHUNK), order[s : s + CHUNK])
                )
            )
        f.write('], "categories": [')
        f.write(
            ", ".join(
                f'{{"id": {k}, "name": "{_category_name(k)}", "supercategory": "{SUPERCATEGORIES[k % 13]}"}}'
                for k in rng.permutation(num_classes)
            )
        )
        f.write("]}")
    return labels


def _mib(maxrss: int) -> float:
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux


def _touch_images(workdir: Path, json_file: Path) -> None:
    """An empty file for every image the JSON lists (the missing-image check looks them up on disk)."""
    for image in json.loads(json_file.read_text())["images"]:
        path = workdir / image["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def _run(workdir: Path, num_images: int, num_classes: int, num_val: int) -> dict:
    labels = write_inat_json(workdir / "train2017.json", num_images, num_classes, 0, seed=0)
    write_inat_json(workdir / "val2017.json", num_val, num_classes, num_images, seed=1)
    _touch_images(workdir, workdir / "train2017.json")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[2])] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
        ),
    )
    r = subprocess.run([sys.executable, "-c", CHILD, str(workdir)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"the indexing process failed: {r.stderr.strip().splitlines()[-1]}")
    child = json.loads(r.stdout.strip().splitlines()[-1])
    if child["checksum"] != int((labels * np.arange(num_images)).sum()):
        raise RuntimeError("load_inat17 paired images and labels wrongly on the generated JSON")
    return {
        "train_images": child["train"],
        "test_images": child["test"],
        "classes": child["classes"],
        "train_json_mib": round((workdir / "train2017.json").stat().st_size / 2**20, 1),
        "seconds": round(child["seconds"], 2),
        "peak_rss_mib": round(_mib(child["peak"]), 1),
        "rss_after_imports_mib": round(_mib(child["imported"]), 1),
        "index_rss_mib": round(_mib(child["peak"] - child["imported"]), 1),
        "missing_check_seconds": round(child["check_seconds"], 2),
        "missing_found": child["missing"],
        "class_balanced_sampler_seconds": round(child["sampler_seconds"], 3),
        "class_balanced_sampler_rss_mib": round(child["sampler_kib"] / 1024, 1),
        "class_balanced_classes_in_first_epoch": child["sampler_classes_drawn"],
        "goal": "seconds <= 10, index_rss_mib <= 1024, missing_check_seconds <= 5, class_balanced_sampler_seconds <= "
        "2, class_balanced_sampler_rss_mib <= 100",
        "labels_checked": True,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def bench_inat_index(
    num_images: int = 579184, num_classes: int = 5089, workdir: str | Path | None = None, num_val: int = 95986
) -> dict:
    """Index a generated iNat 2017 folder of the real size; seconds and peak resident MiB of the indexing process.

    Args:
        num_images: images of train2017.json.
        num_classes: categories.
        workdir: where to write the JSON files (kept); default: a temporary folder, removed afterwards.
        num_val: images of val2017.json.

    Raises:
        UsageError: fewer images than classes, or fewer than one of either.
    """
    if not 1 <= num_classes <= num_images or num_val < 1:
        raise UsageError(
            f"bench inat needs --num-classes >= 1 and --num-images >= --num-classes (got {num_images} "
            f"images, {num_classes} classes)"
        )
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return _run(Path(workdir), num_images, num_classes, num_val)
    with tempfile.TemporaryDirectory(prefix="ramstrans_inat_") as tmp:
        return _run(Path(tmp), num_images, num_classes, num_val)
