"""The claims report: every claim of the paper beside what this suite measured, with a verdict.

    python -m repro.claims [--results-dir results]      # -> <results-dir>/claims.md and claims.json

It reads committed files only (records under <results-dir>/<table>/..., benchmark JSONs under bench/, Section 7
reports under analysis/) and trains nothing. One small function per claim takes the loaded `Evidence` and returns a
`Claim`: where the paper makes it, what the paper measured (from repro/paper/*.yaml, through repro.tables' loaders),
what this suite measured (numbers, with the files they come from), and a verdict:

    reproduced          the suite's numbers satisfy the claim under the rule below
    partly              part of the claim holds (some tasks, some sub-claims), or it misses by a small margin
    not reproduced      the suite's numbers contradict the claim
    not testable here   no usable evidence (no records, no benchmark, no analysis); the reason says what is missing.
                        A claim without evidence is never "reproduced".

Rules shared by all claims:

* Only records with status `ok` count; the others are excluded and counted (per table, at the top of the report).
* Models with random weights (conf/model/<name>.yaml `source: tiny`: tiny-roberta, tiny-gpt2, ...) are smoke-test
  stand-ins and never count as evidence of quality.
* A score is the task's main metric × 100 (repro.tables.record_score), averaged over the ok seeds of a cell; a
  method's score on a table is the mean of those over the tasks that *both* compared rows have.
* Table preference: for a family of tables (e.g. GLUE: `glue`, then the CPU-sized `glue_cpu`), a tuned table
  `<name>_tuned` is tried before `<name>`, and the paper-sized table before its CPU-sized stand-in; the first table
  that has the rows a claim compares is used, and the report says which one (and why earlier ones were passed over).
  A table with tune groups (repro/tune.py) counts only once its learning rate is chosen for every (row, task) and
  the chosen candidates have run every seed: a half-run tuned grid would otherwise stand for the whole comparison;
  until then it is passed over, saying so.

Thresholds (points are score points, ×100 scale):

* MATCH_PTS = 1.0: "matches" = within one point (about one seed std of our 2-seed CPU cells; the paper's own
  LoRA-vs-FT gaps on GLUE are 0.1-0.8 points). PARTLY_PTS = 3.0: a miss of up to three points, or a claim that holds
  on some tasks only, is "partly"; a larger miss is "not reproduced".
* SIMILAR_BUDGET = 3.0: two methods train "a similar budget" when their trainable (adapter) parameter counts differ
  by at most 3x (the paper's Table 2 compares LoRA 0.8M with adapters of 0.8M-6M).
* SMALL_R = 2: "a very small r" is r <= 2 (the paper: r = 1 suffices for W_q, W_v); r <= 8 matching the largest r is
  "partly" (8 is the paper's default, still 8x below 64).
* LATENCY_TOL = 0.02: without the benchmark's own noise verdict, merged LoRA "adds no latency" when its median
  paired ratio to the base model is within 2%.
* MEM_REDUCTION_MIN = 0.2, CKPT_FRACTION_MAX = 0.01: "less training memory" = peak memory at least 20% below full
  fine-tuning's; "much smaller checkpoints" = the LoRA file at most 1% of the full model's.
* SWITCH_SPEEDUP_MIN = 2.0: "fast task switching" = swapping LoRA weights at least 2x faster than loading the full
  fine-tuned checkpoint from disk (cold page cache), for every model measured.
* STEP_SPEEDUP_MIN = 1.1: "faster training" = a LoRA training step at least 10% faster than full fine-tuning's
  (the paper: 25% higher throughput on GPT-3).
* PHI_TOP_MIN = 0.5, RANDOM_FACTOR = 10: Figure 3's "top directions overlap" = φ(1,1) between A_{r=small} and
  A_{r=large} above 0.5 at the middle layer (the paper: "> 0.5"); Figure 4's seed overlap = φ(1,1) between two seeds
  at least 10x the random-subspace expectation.
* AMPLIFICATION_MIN = 5: Table 7's "ΔW amplifies" = ‖ΔW‖_F / ‖UᵀWV‖_F of at least 5 at the smallest r (the paper:
  21.5 at r = 4, about 2 at r = 64).
* NLG (Table 3, Table 14): LoRA vs FT on E2E by BLEU with MATCH_PTS / PARTLY_PTS as above; on WebNLG "generalises
  to unseen categories" = LoRA's BLEU on the unseen categories within MATCH_PTS of FT's or above; below that but
  with a smaller drop from seen to unseen than FT's is "partly".
* DROP_PTS = 1.0: Figure 2's "quality falls with prefix length" = the longest prefix scores more than one point below
  the best shorter one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from repro import CONF_DIR
from repro import records as rec
from repro import tables, tune

REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "partly", "not reproduced", "not testable here"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_TESTABLE)

MATCH_PTS = 1.0
PARTLY_PTS = 3.0
SIMILAR_BUDGET = 3.0
SMALL_R = 2
LATENCY_TOL = 0.02
MEM_REDUCTION_MIN = 0.2
CKPT_FRACTION_MAX = 0.01
SWITCH_SPEEDUP_MIN = 2.0
STEP_SPEEDUP_MIN = 1.1
PHI_TOP_MIN = 0.5
RANDOM_FACTOR = 10.0
AMPLIFICATION_MIN = 5.0
DROP_PTS = 1.0

GLUE_TABLES = ("glue", "glue_cpu")            # paper-sized first, then the CPU stand-in (each: `_tuned` first)
E2E_TABLES = ("e2e", "e2e_cpu")                # paper-sized first, then the CPU stand-in (SmolLM2-135M)
WEBNLG_TABLES = ("webnlg", "webnlg_cpu")
NLG_TABLES = (*E2E_TABLES, *WEBNLG_TABLES, "dart")
ADAPTERS = ("adapter_h", "adapter_l", "adapter_p", "adapter_d")
PREFIXES = ("prefix_embed", "prefix_layer")


@dataclass
class Claim:
    id: str
    title: str
    where: str              # where the paper makes it
    paper: str              # what the paper measured
    ours: str = "-"         # what this suite measured
    verdict: str = NOT_TESTABLE
    reason: str = ""
    source: str = ""        # which table / benchmark / analysis file was used, and why
    evidence: list[str] = field(default_factory=list)   # files the numbers come from


# ---------------------------------------------------------------- evidence


@dataclass
class Evidence:
    results_dir: Path
    records: dict[str, list[tuple[str, dict]]]   # table -> its ok records (path, record), random-weight models kept
    excluded: Counter                            # table -> records with status != ok
    bench: dict[str, tuple[str, dict]]           # bench file stem -> (path, json)
    analysis: dict[str, tuple[str, dict]]        # path under analysis/ -> (path, json)
    unfinished: dict[str, str] = field(default_factory=dict)   # tuned table -> why it is not used yet (tuning_unfinished)


def tuning_choice(table: str, pairs: list[tuple[str, dict]]) -> tuple[dict, dict] | None:
    """(table config, tune.choices over these records) for a table with tune groups (repro/tune.py); None for any
    other table, or a results folder with no table config."""
    try:
        config = tables.load_table_config(table)
    except (SystemExit, OSError, KeyError, ValueError):
        return None
    if tune.selection_seed(config) is None:
        return None
    by_cell = tables.records_by_cell(pairs)
    return config, tune.choices(config, config["tasks"], lambda *key: tables.selection_score(by_cell, *key))


def tuning_unfinished(table: str, pairs: list[tuple[str, dict]]) -> str | None:
    """A table with tune groups is evidence only once its tuning is decided for every (group, task) of the table and
    the chosen candidates have run every seed: a half-run tuned grid (say one task of five, or the selection seed
    alone, whose score is the best of its candidates on the same dev set) would otherwise stand for the whole
    comparison. Returns why not, or None (finished, or not a tuned table)."""
    tuned = tuning_choice(table, pairs)
    if tuned is None:
        return None
    config, choice = tuned
    undecided = sum(c[0] is None for c in choice.values())
    if undecided:
        return f"tuning not finished ({undecided} of {len(choice)} (row, task) choices undecided)"
    have = {(r.get("model"), r.get("method"), r.get("variant", "default"), r.get("task"), r.get("seed")) for _, r in pairs}
    seeds_of = {(row["model"], row["method"], row.get("variant", "default")): row.get("seeds") or config.get("seeds") or [0]
                for row in config["rows"]}
    wanted = [(model, method, chosen, task, seed) for (model, method, _, task), (chosen, _, _) in choice.items()
              for seed in seeds_of[(model, method, chosen)]]
    missing = sum(key not in have for key in wanted)
    return f"tuning not finished (the chosen candidates' seeds: {missing} of {len(wanted)} not run)" if missing else None


def chosen_candidates(table: str, pairs: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """A table with tune groups (repro/tune.py): the chosen candidate's records per task, as the row's (variant
    "default"), and none of the other candidates'; other tables: every record."""
    tuned = tuning_choice(table, pairs)
    if tuned is None:
        return pairs
    config, choice = tuned
    out = []
    for path, r in pairs:
        group = tune.group_of(config, r.get("model"), r.get("method"), r.get("variant", "default"))
        if group is None:
            out.append((path, r))
        elif choice.get((*group, r.get("task")), (None,))[0] == r.get("variant"):
            out.append((path, {**r, "variant": "default"}))
    return out


