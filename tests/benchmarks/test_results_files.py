"""benchmarks/results_files.py: the record and its report, side by side, in a folder made for them."""
import json

from benchmarks import results_files


def test_writes_the_record_and_the_report_with_one_final_newline_and_prints_the_report(tmp_path, capsys):
    out = str(tmp_path / "new" / "folder" / "bench")
    results_files.write(out, {"b": 1, "a": [0.5]}, "title\n\nrow 1\n\n")
    assert json.load(open(out + ".json")) == {"b": 1, "a": [0.5]}
    assert open(out + ".txt").read() == "title\n\nrow 1\n"
    assert capsys.readouterr().out == "title\n\nrow 1\n"


def test_sorted_keys_only_when_asked(tmp_path):
    out = str(tmp_path / "bench")
    results_files.write(out, {"b": 1, "a": 2}, "t")
    assert list(json.load(open(out + ".json"))) == ["b", "a"]
    results_files.write(out, {"b": 1, "a": 2}, "t", sort_keys=True)
    assert list(json.load(open(out + ".json"))) == ["a", "b"]
    assert open(out + ".txt").read() == "t\n"
