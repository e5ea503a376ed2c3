"""Speed and memory of the usad pipeline, with no downloads. Prints a table and writes JSON.

    python benchmarks/run.py [--device cpu|cuda] [--only SECTION,...] [--work DIR] [--update] [--out FILE]
    python benchmarks/run.py --quick      # a few minutes on a CPU: run (dry, tiny), coreset (112k), metrics

The generic measuring (a command in its own process, peaks, repeats, merging)
is ``harness.py``; USAD's sections are ``sections.py``, the measured children
``children.py``, the ratios and the table ``tables.py``.

Sections (``--only``; every measured command runs in its own process, and its
wall time counts that process's start-up: interpreter, imports, CUDA init,
model builds). Each measured process reports its own peak host RSS (VmHWM)
and peak GPU memory (torch.cuda.max_memory_allocated).

  data     the generated sets the other sections use, CoalAD layout, 512 px PNG,
           CoalAD's test mix (943 of 1,754 anomalous): small 32 / 16, tenth
           249 / 175, full 2,490 / 1,754 (CoalAD size). Written in parallel
           (one process per core) into --work and kept there between runs.
  golden   `python -m usad.run` on ../shared/golden (or $USAD_GOLDEN) per device
           (cpu, and cuda with --device cuda) and --precision: Pearson of
           scores and maps and metric deltas against the authors' reference,
           and the largest difference to the CPU fp32 outputs; then
           `pytest tests/models/usad/test_golden.py` with USAD_TEST_DEVICE=<--device>.
  run      at --scale (default small on CPU, full on CUDA), --backbones (full:
           random ViT-S/14, ViT-B/14 DINOv2 and Wide-ResNet50-2):
           floor     one process: imports + CUDA init + the three model builds +
                     the three backbones' forward passes over the train images
                     (PatchCore: its half) and the test images, at the batch size;
           usad_run  `python -m usad.run` (three trainings + evaluation), per precision;
           scripts   the four scripts, fp32.
           Ratios: usad.run / floor, four scripts / usad.run, and the scripts'
           own overheads (three training scripts / (3 start-ups + builds +
           train forwards); test_fusion.py / (1 start-up + builds + test forwards)).
           ``--parts`` picks among floor,usad_run,scripts; ``--repeat`` runs
           them interleaved and keeps each timing's minimum (a shared VM drifts).
  tenth    1/10 CoalAD (249 / 175) against the authors' code
           (tools/authors_harness.py: their four scripts, each its own
           process, same backbones: tiny on CPU, full on CUDA). Ours: the four
           scripts, and `python -m usad.run` run twice (trains + evaluates;
           then, with the models in place, evaluates only). ``--tenth-parts``.
  coreset  picks/s of the exact fast greedy vs the authors' loop, and peak
           memory, at 112k and 1.12M patches (1/10 and full CoalAD).
  compare  `python -m usad.compare --config tests/golden.yaml --retrain` (every method, tiny settings):
           each method's training and prediction time from table1.json (``--compare-methods``).
  metrics  time and peak memory of all four metrics on 1,754 generated
           406 x 406 maps (the CoalAD test set).

``--update`` merges into an existing --out file (section by section, part by
part), so that benchmarks/gpu.sh can run the sections one at a time.
"""


