"""Tests for transfer.data.readers: small fixture files, bad inputs, long-sentence splitting, and the real data counts."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest

from transfer.data import tasks as task_module
from transfer.data.examples import Example
from transfer.data.readers import READERS, DataFormatError, legacy_cluster, load_task, read_split, split_long_sentence
from transfer.data.tasks import load_task_table

FIXTURES = Path(__file__).parent / "fixtures"
BAD = FIXTURES / "bad"
DATA_DIR = Path(os.environ.get(task_module.DATA_DIR_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")


def test_registry_covers_every_reader_name():
    assert set(READERS) == set(task_module.READERS)


# ---------------------------------------------------------------------------------------------------------------
# Small fixture files: one per format
# ---------------------------------------------------------------------------------------------------------------


def test_ner_fixture(table):
    examples = read_split(FIXTURES / "ner_small.tsv", table.task("bc5cdr-chemical"))
    assert [e.uid for e in examples] == ["100.0", "100.13", "200.0"]
    assert [e.line for e in examples] == [1, 7, 11]
    first = examples[0]
    # The csv-escaped double quote stays the literal 4-character token, as in BLUE's and MT-BERT's loaders.
    assert first.text_a == ("The", '""""', "drug", "X", ".")
    assert first.label == ("O", "O", "B", "I", "O")
    # The second sentence continues document 100; the last one has no closing blank line and starts with I.
    assert examples[2].text_a == ("New", "doc") and examples[2].label == ("I", "O")


def test_relation_fixture(table):
    examples = read_split(FIXTURES / "relation_small.tsv", table.task("chemprot"))
    assert [e.uid for e in examples] == ["1.T1.T2", "1.T1.T2#2", "2.T3.T4", "3.T1.T2"]
    assert [e.label for e in examples] == ["CPR:4", "CPR:9", "false", "CPR:3"]
    assert examples[2].text_a == 'A "quoted" @CHEMICAL$ and @GENE$.'  # csv-quoted field, unquoted
    assert examples[3].text_a == 'Bare "quote" near @GENE$ and @CHEMICAL$.'  # bare quotes kept as they are
    assert examples[0].text_b is None and examples[0].line == 2


def test_sts_fixture(table):
    examples = read_split(FIXTURES / "sts_small.tsv", table.task("biosses"))
    assert examples[0] == Example(uid="0", text_a="Cells divide.", text_b="Cells split.", label=3.4, line=2)
    assert examples[1].label == 0.0 and isinstance(examples[1].label, float)


def test_nli_fixture(table):
    examples = read_split(FIXTURES / "nli_small.tsv", table.task("mednli"))
    assert examples[1] == Example(
        uid="u2", text_a="Primary trial: placebo.", text_b="Aspirin is given.", label="contradiction", line=3
    )


def test_hoc_fixture(table):
    hoc = table.task("hoc")
    examples = read_split(FIXTURES / "hoc_small.tsv", hoc)
    assert [e.group for e in examples] == ["111", "111", "222"]
    assert examples[0].label == ()
    # HoC files are not csv-quoted: a sentence that starts with a quote keeps it.
    assert examples[0].text_a == '" Reactive " or activated stroma .'
    assert examples[1].label == (hoc.labels[0], hoc.labels[7])
    assert examples[2].label == ("tumor promoting inflammation",)


def test_load_task_reads_every_split(table):
    paths = {"train": FIXTURES / "nli_small.tsv", "dev": FIXTURES / "nli_small.tsv", "test": FIXTURES / "nli_small.tsv"}
    splits = load_task(table.task("mednli"), paths)
    assert list(splits) == ["train", "dev", "test"]
    assert all(len(examples) == 2 for examples in splits.values())


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: DataFormatError names the file, the line and the problem
# ---------------------------------------------------------------------------------------------------------------

