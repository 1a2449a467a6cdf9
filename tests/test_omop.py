"""OMOP CDM v5.4 NOTE_NLP: the 14 columns, ids unique by construction, concept map, ConText, DuckDB load."""

import datetime as dt

import duckdb
import medspacy
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from epee_annotate.omop import (
    INDEX_BITS, MAX_NOTE_ID, NOTE_NLP_SCHEMA, ConceptMap, NoteNlpError, note_id_value, note_nlp_id, note_nlp_table,
)

# The CDM v5.4 DDL of NOTE_NLP (OHDSI/CommonDataModel inst/ddl/5.4), ids as BIGINT as most deployments declare.
NOTE_NLP_DDL = """
CREATE TABLE note_nlp (
    note_nlp_id BIGINT NOT NULL,
    note_id BIGINT NOT NULL,
    section_concept_id integer NULL,
    snippet varchar(250) NULL,
    "offset" varchar(50) NULL,
    lexical_variant varchar(250) NOT NULL,
    note_nlp_concept_id integer NULL,
    note_nlp_source_concept_id integer NULL,
    nlp_system varchar(250) NULL,
    nlp_date date NOT NULL,
    nlp_datetime TIMESTAMP NULL,
    term_exists varchar(1) NULL,
    term_temporal varchar(50) NULL,
    term_modifiers varchar(2000) NULL );
ALTER TABLE note_nlp ADD PRIMARY KEY (note_nlp_id);
"""
CDM_COLUMNS = ["note_nlp_id", "note_id", "section_concept_id", "snippet", "offset", "lexical_variant",
               "note_nlp_concept_id", "note_nlp_source_concept_id", "nlp_system", "nlp_date", "nlp_datetime",
               "term_exists", "term_temporal", "term_modifiers"]
REQUIRED = ["note_nlp_id", "note_id", "lexical_variant", "nlp_date"]
NOTES = ["Patient denies taking fish oil. Mother takes valerian root nightly.",
         "Continues CoQ10 daily. History of melatonin use for insomnia."]


def load_into_cdm(parquet_glob: str) -> duckdb.DuckDBPyConnection:
    """The CDM table created from its DDL, filled by the plain INSERT a user would run (no cast)."""
    con = duckdb.connect()
    con.execute(NOTE_NLP_DDL)
    con.execute(f"INSERT INTO note_nlp SELECT * FROM read_parquet('{parquet_glob}')")
    return con


@pytest.fixture(scope="module")
def nlp(clinical_checkpoints):
    pipeline = medspacy.load()
    pipeline.add_pipe("epee_supplement_status", config={"checkpoint": clinical_checkpoints["sup"]},
                      before="medspacy_context")
    return pipeline


