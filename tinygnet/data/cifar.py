"""CIFAR-10: find it, download it if needed, unpack it safely, load it.

The data set comes as the official "python version" archive,
``cifar-10-python.tar.gz``, which unpacks to::

    cifar-10-batches-py/
        data_batch_1 ... data_batch_5   10000 training images each
        test_batch                      10000 test images
        batches.meta                    the class names

Each batch is a Python 2 pickle of a dict: ``b"data"`` is a 10000 x 3072
uint8 array (each row one image: the 1024 red values, then green, then blue,
row-major within a plane) and ``b"labels"`` a list of 10000 ints in 0..9.

Where the data lives (``resolve_data_root``): the ``--data DIR`` argument, else
``$TINYGNET_DATA``, else ``~/.cache/tinygnet``. In that folder we use, in order:
an unpacked ``cifar-10-batches-py/``, a ``cifar-10-python.tar.gz`` (yours or a
previous download), and finally a download from the official URL, checked
against its md5. A folder or archive you supply is checked for its structure,
not its md5, so a re-encoded copy works too.

Two safety rules: an archive is unpacked only if no member could land outside
the target folder, and it is unpacked into a temporary sibling folder that is
renamed into place at the end, so an interrupted unpack never leaves a folder
that looks complete (and the temporary folder a killed one leaves is cleared
by the next unpack). Pickles are read with an unpickler that can build nothing
but NumPy arrays, so a doctored batch file cannot run code.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib

import numpy as np

from ..checkpoint import missing_folders, remove_empty_folders

__all__ = ["CIFAR10", "DatasetError", "DatasetNotFoundError", "CorruptDatasetError",
           "resolve_data_root", "prepare_cifar10", "download_cifar10", "unpack_archive",
           "remove_stale_staging",
           "URL", "MD5", "ARCHIVE_NAME", "FOLDER_NAME"]

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
REQUIRED_FILES = TRAIN_FILES + TEST_FILES + (META_FILE,)
IMAGES_PER_BATCH = 10_000     # tests lower this to write tiny batches
NUM_CLASSES = 10
DEFAULT_ROOT = os.path.join("~", ".cache", "tinygnet")
ENV_VAR = "TINYGNET_DATA"


class DatasetError(RuntimeError):
    """Base class: the data set cannot be used (the demo exits cleanly on it)."""


class DatasetNotFoundError(DatasetError):
    """No data set where we looked, and none could be downloaded."""


class CorruptDatasetError(DatasetError):
    """A file is there but is not what it should be (the message names it)."""


# --------------------------------------------------------------------------
# Where the data lives
# --------------------------------------------------------------------------
def resolve_data_root(data_arg=None) -> str:
    """The data folder: ``data_arg`` (``--data DIR``), else $TINYGNET_DATA, else ~/.cache/tinygnet."""
    root = data_arg or os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def _named(root) -> str:
    """``root``, saying where it came from when that was $TINYGNET_DATA (the user may not know)."""
    from_env = os.environ.get(ENV_VAR)
    if from_env and resolve_data_root(from_env) == root:
        return f"{root} (from ${ENV_VAR})"
    return root


def _check_root(root) -> None:
    """Refuse a data folder that is a file, or lies under one."""
    existing = root
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == root else f"lies under {existing}, which is a file"
        raise DatasetNotFoundError(f"the data folder {_named(root)} {where}, not a folder; "
                                   f"point tinygnet at a folder with --data DIR or ${ENV_VAR}")


def _check_itself(root) -> None:
    """Refuse a data folder that is CIFAR-10's own folder or archive, naming the one above it."""
    name = os.path.basename(root)
    if name == FOLDER_NAME and os.path.isdir(root):
        what = f"the unpacked {FOLDER_NAME}/ folder itself"
    elif name == ARCHIVE_NAME and os.path.isfile(root):
        what = f"the {ARCHIVE_NAME} archive itself"
    else:
        return
    raise DatasetNotFoundError(f"the data folder {_named(root)} is {what}; tinygnet wants the "
                               f"folder that holds it: {os.path.dirname(root)} (--data DIR or "
                               f"${ENV_VAR})")


def _how_to_provide(root) -> str:
    return (f"To provide it, put {ARCHIVE_NAME} or the unpacked {FOLDER_NAME}/ folder in {root}, "
            f"or point tinygnet at a folder that holds one with --data DIR or ${ENV_VAR}. "
            f"The archive can be downloaded from {URL} (md5 {MD5}).")


