"""Reading records from every source type, their positions, and whole-file / per-record errors."""
from __future__ import annotations

import json
import os
import pickle

import pytest

from alignkit.data.errors import DataError, RecordError, SkipReport
from alignkit.data.readers import DataSpec, as_specs, load_parsed, read_records
from tests.helpers.data import FILE_KINDS, UNIT_OF, split_for, write_records


def test_record_error_reads_like_a_compiler_message():
    error = RecordError("messages[2].role", "missing", path="train.jsonl", line=17)
    assert str(error) == "train.jsonl:17: messages[2].role: missing"
    assert str(RecordError("label", "bad", path="x.parquet", line=3, unit="record")) == "x.parquet:record 3: label: bad"
    assert str(RecordError("", "invalid JSON", path="a.csv", line=2, unit="row")) == "a.csv:row 2: invalid JSON"
    unplaced = RecordError("output", "missing")
    assert str(unplaced) == "output: missing"
    placed = unplaced.located("d.jsonl", 4)
    assert (placed.path, placed.line, placed.field, placed.reason) == ("d.jsonl", 4, "output", "missing")
    again = pickle.loads(pickle.dumps(placed))
    assert str(again) == str(placed) and isinstance(again, RecordError)


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_every_source_type_yields_records_with_positions(tmp_path, kind):
    records = [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}, {"id": "3", "text": "c"}]
    path = write_records(tmp_path, kind, records)
    read = list(read_records(path, split=split_for(kind)))
    assert [r.data for r in read] == records
    assert [r.line for r in read] == [1, 2, 3]
    assert {r.unit for r in read} == {UNIT_OF[kind]}
    assert {r.path for r in read} == {path}


def test_csv_cells_are_text_and_empty_cells_are_null(tmp_path):
    path = write_records(tmp_path, "csv", [{"a": "x", "b": ""}, {"a": "y", "b": "z"}])
    read = [r.data for r in read_records(path)]
    assert read == [{"a": "x", "b": None}, {"a": "y", "b": "z"}]


def test_csv_cells_holding_message_lists_are_decoded_other_json_stays_text(tmp_path):
    messages = [{"role": "user", "content": "q"}]
    json_answer = '[{"name": "Paris"}]'
    path = write_records(tmp_path, "csv", [{"prompt": messages, "completion": json_answer}])
    assert [r.data for r in read_records(path)] == [{"prompt": messages, "completion": json_answer}]


def test_blank_lines_in_jsonl_are_not_records_but_keep_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    read = list(read_records(path))
    assert [(r.data["a"], r.line) for r in read] == [(1, 1), (2, 4)]


@pytest.mark.parametrize("name,content", [("e.jsonl", ""), ("b.jsonl", "\n  \n"), ("l.json", "[]"),
                                          ("w.json", "  \n"), ("h.csv", "prompt,completion\n")])
def test_empty_text_files_raise_data_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=f"{name}: contains no records"):
        list(read_records(path))


def test_empty_parquet_and_dataset_raise_data_error(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), parquet)
    with pytest.raises(DataError, match="contains no records"):
        list(read_records(parquet))
    folder = tmp_path / "empty_ds"
    datasets.Dataset.from_dict({"prompt": []}).save_to_disk(str(folder))
    # datasets itself cannot load an empty saved dataset; any failure must still be a DataError naming it.
    with pytest.raises(DataError, match="empty_ds: "):
        list(read_records(folder))


def test_invalid_json_line_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3,,}\n')
    with pytest.raises(RecordError) as caught:
        list(read_records(path))
    assert caught.value.line == 3 and caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}:3: invalid JSON")


def test_non_object_line_is_a_record_error(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(RecordError, match=r"train.jsonl:2: expected a JSON object, got a list"):
        list(read_records(path))


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(RecordError, match=r"train.jsonl:2: not valid UTF-8"):
        list(read_records(path))


def test_json_list_with_a_non_object_names_the_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"a": 1}, "oops", {"a": 3}]')
    with pytest.raises(RecordError, match=r"d.json:record 2: expected a JSON object, got a string"):
        list(read_records(path))


def test_broken_json_list_is_a_data_error_with_its_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"a": 1},\n  {"a": }\n]')
    with pytest.raises(DataError, match=r"d.json:3: invalid JSON"):
        list(read_records(path))


def test_csv_row_with_wrong_width_names_the_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nhi,there\nbad,row,extra\n")
    with pytest.raises(RecordError, match=r"d.csv:row 2: row has 3 cells but the header has 2"):
        list(read_records(path))


