"""``glora-report``: the papers' tables from finished runs, built on runs in miniature (the records the commands
write: config.yaml, search_log.jsonl, glora_export.json) and on the real default pipeline."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml
from helpers import cli

from glora.app.report import PAPER_VTAB, VTAB_GROUPS, build_report, find_results

VIT = "vit_base_patch16_224.orig_in21k"


def _run(root: Path, *, dataset: str, task: str | None, seed: int = 0, shot: int | None = None, test=None,
         lora=(8, 4), eval_sets=None, model=VIT, metric="accuracy", layout="full", metrics=None) -> Path:  # fmt: skip
    """A finished (or, with ``test=None``, unfinished) run as the commands lay it out."""
    sup, search, export = root / "supernet", root / "search", root / "export"
    sup.mkdir(parents=True)
    config = {"model": model, "dataset": dataset, "task": task, "shot": shot, "seed": seed, "lora-ranks": list(lora),
              "gift-ranks": []}  # fmt: skip
    (sup / "config.yaml").write_text(yaml.safe_dump(config))
    if test is not None:
        search.mkdir()
        (search / "config.yaml").write_text(yaml.safe_dump({"supernet": str(sup / "last.pt")}))
        key = "acc" if metric == "accuracy" else metric
        final = {"final": True, "params": 860_000 + seed, "metric": metric, f"test_{key}": test}
        if metrics:  # every metric of the pick, as the search writes them
            final |= {"val_metrics": metrics["val"], "test_metrics": metrics["test"]}
        if eval_sets:
            final["eval_sets"] = eval_sets
        (search / "search_log.jsonl").write_text(json.dumps({"generation": 1}) + "\n" + json.dumps(final) + "\n")
    if eval_sets is not None:
        export.mkdir()
        stats = {"supernet": str(sup / "last.pt"), "glora_params": 860_000 + seed, "eval_sets": eval_sets}
        (export / "glora_export.json").write_text(json.dumps(stats))
    return {"full": root, "search": search, "export": export}[layout]


def _markdown(tmp_path: Path, runs: list[Path]) -> str:
    return "\n\n".join(build_report(find_results(runs)).markdown)


def _row(markdown: str, first: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {first}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_vtab_cells_are_means_over_seeds_and_missing_tasks_stay_missing(tmp_path):
    runs = [
        _run(tmp_path / "c0", dataset="vtab", task="cifar", seed=0, test=0.70),
        _run(tmp_path / "c1", dataset="vtab", task="cifar", seed=1, test=0.72, layout="search"),  # a search folder
        _run(tmp_path / "d0", dataset="vtab", task="dtd", seed=0, test=0.65),
        _run(tmp_path / "k0", dataset="vtab", task="kitti", seed=0, test=None),  # unfinished: missing, not zero
    ]
    md = _markdown(tmp_path, runs)
    header = _row(md, "method")
    ours = dict(zip(header, _row(md, f"{VIT} lora 8,4")))
    assert ours["cifar"] == f"71.0 ± {statistics.stdev([70, 72]):.1f} (n=2)" and ours["dtd"] == "65.0"
    assert ours["kitti"] == "—" and ours["svhn"] == "—"
    assert ours["Natural"] == "— (2/7)" and ours["Structured"] == "— (0/8)" and ours["Average"] == "—"
    paper = dict(zip(header, _row(md, "paper: glora (0.86M) (Table 1)")))
    assert paper["cifar"] == "76.4" and paper["Average"] == "78.0"
    diff = dict(zip(header, _row(md, "difference (ours − paper)")))
    assert diff["cifar"] == "-5.4" and diff["kitti"] == "—"
    assert "Not finished (shown as missing): " + str(tmp_path / "k0") in md
    # a finished search without a test split is finished, with no test figure (not "not finished")
    untested = _run(tmp_path / "u0", dataset="vtab", task="dtd", seed=1, test=0.5)
    log = untested / "search" / "search_log.jsonl"
    final = json.loads(log.read_text().splitlines()[-1]) | {"test_acc": None, "test_metrics": None}
    log.write_text(json.dumps(final) + "\n")
    md = _markdown(tmp_path, [*runs, untested])
    assert "5 runs read, 4 with a finished search" in md
    assert "Finished without a test split (no test figure): " + str(untested) in md


def test_group_means_and_the_average_follow_the_paper(tmp_path):
    """All 19 tasks at the paper's own numbers for the {4, 2} space: the group means and the average reproduce the
    paper's (the average is the mean of the three group means), and every difference is zero."""
    paper = PAPER_VTAB["glora (0.44M)"]
    runs = [_run(tmp_path / t, dataset="vtab", task=t, test=v / 100, lora=(4, 2)) for t, v in paper.items()]
    report = build_report(find_results(runs))
    md = "\n\n".join(report.markdown)
    header = _row(md, "method")
    ours = dict(zip(header, _row(md, f"{VIT} lora 4,2")))
    groups = {g: statistics.fmean(paper[t] for t in ts) for g, ts in VTAB_GROUPS.items()}
    for g, mean in groups.items():
        assert ours[g] == f"{mean:.1f}"
    assert ours["Average"] == f"{statistics.fmean(groups.values()):.1f}" == "77.6"  # the paper's Table 1 average
    diff = _row(md, "difference (ours − paper)")
    assert set(diff[2:]) == {"+0.0"}
    rows = list(csv.reader(io.StringIO(report.csv["vtab.csv"])))
    assert rows[0][:3] == ["method", "# params (M)", "cifar"] and float(rows[1][2]) == pytest.approx(76.5)


