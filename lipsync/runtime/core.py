"""OpenVINO plumbing shared by the compiled networks: precision choice, compile, request pool."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import openvino as ov

from lipsync.util import native_lock

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "f32", "bf16", "int8")


def cpu_supports_bf16(core: ov.Core, device: str = "CPU") -> bool:
    """True when the device executes bf16 natively (AVX-512 BF16 / AMX on CPUs)."""
    try:
        return "BF16" in core.get_property(device, "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def resolve_precision(core: ov.Core, device: str, precision: str) -> str:
    """Map a requested precision ("auto", "f32", "bf16", "int8") to the one actually used."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if cpu_supports_bf16(core, device) else "f32"
    if precision == "bf16" and not cpu_supports_bf16(core, device):
        raise ValueError(f"precision 'bf16' is not supported by device {device!r}")
    return precision


def float_precision(core: ov.Core, device: str, precision: str) -> str:
    """The execution precision of float layers: for "int8" models (quantized generator,
    float detector) the fastest float type the device has."""
    if precision == "int8":
        return "bf16" if cpu_supports_bf16(core, device) else "f32"
    return precision


def make_core(cache_dir: str | Path | None = None, inference_threads: int = 0) -> ov.Core:
    """An OpenVINO core; with `cache_dir`, compiled blobs are cached there across restarts.
    `inference_threads` > 0 caps the CPU plugin's threads per inference (0: OpenVINO's
    default, every core of the machine), e.g. to the CPUs a Ray replica was given."""
    core = ov.Core()
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache_dir)})
    if inference_threads > 0:
        core.set_property("CPU", {"INFERENCE_NUM_THREADS": inference_threads})
    return core


@contextlib.contextmanager
def cache_lock(core: ov.Core) -> Iterator[None]:
    """Hold an exclusive lock on the core's model cache directory, if it has one.

    Processes sharing the cache must not compile at once: two gunicorn workers writing
    the same blob failed with "cannot set permissions: No such file or directory". Under
    the lock the first process compiles and writes the blob; the others then load it.
    """
    cache_dir = core.get_property("CACHE_DIR")
    if not cache_dir:
        yield
        return
    with open(Path(cache_dir) / ".compile.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class CompiledNetwork:
    """A network compiled on first use (once, thread-safely) with a pool of infer requests.

    `preprocess` may rewrite the read model (e.g. with `ov.preprocess.PrePostProcessor`)
    before compilation; it receives and returns an `ov.Model`.
    """

    def __init__(
        self,
        core: ov.Core,
        xml_path: str | Path,
        *,
        device: str,
        precision: str,
        preprocess: Callable[[ov.Model], ov.Model] | None = None,
        extra_config: dict | None = None,
    ) -> None:
        self.core = core
        self.xml_path = Path(xml_path)
        self.device = device
        self.precision = precision
        self._preprocess = preprocess
        self._config = {"INFERENCE_PRECISION_HINT": precision, **(extra_config or {})}
        self._compiled: ov.CompiledModel | None = None
        # Native lock and a deque (atomic append/pop): inference runs on OS threads, also in
        # a gevent worker, whose patched locks and queues belong to greenlets.
        self._lock = native_lock()
        self._requests: deque[ov.InferRequest] = deque()
        self.compile_seconds: float | None = None

    @property
    def present(self) -> bool:
        return self.xml_path.is_file() and self.xml_path.with_suffix(".bin").is_file()

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def compile(self) -> ov.CompiledModel:
        """Read, preprocess and compile the IR once; later calls return the same object."""
        if self._compiled is not None:
            return self._compiled
        with self._lock:
            if self._compiled is None:
                if not self.present:
                    raise FileNotFoundError(f"model files not found: {self.xml_path}(.bin)")
                start = time.perf_counter()
                model = self.core.read_model(self.xml_path)
                if self._preprocess is not None:
                    model = self._preprocess(model)
                with cache_lock(self.core):
                    compiled = self.core.compile_model(model, self.device, self._config)
                # Time first: a reader that sees the network compiled also sees its time.
                self.compile_seconds = time.perf_counter() - start
                self._compiled = compiled
                logger.info(
                    "compiled %s on %s (%s) in %.2f s",
                    self.xml_path.name,
                    self.device,
                    self.precision,
                    self.compile_seconds,
                )
        return self._compiled

    def acquire(self) -> ov.InferRequest:
        """Take an infer request from the pool (made on demand); give it back with `release`."""
        compiled = self.compile()
        try:
            return self._requests.pop()
        except IndexError:
            return compiled.create_infer_request()

    def release(self, req: ov.InferRequest) -> None:
        self._requests.append(req)

    @contextlib.contextmanager
    def request(self) -> Iterator[ov.InferRequest]:
        """Borrow an infer request (requests are not thread-safe; the pool makes them so)."""
        req = self.acquire()
        try:
            yield req
        finally:
            self.release(req)
