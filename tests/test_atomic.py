"""The atomic writers of mindrlhf.atomic: success renames into place, a failure leaves the old file (or folder)
as it was and no temporary file behind."""

import os
import stat

import pytest

from mindrlhf.atomic import atomic_files, atomic_folder, atomic_open, atomic_path, write_json, write_text


class Boom(Exception):
    pass


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_atomic_path_renames_on_success_and_creates_the_folder(tmp_path):
    path = tmp_path / "new" / "out.txt"
    with atomic_path(str(path)) as tmp:
        assert os.path.dirname(tmp) == str(path.parent) and tmp != str(path)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("done")
        assert not path.exists()  # nothing under the final name before the block ends
    assert read(path) == "done"
    assert os.listdir(path.parent) == ["out.txt"]


def test_atomic_open_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    write_text(str(path), "old")
    with pytest.raises(Boom):
        with atomic_open(str(path)) as f:
            f.write("half of the new")
            raise Boom()
    assert read(path) == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_writer_that_fails_before_creating_the_file(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(Boom):
        with atomic_path(str(path), suffix=".ckpt"):
            raise Boom()
    assert os.listdir(tmp_path) == []


def test_mode_json_and_newline(tmp_path):
    path = tmp_path / "table.json"
    write_json(str(path), {"a": "é"}, indent=4, mode=0o750, trailing_newline=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750
    assert read(path) == '{\n    "a": "\\u00e9"\n}\n'
    write_text(str(path), "x\ny\n", newline="\n")
    with open(path, "rb") as f:
        assert f.read() == b"x\ny\n"


def test_atomic_folder_replaces_a_whole_folder_or_nothing(tmp_path):
    folder = tmp_path / "hf"
    with atomic_folder(str(folder)) as tmp:
        with open(os.path.join(tmp, "a.txt"), "w", encoding="utf-8") as f:
            f.write("one")
    with atomic_folder(str(folder)) as tmp:
        with open(os.path.join(tmp, "b.txt"), "w", encoding="utf-8") as f:
            f.write("two")
    assert os.listdir(folder) == ["b.txt"]  # the old folder's files are gone with it
    with pytest.raises(Boom):
        with atomic_folder(str(folder)) as tmp:
            with open(os.path.join(tmp, "c.txt"), "w", encoding="utf-8") as f:
                f.write("three")
            raise Boom()
    assert os.listdir(folder) == ["b.txt"] and os.listdir(tmp_path) == ["hf"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o777 & ~umask


def test_atomic_files_move_in_order_or_not_at_all(tmp_path):
    paths = [str(tmp_path / "data.db"), str(tmp_path / "data")]
    with pytest.raises(Boom):
        with atomic_files(paths) as tmp:
            for path in paths:
                with open(os.path.join(tmp, os.path.basename(path)), "w", encoding="utf-8") as f:
                    f.write("x")
            raise Boom()
    assert os.listdir(tmp_path) == []
    with atomic_files(paths) as tmp:
        for path in paths:
            with open(os.path.join(tmp, os.path.basename(path)), "w", encoding="utf-8") as f:
                f.write(os.path.basename(path))
    assert sorted(os.listdir(tmp_path)) == ["data", "data.db"] and read(paths[0]) == "data.db"
    with pytest.raises(ValueError, match="not in one folder"):
        with atomic_files([str(tmp_path / "a"), str(tmp_path / "sub" / "b")]):
            pass
