"""Out of memory, as each array library says it: recognised, and described in one line."""

import re


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of NumPy, CuPy and torch.cuda (OutOfMemoryError), JAX, and PyTorch on the
    CPU (RuntimeError "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes")."""
    text = str(exc)
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "RESOURCE_EXHAUSTED" in text
            or "out of memory" in text.lower() or "DefaultCPUAllocator: can't allocate memory" in text
            or "DefaultCPUAllocator: not enough memory" in text)


def describe_out_of_memory(exc: BaseException) -> str:
    """A one-line description of the failed allocation, with the size where the library says it."""
    text = " ".join(str(exc).split())
    m = re.search(r"allocat\w*\s+([\d.,]+\s*[KMGTP]?i?B|[\d,]+ bytes)", text)
    size = re.sub(r"\.(?=\s)", "", m.group(1)) if m else None  # NumPy writes "570. TiB"
    shape = re.search(r"shape \(([^)]*)\)", text)
    return "an allocation" + (f" of {size}" if size else "") + (f" (array of shape ({shape[1]}))" if shape else "")
