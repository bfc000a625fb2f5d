"""NABirds as distributed: the CUB-200-2011 five-file layout with its own ids.

``images.txt`` (``<uuid> <path under images/>``), ``image_class_labels.txt`` (``<uuid> <class id>``),
``train_test_split.txt`` (``<uuid> 1|0``), ``bounding_boxes.txt`` (``<uuid> x y width height``) and ``classes.txt``
(``<class id> <name>``). Image ids are UUIDs; class ids are integers with gaps, and classes.txt also lists the parent
classes of the hierarchy (``Birds``, families, species above their sex / age variants), which have no images. Only the
classes some image is labelled with are kept (555 in the release), as labels 0..K-1 in the order of their ids.
"""

from pathlib import Path

from ramstrans.data.dataset import DatasetIndex
from ramstrans.data.formats.cub import index_records

__all__ = ["load_nabirds"]


def load_nabirds(root: Path) -> DatasetIndex:
    """Index a NABirds folder (the one holding ``images/`` and the five text files).

    Raises:
        DataError: a file is missing or the files disagree (unknown class id, image listed twice, ...).
    """
    return index_records(root, used_classes_only=True)
