# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hash and flush CRIU's page images while ``criu dump`` is still writing them (or Podman's export while Podman
writes it).

Page images hold nearly every byte of a checkpoint and CRIU appends to them front to
back, so reading each one as it grows overlaps hashing and disk write-back with the
dump instead of running both after it; Podman writes its export tar front to back too. Should CRIU ever rewrite bytes behind the reader,
the digest would not match at verification, which refuses the checkpoint: the failure
is loud, never a silent restore of wrong memory.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import threading
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

FOLLOWED = re.compile(r"pages-[0-9]+\.img\Z")
FOLLOWED_EXPORT = re.compile(re.escape(integrity.CONTAINER_EXPORT) + r"\Z")
CHUNK = 8 * 1024 * 1024
FLUSH_EVERY = 64 * 1024 * 1024
POLL_SECONDS = 0.005


class _Image:
    """One page image being followed: its fd, running digest, bytes hashed and bytes handed to write-back."""

    def __init__(self, name: str, fd: int, algorithm: str) -> None:
        self.name = name
        self.fd = fd
        self.digest = integrity.Digester(algorithm)
        self.size = 0
        self.flushed = 0


class ImageFollower:
    """Context manager around a dump: follows page images in a thread; ``digests()`` after criu exited."""

    def __init__(self, images_fd: int, images_dir: str, algorithm: str,
                 on_chunk: t.Optional[t.Callable[[str, int, memoryview, int], None]] = None, write_back: bool = True,
                 followed: t.Pattern[str] = FOLLOWED) -> None:
        """``on_chunk(name, offset, bytes, fd)`` sees every byte as it is hashed (a migration streams it to the target;
        ``fd``, the image open for reading, holds the same bytes at ``offset``, for a send without a copy);
        ``write_back`` flushes the images to disk as they grow (for checkpoints that must outlive the process);
        ``followed`` names the files written front to back (criu's page images, or Podman's export)."""
        self.images_fd = images_fd
        self.followed = followed
        self.images_dir = images_dir
        self.algorithm = algorithm
        self.on_chunk = on_chunk
        self.write_back = write_back
        self._images: t.Dict[str, _Image] = {}
        self._buffer = bytearray(CHUNK)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="nucleus-criu-follow", daemon=True)
        self._flusher = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._flushing: t.Optional[concurrent.futures.Future] = None
        self._error: t.Optional[Exception] = None
        self._dir_fd = -1

    def __enter__(self) -> ImageFollower:
        self._dir_fd = safepath.reopen_dir(self.images_fd)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self._halt()
        for image in self._images.values():
            os.close(image.fd)
        os.close(self._dir_fd)

    def _halt(self) -> None:
        self._stop.set()
        self._thread.join()
        self._flusher.shutdown(wait=True)

    def _follow(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._catch_up(write_back=self.write_back):
                    self._stop.wait(POLL_SECONDS)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self._error = exc  # raised again by digests(), in the caller's thread

    def _catch_up(self, write_back: bool) -> bool:
        """Open new page images and hash what was appended to each; True if anything was read."""
        for name in safepath.listdir(self._dir_fd):
            if self.followed.match(name) and name not in self._images:
                self._images[name] = _Image(name, integrity.open_image(self._dir_fd, name), self.algorithm)
        progressed = False
        view = memoryview(self._buffer)
        for image in self._images.values():
            count = os.preadv(image.fd, [self._buffer], image.size)
            while count:
                image.digest.update(view[:count])
                if self.on_chunk is not None:
                    self.on_chunk(image.name, image.size, view[:count], image.fd)
                image.size += count
                progressed = True
                count = os.preadv(image.fd, [self._buffer], image.size)
            if write_back:
                self._start_write_back(image)
        return progressed

    def _start_write_back(self, image: _Image) -> None:
        """Flush in the background what has been hashed, so the final fsync finds little left to write."""
        if image.size - image.flushed < FLUSH_EVERY or (self._flushing is not None and not self._flushing.done()):
            return
        image.flushed = image.size
        self._flushing = self._flusher.submit(os.fdatasync, image.fd)

    def digests(self) -> t.Dict[str, integrity.FileDigest]:
        """Call once criu has exited: read every page image to its end and return name -> (size, digest)."""
        self._halt()
        try:
            if self._error is not None:
                raise self._error
            self._catch_up(write_back=False)
        except OSError as exc:
            raise CriuError("Cannot hash the page images in %s as criu writes them: %s. Something else is writing there; "
                            "use a dest no other process touches." % (self.images_dir, exc.strerror), path=self.images_dir) from exc
        return {name: image.digest.result() for name, image in self._images.items()}
