"""Paths of backup_dir, and its entries examined without trusting their names.

Anyone who can write to backup_dir can plant an entry named like one of
ours: a symbolic link to a directory elsewhere, a regular file where a
backup directory belongs, a FIFO, a hard link to another file. Locally,
every entry is therefore examined with `lstat` before it is read, written or
deleted, and files are opened with `O_NOFOLLOW`:

- `kind(path)` says what an entry really is; only a real directory (for a
  backup) or a regular file with one link (for a file of ours) is ours.
- `read_bytes` opens without following a link and reads only a regular
  file with one link (never blocks on a FIFO).
- `remove_tree` deletes a real directory without following any link in it
  (CPython's `shutil.rmtree` works through directory file descriptors and
  `O_NOFOLLOW` on Linux); a link or anything else is refused.

Object stores (gs://, s3://, ...) and ram:// have no links: there the same
calls go through tf.io.gfile unchanged.
"""

import os
import shutil
import stat

# What `kind` reports.
DIRECTORY = "directory"
FILE = "file"  # a regular file with exactly one link
LINK = "symbolic link"
HARD_LINK = "file with several hard links"
OTHER = "special file"  # FIFO, socket, device

_OBJECT_STORES = ("gs://", "s3://")
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class NotOursError(OSError):
    """An entry named like one of ours is something else (a link, ...)."""


def is_local(path: str) -> bool:
    """True for paths on the local filesystem (no scheme, or file://)."""
    path = os.fspath(path)
    return "://" not in path or path.startswith("file://")


def is_object_store(path: str) -> bool:
    """True for object stores (gs://, s3://), whose directories are only
    prefixes of object names."""
    return os.fspath(path).startswith(_OBJECT_STORES)


def local(path: str) -> str:
    """The local filesystem path of a local `path` (file:// removed)."""
    return os.fspath(path).removeprefix("file://")


def absolute(path: str) -> str:
    """A local path made absolute (a later chdir does not move it); others
    as given."""
    if not is_local(path):
        return path
    prefix = "file://" if path.startswith("file://") else ""
    return prefix + os.path.abspath(local(path))


def key(path: str) -> str:
    """One name per directory, for "is this the same backup_dir?"."""
    if is_local(path):
        return os.path.realpath(local(path))
    return path.rstrip("/")


def _gfile():
    import tensorflow as tf  # only for remote filesystems

    return tf.io.gfile


def _not_found():
    import tensorflow as tf  # only for remote filesystems

    return tf.errors.NotFoundError


