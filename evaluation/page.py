"""``DIR/index.html``: an evaluation for a person to look at: the means, each clip's
generated frames over its real ones, and every clip's numbers. One self-contained file
beside the media it links (no scripts, no external assets), so a copied folder still opens."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

# metric -> (label, what it means and which way is better)
LABELS = {
    "first_frame_psnr": ("first-frame PSNR (dB)",
                         "generated frame 0 against the input image; higher: the video starts from the image"),
    "continuation_psnr": ("continuation PSNR (dB)",
                          "frames 1..F-1 against the real clip's; compare with the freeze-frame baseline"),
    "freeze_frame_psnr": ("freeze-frame PSNR (dB)",
                          "the input repeated, against the same frames: what a model without motion scores"),
    "motion_agreement": ("motion agreement",
                         "cosine of mean optical flow, generated vs real; 1 same direction, 0 unrelated"),
    "flicker": ("flicker", "mean |frame t+1 - frame t| / 255 (VBench temporal flickering); 0 is still"),
    "dynamic_degree": ("dynamic degree", "share of clips whose mean flow passes dynamic_threshold "
                       "(frame diagonals/s; curation's min_motion)"),
    "validation_loss": ("validation loss",
                        "the base's loss at fixed timesteps and noise on these clips; lower is better"),
    "zero_prediction_loss": ("zero-prediction loss",
                             "the same loss of predicting zeros: a model at this level learned nothing"),
    "clip_consistency": ("CLIP consistency", "mean cosine of the frames' CLIP image embeddings with the input's"),
}

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}th.name,td.name{text-align:left}img{max-width:100%;image-rendering:pixelated}
.row{display:flex;gap:1em;align-items:flex-start}.input{flex:0 0 200px}.muted{color:#777}
code{background:#f4f4f4;padding:0 3px}
"""


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _summary(result: dict[str, Any], metrics: Sequence[str]) -> str:
    rows = "".join(
        f'<tr><th class="name">{LABELS[m][0]}</th><td>{_number(result[m])}</td>'
        f'<td class="name muted">{html.escape(LABELS[m][1])}</td></tr>'
        for m in metrics
    )
    return f'<table><tr><th class="name">metric</th><th>mean over clips</th><th class="name"></th></tr>{rows}</table>'


def _per_clip(result: dict[str, Any], metrics: Sequence[str]) -> str:
    head = "".join(f"<th>{LABELS[m][0]}</th>" for m in metrics)
    rows = "".join(
        f'<tr><td class="name"><a href="#clip{i}">{html.escape(c["clip_id"])}</a></td>'
        + "".join(f"<td>{_number(c[m])}</td>" for m in metrics) + "</tr>"
        for i, c in enumerate(result["clips"])
    )
    return f'<table><tr><th class="name">clip</th>{head}</tr>{rows}</table>'


def _strips(result: dict[str, Any]) -> str:
    parts = []
    for i, clip in enumerate(result["clips"]):
        parts.append(
            f'<h3 id="clip{i}">{html.escape(clip["clip_id"])}</h3>'
            f'<p class="muted">{html.escape(clip["caption"]) or "(no caption)"}</p>'
            f'<div class="row"><div class="input"><div>input (first frame)</div>'
            f'<img src="{clip["input"]}" alt="input"></div>'
            f'<div><div>top: generated (<a href="{clip["generated"]}">mp4</a>), '
            f'bottom: real (<a href="{clip["real"]}">mp4</a>)</div><img src="{clip["strip"]}" alt="frames"></div></div>'
        )
    return "".join(parts)


def write_page(out: Path, result: dict[str, Any], metrics: Sequence[str]) -> Path:
    """Write ``out/index.html`` for ``result`` (what eval.json holds), showing ``metrics``."""
    settings = result["settings"]
    listed = "".join(f'<tr><th class="name">{html.escape(k)}</th><td class="name">{_number(v)}</td></tr>'
                     for k, v in settings.items())
    models = " and ".join(f"<code>{html.escape(Path(settings[k]).name)}</code>" for k in ("base", "refiner")
                          if settings[k])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>i2vgen eval</title>
<style>{_STYLE}</style></head>
<body><h1>i2vgen eval</h1>
<p>The first frames of {len(result["clips"])} held-out clips animated by {models}
and compared with what each clip really did, at {settings["size"][0]}x{settings["size"][1]},
{settings["frames"]} frames at {settings["fps"]} fps. Numbers per clip are in <a href="eval.json">eval.json</a>.</p>
<h2>Means</h2>{_summary(result, metrics)}
<h2>Clips</h2>{_strips(result)}
<h2>Per clip</h2>{_per_clip(result, metrics)}
<h2>Settings</h2><table>{listed}</table>
</body></html>"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
