import pytest

from fashion_assets.catalog.styles_csv import CatalogFormatError, ParseStats, parse_styles

from .catalog_files import HEADER, make_dataset, product_line, write_styles


def parse(path):
    stats = ParseStats()
    rows = list(parse_styles(path, stats))
    return rows, stats


def test_every_record_is_a_row_or_a_rejection(tmp_path):
    rows, stats = parse(make_dataset(tmp_path / "ds") / "styles.csv")
    assert [r["id"] for r in rows] == list(range(1, 13))
    assert stats.rows == 12 and stats.records == 15 and stats.blank_lines == 1
    reasons = {r.line: r.reason for r in stats.rejected}
    # Header is line 1, products 1..12 are lines 2..13, the blank line is 14.
    assert reasons == {
        15: "duplicate id 2 (first on line 3)",
        16: "expected 10 fields, saw 3",
        17: "id 'abc' is not a positive integer",
    }
    assert stats.rejected[0].raw.startswith("2,")


def test_values_are_cleaned(tmp_path):
    rows, stats = parse(make_dataset(tmp_path / "ds") / "styles.csv")
    by_id = {r["id"]: r for r in rows}
    assert by_id[3]["product_display_name"] == "Nike Men, Women Unisex Cap"  # unquoted comma kept
    assert stats.names_rejoined == 1
    assert by_id[4]["season"] is None  # empty field -> NULL, not ""
    assert by_id[5]["year"] is None and stats.notes[0].id == 5 and "n/a" in stats.notes[0].message
    assert by_id[1]["year"] == 2012 and by_id[1]["master_category"] == "Apparel"
    assert by_id[1]["product_display_name"].endswith(" 1")  # no stray \r from CRLF
    assert set(by_id[1]) == {"id", "gender", "master_category", "sub_category", "article_type", "base_colour",
                             "season", "year", "usage", "product_display_name"}


def test_kaggle_layout_of_many_commas_and_quotes(tmp_path):
    lines = [
        product_line(1, name="A, B, C and D"),
        '2,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,"Quoted, properly ""3.5"" Tee"',
        product_line(3, year="2012.0"),
    ]
    rows, stats = parse(write_styles(tmp_path / "styles.csv", lines))
    assert [r["product_display_name"] for r in rows[:2]] == ["A, B, C and D", 'Quoted, properly "3.5" Tee']
    assert rows[2]["year"] == 2012
    assert stats.names_rejoined == 1 and not stats.rejected


def test_extra_fields_are_rejected_when_the_name_is_not_last(tmp_path):
    path = tmp_path / "styles.csv"
    cols = HEADER.split(",")
    cols = cols[-1:] + cols[:-1]  # productDisplayName first
    path.write_text(",".join(cols) + "\nName,1,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,extra\n")
    rows, stats = parse(path)
    assert rows == [] and stats.rejected[0].reason == "expected 10 fields, saw 11"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"id,gender\n1,Men\n", "header is missing column(s) masterCategory"),
        (b"id,\xff" + HEADER.encode() + b"\n", "the header is not UTF-8 text"),
    ],
)
def test_unreadable_files_raise_a_clear_error(tmp_path, content, message):
    path = tmp_path / "styles.csv"
    path.write_bytes(content)
    with pytest.raises(CatalogFormatError, match=".*".join(map(__import__("re").escape, [str(path), message]))):
        parse(path)


def test_a_line_that_is_not_utf8_costs_that_row_only(tmp_path):
    path = write_styles(tmp_path / "styles.csv", [product_line(1), product_line(2), product_line(3)], crlf=True)
    path.write_bytes(path.read_bytes().replace(b"Red Heels 2", b"Red \xff Heels 2"))
    rows, stats = parse(path)
    assert [r["id"] for r in rows] == [1, 3]
    assert [(r.line, r.reason) for r in stats.rejected] == [(3, "not UTF-8 text")]


def test_ids_must_fit_a_bigint(tmp_path):
    rows, stats = parse(write_styles(tmp_path / "styles.csv", [product_line(2**63)]))
    assert rows == [] and "is not a positive integer" in stats.rejected[0].reason
