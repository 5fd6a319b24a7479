"""CSV parsing: both layouts, exact line numbers, records that span lines, broken records."""

from __future__ import annotations

import pytest

from bookrec.cleaning import clean_users
from bookrec.parse import parse_file
from bookrec.sources import IngestFileError

USERS_HEADER = '"User-ID";"Location";"Age"\r\n'


def test_original_layout_with_a_quoted_crlf_keeps_line_numbers():
    text = (
        USERS_HEADER
        + '"1";"nyc, new york, usa";NULL\r\n'
        + '"275081";"cernusco s\r\n, milan, italy";NULL\r\n'
        + '"67531";"fort;lauderda;e, florida, usa";NULL\r\n'
        + '"8";"too";"many";"fields"\r\n'
    )
    parsed = parse_file(text, "original", "users", "BX-Users.csv")
    assert parsed.rows_read == 4
    assert parsed.starts.tolist() == [2, 3, 5]
    assert parsed.ends.tolist() == [2, 4, 5]
    assert parsed.frame.iloc[2, 1] == "fort;lauderda;e, florida, usa"
    assert parsed.bad == [(6, 6, "wrong_field_count: expected 3, got 4")]
    assert parsed.raw(3, 4) == '"275081";"cernusco s\r\n, milan, italy";NULL'
    cleaned = clean_users(parsed, "original")
    assert cleaned.frame["user_id"].tolist() == [1, 275081, 67531]
    assert cleaned.quarantine["line_number"].tolist() == [6]


def test_short_rows_and_trailing_delimiters_are_counted_exactly():
    text = USERS_HEADER + '"1";"a, b, c";"20"\n"2";"x"\n"3";"y";"30";\n"4";"z";""\n'
    parsed = parse_file(text, "original", "users", "u.csv")
    assert parsed.starts.tolist() == [2, 5]
    reasons = {start: reason for start, _, reason in parsed.bad}
    assert reasons == {
        3: "wrong_field_count: expected 3, got 2",
        4: "wrong_field_count: expected 3, got 4",
    }


def test_kaggle_layout_and_blank_lines_fall_back_to_exact_parsing():
    text = 'User-ID,Location,Age\n1,"nyc, new york, usa",\n\n2,"stockton, california, usa",18.0\n'
    parsed = parse_file(text, "kaggle", "users", "Users.csv")
    assert parsed.rows_read == 2
    assert parsed.starts.tolist() == [2, 4]
    cleaned = clean_users(parsed, "kaggle")
    assert cleaned.frame["age"].tolist()[1] == 18


def test_unterminated_quote_is_quarantined_not_fatal():
    text = USERS_HEADER + '"1";"ok";"20"\r\n"2";"broken;"30"\r\n'
    parsed = parse_file(text, "original", "users", "u.csv")
    assert parsed.rows_read >= 2
    assert parsed.frame.iloc[0, 0] == "1"
    assert parsed.bad and parsed.bad[0][0] == 3


def test_wrong_header_names_file_and_line():
    with pytest.raises(IngestFileError, match=r"u\.csv:1: wrong header"):
        parse_file('"User";"Where";"Age"\n"1";"x";"2"\n', "original", "users", "u.csv")