def test_fewshot_per_shot_with_a_plot_and_dg_with_masked_sets_marked(tmp_path):
    runs = [
        _run(tmp_path / f"p{s}{seed}", dataset="fewshot", task="oxford_pets", shot=s, seed=seed, test=0.5 + s / 100)
        for s in (1, 16)
        for seed in (0, 1)
    ]
    sets = {"sketch": {"acc": 0.3, "images": 10, "classes": 1000, "masked": False},
            "a": {"acc": 0.2, "images": 10, "classes": 200, "masked": True}}  # fmt: skip
    runs.append(_run(tmp_path / "in", dataset="fewshot", task="imagenet", shot=16, test=0.78, eval_sets=sets))
    report = build_report(find_results(runs))
    md = "\n\n".join(report.markdown)
    pets = dict(zip(_row(md, "dataset"), _row(md, "oxford_pets")))
    assert pets["1-shot"] == "51.0 ± 0.0 (n=2)" and pets["16-shot"] == "66.0 ± 0.0 (n=2)" and pets["4-shot"] == "—"
    assert report.png["fewshot.png"][:8] == b"\x89PNG\r\n\x1a\n"
    dg = dict(zip(_row(md, "source"), _row(md, "fewshot/imagenet")))
    assert dg["source test"] == "78.0" and dg["sketch"] == "30.0" and dg["a*"] == "20.0"
    paper = dict(zip(_row(md, "source"), _row(md, "paper: GLoRA (0.29M) (Table 2)")))
    assert paper["sketch"] == "30.6" and paper["a*"] == "13.3" and paper["source test"] == "78.3"
    assert "* masked: the argmax was restricted" in md


