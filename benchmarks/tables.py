"""Ratios derived from the measured sections and the printed table (benchmarks/README.md quotes it)."""

from __future__ import annotations

from harness import fmt_s, mem, short, worst
from sections import SCRIPTS


# ------------------------------------------------------------------------------- ratios
def usad_run_training_s(u: dict) -> float:
    """The training share of a usad.run that trained and evaluated: its wall time less its own logged
    evaluate and report steps (start-up, checks and the three trainings)."""
    return u["wall_s"] - u["steps"]["evaluate"] - u["steps"].get("report", 0.0)


def derive(res: dict) -> None:
    """Ratios from whatever parts the results hold (recomputed after every section)."""
    run = res.get("run", {})
    for p in ("fp32", "bf16"):
        part = run.get(p, {})
        if "floor" in part and "usad_run" in part:
            part["usad_run_over_floor"] = part["usad_run"]["wall_s"] / part["floor"]["wall_s"]
    fp32, scripts = run.get("fp32", {}), run.get("scripts")
    if scripts and "usad_run" in fp32:
        run["scripts_over_usad_run"] = scripts["total_s"] / fp32["usad_run"]["wall_s"]
    if scripts and "floor" in fp32:
        f = fp32["floor"]
        start = f["import_s"] + f["cuda_init_s"]
        run["scripts_train_overhead"] = scripts["train_s"] / (3 * start + f["build_s"] + f["train_forward_s"])
        run["scripts_eval_overhead"] = scripts["evaluate"]["wall_s"] / (start + f["build_s"] + f["test_forward_s"])
        run["scripts_eval_images_per_s"] = f["n_test"] / scripts["evaluate"]["wall_s"]
    bf16 = run.get("bf16", {})
    for part in ("floor", "usad_run"):
        if part in fp32 and part in bf16:
            run[f"bf16_speedup_{part}"] = fp32[part]["wall_s"] / bf16[part]["wall_s"]
    tenth = res.get("tenth", {})
    theirs = tenth.get("authors")
    if theirs:
        if "scripts" in tenth:
            s = tenth["scripts"]
            tenth["scripts_vs_authors"] = {"train_speedup": theirs["train_s"] / s["train_s"],
                                           "eval_speedup": theirs["eval_s"] / s["evaluate"]["wall_s"]}
        if "usad_run" in tenth:
            u = tenth["usad_run"]
            v = tenth["usad_run_vs_authors"] = {"total_speedup": (theirs["train_s"] + theirs["eval_s"]) / u["wall_s"],
                                                "eval_speedup": theirs["eval_s"] / u["evaluate_only"]["wall_s"]}
            if "evaluate" in u.get("steps", {}):
                v["train_speedup"] = theirs["train_s"] / usad_run_training_s(u)