def load_evidence(results_dir: str | Path) -> Evidence:
    root = Path(results_dir)
    records: dict[str, list] = {}
    excluded: Counter = Counter()
    found: dict[str, list] = {}
    for path, r in rec.iter_records(root):
        parts = path.relative_to(root).parts
        if len(parts) == 5:     # <table>/<model>/<method>/<task>/seed<k>.json only
            found.setdefault(parts[0], []).append((str(path), r))
    unfinished = {}
    for table, pairs in found.items():
        records[table] = []
        if (why := tuning_unfinished(table, pairs)):
            unfinished[table] = why
        for path, r in chosen_candidates(table, pairs):
            if r.get("status") == "ok":
                records[table].append((path, r))
            else:
                excluded[table] += 1

    def load_dir(folder: Path, pattern: str) -> dict:
        out = {}
        for p in sorted(folder.glob(pattern)) if folder.is_dir() else []:
            try:
                out[str(p.relative_to(folder).with_suffix(""))] = (str(p), json.loads(p.read_text()))
            except (json.JSONDecodeError, OSError):
                continue
        return out

    return Evidence(root, records, excluded, load_dir(root / "bench", "*.json"), load_dir(root / "analysis", "**/*.json"),
                    unfinished)


_MODEL_SOURCE: dict[str, str | None] = {}


def random_weights(model: str) -> bool:
    if model not in _MODEL_SOURCE:
        path = CONF_DIR / "model" / f"{model}.yaml"
        _MODEL_SOURCE[model] = (yaml.safe_load(path.read_text()) or {}).get("source") if path.exists() else None
    return _MODEL_SOURCE[model] == "tiny"


def paper(name: str) -> dict:
    """A paper file of repro/paper/ through repro.tables' loader."""
    return tables.load_paper({"paper": name}) or {}


def paper_glue_row(model: str, label: str) -> dict | None:
    return tables.paper_row(paper("table2_glue.yaml"), {"model": model, "label": label})


@dataclass
class Cell:
    scores: list[float]
    paths: list[str]
    params: int | None     # trainable parameters of the method (adapter_params; all trainable for FT)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)


def cells(ev: Evidence, table: str) -> dict[tuple, Cell]:
    """(model, method, variant, task) -> Cell of the table's ok records on pretrained models."""
    out: dict[tuple, Cell] = {}
    for path, r in ev.records.get(table, []):
        score = tables.record_score(r)
        if score is None or random_weights(r.get("model", "")):
            continue
        key = (r.get("model"), r.get("method"), r.get("variant", "default"), r.get("task"))
        c = out.setdefault(key, Cell([], [], None))
        c.scores.append(score)
        c.paths.append(path)
        params = r.get("trainable_params") if r.get("method") == "ft" else r.get("adapter_params")
        if params is not None:
            c.params = params
    return out


@dataclass
class Pair:
    """Two rows of one table on one model, over the tasks both have."""
    table: str
    model: str
    tasks: list[str]
    a: dict[str, Cell]
    b: dict[str, Cell]

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
    def paths(self) -> list[str]:
        return [p for t in self.tasks for c in (self.a[t], self.b[t]) for p in c.paths]

    def side_paths(self, side: str) -> list[str]:
        """The record paths of one side ("a" or "b") over the common tasks."""
        return [p for t in self.tasks for p in getattr(self, side)[t].paths]

    def params(self, side: str) -> int | None:
        vals = [c.params for c in getattr(self, side).values() if c.params is not None]
        return int(statistics.median(vals)) if vals else None

    def per_task(self) -> str:
        return ", ".join(f"{t} {self.a[t].mean:.1f} vs {self.b[t].mean:.1f}" for t in self.tasks)


def compare(ev: Evidence, table: str, a: tuple[str, str], b: tuple[str, str]) -> Pair | None:
    """Rows a and b, each (method, variant), on the model that has the most tasks in common."""
    cs = cells(ev, table)
    best = None
    for model in sorted({k[0] for k in cs}):
        ta = {k[3]: c for k, c in cs.items() if k[:3] == (model, *a)}
        tb = {k[3]: c for k, c in cs.items() if k[:3] == (model, *b)}
        common = sorted(set(ta) & set(tb))
        if common and (best is None or len(common) > len(best.tasks)):
            best = Pair(table, model, common, {t: ta[t] for t in common}, {t: tb[t] for t in common})
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


def fmt_params(n) -> str:
    return tables.fmt_params(n)


# ---------------------------------------------------------------- claims: quality (Tables 2, 3, 5, 6; Figure 2)


def lora_vs_ft(ev: Evidence, c: Claim, bases, where: str) -> tuple[str | None, Pair | None]:
    """The first table of `bases` with LoRA and FT rows (default variants) on one model: (table, pair). Sets the
    claim's source; with no such table, its reason ("no LoRA and FT records on <where>")."""
    table, pair, note = pick(ev, bases, lambda t: compare(ev, t, ("lora", "default"), ("ft", "default")))
    c.source = note
    if not pair:
        c.reason = f"no LoRA and FT records on {where} ({note})"
    return table, pair


def paper_lora_ft(name: str) -> dict[tuple[str, str], dict]:
    """(model, "LoRA" | "FT") -> the paper file's row."""
    return {(r["model"], r["method"]): r for r in paper(name).get("rows", []) if r["method"] in ("LoRA", "FT")}


def claim_lora_matches_ft(ev: Evidence) -> Claim:
    rows = [(m, paper_glue_row(m, "LoRA"), paper_glue_row(m, "FT*")) for m in ("roberta-base", "roberta-large", "deberta-v2-xxlarge")]
    c = Claim("lora_matches_ft", "LoRA matches or beats full fine-tuning on GLUE with a fraction of the trainable parameters",
              "Section 5.2-5.3, Table 2",
              "; ".join(f"{m}: LoRA {lo['params']} {lo['values'][-1]} vs FT {ft['params']} {ft['values'][-1]} (GLUE avg)"
                        for m, lo, ft in rows if lo and ft))
    table, pair = lora_vs_ft(ev, c, GLUE_TABLES, "the same pretrained model and task")
    if not pair:
        return c
    lp, fp = pair.params("a"), pair.params("b")
    frac = f", {100 * lp / fp:.2f}% of FT's trainable parameters ({fmt_params(lp)} vs {fmt_params(fp)})" if lp and fp else ""
    wins = [t for t in pair.tasks if pair.a[t].mean >= pair.b[t].mean - MATCH_PTS]
    c.ours = (f"{pair.model} on {table}: LoRA {pair.a_avg:.1f} vs FT {pair.b_avg:.1f} avg over {len(pair.tasks)} tasks "
              f"(Δ {pair.margin:+.1f}){frac}; per task LoRA vs FT: {pair.per_task()}")
    c.evidence = pair.paths
    if pair.margin >= -MATCH_PTS:
        c.verdict, c.reason = REPRODUCED, f"LoRA's average is within {MATCH_PTS} point of FT's or above it"
    elif pair.margin >= -PARTLY_PTS or wins:
        c.verdict = PARTLY
        c.reason = (f"LoRA's average is {-pair.margin:.1f} points below FT's (more than {MATCH_PTS}, at most {PARTLY_PTS}); "
                    f"it matches or beats FT on {len(wins)} of {len(pair.tasks)} tasks ({', '.join(wins) or 'none'})")
    else:
        c.verdict, c.reason = NOT_REPRODUCED, f"LoRA's average is {-pair.margin:.1f} points below FT's, on every task"
    return c


def metric_mean(ev: Evidence, table: str, paths: list[str], metric: str, scale: float = 100.0) -> float | None:
    """The mean of one metric (× scale) over these records of a table (e.g. WebNLG's BLEU_unseen); None when a
    record lacks it."""
    by_path = dict(ev.records.get(table, []))
    vals = [(by_path[p].get("metrics") or {}).get(metric) for p in paths]
    return None if not vals or None in vals else scale * statistics.fmean(vals)


def claim_lora_matches_ft_nlg(ev: Evidence) -> Claim:
    rows = paper_lora_ft("table3_e2e.yaml")
    c = Claim("lora_matches_ft_nlg", "LoRA matches or beats full fine-tuning on E2E NLG", "Section 5.4, Table 3",
              "; ".join(f"{m}: LoRA {rows[(m, 'LoRA')]['params']} {rows[(m, 'LoRA')]['values'][0]} vs FT* "
                        f"{rows[(m, 'FT')]['params']} {rows[(m, 'FT')]['values'][0]} (BLEU)"
                        for m in ("gpt2-medium", "gpt2-large") if (m, "LoRA") in rows and (m, "FT") in rows))
    table, pair = lora_vs_ft(ev, c, E2E_TABLES, "E2E on the same pretrained model")
    if not pair:
        return c
    others = []   # the table's other printed columns (render.columns: NIST, MET, ROUGE-L, CIDEr at the paper's scale)
    for col in tables.table_columns(tables.load_table_config(table), None):
        if col.metric and col.metric != tables.main_metric(col.task):
            a, b = (metric_mean(ev, table, pair.side_paths(k), col.metric, col.scale) for k in ("a", "b"))
            if a is not None and b is not None:
                others.append(f"{col.name} {a:.{col.digits}f} vs {b:.{col.digits}f}")
    lp, fp = pair.params("a"), pair.params("b")
    c.ours = (f"{pair.model} on {table}: LoRA {fmt_params(lp)} BLEU {pair.a_avg:.1f} vs FT {fmt_params(fp)} "
              f"{pair.b_avg:.1f} (Δ {pair.margin:+.1f}; seeds {len(pair.a[pair.tasks[0]].scores)} vs "
              f"{len(pair.b[pair.tasks[0]].scores)})" + (f"; {', '.join(others)}" if others else ""))
    c.evidence = pair.paths
    if pair.margin >= -MATCH_PTS:
        c.verdict, c.reason = REPRODUCED, f"LoRA's BLEU is within {MATCH_PTS} point of FT's or above it"
    elif pair.margin >= -PARTLY_PTS:
        c.verdict, c.reason = PARTLY, f"LoRA's BLEU is {-pair.margin:.1f} points below FT's (more than {MATCH_PTS}, at most {PARTLY_PTS})"
    else:
        c.verdict, c.reason = NOT_REPRODUCED, f"LoRA's BLEU is {-pair.margin:.1f} points below FT's"
    return c


def claim_lora_generalizes_unseen(ev: Evidence) -> Claim:
    rows = paper_lora_ft("table14_webnlg.yaml")
    c = Claim("lora_generalizes_unseen", "On WebNLG, LoRA generalises to unseen categories at least as well as FT",
              "Appendix F.1, Table 14",
              "; ".join(f"{m}: BLEU unseen/seen LoRA {rows[(m, 'LoRA')]['BLEU'][0]}/{rows[(m, 'LoRA')]['BLEU'][1]} vs FT "
                        f"{rows[(m, 'FT')]['BLEU'][0]}/{rows[(m, 'FT')]['BLEU'][1]}"
                        for m in ("gpt2-medium", "gpt2-large") if (m, "LoRA") in rows and (m, "FT") in rows))
    table, pair = lora_vs_ft(ev, c, WEBNLG_TABLES, "WebNLG on the same pretrained model")
    if not pair:
        return c
    (lu, ls), (fu, fs) = [[metric_mean(ev, table, pair.side_paths(k), m) for m in ("BLEU_unseen", "BLEU_seen")] for k in ("a", "b")]
    c.evidence = pair.paths
    if None in (lu, ls, fu, fs):
        c.reason = f"the {table} records lack BLEU on the seen/unseen split (BLEU_seen, BLEU_unseen)"
        return c
    c.ours = (f"{pair.model} on {table}: BLEU unseen / seen / all: LoRA {lu:.1f} / {ls:.1f} / {pair.a_avg:.1f} vs FT "
              f"{fu:.1f} / {fs:.1f} / {pair.b_avg:.1f}; drop from seen to unseen: LoRA {ls - lu:.1f}, FT {fs - fu:.1f}")
    if lu >= fu - MATCH_PTS:
        c.verdict, c.reason = REPRODUCED, f"LoRA's unseen BLEU is within {MATCH_PTS} point of FT's or above it"
    elif ls - lu < fs - fu:
        c.verdict, c.reason = PARTLY, (f"LoRA's unseen BLEU is {fu - lu:.1f} below FT's, but it loses less from seen to "
                                       f"unseen ({ls - lu:.1f} against {fs - fu:.1f})")
    else:
        c.verdict, c.reason = NOT_REPRODUCED, (f"LoRA's unseen BLEU is {fu - lu:.1f} below FT's and it loses more from "
                                               f"seen to unseen ({ls - lu:.1f} against {fs - fu:.1f})")
    return c


def claim_lora_beats_adapters_prefix(ev: Evidence) -> Claim:
    t2, t3 = paper("table2_glue.yaml"), paper("table3_e2e.yaml")
    large = [r for r in t2.get("rows", []) if r["model"] == "roberta-large" and r.get("marker") == "†"]
    med = [r for r in t3.get("rows", []) if r["model"] == "gpt2-medium" and r["method"] in ("LoRA", "AdapterL", "AdapterH", "PreLayer")]
    c = Claim("lora_beats_adapters_prefix", "LoRA beats adapters and prefix tuning at a similar parameter budget",
              "Sections 5.2 and 5.4, Tables 2 and 3",
              "Table 2 (RoBERTa large †, GLUE avg): " + ", ".join(f"{r['method']} {r['params']} {r['values'][-1]}" for r in large)
              + "; Table 3 (GPT-2 M, E2E BLEU): " + ", ".join(f"{r['method']} {r['params']} {r['values'][0]}" for r in med))
    comps, notes = [], []
    for bases in (GLUE_TABLES, NLG_TABLES):
        def usable(t):
            return [(m, p) for m in ADAPTERS + PREFIXES if (p := compare(ev, t, ("lora", "default"), (m, "default")))]
        _, found, note = pick(ev, bases, usable)
        notes.append(note)
        for m, p in found or []:
            lp, bp = p.params("a"), p.params("b")
            comps.append((m, p, lp, bp, bool(lp and bp and max(lp, bp) / min(lp, bp) <= SIMILAR_BUDGET)))
    c.source = " | ".join(notes)
    similar = [x for x in comps if x[4]]
    if not similar:
        c.reason = ("no LoRA and adapter/prefix records on the same pretrained model and task"
                    + (f" within {SIMILAR_BUDGET}x of LoRA's budget" if comps else "") + f" ({c.source})")
        return c
    c.ours = "; ".join(f"{p.model} on {p.table}: LoRA {fmt_params(lp)} {p.a_avg:.1f} vs {m} {fmt_params(bp)} {p.b_avg:.1f} "
                       f"(Δ {p.margin:+.1f}, {len(p.tasks)} tasks)" + ("" if sim else " [budget not similar: not counted]")
                       for m, p, lp, bp, sim in comps)
    c.evidence = sorted({path for _, p, *_ in similar for path in p.paths})
    beaten = [m for m, p, *_ in similar if p.margin > 0]
    lost = [m for m, p, *_ in similar if p.margin <= 0]
    families = {"adapters": any(m in ADAPTERS for m, *_ in similar), "prefix tuning": any(m in PREFIXES for m, *_ in similar)}
    untested = [f for f, ok in families.items() if not ok]
    if not lost and not untested:
        c.verdict, c.reason = REPRODUCED, f"LoRA's average beats every baseline at a similar budget ({', '.join(beaten)})"
    elif beaten or all(p.margin > -MATCH_PTS for _, p, *_ in similar):
        c.verdict = PARTLY
        c.reason = (f"LoRA beats {', '.join(beaten) or 'none'}" + (f", not {', '.join(lost)}" if lost else "")
                    + (f"; {' and '.join(untested)} not tested (no records beside LoRA's)" if untested else ""))
    else:
        c.verdict, c.reason = NOT_REPRODUCED, f"LoRA's average is below every baseline at a similar budget ({', '.join(lost)})"
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


def claim_qv_beats_single(ev: Evidence) -> Claim:
    t5 = paper("table5_6_ablations.yaml").get("table5_which_weights", {})
    cols = [("+".join(w.replace("W_", "") for w in col["weights"]), col["r"]) for col in t5.get("columns", [])]
    c = Claim("qv_beats_single", "Adapting W_q and W_v together beats spending the same budget on one weight type",
              "Section 7.1, Table 5",
              "GPT-3, 18M budget, WikiSQL / MultiNLI: " + ", ".join(f"{w} r={r} {a}/{b}" for (w, r), a, b in
                                                                     zip(cols, t5.get("WikiSQL", []), t5.get("MultiNLI", []))))
    singles = ("q_r8", "k_r8", "v_r8", "o_r8")

    def usable(t):
        vs = _variants(cells(ev, t))
        out = []
        for (model, variant), by_task in vs.items():
            if variant in singles and (model, "qv_r4") in vs:
                tasks = sorted(set(by_task) & set(vs[(model, "qv_r4")]))
                if tasks:
                    out.append((model, variant, tasks))
        return out

    table, found, note = pick(ev, ("which_weights", "rank"), usable)
    c.source = note + (" (rank table: same budget rows q_r8 vs qv_r4)" if table and table.startswith("rank") else "")
    if not found:
        c.reason = f"no LoRA records of W_q,W_v r=4 beside a single weight type at r=8 on the same task ({note})"
        return c
    cs = cells(ev, table)
    comps = []
    for model, variant, tasks in found:
        qv, single = _lora_avg(cs, model, "qv_r4", tasks), _lora_avg(cs, model, variant, tasks)
        comps.append((variant, qv - single, qv, single, tasks, model))
        c.evidence += [p for t in tasks for v in ("qv_r4", variant) for p in cs[(model, "lora", v, t)].paths]
    c.evidence = sorted(set(c.evidence))
    c.ours = "; ".join(f"{m} on {table}: W_q,W_v r=4 {qv:.1f} vs W_{v[0]} r=8 {s:.1f} (Δ {d:+.1f}; {', '.join(ts)})"
                       for v, d, qv, s, ts, m in comps)
    beaten = [v for v, d, *_ in comps if d > 0]
    missing = [s for s in singles if s not in {v for v, *_ in comps}]
    if len(beaten) == len(comps) and not missing:
        c.verdict, c.reason = REPRODUCED, "W_q,W_v beats every single weight type at the same budget"
    elif beaten or all(d > -MATCH_PTS for _, d, *_ in comps):
        c.verdict = PARTLY
        c.reason = (f"W_q,W_v beats {', '.join(beaten) or 'none'} of the single types compared"
                    + (f"; not run: {', '.join(missing)}" if missing else ""))
    else:
        c.verdict, c.reason = NOT_REPRODUCED, "every single weight type compared beats or ties W_q,W_v"
    return c


def claim_small_rank_suffices(ev: Evidence) -> Claim:
    t6 = paper("table5_6_ablations.yaml").get("table6_rank", {})
    ranks = t6.get("ranks", [])
    c = Claim("small_rank_suffices", "A very small rank r suffices (r = 1 for W_q, W_v)", "Section 7.2, Table 6",
              "GPT-3, W_q,W_v, r = " + "/".join(map(str, ranks)) + ": WikiSQL " + "/".join(map(str, t6.get("WikiSQL", {}).get("W_q,W_v", [])))
              + ", MultiNLI " + "/".join(map(str, t6.get("MultiNLI", {}).get("W_q,W_v", []))))

    def family(t, fam="qv"):
        """(model, {r: avg}, tasks, paths) for the model with the most ranks of this family on common tasks."""
        cs = cells(ev, t)
        best = None
        for model in sorted({k[0] for k in cs}):
            by_r = {int(v.split("_r")[1]): tasks for (m, v), tasks in _variants(cs).items()
                    if m == model and v.startswith(fam + "_r") and v.split("_r")[1].isdigit()}
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
        c.reason = (f"the smallest rank within {MATCH_PTS} point of the best is r={enough}; "
                    + ("r ≤ 2 not run" if not tiny else f"r ≤ {SMALL_R} falls short by more than {MATCH_PTS}"))
    else:
        c.verdict, c.reason = NOT_REPRODUCED, f"only r={enough} comes within {MATCH_PTS} point of the best rank"
    return c


def prefix_length(record: dict) -> int | None:
    m = (record.get("config") or {}).get("method") or {}
    return None if m.get("l_p") is None else int(m.get("l_p", 0)) + int(m.get("l_i") or 0)


def claim_prefix_length_hurts(ev: Evidence) -> Claim:
    t15 = paper("table4_gpt3.yaml").get("table15_gpt3_sweep", {})
    pe = [r for r in t15.get("rows", []) if r["method"] == "PrefixEmbed"]
    pl = [r for r in t15.get("rows", []) if r["method"] == "PrefixLayer"]
    c = Claim("prefix_length_hurts", "Prefix tuning's quality falls when its prefix grows long",
              "Section 5.5, Figure 2 (its data: Table 15)",
              "GPT-3 WikiSQL: PrefixEmbed l_p+l_i " + ", ".join(f"{r['config']['l_p'] + r['config']['l_i']}: {r['values'][0]}" for r in pe)
              + "; PrefixLayer " + ", ".join(f"{r['config']['l_p'] + r['config']['l_i']}: {r['values'][0]}" for r in pl))
    groups: dict[tuple, dict[int, list]] = {}
    for table, recs in sorted(ev.records.items()):
        for path, r in recs:
            n, score = prefix_length(r), tables.record_score(r)
            if r.get("method") in PREFIXES and n is not None and score is not None and not random_weights(r.get("model", "")):
                groups.setdefault((table, r["model"], r["method"], r["task"]), {}).setdefault(n, []).append((score, path))
    sweeps = {k: v for k, v in groups.items() if len(v) >= 2}
    c.source = "prefix_embed / prefix_layer records of every table, grouped by (table, model, method, task) over l_p + l_i"
    if not sweeps:
        c.reason = ("no prefix-tuning records at two or more prefix lengths on the same model and task (prefix tuning "
                    "runs on decoders only; no length sweep has been run)")
        return c
    falls, parts = [], []
    for key, by_n in sorted(sweeps.items()):
        means = {n: statistics.fmean(s for s, _ in v) for n, v in sorted(by_n.items())}
        longest = max(means)
        drop = max(v for n, v in means.items() if n < longest) - means[longest]
        falls.append(drop > DROP_PTS)
        parts.append(f"{key[1]} {key[2]} {key[3]} on {key[0]}: " + ", ".join(f"{n}: {v:.1f}" for n, v in means.items())
                     + f" (longest {drop:+.1f} below the best shorter)")
        c.evidence += [p for v in by_n.values() for _, p in v]
    c.ours = "; ".join(parts)
    c.evidence = sorted(set(c.evidence))
    if all(falls):
        c.verdict, c.reason = REPRODUCED, f"the longest prefix scores more than {DROP_PTS} point below a shorter one in every sweep"
    elif any(falls):
        c.verdict, c.reason = PARTLY, f"quality falls at the longest prefix in {sum(falls)} of {len(falls)} sweeps"
    else:
        c.verdict, c.reason = NOT_REPRODUCED, "the longest prefix is within a point of, or above, every shorter one"
    return c


# ---------------------------------------------------------------- claims: efficiency (Table 1, Section 4)


def latency_cells(ev: Evidence) -> dict[tuple[int, int], tuple[str, dict]]:
    """(batch, seq) -> (file, cell) over every bench/latency*.json; the measured cell with the most rounds wins."""
    out: dict = {}
    for stem, (path, data) in sorted(ev.bench.items()):
        if not stem.startswith("latency") or data.get("benchmark") != "latency":
            continue
        for cell in data.get("cells", []):
            if cell.get("skipped") or not cell.get("variants"):
                continue
            key = (cell["batch_size"], cell["seq_len"])
            if key not in out or cell.get("rounds", 0) > out[key][1].get("rounds", 0):
                out[key] = (path, cell)
    return dict(sorted(out.items(), key=lambda kv: (-kv[0][0], -kv[0][1])))


def _ratio(cell: dict, variant: str) -> dict:
    return (cell["variants"].get(variant) or {}).get("paired_ratio") or {}


def claim_no_latency_merged(ev: Evidence) -> Claim:
    t1 = paper("table1_latency.yaml")
    c = Claim("no_latency_merged", "A merged LoRA model adds no inference latency", "Section 4.1, Table 1",
              f"{t1.get('model')}: one 'Fine-Tune/LoRA' row, " + ", ".join(
                  f"{col['batch_size']}x{col['seq_len']}: {v} ms" for col, v in zip(t1.get("columns", []), t1["rows"][0]["latency_ms"]))
              if t1 else "Table 1")
    lc = {k: v for k, v in latency_cells(ev).items() if "lora_merged" in v[1]["variants"]}
    if not lc:
        c.reason = "no latency benchmark with a merged-LoRA variant (results/bench/latency*.json)"
        return c
    ok, parts = [], []
    for (b, s), (path, cell) in lc.items():
        r = _ratio(cell, "lora_merged")
        flag = (cell.get("noise") or {}).get("lora_merged_within_noise")
        within = flag if flag is not None else abs(r.get("median", 1.0) - 1) <= LATENCY_TOL
        ok.append(within)
        un = _ratio(cell, "lora_unmerged").get("median")
        parts.append(f"{b}x{s}: merged/base {r.get('median', float('nan')):.3f} (IQR {r.get('q1', float('nan')):.3f}-"
                     f"{r.get('q3', float('nan')):.3f}, {cell.get('rounds')} rounds, {'within' if within else 'outside'} noise)"
                     + (f", unmerged/base {un:.3f}" if un else ""))
        c.evidence.append(path)
    data = ev.bench[Path(next(iter(lc.values()))[0]).stem][1]
    c.ours = f"{data.get('model')} on {data.get('machine', {}).get('device', '?')}, paired ratios to the base model: " + "; ".join(parts)
    c.evidence = sorted(set(c.evidence))
    c.source = "bench latency files (per shape, the measurement with the most rounds); noise verdict: the benchmark's own"
    if all(ok):
        c.verdict, c.reason = REPRODUCED, "merged LoRA's latency is within the measurement noise of the base model at every shape"
    elif any(ok):
        bad = [f"{b}x{s}" for ((b, s), _), o in zip(lc.items(), ok) if not o]
        c.verdict, c.reason = PARTLY, f"within noise at {sum(ok)} of {len(ok)} shapes; outside at {', '.join(bad)}"
    else:
        c.verdict, c.reason = NOT_REPRODUCED, "merged LoRA is slower than the base model beyond the noise at every shape"
    return c


def claim_adapters_add_latency(ev: Evidence) -> Claim:
    t1 = paper("table1_latency.yaml")
    c = Claim("adapters_add_latency", "Adapter layers add inference latency, most at small batch and short sequences",
              "Section 3, Table 1",
              "GPT-2 M slow-down vs no adapter: " + "; ".join(
                  f"{r['method']} " + "/".join(f"+{p}%" for p in r["slowdown_pct"]) for r in t1.get("rows", [])[1:])
              + " at " + ", ".join(f"{col['batch_size']}x{col['seq_len']}" for col in t1.get("columns", [])) if t1 else "Table 1")
    lc = latency_cells(ev)
    adapters = sorted({v for _, cell in lc.values() for v in cell["variants"] if v.startswith("adapter")})
    if not adapters:
        c.reason = "no latency benchmark with an adapter variant (results/bench/latency*.json)"
        return c
    adds, most_small, parts = [], [], []
    smallest = min(lc, key=lambda k: (k[0], k[1]))
    for a in adapters:
        ratios = {k: _ratio(cell, a) for k, (_, cell) in lc.items() if a in cell["variants"]}
        adds.append(all(r.get("q1", 0) > 1 for r in ratios.values()))
        most_small.append(smallest in ratios and ratios[smallest]["median"] == max(r["median"] for r in ratios.values()))
        parts.append(f"{a}: " + ", ".join(f"{b}x{s} {100 * (r['median'] - 1):+.1f}% (IQR {100 * (r['q1'] - 1):+.1f}..{100 * (r['q3'] - 1):+.1f})"
                                          for (b, s), r in ratios.items()))
    c.ours = "paired slow-down vs the base model: " + "; ".join(parts)
    c.evidence = sorted({p for p, _ in lc.values()})
    c.source = "bench latency files (per shape, the measurement with the most rounds)"
    if all(adds) and all(most_small):
        c.verdict = REPRODUCED
        c.reason = f"every adapter is slower than the base at every shape (lower quartile above 1) and slowest, relatively, at {smallest[0]}x{smallest[1]}"
    elif any(adds) or any(most_small):
        c.verdict = PARTLY
        c.reason = (f"slower beyond the quartiles at every shape: {sum(adds)} of {len(adds)} adapters; "
                    f"largest slow-down at the smallest batch: {sum(most_small)} of {len(most_small)}")
    else:
        c.verdict, c.reason = NOT_REPRODUCED, "adapters are not measurably slower than the base model"
    return c


def _bench_rows(ev: Evidence, name: str, key: str) -> tuple[str | None, dict]:
    """(path, {(model, method): row}) of the ok rows of bench/<name>.json."""
    if name not in ev.bench:
        return None, {}
    path, data = ev.bench[name]
    return path, {(r["model"], r["method"]): r for r in data.get(key, []) if r.get("status") == "ok"}


def claim_less_memory_smaller_checkpoints(ev: Evidence) -> Claim:
    eff = paper("hyperparameters.yaml").get("efficiency_claims", {})
    vram, ck = eff.get("gpt3_training_vram", {}), eff.get("gpt3_checkpoint", {})
    c = Claim("less_memory_smaller_checkpoints", "LoRA trains with less memory and stores much smaller checkpoints",
              "Section 4.2",
              f"GPT-3 175B: training VRAM {vram.get('full_ft')} (FT) -> {vram.get('lora')} (LoRA); checkpoint "
              f"{ck.get('full')} -> {ck.get('lora_r4_qv')} (r=4, W_q and W_v)")
    tpath, train = _bench_rows(ev, "train", "rows")
    spath, store = _bench_rows(ev, "storage", "checkpoints")
    mem, disk = [], []
    for model in sorted({m for m, _ in train}):
        ft, lo = train.get((model, "ft")), train.get((model, "lora"))
        if ft and lo:
            unit = "cuda_max_allocated_mb" if ft.get("cuda_max_allocated_mb") and lo.get("cuda_max_allocated_mb") else "peak_rss_mb"
            mem.append((model, lo[unit] / ft[unit], ft[unit], lo[unit], unit))
    for model in sorted({m for m, _ in store}):
        ft, lo = store.get((model, "ft")), store.get((model, "lora"))
        if ft and lo and ft.get("checkpoint_bytes") and lo.get("checkpoint_bytes"):
            disk.append((model, lo["checkpoint_bytes"] / ft["checkpoint_bytes"], ft["checkpoint_bytes"], lo["checkpoint_bytes"]))
    c.evidence = [p for p in (tpath, spath) if p and ((p == tpath and mem) or (p == spath and disk))]
    c.source = "bench/train.json (peak memory of a training step) and bench/storage.json (safetensors checkpoint sizes)"
    if not mem and not disk:
        c.reason = "no FT and LoRA rows in bench/train.json or bench/storage.json"
        return c
    c.ours = "; ".join([f"{m} training peak {'GPU' if u.startswith('cuda') else 'RSS'} {f:.0f} -> {lo:.0f} MB ({100 * (1 - x):.0f}% less)"
                        for m, x, f, lo, u in mem]
                       + [f"{m} checkpoint {f / 1e6:.1f} MB -> {lo / 1e6:.2f} MB ({f / lo:.0f}x smaller)" for m, x, f, lo in disk])
    mem_ok = bool(mem) and all(1 - x >= MEM_REDUCTION_MIN for _, x, *_ in mem)
    disk_ok = bool(disk) and all(x <= CKPT_FRACTION_MAX for _, x, *_ in disk)
    if mem_ok and disk_ok:
        c.verdict, c.reason = REPRODUCED, (f"peak training memory at least {100 * MEM_REDUCTION_MIN:.0f}% below FT's and "
                                           f"checkpoints at most {100 * CKPT_FRACTION_MAX:.0f}% of the full model, for every model measured")
    elif mem_ok or disk_ok:
        c.verdict = PARTLY
        c.reason = ("memory holds" if mem_ok else "memory does not hold or was not measured") + "; " + (
            "checkpoint size holds" if disk_ok else "checkpoint size does not hold or was not measured")
    else:
        c.verdict, c.reason = NOT_REPRODUCED, "neither the memory nor the checkpoint saving reaches its threshold"
    return c


def claim_fast_task_switching(ev: Evidence) -> Claim:
    c = Claim("fast_task_switching", "Switching tasks by swapping only the LoRA weights is fast", "Section 4.2",
              "no number: 'quickly switch between tasks ... by only swapping the LoRA weights as opposed to all the parameters'"
              " (GPT-3: 35MB vs 350GB per task)")
    path, data = ev.bench.get("storage", (None, {}))
    ts = [t for t in data.get("task_switch", []) if (t.get("cold") or {}).get("ft_over_lora")]
    if not ts:
        c.reason = "no task-switch measurement in bench/storage.json"
        return c
    c.evidence, c.source = [path], "bench/storage.json task_switch (median of the switches; cold = page cache dropped)"
    c.ours = "; ".join(f"{t['model']}: cold switch LoRA {t['cold']['lora']['median_ms']:.0f} ms vs FT reload "
                       f"{t['cold']['ft']['median_ms']:.0f} ms ({t['cold']['ft_over_lora']:.1f}x); warm "
                       f"{t['warm']['lora']['median_ms']:.0f} vs {t['warm']['ft']['median_ms']:.0f} ms ({t['warm']['ft_over_lora']:.1f}x)"
                       for t in ts)
    fast = [t["cold"]["ft_over_lora"] >= SWITCH_SPEEDUP_MIN for t in ts]
    if all(fast):
        c.verdict, c.reason = REPRODUCED, f"a cold switch is at least {SWITCH_SPEEDUP_MIN:.0f}x faster than loading the FT checkpoint for every model"
    elif any(fast) or all(t["cold"]["ft_over_lora"] > 1 for t in ts):
        c.verdict, c.reason = PARTLY, f"at least {SWITCH_SPEEDUP_MIN:.0f}x faster for {sum(fast)} of {len(fast)} models"
    else:
        c.verdict, c.reason = NOT_REPRODUCED, "swapping LoRA weights is not faster than loading the FT checkpoint"
    return c


def claim_faster_training(ev: Evidence) -> Claim:
    tp = paper("hyperparameters.yaml").get("efficiency_claims", {}).get("gpt3_training_throughput_tokens_per_s_per_v100", {})
    c = Claim("faster_training", "LoRA trains faster than full fine-tuning (no gradients for most parameters)", "Section 4.2",
              f"GPT-3 175B: {tp.get('lora')} vs {tp.get('full_ft')} tokens/s per V100 ({tp.get('speedup')} faster)")
    path, train = _bench_rows(ev, "train", "rows")
    pairs = [(m, train[(m, "ft")], train[(m, "lora")]) for m in sorted({m for m, _ in train})
             if (m, "ft") in train and (m, "lora") in train]
    if not pairs:
        c.reason = "no FT and LoRA rows in bench/train.json"
        return c
    c.evidence, c.source = [path], "bench/train.json (median step time, same batch and sequence length)"
    sp = [(m, ft["step"]["median_ms"] / lo["step"]["median_ms"], ft, lo) for m, ft, lo in pairs]
    c.ours = "; ".join(f"{m}: step {lo['step']['median_ms']:.0f} ms (LoRA) vs {ft['step']['median_ms']:.0f} ms (FT), "
                       f"{x:.2f}x, batch {lo.get('batch')}x{lo.get('seq')} on {ev.bench['train'][1].get('device')}" for m, x, ft, lo in sp)
    fast = [x >= STEP_SPEEDUP_MIN for _, x, *_ in sp]
    if all(fast):
        c.verdict, c.reason = REPRODUCED, f"a LoRA step is at least {STEP_SPEEDUP_MIN}x faster than FT's for every model"
    elif any(fast):
        c.verdict, c.reason = PARTLY, f"at least {STEP_SPEEDUP_MIN}x faster for {sum(fast)} of {len(fast)} models"
    else:
        c.verdict, c.reason = NOT_REPRODUCED, "a LoRA step is not faster than an FT step"
    return c


# ---------------------------------------------------------------- claims: Section 7 analysis (Figures 3/4, Table 7)


def analysis_reports(ev: Evidence) -> list[tuple[str, dict]]:
    return [(p, d) for name, (p, d) in sorted(ev.analysis.items()) if name.endswith("report") and "phi_small_vs_large_A" in d]


def claim_subspace_overlap(ev: Evidence) -> Claim:
    fig = paper("section7_analysis.yaml").get("figures", {})
    c = Claim("subspace_overlap", "The top singular directions of the learned A overlap across ranks and across seeds",
              "Section 7.2, Figures 3 and 4",
              "GPT-3 layer 48: " + " ".join(fig.get("figure3", {}).get("finding", "").split()) + " Seeds (Fig. 4): "
              + " ".join(fig.get("figure4", {}).get("finding", "").split()))
    reports = analysis_reports(ev)
    if not reports:
        c.reason = "no Section 7 report (results/analysis/*/report.json) with subspace similarities"
        return c
    parts, checks = [], []
    for path, d in reports:
        mid = f"{d['middle_layer_1based'] - 1}/"
        ranks = list(d.get("ranks", {}))
        ranks_txt = " vs ".join(f"r={r}" for r in ranks)
        large = {k[len(mid):]: v for k, v in d["phi_small_vs_large_A"].items() if k.startswith(mid)}
        for t, v in sorted(large.items()):
            checks.append(v["phi_1_1"] > PHI_TOP_MIN)
            parts.append(f"{Path(path).parent.name} layer {d['middle_layer_1based']}/{d['n_layers']} ΔW_{t}: φ(1,1) {ranks_txt} "
                         f"{v['phi_1_1']:.3f} (random {v['random_expect_1_1']:.4f})")
        layers = [v["phi_1_1"] > PHI_TOP_MIN for v in d["phi_small_vs_large_A"].values()]
        parts.append(f"φ(1,1) > {PHI_TOP_MIN} in {sum(layers)} of {len(layers)} (layer, matrix) pairs")
        for r, by in (d.get("phi_seeds") or {}).items():
            for t, v in sorted((k[len(mid):], v) for k, v in (by.get("A") or {}).items() if k.startswith(mid)):
                checks.append(v["phi_1_1"] >= RANDOM_FACTOR * v["random_expect_1_1"])
                parts.append(f"two seeds at {r}, ΔW_{t}: φ(1,1) {v['phi_1_1']:.3f} = {v['phi_1_1'] / v['random_expect_1_1']:.0f}x random")
            g = by.get("random_gaussian")
            if g:
                parts.append(f"two random Gaussian matrices: φ(1,1) {g['phi_1_1']:.4f}")
        c.evidence.append(path)
        c.evidence += [str(Path(x.split("`")[1]).with_suffix(".json")) for x in d.get("cells", []) if x.count("`") >= 2]
    c.ours = "; ".join(parts)
    c.source = "Section 7 report(s) under analysis/, middle layer (the paper's layer 48 of 96)"
    if all(checks):
        c.verdict = REPRODUCED
        c.reason = f"at the middle layer, φ(1,1) across ranks > {PHI_TOP_MIN} and across seeds ≥ {RANDOM_FACTOR:.0f}x random, for ΔW_q and ΔW_v"
    elif any(checks):
        c.verdict, c.reason = PARTLY, f"{sum(checks)} of {len(checks)} middle-layer checks hold (ranks: φ(1,1) > {PHI_TOP_MIN}; seeds: ≥ {RANDOM_FACTOR:.0f}x random)"
    else:
        c.verdict, c.reason = NOT_REPRODUCED, "the top directions overlap no more than the thresholds allow at the middle layer"
    return c


