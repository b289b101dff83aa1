"""The `unimodal` command line, run in-process through `main([...])`, and the README example."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unimodal.cli import main
from unimodal.config import PRESETS, ModelConfig
from unimodal.model import UnifiedModel

ROOT = Path(__file__).resolve().parents[1]

# ACDiT's SCAM for N = 4 (ACDIT_REFERENCE.md §1.3), rows/columns c0..c3, n0..n3.
SCAM_N4 = """
10000000
11000000
11100000
11110000
00001000
10000100
11000010
11100001
"""


def run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def picture(out: str) -> tuple[list[str], list[list[bool]]]:
    """Parse `show mask` output into (labels, allowed[row][col])."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(" ") and line.split())
    labels = lines[start].split()
    grid = []
    for line in lines[start + 1 : start + 1 + len(labels)]:
        name, *cells = line.split()
        assert name == labels[len(grid)] and len(cells) == len(labels)
        assert set(cells) <= {"#", "."}, f"a unit pair is partly allowed: {line}"
        grid.append([c == "#" for c in cells])
    return labels, grid


def table(out: str, first: str) -> tuple[list[str], list[list[str]]]:
    """The rows of the aligned table whose header starts with `first`, split on 2+ spaces."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return re.split(r"\s{2,}", lines[start].strip()), rows


@pytest.mark.parametrize(
    "argv", [[], ["presets"], ["show"], ["show", "layout"], ["show", "mask"], ["show", "model"]], ids=" ".join
)
def test_every_command_has_help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: unimodal" in capsys.readouterr().out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "presets" in out and "show" in out
    with pytest.raises(SystemExit):
        main(["show", "--help"])
    out = capsys.readouterr().out
    assert all(w in out for w in ("layout", "mask", "model"))


def test_presets_table_counts_match_the_paper(capsys):
    header, rows = table(run(capsys, "presets"), "preset")
    by_name = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert set(by_name) == set(PRESETS)
    paper = {"acdit-b": 132, "acdit-l": 460, "acdit-xl": 677, "acdit-h": 954}
    for name, p in paper.items():
        row = by_name[name]
        ours = float(row["params"].rstrip("M"))
        assert abs(ours - p) / p < 0.02, (name, ours, p)
        assert row["paper"] == f"{p}M"
        assert row["diff"] == f"{(ours - p) / p:+.1%}"
    xl = by_name["acdit-xl"]
    assert (xl["depth"], xl["dim"], xl["heads"], xl["patch"]) == ("28", "1152", "18x64", "1")
    assert xl["block"] == "tiles:16 (256 tok, N=4)"
    assert by_name["micro"]["paper"] == "-"


def test_presets_counts_equal_a_real_model(capsys):
    _, rows = table(run(capsys, "presets"), "preset")
    micro = next(r for r in rows if r[0] == "micro")
    n = UnifiedModel(ModelConfig.from_preset("micro")).num_parameters()
    assert micro[9] == f"{n / 1e6:.2f}M"


def test_show_layout_lists_every_token(capsys):
    out = run(capsys, "show", "layout", "--preset", "micro", "--text", "2")
    header, rows = table(out, "index")
    assert header == ["index", "doc", "unit", "noisy", "modality", "pos (t,h,w)", "block", "stream", "target"]
    # micro: 8x8 image, patch 2 -> 4x4 grid, 2x2 tiles -> 4 blocks of 4 tokens, clean + noisy copies
    assert len(rows) == 2 + 4 * 2 * 4 + 2
    assert [r[7] for r in rows[:2]] == ["T0", "T1"] and [r[7] for r in rows[-2:]] == ["T2", "T3"]
    streams = [r[7] for r in rows[2:-2]]
    assert streams == [s for b in range(4) for s in [f"c{b}"] * 4 + [f"n{b}"] * 4]
    for b in range(4):  # the noisy copy shares its clean copy's unit, block and positions
        clean, noisy = rows[2 + 8 * b : 6 + 8 * b], rows[6 + 8 * b : 10 + 8 * b]
        assert [r[2] for r in clean] == [r[2] for r in noisy] == [str(2 + b)] * 4
        assert [r[5] for r in clean] == [r[5] for r in noisy]
        assert {r[3] for r in clean} == {"0"} and {r[3] for r in noisy} == {"1"}
    # M-RoPE: text on the diagonal; the image offset by the running index; text after continues past it
    assert rows[1][5] == "(1,1,1)"
    assert [r[5] for r in rows[2:6]] == ["(2,2,2)", "(2,2,3)", "(2,3,2)", "(2,3,3)"]
    assert rows[-2][5] == "(6,6,6)"
    assert rows[0][8] == "2" and rows[1][8] == "-"  # T1 is followed by the image: no text target


def test_show_layout_clean_only_video(capsys):
    out = run(capsys, "show", "layout", "--frames", "2", "--blocks", "frames:1", "--text", "0", "--clean-only")
    _, rows = table(out, "index")
    assert len(rows) == 2 * 16 and {r[3] for r in rows} == {"0"}
    assert {r[5][1] for r in rows[:16]} == {"0"} and {r[5][1] for r in rows[16:]} == {"1"}


def test_show_mask_image_only_is_scam(capsys):
    out = run(capsys, "show", "mask", "--preset", "micro", "--text", "0")
    labels, grid = picture(out)
    assert labels == ["c0", "n0", "c1", "n1", "c2", "n2", "c3", "n3"]
    seen = {q: {k for k, ok in zip(labels, row, strict=True) if ok} for q, row in zip(labels, grid, strict=True)}
    assert seen["n1"] == {"c0", "n1"}  # the noisy block 1 sees clean block 0 and itself only
    assert seen["n0"] == {"n0"}
    assert seen["c2"] == {"c0", "c1", "c2"}
    assert "density: 320/1024 token pairs allowed = 31.25%" in out
    assert "(N+1)/(4N) = 31.25%" in out


def test_show_mask_grouped_equals_the_paper_picture(capsys):
    labels, grid = picture(run(capsys, "show", "mask", "--text", "0", "--grouped", "--label", "3"))
    assert labels == ["c0", "c1", "c2", "c3", "n0", "n1", "n2", "n3"]
    assert ["".join("1" if c else "0" for c in row) for row in grid] == SCAM_N4.split()


def test_show_mask_text_image_text(capsys):
    out = run(capsys, "show", "mask", "--text", "2")
    labels, grid = picture(out)
    assert labels == ["T0", "T1", "c0", "n0", "c1", "n1", "c2", "n2", "c3", "n3", "T2", "T3"]
    seen = {q: {k for k, ok in zip(labels, row, strict=True) if ok} for q, row in zip(labels, grid, strict=True)}
    assert seen["T0"] == {"T0"} and seen["T1"] == {"T0", "T1"}
    assert seen["n2"] == {"T0", "T1", "c0", "c1", "n2"}
    # text after an image sees the image's clean copy only
    assert seen["T2"] == {"T0", "T1", "c0", "c1", "c2", "c3", "T2"}
    assert not any(seen[q] & {"n0", "n1", "n2", "n3"} for q in labels if not q.startswith("n"))
    m = re.search(r"density: (\d+)/(\d+) token pairs allowed", out)
    assert m and int(m.group(2)) == 36**2


def test_show_mask_token_wise_and_dit_extremes(capsys):
    labels, _ = picture(run(capsys, "show", "mask", "--text", "0", "--blocks", "tiles:1"))
    assert len(labels) == 2 * 16  # a block of one patch: token-wise autoregression
    labels, grid = picture(run(capsys, "show", "mask", "--text", "0", "--blocks", "tiles:4"))
    assert labels == ["c0", "n0"] and grid == [[True, False], [False, True]]  # one block: DiT


def test_show_model_counts_add_up(capsys):
    out = run(capsys, "show", "model", "--preset", "micro")
    model = UnifiedModel(ModelConfig.from_preset("micro"))
    n = model.num_parameters()
    assert f"{n:,} parameters" in out.splitlines()[0]
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("component")) + 1
    body = lines[start : lines.index("", start)]
    top = [re.split(r"\s{2,}", line) for line in body if not line.startswith(" ")]
    groups = {r[0]: int(r[1].replace(",", "")) for r in top}
    assert set(groups) == {"embedders", "trunk: 2 x Block", "heads", "total"}
    assert groups["embedders"] + groups["trunk: 2 x Block"] + groups["heads"] == groups["total"] == n
    assert groups["trunk: 2 x Block"] == sum(p.numel() for p in model.blocks.parameters())
    assert "tied to tok_embedder" in out and "adaLN_modulation" in out


def test_show_model_large_preset_is_cheap(capsys):
    out = run(capsys, "show", "model", "--preset", "acdit-h")
    assert "trunk: 32 x Block" in out and "Embedding(1001, 1280)" in out


def test_bad_arguments_are_usage_errors(capsys):
    for argv in (["show", "mask", "--blocks", "tiles:3"], ["show", "layout", "--blocks", "cubes:2"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "do not divide" in err and "KIND:SIZE" in err
    with pytest.raises(SystemExit):
        main([])


def test_console_script(tmp_path):
    exe = Path(sys.executable).with_name("unimodal")
    script = str(exe) if exe.exists() else shutil.which("unimodal")
    if script is None:
        pytest.skip("the package is not installed (pip install -e .)")
    res = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("unimodal ")


def test_readme_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python example"
    torch.manual_seed(0)
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    assert "loss" in capsys.readouterr().out
