"""The in-memory search index (bookrec.search) against the full-text query it replaces, its
ordering rules, and how the serving tier keeps it fresh and falls back to PostgreSQL."""

from __future__ import annotations

import bisect
import random
import time

import numpy as np
import pytest
import requests
import sqlalchemy as sa

from bookrec import search
from bookrec.settings import Settings
from serving.catalog import Catalog, QueryFailed
from serving.search_index import SearchIndexHolder
from tests.utils.isbn import isbn10
from tests.utils.serving import metric_total

# Plain words (no hyphens, dots or 'ß', which PostgreSQL's parser splits differently, see
# bookrec.search), some sharing prefixes, some frequent enough that a text matches more
# books than the 200 either path ranks.
_WORD_LIST = (
    "dragon saga murder manor cooking herbs garden night star stars starlight start the of and "
    "a in love lover loving war peace house home sea seasons season shadow king kings queen "
    "secret secrets river road city cities man men woman time times dark darkness light summer "
    "winter book books café émile über 1984 2nd marathon mar mars martian marvel"
)
WORDS = _WORD_LIST.split()
AUTHORS = [
    "Ann Archer",
    "Bob Baker",
    "Cy Chef",
    "Émile Zola",
    "Mary Shelley",
    "Mark Twain",
    "Tom Stars",
    None,
    "JRR Tolkien",
    "Ursula Le Guin",
]


def sample_catalogue(n: int = 1500, seed: int = 3) -> list[dict]:
    """``n`` books with titles of 1-6 random words (mixed case, some with a subtitle)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ws = [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
        title = " ".join(w.capitalize() if rng.random() < 0.5 else w for w in ws)
        if rng.random() < 0.1:
            title += ": " + rng.choice(WORDS)
        rows.append(
            {
                "isbn": isbn10(200_000_000 + i),
                "title": title,
                "author": rng.choice(AUTHORS),
                "year": 2000,
            }
        )
    return rows


def sample_queries(seed: int = 5) -> list[str]:
    """Words, their first three letters, pairs and triples of words, author names, and texts
    in other cases."""
    rng = random.Random(seed)
    queries = [w for w in WORDS if len(w) >= 3] + [w[:3] for w in WORDS if len(w) >= 3]
    queries += [" ".join(rng.sample(WORDS, 2)) for _ in range(150)]
    queries += [" ".join(rng.sample(WORDS, 3)) for _ in range(60)]
    queries += [
        "mary she",
        "tom st",
        "ÉMILE",
        "STAR",
        "the sta",
        "star star",
        "the of",
        "zola émile",
        "le gu",
        "dragon sa",
        "Cooking: herbs",
        "nothingmatches",
    ]
    return queries


def put_books(engine: sa.engine.Engine, rows: list[dict]) -> None:
    """Replace the books table's rows (in this order: the physical order of a fresh table)."""
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE books"))
        conn.execute(
            sa.text(
                "INSERT INTO books (isbn, title, author, year) "
                "VALUES (:isbn, :title, :author, :year)"
            ),
            rows,
        )


@pytest.fixture
def catalogue(engine, database_url):
    """The sample catalogue in PostgreSQL, a Catalog on it and a holder with its index."""
    put_books(engine, sample_catalogue())
    catalog = Catalog(Settings(database_url=database_url))
    holder = SearchIndexHolder(catalog.engine, refresh_s=60)
    assert holder.refresh()["status"] == "built"
    yield catalog, holder
    catalog.close()
    catalog.engine().dispose()


def test_the_index_answers_what_the_full_text_query_answers(catalogue):
    catalog, holder = catalogue
    capped = 0
    for text in sample_queries():
        by_sql = catalog.search(text)
        by_index = catalog.search(text, index=holder.index)
        assert by_index == by_sql, text  # the same rows, in the same order
        capped += len(holder.index.matches(text)[0]) > 200
    assert capped >= 5  # texts matching more than either ranks: the same first 200 ranked


def test_order_title_start_then_rank_then_length_title_isbn():
    rows = [
        ("0000000001", "Under the Star", "Ann"),  # 'star' once, not at the start
        ("0000000002", "Over Star Star Star", "Bob"),  # three times, not at the start
        ("0000000003", "Stars of Home", "Cy"),  # starts with the text
        ("0000000004", "Starlight", "Dee"),  # starts with the text, shorter
        ("0000000005", "Stark Tales", "Ed"),  # same start and rank, longer
        ("0000000006", "Starz Tale", "Fi"),  # same length as the next: title decides
        ("0000000007", "Starb Tale", "Gus"),
        ("0000000009", "Starb Tale", "Hal"),  # same title: the ISBN decides
        ("0000000008", "Starb Tale", "Ida"),
        ("0000000010", "Nothing here", "Jo"),
    ]
    index = search.build(rows)
    hits = index.hits("star")
    assert [h.isbn for h in hits] == [
        "0000000004",  # starts with 'star', one occurrence, 9 characters
        "0000000007",
        "0000000008",
        "0000000009",
        "0000000006",  # 10 characters
        "0000000005",  # 11
        "0000000003",  # 13
        "0000000002",  # more occurrences rank first among the rest
        "0000000001",
    ]
    assert [h.starts for h in hits] == [True] * 7 + [False] * 2
    assert hits[-2].rank > hits[-1].rank
    # Several words: closer words rank first.
    index = search.build(
        [
            ("1", "Tales of the Red Dragon", None),  # red, dragon adjacent
            ("2", "Red Tales of the Dragon", None),  # three words apart
            ("3", "Dragon Red", None),  # adjacent too, and shorter
        ]
    )
    # 1 and 3 rank alike (adjacent words; neither title starts with 'red dra'): the shorter
    assert [h.isbn for h in index.hits("red dra")] == ["3", "1", "2"]
    ranked = {h.isbn: h.rank for h in index.hits("red dra")}
    assert ranked["1"] == ranked["3"] > ranked["2"]


