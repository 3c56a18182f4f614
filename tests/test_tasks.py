"""The task table: built-in entries, user task files, and data-location errors."""

from pathlib import Path

import pytest

from transfer.data.tasks import DataNotFoundError, TaskConfigError, TaskSpec, load_task_table, locate_tasks, resolve_data_dir


def test_builtin_table_has_every_blue_task():
    table = load_task_table()
    expected = {"bc5cdr-chemical", "bc5cdr-disease", "chemprot", "ddi2013-type", "biosses", "hoc",
                "clinicalsts", "shareclefe", "i2b2-2010-re", "mednli"}
    assert expected <= set(table.tasks)
    assert table.domain("biomedical").tasks == ("bc5cdr-chemical", "bc5cdr-disease", "chemprot", "ddi2013-type")
    assert table.domain("clinical-public").tasks == table.domain("clinical").tasks
    assert table.task("chemprot").labels[-1] == "false"
    assert table.task("clinicalsts").num_labels == 1


def test_user_task_file_adds_a_task_without_code(tmp_path, tiny_data_dir):
    task_file = tmp_path / "mine.toml"
    task_file.write_text(
        '[tasks.my-chem]\ndomain = "biomedical"\nkind = "tagging"\nreader = "ner"\n'
        'labels = ["B", "I", "O"]\nnegative_label = "O"\nmetric = "entity_f1"\nfolder = "bc5cdr-chemical"\n'
    )
    table = load_task_table([task_file])
    paths = locate_tasks(table, ["my-chem"], data_dir=tiny_data_dir)
    assert paths["my-chem"]["train"] == tiny_data_dir / "blue" / "bc5cdr-chemical" / "train.tsv"


@pytest.mark.parametrize("entry, message", [
    ('kind = "ranking"', "kind 'ranking' is not one of"),
    ('metric = "auc"', "metric 'auc' is not one of"),
    ('colour = "red"', "unknown key(s) colour"),
])
def test_bad_task_entries_are_named(tmp_path, entry, message):
    base = {"domain": '"biomedical"', "kind": '"classification"', "reader": '"relation"', "metric": '"accuracy"',
            "labels": '["a", "b"]'}
    key = entry.split(" = ")[0]
    base[key] = entry.split(" = ")[1]
    text = "[tasks.bad]\n" + "".join(f"{k} = {v}\n" for k, v in base.items())
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TaskConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_task_table([path])
    assert str(path) in str(info.value)


def test_redefining_a_builtin_task_is_an_error(tmp_path):
    path = tmp_path / "dup.toml"
    path.write_text('[tasks.chemprot]\ndomain = "biomedical"\nkind = "regression"\nreader = "sts"\nmetric = "pearson"\n')
    with pytest.raises(TaskConfigError, match="already defined"):
        load_task_table([path])


def test_tagging_task_needs_an_outside_tag():
    with pytest.raises(TaskConfigError, match="negative_label"):
        TaskSpec(name="x", domain="d", kind="tagging", reader="ner", metric="entity_f1", labels=("B", "I", "O"))


def test_missing_domain_data_names_every_folder_and_points_to_stand_ins(tmp_path):
    table = load_task_table()
    with pytest.raises(DataNotFoundError) as info:
        locate_tasks(table, table.domain("clinical").tasks, data_dir=tmp_path)
    text = str(info.value)
    for name in table.domain("clinical").tasks:
        assert str(tmp_path / "clinical" / name) in text
    assert "--data-dir" in text and "TRANSFER_DATA_DIR" in text
    assert "--domain clinical-public" in text


def test_missing_split_is_reported(tiny_data_dir, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "blue" / "chemprot", root / "blue" / "chemprot")
    (root / "blue" / "chemprot" / "test.tsv").unlink()
    with pytest.raises(DataNotFoundError, match="has no test.tsv"):
        locate_tasks(load_task_table(), ["chemprot"], data_dir=root)


def test_devel_is_accepted_for_dev(tiny_data_dir, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "blue" / "chemprot", root / "blue" / "chemprot")
    (root / "blue" / "chemprot" / "dev.tsv").rename(root / "blue" / "chemprot" / "devel.tsv")
    paths = locate_tasks(load_task_table(), ["chemprot"], data_dir=root)
    assert paths["chemprot"]["dev"].name == "devel.tsv"


def test_data_dir_resolution_order(monkeypatch):
    monkeypatch.setenv("TRANSFER_DATA_DIR", "/env/data")
    assert resolve_data_dir("/flag") == (Path("/flag"), "--data-dir")
    assert resolve_data_dir(None)[0] == Path("/env/data")
    monkeypatch.delenv("TRANSFER_DATA_DIR")
    assert resolve_data_dir(None)[0] == Path("data")


@pytest.mark.parametrize("entry, message", [
    ('labels = "BIO"', "labels must be a list of strings"),
    ("labels = 5", "labels must be a list of strings"),
    ('labels = ["a", 2]', "labels must be a list of strings"),
    ("kind = 3", "kind must be a string"),
    ("negative_label = true", "negative_label must be a string"),
    ('folder = "../../elsewhere"', "is not a plain name"),
    ('folder = "/abs/path"', "is not a plain name"),
    ('cluster_pattern = "(unclosed"', "not a valid regular expression"),
    ('cluster_pattern = "^\\\\d+"', "needs a group"),
])
def test_task_values_are_type_checked(tmp_path, entry, message):
    base = {"domain": '"biomedical"', "kind": '"classification"', "reader": '"relation"', "metric": '"accuracy"',
            "labels": '["a", "b"]'}
    key, value = entry.split(" = ", 1)
    base[key] = value
    path = tmp_path / "bad.toml"
    path.write_text("[tasks.bad]\n" + "".join(f"{k} = {v}\n" for k, v in base.items()))
    with pytest.raises(TaskConfigError) as info:
        load_task_table([path])
    assert message in str(info.value) and str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("name", ['"../../x"', '"/x"', '"a/b"', '".hidden"', '"a..b"'])
def test_task_names_are_plain_names(tmp_path, name):
    path = tmp_path / "bad.toml"
    path.write_text(f'[tasks.{name}]\ndomain = "biomedical"\nkind = "regression"\nreader = "sts"\nmetric = "pearson"\n')
    with pytest.raises(TaskConfigError, match="is not a plain name"):
        load_task_table([path])


def test_task_file_with_a_bad_byte_names_its_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[tasks.x]\ndomain = "biomedical"\nkind = "re\xffgression"\n')
    with pytest.raises(TaskConfigError, match=r"bad.toml, line 3: not valid UTF-8"):
        load_task_table([path])


def test_task_file_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[tasks.x]\ndomain = "biomedical"\nkind = "regression"\nreader = "sts"\n'
                     b'metric = "pearson"\n')
    assert load_task_table([path]).task("x").kind == "regression"


def test_cluster_pattern_is_refused_where_the_format_names_documents(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[tasks.x]\ndomain = "biomedical"\nkind = "tagging"\nreader = "ner"\nlabels = ["B", "I", "O"]\n'
                    'negative_label = "O"\nmetric = "entity_f1"\ncluster_pattern = "^(.+)$"\n')
    with pytest.raises(TaskConfigError, match="drop cluster_pattern"):
        load_task_table([path])


def test_unknown_domain_names_the_file_and_entry(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[tasks.x]\ndomain = "nowhere"\nkind = "regression"\nreader = "sts"\nmetric = "pearson"\n')
    with pytest.raises(TaskConfigError, match=r"mine.toml: \[tasks.x\]: domain 'nowhere' is not defined") as info:
        load_task_table([path])
    assert str(info.value).startswith(str(path))
