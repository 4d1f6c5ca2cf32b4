"""Reports, notebooks and the findings check on a micro work directory built once by `memdyn run`."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dynamics.errors import MemdynError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("embedding_plots", "boundary_effects", "capacity")


@pytest.fixture(scope="session")
def reports(micro_workdir):
    return micro_workdir.parent / "reports" / "micro-stdlib"  # written by `memdyn run`


def test_report_files_for_family_and_every_size(reports, micro_workdir):
    from dynamics.family.spec import load_family

    assert (reports / "index.html").is_file() and (reports / "index.md").is_file()
    for size in load_family(micro_workdir / "family").size_names:
        assert (reports / size / "report.html").is_file()
        md = (reports / size / "report.md").read_text()
        assert "Most memorized samples" in md and "duplicates" in md
        for link in re.findall(r"\]\((figures/[^)]+)\)", md):  # Markdown figures are written beside it
            assert (reports / size / link).is_file()


def test_html_is_self_contained(reports):
    for page in reports.rglob("*.html"):
        text = page.read_text()
        srcs = re.findall(r'src="([^"]*)"', text)
        assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs), page
        hrefs = re.findall(r'href="([^"]*)"', text)
        assert all(h.endswith(".html") and "://" not in h for h in hrefs), hrefs  # links between reports only


def test_undefined_cells_read_as_a_dash(reports):
    from dynamics.report.document import cell_text

    cells = [float("nan"), np.float32("nan"), None, pd.NA, 0.123456, np.float32(0.5), 3, "nan-free text"]
    assert [cell_text(v) for v in cells] == ["-", "-", "-", "-", "0.1235", "0.5", "3", "nan-free text"]
    # the taxonomy's "kept" share is undefined where nothing was memorized before: never "nan" on a page
    for page in [*reports.rglob("*.md"), *reports.rglob("*.html")]:
        assert not re.search(r"\| nan \||<td>nan</td>", page.read_text()), page


def test_world_tables_list_the_sizes_smallest_first(reports, micro_workdir):
    from dynamics.workdir import Workdir

    sizes = Workdir(micro_workdir).sizes
    md = (reports / "index.md").read_text()
    for header, group in (("| model | step | measure |", 3), ("| model | kind | count |", 2)):
        rows = md.split(header, 1)[1].split("\n\n", 1)[0].splitlines()[2:]
        cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
        assert cells, header
        for key in {c[group - 1] for c in cells}:  # within a measure (or canary kind), the sizes in order
            models = list(dict.fromkeys(c[0] for c in cells if c[group - 1] == key))
            assert models == [s for s in sizes if s in models], (header, key, models)


def test_captions_state_numbers(reports):
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", (reports / "index.html").read_text())
    assert len(captions) >= 6
    assert all(re.search(r"\d", c) for c in captions), captions
    assert re.search(r"reproduces [\d.]+% of samples exactly at context \d+ / continuation \d+", captions[0])
    # the membership caption sets the final AUROC beside the same attack's on the untrained model
    assert re.search(r"The same attack on the untrained model \(step0\) reaches \d\.\d{3}", (reports / "index.html").read_text())
    assert re.search(r"By duplication, at step\d+: \S+'s \S+ attack reaches AUROC \d\.\d{3}", (reports / "index.md").read_text())
    # `memdyn run` ran the capacity stage: the overview states bits memorized per size
    assert re.search(r"\d+ bits", (reports / "index.html").read_text())


def test_capacity_section_when_the_stage_ran(micro_workdir, tmp_path):
    from dynamics.report.build import capacity_section
    from dynamics.workdir import Workdir

    run = Workdir.open(micro_workdir)
    run.capacity = pd.DataFrame({"model": run.sizes, "params": [run.params[s] for s in run.sizes],
                                 "bits_memorized": [100.0, 400.0, 2000.0]})  # stands in for the capacity stage
    section = capacity_section(run)
    assert "2000 bits" in section.blocks[0].caption and "bits memorized rises with size" in section.blocks[0].caption


def test_missing_stage_names_the_command(micro_workdir, tmp_path):
    from dynamics.report import write_reports

    partial = tmp_path / "runs"
    partial.mkdir()
    shutil.copy(micro_workdir / "run.json", partial / "run.json")
    shutil.copytree(micro_workdir / "family", partial / "family", symlinks=True)
    shutil.copytree(micro_workdir / "scores", partial / "scores")
    shutil.copytree(micro_workdir / "scores_checkpoints", partial / "scores_checkpoints")
    with pytest.raises(MemdynError, match=r"stage dynamics is missing .*`memdyn dynamics --family .*--out .*dynamics`"):
        write_reports(partial, tmp_path / "out")
    with pytest.raises(MemdynError, match="not a memdyn work directory"):
        write_reports(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(MemdynError, match="holds a run of preset 'micro', not 'tiny'"):
        write_reports(micro_workdir, tmp_path / "out", preset="tiny")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(reports, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "out.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
         (reports / "index.html").as_uri()],
        check=True, capture_output=True, timeout=60,
    )
    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05 and (pixels < 0.9).mean() > 0.02  # figures and text drawn, not a blank page


def test_validate_findings_prints_checks(micro_workdir):
    # (the same run twice stands for two draws of the world: each is checked, then one table of both)
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "validate_findings.py"), "--workdir", str(micro_workdir),
                             "--workdir", str(micro_workdir)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("against REFERENCE.md sections 1-6") == 2
    table = result.stdout.split("every check in 2 runs (run 1: ")[1]
    assert re.search(r"memorized share rises with model size\s+(PASS|FAIL|NOT SHOWN)\s+(PASS|FAIL|NOT SHOWN)\s+[0-2] of 2", table)
    assert "memorized share rises with model size" in result.stdout
    assert re.search(r"\[\s*(PASS|FAIL|NOT SHOWN)\] entropy jumps up at the boundary", result.stdout)
    assert re.search(r"\[\s*(PASS|FAIL|NOT SHOWN)\] bits memorized grow with model size", result.stdout)
    for check in ("the unigram count of the true token drops at the boundary", "memorization rises with duplication",
                  "canary exposure rises with repetition count", "canary memorization rises with model size",
                  "hidden states separate more with size"):
        assert re.search(rf"\[\s*(PASS|FAIL|NOT SHOWN)\] [^\n]*{check}", result.stdout), check
    assert re.search(r"95% CI [-+\d.e]+ to [-+\d.e]+", result.stdout)  # every directional check prints its interval


def test_world_sections_state_their_findings(reports):
    """The analyses stage's sections in the overview and a size report, captions in numbers."""
    md = (reports / "index.md").read_text()
    for title in ("Duplication: memorization against occurrence count", "Canaries: verbatim score and exposure",
                  "Recitation, reconstruction, recollection"):
        assert title in md
    assert re.search(r"canaries seen \d+ times are [\d.]+% memorized \(n=\d+\) with mean exposure [\d.]+ bits", md)
    assert re.search(r"Memorized share by category in the \w+ model: \w+ [\d.]+%", md)
    assert re.search(r"(log-odds per doubling|too few of one class for a dose-response fit)", md)
    size = sorted(p for p in reports.iterdir() if p.is_dir())[0]
    assert "Canaries: verbatim score and exposure" in (size / "report.md").read_text()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, micro_workdir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MEMDYN_WORKDIR", str(micro_workdir))
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if name == "capacity":
        assert any("bits" in o.get("text", "") for o in outputs)
    else:
        assert any("image/png" in o.get("data", {}) for o in outputs)