from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, children, sections, tables (also under runpy)
from children import (
    child_coreset,
    child_env,
    child_floor,
    child_golden_compare,
    child_metrics,
)
from harness import REPO, child, merge, write_results
from sections import (
    AUTHORS,
    BACKBONES,
    SCALES,
    section_compare,
    section_coreset,
    section_data,
    section_golden,
    section_run,
    section_tenth,
)
from tables import derive, table


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        section, args = sys.argv[2], sys.argv[3:]
        children = {"env": child_env, "floor": lambda: child_floor(json.loads(args[0])),
                    "golden_compare": lambda: child_golden_compare(*args),
                    "coreset": lambda: child_coreset(int(args[0]), int(args[1]), int(args[2]), args[3] == "1", args[4]),
                    "metrics": lambda: child_metrics(int(args[0]), int(args[1]))}
        print(json.dumps(children[section]()))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--only", default="run,tenth,golden,coreset,metrics",
                        help="comma-separated sections: data, golden, run, tenth, coreset, metrics")
    parser.add_argument("--scale", choices=list(SCALES), help="the run section's set (default: small on CPU, full on CUDA)")
    parser.add_argument("--backbones", choices=list(BACKBONES), default="full", help="the run section's backbones")
    parser.add_argument("--tenth-backbones", choices=list(BACKBONES), help="default: tiny on CPU, full on CUDA")
    parser.add_argument("--tenth-scale", choices=list(SCALES), default="tenth", help="the tenth section's set "
                        "(another scale for dry runs only)")
    parser.add_argument("--parts", default="floor,usad_run,scripts", help="the run section's parts")
    parser.add_argument("--tenth-parts", default="usad_run,scripts,authors", help="the tenth section's parts")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or fp32,bf16 (run: floor and usad_run; golden)")
    parser.add_argument("--batch-size", type=int, default=None, help="data.batch_size (default: the config's)")
    parser.add_argument("--repeat", type=int, default=None, help="run section: interleaved runs, minimum kept "
                        "(default 2 on CPU, 1 on CUDA)")
    parser.add_argument("--no-full-coreset", action="store_true", help="skip the 1.12M-patch coreset case (~10 GB RAM)")
    parser.add_argument("--authors", type=Path, default=AUTHORS, help=f"the authors' code (default {AUTHORS})")
    parser.add_argument("--work", type=Path, default=None, help="generated sets, runs and logs (kept; default: "
                        "/tmp/usad-bench-<device>)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--update", action="store_true", help="merge into an existing --out file")
    parser.add_argument("--compare-methods", default="", help="compare section: --methods of usad.compare (default: "
                        "every method that can run)")
    parser.add_argument("--quick", action="store_true", help="a few minutes on a CPU: run (dry set, tiny backbones, "
                        "once), coreset (112k patches only) and metrics, written to results_quick_<device>.json")
    parser.add_argument("--table", metavar="FILE", help="only print the table of a results file")
    parser.add_argument("--no-table", action="store_true", help="do not print the table at the end")
    ctx = parser.parse_args()
    if ctx.table:
        print(table(json.loads(Path(ctx.table).read_text())))
        return
    on_gpu = ctx.device != "cpu"
    if ctx.quick:
        ctx.only, ctx.scale, ctx.backbones, ctx.repeat, ctx.no_full_coreset = "run,coreset,metrics", "dry", "tiny", 1, True
        ctx.out = ctx.out or str(REPO / "benchmarks" / f"results_quick_{'cuda' if on_gpu else 'cpu'}.json")
    ctx.scale = ctx.scale or ("full" if on_gpu else "small")
    ctx.tenth_backbones = ctx.tenth_backbones or ("full" if on_gpu else "tiny")
    ctx.repeat = ctx.repeat or (1 if on_gpu else 2)
    ctx.precisions = ctx.precision.split(",")
    ctx.parts, ctx.tenth_parts = ctx.parts.split(","), ctx.tenth_parts.split(",")
    ctx.work = (ctx.work or Path(f"/tmp/usad-bench-{ctx.device.replace(':', '')}")).resolve()
    ctx.logs = ctx.work / "logs"
    ctx.authors = ctx.authors.resolve()
    out = Path(ctx.out or REPO / "benchmarks" / f"results_{'cuda' if on_gpu else 'cpu'}.json")
    res = json.loads(out.read_text()) if ctx.update and out.is_file() else {}
    res.update({"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                           f"device={ctx.device}",
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "batch_size": ctx.batch_size or "config default"})
    runners = {"compare": section_compare, "data": section_data, "golden": section_golden, "run": section_run, "tenth": section_tenth,
               "coreset": section_coreset, "metrics": lambda c: child("metrics", "1754", "406")}
    sections = ctx.only.split(",")
    unknown = [s for s in sections if s not in runners]
    if unknown:
        parser.error(f"unknown section(s) {unknown}: choose from {list(runners)}")
    if "env" not in res or not ctx.update:
        res["env"] = child("env")
    for name in sections:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            new, old = runners[name](ctx), res.get(name, {})
            same_set = all(old.get(k) == new.get(k) for k in ("scale", "backbones"))  # else nothing to merge with
            res[name] = merge(old, new) if ctx.update and same_set else new
            res.get("errors", {}).pop(name, None)
        except Exception as e:  # one failing section (e.g. out of memory) keeps the others' figures
            res.setdefault("errors", {})[name] = str(e)[-2000:]
            print(f"section {name} failed: {str(e)[-1500:]}", file=sys.stderr)
        derive(res)
        write_results(out, res)  # after every section: a run stopped later keeps what was measured
    if not ctx.no_table:
        print(table(res))
    print(f"written to {out}; logs in {ctx.logs}")


if __name__ == "__main__":
    main()
