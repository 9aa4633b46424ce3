"""Generic readers: text, TSV/CSV, JSONL; malformed rows raise or are skipped and counted."""

from __future__ import annotations

import pytest

from attnkd.data.readers import read_header, read_jsonl, read_table, read_text
from attnkd.data.rows import TableRow, map_rows, parse_float
from attnkd.errors import ConfigError, DataError


def test_text_skips_blank_lines_and_keeps_line_numbers(write):
    path = write("a.txt", "first\n\n  second  \n   \nthird")
    rows = read_text(path)
    assert [r.text for r in rows] == ["first", "second", "third"]
    assert [r.line for r in rows] == [1, 3, 5]
    assert all(r.path == str(path) for r in rows)
    assert rows.stats.rows == 3 and rows.stats.skipped == 0


def test_text_keeps_blank_lines_when_asked_and_handles_crlf_and_bom(write):
    path = write("a.txt", b"\xef\xbb\xbfone\r\n\r\ntwo\r\n")
    rows = read_text(path, skip_blank=False)
    assert [r.text for r in rows] == ["one", "", "two"]


def test_text_bad_encoding_names_file_and_line(write, check_data_error):
    path = write("bad.txt", b"ok\nstill ok\nbad \xff byte\nfine\n")
    with pytest.raises(DataError) as info:
        read_text(path)
    check_data_error(info.value, path, 3, "utf-8", r"\\xff", "column 5")


def test_text_bad_encoding_skip_counts(write):
    path = write("bad.txt", b"ok\n\xfe\nbad \xff\nfine\n")
    rows = read_text(path, bad_rows="skip")
    assert [r.text for r in rows] == ["ok", "fine"]
    assert [r.line for r in rows] == [1, 4]
    assert rows.stats.skipped == 2
    assert rows.stats.examples[0].startswith(f"{path}:2:")
    assert "2 malformed rows skipped" in rows.stats.summary()


def test_missing_file_and_directory(tmp_path, check_data_error):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError) as info:
        read_text(missing)
    check_data_error(info.value, missing, None, "not found")
    with pytest.raises(DataError) as info:
        read_table(tmp_path)
    check_data_error(info.value, tmp_path, None, "expected a file")


def test_bad_rows_policy_is_validated(write):
    path = write("a.txt", "x\n")
    with pytest.raises(ConfigError) as info:
        read_text(path, bad_rows="ignore")
    assert info.value.exit_code == 2 and "data.bad_rows" in str(info.value)


def test_table_by_name_and_index_with_bom_header(write):
    path = write("t.tsv", '\ufeffid\tsentence\tlabel\n1\tsay "hi" \t0\n2\tbye\t1\n')
    rows = read_table(path, ["label", "sentence"])
    assert [r.values for r in rows] == [("0", 'say "hi" '), ("1", "bye")]
    assert rows[0]["sentence"] == 'say "hi" ' and rows[1][0] == "1"
    assert [r.line for r in rows] == [2, 3]
    assert read_header(path) == ("id", "sentence", "label")
    by_index = read_table(path, [2, 0])
    assert [r.values for r in by_index] == [("0", "1"), ("1", "2")]


def test_table_without_header_infers_width_from_first_row(write):
    path = write("t.tsv", "a\tb\nc\td\n\ne\tf\n")
    rows = read_table(path, header=False)
    assert [r.values for r in rows] == [("a", "b"), ("c", "d"), ("e", "f")]
    assert [r.line for r in rows] == [1, 2, 4]
    assert rows[0].names is None


def test_table_wrong_column_count(write, check_data_error):
    path = write("t.tsv", "a\tb\tc\n1\t2\t3\n4\t5\n6\t7\t8\n")
    with pytest.raises(DataError) as info:
        read_table(path)
    check_data_error(info.value, path, 3, "expected 3 tab-separated fields, found 2")
    rows = read_table(path, bad_rows="skip")
    assert [r.values for r in rows] == [("1", "2", "3"), ("6", "7", "8")]
    assert rows.stats.skipped == 1 and rows.stats.rows == 2


def test_table_allowed_widths(write, check_data_error):
    path = write("t.tsv", "1\t2\t3\n1\t2\t3\t4\t5\n1\t2\t3\t4\n")
    with pytest.raises(DataError) as info:
        read_table(path, [0, 2], header=False, widths=(3, 5))
    check_data_error(info.value, path, 3, "expected 3 or 5")


