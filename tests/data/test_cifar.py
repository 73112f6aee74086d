"""CIFAR-10 reading, finding, downloading (through a fake transport) and unpacking."""
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest

from tinygnet.data import cifar
from tinygnet.data.cifar import (CIFAR10, CorruptDatasetError, DatasetError,
                                 DatasetNotFoundError, resolve_data_root)

# ---------------------------------------------------------------- tiny look-alikes
# Batches in the official format, but of PER_BATCH images instead of 10000.
PER_BATCH = 4
CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]


def batch_arrays(seed):
    """(data PER_BATCH x 3072 uint8, labels list of ints) for one batch."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=PER_BATCH)]
    return data, labels


def batch_pickle(data, labels, str_keys=False, name="batch"):
    """Pickle bytes of one batch: bytes keys as Python 2 wrote them, or str keys."""
    content = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
               b"filenames": [b"img%d.png" % i for i in range(len(labels))]}
    if str_keys:
        content = {key.decode(): value for key, value in content.items()}
        content["batch_label"] = name
        return pickle.dumps(content, protocol=pickle.HIGHEST_PROTOCOL)
    return pickle.dumps(content, protocol=2)


def meta_pickle(str_keys=False):
    if str_keys:
        return pickle.dumps({"label_names": CLASSES, "num_cases_per_batch": PER_BATCH,
                             "num_vis": 3072})
    return pickle.dumps({b"label_names": [c.encode() for c in CLASSES],
                         b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072}, protocol=2)


def write_folder(root, str_keys=False):
    """root/cifar-10-batches-py/ with all 7 files; returns {file name: (data, labels)}."""
    folder = os.path.join(root, cifar.FOLDER_NAME)
    os.makedirs(folder)
    written = {}
    for seed, name in enumerate(cifar.TRAIN_FILES + cifar.TEST_FILES):
        data, labels = batch_arrays(seed)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(batch_pickle(data, labels, str_keys, name))
        written[name] = (data, labels)
    with open(os.path.join(folder, cifar.META_FILE), "wb") as f:
        f.write(meta_pickle(str_keys))
    return written


def archive_bytes(files, compress=True):
    """A tar.gz (or plain tar) holding ``files`` ({member name: bytes}) under cifar-10-batches-py/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"{cifar.FOLDER_NAME}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def official_files():
    files = {}
    for seed, name in enumerate(cifar.TRAIN_FILES + cifar.TEST_FILES):
        files[name] = batch_pickle(*batch_arrays(seed), name=name)
    files[cifar.META_FILE] = meta_pickle()
    return files


@pytest.fixture(autouse=True)
def tiny_batches(monkeypatch):
    """Every test here reads batches of PER_BATCH images."""
    monkeypatch.setattr(cifar, "IMAGES_PER_BATCH", PER_BATCH)


def leftovers(root):
    """Everything in root (hidden temporary files and folders included)."""
    return sorted(os.listdir(root))


class FakeResponse(io.BytesIO):
    """What urlopen returns, as far as the download code cares."""

    def __init__(self, content):
        super().__init__(content)
        self.headers = {"Content-Length": str(len(content))}


def serving(content, calls=None):
    def fetch(url):
        if calls is not None:
            calls.append(url)
        return FakeResponse(content)
    return fetch


def no_network(url):
    raise urllib.error.URLError("network is unreachable")


# ---------------------------------------------------------------- parsing
@pytest.mark.parametrize("str_keys", [False, True], ids=["bytes-keys", "latin1-str-keys"])
def test_reads_train_and_test_splits(tmp_path, str_keys):
    written = write_folder(tmp_path, str_keys=str_keys)
    train = CIFAR10(tmp_path, train=True, download=False)
    test = CIFAR10(tmp_path, train=False, download=False)
    assert len(train) == 5 * PER_BATCH and len(test) == PER_BATCH
    assert train.images.dtype == np.uint8 and train.images.shape == (5 * PER_BATCH, 3, 32, 32)
    assert train.labels.dtype == np.int64 and test.labels.dtype == np.int64
    assert train.classes == CLASSES
    data = np.concatenate([written[name][0] for name in cifar.TRAIN_FILES])
    labels = sum((written[name][1] for name in cifar.TRAIN_FILES), [])
    np.testing.assert_array_equal(train.labels, labels)
    np.testing.assert_array_equal(test.labels, written["test_batch"][1])
    # Layout: a row is the red plane, then green, then blue, each 32 rows of 32.
    for n in range(len(train)):
        for c, y, x in [(0, 0, 0), (0, 0, 31), (1, 5, 7), (2, 31, 0), (2, 31, 31)]:
            assert train.images[n, c, y, x] == data[n, 1024 * c + 32 * y + x]


