"""The optional C sampling kernel (native.c): compiled on first use, cached per machine, loaded with ctypes.

At batch 1 a PyTorch sampling step costs mostly dispatch (~20 small kernels a token); native.c runs
every layer, the output projection and the draw for many tokens in one call. It needs only a C
compiler (`$CC`, else `cc`), never torch headers. Without one, or if compiling fails, sampling uses
the PyTorch path (model.Stepper) and says so once on stderr; `GENERATE_NATIVE=0` turns it off.

Compiled with `-O3 -march=native`: the library is for this machine only, so it lives in a cache
folder keyed by the source, the compiler, the flags and the CPU's feature flags
($GENERATE_HOME/cache/native, else ~/.cache/gru-generate/native). Samples for a seed are then
reproducible on that machine (the same compiled kernel); another CPU may round differently.
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
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("native.c")
SWITCH = "GENERATE_NATIVE"  # "0": always the PyTorch path
FLAGS = (["-O3", "-march=native"], ["-O3"])  # the second when the compiler does not know -march=native
COMMON = ["-std=gnu11", "-shared", "-fPIC", "-fno-trapping-math", "-fno-math-errno"]  # sqrtf: one instruction, no libm


def kernel() -> ctypes.CDLL | None:
    """The loaded kernel, or None when turned off or unavailable (then sampling uses PyTorch)."""
    if os.environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return _load(os.environ.get("CC") or "cc", str(cache_dir()))


def cache_dir() -> Path:
    """Where compiled kernels are kept: $GENERATE_HOME/cache/native, else the user's cache folder."""
    home = os.environ.get("GENERATE_HOME")
    if home:
        return Path(home) / "cache" / "native"
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home directory known (some containers): a private folder in the temp dir
        return Path(tempfile.gettempdir()) / f"gru-generate-native-{os.getuid() if hasattr(os, 'getuid') else 0}"
    return base / "gru-generate" / "native"


