"""Out of memory, as each array library says it: recognised, and described in one line."""

import re

def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of NumPy, CuPy, PyTorch and JAX."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # cupy.cuda.memory / torch.cuda
        return True
    text = str(exc)
    # torch on the CPU: RuntimeError "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes"
    return ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
            or "DefaultCPUAllocator: can't allocate memory" in text or "DefaultCPUAllocator: not enough memory" in text)


def describe_out_of_memory(exc: BaseException) -> str:
    """A one-line description of the failed allocation, with the size where the library says it."""
    text = " ".join(str(exc).split())
    m = re.search(r"allocat\w*\s+([\d.,]+\s*[KMGTP]?i?B|[\d,]+ bytes)", text)
    size = re.sub(r"\.(?=\s)", "", m.group(1)) if m else None  # NumPy writes "570. TiB"
    shape = re.search(r"shape \(([^)]*)\)", text)
    what = f"an allocation of {size}" if size else "an allocation"
    if shape:
        what += f" (array of shape ({shape.group(1)}))"
    return what
