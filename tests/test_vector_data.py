"""Your own vectors (vsmd.datamodules.vectors / vector_files): every format, columns, the held-out split, the
standardisation, the seeded training stream, the toys' unchanged batches, and a clear error for each bad file."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vsmd.datamodules import Toy2DDataModule, VectorDataModule, load_vectors


@pytest.fixture()
def table() -> pd.DataFrame:
    g = np.random.default_rng(0)
    return pd.DataFrame(g.standard_normal((50, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -2.0], columns=["a", "b", "c"])


def written(tmp_path: Path, frame: pd.DataFrame, fmt: str) -> Path:
    p = tmp_path / f"x.{fmt}"
    x = frame.to_numpy()
    if fmt == "npy":
        np.save(p, x)
    elif fmt == "npz":
        np.savez(p, vectors=x)
    elif fmt == "csv":
        frame.to_csv(p, index=False)
    else:
        frame.to_parquet(p)
    return p


@pytest.mark.parametrize("fmt", ["npy", "npz", "csv", "parquet"])
def test_every_format_gives_the_same_table(tmp_path: Path, table: pd.DataFrame, fmt: str) -> None:
    t = load_vectors(written(tmp_path, table, fmt))
    np.testing.assert_array_equal(t.values, table.to_numpy())  # CSV: pandas writes floats round-trip exactly
    assert t.columns == (["0", "1", "2"] if fmt in ("npy", "npz") else ["a", "b", "c"])


def test_columns_by_name_and_position_and_npz_key(tmp_path: Path, table: pd.DataFrame) -> None:
    csv = written(tmp_path, table, "csv")
    t = load_vectors(csv, columns=["c", "a"])
    assert t.columns == ["c", "a"] and np.array_equal(t.values, table[["c", "a"]].to_numpy())
    assert np.array_equal(load_vectors(csv, columns=[2, -3]).values, t.values)
    t = load_vectors(written(tmp_path, table, "npy"), columns=[np.int64(1)])
    assert t.columns == ["1"] and np.array_equal(t.values, table[["b"]].to_numpy())
    np.savez(tmp_path / "two.npz", x=table.to_numpy(), labels=np.arange(50))
    assert np.array_equal(load_vectors(tmp_path / "two.npz", key="x").values, table.to_numpy())


def test_split_standardisation_and_stream(tmp_path: Path, table: pd.DataFrame) -> None:
    dm = VectorDataModule(str(written(tmp_path, table, "csv")), val_fraction=0.2, batch_size=8, seed=3)
    x = table.to_numpy()
    assert dm.data_dim == 3 and dm.column_names == ["a", "b", "c"]
    assert len(dm.heldout_rows) == 10 and len(dm.train_rows) == 40
    assert sorted([*dm.heldout_rows, *dm.train_rows]) == list(range(50))
    mean, std = dm.standardisation
    np.testing.assert_allclose(mean.numpy(), x[dm.train_rows].mean(0), rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), x[dm.train_rows].std(0), rtol=1e-12)
    train = dm.train_set()
    assert train.dtype == torch.float32 and torch.allclose(train.double().mean(0), torch.zeros(3, dtype=torch.float64),
                                                           atol=1e-6)
    assert torch.allclose(train.double().std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-6)
    held = dm.fixed_set("test")
    assert torch.equal(held, dm.fixed_set("val")) and held.shape == (10, 3)
    np.testing.assert_allclose(dm.unstandardised(held.double()).numpy(), x[dm.heldout_rows], atol=1e-5)
    assert next(iter(dm.test_dataloader())).shape == (10, 3)
    assert next(iter(dm.predict_dataloader()))[0].shape == (1000,)
    # the same seed gives the same split and batches; another seed another split
    again = VectorDataModule(str(written(tmp_path, table, "csv")), val_fraction=0.2, batch_size=8, seed=3)
    assert np.array_equal(again.heldout_rows, dm.heldout_rows)
    assert not np.array_equal(VectorDataModule(str(tmp_path / "x.csv"), val_fraction=0.2, seed=4).heldout_rows,
                              dm.heldout_rows)
    it, it2 = iter(dm.train_dataloader()), iter(again.train_dataloader())
    first = [next(it) for _ in range(10)]
    assert all(torch.equal(b, next(it2)) for b in first)
    # an epoch is 40 // 8 = 5 batches of distinct training rows
    rows = torch.cat(first[:5])
    assert rows.shape == (40, 3) and len({tuple(r.tolist()) for r in rows}) == 40
    assert {tuple(r.tolist()) for r in rows} == {tuple(r.tolist()) for r in train}
    # the stream's position is saved in checkpoints: a resumed loader goes on where the saved one was
    loader = dm.train_dataloader()
    state = loader.state_dict()
    resumed = again.train_dataloader()
    resumed.load_state_dict({"position": 7})
    assert torch.equal(next(iter(resumed)), first[7]) and state == {"position": 0}


def test_no_standardisation_keeps_the_units(tmp_path: Path, table: pd.DataFrame) -> None:
    dm = VectorDataModule(str(written(tmp_path, table, "parquet")), standardise=False)
    assert dm.standardisation is None
    np.testing.assert_allclose(dm.fixed_set("val").numpy(), table.to_numpy()[dm.heldout_rows], rtol=1e-6)
    x = torch.randn(4, 3)
    assert dm.unstandardised(x) is x


def test_batch_larger_than_the_training_rows(tmp_path: Path, table: pd.DataFrame) -> None:
    dm = VectorDataModule(str(written(tmp_path, table, "npy")), batch_size=1000)
    it = iter(dm.train_dataloader())
    assert next(it).shape == (45, 3) and next(it).shape == (45, 3)


TOY_BATCHES = {  # sha256 of 3 training batches and the val, test and predict loaders, computed before the toys
    # shared their loaders with VectorDataModule (main at 556d7a3)
    "spiral": "39c6445598e01be4caaae99b81a0cdffbd66cd58a8c167b06505ac17ae9100a6",
    "checkerboard": "6640130f50960a2aa9f4c53aedcf43bd5f025b6efa5c46fdc6c9886d2202d419",
}


@pytest.mark.parametrize("kwargs", [
    dict(dataset="spiral", stretch=[1, 8], batch_size=64, n_val=100, n_test=150, n_predict=40, seed=3),
    dict(dataset="checkerboard", stretch=[6, 1], batch_size=64, n_val=100, n_test=150, n_predict=40, seed=0,
         rotate=30.0)], ids=["spiral", "checkerboard"])
def test_the_toys_give_the_same_batches_as_before(kwargs) -> None:
    dm = Toy2DDataModule(**kwargs)
    h = hashlib.sha256()
    it = iter(dm.train_dataloader())
    for _ in range(3):
        h.update(next(it).numpy().tobytes())
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        for b in loader:
            h.update((b[0] if isinstance(b, (list, tuple)) else b).numpy().tobytes())
    assert h.hexdigest() == TOY_BATCHES[kwargs["dataset"]]
    assert dm.standardisation is None


# ------------------------------------------------------------------------------------------------------------
# every bad file: an error that names the file and says what to change
def _csv(tmp_path: Path, text: str, name: str = "bad.csv", encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"vector file not found: .*nope\.csv; pass --data.init_args.path"):
        VectorDataModule(str(tmp_path / "nope.csv"))


def test_unknown_extension(tmp_path: Path) -> None:
    p = _csv(tmp_path, "a,b\n1,2\n", "x.txt")
    with pytest.raises(ValueError, match=r"x\.txt: unknown vector file format '\.txt'; use \.npy, \.npz, \.csv"):
        load_vectors(p)


def test_npz_with_several_arrays_and_no_key(tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", x=np.zeros((5, 2)), y=np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"two\.npz holds 2 arrays \(x, y\); choose one with key"):
        load_vectors(tmp_path / "two.npz")
    with pytest.raises(ValueError, match=r"two\.npz has no array 'z'; its arrays are x, y"):
        load_vectors(tmp_path / "two.npz", key="z")


def test_non_numeric_column(tmp_path: Path) -> None:
    p = _csv(tmp_path, "a,label,b\n1,cat,2\n3,dog,4\n")
    with pytest.raises(ValueError, match=r"bad\.csv: column 'label' is not numeric \(object; row 1 \(line 2 of the "
                                         r"file\): 'cat'\); convert it to numbers, or leave it out with columns: "
                                         r"\['a', 'b'\]"):
        load_vectors(p)
    assert load_vectors(p, columns=["a", "b"]).values.tolist() == [[1, 2], [3, 4]]


def test_decimal_comma_is_named(tmp_path: Path) -> None:
    p = _csv(tmp_path, "a;b\n1,5;2\n3;4\n")
    with pytest.raises(ValueError, match=r"column 'a' is not numeric .*'1,5' \(a decimal comma"):
        load_vectors(p, delimiter=";")


def test_wrong_separator(tmp_path: Path) -> None:
    p = _csv(tmp_path, "a;b;c\n1;2;3\n4;5;6\n")
    with pytest.raises(ValueError, match=r"bad\.csv reads as a single column 'a;b;c' with delimiter ','.*set "
                                         r"--data.init_args.delimiter ';'"):
        load_vectors(p)
    assert load_vectors(p, delimiter=";").values.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_bad_encoding(tmp_path: Path) -> None:
    p = _csv(tmp_path, "température,b\n1,2\n3,4\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"bad\.csv is not utf-8 text .*save it as UTF-8, or set its encoding "
                                         r"\(e\.g\. --data\.init_args\.encoding latin-1\)"):
        load_vectors(p)
    assert load_vectors(p, encoding="latin-1").columns == ["température", "b"]


@pytest.mark.parametrize("text, where", [
    ("a,b\n1,2\n3,\n5,6\n", r"row 2 \(line 3 of the file\), column 'b'"),
    ("a,b\n1,2\n3,4\ninf,6\n", r"row 3 \(line 4 of the file\), column 'a'"),
    ("a,b\n1,2\n3,4\n5,nan\n", r"row 3 \(line 4 of the file\), column 'b'"),
])
def test_nan_and_inf_name_the_row_and_column(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ValueError, match=rf"bad\.csv has 1 missing \(NaN\) or infinite values, the first at {where}; "
                                         r"remove or impute them first"):
        load_vectors(_csv(tmp_path, text))


def test_nan_in_an_array_names_the_index(tmp_path: Path) -> None:
    x = np.zeros((4, 3))
    x[2, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"x\.npy has 1 missing .* the first at row index 2, column index 1"):
        load_vectors(tmp_path / "x.npy")


def test_values_too_large_for_float32(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"too large for float32 .* row 1 \(line 2 of the file\), column 'b'.*rescale"):
        load_vectors(_csv(tmp_path, "a,b\n1,1e300\n2,3\n"))


@pytest.mark.parametrize("shape, fix", [((6,), "x.reshape(-1, 1)"), ((3, 2, 2), "x.reshape(len(x), -1)")])
def test_array_of_the_wrong_shape(tmp_path: Path, shape, fix: str) -> None:
    np.save(tmp_path / "x.npy", np.zeros(shape))
    with pytest.raises(ValueError, match=r"x\.npy: vsmd needs a 2-D array \(one row per vector.*got shape "
                                         + re.escape(f"{shape}; ") + ".*" + re.escape(fix)):
        load_vectors(tmp_path / "x.npy")


def test_too_few_rows_for_the_split(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((12, 2)))
    with pytest.raises(ValueError, match=r"x\.npy has 12 rows: val_fraction 0\.1 holds out 1 and trains on 11, but "
                                         r"each needs at least 2 rows; add rows or change val_fraction"):
        VectorDataModule(str(tmp_path / "x.npy"))
    assert len(VectorDataModule(str(tmp_path / "x.npy"), val_fraction=0.25).heldout_rows) == 3


def test_unknown_column_name_and_position(tmp_path: Path) -> None:
    p = _csv(tmp_path, "a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"bad\.csv has no column 'z'; its columns are 'a', 'b': fix columns"):
        load_vectors(p, columns=["a", "z"])
    with pytest.raises(ValueError, match=r"column position 5 is out of range; the file has 2 columns"):
        load_vectors(p, columns=[5])
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"x\.npy: an array has no column names .*give column positions"):
        load_vectors(tmp_path / "x.npy", columns=["a"])


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_text("1,2\n3,4\n"), r"holds numbers, not column names; add a header line"),
    (lambda p: p.write_text(""), r"is empty; write a header line"),
    (lambda p: p.write_text("a,b\n"), r"has no rows of data"),
    (lambda p: p.write_text("a,b\n1,2\n3,4,5\n"), r"the rows do not all have the header's number of fields"),
])
def test_other_bad_csv_files(tmp_path: Path, make, match: str) -> None:
    p = tmp_path / "bad.csv"
    make(p)
    with pytest.raises(ValueError, match=match):
        load_vectors(p)


def test_other_bad_array_and_parquet_files(tmp_path: Path) -> None:
    (tmp_path / "t.npy").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"t\.npy is not an \.npy array"):
        load_vectors(tmp_path / "t.npy")
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match=r"s\.npy holds text"):
        load_vectors(tmp_path / "s.npy")
    np.save(tmp_path / "o.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"o\.npy holds Python objects"):
        load_vectors(tmp_path / "o.npy")
    (tmp_path / "t.parquet").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"t\.parquet cannot be read as parquet"):
        load_vectors(tmp_path / "t.parquet")
    pd.DataFrame({"a": [1.0, 2.0], "when": pd.to_datetime(["2020-01-01", "2020-01-02"])}).to_parquet(
        tmp_path / "d.parquet")
    with pytest.raises(ValueError, match=r"d\.parquet: column 'when' is not numeric \(datetime64.*row 1"):
        load_vectors(tmp_path / "d.parquet")
    with pytest.raises(ValueError, match=r"key 'x' names an array of an \.npz archive, but this is a \.csv file"):
        load_vectors(_csv(tmp_path, "a\n1\n"), key="x")


def test_constant_column_cannot_be_standardised(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((20, 3))
    x[:, 1] = 7.0
    pd.DataFrame(x, columns=["a", "b", "c"]).to_csv(tmp_path / "k.csv", index=False)
    with pytest.raises(ValueError, match=r"k\.csv: column 'b' is constant \(7\) over the training rows.*leave it out "
                                         r"\(columns: \['a', 'c'\]\) or set standardise: false"):
        VectorDataModule(str(tmp_path / "k.csv"))
    assert VectorDataModule(str(tmp_path / "k.csv"), standardise=False).data_dim == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(val_fraction=0.0), "val_fraction must be a fraction"),
    (dict(val_fraction=1.0), "val_fraction must be a fraction"),
    (dict(batch_size=0), "batch_size and n_predict must be >= 1"),
    (dict(delimiter=""), "delimiter must be a character"),
])
def test_bad_options(tmp_path: Path, kwargs, match: str) -> None:
    np.save(tmp_path / "x.npy", np.zeros((20, 2)))
    with pytest.raises(ValueError, match=match):
        VectorDataModule(str(tmp_path / "x.npy"), **kwargs)


def test_a_saved_index_column_is_refused_not_trained_on(tmp_path: Path, table: pd.DataFrame) -> None:
    """DataFrame.to_csv without index=False writes the row numbers as an unnamed first column."""
    from vsmd.datamodules.vector_files import load_vectors

    path = tmp_path / "with_index.csv"
    table.to_csv(path)
    with pytest.raises(ValueError, match=r"with_index.csv: column 1 has no name in the header .*index=False"):
        load_vectors(path)
    assert load_vectors(path, columns=list(table.columns)).values.shape == table.shape  # named columns: fine


def test_spaces_around_header_names_are_dropped(tmp_path: Path) -> None:
    """``a, b, c`` (spaces after the commas) names the columns a, b and c, so columns: [b] finds b."""
    p = _csv(tmp_path, "a, b , c\n1, 2, 3\n4, 5, 6\n")
    t = load_vectors(p, columns=["b"])
    assert t.columns == ["b"] and t.values.tolist() == [[2], [5]]
    assert load_vectors(p).columns == ["a", "b", "c"]


@pytest.mark.parametrize("text, repeated", [("a,b,a\n1,2,3\n4,5,6\n", "'a'"), ("a, b,b ,a\n1,2,3,4\n", "'a', 'b'")])
def test_a_repeated_header_name_is_refused(tmp_path: Path, text: str, repeated: str) -> None:
    """pandas would rename the second 'a' to 'a.1' without a word; the snapshot loader's wording."""
    with pytest.raises(ValueError, match=rf"bad\.csv: the CSV header repeats the column name\(s\) {repeated} \(.*\); "
                                         r"give every column its own name"):
        load_vectors(_csv(tmp_path, text))