def prepare_cifar10(root=None, download=True, fetch=None, progress=True) -> str:
    """Make sure ``root/cifar-10-batches-py/`` exists with every file; return its path.

    Uses, in order: the folder, ``root/cifar-10-python.tar.gz``, a download
    (when ``download``). ``fetch`` replaces ``urllib.request.urlopen`` (tests).
    """
    root = resolve_data_root(root)
    _check_itself(root)
    _check_root(root)
    folder = os.path.join(root, FOLDER_NAME)
    archive = os.path.join(root, ARCHIVE_NAME)
    if os.path.isdir(folder):
        missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(folder, name))]
        if missing:
            raise CorruptDatasetError(
                f"CIFAR-10 folder {folder} is incomplete: missing {', '.join(missing)}. "
                f"Delete it to unpack or download again. " + _how_to_provide(root))
        return folder
    if not os.path.isfile(archive):
        if not download:
            raise DatasetNotFoundError(
                f"CIFAR-10 not found: neither {folder}/ nor {archive} exists "
                f"and downloading is off. " + _how_to_provide(root))
        download_cifar10(root, fetch=fetch, progress=progress)
    unpack_archive(archive, root)
    return folder


# --------------------------------------------------------------------------
# Download: into a temporary file, md5-checked, then renamed into place
# --------------------------------------------------------------------------
def download_cifar10(root, fetch=None, progress=True, url=None, md5=None) -> str:
    """Download the archive to ``root/cifar-10-python.tar.gz``; return its path.

    ``fetch(url)`` must return a readable binary file object usable in a
    ``with`` statement (``urllib.request.urlopen`` by default); ``url`` and
    ``md5`` default to the official ones (``URL``, ``MD5``). On a network
    error, DatasetNotFoundError; on a checksum mismatch, CorruptDatasetError;
    in both cases no archive and no partial file is left behind.
    """
    from tqdm.auto import tqdm

    url, md5 = url or URL, md5 or MD5
    fetch = fetch or (lambda address: urllib.request.urlopen(address, timeout=60))
    created = missing_folders(root)      # removed again if the download fails
    archive = os.path.join(root, ARCHIVE_NAME)
    try:
        os.makedirs(root, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=root, prefix=f".{ARCHIVE_NAME}.", suffix=".part")
    except OSError as error:
        remove_empty_folders(created)
        raise DatasetNotFoundError(f"CIFAR-10 not found in {_named(root)}, and it cannot be "
                                   f"downloaded there: {error.strerror}. Choose a folder you can "
                                   f"write with --data DIR or ${ENV_VAR}") from None
    digest = hashlib.md5()
    downloaded = False
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                with fetch(url) as response:
                    headers = getattr(response, "headers", None)
                    total = int(headers.get("Content-Length") or 0) if headers else 0
                    with tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024,
                              desc="Downloading CIFAR-10", disable=not progress) as bar:
                        while chunk := response.read(1 << 20):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
            except OSError as error:   # URLError, timeouts, connection resets
                raise DatasetNotFoundError(
                    f"CIFAR-10 not found: neither {os.path.join(root, FOLDER_NAME)}/ nor {archive} "
                    f"exists, and downloading {url} failed ({error}). "
                    + _how_to_provide(root)) from None
        if digest.hexdigest() != md5:
            raise CorruptDatasetError(
                f"downloaded {url} has md5 {digest.hexdigest()}, expected {md5}: the download "
                f"is corrupt or incomplete and was deleted. Try again, or " + _how_to_provide(root))
        os.replace(partial, archive)
        downloaded = True
    finally:
        if os.path.exists(partial):
            os.remove(partial)
        if not downloaded:                # a mistyped --data is not left behind, empty
            remove_empty_folders(created)
    return archive




