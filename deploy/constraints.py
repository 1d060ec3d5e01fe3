"""Write deploy/constraints.txt: all that astrodask[kubernetes] needs (pyproject.toml), pinned as installed here.

Test tools of :data:`ALSO_PINNED` are pinned with it.

Run it in the tested environment (``make test`` passed in it)::

    .venv/bin/python deploy/constraints.py > deploy/constraints.txt

It walks astrodask's requirements (with the ``kubernetes`` extra) through the installed distributions'
metadata, markers evaluated for Linux and this Python, and prints ``name==version`` for each, sorted.
The image installs astrodask with ``--constraint constraints.txt``, so it holds what was tested.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

#: The extras of astrodask the image installs.
ROOT_EXTRAS = ("kubernetes",)
#: Test tools pinned too (with what they need), beside the image's closure: ``make`` installs the
#: ``test`` extra under these constraints, so property-based tests run the tested hypothesis.
ALSO_PINNED = ("hypothesis",)
#: astrodask's own requirements are read from the source tree, not from an installed copy's metadata.
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: The image's platform, for environment markers.
IMAGE_PLATFORM = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}


def root_requirements(extras: tuple[str, ...] = ROOT_EXTRAS) -> list[str]:
    """astrodask's requirements and those of ``extras``, as pyproject.toml declares them."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra])]


def closure(requirements: list[str]) -> dict[str, str]:
    """Every distribution ``requirements`` need, installed here: canonical name -> version.

    Raises
    ------
    PackageNotFoundError
        A needed distribution is not installed in this environment.
    """
    pinned: dict[str, str] = {}
    todo = [Requirement(text) for text in requirements]
    seen: set[tuple[str, str]] = set()
    while todo:
        requirement = todo.pop()
        dist = distribution(requirement.name)
        key = canonicalize_name(dist.metadata["Name"])
        pinned[key] = dist.version
        for extra in ("", *sorted(requirement.extras)):
            if (key, extra) in seen:
                continue
            seen.add((key, extra))
            for text in dist.requires or []:
                needed = Requirement(text)
                if needed.marker is None or needed.marker.evaluate({**IMAGE_PLATFORM, "extra": extra}):
                    todo.append(needed)
    return dict(sorted(pinned.items()))


def main() -> int:
    """Print the constraints file."""
    try:
        pins = closure([*root_requirements(), *ALSO_PINNED])
    except PackageNotFoundError as err:
        print(f"error: {err} is needed but not installed: pip install -e '.[kubernetes]' first", file=sys.stderr)
        return 1
    print(f"# astrodask[kubernetes] and everything it needs, and {', '.join(ALSO_PINNED)} (tests), pinned as "
          "tested: python deploy/constraints.py")
    for name, version in pins.items():
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