def table(res: dict) -> str:
    rows = [("machine", res.get("machine", "(no section measured)"), "")]
    if res.get("env", {}).get("gpu"):
        rows.append(("GPU / torch / date", f"{res['env']['gpu']} / {res['env']['torch']} / {res['date']}", ""))
    for key, g in res.get("golden", {}).items():
        if key == "agreement_skipped":
            rows.append(("golden usad.run agreement", "skipped: " + g[:90], ""))
            continue
        if key == "startups":
            rows.append((f"fixture (tests/golden), {g['device']}: usad.run / four scripts",
                         f"{fmt_s(g['usad_run_s'])} / {fmt_s(g['scripts_s'])} = {g['usad_run_over_scripts']:.2f}", "<= 0.75"))
            continue
        if key.startswith("pytest_"):
            rows.append((f"golden tests, device={key[7:]}", f"exit {g['rc']}: {g['summary']}", "pass"))
            continue
        if "error" in g:
            rows.append((f"golden usad.run {key}", "FAILED: " + short(g["error"]), ""))
            continue
        diff = (f"; max |diff| to CPU fp32 {max(g['max_abs_diff_to_baseline'].values()):.2g}"
                if "max_abs_diff_to_baseline" in g else "")
        rows.append((f"golden usad.run {key}: worst Pearson / metric delta",
                     f"{g['worst_pearson']:.5f} / {g['worst_metric_delta']:.5f}{diff}", ">= 0.999 / <= 0.005"))
    run = res.get("run", {})
    if run:
        rows.append((f"run: scale {run['scale']} ({run['n_train']} / {run['n_test']}), {run['backbones']} backbones",
                     f"min of {run['repeat']}", ""))
    for p in ("fp32", "bf16"):
        part = run.get(p, {})
        if "floor" in part:
            f = part["floor"]
            rows.append((f"  floor {p}: wall (start-up = import+CUDA+builds; train fwd; test fwd)",
                         f"{fmt_s(f['wall_s'])} ({f['import_s'] + f['cuda_init_s'] + f['build_s']:.1f}; "
                         f"{f['train_forward_s']:.1f}; {f['test_forward_s']:.1f})", ""))
        if "usad_run" in part:
            rows.append((f"  python -m usad.run {p}", f"{fmt_s(part['usad_run']['wall_s'])}, {mem(part['usad_run'])}",
                         "<= 60 s (full, GPU); GPU <= 20 GB, RSS <= 16 GB"))
        if "usad_run_over_floor" in part:
            rows.append((f"  usad.run / floor {p}", f"{part['usad_run_over_floor']:.2f}", "<= 1.5"))
    if "scripts" in run:
        s = run["scripts"]
        walls = ", ".join(f"{s[k]['wall_s']:.1f}" for k in SCRIPTS)
        rows.append(("  four scripts (train x3 + test_fusion.py)",
                     f"{fmt_s(s['total_s'])} ({walls}); worst {mem(worst([s[k] for k in SCRIPTS]))}",
                     "<= 100 s (full, GPU)"))
    for key, label, target in (("scripts_over_usad_run", "four scripts / usad.run", ""),
                               ("scripts_train_overhead", "training scripts / (3 start-ups + builds + train fwd)", "<= 1.2 (CPU)"),
                               ("scripts_eval_overhead", "test_fusion.py / (start-up + builds + test fwd)", "<= 1.1 (CPU)"),
                               ("scripts_eval_images_per_s", "test_fusion.py images/s", ""),
                               ("bf16_speedup_floor", "floor fp32 / bf16", ""),
                               ("bf16_speedup_usad_run", "usad.run fp32 / bf16", "")):
        if key in run:
            rows.append((f"  {label}", f"{run[key]:.2f}", target))
    tenth = res.get("tenth", {})
    if tenth:
        rows.append((f"tenth: {tenth.get('scale', 'tenth')} ({tenth['n_train']} / {tenth['n_test']}), "
                     f"{tenth['backbones']} backbones", "", ""))
        if "authors" in tenth:
            a = tenth["authors"]
            rows.append(("  authors' code: training (3 scripts) / evaluation", f"{fmt_s(a['train_s'])} / {fmt_s(a['eval_s'])}", ""))
        if "scripts" in tenth:
            s = tenth["scripts"]
            rows.append(("  our four scripts: training / evaluation", f"{fmt_s(s['train_s'])} / {fmt_s(s['evaluate']['wall_s'])}", ""))
        if "usad_run" in tenth:
            u = tenth["usad_run"]
            train = f" (training share {fmt_s(usad_run_training_s(u))})" if "evaluate" in u.get("steps", {}) else ""
            rows.append(("  usad.run: all / evaluation alone (models there)",
                         f"{fmt_s(u['wall_s'])}{train} / {fmt_s(u['evaluate_only']['wall_s'])}", ""))
        if "scripts_vs_authors" in tenth:
            v = tenth["scripts_vs_authors"]
            rows.append(("  speed-up, four scripts vs authors: training / evaluation",
                         f"x{v['train_speedup']:.2f} / x{v['eval_speedup']:.2f}", "train >= 3 (CPU, GPU); eval >= 5 (GPU)"))
        if "usad_run_vs_authors" in tenth:
            v = tenth["usad_run_vs_authors"]
            train = f"x{v['train_speedup']:.2f}" if "train_speedup" in v else "-"
            rows.append(("  speed-up, usad.run vs authors: all / training / evaluation",
                         f"x{v['total_speedup']:.2f} / {train} / x{v['eval_speedup']:.2f}",
                         "train >= 3 (CPU, GPU); eval >= 5 (GPU)"))
    for scale, c in res.get("coreset", {}).items():
        rows += [(f"coreset {scale}: picks/s fast / authors",
                  f"{c['fast']['picks_per_s']:.1f} / {c['naive']['picks_per_s']:.1f} "
                  f"(x{c['speedup']:.1f}, same picks: {c['same_first_picks']})", ""),
                 (f"coreset {scale}: greedy peak RSS fast / authors (z alone)",
                  f"{c['fast']['greedy_peak_rss_mb'] or 0:.0f} / {c['naive']['greedy_peak_rss_mb'] or 0:.0f} MB "
                  f"({c['fast']['z_mb']:.0f} MB); projection peak {c['fast']['projection_peak_rss_mb']:.0f} MB", "")]
    if "metrics" in res:
        m = res["metrics"]
        rows.append(("metrics, 1,754 maps 406x406", f"{m['seconds']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB "
                     f"(inputs {m['inputs_mb']:.0f} MB)", "< 60 s, < 4 GB"))
    if "compare" in res:
        c = res["compare"]
        rows.append(("compare on tests/golden (tiny settings), whole command", f"{fmt_s(c['wall_s'])}", ""))
        for name, m in c.get("methods", {}).items():
            if m.get("status") == "ran":
                rows.append((f"  {name}: train / predict", f"{fmt_s(m['train_s'])} / {fmt_s(m['predict_s'])}"
                             f" ({m['images_per_s']:.2f} images/s)", ""))
            else:
                rows.append((f"  {name}", short(str(m.get("status"))), ""))
    for name, error in res.get("errors", {}).items():
        rows.append((f"FAILED: {name}", short(error), ""))
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"{a.ljust(w0)}  {b.ljust(w1)}  {c}".rstrip() for a, b, c in rows)