def _kind_of(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return LINK
    if stat.S_ISDIR(st.st_mode):
        return DIRECTORY
    if stat.S_ISREG(st.st_mode):
        # No link at all: an open file deleted or replaced since it was
        # opened (a lease renewed, a lock released), which no name reaches.
        return FILE if st.st_nlink <= 1 else HARD_LINK
    return OTHER


def kind_of_fd(fd: int) -> str:
    """What the open file descriptor `fd` is."""
    return _kind_of(os.fstat(fd))


def kind(path: str) -> str | None:
    """What the entry `path` is (its last component not followed); None if
    it does not exist."""
    if not is_local(path):
        # One stat: an object store answers it from the object's metadata
        # (cached by TensorFlow's client) or, for a prefix, one listing.
        gfile = _gfile()
        try:
            found = gfile.stat(path)
        except _not_found():
            return None
        return DIRECTORY if found.is_directory else FILE
    try:
        return _kind_of(os.lstat(local(path)))
    except FileNotFoundError:
        return None


def check_kind(path: str, want: str) -> None:
    """Raises NotOursError unless `path` is a `want` (DIRECTORY or FILE)."""
    found = kind(path)
    if found is None:
        raise FileNotFoundError(f"{path} does not exist")
    if found != want:
        raise NotOursError(f"{path} is a {found}, not a {want}")


class TooLargeError(ValueError):
    """A file holds more bytes than its reader accepts."""


def read_bytes(path: str, limit: int | None = None) -> bytes:
    """The content of the regular file `path`, its name not followed.

    `limit`: the most bytes it may hold; no more than one byte past it is
    read (a damaged or planted file of any size costs no memory).

    Raises:
      FileNotFoundError: it does not exist.
      NotOursError: it is a link, a FIFO, a directory, or has other links.
      TooLargeError: it holds more than `limit` bytes.
    """

    def checked(data: bytes) -> bytes:
        if limit is not None and len(data) > limit:
            raise TooLargeError(
                f"{path} holds more than {limit} bytes, more than it can"
            )
        return data

    if not is_local(path):
        with _gfile().GFile(path, "rb") as f:
            return checked(f.read(-1 if limit is None else limit + 1))
    try:
        fd = os.open(local(path), os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as e:  # ELOOP for a link; EISDIR, ENXIO, ...
        found = kind(path)
        if found is not None and found != FILE:
            raise NotOursError(f"{path} is a {found}, not a file") from e
        raise
    try:
        found = kind_of_fd(fd)
        if found != FILE:
            raise NotOursError(f"{path} is a {found}, not a file")
        chunks, size = [], 0
        while limit is None or size <= limit:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return checked(b"".join(chunks))
    finally:
        os.close(fd)


def create_file(path: str, data: bytes, durable: bool, written=None) -> None:
    """Creates the new file `path` (never an existing one, never through a
    link) holding `data`; fsync'd if `durable`. Local paths only.

    `written()`, if given, is called once the data is written, before the
    fsync (a fault point for tests).
    """
    fd = os.open(
        local(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o644
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if written is not None:
            written()
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str) -> None:
    """`os.makedirs(path, exist_ok=True)` for a local path that another
    process may remove at the same moment (an owner removing its empty
    backup_dir at the end, a user's `rm -rf`): made again then.

    Raises:
      FileExistsError: `path` is a file, or a link to no directory.
    """
    for attempt in range(100):
        try:
            os.makedirs(path, exist_ok=True)
            return
        except FileExistsError:
            # makedirs found it, then found no directory there: a planted
            # file, or one removed in between.
            if attempt == 99 or (
                os.path.lexists(path) and not os.path.isdir(path)
            ):
                raise
        except FileNotFoundError:  # a parent removed while it was made
            if attempt == 99:
                raise


def in_made_dirs(make, create):
    """`create()` once `make()` has made the directories it needs; both
    again where another process removed them in between (`create` raising
    FileNotFoundError). Returns what `create` returns."""
    for attempt in range(100):
        make()
        try:
            return create()
        except FileNotFoundError:
            if attempt == 99:
                raise


def make_dir(path: str) -> None:
    """Creates the new directory `path`: never one that exists (a planted
    link, say); its parent must exist. Elsewhere: gfile.makedirs."""
    if is_local(path):
        os.mkdir(local(path), 0o755)
    else:
        _gfile().makedirs(path)


def remove_tree(path: str) -> None:
    """Deletes the directory `path` and what it holds, following no link.

    Raises:
      NotOursError: `path` is not a real directory (nothing is deleted).
    """
    if not is_local(path):
        _gfile().rmtree(path)
        return
    check_kind(path, DIRECTORY)
    # Linux: fd-based, refuses a link at the top and never follows one below.
    assert shutil.rmtree.avoids_symlink_attacks
    shutil.rmtree(local(path))


def remove_file(path: str) -> None:
    """Deletes the file `path` if it is a regular file of one link.

    Raises:
      NotOursError: it is something else (nothing is deleted).
    """
    if not is_local(path):
        _gfile().remove(path)
        return
    check_kind(path, FILE)
    os.unlink(local(path))


def fsync(path: str, follow: bool = False) -> None:
    """fsyncs a local file or directory; a no-op on other filesystems, whose
    objects are durable when their writer closes.

    Its name is not followed unless `follow` (backup_dir itself, and the
    directories above it, may be links the user chose).
    """
    if not is_local(path):
        return
    flags = os.O_RDONLY | _OPEN_FLAGS
    if follow:
        flags &= ~os.O_NOFOLLOW
    fd = os.open(local(path), flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
