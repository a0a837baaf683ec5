"""``DIR/index.html``: the demo's one page, for a person to look at rather than read logs."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from evaluation.page import LABELS

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}th.name,td.name{text-align:left}img{max-width:100%;image-rendering:pixelated}
.row{display:flex;gap:1em;align-items:flex-start;flex-wrap:wrap}
.bad{color:#b00;font-weight:bold}.good{color:#070;font-weight:bold}.muted{color:#777}
"""

# What each table shows; the ranked ones get a verdict (the summary's trained_is_better).
_SHOWN = ("first_frame_psnr", "continuation_psnr", "freeze_frame_psnr", "motion_agreement", "validation_loss",
          "zero_prediction_loss", "flicker", "dynamic_degree")
_MODELS = {"base": "the base alone (112x64)", "cascade": "base + refiner (224x128)"}


def _verdict(better: dict[str, bool], metric: str) -> str:
    if metric not in better:
        return '<span class="muted">reported, not ranked</span>' if metric in ("flicker", "dynamic_degree") else ""
    return ('<span class="good">trained is better</span>' if better[metric]
            else '<span class="bad">trained is NOT better</span>')


def _model_table(summary: dict[str, Any], model: str) -> str:
    trained, start = summary["means"][f"{model}_trained"], summary["means"][f"{model}_step0"]
    paired = summary["comparisons"][model]["metrics"]
    rows = []
    for metric in _SHOWN:
        interval = paired.get(metric)
        difference = (f"{interval['difference']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]"
                      if interval else "")
        rows.append(f'<tr><th class="name">{LABELS[metric][0]}</th><td>{trained[metric]:.3f}</td>'
                    f"<td>{start[metric]:.3f}</td><td>{difference}</td>"
                    f'<td class="name">{_verdict(summary["trained_is_better"][model], metric)}</td></tr>')
    return (f"<h3>{html.escape(_MODELS[model])}: <a href=\"eval/{model}_trained/index.html\">trained</a> vs "
            f"<a href=\"eval/{model}_step0/index.html\">its step-0 weights</a></h3>"
            '<table><tr><th class="name">held-out mean</th><th>trained</th><th>step 0</th>'
            '<th>trained - step 0 [95% bootstrap]</th><th class="name"></th></tr>' + "".join(rows) + "</table>")


def _strips(out: Path, summary: dict[str, Any]) -> str:
    """Each held-out clip: the trained base's and cascade's frames over the real ones."""
    parts = []
    for name in ("base_trained", "cascade_trained", "base_step0"):
        result = json.loads((out / "eval" / name / "eval.json").read_text())
        cells = "".join(
            f'<div><div class="muted">{html.escape(c["clip_id"][-24:])}: first {c["first_frame_psnr"]:.1f} dB, '
            f'continuation {c["continuation_psnr"]:.1f} dB (freeze {c["freeze_frame_psnr"]:.1f}), motion '
            f'{c["motion_agreement"]:+.2f}</div><img src="eval/{name}/{c["strip"]}" alt="frames"></div>'
            for c in result["clips"]
        )
        parts.append(f"<h3>{name.replace('_', ', ')} (top: generated, bottom: real)</h3><div class=row>{cells}</div>")
    return "".join(parts)


def write_page(out: Path, summary: dict[str, Any]) -> Path:
    timings = "".join(f"<tr><th class=name>{html.escape(k)}</th><td>{v:.1f}</td></tr>"
                      for k, v in summary["timings_s"].items())
    curation = html.escape(json.dumps(summary["curation"], indent=1, default=str))
    losses = "".join(
        f'<div><div>{stage}</div><img src="runs/{stage}/loss.png"></div>'
        for stage in ("base", "refiner") if (out / "runs" / stage / "loss.png").exists()
    )
    samples = "".join(
        f'<div><div>{stage}: last validation samples</div>'
        + "".join(f'<img src="{p.relative_to(out)}">' for p in sorted((out / "runs" / stage / "samples").glob("*"))[-1:]
                  for p in sorted(p.glob("*.png")))
        + "</div>"
        for stage in ("base", "refiner") if (out / "runs" / stage / "samples").exists()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>i2vgen demo</title><style>{_STYLE}</style></head>
<body><h1>i2vgen demo</h1>
<p>A generated corpus, curated, the <code>tiny</code> base and refiner trained with DeepSpeed on 2 Ray workers,
and the first frames of held-out clips (seeds the corpus never uses, never trained on) animated by the trained
stages and by the same runs' step-0 weights, measured by <code>i2vgen eval</code>. A red verdict is a finding to
report, not to hide.</p>
<h2>Trained against step 0, on held-out clips</h2>{_model_table(summary, "base")}{_model_table(summary, "cascade")}
<p class="muted">Continuation PSNR beats freeze-frame PSNR only when the model moves the picture the way the clip
did; the mean-flow cosine alone can be satisfied by noise drifting the right way, so read it beside the PSNRs.
Intervals: percentile bootstrap over the paired clips.</p>
<h2>Training</h2><p>Training loss per step, and the validation loss (fixed clips, noise and timesteps) against
the loss of predicting zeros on the same batch.</p><div class=row>{losses}</div><div class=row>{samples}</div>
<h2>Generated videos</h2>{_strips(out, summary)}
<h2>Curation</h2><p><a href="curated/report.html">The curation report</a> (histograms, thresholds, contact
sheets). The job's summary:</p><pre>{curation}</pre>
<h2>Time per step (s)</h2><table>{timings}</table>
</body></html>"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
