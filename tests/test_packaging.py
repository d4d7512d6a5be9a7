"""What `make demo` installs (lmfuse with the `demo` extra) pulls in neither PyTorch nor
transformers: the closure of its requirements, followed through the installed packages'
metadata, holds neither. The `interop` extra (GPT-2 import) is where they come in."""

from __future__ import annotations

import configparser
import re
from importlib import metadata

from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEAVY = {"torch", "transformers"}


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """lmfuse's install_requires plus the given extras, as setup.cfg declares them."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in (x.split("#")[0].strip() for x in lines) if line]


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the roots need, through installed metadata (markers evaluated, no
    extras of the dependencies)."""
    seen: set[str] = set()
    todo = [r for r in roots if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        name = canonicalize_name(todo.pop().name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: nothing of it to follow
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req)
    return seen


def test_the_demo_install_holds_no_pytorch_and_no_transformers():
    demo = closure(requirements(("demo",)))
    assert {"jax", "flax", "optax", "tensorboard", "pythonbible"} <= demo  # it follows deps
    assert not demo & HEAVY, sorted(demo & HEAVY)


def test_the_interop_extra_is_where_they_come_in():
    interop = {canonicalize_name(r.name) for r in requirements(("interop",))}
    assert HEAVY <= interop
    assert re.search(r"^\s*torch==2\.13\.0", (REPO / "setup.cfg").read_text(), re.M)
