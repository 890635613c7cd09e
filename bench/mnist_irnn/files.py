"""The run directory: claimed by one run only, written atomically.

A run claims its directory by creating config.json in it exclusively, so
two runs never share one: a default name gets a suffix when taken, and an
explicit --out must be new or empty (a resume writes into its own run).
Every file is written to `<name>.tmp.<pid>` and renamed over the old one,
so a reader, a crash or a full disk never leaves a half-written file.
"""
import datetime
import glob
import os

from .errors import OutputError

CLAIM = "config.json"


def _claim(out):
    """Creates `out` (if needed) and its config.json; False if taken."""
    os.makedirs(out, exist_ok=True)
    try:
        os.close(os.open(os.path.join(out, CLAIM),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def create_run_dir(out, runs_root="runs"):
    """A new run directory: `out` if given (new or empty), else a unique
    runs/<timestamp>[-N]. Returns its path."""
    try:
        if out is not None:
            if os.path.isdir(out) and os.listdir(out) or not _claim(out):
                raise OutputError(
                    f"--out {out} already holds files; pass --resume {out} "
                    f"to continue that run, or choose a new or empty --out")
            return out
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        os.makedirs(runs_root, exist_ok=True)
        for n in range(1, 10_000):
            candidate = os.path.join(
                runs_root, stamp if n == 1 else f"{stamp}-{n}")
            try:
                os.mkdir(candidate)
            except FileExistsError:
                continue
            if _claim(candidate):
                return candidate
        raise OutputError(f"no free run directory name {stamp}-N left in "
                          f"{runs_root}; pass --out")
    except OSError as exc:
        target = out if out is not None else runs_root
        raise OutputError(f"cannot create the run directory {target}: "
                          f"{exc.strerror or exc}") from exc


def ensure_run_dir(out):
    """The directory a resumed run writes to: it may hold files already."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run directory {out}: "
                          f"{exc.strerror or exc}") from exc


def atomic_write(path, data):
    """Writes bytes (or str, as UTF-8) to `path` through a temporary file.

    On any failure the temporary file is removed, the old `path` is left as
    it was, and an OSError becomes an OutputError naming the path.
    """
    if isinstance(data, str):
        data = data.encode()
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: "
                              f"{exc.strerror or exc}") from exc
        raise


def remove_stale_temporaries(out):
    """Deletes the `*.tmp.<pid>` files an interrupted run left; their names."""
    removed = []
    for path in sorted(glob.glob(os.path.join(out, "*.tmp.*"))):
        if path.rsplit(".", 1)[-1].isdigit() and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed
