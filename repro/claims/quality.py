"""The quality claims (Tables 2, 3, 5, 6 and 14, Figure 2): LoRA against full fine-tuning on GLUE, E2E and WebNLG;
against adapters and prefix tuning at a similar budget; which weight matrices, how small a rank, how long a prefix.

Most compare two rows of one table: `pick` takes the first table of a family that has them (a tuned table before
its untuned one, the paper-sized before the CPU-sized), `compare` pairs the two rows on the model with the most
tasks in common, and the verdict comes from the margin between their averages (repro.claims.verdict).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from repro import tables
from repro.claims import (
    DROP_PTS,
    MATCH_PTS,
    NOT_REPRODUCED,
    PARTLY,
    PARTLY_PTS,
    REPRODUCED,
    SIMILAR_BUDGET,
    SMALL_R,
    Claim,
    verdict,
)
from repro.claims.evidence import Evidence, cells, paper, random_weights
from repro.results import (
    Cell,
    Noise,
    Record,
    beyond_noise,
    main_metric,
    margin_noise,
    record_score,
)

GLUE_TABLES = ("glue", "glue_cpu")  # paper-sized first, then the CPU stand-in (each: `_tuned` first)
E2E_TABLES = ("e2e", "e2e_cpu")  # paper-sized first, then the CPU stand-in (SmolLM2-135M)
WEBNLG_TABLES = ("webnlg", "webnlg_cpu")
NLG_TABLES = (*E2E_TABLES, *WEBNLG_TABLES, "dart")
ADAPTERS = ("adapter_h", "adapter_l", "adapter_p", "adapter_d")
PREFIXES = ("prefix_embed", "prefix_layer")


# ---------------------------------------------------------------- two rows of a table


@dataclass
class Pair:
    """Two rows of one table on one model, over the tasks both have. Row b is the baseline: its seeds that did not
    train (repro.results.did_not_train) are left out and listed in `untrained` (task -> [(seed, path, why)]); a task
    none of whose b seeds trained is not compared (it counts neither for nor against row a)."""

    table: str
    model: str
    tasks: list[str]
    a: dict[str, Cell]
    b: dict[str, Cell]
    untrained: dict[str, list] = field(default_factory=dict)
    b_all: dict[str, Cell] = field(default_factory=dict)  # b's cells on every shared task, every seed (its counts)

    @property
    def n_tasks(self) -> str:
        return f"{len(self.tasks)} task" + ("" if len(self.tasks) == 1 else "s")

    @property
    def a_avg(self) -> float:
        return statistics.fmean(self.a[t].mean for t in self.tasks)

    @property
    def b_avg(self) -> float:
        return statistics.fmean(self.b[t].mean for t in self.tasks)

    @property
    def margin(self) -> float:
        return self.a_avg - self.b_avg

    @property
    def noise(self) -> Noise:
        """The seed noise of the margin (repro.results.margin_noise)."""
        return margin_noise((self.a[t], self.b[t]) for t in self.tasks)

    @property
    def outcome(self) -> int:
        """+1: row a wins beyond the seed noise, -1: loses beyond it, 0: inside it (repro.results.beyond_noise)."""
        return beyond_noise(self.margin, self.noise)

    @property
    def paths(self) -> list[str]:
        return [p for t in self.tasks for c in (self.a[t], self.b[t]) for p in c.paths]

    @property
    def untrained_paths(self) -> list[str]:
        return [path for seeds in self.untrained.values() for _, path, _ in seeds]

    def side_paths(self, side: str) -> list[str]:
        """The record paths of one side ("a" or "b") over the common tasks."""
        return [p for t in self.tasks for p in getattr(self, side)[t].paths]

    def params(self, side: str) -> int | None:
        """The side's parameter count (repro.results.shown_params): the median over its tasks of each cell's (its
        last record's; a cell's seeds share it)."""
        cells = (self.b_all or self.b) if side == "b" else self.a  # a baseline's count holds, trained or not
        vals = [c.params[-1] for c in cells.values() if c.params]
        return int(statistics.median(vals)) if vals else None

    def per_task(self) -> str:
        return ", ".join(f"{t} {self.a[t].mean:.1f} vs {self.b[t].mean:.1f}" for t in self.tasks)

    def did_not_train(self, name: str) -> str:
        """One clause per task of b with seeds that did not train, '<name> (<params>) did not train on <task> (seed
        k: why)'; empty when every seed trained."""
        return "; ".join(
            f"{name} ({tables.fmt_params(self.params('b'))}) did not train on {task} ("
            + "; ".join(f"seed {seed}: {why}" for seed, _, why in seeds)
            + ("" if task in self.tasks else "; the task is not compared")
            + ")"
            for task, seeds in sorted(self.untrained.items())
        )


def compare(ev: Evidence, table: str, a: tuple[str, str], b: tuple[str, str]) -> Pair | None:
    """Rows a and b, each (method, variant), on the model that has the most tasks in common; b, the baseline, only
    with its seeds that trained. A pair with no task left (b trained on none of the common tasks) has `tasks` empty
    and says why in `untrained`; None when the two rows share no task at all."""
    cs = cells(ev, table)
    best = None
    for model in sorted({k[0] for k in cs}):
        ta = {k[3]: c for k, c in cs.items() if k[:3] == (model, *a)}
        tb = {k[3]: c for k, c in cs.items() if k[:3] == (model, *b)}
        shared = sorted(set(ta) & set(tb))
        trained = {t: tb[t].trained() for t in shared}
        common = [t for t in shared if trained[t].n]
        untrained = {t: tb[t].untrained for t in shared if tb[t].untrained}
        if shared and (best is None or (len(common), len(shared)) > (len(best.tasks), len(best.a))):
            best = Pair(
                table, model, common, {t: ta[t] for t in shared}, trained, untrained, {t: tb[t] for t in shared}
            )
    if best is not None:  # b keeps the compared tasks only (a keeps every shared task: LoRA's count)
        best.b = {t: best.b[t] for t in best.tasks}
    return best


def candidates(*bases: str) -> list[str]:
    return [name for base in bases for name in (f"{base}_tuned", base)]


def pick(ev: Evidence, bases, usable) -> tuple[str | None, object, str]:
    """The first table of candidates(bases) for which usable(table) is truthy: (table, its value, a note)."""
    skipped = []
    for table in candidates(*bases):
        if not ev.records.get(table):
            skipped.append(f"{table}: no ok records")
            continue
        if table in ev.unfinished:
            skipped.append(f"{table}: {ev.unfinished[table]}")
            continue
        value = usable(table)
        if value:
            note = f"table `{table}`" + (f" (passed over: {'; '.join(skipped)})" if skipped else "")
            return table, value, note
        skipped.append(f"{table}: not the rows this claim compares")
    return None, None, "; ".join(skipped) or "no tables"


# ---------------------------------------------------------------- the claims


def paper_glue_row(model: str, label: str) -> dict | None:
    return tables.paper_row(paper("table2_glue.yaml"), {"model": model, "label": label})


def lora_vs_ft(ev: Evidence, c: Claim, bases, where: str) -> tuple[str | None, Pair | None]:
    """The first table of `bases` with LoRA and FT rows (default variants) on one model: (table, pair). Sets the
    claim's source; with no such table, its reason ("no LoRA and FT records on <where>")."""

    def usable(t):
        pair = compare(ev, t, ("lora", "default"), ("ft", "default"))
        return pair if pair and pair.tasks else None  # FT trained on none of LoRA's tasks: not this table

    table, pair, note = pick(ev, bases, usable)
    c.source = note
    if not pair:
        c.reason = f"no LoRA and FT records on {where} ({note})"
    elif pair.untrained:
        c.source += f"; {pair.did_not_train('FT')}: not counted (repro.results.did_not_train)"
    return table, pair


def paper_lora_ft(name: str) -> dict[tuple[str, str], dict]:
    """(model, "LoRA" | "FT") -> the paper file's row."""
    return {(r["model"], r["method"]): r for r in paper(name).get("rows", []) if r["method"] in ("LoRA", "FT")}


def claim_lora_matches_ft(ev: Evidence) -> Claim:
    rows = [
        (m, paper_glue_row(m, "LoRA"), paper_glue_row(m, "FT*"))
        for m in ("roberta-base", "roberta-large", "deberta-v2-xxlarge")
    ]
    c = Claim(
        "lora_matches_ft",
        "LoRA matches or beats full fine-tuning on GLUE with a fraction of the trainable parameters",
        "Section 5.2-5.3, Table 2",
        "; ".join(
            f"{m}: LoRA {lo['params']} {lo['values'][-1]} vs FT {ft['params']} {ft['values'][-1]} (GLUE avg)"
            for m, lo, ft in rows
            if lo and ft
        ),
    )
    table, pair = lora_vs_ft(ev, c, GLUE_TABLES, "the same pretrained model and task")
    if not pair:
        return c
    lp, fp = pair.params("a"), pair.params("b")
    frac = (
        f", {100 * lp / fp:.2f}% of FT's trainable parameters ({tables.fmt_params(lp)} vs {tables.fmt_params(fp)})"
        if lp and fp
        else ""
    )
    wins = [t for t in pair.tasks if pair.a[t].mean >= pair.b[t].mean - MATCH_PTS]
    c.ours = (
        f"{pair.model} on {table}: LoRA {pair.a_avg:.1f} vs FT {pair.b_avg:.1f} avg over {len(pair.tasks)} tasks "
        f"(Δ {pair.margin:+.1f}){frac}; per task LoRA vs FT: {pair.per_task()}"
    )
    c.evidence = pair.paths
    c.verdict = verdict(pair.margin, partly=bool(wins))
    c.reason = {
        REPRODUCED: f"LoRA's average is within {MATCH_PTS} point of FT's or above it",
        PARTLY: f"LoRA's average is {-pair.margin:.1f} points below FT's (more than {MATCH_PTS}, at most {PARTLY_PTS}); "
        f"it matches or beats FT on {len(wins)} of {len(pair.tasks)} tasks ({', '.join(wins) or 'none'})",
        NOT_REPRODUCED: f"LoRA's average is {-pair.margin:.1f} points below FT's, on every task",
    }[c.verdict]
    return c


def metric_mean(ev: Evidence, table: str, paths: list[str], metric: str, scale: float = 100.0) -> float | None:
    """The mean of one metric (× scale) over these records of a table (e.g. WebNLG's BLEU_unseen); None when a
    record lacks it."""
    by_path = {str(r.path): r for r in ev.records.get(table, [])}
    vals = [by_path[p].metrics.get(metric) for p in paths]
    return None if not vals or None in vals else scale * statistics.fmean(vals)


def claim_lora_matches_ft_nlg(ev: Evidence) -> Claim:
    rows = paper_lora_ft("table3_e2e.yaml")
    c = Claim(
        "lora_matches_ft_nlg",
        "LoRA matches or beats full fine-tuning on E2E NLG",
        "Section 5.4, Table 3",
        "; ".join(
            f"{m}: LoRA {rows[(m, 'LoRA')]['params']} {rows[(m, 'LoRA')]['values'][0]} vs FT* "
            f"{rows[(m, 'FT')]['params']} {rows[(m, 'FT')]['values'][0]} (BLEU)"
            for m in ("gpt2-medium", "gpt2-large")
            if (m, "LoRA") in rows and (m, "FT") in rows
        ),
    )
    table, pair = lora_vs_ft(ev, c, E2E_TABLES, "E2E on the same pretrained model")
    if not pair:
        return c
    others = []  # the table's other printed columns (render.columns: NIST, MET, ROUGE-L, CIDEr at the paper's scale)
    for col in tables.table_columns(tables.load_table_config(table), None):
        if col.metric and col.metric != main_metric(col.task):
            a, b = (metric_mean(ev, table, pair.side_paths(k), col.metric, col.scale) for k in ("a", "b"))
            if a is not None and b is not None:
                others.append(f"{col.name} {a:.{col.digits}f} vs {b:.{col.digits}f}")
    lp, fp = pair.params("a"), pair.params("b")
    c.ours = (
        f"{pair.model} on {table}: LoRA {tables.fmt_params(lp)} BLEU {pair.a_avg:.1f} vs FT {tables.fmt_params(fp)} "
        f"{pair.b_avg:.1f} (Δ {pair.margin:+.1f}; seeds {len(pair.a[pair.tasks[0]].scores)} vs "
        f"{len(pair.b[pair.tasks[0]].scores)})" + (f"; {', '.join(others)}" if others else "")
    )
    c.evidence = pair.paths
    c.verdict = verdict(pair.margin)
    c.reason = {
        REPRODUCED: f"LoRA's BLEU is within {MATCH_PTS} point of FT's or above it",
        PARTLY: f"LoRA's BLEU is {-pair.margin:.1f} points below FT's (more than {MATCH_PTS}, at most {PARTLY_PTS})",
        NOT_REPRODUCED: f"LoRA's BLEU is {-pair.margin:.1f} points below FT's",
    }[c.verdict]
    return c


def claim_lora_generalizes_unseen(ev: Evidence) -> Claim:
    rows = paper_lora_ft("table14_webnlg.yaml")
    c = Claim(
        "lora_generalizes_unseen",
        "On WebNLG, LoRA generalises to unseen categories at least as well as FT",
        "Appendix F.1, Table 14",
        "; ".join(
            f"{m}: BLEU unseen/seen LoRA {rows[(m, 'LoRA')]['BLEU'][0]}/{rows[(m, 'LoRA')]['BLEU'][1]} vs FT "
            f"{rows[(m, 'FT')]['BLEU'][0]}/{rows[(m, 'FT')]['BLEU'][1]}"
            for m in ("gpt2-medium", "gpt2-large")
            if (m, "LoRA") in rows and (m, "FT") in rows
        ),
    )
    table, pair = lora_vs_ft(ev, c, WEBNLG_TABLES, "WebNLG on the same pretrained model")
    if not pair:
        return c
    (lu, ls), (fu, fs) = [
        [metric_mean(ev, table, pair.side_paths(k), m) for m in ("BLEU_unseen", "BLEU_seen")] for k in ("a", "b")
    ]
    c.evidence = pair.paths
    if None in (lu, ls, fu, fs):
        c.reason = f"the {table} records lack BLEU on the seen/unseen split (BLEU_seen, BLEU_unseen)"
        return c
    c.ours = (
        f"{pair.model} on {table}: BLEU unseen / seen / all: LoRA {lu:.1f} / {ls:.1f} / {pair.a_avg:.1f} vs FT "
        f"{fu:.1f} / {fs:.1f} / {pair.b_avg:.1f}; drop from seen to unseen: LoRA {ls - lu:.1f}, FT {fs - fu:.1f}"
    )
    c.verdict = verdict(lu - fu, partly=ls - lu < fs - fu, small_miss=False)
    c.reason = {
        REPRODUCED: f"LoRA's unseen BLEU is within {MATCH_PTS} point of FT's or above it",
        PARTLY: f"LoRA's unseen BLEU is {fu - lu:.1f} below FT's, but it loses less from seen to "
        f"unseen ({ls - lu:.1f} against {fs - fu:.1f})",
        NOT_REPRODUCED: f"LoRA's unseen BLEU is {fu - lu:.1f} below FT's and it loses more from "
        f"seen to unseen ({ls - lu:.1f} against {fs - fu:.1f})",
    }[c.verdict]
    return c


def tally(outcomes: dict[str, int]) -> tuple[list[str], list[str], list[str]]:
    """(won, inside the noise, lost) of {baseline: repro.results.beyond_noise outcome}."""
    return (
        [m for m, o in outcomes.items() if o > 0],
        [m for m, o in outcomes.items() if o == 0],
        [m for m, o in outcomes.items() if o < 0],
    )


def outcome_text(pair: Pair) -> str:
    """'Δ +0.6, seed noise 1.3: inside it' for one compared pair."""
    word = {1: "a win", 0: "inside it", -1: "a loss"}[pair.outcome]
    return f"Δ {pair.margin:+.1f}, {pair.noise}: {word}"


def claim_lora_beats_adapters_prefix(ev: Evidence) -> Claim:
    t2, t3 = paper("table2_glue.yaml"), paper("table3_e2e.yaml")
    large = [r for r in t2.get("rows", []) if r["model"] == "roberta-large" and r.get("marker") == "†"]
    med = [
        r
        for r in t3.get("rows", [])
        if r["model"] == "gpt2-medium" and r["method"] in ("LoRA", "AdapterL", "AdapterH", "PreLayer")
    ]
    c = Claim(
        "lora_beats_adapters_prefix",
        "LoRA beats adapters and prefix tuning at a similar parameter budget",
        "Sections 5.2 and 5.4, Tables 2 and 3",
        "Table 2 (RoBERTa large †, GLUE avg): "
        + ", ".join(f"{r['method']} {r['params']} {r['values'][-1]}" for r in large)
        + "; Table 3 (GPT-2 M, E2E BLEU): "
        + ", ".join(f"{r['method']} {r['params']} {r['values'][0]}" for r in med),
    )
    comps, notes = [], []
    for bases in (GLUE_TABLES, NLG_TABLES):

        def usable(t):
            return [(m, p) for m in ADAPTERS + PREFIXES if (p := compare(ev, t, ("lora", "default"), (m, "default")))]

        _, found, note = pick(ev, bases, usable)
        notes.append(note)
        for m, p in found or []:
            lp, bp = p.params("a"), p.params("b")
            comps.append((m, p, lp, bp, bool(lp and bp and max(lp, bp) / min(lp, bp) <= SIMILAR_BUDGET)))
    c.source = (
        " | ".join(notes) + "; a margin counts as a win or a loss only beyond the seed noise "
        "(repro.results.margin_noise); a baseline seed that did not train counts neither way (did_not_train)"
    )
    similar = [x for x in comps if x[4]]
    counted = [x for x in similar if x[1].tasks]
    if not counted:
        c.reason = (
            "no LoRA and adapter/prefix records on the same pretrained model and task"
            + (f" within {SIMILAR_BUDGET}x of LoRA's budget" if comps else "")
            + (" whose baseline trained" if similar else "")
            + f" ({c.source})"
        )
        return c

    def part(m, p, lp, bp, sim):
        head = f"{p.model} on {p.table}: "
        if not p.tasks:
            return head + f"{p.did_not_train(m)} [not counted]"
        return (
            head + f"LoRA {tables.fmt_params(lp)} {p.a_avg:.1f} vs {m} {tables.fmt_params(bp)} {p.b_avg:.1f} "
            f"({outcome_text(p)}; {p.n_tasks})"
            + ("" if sim else " [budget not similar: not counted]")
            + (f"; {p.did_not_train(m)}" if p.untrained else "")
        )

    c.ours = "; ".join(part(*x) for x in comps)
    c.evidence = sorted({path for _, p, *_ in similar for path in p.paths + p.untrained_paths})
    won, inside, lost = tally({m: p.outcome for m, p, *_ in counted})
    untrained = [m for m, p, *_ in similar if not p.tasks]
    families = {
        "adapters": any(m in ADAPTERS for m, *_ in counted),
        "prefix tuning": any(m in PREFIXES for m, *_ in counted),
    }
    untested = [f for f, ok in families.items() if not ok]
    if won and not inside and not lost and not untested:
        c.verdict, c.reason = (
            REPRODUCED,
            f"LoRA's average beats every baseline at a similar budget beyond the seed noise ({', '.join(won)})",
        )
    elif won or not lost:
        c.verdict = PARTLY
        c.reason = (
            f"LoRA beats {', '.join(won) or 'none'} beyond the seed noise"
            + (f"; inside the noise of {', '.join(inside)} (no win)" if inside else "")
            + (f"; below {', '.join(lost)}" if lost else "")
            + (f"; did not train, counted neither way: {', '.join(untrained)}" if untrained else "")
            + (
                f"; {' and '.join(untested)} not tested (no records beside LoRA's"
                + (" that trained" if untrained else "")
                + ")"
                if untested
                else ""
            )
        )
    else:
        c.verdict, c.reason = (
            NOT_REPRODUCED,
            f"LoRA wins against no baseline at a similar budget and loses to {', '.join(lost)} beyond the seed noise",
        )
    return c


def claim_qv_beats_single(ev: Evidence) -> Claim:
    t5 = paper("table5_6_ablations.yaml").get("table5_which_weights", {})
    cols = [("+".join(w.replace("W_", "") for w in col["weights"]), col["r"]) for col in t5.get("columns", [])]
    c = Claim(
        "qv_beats_single",
        "Adapting W_q and W_v together beats spending the same budget on one weight type",
        "Section 7.1, Table 5",
        "GPT-3, 18M budget, WikiSQL / MultiNLI: "
        + ", ".join(f"{w} r={r} {a}/{b}" for (w, r), a, b in zip(cols, t5.get("WikiSQL", []), t5.get("MultiNLI", []))),
    )
    singles = ("q_r8", "k_r8", "v_r8", "o_r8")

    def usable(t):
        found = {v: compare(ev, t, ("lora", "qv_r4"), ("lora", v)) for v in singles}
        return {v: p for v, p in found.items() if p and p.tasks}

    table, found, note = pick(ev, ("which_weights", "rank"), usable)
    c.source = (
        note
        + (" (rank table: same budget rows q_r8 vs qv_r4)" if table and table.startswith("rank") else "")
        + "; a margin counts as a win or a loss only beyond the seed noise (repro.results.margin_noise)"
    )
    if not found:
        c.reason = f"no LoRA records of W_q,W_v r=4 beside a single weight type at r=8 on the same task ({note})"
        return c
    c.evidence = sorted({path for p in found.values() for path in p.paths + p.untrained_paths})
    c.ours = "; ".join(
        f"{p.model} on {table}: W_q,W_v r=4 {p.a_avg:.1f} vs W_{v[0]} r=8 {p.b_avg:.1f} ({outcome_text(p)}; "
        f"{', '.join(p.tasks)})" + (f"; {p.did_not_train('W_' + v[0])}" if p.untrained else "")
        for v, p in found.items()
    )
    won, inside, lost = tally({v: p.outcome for v, p in found.items()})
    missing = [s for s in singles if s not in found]
    if won and not inside and not lost and not missing:
        c.verdict, c.reason = (
            REPRODUCED,
            "W_q,W_v beats every single weight type at the same budget beyond the seed noise",
        )
    elif won or not lost:
        c.verdict = PARTLY
        c.reason = (
            f"W_q,W_v beats {', '.join(won) or 'none'} of the single types compared beyond the seed noise"
            + (f"; inside the noise of {', '.join(inside)} (no win)" if inside else "")
            + (f"; below {', '.join(lost)}" if lost else "")
            + (f"; not run: {', '.join(missing)}" if missing else "")
        )
    else:
        c.verdict, c.reason = NOT_REPRODUCED, f"W_q,W_v wins against no single type and loses to {', '.join(lost)}"
    return c


def _lora_avg(cs: dict, model: str, variant: str, tasks: list[str]) -> float:
    return statistics.fmean(cs[(model, "lora", variant, t)].mean for t in tasks)


def _variants(cs: dict) -> dict[tuple[str, str], dict[str, Cell]]:
    """(model, variant) -> {task: Cell} of the LoRA rows."""
    out: dict = {}
    for (model, method, variant, task), cell in cs.items():
        if method == "lora":
            out.setdefault((model, variant), {})[task] = cell
    return out


def claim_small_rank_suffices(ev: Evidence) -> Claim:
    t6 = paper("table5_6_ablations.yaml").get("table6_rank", {})
    ranks = t6.get("ranks", [])
    c = Claim(
        "small_rank_suffices",
        "A very small rank r suffices (r = 1 for W_q, W_v)",
        "Section 7.2, Table 6",
        "GPT-3, W_q,W_v, r = "
        + "/".join(map(str, ranks))
        + ": WikiSQL "
        + "/".join(map(str, t6.get("WikiSQL", {}).get("W_q,W_v", [])))
        + ", MultiNLI "
        + "/".join(map(str, t6.get("MultiNLI", {}).get("W_q,W_v", []))),
    )

    def family(t, fam="qv"):
        """(model, {r: avg}, tasks, paths) for the model with the most ranks of this family on common tasks."""
        cs = cells(ev, t)
        best = None
        for model in sorted({k[0] for k in cs}):
            by_r = {
                int(v.split("_r")[1]): tasks
                for (m, v), tasks in _variants(cs).items()
                if m == model and v.startswith(fam + "_r") and v.split("_r")[1].isdigit()
            }
            common = sorted(set.intersection(*(set(ts) for ts in by_r.values()))) if by_r else []
            if len(by_r) >= 2 and common and (best is None or len(by_r) > len(best[1])):
                avg = {r: _lora_avg(cs, model, f"{fam}_r{r}", common) for r in sorted(by_r)}
                paths = sorted(p for r in by_r for t in common for p in cs[(model, "lora", f"{fam}_r{r}", t)].paths)
                best = (model, avg, common, paths)
        return best

    table, found, note = pick(ev, ("rank",), family)
    c.source = note
    if not found:
        c.reason = f"fewer than two ranks of LoRA on W_q,W_v on the same task ({note})"
        return c
    model, avg, tasks, paths = found
    top = max(avg.values())
    enough = min(r for r, v in avg.items() if v >= top - MATCH_PTS)
    c.ours = f"{model} on {table}, W_q,W_v, {', '.join(tasks)}: " + ", ".join(f"r={r} {v:.1f}" for r, v in avg.items())
    c.evidence = paths
    tiny = {r: v for r, v in avg.items() if r <= SMALL_R}
    if enough <= SMALL_R:
        c.verdict, c.reason = REPRODUCED, f"r={enough} is within {MATCH_PTS} point of the best rank"
    elif enough <= 8 or any(v >= top - PARTLY_PTS for v in tiny.values()):
        c.verdict = PARTLY
        c.reason = f"the smallest rank within {MATCH_PTS} point of the best is r={enough}; " + (
            "r ≤ 2 not run" if not tiny else f"r ≤ {SMALL_R} falls short by more than {MATCH_PTS}"
        )
    else:
        c.verdict, c.reason = NOT_REPRODUCED, f"only r={enough} comes within {MATCH_PTS} point of the best rank"
    return c


