"""The store's names (store/catalog.py), keep_alive durations and pull names, without a server."""
import os
import shutil

import pytest

from tokenmill.api.errors import APIError
from tokenmill.server.keep_alive import parse_keep_alive
from tokenmill.store.catalog import ModelStore, StoreError
from tokenmill.store.pull import PullError, parse_name, pick_file


@pytest.fixture
def store(tmp_path, smollm2_path):
    d = tmp_path / "models"
    (d / "team").mkdir(parents=True)
    os.symlink(smollm2_path, d / "team" / "smol.gguf")
    os.symlink(smollm2_path, d / "other.gguf")
    (d / "notes.txt").write_text("not a model")
    (d / ".cache").mkdir()
    os.symlink(smollm2_path, d / ".cache" / "hidden.gguf")
    return ModelStore(str(d), {"bundled": smollm2_path})


def test_names_and_details(store):
    names = [m.name for m in store.list()]
    assert names == ["bundled", "other", "team/smol"]  # named first, then the directory in order
    m = store.resolve("team/smol:latest")
    assert m.details["family"] == "llama" and m.details["quantization_level"] == "Q4_1"
    assert m.details["parameter_size"] == "135M" and m.removable
    assert not store.resolve("bundled").removable
    with pytest.raises(StoreError) as e:
        store.resolve("nope")
    assert e.value.status == 404


def test_copy_delete(store):
    store.copy("other", "alias:v1")
    assert store.resolve("alias:v1").path == store.resolve("other").path
    with pytest.raises(StoreError):
        store.copy("other", "alias:v1")  # exists
    with pytest.raises(StoreError):
        store.copy("other", "../escape")
    store.delete("alias:v1")  # a name alone: the file stays
    assert os.path.lexists(os.path.join(store.directory, "other.gguf"))
    store.copy("other", "again")
    store.delete("other")  # the file, and every name of it
    assert not os.path.lexists(os.path.join(store.directory, "other.gguf"))
    assert "again" not in [m.name for m in store.list()]
    with pytest.raises(StoreError) as e:
        store.delete("bundled")
    assert e.value.status == 400
    store.copy("bundled", "mine")  # a name for a file outside the directory: never deleted
    store.delete("mine")
    assert os.path.exists(store.resolve("bundled").path)


def test_a_broken_file_is_skipped(store):
    with open(os.path.join(store.directory, "broken.gguf"), "wb") as f:
        f.write(b"GGUF\x03\x00")
    assert "broken" not in [m.name for m in store.list()]


@pytest.mark.parametrize("value, seconds", [("5m", 300), ("1h30m", 5400), ("0", 0), (0, 0), ("-1", None),
                                            (-1, None), ("-5m", None), ("90s", 90), (2.5, 2.5), ("250ms", 0.25)])
def test_keep_alive(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", True, [], "m5"])
def test_keep_alive_refused(value):
    with pytest.raises(APIError) as e:
        parse_keep_alive(value)
    assert e.value.status == 400


def test_pull_names():
    assert parse_name("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M") == \
        ("bartowski/Llama-3.2-1B-Instruct-GGUF", "Q4_K_M")
    assert parse_name("owner/repo") == ("owner/repo", None)
    assert parse_name("https://huggingface.co/owner/repo:latest") == ("owner/repo", None)
    for bad in ("llama3.2", "a/b/c", ""):
        with pytest.raises(PullError):
            parse_name(bad)
    files = ["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "m-Q4_K_S.gguf", "mmproj-m-f16.gguf"]
    assert pick_file(files, None, "x") == "m-Q4_K_M.gguf"
    assert pick_file(files, "q8_0", "x") == "m-Q8_0.gguf"
    assert pick_file(files, "m-Q4_K_S.gguf", "x") == "m-Q4_K_S.gguf"
    with pytest.raises(PullError, match="no GGUF file of the repository matches"):
        pick_file(files, "Q5_K_M", "x")
    with pytest.raises(PullError, match="split"):
        pick_file(["m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf"], None, "x")


def test_cli_list_and_rm(store, capsys, tmp_path):
    from tokenmill.cli import main
    shutil.copy(store.resolve("bundled").path, os.path.join(store.directory, "copy.gguf"))
    assert main(["list", "--models", store.directory]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "FAMILY", "PARAMETERS", "QUANTIZATION", "SIZE", "MODIFIED"]
    assert "copy" in out and "team/smol" in out and "Q4_1" in out
    assert main(["rm", "copy", "--models", store.directory]) == 0
    assert not os.path.exists(os.path.join(store.directory, "copy.gguf"))
    assert main(["rm", "nope", "--models", store.directory]) == 1