def claim_amplification(ev: Evidence) -> Claim:
    t7 = paper("section7_analysis.yaml").get("table7", {})
    rows = t7.get("rows", [])
    c = Claim("amplification", "ΔW amplifies directions that W does not emphasize", "Section 7.3, Table 7",
              "GPT-3 layer 48, ΔW_q: ‖UᵀWV‖_F with U,V from ΔW / W / random: "
              + "; ".join(f"r={r['r']}: {r['U,V from ΔW_q']} / {r['U,V from W_q']} / {r['U,V from random']}, ‖ΔW‖_F {r['||ΔW_q||_F']}"
                          for r in rows) + "; amplification factor ≈ 21.5 at r=4, ≈ 2 at r=64")
    reports = [(p, d) for p, d in analysis_reports(ev) if d.get("table7")]
    if not reports:
        c.reason = "no Section 7 report (results/analysis/*/report.json) with Table 7"
        return c
    parts, (not_top, above_random, amplified) = [], ([], [], [])
    for path, d in reports:
        mid = d["middle_layer_1based"] - 1
        by_r = {int(k[1:]): rows_ for k, rows_ in d["table7"].items()}
        for r, rows_ in sorted(by_r.items()):
            for row in rows_:
                if row["layer"] != mid:
                    continue
                parts.append(f"r={r} ΔW_{row['target']} layer {mid + 1}/{d['n_layers']}: {row['proj_dW']:.3f} / {row['proj_W']:.2f} / "
                             f"{row['proj_random']:.3f}, ‖ΔW‖_F {row['dW_fro']:.3f}, amplification {row['amplification']:.1f}")
                if row["target"] == "q":      # the paper's Table 7 is ΔW_q
                    not_top.append(row["proj_dW"] < row["proj_W"] / 2)
                    above_random.append(row["proj_dW"] > row["proj_random"])
                    if r == min(by_r):
                        amplified.append(row["amplification"] >= AMPLIFICATION_MIN)
        c.evidence.append(path)
    c.ours = "‖UᵀWV‖_F from ΔW / W / random: " + "; ".join(parts)
    c.source = "Section 7 report(s) under analysis/ (Table 7 at the middle layer; verdict on ΔW_q as in the paper)"
    subs = {"ΔW is not W's top directions (from ΔW < half of from W)": all(not_top) and bool(not_top),
            "ΔW correlates with W more than a random matrix does": all(above_random) and bool(above_random),
            f"amplification factor ≥ {AMPLIFICATION_MIN:.0f} at the smallest r": all(amplified) and bool(amplified)}
    held = [k for k, v in subs.items() if v]
    failed = [k for k, v in subs.items() if not v]
    if not failed:
        c.verdict, c.reason = REPRODUCED, "all three parts hold: " + "; ".join(held)
    elif held:
        c.verdict, c.reason = PARTLY, "holds: " + "; ".join(held) + ". Does not hold: " + "; ".join(failed)
    else:
        c.verdict, c.reason = NOT_REPRODUCED, "none holds: " + "; ".join(failed)
    return c


# ---------------------------------------------------------------- report

CLAIMS = [claim_lora_matches_ft, claim_lora_matches_ft_nlg, claim_lora_generalizes_unseen, claim_lora_beats_adapters_prefix, claim_qv_beats_single, claim_small_rank_suffices,
          claim_no_latency_merged, claim_adapters_add_latency, claim_less_memory_smaller_checkpoints,
          claim_fast_task_switching, claim_faster_training, claim_subspace_overlap, claim_amplification,
          claim_prefix_length_hurts]


def evaluate(ev: Evidence) -> list[Claim]:
    return [f(ev) for f in CLAIMS]


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _evidence_lines(paths: list[str], limit: int = 12) -> list[str]:
    if len(paths) <= limit:
        return [f"  - `{p}`" for p in paths]
    by_dir = Counter(str(Path(p).parent.parent.parent) for p in paths)
    return [f"  - `{d}/*/*/` ({n} files)" for d, n in sorted(by_dir.items())] + ["  - (every path is listed in claims.json)"]


def markdown(claims: list[Claim], ev: Evidence) -> str:
    counts = Counter(c.verdict for c in claims)
    out = ["# The paper's claims, checked against this suite's results", "",
           f"Generated by `python -m repro.claims` from the committed files under `{ev.results_dir}/` (records, "
           "benchmark JSONs, Section 7 reports); nothing is trained. The verdict rules and their thresholds are code, "
           "stated in the docstring of `repro/claims.py`: a claim with no evidence is \"not testable here\", never "
           "\"reproduced\". The paper's numbers come from `repro/paper/*.yaml`; ours are from smaller models on a CPU "
           "(MiniLM for RoBERTa, GPT-2 medium for the benchmarks), so verdicts are about the direction of each claim, "
           "not about matching the paper's values.", "",
           "Verdicts: " + ", ".join(f"{v} {counts[v]}" for v in VERDICTS if counts[v]) + ".", "",
           "Records read (only status `ok` counts; random-weight smoke models are not quality evidence): "
           + ", ".join(f"`{t}` {len(ev.records[t])} ok" + (f" + {ev.excluded[t]} excluded" if ev.excluded[t] else "")
                       for t in sorted(ev.records)) + ".", "",
           "| claim | where | paper | this suite | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        out.append(f"| **{c.id}**: {_cell(c.title)} | {_cell(c.where)} | {_cell(c.paper)} | {_cell(c.ours)} | **{c.verdict}** |")
    out += ["", "## Details", ""]
    for c in claims:
        out += [f"### {c.id}: {c.verdict}", "", f"{c.title} ({c.where}).", "",
                f"- verdict: **{c.verdict}**: {c.reason}",
                f"- source: {c.source or '-'}",
                f"- evidence ({len(c.evidence)} files):" + ("" if c.evidence else " none"),
                *_evidence_lines(c.evidence), ""]
    return "\n".join(out)


def write(results_dir: str | Path = "results", out: str | Path | None = None) -> tuple[list[Claim], list[Path]]:
    ev = load_evidence(results_dir)
    claims = evaluate(ev)
    stem = Path(out) if out else Path(results_dir) / "claims"
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(markdown(claims, ev))
    js.write_text(json.dumps({"results_dir": str(ev.results_dir),
                              "records": {t: {"ok": len(ev.records[t]), "excluded": ev.excluded[t]} for t in sorted(ev.records)},
                              "claims": [asdict(c) for c in claims]}, indent=1, ensure_ascii=False) + "\n")
    return claims, [md, js]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results-dir", default=None, help="default: $REPRO_RESULTS_DIR or results/")
    ap.add_argument("--out", default=None, help="output stem (default: <results-dir>/claims -> claims.md, claims.json)")
    args = ap.parse_args(argv)
    results_dir = args.results_dir or os.environ.get("REPRO_RESULTS_DIR") or "results"
    claims, paths = write(results_dir, args.out)
    for c in claims:
        print(f"{c.verdict:18} {c.id}")
    print("wrote " + ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
