"""Stanford Dogs, iNaturalist 2017, NABirds, image-folder and CSV loaders on fixtures written in the distributed
formats, their answers to bad input, and ``ramstrans check-data``."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import scipy.io

from ramstrans.bench.inat import write_inat_json
from ramstrans.cli import main, parser
from ramstrans.data import DATASETS, DataError, DatasetIndex
from ramstrans.data.formats.dogs import load_dogs
from ramstrans.data.formats.folder import load_csv, load_folder
from ramstrans.data.formats.inat import load_inat17
from ramstrans.data.formats.nabirds import load_nabirds

BOXES = ["x0", "y0", "x1", "y1"]


def _image(path, h=40, w=50):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 120, np.uint8))


# ----------------------------------------------------------------------------------------------------- Stanford Dogs

CHI, JAP, SHI = "n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02086240-Shih-Tzu"
DOGS_TRAIN = [(f"{CHI}/n02085620_1", 1), (f"{SHI}/n02086240_7", 3), (f"{JAP}/n02085782_2", 2)]
DOGS_TEST = [(f"{CHI}/n02085620_9", 1), (f"{SHI}/n02086240_8", 3)]
TWO_DOGS = f"{SHI}/n02086240_7"  # two <object>s: (10, 20, 50, 60) and (40, 5, 90, 45) -> union (10, 5, 90, 60)


def _cells(strings):
    """An N×1 MATLAB cell array of strings, as numpy hands it to savemat."""
    cells = np.empty((len(strings), 1), dtype=object)
    cells[:, 0] = strings
    return cells


def write_dogs_list(path, entries, label_dtype=np.uint8, drop=None):
    mat = {
        "file_list": _cells([f"{n}.jpg" for n, _ in entries]),
        "annotation_list": _cells([n for n, _ in entries]),
        "labels": np.array([[lab] for _, lab in entries], dtype=label_dtype),
    }
    mat.pop(drop, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), mat)


def _voc(boxes):
    objs = "".join(
        f"<object><name>dog</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for a, b, c, d in boxes
    )
    return (
        f"<annotation><folder>02085620</folder><filename>%s</filename><source><database>ImageNet database"
        f"</database></source><size><width>100</width><height>80</height><depth>3</depth></size>"
        f"<segment>0</segment>{objs}</annotation>"
    )


@pytest.fixture
def dogs_root(tmp_path):
    root = tmp_path / "StanfordDogs"
    for i, (name, _) in enumerate(DOGS_TRAIN + DOGS_TEST):
        _image(root / "Images" / f"{name}.jpg", 80, 100)
        boxes = [(10, 20, 50, 60), (40, 5, 90, 45)] if name == TWO_DOGS else [(i, i + 1, 60 + i, 70)]
        (root / "Annotation" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "Annotation" / name).write_text(_voc(boxes) % name.split("/")[1])  # no extension, as distributed
    write_dogs_list(root / "lists" / "train_list.mat", DOGS_TRAIN)
    write_dogs_list(root / "lists" / "test_list.mat", DOGS_TEST, label_dtype=np.float64)  # MATLAB's double
    return root


def test_dogs_reads_mat_cells_labels_folders_and_union_boxes(dogs_root):
    idx = load_dogs(dogs_root)
    assert idx.class_names == [CHI, JAP, SHI]
    train, test = idx.split("train"), idx.split("test")
    assert train["path"].tolist() == [f"Images/{n}.jpg" for n, _ in DOGS_TRAIN]
    assert train["label"].tolist() == [0, 2, 1] and test["label"].tolist() == [0, 2]
    assert train[BOXES].values.tolist() == [[0, 1, 60, 70], [10, 5, 90, 60], [2, 3, 62, 70]]
    assert idx.has_boxes and train["label"].dtype == np.int64


def test_dogs_lists_at_the_root_and_no_annotation_folder(dogs_root):
    for name in ("train_list.mat", "test_list.mat"):
        (dogs_root / "lists" / name).rename(dogs_root / name)
    (dogs_root / "Annotation").rename(dogs_root / "Annotation_elsewhere")
    idx = load_dogs(dogs_root)
    assert not idx.has_boxes and idx.split("test")["label"].tolist() == [0, 2]


def _dogs_list(root, entries, **kw):
    write_dogs_list(root / "lists" / "train_list.mat", entries, **kw)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda r: (r / "lists" / "test_list.mat").unlink(), r"test_list.mat is missing \(looked in .*lists and "),
        (
            lambda r: _dogs_list(r, DOGS_TRAIN[:2] + [(DOGS_TRAIN[2][0], 4)]),
            r"train_list.mat gives n02085782-Japanese_spaniel/n02085782_2.jpg the label 4, outside 1..3",
        ),
        (
            lambda r: _dogs_list(r, DOGS_TRAIN + [DOGS_TEST[0]]),
            rf"train_list.mat and test_list.mat list the image {CHI}/n02085620_9.jpg twice",
        ),
        (lambda r: _dogs_list(r, DOGS_TRAIN + [DOGS_TRAIN[0]]), r"train_list.mat lists the image .*_1.jpg twice"),
        (
            lambda r: _dogs_list(r, DOGS_TRAIN + [("../../etc/passwd", 1)]),
            "lists the path '../../etc/passwd.jpg', which leaves the data set root",
        ),
        (lambda r: _dogs_list(r, DOGS_TRAIN, drop="labels"), "train_list.mat has no variable 'labels'"),
        (
            lambda r: _dogs_list(r, [(DOGS_TRAIN[0][0], 2), (DOGS_TRAIN[1][0], 3), (DOGS_TRAIN[2][0], 1)]),
            "give the label 1 to images of the folders n02085782-Japanese_spaniel and n02085620-Chihuahua",
        ),
        (lambda r: (r / "lists" / "train_list.mat").write_bytes(b"not a mat file"), "train_list.mat is not a readable"),
        (lambda r: (r / "Annotation" / TWO_DOGS).write_text(_voc([]) % "x"), r"n02086240_7 has no bndbox"),
        (lambda r: (r / "Annotation" / TWO_DOGS).unlink(), r"annotation .*n02086240_7 is missing"),
    ],
)
def test_dogs_bad_inputs(dogs_root, edit, match):
    edit(dogs_root)
    with pytest.raises(DataError, match=match):
        load_dogs(dogs_root)


# ------------------------------------------------------------------------------------------------ iNaturalist 2017

INAT_CATS = [
    {"id": 40, "name": "Cardinalis cardinalis", "supercategory": "Aves"},
    {"id": 5, "name": "Quercus agrifolia", "supercategory": "Plantae"},
    {"id": 12, "name": "Turdus migratorius", "supercategory": "Aves"},
]
ROBIN, OAK, CARDINAL = (
    "train_val_images/Aves/Turdus migratorius",
    "train_val_images/Plantae/Quercus agrifolia",
    "train_val_images/Aves/Cardinalis cardinalis",
)


def _inat(images, anns, cats=INAT_CATS):
    return {
        "info": {"year": 2017},
        "licenses": [],
        "images": [
            {"license": 1, "file_name": f, "rights_holder": "x", "height": 40, "width": 50, "id": i} for i, f in images
        ],
        "annotations": [{"id": k, "image_id": i, "category_id": c} for k, (i, c) in enumerate(anns)],
        "categories": cats,
    }


TRAIN_JSON = _inat(
    [(10, f"{ROBIN}/a.jpg"), (3, f"{OAK}/b.jpg"), (7, f"{CARDINAL}/c.jpg")], [(7, 40), (10, 12), (3, 5)]
)  # annotations in another order than the images
VAL_JSON = _inat([(20, f"{ROBIN}/d.jpg"), (21, f"{OAK}/e.jpg")], [(21, 5), (20, 12)])


@pytest.fixture
def inat_root(tmp_path):
    root = tmp_path / "inat2017"
    root.mkdir()
    (root / "train2017.json").write_text(json.dumps(TRAIN_JSON))
    (root / "val2017.json").write_text(json.dumps(VAL_JSON))
    for d in (TRAIN_JSON, VAL_JSON):
        for im in d["images"]:
            _image(root / im["file_name"])
    return root


def test_inat_joins_labels_by_image_id_and_sorts_categories(inat_root):
    idx = load_inat17(inat_root)
    assert idx.class_names == ["Quercus agrifolia", "Turdus migratorius", "Cardinalis cardinalis"]  # ids 5, 12, 40
    train, test = idx.split("train"), idx.split("test")
    assert train["path"].tolist() == [f"{ROBIN}/a.jpg", f"{OAK}/b.jpg", f"{CARDINAL}/c.jpg"]
    assert train["label"].tolist() == [1, 0, 2]  # by position it would be [2, 1, 0]
    assert test["label"].tolist() == [1, 0] and not idx.has_boxes


def test_inat_generated_json_pairs_every_image(tmp_path):
    labels = write_inat_json(tmp_path / "train2017.json", 300, 17, 0, seed=3)
    write_inat_json(tmp_path / "val2017.json", 40, 17, 300, seed=4)
    idx = load_inat17(tmp_path)
    assert idx.split("train")["label"].tolist() == labels.tolist() and len(idx.class_names) == 17


def _edit_json(root, file, fn):
    data = json.loads((root / file).read_text())
    fn(data)
    (root / file).write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit,match",
    [
        (
            lambda r: _edit_json(r, "val2017.json", lambda d: d.pop("annotations")),
            "val2017.json has no 'annotations' list, or it is empty",
        ),
        (lambda r: (r / "train2017.json").unlink(), "train2017.json is missing from"),
        (lambda r: (r / "train2017.json").write_text("{not json"), "train2017.json is not valid JSON"),
        (
            lambda r: _edit_json(r, "train2017.json", lambda d: d["annotations"][0].update(category_id=99)),
            "train2017.json gives image id 7 the category_id 99, which its categories do not define",
        ),
        (
            lambda r: _edit_json(r, "train2017.json", lambda d: d["images"][1].update(file_name=f"{ROBIN}/a.jpg")),
            "train2017.json lists the image .*/a.jpg twice",
        ),
        (
            lambda r: _edit_json(r, "val2017.json", lambda d: d["images"][0].update(file_name=f"{OAK}/b.jpg")),
            "train2017.json and val2017.json both list the image .*/b.jpg",
        ),
        (
            lambda r: _edit_json(r, "train2017.json", lambda d: d["images"][2].update(file_name="../outside.jpg")),
            "train2017.json lists the path '../outside.jpg', which leaves the data set root",
        ),
        (
            lambda r: _edit_json(r, "train2017.json", lambda d: d["annotations"].pop(0)),
            "train2017.json has no annotation for the image .*/c.jpg",
        ),
        (
            lambda r: _edit_json(
                r, "train2017.json", lambda d: d["annotations"].append({"image_id": 3, "category_id": 5})
            ),
            "train2017.json gives image id 3 more than one annotation",
        ),
        (
            lambda r: _edit_json(r, "val2017.json", lambda d: d["annotations"][0].update(image_id=99)),
            "val2017.json has an annotation for image id 99, which its images do not list",
        ),
        (
            lambda r: _edit_json(r, "val2017.json", lambda d: d["images"][0].pop("file_name")),
            "val2017.json: entry 0 of 'images' has no 'file_name'",
        ),
        (
            lambda r: _edit_json(r, "val2017.json", lambda d: d["categories"][0].update(name="Other")),
            "give category id 40 two names",
        ),
    ],
)
def test_inat_bad_inputs(inat_root, edit, match):
    edit(inat_root)
    with pytest.raises(DataError, match=match):
        load_inat17(inat_root)


# ----------------------------------------------------------------------------------------------------------- NABirds

U = [
    "4c3e5f3e-0b4a-4c29-9e3b-2c1a7e8d9f01",
    "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    "ffe0c8a2-1111-4b2c-9d3e-5f6a7b8c9d0e",
    "12345678-9abc-4def-8123-456789abcdef",
]


@pytest.fixture
def nabirds_root(tmp_path):
    root = tmp_path / "nabirds"
    images = [(U[0], 295), (U[1], 1010), (U[2], 313), (U[3], 295)]
    paths = {u: f"{c:04d}/{u.replace('-', '')}.jpg" for u, c in images}
    for p in paths.values():
        _image(root / "images" / p)
    root.joinpath("images.txt").write_text("".join(f"{u} {paths[u]}\n" for u, _ in images))
    root.joinpath("classes.txt").write_text(
        "0 Birds\n1 Perching Birds\n295 American Robin\n"
        "313 Northern Cardinal (Adult Male)\n314 Northern Cardinal\n"
        "1010 Zebra Finch\n"
    )  # 0, 1, 314 are parents without images
    root.joinpath("image_class_labels.txt").write_text("".join(f"{u} {c}\n" for u, c in images))
    root.joinpath("train_test_split.txt").write_text(f"{U[0]} 1\n{U[1]} 1\n{U[2]} 0\n{U[3]} 0\n")
    root.joinpath("bounding_boxes.txt").write_text("".join(f"{u} {i} {2 * i} 10 20\n" for i, u in enumerate(U)))
    return root


def test_nabirds_uuids_and_class_gaps(nabirds_root):
    idx = load_nabirds(nabirds_root)
    assert idx.class_names == ["American Robin", "Northern Cardinal (Adult Male)", "Zebra Finch"]
    train, test = idx.split("train"), idx.split("test")
    # UUIDs are not numbers: rows come in the order of the id strings
    assert train["path"].tolist() == [
        f"images/1010/{U[1].replace('-', '')}.jpg",
        f"images/0295/{U[0].replace('-', '')}.jpg",
    ]
    assert train["label"].tolist() == [2, 0] and test["label"].tolist() == [0, 1]
    assert train[BOXES].values.tolist() == [[1, 2, 11, 22], [0, 0, 10, 20]]


@pytest.mark.parametrize(
    "edit,match",
    [
        (
            lambda r: (r / "image_class_labels.txt").write_text(
                (r / "image_class_labels.txt").read_text().replace(f"{U[1]} 1010", f"{U[1]} 9999")
            ),
            f"image_class_labels.txt gives image {U[1]} the label 9999, which classes.txt does not define",
        ),
        (lambda r: (r / "classes.txt").unlink(), "classes.txt is missing from"),
        (
            lambda r: (r / "images.txt").write_text((r / "images.txt").read_text() + f"{U[0]} 0295/again.jpg\n"),
            f"images.txt lists id {U[0]} more than once",
        ),
    ],
)
def test_nabirds_bad_inputs(nabirds_root, edit, match):
    edit(nabirds_root)
    with pytest.raises(DataError, match=match):
        load_nabirds(nabirds_root)


# ---------------------------------------------------------------------------------------------- folder tree and CSV


def test_image_folder(tmp_path):
    for p in ("train/cat_b/x.png", "train/cat_a/y.jpg", "train/cat_a/sub/z.JPG", "test/cat_a/t.jpg", "val/cat_b/v.jpg"):
        _image(tmp_path / p)
    (tmp_path / "train" / "cat_a" / "notes.txt").write_text("not an image")
    idx = load_folder(tmp_path)
    assert idx.class_names == ["cat_a", "cat_b"]
    assert idx.split("train")["path"].tolist() == ["train/cat_a/y.jpg", "train/cat_a/sub/z.JPG", "train/cat_b/x.png"]
    assert idx.split("train")["label"].tolist() == [0, 0, 1]
    assert idx.split("val")["label"].tolist() == [1] and idx.split("test")["path"].tolist() == ["test/cat_a/t.jpg"]
    _image(tmp_path / "test" / "cat_c" / "u.jpg")
    with pytest.raises(DataError, match="cat_c is a class folder that train/ does not have"):
        load_folder(tmp_path)
    (tmp_path / "test").rename(tmp_path / "testing")
    with pytest.raises(DataError, match="has no test/ folder"):
        load_folder(tmp_path)


def test_csv_one_file_with_split_and_numeric_labels(tmp_path):
    (tmp_path / "data.csv").write_text(
        "path,label,split,x0,y0,x1,y1\nimg/a.jpg,10,train,0,0,5,5\n"
        "img/b.jpg,2,train,1,1,4,4\nimg/c.jpg,10,test,0,0,2,2\n"
    )
    for idx in (load_csv(tmp_path), load_csv(tmp_path / "data.csv")):
        assert idx.class_names == ["2", "10"] and idx.root == tmp_path  # 2 < 10 as numbers
        assert idx.split("train")["label"].tolist() == [1, 0] and idx.split("test")["label"].tolist() == [1]
        assert idx.has_boxes and idx.split("train")[BOXES].values.tolist()[1] == [1, 1, 4, 4]


def test_csv_per_split_files_and_bad_inputs(tmp_path):
    (tmp_path / "train.csv").write_text("path,label\na.jpg,sparrow\nb.jpg,finch\n")
    (tmp_path / "test.csv").write_text("path,label\nc.jpg,sparrow\n")
    idx = load_csv(tmp_path)
    assert idx.class_names == ["finch", "sparrow"] and idx.split("train")["label"].tolist() == [1, 0]
    (tmp_path / "test.csv").write_text("path,label\na.jpg,sparrow\n")
    with pytest.raises(DataError, match="test.csv lists the image a.jpg twice"):
        load_csv(tmp_path)
    (tmp_path / "test.csv").write_text("path,label\n../../etc/passwd,sparrow\n")
    with pytest.raises(DataError, match="test.csv lists the path '../../etc/passwd', which leaves"):
        load_csv(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "labels.csv").write_text("path,label\na.jpg,x\n")
    with pytest.raises(DataError, match="labels.csv has no 'split' column"):
        load_csv(tmp_path / "other")


# ------------------------------------------------------------------------------------------------------- check-data


def _check(capsys, *argv):
    code = main(["check-data", "--no-progress", *argv])
    return code, capsys.readouterr().out


def test_check_data_clean_and_json(dogs_root, capsys):
    code, out = _check(capsys, "--dataset", "dogs", "--root", str(dogs_root))
    assert code == 0 and "train: 3 images, 3 classes" in out and "no problems found" in out
    code, out = _check(capsys, "--dataset", "dogs", "--root", str(dogs_root), "--json")
    report = json.loads(out)
    assert code == 0 and report["dataset"] == "dogs" and report["problems"] == []
    assert report["splits"] == {"train": {"images": 3, "classes": 3}, "test": {"images": 2, "classes": 2}}


def test_check_data_lists_missing_and_corrupt_images(dogs_root, capsys):
    (dogs_root / "Images" / f"{DOGS_TRAIN[0][0]}.jpg").unlink()
    (dogs_root / "Images" / f"{DOGS_TEST[1][0]}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code, out = _check(capsys, "--dataset", "dogs", "--root", str(dogs_root), "--workers", "2")
    assert code == 1 and "2 problems:" in out
    assert f"missing: train image Images/{DOGS_TRAIN[0][0]}.jpg does not exist" in out
    assert f"unreadable: test image Images/{DOGS_TEST[1][0]}.jpg cannot be decoded" in out
    code, out = _check(capsys, "--dataset", "dogs", "--root", str(dogs_root), "--json")
    problems = json.loads(out)["problems"]
    assert code == 1 and [(p["kind"], p["split"], p["path"]) for p in problems] == [
        ("missing", "train", f"Images/{DOGS_TRAIN[0][0]}.jpg"),
        ("unreadable", "test", f"Images/{DOGS_TEST[1][0]}.jpg"),
    ]
    code, out = _check(capsys, "--dataset", "dogs", "--root", str(dogs_root), "--json", "--no-decode")
    assert code == 1 and [p["kind"] for p in json.loads(out)["problems"]] == ["missing"]


def test_check_data_structural_error_is_the_one_problem(inat_root, capsys):
    _edit_json(inat_root, "val2017.json", lambda d: d.pop("annotations"))
    code, out = _check(capsys, "--dataset", "inat17", "--root", str(inat_root), "--json")
    report = json.loads(out)
    assert code == 1 and report["splits"] == {} and len(report["problems"]) == 1
    assert (
        report["problems"][0]["kind"] == "structure"
        and "val2017.json has no 'annotations'" in report["problems"][0]["message"]
    )


def test_check_data_duplicates_and_labels(nabirds_root, capsys, monkeypatch):
    code, out = _check(capsys, "--dataset", "nabirds", "--root", str(nabirds_root))
    assert code == 0 and "test: 2 images, 2 classes" in out
    a, b = load_nabirds(nabirds_root).split("train")["path"]
    bad = DatasetIndex(
        nabirds_root,
        ["x", "y"],
        {
            "train": pd.DataFrame({"path": [a, b], "label": [0, 2]}),
            "test": pd.DataFrame({"path": [a.replace("/", "/./", 1)], "label": [1]}),
        },
    )
    monkeypatch.setitem(DATASETS, "broken", lambda root: bad)  # a loader breaking the DatasetIndex contract
    code, out = _check(capsys, "--dataset", "broken", "--root", str(nabirds_root), "--json")
    problems = json.loads(out)["problems"]
    assert code == 1 and [(p["kind"], p["path"]) for p in problems] == [("label", b), ("duplicate", a)]
    assert problems[0]["message"] == f"train image {b} has the label 2, outside 0..1"
    assert problems[1]["message"] == f"image {a} is listed 2 times (train, test)"


def test_check_data_unusable_input_exits_2(tmp_path, capsys):
    assert main(["check-data", "--dataset", "dogs", "--root", str(tmp_path / "nowhere")]) == 2
    assert "data set root" in capsys.readouterr().err
    assert main(["check-data", "--dataset", "imagenet", "--root", str(tmp_path)]) == 2
    assert "unknown data set 'imagenet'" in capsys.readouterr().err


def test_bench_subcommand_defaults_to_core():
    assert parser().parse_args(["bench"]).what == "core"
    a = parser().parse_args(["bench", "inat", "--num-images", "10"])
    assert a.what == "inat" and a.num_images == 10 and a.num_classes == 5089