def test_prefix_multi_word_unicode_and_casefold():
    index = search.build(
        [
            ("1", "The Dragon Saga", "Ann Archer"),
            ("2", "Dragonfly Summer", "Émile Zola"),
            ("3", "Straße der Sterne", "Jörg Müller"),
            ("4", "The Fellowship of the Ring", "J.R.R. Tolkien"),
            ("5", "Spider-Man: Homecoming", None),
            ("6", "1984", "George Orwell"),
            ("7", "ΟΔΥΣΣΕΙΑ", "Όμηρος"),
        ]
    )

    def found(text):
        return sorted(index.search(text))

    assert found("dra") == ["1", "2"]  # a prefix
    assert found("dragon") == ["1", "2"]  # the last word is a prefix: dragonfly too
    assert found("dragon sa") == ["1"]  # every word, the last as a prefix
    assert found("saga dragon") == ["1"]  # in any order
    assert found("dragon the") == ["1"]
    assert found("dragon chef") == []
    assert found("ann dra") == ["1"]  # title and author
    assert found("ÉMILE") == ["2"] and found("emile") == []  # casefold, accents kept
    assert found("strasse") == ["3"] and found("STRASSE der") == ["3"]  # ß casefolds to ss
    assert found("müller") == ["3"] and found("MÜLL") == ["3"]
    assert found("j.r.r. tolkien") == ["4"] and found("r tolk") == ["4"]
    assert found("spider-man") == ["5"] and found("spider man") == ["5"]
    assert found("1984") == ["6"] and found("198") == ["6"]
    assert found("οδυσσεια") == ["7"] and found("όμηρ") == ["7"]
    assert found("%%%") == [] and found("___") == [] and found("\x00dragon") == ["1", "2"]
    assert index.hits("the dragon")[0].starts  # 'The Dragon Saga' starts with the text


def test_a_new_book_is_found_after_a_refresh_and_a_deleted_one_dropped(catalogue, engine):
    catalog, holder = catalogue
    before = holder.index
    assert holder.refresh()["status"] == "unchanged" and holder.index is before
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO books (isbn, title, author) VALUES "
                "('0306406152', 'Quixotic Zebras', 'New Author')"
            )
        )
    assert catalog.search("quixotic", index=holder.index) == []  # the index as built
    assert holder.refresh()["status"] == "built"
    assert [r["title"] for r in catalog.search("quixotic zeb", index=holder.index)] == [
        "Quixotic Zebras"
    ]
    with engine.begin() as conn:  # an updated title is a change too
        conn.execute(
            sa.text(
                "UPDATE books SET title = 'Quiet Zebras', updated_at = now() "
                "WHERE isbn = '0306406152'"
            )
        )
    assert holder.refresh()["status"] == "built"
    assert catalog.search("quixotic", index=holder.index) == []
    assert len(catalog.search("quiet zebras", index=holder.index)) == 1
    stale = holder.index
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM books WHERE isbn = '0306406152'"))
    assert catalog.search("quiet zebras", index=stale) == []  # rows read from PostgreSQL
    assert holder.refresh()["status"] == "built" and holder.index.matches("quiet")[0].size == 0


def test_a_failed_build_keeps_search_on_postgresql(catalogue, database_url):
    catalog, _ = catalogue
    missing = sa.engine.make_url(database_url).set(database="bookrec_no_such_database")
    broken = sa.create_engine(missing.render_as_string(hide_password=False))
    holder = SearchIndexHolder(lambda: broken, refresh_s=60)
    result = holder.refresh()
    assert result["status"] == "failed" and holder.index is None
    assert catalog.search("dragon sa", index=holder.index) == catalog.search("dragon sa")
    assert not catalog.breaker.open


