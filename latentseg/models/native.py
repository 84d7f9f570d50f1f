"""latentseg's native CPU kernel (``first_stage.c``): built on first use with the machine's C
compiler into latentseg's cache folder and loaded with ctypes (no Python or torch headers, a
fraction of a second to build). Where it cannot be built (no compiler, a read-only cache, a
CPU without AVX2), :func:`kernel` returns None, :func:`status` says why, and the encoder keeps
its PyTorch path: the kernel is a speed-up, never a requirement.

``LATENTSEG_NATIVE=0`` turns it off; ``LATENTSEG_CACHE_DIR`` moves the cache (default
``$XDG_CACHE_HOME/latentseg``, else ``~/.cache/latentseg``); ``CC`` picks the compiler
(``cc`` or ``gcc`` by default; a command with arguments, such as ``ccache gcc``, works).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("first_stage.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
PATCH_WIDTH = 32  # the kernel's gradient rows: 9 x in_channels taps, the bias, zeros
MAX_IN_CHANNELS = 3


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
    compiler = (
        shlex.split(os.environ.get("CC", ""))
        or [found for found in (shutil.which("cc"), shutil.which("gcc")) if found][:1]
    )
    if not compiler:
        return None, "no C compiler (cc, gcc or $CC)"
    try:
        target = _build(compiler)
        try:
            library = ctypes.CDLL(str(target))
        except OSError:  # a damaged file in the cache: build it again, once
            target.unlink(missing_ok=True)
            library = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as error:
        return None, str(error).splitlines()[-1] if str(error) else type(error).__name__
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
    return library, ""


def _build(compiler: list[str]) -> Path:
    """The shared library for this source, compiler (its version included) and flags: built
    once into the cache (into a file of this thread's own, then renamed, so that parallel
    workers building it at once each load a whole one)."""
    version = subprocess.run(
        [*compiler, "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    key = hashlib.sha256(
        b"\0".join(
            [SOURCE.read_bytes(), " ".join(compiler).encode(), version.encode()]
            + [flag.encode() for flag in FLAGS]
        )
    )
    target = cache_dir() / f"first_stage-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        done = subprocess.run(
            [*compiler, *FLAGS, str(SOURCE), "-o", str(partial)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise OSError(f"{' '.join(compiler)} could not build {SOURCE.name}: {last}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
