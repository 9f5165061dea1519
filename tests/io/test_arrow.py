"""The Arrow trace reader against hostile files: metadata that disagrees with the columns,
columns found by name, corrupt record batches, and request ids kept."""

from __future__ import annotations

import json

import moefast as mf
import numpy as np
import pytest
from moefast.io.readers.arrow import ARROW_FORMAT, read_arrow_trace
from moefast.io.streaming import convert, iter_trace

pa = pytest.importorskip("pyarrow")
pytest.importorskip("pyarrow.ipc")


def write(path, columns: dict, *, k: int = 2, layer_ids=(0,), meta: dict | None = None) -> None:
    """An Arrow file with these columns and moefast metadata (``meta`` overrides it)."""
    metadata = {
        "moefast.format": ARROW_FORMAT,
        "moefast.num_experts": "8",
        "moefast.layer_ids": json.dumps(list(layer_ids)),
        "moefast.k": str(k),
        **(meta or {}),
    }
    table = pa.table(columns).replace_schema_metadata(metadata)
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table)


def ids(rows, width: int = 2):
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ravel(rows), pa.uint8()), width)


def test_a_k_that_disagrees_with_the_list_width_is_refused(tmp_path):
    # k = 1 over 2-wide lists read [[0,1]],[[2,3]],[[4,5]] as [[0]],[[1]],[[2]].
    path = tmp_path / "t.arrow"
    write(path, {"layer_0": ids([[0, 1], [2, 3], [4, 5]])}, meta={"moefast.k": "1"})
    with pytest.raises(ValueError, match=r"t\.arrow: column layer_0 must be fixed-size lists of 1"):
        mf.load_trace(path)


def test_weights_are_read_by_name_not_position(tmp_path):
    path = tmp_path / "t.arrow"
    columns = {
        "layer_0": ids([[0, 1], [2, 3]]),
        "note": pa.array([7.0, 9.0]),
        "weights": pa.array([1.0, 3.0]),
    }
    write(path, columns)
    trace = mf.load_trace(path)
    np.testing.assert_array_equal(trace.weights, [1.0, 3.0])
    np.testing.assert_array_equal(trace.topk[:, 0], [[0, 1], [2, 3]])


@pytest.mark.parametrize(
    ("column", "meta", "match"),
    [
        (pa.array([1, 2], pa.int64()), {}, "must be fixed-size lists"),
        (ids([[0, 1], [2, 3]]), {"moefast.layer_ids": "[" * 5000 + "]" * 5000}, "metadata"),
        (ids([[0, 1], [2, 3]]), {"moefast.layer_ids": "[1.5]"}, "metadata"),
        (ids([[0, 1], [2, 3]]), {"moefast.num_experts": "70000"}, "metadata"),
        (ids([[0, 1], [2, 3]]), {"moefast.k": "0"}, "metadata"),
    ],
)
def test_columns_and_metadata_of_the_wrong_form_are_value_errors(tmp_path, column, meta, match):
    path = tmp_path / "t.arrow"
    write(path, {"layer_0": column}, meta=meta)
    with pytest.raises(ValueError, match=match) as info:
        mf.load_trace(path)
    assert str(path) in str(info.value)


def test_a_corrupt_record_batch_names_the_file(tmp_path):
    path = tmp_path / "t.arrow"
    write(path, {"layer_0": ids(np.arange(2000) % 8)})
    data = bytearray(path.read_bytes())
    # Keep the schema and footer, garble the record batch's message header.
    footer = data.rfind(b"ARROW1")
    schema_end = data.find(b"layer_0") + 64
    found = []
    for at in range(schema_end, min(schema_end + 400, footer - 8), 4):
        mutated = bytearray(data)
        mutated[at : at + 4] = b"\xff\xff\xff\x7f"
        path.write_bytes(bytes(mutated))
        try:
            list(iter_trace(path))
        except ValueError as err:
            found.append(str(path) in str(err))
        except Exception as err:  # what the reader must never let out
            pytest.fail(f"{type(err).__name__}: {err}")
    assert found and all(found)


def test_convert_keeps_request_ids(tmp_path):
    a = mf.Trace(np.array([[[0, 1]], [[2, 3]], [[4, 5]]]), 8, [0], request_ids=[0, 0, 1])
    b = mf.Trace(np.array([[[1, 2]], [[3, 4]]]), 8, [0], request_ids=[0, 1])
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    assert convert([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "all.arrow") == 5
    back = read_arrow_trace(tmp_path / "all.arrow")
    # File b's requests follow file a's: five tokens, four requests.
    np.testing.assert_array_equal(back.request_ids, [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(back.topk[:, 0], [[0, 1], [2, 3], [4, 5], [1, 2], [3, 4]])