def test_str_keyed_batches_need_no_bytes(tmp_path):
    write_folder(tmp_path, str_keys=True)
    assert CIFAR10(tmp_path, train=False, download=False).classes[0] == "airplane"


def replace_file(tmp_path, name, content):
    with open(tmp_path / cifar.FOLDER_NAME / name, "wb") as f:
        f.write(content)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_batch_error_names_the_file(tmp_path, damage):
    write_folder(tmp_path)
    good = (tmp_path / cifar.FOLDER_NAME / "data_batch_3").read_bytes()
    content = {"garbage": b"this is not a pickle at all" * 10,
               "truncated": good[:len(good) // 2], "empty": b""}[damage]
    replace_file(tmp_path, "data_batch_3", content)
    with pytest.raises(CorruptDatasetError, match="data_batch_3"):
        CIFAR10(tmp_path, train=True, download=False)


@pytest.mark.parametrize("data, labels, problem", [
    (np.zeros((PER_BATCH, 3000), np.uint8), [0] * PER_BATCH, "3072"),
    (np.zeros((PER_BATCH, 3072), np.float32), [0] * PER_BATCH, "uint8"),
    (np.zeros((PER_BATCH, 3072), np.uint8), [0] * (PER_BATCH - 1), "labels"),
    (np.zeros((PER_BATCH, 3072), np.uint8), [0, 1, 2, 10], "0..9"),
    (np.zeros((PER_BATCH, 3072), np.uint8), [0, -1, 2, 3], "0..9"),
])
def test_batch_with_wrong_contents_is_rejected(tmp_path, data, labels, problem):
    write_folder(tmp_path)
    replace_file(tmp_path, "test_batch", batch_pickle(data, labels))
    with pytest.raises(CorruptDatasetError, match=f"test_batch.*{problem}"):
        CIFAR10(tmp_path, train=False, download=False)


def test_batch_without_data_key_is_rejected(tmp_path):
    write_folder(tmp_path)
    replace_file(tmp_path, "test_batch", pickle.dumps({b"labels": [0] * PER_BATCH}))
    with pytest.raises(CorruptDatasetError, match="test_batch.*'data'"):
        CIFAR10(tmp_path, train=False, download=False)


class _MakesFolder:
    """A pickle that would create a folder when loaded by a trusting unpickler."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_pickle_cannot_run_code(tmp_path):
    write_folder(tmp_path)
    marker = str(tmp_path / "pwned")
    replace_file(tmp_path, "test_batch", pickle.dumps({b"data": _MakesFolder(marker)}))
    with pytest.raises(CorruptDatasetError, match="test_batch.*refusing"):
        CIFAR10(tmp_path, train=False, download=False)
    assert not os.path.exists(marker)


def test_incomplete_folder_lists_missing_files(tmp_path):
    write_folder(tmp_path)
    os.remove(tmp_path / cifar.FOLDER_NAME / "data_batch_2")
    os.remove(tmp_path / cifar.FOLDER_NAME / "batches.meta")
    with pytest.raises(CorruptDatasetError, match="data_batch_2.*batches.meta|batches.meta.*data_batch_2"):
        CIFAR10(tmp_path, train=False, download=False)


# ---------------------------------------------------------------- where the data lives
def test_root_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TINYGNET_DATA", raising=False)
    assert resolve_data_root() == str(tmp_path / "home" / ".cache" / "tinygnet")
    monkeypatch.setenv("TINYGNET_DATA", str(tmp_path / "env"))
    assert resolve_data_root() == str(tmp_path / "env")
    assert resolve_data_root(tmp_path / "arg") == str(tmp_path / "arg")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root("relative") == str(tmp_path / "relative")


def test_environment_variable_is_used_by_the_dataset(tmp_path, monkeypatch):
    write_folder(tmp_path)
    monkeypatch.setenv("TINYGNET_DATA", str(tmp_path))
    assert len(CIFAR10(train=False, download=False)) == PER_BATCH


def test_not_found_offline_says_what_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as caught:
        CIFAR10(tmp_path, download=False)
    message = str(caught.value)
    for needed in [str(tmp_path), cifar.ARCHIVE_NAME, cifar.FOLDER_NAME, cifar.URL,
                   "--data", "TINYGNET_DATA"]:
        assert needed in message
    assert isinstance(caught.value, DatasetError) and isinstance(caught.value, RuntimeError)


def test_network_failure_is_dataset_not_found_and_leaves_nothing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="network is unreachable") as caught:
        CIFAR10(tmp_path, fetch=no_network, progress=False)
    assert cifar.URL in str(caught.value) and "TINYGNET_DATA" in str(caught.value)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- download
def test_download_verifies_md5_then_unpacks(tmp_path, monkeypatch):
    content = archive_bytes(official_files())
    monkeypatch.setattr(cifar, "MD5", hashlib.md5(content).hexdigest())
    calls = []
    data = CIFAR10(tmp_path, train=False, fetch=serving(content, calls), progress=False)
    assert calls == [cifar.URL]
    assert len(data) == PER_BATCH
    assert leftovers(tmp_path) == sorted([cifar.ARCHIVE_NAME, cifar.FOLDER_NAME])
    assert (tmp_path / cifar.ARCHIVE_NAME).read_bytes() == content
    # A second load uses the folder: no download.
    CIFAR10(tmp_path, train=False, fetch=no_network)


def test_md5_mismatch_is_an_error_and_leaves_nothing(tmp_path):
    content = archive_bytes(official_files())   # not the official archive: md5 differs
    with pytest.raises(CorruptDatasetError, match="md5") as caught:
        CIFAR10(tmp_path, fetch=serving(content), progress=False)
    assert cifar.MD5 in str(caught.value)
    assert leftovers(tmp_path) == []


def test_interrupted_download_leaves_nothing(tmp_path):
    class Broken(FakeResponse):
        def read(self, size=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return super().read(10)

    with pytest.raises(DatasetNotFoundError, match="connection reset"):
        CIFAR10(tmp_path, fetch=lambda url: Broken(b"x" * 100), progress=False)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- unpacking
def test_user_archive_is_unpacked_without_md5_check(tmp_path):
    (tmp_path / cifar.ARCHIVE_NAME).write_bytes(archive_bytes(official_files()))
    data = CIFAR10(tmp_path, train=True, download=False)
    assert len(data) == 5 * PER_BATCH
    assert leftovers(tmp_path) == sorted([cifar.ARCHIVE_NAME, cifar.FOLDER_NAME])


def unsafe_archive(tmp_path, add_member):
    """The official files plus one member added by ``add_member(tar)``."""
    path = tmp_path / cifar.ARCHIVE_NAME
    with tarfile.open(path, "w:gz") as tar:
        for name, content in official_files().items():
            info = tarfile.TarInfo(f"{cifar.FOLDER_NAME}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        add_member(tar)
    return path


def file_member(name, content=b"evil"):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return add


def link_member(name, target, kind=tarfile.SYMTYPE):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        tar.addfile(info)
    return add


@pytest.mark.parametrize("add_member", [
    file_member("../evil"),
    file_member(f"{cifar.FOLDER_NAME}/../../evil"),
    file_member("/tmp/tinygnet-test-evil-absolute"),
    link_member(f"{cifar.FOLDER_NAME}/escape", "../../outside"),
    link_member(f"{cifar.FOLDER_NAME}/escape", "/etc/passwd"),
    link_member(f"{cifar.FOLDER_NAME}/hard", "../outside", kind=tarfile.LNKTYPE),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-dotdot", "symlink-absolute", "hardlink"])
def test_unsafe_archive_is_refused(tmp_path, add_member):
    root = tmp_path / "root"
    root.mkdir()
    unsafe_archive(root, add_member)
    with pytest.raises(CorruptDatasetError, match="refusing"):
        CIFAR10(root, download=False)
    assert leftovers(root) == [cifar.ARCHIVE_NAME]
    assert leftovers(tmp_path) == ["root"]
    assert not os.path.exists("/tmp/tinygnet-test-evil-absolute")


def test_link_inside_the_folder_is_allowed(tmp_path):
    unsafe_archive(tmp_path, link_member(f"{cifar.FOLDER_NAME}/readme", "batches.meta"))
    assert len(CIFAR10(tmp_path, train=False, download=False)) == PER_BATCH


def test_truncated_archive_leaves_no_folder(tmp_path):
    content = archive_bytes(official_files())
    (tmp_path / cifar.ARCHIVE_NAME).write_bytes(content[:len(content) * 2 // 3])
    with pytest.raises(CorruptDatasetError, match=cifar.ARCHIVE_NAME):
        CIFAR10(tmp_path, download=False)
    assert leftovers(tmp_path) == [cifar.ARCHIVE_NAME]


def test_archive_missing_a_batch_leaves_no_folder(tmp_path):
    files = official_files()
    del files["data_batch_4"]
    (tmp_path / cifar.ARCHIVE_NAME).write_bytes(archive_bytes(files))
    with pytest.raises(CorruptDatasetError, match="data_batch_4"):
        CIFAR10(tmp_path, download=False)
    assert leftovers(tmp_path) == [cifar.ARCHIVE_NAME]


def test_killed_unpack_never_leaves_a_complete_looking_folder(tmp_path, monkeypatch):
    """A process killed after extracting, before the rename: no cleanup runs at all."""
    (tmp_path / cifar.ARCHIVE_NAME).write_bytes(archive_bytes(official_files()))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(cifar, "check_folder", killed)
        patch.setattr(cifar.shutil, "rmtree", lambda *args, **kwargs: None)  # as if killed -9
        with pytest.raises(KeyboardInterrupt):
            CIFAR10(tmp_path, download=False)
    assert not (tmp_path / cifar.FOLDER_NAME).exists()
    staging = [name for name in leftovers(tmp_path) if name != cifar.ARCHIVE_NAME]
    assert len(staging) == 1 and staging[0].startswith(".") and staging[0].endswith(".partial")
    # The next run unpacks again from scratch, and clears what the killed one left.
    assert len(CIFAR10(tmp_path, train=False, download=False)) == PER_BATCH
    assert leftovers(tmp_path) == sorted([cifar.ARCHIVE_NAME, cifar.FOLDER_NAME])


def test_a_staging_folder_is_removed_only_once_no_unpack_holds_it(tmp_path):
    staging, held = cifar._new_staging(str(tmp_path))        # an unpack under way
    try:
        assert cifar.remove_stale_staging(str(tmp_path)) == []
        assert os.path.isdir(staging)
    finally:
        os.close(held)                                         # its process ends (or dies)
    assert cifar.remove_stale_staging(str(tmp_path)) == [staging]
    assert leftovers(tmp_path) == []


def test_interrupted_unpack_cleans_up(tmp_path, monkeypatch):
    (tmp_path / cifar.ARCHIVE_NAME).write_bytes(archive_bytes(official_files()))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cifar, "check_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        CIFAR10(tmp_path, download=False)
    assert leftovers(tmp_path) == [cifar.ARCHIVE_NAME]


# ---------------------------------------------------------------- file-system mistakes
def test_data_folder_that_is_a_file_is_named_with_where_it_came_from(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "cifar.tar"
    not_a_folder.write_bytes(b"x")
    monkeypatch.setenv("TINYGNET_DATA", str(not_a_folder))
    with pytest.raises(DatasetNotFoundError, match=r"cifar.tar \(from \$TINYGNET_DATA\) is a "
                                                   r"file, not a folder"):
        CIFAR10(fetch=no_network, progress=False)
    with pytest.raises(DatasetNotFoundError, match=r"cifar.tar/data lies under .*cifar.tar, "
                                                   r"which is a file"):
        CIFAR10(not_a_folder / "data", fetch=no_network, progress=False)
    assert not_a_folder.read_bytes() == b"x"


def test_failed_download_leaves_no_folder_it_created(tmp_path):
    mistyped = tmp_path / "dtaa" / "cifar"
    with pytest.raises(DatasetNotFoundError, match="network is unreachable"):
        CIFAR10(mistyped, fetch=no_network, progress=False)
    assert leftovers(tmp_path) == []


def test_corrupt_batch_in_a_folder_says_to_delete_the_folder(tmp_path):
    write_folder(tmp_path)
    good = (tmp_path / cifar.FOLDER_NAME / "data_batch_2").read_bytes()
    replace_file(tmp_path, "data_batch_2", good[:len(good) // 2])
    with pytest.raises(CorruptDatasetError) as caught:
        CIFAR10(tmp_path, train=True, download=False)
    message = str(caught.value)
    assert "data_batch_2" in message
    assert f"{tmp_path / cifar.FOLDER_NAME} is damaged: delete it to unpack or download it again" \
        in message


def test_archive_damaged_mid_stream_is_called_corrupt(tmp_path):
    """A damaged tar header ends the archive early without an error: files go missing."""
    files = official_files()
    content = bytearray(archive_bytes(files, compress=False))
    start = content.index(b"data_batch_3") // 512 * 512      # the header block of data_batch_3
    content[start:start + 512] = b"\xff" * 512
    (tmp_path / cifar.ARCHIVE_NAME).write_bytes(content)
    with pytest.raises(CorruptDatasetError) as caught:
        CIFAR10(tmp_path, download=False)
    message = str(caught.value)
    assert f"{tmp_path / cifar.ARCHIVE_NAME} is corrupt or incomplete" in message
    assert "data_batch_3" in message and "download it again" in message
    assert ".partial" not in message
    assert leftovers(tmp_path) == [cifar.ARCHIVE_NAME]


def test_an_unreadable_batch_is_called_unreadable_not_damaged(tmp_path, monkeypatch):
    write_folder(tmp_path)
    denied = str(tmp_path / cifar.FOLDER_NAME / "test_batch")
    real_open = open

    def permission_denied(path, *args, **kwargs):   # chmod 000 does not stop root, who runs CI
        if os.fspath(path) == denied:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cifar, "open", permission_denied, raising=False)
    with pytest.raises(DatasetError) as caught:
        CIFAR10(tmp_path, train=False, download=False)
    assert str(caught.value) == (f"cannot read {denied}: Permission denied; make it readable (it "
                                 f"is not damaged as far as tinygnet can tell)")


@pytest.mark.parametrize("inside", [cifar.FOLDER_NAME, cifar.ARCHIVE_NAME])
def test_pointing_at_the_data_itself_names_the_folder_above(tmp_path, inside):
    write_folder(tmp_path)
    (tmp_path / cifar.ARCHIVE_NAME).write_bytes(archive_bytes(official_files()))
    before = leftovers(tmp_path)
    what = ("the unpacked cifar-10-batches-py/ folder itself" if inside == cifar.FOLDER_NAME
            else "the cifar-10-python.tar.gz archive itself")
    with pytest.raises(DatasetNotFoundError) as caught:
        CIFAR10(tmp_path / inside, fetch=no_network, progress=False)
    assert str(caught.value) == (f"the data folder {tmp_path / inside} is {what}; tinygnet wants "
                                 f"the folder that holds it: {tmp_path} (--data DIR or "
                                 f"$TINYGNET_DATA)")
    assert leftovers(tmp_path) == before and os.listdir(tmp_path / cifar.FOLDER_NAME) != []


def test_an_archive_of_random_bytes_is_one_line(tmp_path):
    archive = tmp_path / cifar.ARCHIVE_NAME
    archive.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CorruptDatasetError) as caught:
        CIFAR10(tmp_path, download=False)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{archive} is not a readable tar.gz archive (not a tar archive, "
                              f"compressed or not); delete it and try again.")
    assert leftovers(tmp_path) == [cifar.ARCHIVE_NAME]