def _cpu_flags() -> str:
    """What -march=native depends on: a library built for one CPU may not run on another."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


@functools.cache
def _load(compiler: str, folder: str) -> ctypes.CDLL | None:
    """Compile (once per source, compiler, flags and CPU) and load; None with one note on stderr if that fails."""
    command = shlex.split(compiler)
    if not command or shutil.which(command[0]) is None:
        return _unavailable(f"no C compiler ({compiler!r} not found; install gcc or set CC)")
    source = SOURCE.read_bytes()
    errors = []
    for flags in FLAGS:
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags + COMMON).encode(),
                                         _cpu_flags().encode(), platform.machine().encode()])).hexdigest()[:20]
        path = Path(folder) / f"gru_sample-{key}.so"
        try:
            if not path.exists():
                _compile(command, flags, path)
            return _bind(ctypes.CDLL(str(path)))
        except (OSError, subprocess.SubprocessError) as err:
            errors.append(str(err).strip().splitlines()[-1][:160] if str(err).strip() else type(err).__name__)
    return _unavailable(f"compiling {SOURCE.name} failed: {errors[-1]}")


def _compile(command: list[str], flags: list[str], path: Path) -> None:
    """Build into a temporary file beside `path`, then rename: other processes see a whole library or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(handle)
    try:
        done = subprocess.run([*command, *flags, *COMMON, "-o", temporary, str(SOURCE)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise OSError(done.stderr.strip() or f"{command[0]} exited with {done.returncode}")
        os.chmod(temporary, 0o755)  # mkstemp makes it private; a shared cache folder's other users may load it
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.gru_sample.argtypes = [i64, i64, i64, i64, ctypes.c_int, ctypes.c_float, ctypes.c_int, ptr, ptr, ptr, ptr, ptr, i64, ptr, ctypes.c_float,
                               ptr, ptr]
    lib.gru_sample.restype = ctypes.c_int
    lib.gru_panel_width.restype = i64
    return lib


def _unavailable(why: str) -> None:
    print(f"note: the native sampling kernel is not available ({why}); sampling with PyTorch", file=sys.stderr)
    return None


def panels(matrix: Tensor, width: int) -> Tensor:
    """(k, n) → its k·n floats in native.c's order: k x width column panels, then the last n % width columns."""
    k, n = matrix.shape
    full = n // width * width
    blocks = matrix[:, :full].reshape(k, full // width, width).transpose(0, 1)  # (panels, k, width)
    return torch.cat([blocks.reshape(-1), matrix[:, full:].reshape(-1)])


def pack(stepper: Any, width: int) -> Tensor:
    """model.Stepper's weights as one float32 vector, in the order native.c reads them (its header says which)."""
    parts = []
    size = stepper.hidden_size
    if stepper.layer_norm:
        return _pack_norm(stepper, width)
    for layer, (bias, w_ih_t, w_a, w_b) in enumerate(stepper.layers):
        parts.append(bias)
        if layer > 0:
            parts.append(panels(w_ih_t, width))
        # nn.GRU form: w_hh^T (H, 3H) then b_hn (the last H of [0, 0, b_hn]); seed form: w_rz^T (H, 2H), w_n^T (H, H).
        parts += [panels(w_a, width), w_b[2 * size :] if stepper.reset_after else panels(w_b, width)]
    parts += [panels(stepper.head_w_t, width), stepper.head_b]
    return torch.cat([p.reshape(-1) for p in parts]).contiguous()


def _pack_norm(stepper: Any, width: int) -> Tensor:
    """pack() for a layer-normalized model (native.c's header: the layer_norm = 1 order)."""
    parts, size = [], stepper.hidden_size
    for layer, (b_ih, w_ih, w_hh, b_hh, g_ih, g_hh, g_hn) in enumerate(stepper.layers):
        parts += [b_ih, g_ih] + ([panels(w_ih.t(), width)] if layer > 0 else [])
        if stepper.reset_after:
            parts += [panels(w_hh.t(), width), b_hh, g_hh]
        else:
            parts += [panels(w_hh[: 2 * size].t(), width), panels(w_hh[2 * size :].t(), width), b_hh, g_hh, g_hn]
    parts += [panels(stepper.head_w_t, width), stepper.head_b]
    return torch.cat([p.reshape(-1) for p in parts]).contiguous()


class NativeSampler:
    """Runs native.c's gru_sample on a Stepper's weights and state: many tokens per call, on the CPU."""

    def __init__(self, lib: ctypes.CDLL, stepper: Any):
        self.lib, self.stepper = lib, stepper
        width = lib.gru_panel_width()
        derived = stepper.weights.derived  # packed once per parameter version (model.step_weights)
        self.params = derived[("native", width)] if ("native", width) in derived else derived.setdefault(
            ("native", width), pack(stepper, width))
        self.table = stepper.table.contiguous()
        self.layers, batch, self.hidden_size = stepper.hidden.shape
        self.batch, self.vocab = batch, self.table.shape[0]
        self.work = torch.empty(batch * (7 * self.hidden_size + self.vocab) + 6 * self.hidden_size, dtype=torch.float32)

    def run(self, prev: Tensor, steps: int, out: Tensor, noise: Tensor | None, temperature: float,
            logits: Tensor | None = None) -> None:
        """Draw `steps` tokens after `prev` (N,) into `out` (steps, N), contiguous int64, time-major.

        noise (steps, N, V): Gumbel noise (the draw is argmax(logits / T + noise)); None: greedy.
        logits (steps, N, V), if given, receives every step's logits. The Stepper's state advances.
        """
        long, flt, n, v = torch.int64, torch.float32, self.batch, self.vocab
        for name, t, shape, dtype in (("prev", prev, (n,), long), ("out", out, (steps, n), long),
                                      ("noise", noise, (steps, n, v), flt), ("logits", logits, (steps, n, v), flt)):
            if t is not None and (tuple(t.shape) != shape or t.dtype != dtype or not t.is_contiguous()
                                  or t.device.type != "cpu"):
                raise ValueError(f"{name}: expected a contiguous CPU {dtype} tensor of shape {shape}, "
                                 f"got {t.dtype} {tuple(t.shape)}")
        self.lib.gru_sample(
            self.layers, self.hidden_size, self.vocab, self.batch, int(self.stepper.reset_after), self.stepper.zoneout,
            int(self.stepper.layer_norm),
            self.table.data_ptr(), self.params.data_ptr(), self.stepper.hidden.data_ptr(), self.work.data_ptr(),
            prev.data_ptr(), steps, None if noise is None else noise.data_ptr(),
            0.0 if noise is None else 1.0 / temperature, out.data_ptr(), None if logits is None else logits.data_ptr(),
        )