def test_boundary_caption_counts_the_published_direction():
    """Entropy's unmemorized jump is counted when positive, an n-gram count's when negative (a drop)."""
    from dynamics.report import findings as F

    rows = [{"model": m, "params": p, "metric": metric, "align": "boundary", "grouping": "class", "group": "unmemorized",
             "m": 4, "n": 50, "jump": jump, "ci_lo": jump - 1, "ci_hi": jump + 1}
            for metric, sign in (("entropy_nats", 1), ("orig_n1", -1)) for m, p, jump in (("a", 1, 0.3 * sign), ("b", 2, 0.2 * sign))]
    jumps = pd.DataFrame(rows)
    assert "positive in 2 of 2 sizes" in F.boundary(jumps, "entropy_nats")
    assert "negative (a drop) in 2 of 2 sizes" in F.boundary(jumps, "orig_n1")


def test_share_caption_names_every_size_and_counts_each_direction():
    from dynamics.report import findings as F

    shares = {"a": (0.10, 0.20, 0.15), "b": (0.30, 0.25, 0.20), "c": (0.40, 0.45, 0.50)}
    t = pd.DataFrame([{"model": m, "context_len": k, "continuation_len": 16, "memorized_share": v}
                      for m, values in shares.items() for k, v in zip((32, 48, 96), values)])
    caption = F.share_by_axis(t, "context_len", "continuation_len", 16)
    assert "from context 32 to 96: a 10% -> 15%; b 30% -> 20%; c 40% -> 50%." in caption, caption
    assert "rises at every step of context length for 1 of 3 sizes, falls at every step for 1 and moves both ways for 1" in caption