# --------------------------------------------------------------------------
# Unpack: safely (nothing outside the target) and atomically (rename at the end)
# --------------------------------------------------------------------------
def _check_member(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse a member that could write outside the folder it is unpacked into."""
    def escapes(path):
        return (path.startswith(("/", "\\")) or os.path.isabs(path)
                or os.path.splitdrive(path)[0] != "" or ".." in path.replace("\\", "/").split("/"))

    if escapes(member.name):
        raise CorruptDatasetError(f"{archive}: refusing to unpack member {member.name!r} "
                                  f"(absolute path or '..' would write outside the target folder)")
    if member.issym() or member.islnk():
        # A symlink target is relative to the link's folder; a hard link's to the archive root.
        base = os.path.dirname(member.name) if member.issym() else ""
        target = os.path.normpath(os.path.join(base, member.linkname))
        if escapes(member.linkname) or escapes(target):
            raise CorruptDatasetError(f"{archive}: refusing to unpack link {member.name!r} -> "
                                      f"{member.linkname!r}, which points outside the target folder")
    elif not (member.isfile() or member.isdir()):
        raise CorruptDatasetError(f"{archive}: refusing to unpack {member.name!r}, "
                                  f"which is not a regular file or folder")


def unpack_archive(archive, root) -> str:
    """Unpack ``archive`` into ``root/cifar-10-batches-py/``, checked and all at once.

    Members go into a temporary folder next to the target; the structure is
    checked (every file present, every batch parses); only then is the folder
    renamed into place. On any error the temporary folder is removed.
    """
    folder = os.path.join(root, FOLDER_NAME)
    try:
        remove_stale_staging(root)
        staging, held = _new_staging(root)
    except OSError as error:
        raise DatasetError(f"cannot unpack {archive} in {_named(root)}: {error.strerror}. Make the "
                           f"folder writable, or unpack the archive into one that is "
                           f"(tar -xzf {ARCHIVE_NAME} -C DIR) and use --data DIR") from None
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive)
                # Python's own "data" filter (3.10.12+) as a second line of defence.
                options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, members=members, **options)
        except OSError as error:
            if error.errno is not None:    # the file system (disk full...), not the archive
                raise DatasetError(f"cannot unpack {archive} in {_named(root)}: "
                                   f"{error.strerror}") from None
            raise _corrupt_archive(archive, root, error) from None
        except (tarfile.TarError, EOFError, zlib.error) as error:
            raise _corrupt_archive(archive, root, error) from None
        unpacked = os.path.join(staging, FOLDER_NAME)
        if not os.path.isdir(unpacked):
            raise CorruptDatasetError(f"{archive} holds no {FOLDER_NAME}/ folder. " + _how_to_provide(root))
        try:
            check_folder(unpacked, shown=FOLDER_NAME)     # errors name files as in the archive
        except CorruptDatasetError as error:
            # A damaged block ends a tar archive early without an error: files then go missing.
            raise CorruptDatasetError(f"{archive} is corrupt or incomplete: {error}. Delete it "
                                      f"and download it again. " + _how_to_provide(root)) from None
        try:
            os.rename(unpacked, folder)          # atomic: the folder appears complete or not at all
        except OSError:
            if not os.path.isdir(folder):        # else another process unpacked it meanwhile
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(held)
    return folder


# A temporary folder of an unpack is held (an exclusive flock on the folder itself) by the
# process unpacking into it; the kernel lets go when that process dies, even by kill -9.
# One that nobody holds was left by a killed unpack: ``remove_stale_staging`` clears it.
STAGING_PREFIX, STAGING_SUFFIX = f".{FOLDER_NAME}.", ".partial"


def _new_staging(root):
    """(path, descriptor holding it) of a new temporary folder in ``root``."""
    while True:
        staging = tempfile.mkdtemp(dir=root, prefix=STAGING_PREFIX, suffix=STAGING_SUFFIX)
        held = os.open(staging, os.O_RDONLY)
        if _hold(held):
            return staging, held
        os.close(held)               # another process took it for stale as it was made


def _hold(fd) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def remove_stale_staging(root) -> list:
    """Remove the temporary folders in ``root`` that killed unpacks left (none that a running
    unpack holds); return their paths."""
    removed = []
    for entry in os.listdir(root):
        if not (entry.startswith(STAGING_PREFIX) and entry.endswith(STAGING_SUFFIX)):
            continue
        path = os.path.join(root, entry)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:              # gone meanwhile, or not a folder we can open: not ours
            continue
        try:
            if _hold(fd):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        finally:
            os.close(fd)
    return removed


def _corrupt_archive(archive, root, error) -> CorruptDatasetError:
    # tarfile.open(..., "r:*") lists each compression it tried on a line of its own
    reason = ("not a tar archive, compressed or not" if "\n" in str(error) else
              " ".join(str(error).split()))
    return CorruptDatasetError(f"{archive} is not a readable tar.gz archive ({reason}); delete it "
                               f"and try again. " + _how_to_provide(root))


def check_folder(folder, shown=None) -> None:
    """Check that every file is present and every batch parses (no md5: user copies differ).

    Messages name the files as ``shown/NAME`` (default: ``folder/NAME``).
    """
    shown = shown or folder
    missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise CorruptDatasetError(f"{shown} has no {', '.join(missing)}")
    read_meta(os.path.join(folder, META_FILE), shown=f"{shown}/{META_FILE}")
    for name in TRAIN_FILES + TEST_FILES:
        read_batch(os.path.join(folder, name), shown=f"{shown}/{name}")


# --------------------------------------------------------------------------
# Reading the pickles
# --------------------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build NumPy arrays, lists, dicts, bytes and str: nothing else.

    A general pickle can call any function while loading; CIFAR-10's pickles
    only ever need the three names NumPy uses to rebuild an array (plus the
    two a Python 3 pickler writes for arrays and bytes).
    """

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
               ("numpy", "dtype"), ("numpy._core.numeric", "_frombuffer"),
               ("_codecs", "encode")}

    def find_class(self, module, name):
        if module.startswith("numpy.core."):          # pickles written before NumPy 2
            module = "numpy._core." + module[len("numpy.core."):]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: "
                                         f"a CIFAR-10 batch holds only arrays and lists")
        return getattr(importlib.import_module(module), name)


