"""Tables of efficiency results: printed and CSV tables of rows, and one table from the JSON results of
several models' deviation, profile and benchmark runs.

    python -m fimvision.efficiency.summary DIR     # DIR/<model>/{deviation,profile,benchmark}.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain-text table of ``rows`` (floats in 4 significant digits; missing values blank)."""
    if not rows:
        return "(no rows)"
    return pd.DataFrame(rows, columns=columns).to_string(index=False, na_rep="", float_format="{:.4g}".format)


def write_csv(rows: list[dict], path: Path) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def show(title: str, rows: list[dict], columns: list[str] | None = None, csv: Path | None = None) -> None:
    """Print ``title`` and the table of ``rows`` (their ``columns``); with ``csv``, also write the rows there."""
    if csv is not None:
        write_csv(rows, csv)
    print(f"\n{title}\n{format_table(rows, columns)}")


def summary_rows(root: str | Path) -> list[dict]:
    """One row per check and configuration: model, check, configuration, result."""
    rows = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        for name in ("deviation", "profile", "benchmark"):
            path = folder / f"{name}.json"
            if not path.is_file():
                continue
            res = json.loads(path.read_text())
            model = res.get("model", folder.name)
            if name == "deviation":
                for r in res.get("layers_summary", []):
                    result = r.get("error") or (f"attn max_abs {r['max_abs']:.3g} (ref {r['ref_max_abs']:.3g}), "
                                                f"pass {r['layers_pass']}")
                    rows.append({"model": model, "check": "deviation/layers",
                                 "configuration": f"{r['backend']} {r['precision']}", "result": result})
                for r in res.get("model_level", []):
                    result = r.get("error") or f"logits max_abs {r['max_abs']:.3g}, top-1 agree {r['top1_agreement']:.3g}"
                    rows.append({"model": model, "check": "deviation/logits",
                                 "configuration": f"{r['backend']} {r['precision']}", "result": result})
            elif name == "profile":
                for workload, w in res["workloads"].items():
                    top = sorted(w["shares"].items(), key=lambda kv: -kv[1])[:3]
                    idle = f", GPU idle {w['gpu_idle_share']:.0%}" if w.get("gpu_idle_share") is not None else ""
                    rows.append({"model": model, "check": "profile", "configuration": f"{workload} {res['precision']}",
                                 "result": f"{w['total_us'] / 1000:.3g} ms: "
                                           + ", ".join(f"{c} {v:.0%}" for c, v in top) + idle})
            else:
                for r in res["rows"]:
                    config = (f"{r['mode']} {r['backend']} {r['precision']} bs{r['batch_size']}"
                              + (" compiled" if r["compile"] else ""))
                    result = r["error"] or (f"{r['images_per_s']:.4g} img/s (±{r['spread_iqr_rel']:.1%} IQR), "
                                            f"{r['peak_mem_mib']:.0f} MiB"
                                            + (f", MFU(bf16) {r['mfu_vs_bf16_matmul']:.2f}" if "mfu_vs_bf16_matmul" in r else ""))
                    rows.append({"model": model, "check": "benchmark", "configuration": config, "result": result})
    return rows


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    if len(args) != 1 or not Path(args[0]).is_dir():
        sys.exit("usage: python -m fimvision.efficiency.summary DIR")
    print(format_table(summary_rows(args[0])))


if __name__ == "__main__":
    main()
