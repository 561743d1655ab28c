"""The folder of slides named at start (``medscope serve RUN --slides DIR``): files too big to
upload, listed for the page and opened by name.

Only a file inside DIR is ever opened. A requested name is refused before anything is read
when it is absolute, holds ``..`` or a hidden part, or leads (through a symlink, of the file or
of a folder on its way) to a file whose real path lies outside DIR's real path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from medscope.errors import MedscopeError
from medscope.slides.readers import is_slide_file

MAX_LISTED = 2000  # a listing is for a person to pick from, not an archive index


class SlideRefused(Exception):
    """A name that must not be opened: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class SlideDir:
    """DIR, resolved once at start (a later symlink swap of DIR itself changes nothing)."""

    root: Path

    @classmethod
    def open(cls, folder: Path | str) -> SlideDir:
        path = Path(folder)
        if not path.is_dir():
            raise MedscopeError(f"--slides {folder}: not a folder")
        return cls(path.resolve())

    def listing(self, limit: int = MAX_LISTED) -> dict[str, Any]:
        """The slides and images under DIR (recursively, in name order, hidden files and
        folders skipped, symlinks leading out of DIR left out), with their sizes."""
        found: list[dict[str, Any]] = []
        for top, folders, files in os.walk(self.root):  # followlinks=False: no loops
            folders[:] = sorted(d for d in folders if not d.startswith("."))
            for name in sorted(files):
                path = Path(top) / name
                if not is_slide_file(path) or self._inside(path) is None:
                    continue
                if len(found) == limit:
                    return {"slides": found, "truncated": True}
                found.append({"name": path.relative_to(self.root).as_posix(),
                              "bytes": path.stat().st_size})
        return {"slides": found, "truncated": False}

    def resolve(self, name: str) -> Path:
        """The file ``name`` (a path relative to DIR, ``/``-separated) names, or SlideRefused."""
        if not name or "\x00" in name:
            raise SlideRefused(400, "give the slide's name as listed by /api/slides")
        if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() \
                or PureWindowsPath(name).drive:
            raise SlideRefused(400, f"slide {name!r}: absolute paths are refused; give a name "
                                    "relative to the slides folder")
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if any(p == ".." for p in parts):
            raise SlideRefused(400, f"slide {name!r}: '..' is refused")
        if any(p.startswith(".") for p in parts):
            raise SlideRefused(400, f"slide {name!r}: hidden files are not served")
        real = self._inside(self.root.joinpath(*parts))
        if real is None:
            raise SlideRefused(403, f"slide {name!r} leads outside the slides folder; refused")
        if not real.is_file() or not is_slide_file(real):
            raise SlideRefused(404, f"no slide {name!r} in the slides folder")
        return real

    def _inside(self, path: Path) -> Path | None:
        """``path``'s real path when it lies inside DIR (or does not exist: then it is not
        found, which is told apart later); None when it leads out."""
        try:
            real = path.resolve(strict=False)
        except (OSError, RuntimeError):  # a symlink loop
            return None
        return real if real == self.root or real.is_relative_to(self.root) else None
