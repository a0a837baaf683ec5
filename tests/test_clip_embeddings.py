"""CLIP embeddings beside the fingerprints: stored per clip when curation has CLIP weights
(null without), a veto on fingerprint matches in the near-duplicate finder, and the
descriptor ``curate search`` ranks by when there is one. Random tiny CLIP weights give
meaningless embeddings, so the rule and the search are checked on tables whose embeddings
are written here with known cosines; the curation run checks the plumbing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import lance
import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from curation.keyframes import decode_jpeg, encode_jpeg
from curation.near_duplicates import has_index, near_duplicates
from curation.scorers.aesthetic import QualityScorer
from curation.scorers.laion import ClipAestheticScorer
from curation.search import SearchError, clip_embedder, search
from curation.stages import STAGED_SCHEMA, score
from pipeline.config.schema import NearDuplicatesConfig, ScoringConfig
from pipeline.models.aesthetic_head import LAION_EMBED_DIM, LaionAestheticHead
from pipeline.tables import CLIP_EMBEDDING, CLIPS, FINGERPRINT, IMAGES, open_curated
from support.synthetic import CameraShot, photo_like, write_camera_video, write_image_manifest
from tests.test_scorers import TINY_768

SIZE = (320, 180)


def _weights(folder: Path) -> tuple[str, str]:
    """Random tiny CLIP (768-d embedding) and LAION head weights, saved as the releases are."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    clip, head = folder / "clip.safetensors", folder / "head.pth"
    save_file(open_clip.CLIP(**TINY_768).state_dict(), str(clip))
    torch.save(LaionAestheticHead().state_dict(), head)
    return str(head), str(clip)


@pytest.fixture(scope="module")
def tiny_scorer(tmp_path_factory: pytest.TempPathFactory) -> ClipAestheticScorer:
    head, clip = _weights(tmp_path_factory.mktemp("weights"))
    return ClipAestheticScorer(head, clip, arch=TINY_768)


def _unit(rng: np.random.Generator, dims: int) -> np.ndarray:
    v = rng.normal(size=dims)
    return v / np.linalg.norm(v)


