"""Label spaces: the names and counts the papers and releases define, and encoding rules."""

import numpy as np
import pytest

from cxrdistill import labels


@pytest.mark.parametrize(
    "space, count, one_of_k",
    [
        (labels.TBX11K_GLOBAL, 3, True),
        (labels.TBX11K_LOCAL, 3, False),
        (labels.TB_BINARY, 2, True),
        (labels.VINDR_LOCAL, 22, False),
        (labels.VINDR_GLOBAL, 6, False),
        (labels.VINBIG_LOCAL, 14, False),
        (labels.NIH14, 14, False),
        (labels.NORMAL_ABNORMAL, 2, True),
        (labels.PNEUMONIA_BINARY, 2, True),
    ],
)
def test_spaces_have_the_published_sizes(space, count, one_of_k):
    assert len(space) == count and space.one_of_k is one_of_k
    assert labels.get_label_space(space.name) is space


def test_every_tbx11k_json_category_maps_into_the_local_space():
    assert set(labels.TBX11K_JSON_CATEGORIES.values()) == set(labels.TBX11K_LOCAL.names)
    assert set(labels.TBX11K_TO_TB_BINARY) == set(labels.TBX11K_GLOBAL.names)


def test_vinbig_ids_match_the_real_csv():
    import csv
    import gzip

    from support.films import shared_path

    path = shared_path("labels_torchxrayvision", "vinbigdata-train.csv.gz")
    with gzip.open(path, "rt") as handle:
        pairs = {(row["class_id"], row["class_name"]) for row in csv.DictReader(handle)}
    expected = {(str(i), name) for i, name in enumerate(labels.VINBIG_LOCAL.names)}
    expected.add((str(labels.VINBIG_NO_FINDING_ID), labels.VINBIG_NO_FINDING))
    assert pairs == expected


def test_vinbig_findings_are_all_vindr_paper_findings():
    assert set(labels.VINBIG_LOCAL.names) <= set(labels.VINDR_LOCAL.names)


def test_nih_names_match_the_real_label_file():
    import csv
    import gzip

    from support.films import shared_path

    path = shared_path("labels_torchxrayvision", "Data_Entry_2017_v2020.csv.gz")
    with gzip.open(path, "rt") as handle:
        names = {n for row in csv.DictReader(handle) for n in row["Finding Labels"].split("|")}
    assert names == set(labels.NIH14.names) | {labels.NIH_NO_FINDING}


def test_encode_and_decode():
    space = labels.NIH14
    vector = space.encode(["Mass", "Edema"])
    assert vector.dtype == np.float32 and vector.sum() == 2 and vector[space.index("Mass")] == 1
    assert space.decode(vector) == ["Mass", "Edema"]
    assert labels.TBX11K_GLOBAL.decode(np.array([0.1, 0.2, 0.7])) == ["tb"]
    thresholds = np.full(len(space), 0.9)
    assert space.decode(vector * 0.8, thresholds) == []


def test_errors_name_the_problem():
    with pytest.raises(KeyError, match="'Flu' is not a label of 'nih14'"):
        labels.NIH14.encode(["Flu"])
    with pytest.raises(ValueError, match="exactly one label"):
        labels.TBX11K_GLOBAL.encode(["tb", "healthy"])
    with pytest.raises(ValueError, match="repeats names"):
        labels.LabelSpace("x", ("a", "a"), one_of_k=False)
    with pytest.raises(KeyError, match="unknown label space"):
        labels.get_label_space("nope")
