"""The repository documents itself: no file points at documents outside it, and every citation of
docs/ALGORITHM.md (by section number) or docs/ARCHITECTURE.md (by quoted section title) lands on a
heading that exists.

Files are the repository's: tracked ones plus untracked, non-ignored ones (`git ls-files --cached
--others --exclude-standard`), binary files skipped.
"""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHM = "docs/ALGORITHM.md"
ARCHITECTURE = "docs/ARCHITECTURE.md"

# Built by concatenation so that this file does not contain them itself.
OUTSIDE_NEEDLES = ("SDPO" + "_SPEC", "DESIGN" + ".md", ".." + "/shared")

# `docs/ALGORITHM.md §2.4`, also chains such as `§2 and §5`, `§2 / §5`, `§7-8`.
_NUM = r"\d+(?:\.\d+)*"
_ALGORITHM_CITE = re.compile(
    re.escape(ALGORITHM) + r"[ ,]{0,2}(§" + _NUM + r"(?:\s*(?:,|and|or|/)\s*§" + _NUM + r"|[-–]" + _NUM + r")*)")
# `docs/ARCHITECTURE.md "RolloutBatch"` or `docs/ARCHITECTURE.md, "Generation"`.
_ARCHITECTURE_CITE = re.compile(re.escape(ARCHITECTURE) + r',?\s*"([^"\n]+)"')
# Headings of docs/ALGORITHM.md: `## §3. Title`, `### §3.4 Title`.
_SECTION_HEADING = re.compile(r"^#{1,6}\s+§(" + _NUM + r")\b", re.MULTILINE)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def _repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, check=True, capture_output=True).stdout
    return sorted({p for p in out.decode("utf-8", "surrogateescape").split("\0") if p})


def _text_files() -> dict[str, str]:
    """path -> text for every repository file that exists, is a regular file and is not binary."""
    texts = {}
    for rel in _repo_files():
        path = os.path.join(ROOT, rel)
        if os.path.islink(path) or not os.path.isfile(path):
            continue  # deleted in the work tree, a submodule or a link
        with open(path, "rb") as f:
            data = f.read()
        if b"\0" in data[:8192]:
            continue
        try:
            texts[rel] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return _text_files()


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _read_doc(texts: dict[str, str], rel: str) -> str:
    assert rel in texts, f"{rel} is missing (or not a text file in the repository)"
    return texts[rel]


def test_no_file_points_outside_the_repository(texts):
    """No repository file names the team's external spec or design documents, or a path into the
    shared folder beside the checkout: the repository must stand on its own documents."""
    assert len(texts) > 50, f"only {len(texts)} text files found under {ROOT}; is it a git checkout?"
    hits = []
    for rel, text in texts.items():
        for number, line in enumerate(text.splitlines(), 1):
            for needle in OUTSIDE_NEEDLES:
                if needle in line:
                    hits.append(f"{rel}:{number}: {needle!r} in {line.strip()[:120]!r}")
    assert not hits, "references to documents outside the repository:\n" + "\n".join(hits)


def test_doc_citations_name_existing_sections(texts):
    """Every `docs/ALGORITHM.md §N[.M]` citation (each number of a chain like `§2 and §5` or `§7-8`)
    names a `§N[.M]` heading of docs/ALGORITHM.md, and every docs/ARCHITECTURE.md citation of a quoted
    name names a heading of docs/ARCHITECTURE.md that contains that name."""
    sections = set(_SECTION_HEADING.findall(_read_doc(texts, ALGORITHM)))
    headings = _HEADING.findall(_read_doc(texts, ARCHITECTURE))
    assert {"1", "2", "3", "3.4", "8"} <= sections, f"{ALGORITHM} headings parsed: {sorted(sections)}"

    bad, cited = [], 0
    for rel, text in texts.items():
        for match in _ALGORITHM_CITE.finditer(text):
            for number in re.findall(_NUM, match.group(1)):
                cited += 1
                if number not in sections:
                    bad.append(f"{rel}:{_line_of(text, match.start())}: {match.group(0)!r} cites §{number}, "
                               f"which is not a heading of {ALGORITHM}")
        for match in _ARCHITECTURE_CITE.finditer(text):
            cited += 1
            name = match.group(1)
            if not any(name in heading for heading in headings):
                bad.append(f"{rel}:{_line_of(text, match.start())}: {match.group(0)!r} names no heading of "
                           f"{ARCHITECTURE}")
    assert cited > 0, "found no citations at all; has the citation format changed?"
    assert not bad, "citations of missing sections:\n" + "\n".join(bad)


def test_algorithm_section_headings_are_unique(texts):
    """Each `§N[.M]` heading of docs/ALGORITHM.md appears once, so a citation names one section."""
    numbers = _SECTION_HEADING.findall(_read_doc(texts, ALGORITHM))
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not repeated, f"{ALGORITHM}: sections with more than one heading: {repeated}"