def test_table_unknown_column_name(write, check_data_error):
    path = write("t.tsv", "a\tb\n1\t2\n")
    with pytest.raises(DataError) as info:
        read_table(path, ["text"])
    check_data_error(info.value, path, 1, "no column 'text'", r"\['a', 'b'\]")
    with pytest.raises(DataError) as info:
        read_table(path, ["a"], header=False)
    check_data_error(info.value, path, None, "no header")


def test_table_index_out_of_range(write, check_data_error):
    path = write("t.tsv", "1\t2\n")
    with pytest.raises(DataError) as info:
        read_table(path, [5], header=False)
    check_data_error(info.value, path, 1, "no column 5")


def test_empty_table_needs_header(write, check_data_error):
    path = write("t.tsv", "\n\n")
    with pytest.raises(DataError) as info:
        read_table(path)
    check_data_error(info.value, path, None, "header")


def test_csv_minimal_quoting_multiline_and_errors(write, check_data_error):
    path = write("t.csv", 'text,n\n"a, b",1\n"two\nlines",2\nplain,3\n')
    rows = read_table(path, delimiter=",", quoting="minimal")
    assert [r.values for r in rows] == [("a, b", "1"), ("two\nlines", "2"), ("plain", "3")]
    assert [r.line for r in rows] == [2, 3, 5]
    bad = write("b.csv", 'text,n\nok,1\n"broken"x,2\nfine,3\n')
    with pytest.raises(DataError) as info:
        read_table(bad, delimiter=",", quoting="minimal")
    check_data_error(info.value, bad, 3, "CSV")
    kept = read_table(bad, delimiter=",", quoting="minimal", bad_rows="skip")
    assert [r.values for r in kept] == [("ok", "1"), ("fine", "3")]
    assert kept.stats.skipped == 1


def test_quoting_none_keeps_quotes_that_csv_would_eat(write):
    # the STS-B layout: unescaped quotes inside tab-separated fields
    path = write("t.tsv", 'a\t"quoted start\tend"\n')
    rows = read_table(path, header=False)
    assert rows[0].values == ("a", '"quoted start', 'end"')


def test_jsonl_fields_and_errors(write, check_data_error):
    path = write("d.jsonl", '{"text": "a", "n": 1}\n\n{"text": "b"}\n')
    rows = read_jsonl(path, ["text"])
    assert [r["text"] for r in rows] == ["a", "b"] and [r.line for r in rows] == [1, 3]
    assert rows[0].values == {"text": "a"}
    assert read_jsonl(path)[0].values == {"text": "a", "n": 1}
    cases = {
        "invalid JSON": '{"text": "a"}\n{"text": \n',
        "expected a JSON object, found list": '{"text": "a"}\n["x"]\n',
        "missing field 'text'; fields present: \\['txt'\\]": '{"text": "a"}\n{"txt": "b"}\n',
    }
    for i, (words, text) in enumerate(cases.items()):
        bad = write(f"bad{i}.jsonl", text)
        with pytest.raises(DataError) as info:
            read_jsonl(bad, ["text"])
        check_data_error(info.value, bad, 2, words)


def test_jsonl_skip_counts_every_kind(write):
    path = write("d.jsonl", '{"text": "a"}\n{oops\n3\n{"x": 1}\n{"text": "b"}\n')
    rows = read_jsonl(path, ["text"], bad_rows="skip")
    assert [r["text"] for r in rows] == ["a", "b"]
    assert rows.stats.skipped == 3
    assert [e.split(": ")[0] for e in rows.stats.examples] == [f"{path}:{n}" for n in (2, 3, 4)]


def test_map_rows_turns_value_errors_into_data_errors(write, check_data_error):
    path = write("t.tsv", "x\tscore\na\t1.5\nb\tlots\nc\tnan\nd\t2\n")
    rows = read_table(path)

    def convert(row: TableRow) -> float:
        return parse_float(row["score"], "the score")

    with pytest.raises(DataError) as info:
        map_rows(rows, convert)
    check_data_error(info.value, path, 3, "expected a number for the score, found 'lots'")
    kept = map_rows(rows, convert, bad_rows="skip")
    assert list(kept) == [1.5, 2.0]
    assert kept.stats.skipped == 2 and kept.stats.rows == 2
    assert kept.stats.examples[1].startswith(f"{path}:4:") and "finite" in kept.stats.examples[1]