@pytest.fixture()
def concept_map(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("component,label,concept_id,source_concept_id\n"
                    "epee_supplement_status,Continuing,111,222\n"
                    "section,family_history,333,\n")
    return ConceptMap.read(path)


def test_schema_is_the_cdm_v54_note_nlp_table():
    assert NOTE_NLP_SCHEMA.names == CDM_COLUMNS
    assert NOTE_NLP_SCHEMA.field("note_nlp_id").type == pa.int64() and NOTE_NLP_SCHEMA.field("nlp_date").type == pa.date32()
    assert [f.name for f in NOTE_NLP_SCHEMA if not f.nullable] == REQUIRED


def test_docs_to_note_nlp_load_into_the_cdm_ddl_without_a_cast(nlp, concept_map, tmp_path):
    docs = list(nlp.pipe(NOTES))
    table = note_nlp_table(nlp, docs, [7, "8"], concept_map, when=dt.datetime(2026, 1, 2, 3, 4, 5))
    assert table.schema.names == CDM_COLUMNS and table.num_rows >= 4
    pq.write_table(table, tmp_path / "note_nlp.parquet")
    con = load_into_cdm(str(tmp_path / "note_nlp.parquet"))
    rows = con.execute("SELECT note_id, lexical_variant, \"offset\", term_exists, term_temporal, note_nlp_concept_id, "
                       "note_nlp_source_concept_id, term_modifiers, nlp_system, snippet, nlp_date FROM note_nlp "
                       "ORDER BY note_nlp_id").fetchall()
    assert len(rows) == table.num_rows
    assert con.execute("SELECT count(DISTINCT note_nlp_id) FROM note_nlp").fetchone()[0] == len(rows)
    for column in REQUIRED:
        assert con.execute(f"SELECT count(*) FROM note_nlp WHERE {column} IS NULL").fetchone()[0] == 0
    by_offset = {(r[0], int(r[2])): r for r in rows}
    fish = by_offset[(7, NOTES[0].index("fish oil"))]
    valerian = by_offset[(7, NOTES[0].index("valerian root"))]
    coq10 = by_offset[(8, NOTES[1].index("CoQ10"))]
    melatonin = by_offset[(8, NOTES[1].index("melatonin"))]
    assert fish[3] == "N" and valerian[3] == "N" and coq10[3] == "Y"  # negated, family, affirmed
    assert melatonin[4] == "past" and coq10[4] == "present"
    assert "negated=true" in fish[7] and "family=true" in valerian[7] and "exit_layer=" in coq10[7]
    assert "policy=" in coq10[7] and "confidence=" in coq10[7]
    # No text unless asked: the label is the lexical variant, no snippet
    assert all(r[1] in {"Continuing", "Discontinued", "Started", "Uncertain"} and r[9] is None for r in rows)
    for row in rows:
        assert (row[5], row[6]) == ((111, 222) if row[1] == "Continuing" else (0, 0))
    assert "epee-annotate" in coq10[8] and "@" in coq10[8] and "policy" in coq10[8]
    assert rows[0][10] == dt.date(2026, 1, 2)


def test_text_only_when_asked(nlp):
    docs = list(nlp.pipe(NOTES))
    table = note_nlp_table(nlp, docs, [1, 2], include_text=True).to_pylist()
    fish = next(r for r in table if r["lexical_variant"] == "fish oil")
    assert "denies taking fish oil" in fish["snippet"]


def test_ids_pack_note_and_index_and_refuse_what_does_not_fit(nlp):
    assert note_nlp_id(5, 3) == (5 << INDEX_BITS) | 3
    assert note_nlp_id(MAX_NOTE_ID, (1 << INDEX_BITS) - 1) == 2**63 - 1
    with pytest.raises(NoteNlpError, match="more than"):
        note_nlp_id(5, 1 << INDEX_BITS)
    for bad in ("N001", 1.5, True, -1, MAX_NOTE_ID + 1):
        with pytest.raises(NoteNlpError, match="note_id"):
            note_id_value(bad)
    assert note_id_value(" 42 ") == 42 and note_id_value(42.0) == 42
    docs = list(nlp.pipe(NOTES))
    with pytest.raises(NoteNlpError, match="unique"):
        note_nlp_table(nlp, docs, [3, 3])
    # The same docs give the same ids on a rerun
    first = note_nlp_table(nlp, docs, [1, 2]).column("note_nlp_id").to_pylist()
    again = note_nlp_table(nlp, list(nlp.pipe(NOTES)), [1, 2]).column("note_nlp_id").to_pylist()
    assert first == again and len(set(first)) == len(first)


def test_concept_map_errors_are_specific(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("component,label,concept\nx,y,1\n")
    with pytest.raises(NoteNlpError, match="missing"):
        ConceptMap.read(bad)
    bad.write_text("component,label,concept_id,source_concept_id\nx,y,abc,\n")
    with pytest.raises(NoteNlpError, match="line 2"):
        ConceptMap.read(bad)
    bad.write_text("component,label,concept_id,source_concept_id\nx,y,1,\nx,y,2,\n")
    with pytest.raises(NoteNlpError, match="twice"):
        ConceptMap.read(bad)


def test_the_readme_load_into_omop_sql_runs(nlp, concept_map, tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Load into OMOP"):]
    sql = re.search(r"```sql\n(.*?)```", section, re.S).group(1)
    out = tmp_path / "annotations" / "pv" / "note_nlp"
    out.mkdir(parents=True)
    pq.write_table(note_nlp_table(nlp, list(nlp.pipe(NOTES)), [1, 2], concept_map), out / "part-0.parquet")
    con = duckdb.connect()
    con.execute(sql.replace("annotations/pv/note_nlp", str(out)))
    assert con.execute("SELECT count(*) FROM note_nlp").fetchone()[0] > 0
