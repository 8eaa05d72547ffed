"""What serving the demo needs, without the UI framework: uploads read once and deleted, the low-bandwidth mode's
reduced view, and the server's memory arenas. The Gradio app (``app.py``) wires these to its handlers.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

MAX_REDUCED_SIZE = 112  # the largest student input the low-bandwidth mode accepts (112 x 112 bytes)
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


class UploadGone(FileNotFoundError):
    """The uploaded file is no longer on the server (read and deleted long enough ago to be forgotten)."""


class ConsumedUploads:
    """Bytes of uploads read (and deleted) in the last ``ttl_s`` seconds, keyed by their path, in memory only.

    Gradio stores an upload under a hash of its content, so two visitors sending the same file at once share one
    path: the first request deletes it, and the second finds its bytes here instead of failing. Bounded in count
    and bytes; nothing is written anywhere.

    The file goes at once; the empty folder Gradio made for it (named by the content's SHA-256) stays for
    ``folder_ttl_s``: removing it at once raced Gradio's upload of an identical file, which creates the folder and
    then renames the file into it, and that upload failed with HTTP 500. Older empty upload folders are swept at
    most once a minute.
    """

    def __init__(self, ttl_s: float = 30.0, max_bytes: int = 128 * 2**20, folder_ttl_s: float = 600.0) -> None:
        self.ttl_s, self.max_bytes, self.folder_ttl_s = ttl_s, max_bytes, folder_ttl_s
        self._entries: dict[Path, tuple[float, bytes]] = {}
        self._lock = threading.Lock()
        self._last_sweep = 0.0

    def consume(self, path: str | os.PathLike, upload_root: str | os.PathLike) -> bytes:
        """The upload's bytes; a file inside ``upload_root`` (the server's upload folder) is deleted at once.

        Raises:
            UploadGone: the file is not there and was not read in the last ``ttl_s`` seconds.
        """
        resolved, upload_root = Path(path).resolve(), Path(upload_root).resolve()
        with self._lock:
            now = time.monotonic()
            self._entries = {p: e for p, e in self._entries.items() if now - e[0] < self.ttl_s}
            try:
                data = resolved.read_bytes()
            except FileNotFoundError:
                if resolved in self._entries:
                    return self._entries[resolved][1]
                raise UploadGone(f"{resolved.name} is no longer on the server") from None
            if upload_root not in resolved.parents:
                return data  # not an upload (e.g. a local path given to the API): never delete it
            resolved.unlink(missing_ok=True)
            self._entries[resolved] = (now, data)
            while sum(len(e[1]) for e in self._entries.values()) > self.max_bytes and self._entries:
                del self._entries[min(self._entries, key=lambda p: self._entries[p][0])]
            if now - self._last_sweep > 60.0:
                self._last_sweep = now
                self.sweep_folders(upload_root)
            return data

    def sweep_folders(self, upload_root: Path) -> None:
        """Remove the empty upload folders (SHA-256 names) not modified for ``folder_ttl_s`` seconds."""
        cutoff = time.time() - self.folder_ttl_s
        for folder in upload_root.iterdir():
            try:
                if _SHA256_NAME.fullmatch(folder.name) and folder.stat().st_mtime < cutoff:
                    folder.rmdir()  # refuses a folder that is not empty
            except OSError:
                pass


def reduced_view(payload: str) -> np.ndarray:
    """``(size, size)`` in ``[0, 1]`` from the low-bandwidth mode's ``"SIZE:base64"`` payload (8 bits a pixel).

    Raises:
        ValueError: a malformed payload, a size over :data:`MAX_REDUCED_SIZE`, or a pixel count that is not
            ``SIZE * SIZE``.
    """
    size_text, separator, data = payload.partition(":")
    if not separator or not size_text.isdigit() or not 1 <= int(size_text) <= MAX_REDUCED_SIZE:
        raise ValueError(f"expected 'SIZE:base64 pixels' with SIZE at most {MAX_REDUCED_SIZE}")
    size = int(size_text)
    if len(data) > 4 * (size * size + 2) // 3 + 4:
        raise ValueError(f"more data than a {size} x {size} view holds")
    try:
        pixels = np.frombuffer(base64.b64decode(data, validate=True), dtype=np.uint8)
    except binascii.Error as error:
        raise ValueError(f"the pixels are not valid base64 ({error})") from None
    if pixels.size != size * size:
        raise ValueError(f"{pixels.size} pixels for a {size} x {size} view")
    return pixels.reshape(size, size).astype(np.float32) / 255.0


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before the server's thread pool starts. With the default (8 per core) the server's
    memory grew 11.5% from the 100th to the 1,000th request of the load run and kept growing; with 2 arenas it grew
    1.5% and then stayed flat (bench/bench_app.py --reliability): fragmentation across threads, not a leak. Same
    effect as MALLOC_ARENA_MAX=2; a no-op where the C library is not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass
