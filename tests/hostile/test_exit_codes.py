"""Case 11: one table of exit codes (README "Exit codes", `miner --help`, `miner.errors`), and every verb keeps to it:
a bad option, a missing or unusable input file, and an output that is in the way (a regular file where a folder
goes, a folder where a file goes) each end in exit 2 with one line on stderr, and nothing is created or changed.

Every verb of `miner.cli.VERBS` must appear in each table below that applies to it (a test checks that none was
forgotten); a verb with no input file or no output says so in `NO_INPUT` / `NO_OUTPUT`."""
from __future__ import annotations

import re

import pytest

from miner.cli import EXIT_CODES, VERBS
from tests.hostile.harness import assert_refused, assert_untouched, run_miner

#: a command line that the parser accepts, per verb (names of missing files are fine: files are read later)
VALID = {
    "phantoms": ["phantoms", "OUT"],
    "inspect": ["inspect", "ARCH"],
    "train": ["train", "ARCH", "--out", "m.pt"],
    "calibrate": ["calibrate", "m.pt", "ARCH", "--out", "m2.pt"],
    "eval": ["eval", "BOXES"],
    "labels": ["labels", "OUT", "--format", "coco", "--to", "DIR"],
    "show": ["show", "BOXES", "a.png", "--out", "a-drawn.png"],
    "report": ["report", "OUT"],
    "bench": ["bench", "kernels"],
    "export": ["export", "onnx", "m.pt", "m.onnx"],
    "mine": ["mine", "ARCH", "--model", "m.pt", "--out", "OUT"],
    "demo": ["demo", "OUT"],
    "detector": ["detector", "train", "LABELS", "--to", "DIR"],
}

#: a missing input file: (argv, text the line must hold)
MISSING = {
    "inspect": (["inspect", "nothere"], "nothere"),
    "train": (["train", "nothere", "--out", "m.pt"], "nothere"),
    "calibrate": (["calibrate", "nothere.pt", "ARCH", "--out", "m2.pt"], "nothere.pt"),
    "eval": (["eval", "nothere.csv", "--gt", "nothere.csv"], "nothere.csv"),
    "labels": (["labels", "nothere", "--format", "coco", "--to", "DIR"], "nothere"),
    "show": (["show", "nothere.parquet", "a.png", "--out", "a.png"], "nothere.parquet"),
    "report": (["report", "nothere"], "nothere"),
    "bench": (["bench", "export", "--checkpoint", "nothere.pt", "--no-reexec"], "nothere.pt"),
    "export": (["export", "onnx", "nothere.pt", "m.onnx"], "nothere.pt"),
    "mine": (["mine", "nothere", "--model", "nothere.pt", "--out", "OUT"], "nothere"),
    "demo": (["demo", "OUT", "--model", "nothere.pt"], "nothere.pt"),
    "detector": (["detector", "predict", "nothere.pt", "ARCH", "--out", "OUT"], "nothere.pt"),
}
NO_INPUT = {"phantoms"}  # makes its archive from nothing

#: an input file that exists but cannot be used (`junk` = a few bytes of nothing, `pickled` = a torch file that
#: would run code when unpickled): argv with JUNK / PICKLED standing for the file
UNUSABLE = {
    "inspect": ["inspect", "JUNK.csv"],
    "train": ["train", "JUNK.csv", "--out", "m.pt"],
    "calibrate": ["calibrate", "PICKLED.pt", "ARCH", "--out", "m2.pt"],
    "eval": ["eval", "JUNK.parquet", "--gt", "JUNK.csv"],
    "labels": ["labels", "ADIR", "--format", "coco", "--to", "DIR"],
    "show": ["show", "JUNK.parquet", "a.png", "--out", "a.png"],
    "report": ["report", "ADIR"],
    "export": ["export", "onnx", "JUNK.pt", "m.onnx"],
    "mine": ["mine", "ARCHIVE", "--model", "PICKLED.pt", "--out", "OUT"],
    "demo": ["demo", "OUT", "--model", "PICKLED.pt"],
    "detector": ["detector", "predict", "PICKLED.pt", "ARCHIVE", "--out", "OUT"],
}
NO_UNUSABLE = {"phantoms", "bench"}  # phantoms reads nothing; bench's inputs are covered by the verbs it times

#: an output in the way: (argv with AFILE = a regular file, ADIR = a folder, the line's text)
IN_THE_WAY = {
    "phantoms": (["phantoms", "AFILE"], "is a file, not a folder"),
    "train": (["train", "ARCH", "--out", "ADIR"], "is a folder; give a file name"),
    "calibrate": (["calibrate", "m.pt", "ARCH", "--out", "ADIR"], "is a folder; give a file name"),
    "eval": (["eval", "BOXES", "--coco-dir", "AFILE"], "is a file, not a folder"),
    "labels": (["labels", "OUT", "--format", "coco", "--to", "AFILE"], "is a file, not a folder"),
    "show": (["show", "BOXES", "a.png", "--out", "ADIR"], "is a folder; give a file name"),
    "report": (["report", "OUT", "--to", "AFILE"], "is a file, not a folder"),
    "export": (["export", "onnx", "m.pt", "ADIR"], "is a folder; give a file name"),
    "mine": (["mine", "ARCH", "--model", "m.pt", "--out", "AFILE"], "is a file, not a folder"),
    "demo": (["demo", "AFILE"], "is a file, not a folder"),
    "detector": (["detector", "train", "LABELS", "--to", "AFILE"], "is a file, not a folder"),
}
NO_OUTPUT = {"inspect", "bench"}  # print only


