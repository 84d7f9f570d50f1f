"""latentseg's native CPU kernel (``first_stage.c``): built on first use with the machine's C
compiler into latentseg's cache folder and loaded with ctypes (no Python or torch headers, a
fraction of a second to build). Where it cannot be built or loaded, for any reason (no
compiler, a read-only or unsafe cache, a CPU without AVX2, another OpenMP runtime in the
process, a broken library), :func:`kernel` returns None, :func:`status` says why, and the
encoder keeps its PyTorch path: the kernel is a speed-up, never a requirement.

``LATENTSEG_NATIVE=0`` turns it off; ``LATENTSEG_CACHE_DIR`` moves the cache (default
``$XDG_CACHE_HOME/latentseg``, else ``~/.cache/latentseg``); ``CC`` picks the compiler
(``cc`` or ``gcc`` by default; a command with arguments works, such as ``ccache gcc``, or
``gcc -fsanitize=address,undefined`` for a sanitizer build: docs/performance.md).

The kernel runs in every training process, so only a library this user built is loaded: the
cache folder is created with mode 0700, and a folder or library that belongs to another user
or that group or others may write is refused (another user could have planted it), as is a
library reached through a symbolic link. The library is checked and loaded through one open
file, so it cannot be swapped between the check and the load.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("first_stage.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
PATCH_WIDTH = 32  # the kernel's gradient rows: 9 x in_channels taps, the bias, zeros
MAX_IN_CHANNELS = 3
# Intel's (libiomp5, conda's MKL builds) and LLVM's (libomp) OpenMP runtimes, under their
# own names or a wheel's renamed copy (libomp-1a2b3c4d.so); not GNU's libgomp, which the
# kernel shares with torch
FOREIGN_OPENMP = re.compile(r"lib(iomp5(md)?|omp)([-.].*)?")
PROC_MAPS = Path("/proc/self/maps")  # the files mapped into this process (Linux)


class Unavailable(Exception):
    """Why the kernel is not used, said to the user as it is (:func:`status`)."""


def cache_dir() -> Path:
    """Where built kernels are kept: ``LATENTSEG_CACHE_DIR``, else the XDG cache folder."""
    if os.environ.get("LATENTSEG_CACHE_DIR"):
        return Path(os.environ["LATENTSEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "latentseg"


def kernel() -> ctypes.CDLL | None:
    """The built kernel, or None where it is unavailable (:func:`status` says why)."""
    return _load()[0]


def status() -> str:
    """``"on"``, or ``"off (<why>)"``."""
    library, why = _load()
    return "on" if library is not None else f"off ({why})"


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """The kernel and, where there is none, why. Asked once per process: a build that failed
    (a compiler error, a timeout) is not retried until the next process."""
    if os.environ.get("LATENTSEG_NATIVE", "1") == "0":
        return None, "LATENTSEG_NATIVE=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"no AVX2 kernel for {platform.machine()}"
    try:
        return _open_kernel(), ""
    except Unavailable as why:
        return None, str(why)
    except Exception as error:  # noqa: BLE001 - the kernel is optional: any failure falls back
        lines = str(error).strip().splitlines()
        return None, f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__


def _open_kernel() -> ctypes.CDLL:
    """The kernel from the cache, built there first where it is missing or damaged; raises
    :class:`Unavailable` (or any error of the build) where there can be none."""
    runtime = foreign_openmp_runtime()
    if runtime is not None:
        raise Unavailable(
            f"another OpenMP runtime is loaded ({runtime}): the kernel's OpenMP calls could "
            "bind to it instead of torch's libgomp, and two thread pools oversubscribe the "
            "cores (import the library that loads it after training, or set LATENTSEG_NATIVE=0)"
        )
    folder = private_folder(cache_dir())
    compiler = find_compiler()
    target = folder / library_name(compiler)
    if os.path.lexists(target):
        try:
            return _bind(_open_checked(target))
        except Unavailable:
            raise
        except Exception:  # noqa: BLE001 - a damaged build of ours (cut short): build it again, once
            target.unlink(missing_ok=True)
    _build(compiler, target)
    return _bind(_open_checked(target))


def foreign_openmp_runtime() -> str | None:
    """The path of an OpenMP runtime other than GNU's (:data:`FOREIGN_OPENMP`) mapped into
    this process, or None (also where :data:`PROC_MAPS` cannot be read: not Linux)."""
    try:
        text = PROC_MAPS.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(maxsplit=5)  # address, perms, offset, device, inode, path
        if len(fields) == 6 and FOREIGN_OPENMP.fullmatch(os.path.basename(fields[5])):
            return fields[5]
    return None


def find_compiler() -> list[str]:
    """``$CC`` split as a shell would, else ``cc`` or ``gcc`` on the PATH."""
    compiler = (
        shlex.split(os.environ.get("CC", ""))
        or [found for found in (shutil.which("cc"), shutil.which("gcc")) if found][:1]
    )
    if not compiler:
        raise Unavailable("no C compiler (cc, gcc or $CC)")
    return compiler


def library_name(compiler: list[str]) -> str:
    """The file name of the kernel built by ``compiler``: a hash of the source, the compiler
    (its version included) and the flags."""
    version = subprocess.run(  # bytes: a compiler's banner need not be valid text
        [*compiler, "--version"], capture_output=True, timeout=30
    ).stdout
    key = hashlib.sha256(
        b"\0".join(
            [SOURCE.read_bytes(), " ".join(compiler).encode(), version]
            + [flag.encode() for flag in FLAGS]
        )
    )
    return f"first_stage-{key.hexdigest()[:16]}.so"


def private_folder(folder: Path) -> Path:
    """``folder``, created with mode 0700 where it is missing; raises :class:`Unavailable`
    where another user owns it or group or others may write it."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    problem = _unsafe(os.stat(folder), f"the cache folder {folder}")
    if problem:
        raise Unavailable(
            f"{problem}; chmod go-w it, or set LATENTSEG_CACHE_DIR to a folder of yours"
        )
    return folder


