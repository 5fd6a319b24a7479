"""One test per cleaning rule, on the real dirty values quoted in DIRTY_PATTERNS.txt."""

from __future__ import annotations

import pytest

from bookrec import cleaning


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0446310786", "0446310786"),
        ("042511774x", "042511774X"),  # lowercase check digit
        ("0486404242\t", "0486404242"),  # trailing tab
        ("3442248027  3", "3442248027"),  # junk after the key
        ("3518365479<90", "3518365479"),
        ("04 46 31 0786", "0446310786"),  # spaces inside (shape of "00 14 02 5314")
        ("2.02.032126.2", "2020321262"),  # dots
        (" 9022906116", "9022906116"),
        ('"0446310786"', "0446310786"),  # escaped quotes (shape of '"0432534220"')
        ('\\0446310786\\""', "0446310786"),  # what Kaggle's parser left of them
        ("0432534220", None),  # the real one above fails its checksum
        ("8475560806º", "8475560806"),  # non-ASCII junk
        ("9780446310789", "0446310786"),  # 978 ISBN-13 -> its ISBN-10
        ("979-10-90636-07-1", "9791090636071"),  # 979 has no ISBN-10
    ],
)
def test_normalize_isbn_accepts_and_canonicalises(raw, expected):
    """Separators, junk and case are tolerated; the checksum is not."""
    assert cleaning.normalize_isbn(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("B00009ANY9", "isbn_is_asin"),
        ("342310538", "isbn_malformed"),  # 9 digits
        ("10", "isbn_malformed"),
        ("680ISBN359623", "isbn_malformed"),
        ("N3453124715", "isbn_malformed"),
        ("Ô½crosoft", "isbn_malformed"),
        ("0446310787", "isbn_bad_checksum"),
        ("9782922145442", "isbn_bad_checksum"),
        ("", "isbn_missing"),
    ],
)
def test_normalize_isbn_refuses_with_reason(raw, reason):
    assert cleaning.normalize_isbn(raw) is None
    assert cleaning.isbn_rejection_reason(raw) == reason


def test_bulk_isbn_normaliser_matches_the_scalar_one():
    values = [
        "0446310786",
        "042511774x",
        "0446310787",
        "B00009ANY9",
        "3442248027  3",
        None,
        "9780446310789",
        "12345678X9",
        "123456789X",
    ]
    assert cleaning.normalize_isbns(values) == [cleaning.normalize_isbn(v) for v in values]


def test_isbn_checksums():
    assert cleaning.isbn10_is_valid("080442957X")
    assert not cleaning.isbn10_is_valid("0804429579")
    assert cleaning.isbn13_is_valid("9780306406157")
    assert not cleaning.isbn13_is_valid("9780306406158")
    assert cleaning.isbn13_to_isbn10("9780306406157") == "0306406152"


def test_html_entities_and_markup_are_decoded():
    assert cleaning.decode_html_entities("Little Brown &amp; Company") == "Little Brown & Company"
    assert (
        cleaning.decode_html_entities(
            "Starting Your Marriage Right &lt;i>what You Need To Know&lt;/i>"
        )
        == "Starting Your Marriage Right what You Need To Know"
    )
    assert (
        cleaning.decode_html_entities("nanchong, &#22235;&#24029;, china")
        == "nanchong, 四川, china"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Antoine de Saint-ExupÃ©ry", "Antoine de Saint-Exupéry"),  # double-encoded
        ("Schwarzer Tee mit drei StÃ¼ck Zucker", "Schwarzer Tee mit drei Stück Zucker"),
        ("LÃ?Â¼bbe", "Lübbe"),  # triple-encoded with a lost byte
        ("Der KÃ?Â¶nig in Gelb.", "Der König in Gelb."),
        ("Jean-Marie Gustave Le ClÃ?Â©zio", "Jean-Marie Gustave Le Clézio"),
        ("méxico, méxico city, distrito federal", "méxico, méxico city, distrito federal"),
        ("Plain ASCII title", "Plain ASCII title"),
    ],
)
def test_mojibake_is_repaired_and_good_text_left_alone(raw, expected):
    assert cleaning.repair_mojibake(raw) == expected


