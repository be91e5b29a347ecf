"""Figures from hand-built records: what each figure draws is read back from the figure (bars, dots, lines) and
checked against numbers worked out by hand from the records; every series has its own colour and marker; no text of
a figure (titles, axis and tick labels, legends) overlaps another."""

from __future__ import annotations

import itertools
import json

import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer

from repro import plots, records
from tests.test_tables import write_record, write_records


@pytest.fixture
def figures(monkeypatch):
    """The figures the module saves, kept open (plots.save closes them through plt.close)."""
    kept = []
    monkeypatch.setattr(plots.plt, "close", kept.append)
    return kept


def shown(locations, labels, limits):
    """The tick labels drawn: those at a location inside the axis' view (a log axis lists more)."""
    lo, hi = sorted(limits)
    return [t for x, t in zip(locations, labels) if lo <= x <= hi]


def texts(fig):
    """(owner, artist) for every visible, non-empty text of the figure, laid out as it was saved."""
    fig.canvas.draw()
    out = [("suptitle", t) for t in [fig._suptitle] if t is not None]
    for i, ax in enumerate(fig.axes):
        out += [(f"axes{i}", t) for t in (ax.title, ax.xaxis.label, ax.yaxis.label)]
        out += [(f"axes{i}.xtick", t) for t in shown(ax.get_xticks(), ax.get_xticklabels(), ax.get_xlim())]
        out += [(f"axes{i}.ytick", t) for t in shown(ax.get_yticks(), ax.get_yticklabels(), ax.get_ylim())]
    for legend in fig.legends:
        out += [("legend", legend)]
    return [(o, t) for o, t in out if t.get_visible() and (not hasattr(t, "get_text") or t.get_text().strip())]


def overlapping(fig) -> list[str]:
    renderer = fig.canvas.get_renderer()
    boxes = [(o, t, t.get_window_extent(renderer)) for o, t in texts(fig)]
    out = []
    for (o1, t1, b1), (o2, t2, b2) in itertools.combinations(boxes, 2):
        if b1.overlaps(b2) and b1.width and b2.width:
            name = lambda o, t: f"{o}:{getattr(t, 'get_text', lambda: 'legend')()!r}"  # noqa: E731
            out.append(f"{name(o1, t1)} / {name(o2, t2)}")
    return out


def test_every_series_has_its_own_colour_and_marker():
    for n in (3, 10, 15, 20):
        styles = list(plots.series_styles([f"s{i}" for i in range(n)]).values())
        assert len({to_hex(s["color"]) for s in styles}) == n  # 15 series: no colour twice (tab10 cycled before)
    styles = list(plots.series_styles([f"s{i}" for i in range(40)]).values())
    assert len({(to_hex(s["color"]), s["marker"]) for s in styles}) == 40
    assert list(plots.series_styles(["b", "a", "b"])) == ["b", "a"]  # one style per label, in order


def test_render_writes_the_table_figures(tmp_path, figures):
    results = tmp_path / "results"
    write_records(results)
    names = {p.name for p in plots.render("glue", results, tmp_path / "plots")}
    assert names == {"glue_score_vs_params.png", "glue_lora_minus_ft.png", "glue_curves.png"}
    for p in (tmp_path / "plots").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for fig in figures:
        assert not overlapping(fig), overlapping(fig)


def test_lora_minus_ft_draws_median_differences_paired_seeds_and_the_paper(tmp_path, figures):
    """tiny-roberta on RTE: LoRA 50, 60, 55 (median 55), FT 52, 56 (median 54) -> bar 55 − 54 = +1.0; seeds 0 and 1
    paired: 50 − 52 = −2, 60 − 56 = +4; the paper (roberta-base, Table 2): LoRA 86.6 − FT 78.7 = +7.9. MRPC has no
    FT score (both seeds failed): no bar, no dot."""
    results = tmp_path / "results"
    write_records(results)
    plots.lora_minus_ft("glue", results, tmp_path)
    (ax,) = figures[0].axes
    names = [t.get_text() for t in ax.get_xticklabels()]
    bars = {names[round(b.get_x() + b.get_width() / 2)]: b.get_height() for b in ax.containers[0]}
    assert bars == {"RTE": pytest.approx(1.0)}
    dots, diamonds = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
    assert sorted(float(y) for _, y in dots) == pytest.approx([-2.0, 4.0])
    assert {names[round(float(x))]: float(y) for x, y in diamonds}["RTE"] == pytest.approx(86.6 - 78.7)
    assert "Avg" in names  # no bar there: not every task has both rows


def test_no_lora_minus_ft_figure_without_both_rows(tmp_path):
    results = tmp_path / "results"
    write_record(results, "tiny-roberta", "lora", "rte", 0, 0.5)
    assert plots.lora_minus_ft("glue", results, tmp_path) is None