def _unsafe(info: os.stat_result, what: str) -> str | None:
    """Why a file another user could have written is not trusted, or None."""
    if info.st_uid != os.geteuid():
        return f"{what} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()})"
    if info.st_mode & 0o022:
        mode = oct(stat.S_IMODE(info.st_mode))
        return f"{what} is writable by group or others (mode {mode}): not trusted"
    return None


def _open_checked(path: Path) -> ctypes.CDLL:
    """The library at ``path``, loaded only if it is a regular file (not a link) of this user's
    that no one else may write. It is checked and loaded through one open file
    (``/proc/self/fd``), kept open for the life of the process so that the name the loader
    records stays valid (debuggers, sanitizers)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if os.path.islink(path):
            raise Unavailable(f"the kernel {path} is a symbolic link: not trusted") from None
        raise error
    try:
        info = os.fstat(fd)
        problem = _unsafe(info, f"the kernel {path}")
        if not stat.S_ISREG(info.st_mode):
            problem = f"the kernel {path} is not a regular file"
        if problem:
            raise Unavailable(problem)
        through = Path(f"/proc/self/fd/{fd}")
        library = ctypes.CDLL(str(through if through.exists() else path))
    except BaseException:
        os.close(fd)
        raise
    return library


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    """``library`` with its functions' argument and result types set (an AttributeError where
    one is missing)."""
    pointer, size = ctypes.c_void_p, ctypes.c_int
    library.first_stage_pool.restype = None
    library.first_stage_pool.argtypes = [pointer] * 3 + [ctypes.c_int64] + [size] * 4
    library.first_stage_unpool.restype = None
    library.first_stage_unpool.argtypes = [pointer] * 3 + [ctypes.c_int64] + [size] * 4
    library.first_stage_forward.restype = ctypes.c_int
    library.first_stage_forward.argtypes = [pointer] * 5 + [ctypes.c_int64] + [size] * 5
    library.first_stage_weight_grad.restype = ctypes.c_int
    library.first_stage_weight_grad.argtypes = (
        [pointer] * 3 + [ctypes.c_int64] + [size] * 4 + [pointer, size]
    )
    return library


def _build(compiler: list[str], target: Path) -> None:
    """Build the kernel into ``target`` (into a file of this thread's own, then renamed, so
    that parallel workers building it at once each load a whole one), writable by this user
    alone whatever the umask."""
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        done = subprocess.run(
            [*compiler, *FLAGS, str(SOURCE), "-o", str(partial)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise Unavailable(f"{' '.join(compiler)} could not build {SOURCE.name}: {last}")
        os.chmod(partial, 0o700)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
