"""Property-based fuzzing of the archive-root rule (`miner.data.confine`) against a plain reference.

The reference: a path is inside a root when ``os.path.commonpath([realpath(path), realpath(root)]) ==
realpath(root)``. Paths are drawn from ``..``, ``.``, absolute paths, names that exist and names that do not, and
symbolic links inside and outside a temporary root: to files and folders, relative and absolute, chains, loops,
dangling links, links out and back in, a sibling folder whose name extends the root's, and the root itself given
through a link. `is_inside`, `check_inside`, the fast `Resolver` and what `read_archive` makes of a manifest's or a
Data_Entry file's paths must all agree with the reference. Budget: the "hostile" profile (tests/hostile/conftest.py:
200 derandomized examples a property).
"""
from __future__ import annotations

import csv
import os
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from miner.data.confine import Resolver, check_inside, is_inside, outside_records, resolve_root
from miner.errors import ImageError, MinerWarning


def reference(path: str, root: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, base]) == base


#: symbolic links of the fixed world, inside ``root_real`` (name -> target)
LINKS = {
    "in_link": "images/a.png",
    "out_link": "../outside/o.png",
    "abs_out": "{world}/outside/o.png",
    "abs_in": "{world}/root_real/images/a.png",
    "chain1": "chain2",
    "chain2": "out_link",
    "chain_in1": "chain_in2",
    "chain_in2": "in_link",
    "loop_a": "loop_b",
    "loop_b": "loop_a",
    "self_loop": "self_loop",
    "dangling": "nowhere/x.png",
    "dangling_out": "../../nowhere/x.png",
    "dir_in": "sub",
    "dir_out": "../outside",
    "dir_up": "..",
    "dir_root": "/",
    "back_in": "../root_real/images",
    "sibling": "../root_real2",
}
NAMES = [".", "..", "images", "a.png", "sub", "s.png", "outside", "o.png", "root_real", "root_real2", "x.png",
         "root_alias", "nonexistent", "etc", "passwd", *LINKS]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    world = tmp_path_factory.mktemp("world").resolve()
    for folder in ("outside", "root_real/images", "root_real/sub", "root_real2"):
        (world / folder).mkdir(parents=True)
    for file in ("outside/o.png", "root_real/images/a.png", "root_real/sub/s.png", "root_real2/x.png"):
        (world / file).write_bytes(b"\x89PNG")
    for name, target in LINKS.items():
        os.symlink(target.format(world=world), world / "root_real" / name)
    os.symlink(world / "root_real", world / "root_alias")
    return world


components = st.lists(st.sampled_from(NAMES) | st.text("abc.-_ ", min_size=1, max_size=4), max_size=7)


@st.composite
def paths(draw, world: Path) -> tuple[str, str]:
    """(path, root): a relative path joined to the root as the readers join, or an absolute path."""
    root = str(world / draw(st.sampled_from(["root_real", "root_alias"])))
    parts = draw(components)
    kind = draw(st.sampled_from(["joined", "joined", "absolute_world", "absolute_system"]))
    if kind == "joined":
        path = os.path.join(root, *parts) if parts else root
    elif kind == "absolute_world":
        path = os.path.join(str(world), *parts)
    else:
        path = "/" + "/".join(parts)
    if draw(st.booleans()):
        path += "/"
    return path, root


@given(data=st.data())
def test_rule_agrees_with_the_reference(world, data):
    path, root = data.draw(paths(world))
    expected = reference(path, root)
    event(f"inside: {expected}")
    assert is_inside(path, root) == expected
    base = resolve_root(root)
    resolver = Resolver(base)
    assert resolver.real(path) == os.path.realpath(path)
    assert resolver.inside(path) == expected
    if expected:
        assert check_inside(path, base) == os.path.realpath(path)
    else:
        with pytest.raises(ImageError) as info:
            check_inside(path, base)
        assert info.value.kind == "outside_archive"


link_targets = st.one_of(
    st.builds(lambda k: f"L{k}", st.integers(0, 5)),  # another link of the chain (or a loop)
    st.sampled_from(["f.png", "sub/f.png", "../out/g.png", "../root/f.png", "..", ".", "/", "missing.png",
                     "../out", "sub", "../root", "../../x", "../out/g.png", "../out", "../root/../out/g.png"]),
    st.builds(lambda k: f"sub/L{k}", st.integers(0, 5)),
)


@given(targets=st.lists(link_targets, min_size=1, max_size=6), start=st.integers(0, 5),
       tail=st.sampled_from(["", "f.png", "../f.png", "g.png", "x"]))