def _load_pickle(path, shown=None) -> dict:
    """Load a batch pickle; keys become str whether written as bytes (Python 2) or str.

    Errors name the file ``shown`` (default: ``path``).
    """
    shown = shown or path
    try:
        f = open(path, "rb")
    except OSError as error:         # permissions, a broken disk: the file may be fine
        raise DatasetError(f"cannot read {shown}: {error.strerror}; make it readable "
                           f"(it is not damaged as far as tinygnet can tell)") from None
    try:
        with f:
            content = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as error:  # truncated or garbage files raise many different errors
        raise CorruptDatasetError(f"{shown}: not a readable CIFAR-10 pickle "
                                  f"({type(error).__name__}: {error})") from None
    if not isinstance(content, dict):
        raise CorruptDatasetError(f"{shown}: expected a pickled dict, got {type(content).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value
            for key, value in content.items()}


def read_batch(path, shown=None):
    """One batch file -> (images uint8 (n, 3, 32, 32), labels int64 (n,)), checked.

    Errors name the file ``shown`` (default: ``path``).
    """
    shown = shown or path
    batch = _load_pickle(path, shown)
    if "data" not in batch or "labels" not in batch:
        raise CorruptDatasetError(f"{shown}: missing the 'data' or 'labels' entry "
                                  f"(has {sorted(batch)})")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8
            or data.shape != (IMAGES_PER_BATCH, 3072)):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise CorruptDatasetError(f"{shown}: 'data' should be a {IMAGES_PER_BATCH} x 3072 uint8 "
                                  f"array, got shape {shape} dtype {dtype}")
    if labels.shape != (IMAGES_PER_BATCH,) or labels.dtype.kind not in "iu":
        raise CorruptDatasetError(f"{shown}: 'labels' should be {IMAGES_PER_BATCH} integers, "
                                  f"got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise CorruptDatasetError(f"{shown}: labels must lie in 0..{NUM_CLASSES - 1}, "
                                  f"found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_meta(path, shown=None) -> list:
    """batches.meta -> the ten class names as str (errors name the file ``shown``)."""
    shown = shown or path
    meta = _load_pickle(path, shown)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
        raise CorruptDatasetError(f"{shown}: 'label_names' should list {NUM_CLASSES} class names, "
                                  f"got {names!r:.80}")
    return [name.decode("latin1") if isinstance(name, bytes) else str(name) for name in names]


# --------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------
class CIFAR10:
    """CIFAR-10 in memory: ``images`` uint8 (N, 3, 32, 32) NCHW, ``labels`` int64 (N,).

    ``root``: the data folder (None: $TINYGNET_DATA or ~/.cache/tinygnet).
    ``train``: the 50000 training images, else the 10000 test images.
    ``download``: fetch the official archive if nothing is found locally.
    ``fetch``: replaces ``urllib.request.urlopen`` (tests inject one).
    ``classes`` holds the class names from batches.meta. Raises
    DatasetNotFoundError / CorruptDatasetError (both DatasetError).
    """

    def __init__(self, root=None, train=True, download=True, fetch=None, progress=True):
        self.root = resolve_data_root(root)
        self.train = train
        folder = prepare_cifar10(self.root, download=download, fetch=fetch, progress=progress)
        try:
            self.classes = read_meta(os.path.join(folder, META_FILE))
            batches = [read_batch(os.path.join(folder, name))
                       for name in (TRAIN_FILES if train else TEST_FILES)]
        except CorruptDatasetError as error:
            raise CorruptDatasetError(f"{error}. The CIFAR-10 folder {folder} is damaged: delete "
                                      f"it to unpack or download it again") from None
        self.images = np.concatenate([images for images, _ in batches])   # N x 3 x 32 x 32
        self.labels = np.concatenate([labels for _, labels in batches])   # N

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def __repr__(self):
        split = "train" if self.train else "test"
        return f"CIFAR10(split={split!r}, size={len(self)}, root={self.root!r})"