@pytest.mark.parametrize("value", ["n/a", "N/A", "None", "NULL", "", "  ", None, float("nan")])
def test_na_like_strings_become_null(value):
    assert cleaning.is_na(value)
    assert cleaning.clean_text(value) is None


def test_clean_text_collapses_whitespace_and_keeps_real_text():
    assert cleaning.clean_text("  SUE  GRAFTON ") == "SUE GRAFTON"
    assert cleaning.clean_text("Nonesuch Press") == "Nonesuch Press"


def test_kaggle_escape_residue_is_undone():
    assert cleaning.repair_kaggle_escapes('Of Mice and Men (Steinbeck \\Essentials\\")"') == (
        'Of Mice and Men (Steinbeck "Essentials")'
    )
    assert cleaning.repair_kaggle_escapes('\\O\\" Is for Outlaw"') == '"O" Is for Outlaw'
    assert cleaning.repair_kaggle_escapes("No backslash") == "No backslash"


def test_shifted_kaggle_rows_are_put_back():
    row = [
        "078946697X",
        'DK Readers: Creating the X-Men, How It All Began (Level 4: Proficient Readers)\\";'
        'Michael Teitelbaum"',
        "2000",
        "DK Publishing Inc",
        "http://images.amazon.com/images/P/078946697X.01.THUMBZZZ.jpg",
        "http://images.amazon.com/images/P/078946697X.01.MZZZZZZZ.jpg",
        "http://images.amazon.com/images/P/078946697X.01.LZZZZZZZ.jpg",
        "",
    ]
    fixed = cleaning.unshift_kaggle_book(row)
    assert fixed is not None
    assert (
        fixed[1] == "DK Readers: Creating the X-Men, How It All Began (Level 4: Proficient Readers)"
    )
    assert fixed[2] == "Michael Teitelbaum"
    assert fixed[3] == "2000"
    assert fixed[4] == "DK Publishing Inc"
    assert fixed[7].endswith("LZZZZZZZ.jpg")
    normal = [
        "0446310786",
        "To Kill a Mockingbird",
        "Harper Lee",
        "1988",
        "Little Brown",
        "http://s",
        "http://m",
        "http://l",
    ]
    assert cleaning.unshift_kaggle_book(normal) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1988", 1988),
        ("0", None),
        ("2050", None),
        ("1376", None),
        ("DK Publishing Inc", None),
        ("1806", 1806),
        ("", None),
    ],
)
def test_implausible_years_become_null(raw, expected):
    assert cleaning.plausible_year(raw, max_year=2026) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("18", 18), ("18.0", 18), ("0", None), ("3", None), ("244", None), ("NULL", None), ("", None)],
)
def test_implausible_ages_become_null(raw, expected):
    assert cleaning.plausible_age(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("nyc, new york, usa", ("nyc", "new york", "usa")),
        ("weston, ,", ("weston", None, None)),
        ("lawrenceville", ("lawrenceville", None, None)),
        (
            "ivanhoe, melbourne, victoria, australia",
            ("ivanhoe", "melbourne, victoria", "australia"),
        ),
        ("n/a, n/a, n/a", (None, None, None)),
        ("nanchong, &#22235;&#24029;, china", ("nanchong", "四川", "china")),
        ("stockton, usa", ("stockton", None, "usa")),
    ],
)
def test_location_is_split(raw, expected):
    assert cleaning.split_location(raw) == expected


def test_user_ids_and_ratings_are_validated():
    assert cleaning.parse_user_id("276725") == 276725
    assert cleaning.parse_user_id("0") is None
    assert cleaning.parse_user_id("-5") is None
    assert cleaning.parse_user_id("2147483648") is None
    assert cleaning.parse_user_id("12a") is None
    assert cleaning.parse_rating("0") == 0
    assert cleaning.parse_rating("10") == 10
    assert cleaning.parse_rating("11") is None
    assert cleaning.parse_rating("x") is None