def test_random_link_chains_agree_with_the_reference(targets, start, tail):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp).resolve()
        root, out = base / "root", base / "out"
        (root / "sub").mkdir(parents=True)
        out.mkdir()
        for file in (root / "f.png", root / "sub" / "f.png", out / "g.png"):
            file.write_bytes(b"x")
        for k, target in enumerate(targets):
            os.symlink(target, root / f"L{k}")
        start %= len(targets)  # a link that exists
        path = os.path.join(root, f"L{start}", tail) if tail else str(root / f"L{start}")
        expected = reference(path, str(root))
        event(f"inside: {expected}")
        assert is_inside(path, root) == expected
        assert Resolver(root).real(path) == os.path.realpath(path)
        assert outside_records_of([path], root) == ([] if expected else [path])


def outside_records_of(paths: list[str], root: Path) -> list[str]:
    from miner.data.records import Record

    return [r.path for r, _ in outside_records([Record(f"i{k}", p) for k, p in enumerate(paths)], root)]


value_parts = st.lists(st.sampled_from(NAMES) | st.text("abc.-_", min_size=1, max_size=4), min_size=1, max_size=6)


@given(data=st.data(), rows=st.lists(st.tuples(st.booleans(), value_parts), min_size=1, max_size=6),
       via_alias=st.booleans())
def test_a_manifest_reaches_only_files_under_its_folder(world, data, rows, via_alias):
    """Random path values in a manifest (relative with .., through links, absolute): read_archive keeps every row
    (the job makes the outside ones error rows), and the records it flags agree with the reference."""
    from miner.data import read_archive

    values = ["/" + "/".join(parts) if absolute else "/".join(parts) for absolute, parts in rows]
    values = [v for v in values if v.strip(" /.")] or ["images/a.png"]
    with tempfile.TemporaryDirectory(dir=world / "root_real") as tmp:
        folder = Path(tmp)
        with open(folder / "manifest.csv", "w", newline="") as f:
            csv.writer(f).writerows([["path"], *([v] for v in values)])
        given_folder = world / "root_alias" / folder.name if via_alias else folder
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MinerWarning)  # random rows may repeat a path
            arch = read_archive(given_folder / "manifest.csv")
        assert arch.confined_to == folder.resolve()
        assert all(r.root == str(folder.resolve()) for r in arch.records)
        flagged = {r.image_id for r, _ in outside_records(arch.records, arch.confined_to)}
        event(f"rows outside: {bool(flagged)}, inside: {len(flagged) < len(arch.records)}")
        for record in arch.records:
            assert (record.image_id in flagged) == (not reference(record.path, str(folder))), record


escaping = st.tuples(st.integers(0, 4), value_parts).map(lambda t: "/".join([".."] * t[0] + t[1]))


@given(names=st.lists(escaping | value_parts.map("/".join) | value_parts.map(lambda p: "/" + "/".join(p)),
                      min_size=1, max_size=5))
def test_a_data_entry_file_reaches_only_files_under_its_folder(world, names):
    """Random Image Index values (``../..``, links, absolute paths) of a ChestX-ray14 release."""
    from miner.data import read_archive
    from miner.data.archives.nih import DATA_ENTRY_HEADER

    names = [n for n in names if n.strip() and n.strip() == n] or ["a.png"]
    with tempfile.TemporaryDirectory(dir=world / "root_real" / "sub") as tmp:
        folder = Path(tmp)
        (folder / "images").mkdir()
        with open(folder / "Data_Entry_2017.csv", "w", newline="") as f:
            f.write(DATA_ENTRY_HEADER + "\n")
            csv.writer(f).writerows([[n, "No Finding", "0", "1", "50", "F", "PA", "8", "8", "0.1", "0.1", ""]
                                     for n in names])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MinerWarning)
            arch = read_archive(folder)
        event(f"rows outside: {any(not reference(r.path, str(folder)) for r in arch.records)}")
        for record in arch.records:
            inside = reference(record.path, str(folder))
            assert is_inside(record.path, folder) == inside
            try:
                check_inside(record.path, record.root)
            except ImageError as err:
                assert not inside and err.kind == "outside_archive"
            else:
                assert inside


absolute = st.lists(st.sampled_from(["a", "ab", "a.b", "b", "a b", "-"]), max_size=4).map(lambda p: "/" + "/".join(p))


@given(path=absolute, root=absolute)
def test_the_fast_prefix_test_is_is_relative_to(path, root):
    """`Resolver.under` (strings) is `PurePath.is_relative_to` (components): ``/a/ab`` is not under ``/a/a``; every
    path is under ``/``."""
    from pathlib import PurePosixPath

    assert Resolver(root).under(path) == PurePosixPath(path).is_relative_to(root)