def test_the_csvs_keep_the_spread_runs_csv_has_every_run_and_median_is_offered(tmp_path):
    """Each CSV cell comes with its std and number of seeds; runs.csv holds one row per run with every val / test
    metric; ``--aggregate median`` shows the median over seeds (the GIFT paper's GLUE protocol)."""
    tests = [0.70, 0.72, 0.80]
    runs = [
        _run(tmp_path / f"c{seed}", dataset="vtab", task="cifar", seed=seed, test=t,
             metrics={"val": {"accuracy": t - 0.01, "loss": 1.0 - t}, "test": {"accuracy": t}})
        for seed, t in enumerate(tests)
    ] + [_run(tmp_path / "g", dataset="text", task=None, test=0.5)]  # fmt: skip
    mean = build_report(find_results(runs))
    vtab = next(iter(csv.DictReader(io.StringIO(mean.csv["vtab.csv"]))))
    assert float(vtab["cifar"]) == pytest.approx(74.0) and vtab["cifar n"] == "3"
    assert float(vtab["cifar std"]) == pytest.approx(statistics.stdev([70, 72, 80]), abs=1e-4)
    assert vtab["dtd"] == vtab["dtd std"] == vtab["dtd n"] == ""  # not run: empty, never zero
    other = next(iter(csv.DictReader(io.StringIO(mean.csv["other.csv"]))))
    assert other["test"] == "50.0000" and other["test std"] == "" and other["test n"] == "1"  # one seed: no spread
    rows = list(csv.DictReader(io.StringIO(mean.csv["runs.csv"])))
    cifar = [r for r in rows if r["task"] == "cifar"]
    assert [int(r["seed"]) for r in cifar] == [0, 1, 2] and len(rows) == 4
    assert [float(r["test accuracy"]) for r in cifar] == tests
    assert [float(r["val loss"]) for r in cifar] == pytest.approx([1.0 - t for t in tests])
    assert next(r for r in rows if r["dataset"] == "text")["test accuracy"] == "0.5"  # an older record: test only
    median = build_report(find_results(runs), "median")
    assert float(next(iter(csv.DictReader(io.StringIO(median.csv["vtab.csv"]))))["cifar"]) == pytest.approx(72.0)
    md = "\n\n".join(median.markdown)
    assert "Median over seeds" in md and dict(zip(_row(md, "method"), _row(md, f"{VIT} lora 8,4")))["cifar"].startswith(
        "72.0 ± "
    )
    with pytest.raises(ValueError, match="aggregate must be one of mean, median"):
        build_report(find_results(runs), "mode")


def test_median_summarises_the_parameters_too(tmp_path):
    runs = [_run(tmp_path / f"c{seed}", dataset="vtab", task="cifar", seed=seed, test=0.7) for seed in (0, 1, 8)]
    params = [860_000, 860_001, 860_008]
    for how, expected in (("mean", statistics.fmean(params)), ("median", 860_001)):
        row = next(iter(csv.DictReader(io.StringIO(build_report(find_results(runs), how).csv["vtab.csv"]))))
        assert float(row["# params (M)"]) == pytest.approx(expected / 1e6), how


def test_a_classifier_searched_by_its_loss_is_reported_by_its_accuracy_too(tmp_path):
    """The search's metric is shown, and the task's own beside it: a loss alone says little of a classifier. The
    VTAB table is an accuracy table whatever the search ranked by."""
    metrics = {"val": {"accuracy": 0.8, "loss": 0.5}, "test": {"accuracy": 0.9, "loss": 0.4}}
    runs = [_run(tmp_path / "t", dataset="text", task=None, test=0.4, metric="loss", metrics=metrics),
            _run(tmp_path / "v", dataset="vtab", task="cifar", test=0.4, metric="loss", metrics=metrics)]  # fmt: skip
    report = build_report(find_results(runs))
    md = "\n\n".join(report.markdown)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| text")]
    assert [(r[4], r[5]) for r in rows] == [("loss (searched by)", "0.40"), ("accuracy (%)", "90.0")]
    assert dict(zip(_row(md, "method"), _row(md, f"{VIT} lora 8,4")))["cifar"] == "90.0"
    other = list(csv.DictReader(io.StringIO(report.csv["other.csv"])))
    assert [(r["metric"], r["test"]) for r in other] == [("loss (searched by)", "0.4000"), ("accuracy (%)", "90.0000")]