def prefix_length(record: Record) -> int | None:
    """A prefix-tuning record's prefix length l_p + l_i (None for other methods)."""
    m = record.config.get("method") or {}
    return None if m.get("l_p") is None else int(m.get("l_p", 0)) + int(m.get("l_i") or 0)


def claim_prefix_length_hurts(ev: Evidence) -> Claim:
    t15 = paper("table4_gpt3.yaml").get("table15_gpt3_sweep", {})
    pe = [r for r in t15.get("rows", []) if r["method"] == "PrefixEmbed"]
    pl = [r for r in t15.get("rows", []) if r["method"] == "PrefixLayer"]
    c = Claim(
        "prefix_length_hurts",
        "Prefix tuning's quality falls when its prefix grows long",
        "Section 5.5, Figure 2 (its data: Table 15)",
        "GPT-3 WikiSQL: PrefixEmbed l_p+l_i "
        + ", ".join(f"{r['config']['l_p'] + r['config']['l_i']}: {r['values'][0]}" for r in pe)
        + "; PrefixLayer "
        + ", ".join(f"{r['config']['l_p'] + r['config']['l_i']}: {r['values'][0]}" for r in pl),
    )
    groups: dict[tuple, dict[int, list]] = {}
    for table, recs in sorted(ev.records.items()):
        for r in recs:
            n, score = prefix_length(r), record_score(r)
            if r.method in PREFIXES and n is not None and score is not None and not random_weights(r.model or ""):
                groups.setdefault((table, r.model, r.method, r.task), {}).setdefault(n, []).append((score, str(r.path)))
    sweeps = {k: v for k, v in groups.items() if len(v) >= 2}
    c.source = (
        "prefix_embed / prefix_layer records of every table, grouped by (table, model, method, task) over l_p + l_i"
    )
    if not sweeps:
        c.reason = (
            "no prefix-tuning records at two or more prefix lengths on the same model and task (prefix tuning "
            "runs on decoders only; no length sweep has been run)"
        )
        return c
    falls, parts = [], []
    for key, by_n in sorted(sweeps.items()):
        means = {n: statistics.fmean(s for s, _ in v) for n, v in sorted(by_n.items())}
        longest = max(means)
        drop = max(v for n, v in means.items() if n < longest) - means[longest]
        falls.append(drop > DROP_PTS)
        parts.append(
            f"{key[1]} {key[2]} {key[3]} on {key[0]}: "
            + ", ".join(f"{n}: {v:.1f}" for n, v in means.items())
            + f" (longest {drop:+.1f} below the best shorter)"
        )
        c.evidence += [p for v in by_n.values() for _, p in v]
    c.ours = "; ".join(parts)
    c.evidence = sorted(set(c.evidence))
    if all(falls):
        c.verdict, c.reason = (
            REPRODUCED,
            f"the longest prefix scores more than {DROP_PTS} point below a shorter one in every sweep",
        )
    elif any(falls):
        c.verdict, c.reason = PARTLY, f"quality falls at the longest prefix in {sum(falls)} of {len(falls)} sweeps"
    else:
        c.verdict, c.reason = NOT_REPRODUCED, "the longest prefix is within a point of, or above, every shorter one"
    return c