def test_a_repeated_parquet_column_name_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["a", "a"]), tmp_path / "d.parquet")
    with pytest.raises(ValueError, match=r"d\.parquet: the parquet file repeats the column name\(s\) 'a'; give every "
                                         r"column its own name"):
        load_vectors(tmp_path / "d.parquet")


def test_a_transposed_file_gets_a_short_message_and_a_hint(tmp_path: Path) -> None:
    """5 vectors of 3000 columns (a (3000, 5) table written transposed): the column lists stop after a few names."""
    x = np.random.default_rng(0).standard_normal((3000, 5))
    hint = r"; is the file transposed\? \(one row per sample, one column per dimension: it has {} rows and {} columns\)"
    pd.DataFrame(x.T).to_csv(tmp_path / "t.csv", index=False)  # a header of numbers
    with pytest.raises(ValueError) as err:
        load_vectors(tmp_path / "t.csv")
    assert re.fullmatch(r".*t\.csv: the first line \(0,1,2,3,4,5,6,7,\.\.\. \(3000 in all\)\) holds numbers, not "
                        r"column names; add a header line of names .*" + hint.format(6, 3000), str(err.value))
    assert len(str(err.value)) < 400
    pd.DataFrame(x).T.to_csv(tmp_path / "i.csv")  # the index too: a first column of row names
    with pytest.raises(ValueError) as err:
        load_vectors(tmp_path / "i.csv")
    assert re.fullmatch(r".*column 1 has no name in the header.*" + hint.format(5, 3001), str(err.value))
    with pytest.raises(ValueError) as err:
        load_vectors(tmp_path / "i.csv", columns=["x"])
    assert re.fullmatch(r".*i\.csv has no column 'x'; its columns are 'Unnamed: 0', '0', '1', '2', '3', '4', '5', "
                        r"'6', \.\.\. \(3001 in all\): fix columns.*" + hint.format(5, 3001), str(err.value))
    labelled = pd.DataFrame(x.T, columns=[f"v{k}" for k in range(3000)])
    labelled.insert(1, "label", list("abcde"))
    labelled.to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(ValueError) as err:
        load_vectors(tmp_path / "l.csv")
    assert re.fullmatch(r".*column 'label' is not numeric .*leave it out with columns: \['v0', 'v1', 'v2', 'v3', 'v4', "
                        r"'v5', 'v6', 'v7', \.\.\. \(3000 in all\)\]" + hint.format(5, 3001), str(err.value))
    with pytest.raises(ValueError) as err:
        load_vectors(tmp_path / "l.csv", columns=[5000])
    assert "(0..3000: 'v0', 'label', 'v1', 'v2', 'v3', 'v4', 'v5', 'v6', ... (3001 in all))" in str(err.value)


def test_a_transposed_file_with_a_header_is_named_as_such(tmp_path):
    """5 samples of 3000 dimensions saved the wrong way round load as 5 rows: the too-few-rows error says so."""
    path = tmp_path / "wide.csv"
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        f.write(",".join(f"s{j}" for j in range(3000)) + "\n")
        for row in rng.normal(size=(5, 3000)):
            f.write(",".join(f"{v:.3f}" for v in row) + "\n")
    with pytest.raises(ValueError, match=r"has 5 rows: val_fraction .* add rows or change val_fraction; is the file "
                                         r"transposed\? \(one row per sample, one column per dimension: it has 5 rows "
                                         r"and 3000 columns\)"):
        VectorDataModule(path=str(path))