def test_a_search_that_never_finished_is_listed_as_unfinished(tmp_path, capsys):
    """A search folder given alone (or a root holding only it) whose search was stopped: the supernet is found through
    its options (or, without them, its resumable state), the run is listed as not finished, the rest reported."""
    done = _run(tmp_path / "done", dataset="vtab", task="cifar", test=0.7)
    cut = _run(tmp_path / "cut", dataset="vtab", task="dtd", test=None)
    search = tmp_path / "cut" / "search"
    search.mkdir()
    (search / "config.yaml").write_text(yaml.safe_dump({"supernet": str(tmp_path / "cut" / "supernet" / "last.pt")}))
    (search / "search_log.jsonl").write_text(json.dumps({"generation": 1}) + "\n")
    state = {"config": {}, "generation": 1, "supernet": str(tmp_path / "cut" / "supernet" / "last.pt")}
    (search / "search_state.json").write_text(json.dumps(state))
    code, err = cli("report", [str(done), str(search), "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    md = (tmp_path / "r" / "report.md").read_text()
    assert "2 runs read, 1 with a finished search. Not finished (shown as missing): " + str(search) in md
    assert dict(zip(_row(md, "method"), _row(md, f"{VIT} lora 8,4")))["cifar"] == "70.0"
    (search / "config.yaml").unlink()  # killed before its options were written: the state names the supernet
    results = find_results([search])
    assert [(r.dataset, r.task, r.finished) for r in results] == [("vtab", "dtd", False)]
    assert cut.is_dir()


@pytest.mark.slow  # the session's default pipeline
def test_the_command_reads_the_default_pipeline_and_refuses_what_it_should(pipeline, tmp_path, capsys):
    out = tmp_path / "report"
    code, err = cli("report", [str(pipeline), "--out", str(out)], capsys)
    assert code == 0, err
    md = (out / "report.md").read_text()
    row = dict(zip(_row(md, "dataset"), _row(md, "digits")))
    final = json.loads((pipeline / "search" / "search_log.jsonl").read_text().splitlines()[-1])
    assert row["test"] == f"{100 * final['test_acc']:.1f}" and row["metric"] == "accuracy (%)"
    assert (out / "other.csv").is_file()
    code, err = cli("report", [str(pipeline), "--out", str(out)], capsys)
    assert code == 2 and "already holds a report; pass --force" in err
    (tmp_path / "empty").mkdir()
    code, err = cli("report", [str(tmp_path / "empty"), "--out", str(tmp_path / "r2")], capsys)
    assert code == 2 and "is not a run: expected supernet/, search/ or export/ inside it" in err


def test_a_gift_only_space_is_compared_with_gifts_table_3(tmp_path):
    runs = [_run(tmp_path / t, dataset="vtab", task=t, test=0.8, lora=()) for ts in VTAB_GROUPS.values() for t in ts]
    for r in runs:  # a GIFT-only space: no LoRA ranks, GIFT rank 16
        config = yaml.safe_load((r / "supernet" / "config.yaml").read_text()) | {"gift-ranks": [16]}
        (r / "supernet" / "config.yaml").write_text(yaml.safe_dump(config))
    md = _markdown(tmp_path, runs)
    header = _row(md, "method")
    paper = dict(zip(header, _row(md, "paper: GIFT (GIFT paper Table 3")))
    assert (paper["Natural"], paper["Specialized"], paper["Structured"]) == ("82.0", "86.3", "61.1")
    diff = dict(zip(header, _row(md, "difference (ours − paper)")))
    assert diff["Natural"] == "-2.0" and diff["Average"] == "—"  # averages of different definitions: not compared


def test_text_runs_are_told_apart_by_task_and_model(tmp_path):
    """Text runs name their task by their train file (data/glue/cola/train -> cola) and are grouped per model:
    RoBERTa-base and -large seeds on CoLA are two rows, each the mean of its own seeds."""
    runs = []
    for i, (model, seed, test) in enumerate([("roberta-base", 0, 0.60), ("roberta-base", 1, 0.62),
                                             ("roberta-large", 0, 0.68)]):  # fmt: skip
        root = _run(tmp_path / f"r{i}", dataset="text", task=None, seed=seed, test=test,
                    model=str(tmp_path / "models" / model), metric="matthews")  # fmt: skip
        config = yaml.safe_load((root / "supernet" / "config.yaml").read_text())
        config["train-file"] = str(tmp_path / "data" / "glue" / "cola" / "train")
        (root / "supernet" / "config.yaml").write_text(yaml.safe_dump(config))
        runs.append(root)
    md = _markdown(tmp_path, runs)
    assert _row(md, "dataset") == ["dataset", "task", "model", "space", "metric", "test", "# params (M)"]
    rows = [line for line in md.splitlines() if line.startswith("| text")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows]
    assert [c[:3] for c in cells] == [["text", "cola", "roberta-base"], ["text", "cola", "roberta-large"]]
    assert cells[0][5] == "61.0 ± 1.4 (n=2)" and cells[1][5] == "68.0"
