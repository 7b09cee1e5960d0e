"""CUDA primitives for the GPU tier (torch): exact-size host registration, UVA views, event timing.

Every entry point is guarded by ``torch.cuda.is_available()``; without CUDA the GPU section
reports ``skipped: no device`` and nothing here runs. The UVA view of registered host memory is
built through ``__cuda_array_interface__`` (torch wraps the pointer without copying), with the
device pointer from ``cudaHostGetDevicePointer`` when libcudart can be reached, else the host
pointer itself (the same under unified addressing).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engram_cli.errors import DeviceUnavailableError

HOST_REGISTER_PORTABLE = 1
HOST_REGISTER_MAPPED = 2


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


def require_cuda(what: str = "the GPU tier") -> None:
    if not cuda_available():
        raise DeviceUnavailableError(f"{what} needs CUDA, and no CUDA device is available",
                                     hint="drop gpu from --tiers, or run on a machine with an NVIDIA GPU")


def _libcudart() -> ctypes.CDLL | None:
    """The libcudart torch already loaded (found in /proc/self/maps), or None."""
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split()[-1] if line.split() else ""
            if "libcudart" in Path(path).name:
                return ctypes.CDLL(path)
    except OSError:
        return None
    return None


@dataclass
class Registration:
    """Host bytes registered with CUDA (page-locked, mapped) at their exact size."""

    host_ptr: int
    nbytes: int
    device_ptr: int
    pin_memory_would_allocate: int  # what Tensor.pin_memory() rounds the same request up to
    device_ptr_source: str = "host pointer (unified addressing)"

    def close(self) -> None:
        import torch

        if self.nbytes:
            torch.cuda.cudart().cudaHostUnregister(self.host_ptr)
            self.nbytes = 0


def _code(err: Any) -> int:
    return int(getattr(err, "value", err))


def register_host(buf: np.ndarray) -> Registration:
    """``cudaHostRegister`` the exact bytes of ``buf`` (not pin_memory's power-of-two rounding)."""
    import torch

    require_cuda()
    ptr, nbytes = int(buf.ctypes.data), int(buf.nbytes)
    err = torch.cuda.cudart().cudaHostRegister(ptr, nbytes, HOST_REGISTER_PORTABLE | HOST_REGISTER_MAPPED)
    if _code(err) != 0:
        raise DeviceUnavailableError(f"cudaHostRegister of {nbytes:,} bytes failed (cudaError {_code(err)})",
                                     hint="lower --table-size, or raise the locked-memory limit (ulimit -l)")
    reg = Registration(ptr, nbytes, ptr, 1 << (nbytes - 1).bit_length())
    lib = _libcudart()
    if lib is not None:
        out = ctypes.c_void_p()
        if lib.cudaHostGetDevicePointer(ctypes.byref(out), ctypes.c_void_p(ptr), 0) == 0 and out.value:
            reg.device_ptr, reg.device_ptr_source = int(out.value), "cudaHostGetDevicePointer"
    return reg


class _CudaArray:
    """A minimal ``__cuda_array_interface__`` holder (keeps the host buffer alive)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str, owner: Any):
        self._owner = owner
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False),
                                         "version": 3, "strides": None}


def uva_view(buf: np.ndarray, reg: Registration) -> Any:
    """A CUDA tensor (uint8, ``buf``'s shape) whose loads read the registered host bytes over the link."""
    import torch

    offset = int(buf.ctypes.data) - reg.host_ptr
    if offset < 0 or offset + buf.nbytes > reg.nbytes:
        raise ValueError("the buffer is outside the registered range")
    holder = _CudaArray(reg.device_ptr + offset, tuple(buf.shape), "|u1", buf)
    return torch.as_tensor(holder, device="cuda")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return cuda_available()


def time_events(fn: Callable[[], None], *, stream: Any = None) -> float:
    """µs of one call of ``fn`` on ``stream`` (CUDA events recorded around it)."""
    import torch

    s = stream or torch.cuda.current_stream()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(s)
    with torch.cuda.stream(s):
        fn()
    end.record(s)
    end.synchronize()
    return start.elapsed_time(end) * 1e3


def device_info() -> dict[str, Any]:
    """Name, SMs, L2, memory, CUDA/driver versions, PCIe link and NUMA node (what can be read)."""
    import torch

    require_cuda()
    p = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {"name": p.name, "sm_count": p.multi_processor_count, "total_memory": int(p.total_memory),
                            "l2_bytes": int(getattr(p, "L2_cache_size", 0)) or None, "cuda": torch.version.cuda,
                            "capability": f"{p.major}.{p.minor}", "uuid": str(getattr(p, "uuid", "")) or None}
    info.update(_nvml_info())
    return info


def _nvml_info() -> dict[str, Any]:
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        out = {"driver": pynvml.nvmlSystemGetDriverVersion(),
               "pcie_gen_current": pynvml.nvmlDeviceGetCurrPcieLinkGeneration(h),
               "pcie_gen_max": pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h),
               "pcie_width_current": pynvml.nvmlDeviceGetCurrPcieLinkWidth(h),
               "pcie_width_max": pynvml.nvmlDeviceGetMaxPcieLinkWidth(h)}
        bus = pynvml.nvmlDeviceGetPciInfo(h).busId
        bus = bus.decode() if isinstance(bus, bytes) else bus
        node = Path(f"/sys/bus/pci/devices/{bus.lower()[-12:]}/numa_node")
        out["numa_node"] = int(node.read_text()) if node.is_file() else None
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in out.items()}
    except Exception:  # noqa: BLE001 - NVML is optional and its failures are not ours
        return {}