def test_a_statement_timeout_on_the_index_path_fails_one_search(catalogue, engine, monkeypatch):
    import serving.catalog

    catalog, holder = catalogue
    monkeypatch.setattr(serving.catalog, "SEARCH_STATEMENT_TIMEOUT_MS", 300)
    with engine.connect() as locker:  # holds books: reading the chosen rows waits
        locker.execute(sa.text("BEGIN; LOCK TABLE books IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        with pytest.raises(QueryFailed):
            catalog.search("dragon", index=holder.index)
        waited = time.monotonic() - started
        locker.execute(sa.text("ROLLBACK"))
    assert waited < 2.0
    assert not catalog.breaker.open  # a slow statement is not a lost database
    assert catalog.search("dragon", index=holder.index)


def test_the_app_searches_postgresql_until_its_index_is_built(make_app, serving_settings):
    app = make_app(serving_settings, TESTING=True)
    client = app.test_client()
    svc = app.extensions["bookrec"]
    assert svc.search.index is None  # no background thread here: never built
    by_sql = client.get("/v1/books?q=murder AT").get_json()
    assert svc.search.refresh()["status"] == "built"
    by_index = client.get("/v1/books?q=murder at").get_json()  # another cache key
    assert by_index["items"] == by_sql["items"] and by_index["count"] == 12
    assert by_index["items"][0]["title"] == "Murder at the Manor 1"
    assert client.get("/v1/books?q=ab").status_code == 400  # still 3 characters at least
    assert client.get("/v1/books?q=%25%25%25").get_json()["count"] == 0


def test_gunicorn_workers_build_their_index_and_find_a_new_book_within_the_interval(
    start_gunicorn, serving_settings, engine
):
    refresh_s = 1.0
    server = start_gunicorn(
        serving_settings, workers=2, extra_env={"BOOKREC_SEARCH_REFRESH_S": str(refresh_s)}
    )

    def metrics() -> str:
        return requests.get(f"{server.url}/metrics", timeout=5).text

    def built_workers() -> int:
        return sum(
            1
            for line in metrics().splitlines()
            if line.startswith("bookrec_search_index_books{") and float(line.split()[-1]) > 0
        )

    deadline = time.monotonic() + 30
    while built_workers() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert built_workers() == 2  # each worker built its own, in the background
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO books (isbn, title, author) VALUES "
                "('0306406152', 'Quixotic Zebras', 'New Author')"
            )
        )
    time.sleep(refresh_s + 1.0)  # the interval, and a build of 37 books
    before = {
        p: metric_total(metrics(), "bookrec_searches_total", path=p) for p in ("index", "database")
    }
    found = []
    for k in range(40):  # texts never asked before (no cache entry), new connections
        text = "." * k + "quixotic zeb"
        found.append(
            requests.get(f"{server.url}/v1/books", params={"q": text}, timeout=5).json()["count"]
        )
    assert found == [1] * 40
    time.sleep(1.5)  # workers fold their metric samples in once a second
    after = {
        p: metric_total(metrics(), "bookrec_searches_total", path=p) for p in ("index", "database")
    }
    assert after["index"] - before["index"] == 40 and after["database"] == before["database"]


def test_a_search_connection_the_server_closed_is_replaced_without_the_breaker(catalogue, engine):
    catalog, holder = catalogue
    first = catalog.search("dragon", index=holder.index)
    backend = catalog._local.conn.get_backend_pid()  # this thread's connection
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": backend}).scalar()
    time.sleep(0.2)
    assert catalog.search("dragon", index=holder.index) == first  # on a new connection
    assert catalog._local.conn.get_backend_pid() != backend
    assert not catalog.breaker.open


def test_vocabulary_lookups_agree_with_a_plain_bisection():
    # Thousands of words, so the sampled first step has many blocks; probes at and around
    # every block boundary, before the first word and after the last.
    rng = random.Random(5)
    letters = "abcdeé"
    vocab = sorted(
        {
            "".join(rng.choice(letters) for _ in range(rng.randint(1, 7))).encode()
            for _ in range(5000)
        }
    )
    offsets = [0]
    for word in vocab:
        offsets.append(offsets[-1] + len(word))
    table = search._Vocabulary(b"".join(vocab), np.array(offsets, dtype=np.int64))
    step = table.SAMPLE_STEP
    assert len(table) == len(vocab) > 20 * step
    probes = [b"", b"\x00", b"\xff", vocab[0], vocab[-1], vocab[-1] + b"a"]
    for i in range(0, len(vocab), step):
        for j in (i - 1, i, i + 1):
            if 0 <= j < len(vocab):
                probes += [vocab[j], vocab[j] + b"\x00", vocab[j][:-1], vocab[j] + b"\xff"]
    probes += ["".join(rng.choice(letters) for _ in range(4)).encode() for _ in range(2000)]
    for probe in probes:
        expected = bisect.bisect_left(vocab, probe)
        assert table.bisect_left(probe) == expected, probe
        found = expected < len(vocab) and vocab[expected] == probe
        assert table.find(probe) == (expected if found else -1)
        assert table.prefix_range(probe) == (expected, bisect.bisect_left(vocab, probe + b"\xff"))