def _prog(argv: list[str]) -> str:
    return "miner " + " ".join(argv[:2] if argv[0] in ("bench", "export", "detector") else argv[:1])


def test_every_verb_is_in_the_tables():
    assert set(VALID) == set(VERBS)
    assert set(MISSING) | NO_INPUT == set(VERBS)
    assert set(UNUSABLE) | NO_UNUSABLE == set(VERBS)
    assert set(IN_THE_WAY) | NO_OUTPUT == set(VERBS)


def test_the_table_of_exit_codes():
    """`miner --help` shows the table; the errors carry the codes it gives."""
    from miner import errors

    codes = {int(c) for c in re.findall(r"^\s+(\d+)\s", EXIT_CODES, flags=re.M)}
    assert codes == {0, 1, 2, 74, 130}
    assert "143" in EXIT_CODES
    for cls, code in ((errors.UsageError, 2), (errors.ArchiveError, 2), (errors.ModelError, 2),
                      (errors.WriteError, 74), (errors.MinerError, 1), (errors.BackendUnavailable, 1)):
        assert cls.exit_code == code, cls
    help_text = run_miner(["--help"], cwd=".", timeout=60).stdout
    assert "exit codes:" in help_text and "143 stopped by SIGTERM" in help_text


@pytest.mark.parametrize("verb", list(VERBS))
def test_bad_option(verb, tmp_path, watched):
    argv = VALID[verb] + ["--no-such-option", "1"]
    before = watched()
    result = run_miner(argv, cwd=tmp_path, timeout=60)
    prog = _prog(argv)
    assert_refused(result, 2, contains=[f"{prog}: error: unrecognized arguments: --no-such-option 1",
                                        f"see `{prog} --help`"])
    assert_untouched(before, watched())


@pytest.mark.parametrize("verb", sorted(MISSING))
def test_missing_input(verb, tmp_path, watched):
    argv, name = MISSING[verb]
    before = watched()
    result = run_miner(argv, cwd=tmp_path, timeout=120)
    line = assert_refused(result, 2, contains=[f"miner {argv[0]}: error:"])
    assert name in line or verb == "eval" and "nothere" in line, line
    assert_untouched(before, watched())


@pytest.fixture
def unusable(tmp_path, archive):
    """Files that exist but cannot be used."""
    import torch

    class Payload:  # a pickle that would call eval(...) when loaded (eval: a builtin no library rebinds, unlike
        def __reduce__(self):  # print, which Ray's tqdm replaces once imported)
            return (eval, ("print('this must never run')",))

    torch.save({"format": 1, "payload": Payload()}, tmp_path / "PICKLED.pt")
    (tmp_path / "JUNK.csv").write_bytes(b"\x00\x01junk")
    (tmp_path / "JUNK.parquet").write_bytes(b"junk")
    (tmp_path / "JUNK.pt").write_bytes(b"\x80\x04junk")
    (tmp_path / "ADIR").mkdir()
    return archive


@pytest.mark.parametrize("verb", sorted(UNUSABLE))
def test_unusable_input(verb, tmp_path, watched, unusable):
    """A pickled model file was refused in six lines; every unusable input is one line, exit 2."""
    argv = [str(unusable) if word == "ARCHIVE" else word for word in UNUSABLE[verb]]
    before = watched()
    result = run_miner(argv, cwd=tmp_path, timeout=180)
    line = assert_refused(result, 2, contains=[f"miner {argv[0]}: error:"])
    assert "this must never run" not in result.stdout + result.stderr
    if "PICKLED.pt" in argv:
        assert "PICKLED.pt: not a readable checkpoint (it holds pickled Python objects (eval), which are never " \
               "loaded" in line, line
    assert_untouched(before, watched())


@pytest.mark.parametrize("verb", sorted(IN_THE_WAY))
def test_output_in_the_way(verb, tmp_path, watched):
    """Was: exit 74 and a misleading I/O message (mine), or a traceback. Refused while parsing, nothing touched."""
    (tmp_path / "AFILE").write_text("a file of the user's\n")
    (tmp_path / "ADIR").mkdir()
    argv, text = IN_THE_WAY[verb]
    before = watched()
    result = run_miner(argv, cwd=tmp_path, timeout=60)
    prog = _prog(argv)
    assert_refused(result, 2, contains=[f"{prog}: error: argument ", text, f"see `{prog} --help`"])
    assert_untouched(before, watched())