BAD_CASES = [
    ("relation_columns.tsv", "chemprot", 3, "expected 3 tab-separated columns, found 2"),
    ("relation_label.tsv", "chemprot", 2, "unknown label 'CPR:7'; allowed labels: CPR:3, CPR:4, CPR:5, CPR:6, CPR:9, "
     "false"),
    ("relation_no_header.tsv", "chemprot", 1, "expected the header 'index<TAB>sentence<TAB>label'"),
    ("relation_header_only.tsv", "chemprot", 2, "no examples"),
    ("empty.tsv", "chemprot", 1, "the file is empty"),
    ("empty.tsv", "bc5cdr-chemical", 1, "no examples"),
    ("sts_score.tsv", "biosses", 2, "score 'high' (last column) is not a number"),
    ("sts_no_header.tsv", "biosses", 1, "expected the header"),
    ("ner_columns.tsv", "bc5cdr-chemical", 3, "expected 4 tab-separated columns (token, docid or '-', offset, "
     "label), found 3"),
    ("ner_label.tsv", "bc5cdr-chemical", 2, "unknown label 'B-Chemical'; allowed labels: B, I, O"),
    ("hoc_labels.tsv", "hoc", 2, "expected 10 comma-separated label entries i_v, found 9"),
    ("nli_label.tsv", "mednli", 3, "unknown label 'maybe'; allowed labels: contradiction, neutral, entailment"),
    ("nli_duplicate.tsv", "mednli", 3, "duplicate example id 'u1' (first seen on line 2)"),
]


@pytest.mark.parametrize(("file_name", "task_name", "line", "problem"), BAD_CASES)
def test_bad_input_names_file_and_line(table, file_name, task_name, line, problem):
    path = BAD / file_name
    with pytest.raises(DataFormatError) as caught:
        read_split(path, table.task(task_name))
    message = str(caught.value)
    assert message.startswith(f"{path}, line {line}: ")
    assert problem in message
    assert caught.value.line == line and caught.value.path == path


