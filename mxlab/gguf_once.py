"""Read a GGUF file's metadata once per model load, not three times.

transformers reads a GGUF source three times, for the config, the tokenizer and the weights; each read builds
a ``gguf.GGUFReader``, which parses every metadata field: SmolLM2-135M's 49,152-token vocabulary and merges are
440,000 field parts, about 6 s a parse on a 2-core machine. Mapping the weights' names then calls
``gguf.get_tensor_name_map(arch, n_blocks)`` once per module of the model (397 for SmolLM2), each building the
same table again. Inside ``parsed_once()`` both are built once and reused; outside it (any other thread, any
other caller) gguf behaves exactly as installed. The reader is only read from: transformers takes fields and
memory-mapped tensor data from it, and the tensors it returns are copies (dequantized).
"""
from __future__ import annotations

import contextvars
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

_CACHE: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("mxlab_gguf_cache", default=None)
_INSTALL_LOCK = threading.Lock()


def _install() -> None:
    """Put the caching front on the package-level names transformers imports (``from gguf import GGUFReader``,
    ``get_tensor_name_map``); the originals stay in their modules and are looked up there at each call.
    Once per process; without a cache (outside ``parsed_once``) the front only calls through."""
    import gguf

    with _INSTALL_LOCK:
        if getattr(gguf, "_mxlab_parsed_once", False):
            return
        from gguf import gguf_reader, tensor_mapping

        def reader(path: Any, *args: Any, **kwargs: Any):
            cache = _CACHE.get()
            if cache is None or args or kwargs:             # another mode than read-only: not shared
                return gguf_reader.GGUFReader(path, *args, **kwargs)
            st = os.stat(path)
            key = ("reader", os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size)
            if key not in cache:
                cache[key] = gguf_reader.GGUFReader(path)
            return cache[key]

        def tensor_name_map(arch: Any, n_blocks: int):
            cache = _CACHE.get()
            if cache is None:
                return tensor_mapping.get_tensor_name_map(arch, n_blocks)
            key = ("names", arch, n_blocks)
            if key not in cache:
                cache[key] = tensor_mapping.get_tensor_name_map(arch, n_blocks)
            return cache[key]

        reader.__doc__ = gguf_reader.GGUFReader.__doc__
        tensor_name_map.__doc__ = tensor_mapping.get_tensor_name_map.__doc__
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, tensor_name_map
        gguf._mxlab_parsed_once = True


@contextmanager
def parsed_once() -> Iterator[dict]:
    """Within the block (this thread), each GGUF file is parsed once and each name table built once.

    Yields the cache (for tests: which readers and tables were built). Everything in it is dropped on exit,
    so the memory map of the file is released with the load."""
    _install()
    cache: dict = {}
    token = _CACHE.set(cache)
    try:
        yield cache
    finally:
        _CACHE.reset(token)
        cache.clear()