def _at_cosine(v: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine with the unit vector ``v`` is ``cosine``."""
    other = _unit(rng, len(v))
    other -= (other @ v) * v
    return cosine * v + np.sqrt(1 - cosine**2) * other / np.linalg.norm(other)


def _keyframes(video: Path) -> list[bytes]:
    """Three JPEG keyframes of an encoded video, as the per-file work hands them on."""
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return [encode_jpeg(frames[i]) for i in (0, len(frames) // 2, len(frames) - 1)]


def test_the_scores_come_with_the_embeddings_they_were_read_from(tiny_scorer: ClipAestheticScorer) -> None:
    frames = np.stack([photo_like(90, 160, seed=s) for s in range(3)])
    scores, embeddings = tiny_scorer.scores_and_embeddings(frames)
    np.testing.assert_array_equal(scores, tiny_scorer(frames))
    assert embeddings.shape == (3, LAION_EMBED_DIM) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    with torch.no_grad():
        heads = tiny_scorer.head(torch.from_numpy(embeddings)).numpy()
    np.testing.assert_allclose(heads, scores, rtol=1e-5, atol=1e-6)  # the head read these embeddings
    tiny_scorer.batch_size = 2
    try:
        np.testing.assert_allclose(tiny_scorer.scores_and_embeddings(frames)[1], embeddings, rtol=1e-5, atol=1e-6)
    finally:
        tiny_scorer.batch_size = 32
    assert CLIP_EMBEDDING.list_size == LAION_EMBED_DIM  # the table's width is the scorer's


def test_score_stores_each_media_rows_mean_keyframe_embedding(tiny_scorer: ClipAestheticScorer,
                                                              tmp_path: Path) -> None:
    """A clip's embedding is its keyframes' mean direction, an image's its own; a reject and
    every row the weight-free scorer scores get none."""
    video = write_camera_video(tmp_path / "pan.mp4", [CameraShot(photo_like(400, 700, seed=3), 24, pan=(1.0, 0.0))],
                               size=SIZE).path
    keyframes = _keyframes(video)
    batch = pa.Table.from_pylist([
        {"table": CLIPS, "clip_id": "c", "keyframes": keyframes},
        {"table": IMAGES, "image_id": "i", "keyframes": keyframes[:1]},
        {"table": "rejects.lance", "source": "bad.mp4", "keyframes": None},
    ], schema=STAGED_SCHEMA)

    scored = score(tiny_scorer, batch)
    clip, image, reject = scored.column("clip_embedding").to_pylist()
    frame_embeddings = tiny_scorer.scores_and_embeddings(np.stack([decode_jpeg(k) for k in keyframes]))[1]
    mean = frame_embeddings.mean(axis=0)
    np.testing.assert_allclose(clip, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(image, frame_embeddings[0], rtol=1e-5, atol=1e-6)
    assert reject is None and scored.column("aesthetic").to_pylist()[2] is None

    plain = score(QualityScorer(), batch)
    assert plain.column("clip_embedding").null_count == 3
    assert plain.column("aesthetic").null_count == 1


# Clips written straight into a Lance table: (clip id, pair it belongs to, fingerprint
# cosine with its pair's first clip, CLIP cosine with it or None for no embedding).
PAIRS = [
    ("a1", "a", 1.0, 1.0), ("a2", "a", 0.97, 0.5),  # same layout, other content: not a copy
    ("b1", "b", 1.0, 1.0), ("b2", "b", 0.97, 0.97),  # agree on both: a copy
    ("c1", "c", 1.0, 1.0), ("c2", "c", 0.97, None),  # no embedding: the fingerprint decides
    ("d1", "d", 1.0, 1.0), ("d2", "d", 0.5, 0.99),  # CLIP alone never joins clips
]
# Clips no fingerprint can match: none recorded (curated before the column), and every
# keyframe flat (the zero vector). They are in the table, and in the index built over it.
UNMATCHABLE = {"unmeasured": None, "flat": np.zeros(FINGERPRINT.list_size, np.float32)}


def _pairs_table(uri: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    fingerprints: dict[str, np.ndarray] = {}
    embeddings: dict[str, np.ndarray] = {}
    rows = []
    for clip_id, pair, fingerprint_cosine, clip_cosine in PAIRS:
        first = pair not in fingerprints
        fingerprints.setdefault(pair, _unit(rng, FINGERPRINT.list_size))
        embeddings.setdefault(pair, _unit(rng, CLIP_EMBEDDING.list_size))
        fingerprint = fingerprints[pair] if first else _at_cosine(fingerprints[pair], fingerprint_cosine, rng)
        embedding = embeddings[pair] if first else (
            None if clip_cosine is None else _at_cosine(embeddings[pair], clip_cosine, rng))
        rows.append({"clip_id": clip_id, "fingerprint": fingerprint, "clip_embedding": embedding,
                     "aesthetic": 6.0 if first else 5.0, "video_width": 320, "video_height": 180, "num_frames": 48})
    rows += [{"clip_id": clip_id, "fingerprint": fingerprint, "clip_embedding": None, "aesthetic": 5.0,
              "video_width": 320, "video_height": 180, "num_frames": 48} for clip_id, fingerprint in UNMATCHABLE.items()]
    schema = pa.schema([("clip_id", pa.string()), ("fingerprint", FINGERPRINT), ("clip_embedding", CLIP_EMBEDDING),
                        ("aesthetic", pa.float32()), ("video_width", pa.int32()), ("video_height", pa.int32()),
                        ("num_frames", pa.int32())])
    lance.write_dataset(pa.Table.from_pylist(rows, schema=schema), str(uri))


@pytest.mark.parametrize("index_min_rows", [50_000, 4], ids=["flat", "ivf"])
def test_a_fingerprint_match_is_a_copy_only_where_clip_agrees(tmp_path: Path, index_min_rows: int) -> None:
    uri = tmp_path / CLIPS
    _pairs_table(uri)
    cfg = NearDuplicatesConfig(index_min_rows=index_min_rows)
    assert cfg.min_similarity < 0.97 and 0.5 < cfg.min_clip_similarity < 0.97
    assert near_duplicates(uri, cfg) == {"b2": "b1", "c2": "c1"}
    assert has_index(lance.dataset(str(uri))) == (index_min_rows == 4)  # built with the unmatchable rows in

    lance.dataset(str(uri)).drop_columns(["clip_embedding"])  # a table curated before the column
    assert near_duplicates(uri, cfg) == {"a2": "a1", "b2": "b1", "c2": "c1"}


def _search_folder(folder: Path) -> dict[str, dict]:
    """A curated folder's clips table with known descriptors: ``q`` the query; ``layout``
    shares q's fingerprint but not its content; ``content`` the reverse; ``bare`` shares q's
    fingerprint and has no embedding."""
    rng = np.random.default_rng(1)
    fingerprint, embedding = _unit(rng, FINGERPRINT.list_size), _unit(rng, CLIP_EMBEDDING.list_size)
    rows = {
        "q": (fingerprint, embedding),
        "layout": (_at_cosine(fingerprint, 0.99, rng), _at_cosine(embedding, 0.2, rng)),
        "content": (_at_cosine(fingerprint, 0.1, rng), _at_cosine(embedding, 0.95, rng)),
        "bare": (_at_cosine(fingerprint, 0.98, rng), None),
    }
    table = pa.Table.from_pylist(
        [{"clip_id": k, "source": f"{k}.mp4", "fingerprint": f, "clip_embedding": e} for k, (f, e) in rows.items()],
        schema=pa.schema([("clip_id", pa.string()), ("source", pa.string()), ("fingerprint", FINGERPRINT),
                          ("clip_embedding", CLIP_EMBEDDING)]))
    folder.mkdir(parents=True, exist_ok=True)
    lance.write_dataset(table, str(folder / CLIPS))
    return {k: {"fingerprint": f, "clip_embedding": e} for k, (f, e) in rows.items()}


def test_search_by_clip_id_ranks_by_the_clips_embedding_when_it_has_one(tmp_path: Path) -> None:
    _search_folder(tmp_path)
    hits = search(tmp_path, clip_id="q", top=3)
    assert [h.row["clip_id"] for h in hits] == ["content", "layout"]  # "bare" has no embedding to rank
    assert {h.by for h in hits} == {"clip_embedding"}
    assert hits[0].similarity == pytest.approx(0.95, abs=1e-4)

    hits = search(tmp_path, clip_id="bare", top=2)  # no embedding: its fingerprint asks
    assert [h.row["clip_id"] for h in hits] == ["q", "layout"] and {h.by for h in hits} == {"fingerprint"}

    run = subprocess.run([sys.executable, "-m", "pipeline", "curate", "search", str(tmp_path), "--clip-id", "q",
                          "--top", "1", "--sheet", str(tmp_path / "sheet.html")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    line, page = run.stdout.strip().splitlines()
    assert line.split()[1:4] == ["content", "by", "clip_embedding"], line
    assert "clips nearest clip q, by clip_embedding" in Path(page).read_text()


def test_search_by_picture_uses_clip_only_with_weights(tmp_path: Path, tiny_scorer: ClipAestheticScorer) -> None:
    descriptors = _search_folder(tmp_path / "curated")
    picture = photo_like(180, 320, seed=9)
    Image.fromarray(picture).save(tmp_path / "query.png")
    asked = tiny_scorer.scores_and_embeddings(picture[None])[1][0]
    # Give "layout" the picture's own embedding: only a CLIP search finds it first.
    ds = lance.dataset(str(tmp_path / "curated" / CLIPS))
    ds.delete("clip_id = 'layout'")
    ds.insert(pa.Table.from_pylist([{"clip_id": "layout", "source": "layout.mp4",
                                     "fingerprint": descriptors["layout"]["fingerprint"], "clip_embedding": asked}],
                                   schema=ds.schema))

    by_clip = search(tmp_path / "curated", image=str(tmp_path / "query.png"), top=1, embedder=tiny_scorer)
    assert [(h.row["clip_id"], h.by) for h in by_clip] == [("layout", "clip_embedding")]
    assert by_clip[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert {h.by for h in search(tmp_path / "curated", image=str(tmp_path / "query.png"))} == {"fingerprint"}

    lance.dataset(str(tmp_path / "curated" / CLIPS)).drop_columns(["clip_embedding"])  # nothing to compare it with
    hits = search(tmp_path / "curated", image=str(tmp_path / "query.png"), embedder=tiny_scorer)
    assert {h.by for h in hits} == {"fingerprint"}


def test_clip_embedder_needs_both_weight_files_or_none() -> None:
    assert clip_embedder(ScoringConfig()) is None
    with pytest.raises(SearchError, match="aesthetic_head"):
        clip_embedder(ScoringConfig(aesthetic_clip="clip.safetensors"))


# Run in a subprocess: every Ray worker builds ViT-L/14 from open_clip's registry, so the
# hook registers the tiny 768-d config under that name in each of them before any task,
# through open_clip's public add_model_config (a config file's stem names its model).
CURATE_WITH_TINY_CLIP = """
import os, sys
import ray
from curation.job import curate
from pipeline.config import load_config
from pipeline.ray_runtime import WORKER_ENV

def tiny_clip():
    import open_clip
    open_clip.add_model_config({config!r})

for key, value in WORKER_ENV.items():
    os.environ.setdefault(key, value)
ray.init(num_cpus=2, include_dashboard=False, runtime_env={{"worker_process_setup_hook": tiny_clip}})
config = load_config("tiny", overrides=sys.argv[3:])
curate(sys.argv[1].split(","), sys.argv[2], config, progress=False)
"""


def _clip_embeddings(out: Path, name: str, key: str) -> dict[str, list | None]:
    rows = open_curated(out / name).to_table(columns=[key, "source", "clip_embedding"]).to_pylist()
    return {Path(r["source"]).stem: r["clip_embedding"] for r in rows}


@pytest.mark.slow
def test_curation_stores_clip_embeddings_with_clip_weights(tmp_path: Path) -> None:
    """Without weights every clip's embedding is null; a table from before the column takes
    a run with tiny CLIP weights, whose clips and images get unit-length embeddings while the
    old rows stay null, and finalize (near-duplicates included) runs over the mix."""
    head, clip = _weights(tmp_path / "weights")
    videos = tmp_path / "videos"
    videos.mkdir()
    for seed in (1, 2):
        write_camera_video(videos / f"old{seed}.mp4", [CameraShot(photo_like(400, 700, seed=seed), 36, pan=(1.0, 0.0))],
                           size=SIZE)
    new = tmp_path / "new"
    new.mkdir()
    write_camera_video(new / "new.mp4", [CameraShot(photo_like(400, 700, seed=3), 36, zoom=0.008)], size=SIZE)
    manifest = write_image_manifest(tmp_path / "images", count=2, bad_rows=0)
    out = tmp_path / "out"

    run = subprocess.run([sys.executable, "-m", "pipeline", "curate", str(videos), "--out", str(out), "--preset",
                          "tiny", "--quiet"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert set(_clip_embeddings(out, CLIPS, "clip_id").values()) == {None}
    for name in (CLIPS, IMAGES):
        lance.dataset(str(out / name)).drop_columns(["clip_embedding"])

    config = tmp_path / "open_clip_configs" / "ViT-L-14.json"
    config.parent.mkdir()
    config.write_text(json.dumps(TINY_768))
    script = CURATE_WITH_TINY_CLIP.format(config=str(config))
    run = subprocess.run([sys.executable, "-c", script, f"{new},{manifest}", str(out),
                          f"curation.scoring.aesthetic_head={head}", f"curation.scoring.aesthetic_clip={clip}"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    clips = _clip_embeddings(out, CLIPS, "clip_id")
    assert clips["old1"] is None and clips["old2"] is None
    images = _clip_embeddings(out, IMAGES, "image_id")
    embedded = [v for name, v in {**clips, **images}.items() if not name.startswith("old")]
    assert len(embedded) == 1 + 2 and all(v is not None for v in embedded), {**clips, **images}.keys()
    np.testing.assert_allclose(np.linalg.norm(np.asarray(embedded), axis=1), 1.0, rtol=1e-5)