def test_hoc_entry_out_of_order(tmp_path, table):
    path = tmp_path / "train.tsv"
    entries = ",".join(f"{i}_0" for i in range(10)).replace("3_0", "3_2")
    path.write_text(f"labels\tsentence\tindex\n{entries}\tA .\t1_s0\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"line 2: label entry '3_2' at position 3: expected '3_0' or '3_1'"):
        read_split(path, table.task("hoc"))


def test_data_format_error_is_a_picklable_value_error():
    error = DataFormatError(Path("x/train.tsv"), 17, "expected 3 tab-separated columns, found 2")
    assert isinstance(error, ValueError)
    assert str(error) == "x/train.tsv, line 17: expected 3 tab-separated columns, found 2"
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.line == 17


# ---------------------------------------------------------------------------------------------------------------
# split_long_sentence
# ---------------------------------------------------------------------------------------------------------------


def _words(tags):
    return [f"w{i}" for i in range(len(tags))]


@pytest.mark.parametrize(
    ("tags", "max_words", "spans"),
    [
        (["O", "B", "I"], 30, [(0, 3)]),  # short: one span
        ([], 30, []),  # empty: no span
        (["O"] * 12, 5, [(0, 5), (5, 10), (10, 12)]),  # every point legal: fixed steps
        # cuts allowed at 1, 2, 3, 7 (after an O, not before an I): 3 is the furthest within 4 words
        (["O", "O", "O", "B", "I", "I", "O", "O"], 4, [(0, 3), (3, 7), (7, 8)]),
        # no legal cut within 3 words: the span grows to the next legal cut (7)
        (["B", "I", "I", "I", "I", "I", "O", "O", "O"], 3, [(0, 7), (7, 9)]),
        (["B", "I", "I", "B", "I"], 2, [(0, 5)]),  # no legal cut at all
        (["O", "I", "O"], 1, [(0, 3)]),  # never cut before an I, even one that follows O
        (["O", "O", "B", "O", "O"], 2, [(0, 2), (2, 4), (4, 5)]),  # a cut before B is fine
    ],
)
def test_split_long_sentence(tags, max_words, spans):
    assert split_long_sentence(_words(tags), tags, max_words=max_words) == spans


def test_split_long_sentence_typed_inside_tags():
    tags = ["O", "O", "B-Chemical", "I-Chemical", "O"]
    assert split_long_sentence(_words(tags), tags, max_words=2) == [(0, 2), (2, 5)]


def test_split_long_sentence_default_is_30_words():
    tags = ["O"] * 65
    assert split_long_sentence(_words(tags), tags) == [(0, 30), (30, 60), (60, 65)]


def test_split_long_sentence_rejects_bad_arguments():
    with pytest.raises(ValueError, match="3 words but 2 tags"):
        split_long_sentence(["a", "b", "c"], ["O", "O"])
    with pytest.raises(ValueError, match="max_words"):
        split_long_sentence(["a"], ["O"], max_words=0)


# ---------------------------------------------------------------------------------------------------------------
# The real shared data: counts from the data READMEs (each file read once per session)
# ---------------------------------------------------------------------------------------------------------------

needs_data = pytest.mark.skipif(
    not (DATA_DIR / "blue").is_dir() or not (DATA_DIR / "clinical-public").is_dir(),
    reason=f"shared data not found under {DATA_DIR} (set ${task_module.DATA_DIR_ENV} to the folder holding blue/ "
    "and clinical-public/)",
)


@lru_cache(maxsize=None)
def _read(folder: str, task_name: str, split: str) -> list[Example]:
    task = load_task_table().task(task_name)
    return read_split(DATA_DIR / folder / task.folder / f"{split}.tsv", task)


def _label_counts(examples):
    return Counter(example.label for example in examples)


def _tag_counts(examples):
    return Counter(tag for example in examples for tag in example.label)


@needs_data
def test_chemprot_counts():
    train = _read("blue", "chemprot", "train")
    assert len(train) == 19_303
    assert _label_counts(train) == {
        "CPR:3": 768, "CPR:4": 2251, "CPR:5": 173, "CPR:6": 235, "CPR:9": 727, "false": 15149
    }
    assert sum(example.uid.endswith("#2") for example in train) == 10  # pairs with two gold labels
    assert [len(_read("blue", "chemprot", split)) for split in ("dev", "test")] == [11_820, 16_648]
    # A csv-quoted sentence (line 798 starts with """) is unquoted to one leading quote.
    quoted = next(example for example in train if example.line == 798)
    assert quoted.text_a.startswith('"INTRODUCTION: The principal aim')


@needs_data
def test_bc5cdr_chemical_counts():
    train = _read("blue", "bc5cdr-chemical", "train")
    assert len(train) == 4_820
    assert sum(len(example.text_a) for example in train) == 118_081
    assert _tag_counts(train) == {"B": 5203, "I": 1896, "O": 110982}
    assert sum(word == '""""' for example in train for word in example.text_a) == 49
    assert (train[0].uid, train[0].line) == ("227508.0", 1)
    assert [len(_read("blue", "bc5cdr-chemical", split)) for split in ("dev", "test")] == [4_892, 5_131]


@needs_data
def test_bc5cdr_disease_counts():
    assert _tag_counts(_read("blue", "bc5cdr-disease", "train")) == {"B": 4182, "I": 2862, "O": 111037}


@needs_data
def test_ddi_counts():
    train = _read("blue", "ddi2013-type", "train")
    assert len(train) == 20_468
    assert _label_counts(train) == {
        "DDI-advise": 633, "DDI-effect": 1212, "DDI-int": 146, "DDI-mechanism": 946, "DDI-false": 17531
    }


@needs_data
def test_biosses_counts():
    sizes = [len(_read("blue", "biosses", split)) for split in ("train", "dev", "test")]
    assert sizes == [64, 16, 20]
    train = _read("blue", "biosses", "train")
    assert sum(example.label for example in train) / len(train) == pytest.approx(2.400, abs=5e-4)


@needs_data
def test_hoc_counts():
    train = _read("blue", "hoc", "train")
    assert len(train) == 12_119
    abstracts: dict[str, set[str]] = {}
    for example in train:
        abstracts.setdefault(example.group, set()).update(example.label)
    assert len(abstracts) == 1_295
    assert sum(bool(labels) for labels in abstracts.values()) == 1_098
    hoc = load_task_table().task("hoc")
    per_label = Counter(label for example in train for label in example.label)
    assert [per_label[name] for name in hoc.labels] == [448, 185, 136, 219, 268, 523, 238, 602, 674, 375]
    # The one train sentence that starts with a bare quote keeps it (the file is not csv-quoted).
    assert next(example for example in train if example.line == 10834).text_a.startswith('" Reactive " or')


@needs_data
def test_clinical_public_counts():
    sizes = {
        name: [len(_read("clinical-public", name, split)) for split in ("train", "dev", "test")]
        for name in ("clinicalsts", "i2b2-2010-re", "mednli")
    }
    assert sizes == {"clinicalsts": [340, 113, 113], "i2b2-2010-re": [4_863, 1_635, 1_632], "mednli": [1_700, 200, 500]}
    shareclefe = _read("clinical-public", "shareclefe", "train")
    assert len(shareclefe) == 669
    assert _tag_counts(shareclefe) == {"B": 454, "I": 494, "O": 12098}
    assert _label_counts(_read("clinical-public", "i2b2-2010-re", "train")) == {
        "TrCP": 3126, "TrAP": 1220, "TrIP": 99, "false": 418
    }
    assert _label_counts(_read("clinical-public", "mednli", "train")) == {"entailment": 850, "contradiction": 850}


@needs_data
def test_load_task_with_located_paths():
    table = load_task_table()
    paths = task_module.locate_tasks(table, ["clinicalsts"], domain="clinical-public", data_dir=DATA_DIR)
    splits = load_task(table.task("clinicalsts"), paths["clinicalsts"])
    assert {split: len(examples) for split, examples in splits.items()} == {"train": 340, "dev": 113, "test": 113}


@needs_data
def test_split_long_sentence_on_bc5cdr_never_cuts_an_entity():
    for example in _read("blue", "bc5cdr-chemical", "train"):
        tags = example.label
        spans = split_long_sentence(example.text_a, tags)
        assert spans[0][0] == 0 and spans[-1][1] == len(tags)
        assert all(left[1] == right[0] for left, right in zip(spans, spans[1:]))
        for start, end in spans:
            if end < len(tags):
                assert tags[end - 1] == "O" and tags[end] != "I"
            if end - start > 30:  # only when no legal cut exists within 30 words
                assert not any(tags[k - 1] == "O" and tags[k] != "I" for k in range(start + 1, start + 31))


# ---------------------------------------------------------------------------------------------------------------
# Records never merge: stray quotes, tabs in fields, exact line numbers, byte-order marks
# ---------------------------------------------------------------------------------------------------------------


def _relation_rows(count: int) -> list[str]:
    return [f"{i}.T1.T2\t@CHEMICAL$ binds @GENE$ number {i}.\tfalse" for i in range(count)]


def test_two_stray_quotes_never_merge_rows(tmp_path, table):
    # Each stray quote opens a "quoted field" under csv rules; before, the reader swallowed the following rows.
    rows = _relation_rows(24)
    rows[4] = '4.T1.T2\t"Stray opening quote @CHEMICAL$ and @GENE$.\tCPR:3'
    rows[12] = '12.T1.T2\tAnother @CHEMICAL$ "stray @GENE$.\tfalse'  # mid-field: literal, harmless
    rows[17] = '17.T1.T2\t"Second stray @CHEMICAL$ @GENE$.\tfalse'
    path = tmp_path / "train.tsv"
    path.write_text("index\tsentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as caught:
        read_split(path, table.task("chemprot"))
    assert caught.value.line == 6  # header + rows 0-3, so row 4 starts on line 6
    assert "records may not span lines" in str(caught.value)
    rows[4] = rows[4].replace('"', "")
    path.write_text("index\tsentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as caught:
        read_split(path, table.task("chemprot"))
    assert caught.value.line == 19


def test_quoted_field_hiding_a_tab_is_refused(tmp_path, table):
    path = tmp_path / "train.tsv"
    path.write_text('index\tsentence\tlabel\n1.T1.T2\t"one\ttwo"\tfalse\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"line 2: field 2 contains a tab"):
        read_split(path, table.task("chemprot"))


def test_well_quoted_fields_still_unquote(tmp_path, table):
    path = tmp_path / "train.tsv"
    path.write_text('index\tsentence\tlabel\n1.T1.T2\t"A ""q"" @GENE$"\tfalse\n2.T1.T2\tx "y" z\tfalse\n')
    assert [e.text_a for e in read_split(path, table.task("chemprot"))] == ['A "q" @GENE$', 'x "y" z']


@pytest.mark.parametrize("task_name", ["chemprot", "bc5cdr-chemical", "hoc", "biosses", "mednli"])
def test_bad_byte_is_reported_on_its_own_line(tmp_path, table, task_name):
    source = {"chemprot": "relation_small.tsv", "bc5cdr-chemical": "ner_small.tsv", "hoc": "hoc_small.tsv",
              "biosses": "sts_small.tsv", "mednli": "nli_small.tsv"}[task_name]
    lines = (FIXTURES / source).read_bytes().split(b"\n")
    header, body = (lines[:1], lines[1:]) if task_name != "bc5cdr-chemical" else ([], lines)
    body = [line for line in body if line]
    # Repeat the body (with fresh ids) until the file has more than 20 lines, then break line 20.
    out = list(header)
    copy = 0
    while len(out) < 25:
        out += [_renumber(line, copy, task_name) for line in body]
        if task_name == "bc5cdr-chemical":
            out.append(b"")
        copy += 1
    out[19] = out[19].replace(b"\t", b"\xff\t", 1)
    path = tmp_path / "train.tsv"
    path.write_bytes(b"\n".join(out) + b"\n")
    with pytest.raises(DataFormatError) as caught:
        read_split(path, table.task(task_name))
    assert caught.value.line == 20 and "not valid UTF-8" in str(caught.value) and "0xff" in str(caught.value)


def _renumber(line: bytes, copy: int, task_name: str) -> bytes:
    """Give a fixture row a new id so repeated copies are not duplicates."""
    if not line:
        return line
    fields = line.split(b"\t")
    if task_name == "bc5cdr-chemical":
        if fields[1] != b"-":
            fields[1] = fields[1] + str(copy).encode()
    elif task_name == "hoc":
        fields[2] = f"{copy}".encode() + fields[2]
    else:
        fields[0] = fields[0] + f"-{copy}".encode()
    return b"\t".join(fields)


@pytest.mark.parametrize("task_name, source", [
    ("chemprot", "relation_small.tsv"), ("bc5cdr-chemical", "ner_small.tsv"), ("hoc", "hoc_small.tsv"),
    ("biosses", "sts_small.tsv"), ("mednli", "nli_small.tsv"),
])
def test_byte_order_mark_is_accepted_in_every_file_kind(tmp_path, table, task_name, source):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / source).read_bytes())
    with_bom = read_split(path, table.task(task_name))
    assert with_bom == read_split(FIXTURES / source, table.task(task_name))


def test_crlf_line_ends_are_accepted(tmp_path, table):
    path = tmp_path / "train.tsv"
    path.write_bytes((FIXTURES / "relation_small.tsv").read_bytes().replace(b"\n", b"\r\n"))
    assert read_split(path, table.task("chemprot")) == read_split(FIXTURES / "relation_small.tsv", table.task("chemprot"))


# ---------------------------------------------------------------------------------------------------------------
# Clusters: each unit's document, from the reader and from the uid alone
# ---------------------------------------------------------------------------------------------------------------


def test_fixture_clusters(table):
    assert [e.cluster for e in read_split(FIXTURES / "ner_small.tsv", table.task("bc5cdr-chemical"))] == ["100", "100", "200"]
    assert [e.cluster for e in read_split(FIXTURES / "relation_small.tsv", table.task("chemprot"))] == ["1", "1", "2", "3"]
    assert [e.cluster for e in read_split(FIXTURES / "hoc_small.tsv", table.task("hoc"))] == ["111", "111", "222"]
    assert {e.cluster for e in read_split(FIXTURES / "nli_small.tsv", table.task("mednli"))} == {None}
    assert {e.cluster for e in read_split(FIXTURES / "sts_small.tsv", table.task("biosses"))} == {None}


def test_legacy_cluster_strips_the_repeat_mark(table):
    assert legacy_cluster(table.task("chemprot"), "10076535.T44.T63#2") == "10076535"
    assert legacy_cluster(table.task("ddi2013-type"), "DDI-MedLine.d104.s8.p0") == "DDI-MedLine.d104"
    assert legacy_cluster(table.task("ddi2013-type"), "DrugDDI.d21928724.s0.p1") == "DrugDDI.d21928724"
    assert legacy_cluster(table.task("i2b2-2010-re"), "10907391_3.T6.T4") == "10907391"
    assert legacy_cluster(table.task("bc5cdr-chemical"), "227508.60") == "227508"
    assert legacy_cluster(table.task("hoc"), "12553062_s1") == "12553062"
    assert legacy_cluster(table.task("mednli"), "43ee7645-ce1e") is None


CLUSTER_COUNTS = {  # test split: (units, documents) from the data READMEs where they give them
    ("blue", "bc5cdr-chemical"): (5_131, 500), ("blue", "chemprot"): (16_648, 729),
    ("blue", "ddi2013-type"): (5_761, 192), ("blue", "hoc"): (3_547, 371),
    ("clinical-public", "shareclefe"): (851, 48), ("clinical-public", "i2b2-2010-re"): (1_632, 356),
}


@needs_data
@pytest.mark.parametrize("folder, task_name", [
    ("blue", "bc5cdr-chemical"), ("blue", "bc5cdr-disease"), ("blue", "chemprot"), ("blue", "ddi2013-type"),
    ("blue", "biosses"), ("blue", "hoc"), ("clinical-public", "clinicalsts"), ("clinical-public", "shareclefe"),
    ("clinical-public", "i2b2-2010-re"), ("clinical-public", "mednli"),
])
def test_reader_and_legacy_clusters_agree_on_the_real_data(folder, task_name):
    task = load_task_table().task(task_name)
    examples = _read(folder, task_name, "test")
    assert [legacy_cluster(task, e.uid) for e in examples] == [e.cluster for e in examples]
    clusters = {e.cluster for e in examples}
    if (folder, task_name) in CLUSTER_COUNTS:
        assert (len(examples), len(clusters)) == CLUSTER_COUNTS[(folder, task_name)]
        assert None not in clusters
    elif task.reader == "ner":
        assert None not in clusters
    else:
        assert clusters == {None}  # independent units (STS pairs, NLI statements)


def test_repeated_index_with_other_text_is_refused(tmp_path, table):
    path = tmp_path / "train.tsv"
    path.write_text("index\tsentence\tlabel\n1.T1.T2\t@CHEMICAL$ binds @GENE$.\tCPR:4\n"
                    "1.T1.T2\t@CHEMICAL$ binds @GENE$.\tCPR:9\n1.T1.T2\tSomething else @GENE$.\tfalse\n")
    with pytest.raises(DataFormatError, match=r"line 4: index '1.T1.T2' repeats line 2 with a different sentence"):
        read_split(path, table.task("chemprot"))


def test_legacy_cluster_covers_the_legacy_stores_predictions():
    """Prediction files written before records carried a cluster get one from the uid alone."""
    import json

    from stores import LEGACY_STORE

    table = load_task_table()
    files = sorted(LEGACY_STORE.glob("runs/*/predictions/*.jsonl"))
    assert files
    for path in files:
        task = table.task(path.stem)
        clusters = [legacy_cluster(task, json.loads(line)["uid"]) for line in path.read_text().splitlines()]
        if task.reader in ("ner", "hoc") or task.cluster_pattern:
            assert None not in clusters, path
            assert len(set(clusters)) < len(clusters), path  # units share documents
        else:
            assert set(clusters) == {None}, path
