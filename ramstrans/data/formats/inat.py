"""iNaturalist 2017 as distributed: ``train2017.json``, ``val2017.json`` and the ``train_val_images/`` tree.

The JSON files are COCO-like: ``images`` (``id``, ``file_name`` relative to the root, e.g.
``train_val_images/Plantae/Bupleurum falcatum/<hash>.jpg``), ``annotations`` (``image_id``, ``category_id``) and
``categories`` (``id``, ``name``, ``supercategory``). Labels join annotations to images by ``image_id``, never by list
position (the two lists are not in the same order in general). The 5,089 category ids become labels 0..K-1 in sorted
order, with their names as class names. The published validation set (``val2017.json``) is the ``test`` split, as in
the fine-grained literature. Indexing is vectorised pandas (``json.load``, a table of each list, a merge on image id):
a few seconds and well under 1 GB for the 579,184 training images (``ramstrans bench inat``).
"""

import json
from pathlib import Path

import pandas as pd

from ramstrans.data.dataset import DataError, DatasetIndex, check_inside_root, data_folder

__all__ = ["load_inat17", "SPLIT_FILES"]

SPLIT_FILES = {"train": "train2017.json", "test": "val2017.json"}
LISTS = {"images": ["id", "file_name"], "annotations": ["image_id", "category_id"], "categories": ["id", "name"]}
MAYBE_OUTSIDE = r"^[/\\]|^[A-Za-z]:|\.\."  # absolute or with '..': the only paths that may leave the root


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path.name} is missing from {path.parent}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path.name} is not valid JSON ({e})") from e
    except RecursionError as e:
        raise DataError(f"{path.name} nests its JSON too deeply to be an iNaturalist file") from e
    if not isinstance(data, dict):
        raise DataError(f"{path.name} must hold one JSON object with images, annotations and categories")
    for key in LISTS:
        if not isinstance(data.get(key), list) or not data[key]:
            hint = (
                " (a test-set JSON carries no labels; give train2017.json and val2017.json)"
                if key == "annotations"
                else ""
            )
            raise DataError(f"{path.name} has no '{key}' list, or it is empty{hint}")
    return data


def _records(records: list, key: str, file: str) -> pd.DataFrame:
    """The needed fields of a list of JSON objects as a table; a missing field is an error naming the entry."""
    columns = LISTS[key]
    try:
        table = pd.DataFrame(records, columns=columns)
    except (TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{file}: '{key}' must be a list of objects") from e
    missing = table.isna()
    if missing.any().any():
        row = int(missing.any(axis=1).to_numpy().argmax())
        col = columns[int(missing.iloc[row].to_numpy().argmax())]
        raise DataError(f"{file}: entry {row} of '{key}' has no '{col}'")
    return table


def _first(values: pd.Series, mask: pd.Series) -> object:
    return values[mask].iloc[0]


def _split_table(root: Path, file: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(path, category_id) per image of one JSON, joined by image id, and the JSON's categories (id, name)."""
    data = _read_json(root / file)
    images, anns, cats = (_records(data.pop(key), key, file) for key in LISTS)
    del data  # the parsed objects are the bulk of the memory: free them before joining
    if images["id"].duplicated().any():
        raise DataError(f"{file} lists image id {_first(images['id'], images['id'].duplicated())} more than once")
    if images["file_name"].duplicated().any():
        dup = _first(images["file_name"], images["file_name"].duplicated())
        raise DataError(f"{file} lists the image {dup} twice")
    maybe = images["file_name"].str.contains(MAYBE_OUTSIDE, regex=True)
    check_inside_root(root, images["file_name"][maybe], file)
    if anns["image_id"].duplicated().any():
        raise DataError(
            f"{file} gives image id {_first(anns['image_id'], anns['image_id'].duplicated())} more than "
            "one annotation (iNaturalist has one label per image)"
        )
    orphan = ~anns["image_id"].isin(images["id"])
    if orphan.any():
        raise DataError(
            f"{file} has an annotation for image id {_first(anns['image_id'], orphan)}, which its images do not list"
        )
    unknown = ~anns["category_id"].isin(cats["id"])
    if unknown.any():
        raise DataError(
            f"{file} gives image id {_first(anns['image_id'], unknown)} the category_id "
            f"{_first(anns['category_id'], unknown)}, which its categories do not define"
        )
    table = images.merge(anns, how="left", left_on="id", right_on="image_id", sort=False)  # by id, not position
    unlabeled = table["category_id"].isna()
    if unlabeled.any():
        raise DataError(f"{file} has no annotation for the image {_first(table['file_name'], unlabeled)}")
    return table[["file_name", "category_id"]].rename(columns={"file_name": "path"}), cats


def _class_ids(cats: list[pd.DataFrame]) -> pd.DataFrame:
    """The categories of all files, sorted by id; one id with two names is an error."""
    allcats = pd.concat(cats, ignore_index=True).drop_duplicates()
    twice = allcats["id"].duplicated(keep=False)
    if twice.any():
        rows = allcats[allcats["id"] == _first(allcats["id"], twice)]
        raise DataError(
            f"{' and '.join(SPLIT_FILES.values())} give category id {rows['id'].iloc[0]} two names "
            f"('{rows['name'].iloc[0]}' and '{rows['name'].iloc[1]}')"
        )
    return allcats.sort_values("id").reset_index(drop=True)


def load_inat17(root: Path) -> DatasetIndex:
    """Index an iNaturalist 2017 folder (``train2017.json``, ``val2017.json``, ``train_val_images/``).

    Raises:
        DataError: a JSON is missing, malformed or without annotations; an image is listed twice or unlabelled; a
            category id is undefined; a path leaves the root.
    """
    root = data_folder(root)
    tables: dict[str, pd.DataFrame] = {}
    cats = []
    for split, file in SPLIT_FILES.items():
        tables[split], c = _split_table(root, file)
        cats.append(c)
    both = tables["test"]["path"].isin(tables["train"]["path"])
    if both.any():
        raise DataError(
            f"{' and '.join(SPLIT_FILES.values())} both list the image {_first(tables['test']['path'], both)}"
        )
    classes = _class_ids(cats)
    label_of = pd.Series(classes.index, index=classes["id"])
    splits = {
        split: pd.DataFrame(
            {"path": t["path"].to_numpy(), "label": t["category_id"].map(label_of).to_numpy(dtype="int64")}
        )
        for split, t in tables.items()
    }
    return DatasetIndex(root=root, class_names=classes["name"].astype(str).tolist(), splits=splits)
