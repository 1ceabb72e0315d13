"""Every number README states comes from a file committed under experiments/results.

Two rules, read from README.md itself:
  1. every `experiments/results/...` path README names exists;
  2. a block between `<!-- results: PATH [PATH ...] -->` and `<!-- /results -->` quotes only numbers found in
     those files: each decimal, percentage, exponent or thousands-separated number of its prose, and every
     number of its tables' cells but the first column, must be a rounding, at the printed precision, of a
     number in one of the files (a percentage may be a fraction there).  A number typed by hand, or a result
     file that changed under the README, fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
NAMED = re.compile(r"experiments/results/[\w./*<>-]*[\w*>]")
BLOCK = re.compile(r"<!-- results: (?P<files>[^>]*?) -->(?P<body>.*?)<!-- /results -->", re.S)
# a number README quotes as a result: has a decimal point, an exponent, a % sign or a thousands separator
QUOTED = re.compile(r"(?<![\w.,/-])[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[+-]?\d+)?%?(?![\w,]*\d)")
ANY_NUMBER = re.compile(r"[+-]?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][+-]?\d+)?")


def _is_result(token: str) -> bool:
    return any(c in token for c in ".%e") or "," in token


def _value_and_half_ulp(token: str) -> tuple[float, float]:
    t = token.rstrip("%").replace(",", "")
    mantissa, _, exponent = t.partition("e")
    decimals = len(mantissa.partition(".")[2])
    scale = 10.0 ** int(exponent) if exponent else 1.0
    return float(t), 0.5 * 10.0 ** -decimals * scale * (1 + 1e-9)


def _numbers_in(paths: list[Path]) -> list[float]:
    out = []
    for p in paths:
        files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
        for f in files:
            if f.suffix in (".png", ".npz", ".npy", ".pkl"):
                continue
            out += [float(m.replace(",", "")) for m in ANY_NUMBER.findall(f.read_text(errors="replace"))]
    return out


def _quoted(body: str) -> list[str]:
    """The result numbers of a block: in prose, those `_is_result` calls results; in a table's body rows,
    every number outside the first (label) column, integers too (img/s, milliseconds, seconds)."""
    lines, out = body.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("|"):
            header = i + 1 < len(lines) and lines[i + 1].startswith("|---")
            if header or line.startswith("|---"):
                continue
            out += QUOTED.findall("|".join(line.split("|")[2:]))
        else:
            out += [t for t in QUOTED.findall(line) if _is_result(t)]
    return out


def _supported(token: str, found: list[float]) -> bool:
    """`token` is a rounding of a number in `found` at its printed precision (a percentage: of a fraction too)."""
    v, half = _value_and_half_ulp(token)
    candidates = [(abs(v), half)] + ([(abs(v) / 100, half / 100)] if token.endswith("%") else [])
    return any(abs(abs(f) - c) <= h for c, h in candidates for f in found)


def test_every_named_result_file_exists():
    named = sorted(set(NAMED.findall(README)))
    assert named, "README names no experiments/results file"
    missing = []
    for name in named:
        if any(c in name for c in "*<>"):       # a pattern (bench_cpu_<date>.md): some file must match it
            pattern = re.sub(r"<[^>]*>", "*", name)
            if not list(ROOT.glob(pattern)):
                missing.append(name)
        elif not (ROOT / name).exists():
            missing.append(name)
    assert not missing, f"README names result files that are not committed: {missing}"


BLOCKS = list(BLOCK.finditer(README))


def test_readme_marks_its_result_blocks():
    assert BLOCKS, "README has no <!-- results: ... --> block"


@pytest.mark.parametrize("block", BLOCKS, ids=[b["files"] for b in BLOCKS])
def test_block_quotes_only_numbers_from_its_files(block):
    paths = [ROOT / f for f in block["files"].split()]
    assert all(p.exists() for p in paths), f"missing: {[str(p) for p in paths if not p.exists()]}"
    found = _numbers_in(paths)
    body = re.sub(r"`[^`]*`", " ", block["body"])          # commands and names in code spans are not results
    body = re.sub(r"\([^()]*\bpaper\b[^()]*\)", " ", body)  # a parenthesis quoting the paper is not ours
    unsupported = [t for t in _quoted(body) if not _supported(t, found)]
    assert not unsupported, (f"README block sourced from {block['files']} quotes numbers none of those files "
                             f"holds (at the printed precision): {unsupported}")


def test_the_checker_fails_on_a_number_typed_by_hand(tmp_path):
    """The rule above is not vacuous: a block whose number is not in its file is caught."""
    f = tmp_path / "r.json"
    f.write_text('{"top1": 0.78512, "wall_s": 1675.2, "imgs": 12345}')
    found = _numbers_in([f])

    def supported(token):
        return _supported(token, found)

    assert supported("78.5%") and supported("1675") is True and supported("12,345") and supported("0.785")
    assert not supported("78.7%") and not supported("12,346") and not supported("1675.3")