def test_curves_show_the_seeds_median_training_and_dev_curves(tmp_path, figures):
    """One panel per (task, curve); a line per row at the median over seeds; a dev evaluation logged twice at one
    step (the selected weights re-evaluated) counts once."""
    results = tmp_path / "results"
    for seed, (l1, l2, acc) in enumerate([(0.7, 0.5, 0.6), (0.9, 0.3, 0.8), (0.8, 0.4, 0.7)]):
        path = write_record(results, "tiny-roberta", "lora", "rte", seed, acc)
        rec = json.loads(path.read_text())
        rec["history"] = {
            "train_loss": [{"step": 10, "loss": l1}, {"step": 20, "loss": l2}],
            "eval": [
                {"step": 20, "dev_loss": l2 + 0.1, "dev_accuracy": acc},
                {"step": 20, "dev_loss": 9.9, "dev_accuracy": 0.0},
            ],
        }
        records.write_json_atomic(path, rec)
    out = plots.curves("glue", results, tmp_path)
    assert out.name == "glue_curves.png"
    panels = {ax.get_title(): ax for ax in figures[0].axes}
    assert set(panels) == {"RTE: training loss", "RTE: dev loss", "RTE: dev accuracy ×100"}
    (train,) = panels["RTE: training loss"].get_lines()
    assert list(train.get_xdata()) == [10, 20] and list(train.get_ydata()) == pytest.approx([0.8, 0.4])
    (dev,) = panels["RTE: dev loss"].get_lines()
    assert list(dev.get_ydata()) == pytest.approx([0.5])
    (acc,) = panels["RTE: dev accuracy ×100"].get_lines()
    assert list(acc.get_ydata()) == pytest.approx([70.0])
    assert not overlapping(figures[0]), overlapping(figures[0])


def write_ablation(results, table, variants, scores):
    for variant, by_seed in zip(variants, scores):
        for seed, s in enumerate(by_seed):
            write_record(results, "minilm", "lora", "sst2", seed, s, variant=variant, table=table)


def test_table_6_is_score_against_r_a_line_per_weight_set(tmp_path, figures):
    results = tmp_path / "results"
    write_ablation(results, "rank", ["qv_r1", "qv_r8", "q_r8"], [(0.80, 0.82), (0.84, 0.86), (0.70,)])
    paths = plots.render("rank", results, tmp_path)
    assert {p.name for p in paths} == {"rank_score_vs_r.png", "rank_curves.png"}
    panels = {ax.get_title(): ax for ax in figures[0].axes if ax.get_title()}
    assert set(panels) == {"WikiSQL (paper, GPT-3)", "MultiNLI (paper, GPT-3)", "SST-2 accuracy (ours, minilm)"}
    lines = {line.get_label(): line for line in panels["SST-2 accuracy (ours, minilm)"].get_lines()}
    assert list(lines["W_q,W_v"].get_xdata()) == [1, 8]
    assert list(lines["W_q,W_v"].get_ydata()) == pytest.approx([81.0, 85.0])  # the means over the two seeds
    assert list(lines["W_q"].get_ydata()) == pytest.approx([70.0])
    paper = {line.get_label(): line for line in panels["WikiSQL (paper, GPT-3)"].get_lines()}
    assert list(paper["W_q,W_v"].get_ydata()) == [73.4, 73.3, 73.7, 73.8, 73.5]  # Table 6, r = 1, 2, 4, 8, 64
    assert not overlapping(figures[0]), overlapping(figures[0])


def test_table_5_is_a_bar_per_weight_set(tmp_path, figures):
    results = tmp_path / "results"
    write_ablation(results, "which_weights", ["q_r8", "qv_r4", "qkvo_r2"], [(0.70, 0.72), (0.80,), (0.90, 0.94)])
    (path,) = [p for p in plots.render("which_weights", results, tmp_path) if "curves" not in p.name]
    assert path.name == "which_weights_bars.png"
    panels = {ax.get_title(): ax for ax in figures[0].axes if ax.get_title()}
    ours = panels["SST-2 accuracy (ours, minilm) (y axis zoomed)"]
    (bars,) = [c for c in ours.containers if isinstance(c, BarContainer)]
    assert [b.get_height() for b in bars] == pytest.approx([71.0, 80.0, 92.0])
    paper = panels["MultiNLI (paper, GPT-3) (y axis zoomed)"]
    assert [b.get_height() for b in paper.containers[0]] == [91.0, 90.8, 91.0, 91.3, 91.3, 91.3, 91.7]  # Table 5
    assert not overlapping(figures[0]), overlapping(figures[0])


def test_score_vs_params_draws_each_method_in_its_own_style(tmp_path, figures):
    """RTE: LoRA's median 55 (50, 60, 55), FT's 54 (52, 56), each method in its own colour and marker."""
    results = tmp_path / "results"
    write_records(results)
    plots.score_vs_params("glue", results, tmp_path)
    ax = next(a for a in figures[0].axes if a.get_title() == "RTE")
    ours = {c.get_label(): c[0] for c in ax.containers}  # errorbar containers: the data line first
    assert list(ours["LoRA (tiny-roberta)"].get_ydata()) == pytest.approx([55.0])
    assert list(ours["FT (tiny-roberta)"].get_ydata()) == pytest.approx([54.0])
    styles = {(to_hex(line.get_color()), line.get_marker()) for line in ours.values()}
    assert len(styles) == len(ours) == 2
    assert not overlapping(figures[0]), overlapping(figures[0])