def test_context_diagnostics(micro_workdir):
    """A failed context trend is followed by the fixed-continuation trend (paired interval), the
    continuation's loss against context length and the duplicated-span trend."""
    import importlib.util

    from dynamics.workdir import Workdir

    spec = importlib.util.spec_from_file_location("validate_findings", ROOT / "benchmarks" / "validate_findings.py")
    vf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vf)
    run = Workdir.open(micro_workdir)
    model = run.sizes[-1]
    grid = sorted(int(k) for k in run.scores.context_len.unique())
    fixed = vf.fixed_continuation(run, model)
    assert sorted(fixed) == sorted({grid[0] // 4, grid[0] // 2, *grid})
    n = run.scores.seq_idx.nunique()
    # the longest context with the continuation after it is the grid's own cell
    assert all(len(m) == n and len(loss) == n and set(np.unique(m)) <= {0.0, 1.0} for m, loss in fixed.values())
    cell = run.scores[(run.scores.model == model) & (run.scores.context_len == grid[-1]) & (run.scores.continuation_len == run.cell[1])]
    # (up to a near-tie or two: the batches differ, so float rounding may)
    assert abs(fixed[grid[-1]][0].mean() - (cell.score >= 1).mean()) <= 2 / n
    failed = [(f"memorized share rises with context length ({model})", "", "FAIL", "")]
    out = vf.context_diagnostics(run, failed, 0)
    assert [o[0].split(" (")[0] for o in out] == [
        f"{vf.DIAGNOSTIC}memorized share rises with context length, continuation fixed at tokens {grid[-1]}..{grid[-1] + run.cell[1]}",
        f"{vf.DIAGNOSTIC}longer contexts lower the loss of the continuation at tokens {grid[-1]}..{grid[-1] + run.cell[1]}",
        f"{vf.DIAGNOSTIC}memorized share rises with context length on samples whose longest span is duplicated"]
    for name, nums, status, why in out[:2]:
        assert status in ("PASS", "FAIL") and why and re.search(r"95% CI [-+\d.e]+ to [-+\d.e]+", nums), (name, nums)
    assert re.search(rf"k={grid[0] // 4} [\d.]+, .*k={grid[-1]} [\d.]+ nats", out[1][1])
    assert vf.context_diagnostics(run, [(failed[0][0], "", "PASS", "")], 0) == []  # only failed trends are explained


def test_probe_accuracies_beside_the_separation_check(micro_workdir, monkeypatch):
    """A failed separation check names the linear probe's accuracy at each size's last layer: read
    from the dynamics stage's table, and left out unless every size has one."""
    from dynamics.analyses import checks
    from dynamics.workdir import Workdir

    run = Workdir.open(micro_workdir)
    rows = [{"model": m, "layer": layer, "contrast": contrast, "probe_balanced_accuracy": 0.5 + i / 10 + layer / 100}
            for i, m in enumerate(run.sizes) for layer in (1, 2) for contrast in ("memorized_vs_unmemorized", "levels")]
    table = pd.DataFrame(rows)
    monkeypatch.setattr(run, "dynamics_table", lambda name: table)
    assert checks._probe_accuracies(run) == {m: 0.52 + i / 10 for i, m in enumerate(run.sizes)}
    table.loc[0, "probe_balanced_accuracy"] = np.nan  # a size without both classes: layer 1 only, so still there
    assert len(checks._probe_accuracies(run)) == len(run.sizes)
    table.loc[(table.model == run.sizes[0]) & (table.layer == 2), "probe_balanced_accuracy"] = np.nan
    assert checks._probe_accuracies(run) == {}
    monkeypatch.setattr(run, "dynamics_table", lambda name: pd.DataFrame())
    assert checks._probe_accuracies(run) == {}


def test_mean_state_cosine_beside_the_separation_check(micro_workdir, monkeypatch):
    """The second measure beside a failed separation check: the cosine distance between the
    unmemorized (0 matches) and memorized (all match) mean states at each size's last layer,
    averaged over decoding steps; left out unless every size has both levels."""
    from dynamics.analyses import checks
    from dynamics.workdir import Workdir

    run = Workdir.open(micro_workdir)
    rows = [{"model": m, "layer": layer, "step": step, "level_a": a, "level_b": b, "cosine": i + layer + step / 10 + b / 100}
            for i, m in enumerate(run.sizes) for layer in (1, 2) for step in (0, 1) for a in (0, 1) for b in (0, 3, 4)]
    table = pd.DataFrame(rows)
    monkeypatch.setattr(run, "dynamics_table", lambda name: table)
    assert checks._mean_state_cosine(run, 4) == pytest.approx({m: i + 2 + 0.05 + 0.04 for i, m in enumerate(run.sizes)})
    assert checks._mean_state_cosine(run, 5) == {}  # no memorized level
    monkeypatch.setattr(run, "dynamics_table", lambda name: table[(table.model != run.sizes[0]) | (table.level_b != 4)])
    assert checks._mean_state_cosine(run, 4) == {}  # one size has no memorized sequence


def test_duplicated_span_diagnostic(micro_workdir, monkeypatch):
    import importlib.util

    from dynamics.workdir import Workdir

    spec = importlib.util.spec_from_file_location("validate_findings", ROOT / "benchmarks" / "validate_findings.py")
    vf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vf)
    run = Workdir.open(micro_workdir)
    name, nums, status, why = vf.duplicated_span_diagnostic(run, run.sizes[-1], 0)
    assert name.startswith(vf.DIAGNOSTIC) and status in ("PASS", "FAIL") and why
    contexts = sorted(run.scores.context_len.unique())
    assert "memorized among the " in nums and f"{contexts[-1] + run.cell[1]}-token span" in nums
    assert re.search(r"95% CI [-+\d.e]+ to [-+\d.e]+", nums)
    # a run whose scores carry no duplication counts: the diagnostic is NOT SHOWN, with the reason
    import dynamics.analyses.duplication as duplication

    def missing(scores):
        raise MemdynError(f"{scores} has no _duplication.parquet")

    monkeypatch.setattr(duplication, "read_duplication", missing)
    assert vf.duplicated_span_diagnostic(run, run.sizes[-1], 0)[2:] == ("NOT SHOWN", f"{run.scores_dir} has no _duplication.parquet")
    # the totals count checks; diagnostics apart
    checks = [("a", "", "PASS", ""), ("b", "", "FAIL", ""), (vf.DIAGNOSTIC + "c", "", "FAIL", "")]
    assert vf.totals(checks) == "1 PASS, 1 FAIL, 0 NOT SHOWN (diagnostics: 0 of 1 PASS)"


def test_headline_caption_names_a_precision_other_than_float32_and_a_common_learning_rate(micro_workdir, monkeypatch):
    """`memdyn run --dtype bf16`: the headline table says the models ran in bf16 (float32 runs say
    nothing); `memdyn run --lr`: that every size trained at that rate."""
    import json

    from dynamics.family.spec import _from_json
    from dynamics.report import build
    from dynamics.report.document import Table
    from dynamics.workdir import Workdir

    def headline() -> str:
        doc = build.family_report(Workdir.open(micro_workdir))
        return next(b.caption for s in doc.sections for b in s.blocks
                    if isinstance(b, Table) and b.caption.startswith("Headline numbers"))

    assert "ran in" not in headline()
    real = build.read_json
    monkeypatch.setattr(build, "read_json", lambda path: {**real(path), "dtype": "bf16"}
                        if Path(path).name == "_settings.json" else real(path))
    assert headline().endswith("; the models ran in bf16.")
    family = json.loads((micro_workdir / "family" / "family.json").read_text())
    monkeypatch.setattr(build, "read_json", real)
    monkeypatch.setattr(Workdir, "family", property(lambda w: _from_json({**family, "plan": {**family["plan"], "lr": 3e-3}},
                                                                        micro_workdir / "family")))
    assert headline().endswith("; every size trained at peak learning rate 0.003, not the preset's per-size rates.")


def test_run_floor_counts_the_model_arithmetic_of_every_stage(micro_workdir, tmp_path):
    import importlib.util

    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import GPTNeoXForCausalLM

    from dynamics.family.spec import load_family

    spec = importlib.util.spec_from_file_location("run_floor", ROOT / "benchmarks" / "run_floor.py")
    rf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rf)
    # against torch's own count of the linear layers (it leaves out the CPU's attention kernel), plus
    # causal attention: the query at position t meets t + 1 keys, once for scores, once for values
    size = load_family(micro_workdir / "family").sizes[-1]
    folder = micro_workdir / "family" / size.path / size.final
    model, lm = GPTNeoXForCausalLM.from_pretrained(folder).eval(), rf.LM(folder / "config.json")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=torch.zeros(3, 20, dtype=torch.long))
    attention = 3 * lm.layers * lm.d * sum(2 * (t + 1) for t in range(20))
    assert lm.prompt(3, 20) == counter.get_total_flops() / 2 + attention
    from dynamics.pipeline import STAGES

    # the script names the stages `memdyn run` numbers, in its order
    assert [title.split(":")[0] for title, _ in STAGES] == [name.split()[-1] for name in rf.STAGES]
    macs = rf.floor(micro_workdir)
    assert list(macs) == list(rf.STAGES) and macs["reports"] == 0
    assert all(macs[s] > 0 for s in rf.STAGES[:-1])
    assert macs["family"] > macs["dynamics"] and macs["scores"] > macs["dynamics"]
    # the stage times of what `memdyn run` printed: each stage's own line is the last of its lines
    log = tmp_path / "run.log"
    log.write_text("[1/9] family: ...\ntrain\r 40%|###\n      micro trained (12 s)\n[5/9] predictor: ...\n"
                   "      1.6m hidden: trained with 2-fold cross-validation (3 s)\n      done (7 s)\n")
    assert rf.stage_times(log) == {"family": 12.0, "predictor": 7.0}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_floor.py"), "--workdir", str(micro_workdir),
                             "--log", str(log), "--rate", "50"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^family\s+[\d.]+\s+[\d.]+\s+12\s+\d+%$", result.stdout, re.M) and "budget" in result.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_floor.py"), "--workdir", str(tmp_path), "--rate", "50"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "not the work directory" in bad.stderr
    (tmp_path / "run.json").write_text("{}")  # a run stopped before its family was trained
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_floor.py"), "--workdir", str(tmp_path), "--rate", "50"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "unfinished run" in bad.stderr
    # a run stopped before its capacity stage: a family without its reference model
    stopped = tmp_path / "stopped"
    shutil.copytree(micro_workdir / "family", stopped / "family")
    (stopped / "run.json").write_text("{}")
    manifest = json.loads((stopped / "family" / "family.json").read_text())
    manifest.pop("references")
    (stopped / "family" / "family.json").write_text(json.dumps(manifest))
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_floor.py"), "--workdir", str(stopped), "--rate", "50"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "capacity stage has not run" in bad.stderr
