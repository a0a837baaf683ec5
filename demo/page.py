"""``DIR/index.html``: the demo's one page, for a person to look at rather than read logs."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}img{max-width:100%;image-rendering:pixelated}.row{display:flex;gap:1em;align-items:flex-start}
.bad{color:#b00;font-weight:bold}.good{color:#070;font-weight:bold}.muted{color:#777}
"""

_LABELS = {"psnr_first_frame": "first-frame PSNR (dB)", "motion_agreement": "motion agreement (cosine)"}


def _figures_table(summary: dict[str, Any]) -> str:
    figures, better = summary["figures"], summary["trained_is_better"]
    rows = []
    for metric, label in _LABELS.items():
        verdict = ('<span class="good">trained is better</span>' if better[metric]
                   else '<span class="bad">trained is NOT better: a bug to report</span>')
        rows.append(f"<tr><th>{label}</th><td>{figures['trained'][metric]:.3f}</td>"
                    f"<td>{figures['untrained'][metric]:.3f}</td><td>{verdict}</td></tr>")
    return ("<table><tr><th>held-out mean</th><th>trained</th><th>untrained</th><th></th></tr>"
            + "".join(rows) + "</table>")


def _clip_rows(summary: dict[str, Any]) -> str:
    by_clip: dict[str, dict[str, dict]] = {}
    for row in summary["rows"]:
        by_clip.setdefault(row["clip"], {})[row["model"]] = row
    parts = []
    for clip, models in by_clip.items():
        cells = [f'<div><div>held-out clip (input = its first frame)</div><img src="videos/{clip}_heldout.png"></div>']
        for model, row in models.items():
            cells.append(
                f'<div><div>{model}: <a href="videos/{row["mp4"]}">mp4</a> '
                f'<span class="muted">PSNR {row["psnr_first_frame"]:.2f} dB, motion {row["motion_agreement"]:+.2f}</span></div>'
                f'<img src="videos/{row["sheet"]}"></div>'
            )
        parts.append(f"<h3>{html.escape(clip)}</h3><div class=row>{''.join(cells)}</div>")
    return "".join(parts)


def write_page(out: Path, summary: dict[str, Any]) -> Path:
    timings = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.1f}</td></tr>" for k, v in summary["timings_s"].items())
    curation = html.escape(json.dumps(summary["curation"], indent=1, default=str))
    losses = "".join(
        f'<div><div>{stage}</div><img src="runs/{stage}/loss.png"></div>'
        for stage in ("base", "refiner") if (out / "runs" / stage / "loss.png").exists()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>i2vgen demo</title><style>{_STYLE}</style></head>
<body><h1>i2vgen demo</h1>
<p>A generated corpus, curated, the <code>tiny</code> base and refiner trained with DeepSpeed on 2 Ray workers,
and held-out first frames animated through the cascade by the trained stages and by untrained ones.</p>
<h2>Trained against untrained, on held-out clips</h2>{_figures_table(summary)}
<p class="muted">First-frame PSNR: the generated first frame against the input image. Motion agreement: cosine
between the average optical-flow directions of the generated video and the held-out clip.</p>
<h2>Curation</h2><p><a href="curated/report.html">The curation report</a> (histograms, thresholds, contact
sheets). The job's summary:</p><pre>{curation}</pre>
<h2>Training</h2><div class=row>{losses}</div>
<h2>Generated videos</h2>{_clip_rows(summary)}
<h2>Time per step (s)</h2><table>{timings}</table>
</body></html>"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