def test_on_error_collects_bad_records_and_reading_continues(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n7\n{"a": 5}\n')
    errors: list[RecordError] = []
    read = list(read_records(path, on_error=errors.append))
    assert [r.line for r in read] == [1, 3, 5]
    assert [e.line for e in errors] == [2, 4]


@pytest.mark.parametrize("name,message", [("missing.jsonl", "file not found"),
                                          ("./nowhere/x", "file not found"),
                                          ("notes.txt", "unknown extension .txt")])
def test_whole_source_problems(tmp_path, name, message):
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text("hello")
    with pytest.raises(DataError, match=message):
        list(read_records(path))


def test_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        list(read_records(tmp_path / "plain"))


def test_dataset_dict_needs_a_valid_split(tmp_path):
    path = write_records(tmp_path, "disk_split", [{"a": 1}, {"a": 2}])
    with pytest.raises(DataError, match=r"holds splits \['train', 'test'\]"):
        list(read_records(path))
    with pytest.raises(DataError, match="no split 'dev'"):
        list(read_records(path, split="dev"))
    assert [r.data["a"] for r in read_records(path, split="test")] == [1]


def test_split_on_a_plain_file_or_plain_dataset_is_an_error(tmp_path):
    jsonl = write_records(tmp_path, "jsonl", [{"a": 1}])
    with pytest.raises(DataError, match="split='train' only applies"):
        list(read_records(jsonl, split="train"))
    folder = write_records(tmp_path, "disk", [{"a": 1}])
    with pytest.raises(DataError, match="one Dataset without splits"):
        list(read_records(folder, split="train"))


def test_skip_report_caps_the_list_but_counts_everything():
    report = SkipReport(max_listed=2)
    for line in range(1, 6):
        report.add(RecordError("output", "missing", path="d.jsonl", line=line))
    report.add(RecordError("label", "bad", path="d.jsonl", line=9))
    report.add_kept(4)
    assert (report.kept, report.skipped, report.total, report.not_listed) == (4, 6, 10, 4)
    assert [e.line for e in report.listed] == [1, 2]
    assert report.reasons == {"output: missing": 5, "label: bad": 1}
    text = report.summary()
    assert "kept 4 of 10 records; skipped 6" in text and "... and 4 more" in text
    assert "d.jsonl:1: output: missing" in text and "5 x output: missing" in text
    assert json.loads(json.dumps(report.to_dict()))["not_listed"] == 4


def test_skip_reports_merge():
    first, second = SkipReport(max_listed=3), SkipReport()
    first.add(RecordError("a", "x", path="p", line=1))
    first.add_kept(2)
    for line in range(3):
        second.add(RecordError("b", "y", path="q", line=line + 1))
    second.add_kept(1)
    first.merge(second)
    assert (first.kept, first.skipped, len(first.listed), first.not_listed) == (3, 4, 3, 1)


def test_load_parsed_raises_placed_errors_or_skips_them(tmp_path):
    path = write_records(tmp_path, "jsonl", [{"n": 1}, {"n": -2}, {"n": 3}])

    def parse(record, spec):
        if record.data["n"] < 0:
            raise RecordError("n", "negative")
        return [record.data["n"]]

    with pytest.raises(RecordError, match=r"data.jsonl:2: n: negative"):
        load_parsed(path, parse, skip_bad=False)
    items, report = load_parsed(path, parse, skip_bad=True)
    assert items == [1, 3] and report.skipped == 1 and report.listed[0].line == 2


def test_a_source_with_every_record_skipped_is_an_error(tmp_path):
    path = write_records(tmp_path, "jsonl", [{"n": -1}, {"n": -2}])

    def parse(record, spec):
        raise RecordError("n", "negative")

    with pytest.raises(DataError, match="all 2 records were skipped"):
        load_parsed(path, parse, skip_bad=True)


def test_data_spec_from_config():
    assert DataSpec.from_config("a.jsonl") == DataSpec("a.jsonl")
    spec = DataSpec.from_config({"path": "b.parquet", "format": "alpaca", "weight": 2})
    assert (spec.path, spec.format, spec.split, spec.weight) == ("b.parquet", "alpaca", None, 2)
    with pytest.raises(DataError, match=r"data\[1\]: unknown keys \['wieght'\]"):
        as_specs(["a.jsonl", {"path": "b.jsonl", "wieght": 2}])
    with pytest.raises(DataError, match="missing 'path'"):
        DataSpec.from_config({"weight": 1})
    with pytest.raises(DataError, match="weight must be a finite number >= 0"):
        DataSpec("a.jsonl", weight=-1)
    specs = as_specs(["a.jsonl", DataSpec("b.json", format="sharegpt")], fmt="alpaca")
    assert [s.format for s in specs] == ["alpaca", "sharegpt"]


def test_reads_the_shared_public_files(shared_data):
    llmbar = list(read_records(os.path.join(shared_data, "llmbar", "natural.json")))
    assert len(llmbar) == 100 and {r.unit for r in llmbar} == {"record"}
    assert set(llmbar[0].data) == {"input", "output_1", "output_2", "label"}
    ifeval_path = os.path.join(shared_data, "ifeval", "input_data.jsonl")
    with open(ifeval_path, encoding="utf-8") as handle:
        non_blank = sum(1 for line in handle if line.strip())
    assert len(list(read_records(ifeval_path))) == non_blank


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="would reach the network")
def test_an_unknown_name_is_tried_on_the_hub_and_fails_clearly():
    with pytest.raises(DataError, match="someone/not-a-dataset: no such local file, and loading it as a hub dataset failed"):
        list(read_records("someone/not-a-dataset"))
