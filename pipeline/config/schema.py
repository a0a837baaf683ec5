"""Typed configuration of the whole system, as plain dataclasses.

Every key a YAML file or a ``--set`` override may name is a field here, with its type and a
comment saying what it controls. ``pipeline.config.loader`` turns YAML into these objects and
rejects unknown keys and wrong types with the key's dotted path in the message.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, Optional

# What a key can define besides its own effect, so that another value makes something made
# under the old one mean something else. model: the denoiser's architecture, conditioning
# and frozen encoders (trained weights); objective: what training optimises (a resumed run);
# encoding: the tensors `i2vgen encode` stores (an encoded table).
Kind = Literal["model", "objective", "encoding"]
DEFINES = "defines"
RUN_ONLY = "run_only"


def defining(*kinds: Kind, default: Any = MISSING, default_factory: Any = MISSING, run_only: bool = False) -> Any:
    """A field marked with the ``kinds`` it defines: the checks that compare two configs (an
    exported stage file, a resumed run, an encoded table; ``pipeline.config.marks``) read the
    marks beside the keys, so a new key cannot be left out of them as from a hand-kept list.
    ``run_only``: the key binds a training run but not the weights it exports (it acts only
    in training, or is a path on one machine), so exported stage files are not checked on it."""
    return field(default=default, default_factory=default_factory, metadata={DEFINES: frozenset(kinds), RUN_ONLY: run_only})


@dataclass
class ModelConfig:
    """Which base architecture the system builds.

    ``paper``: the base 3D UNet of arXiv 2311.04145 (image context plus the global encoder,
    image latent added to the first frame's noise). ``release``: the single-stage model that
    was published (diffusers' ``I2VGenXLUNet``: the image latent concatenated to the input,
    77 text + 64 local-image + 4 global-image context tokens). The refiner is always the
    paper's; ``release`` usually runs without one. ``package.module:factory`` names an
    architecture of one's own: a callable ``(config, stage) -> denoiser`` whose denoiser
    carries its ``Conditioning`` (``pipeline.models.build.architecture``).
    """

    arch: str = defining("model", default="paper")
    # The paper's base sees the image latent only in frame 0's starting noise (and through
    # the global encoder); true also concatenates it to every frame's input, as the released
    # model does, so later frames see the image directly (tiny: see README, Learning).
    image_concat: bool = defining("model", default=False)


@dataclass
class UNetConfig:
    """The 3D UNet shared by the base and the refiner (the refiner starts from the base)."""

    # Latent channels in and out; must equal the VAE's latent channels.
    in_channels: int = defining("model", default=4)
    out_channels: int = defining("model", default=4)
    # Channels per resolution level (SD 2.1: 320, 640, 1280, 1280).
    block_out_channels: list[int] = defining("model", default_factory=lambda: [320, 640, 1280, 1280])
    # Whether each level has spatial/temporal attention (SD 2.1: all but the lowest resolution).
    attention_levels: list[bool] = defining("model", default_factory=lambda: [True, True, True, False])
    # ResNet blocks per level on the way down (the way up has one more).
    layers_per_block: int = defining("model", default=2)
    # Channels per attention head (SD 2.1 uses 64 everywhere).
    head_dim: int = defining("model", default=64)
    # Heads of the temporal transformer right after conv_in (ModelScope T2V uses 8).
    conv_in_temporal_heads: int = defining("model", default=8)
    norm_num_groups: int = defining("model", default=32)
    # Width of the cross-attention context (ViT-H/14's embedding is 1024).
    cross_attention_dim: int = defining("model", default=1024)
    # Dropout inside the temporal convolutions (ModelScope T2V uses 0.1): a training regulariser,
    # so part of the objective, and an exported stage runs under any value.
    temporal_dropout: float = defining("objective", default=0.1, run_only=True)
    # Add an FPS embedding to the timestep embedding (the paper trains with dynamic FPS).
    use_fps_embedding: bool = defining("model", default=True)
    # Recompute activations in the backward pass to save memory. It changes no result, so
    # exports ignore it; marked with its section, a resume still keeps it.
    gradient_checkpointing: bool = defining("model", default=False, run_only=True)


@dataclass
class GlobalEncoderConfig:
    """The trainable global encoder of the paper's Table 1, over the image's VAE latent."""

    stem_channels: int = defining("model", default=64)
    # Side of the adaptive average pool after the stem (32 in the paper).
    pool_size: int = defining("model", default=32)
    # Output channels of the stride-2 stages; the pool size halves at each and must end at 2.
    stage_channels: list[int] = defining("model", default_factory=lambda: [256, 512, 512, 1024])


@dataclass
class ClipConfig:
    """The frozen open_clip model: its image tower for the base, its text tower for the refiner."""

    # An open_clip architecture name ("ViT-H-14") or "tiny" (a small random model, no weights).
    arch: str = defining("model", "encoding", default="ViT-H-14")
    # A local weights file (safetensors, or a torch checkpoint loaded with weights_only=True).
    # A path on one machine: exports are not checked against it.
    weights: Optional[str] = defining("model", "encoding", default=None, run_only=True)


@dataclass
class VAEConfig:
    """The image autoencoder: SD 2.1's AutoencoderKL, or a weight-free lossless stand-in."""

    kind: Literal["sd", "pixel_unshuffle"] = defining("model", "encoding", default="sd")
    # Spatial downsampling of the pixel_unshuffle autoencoder (the SD VAE's follows its levels).
    factor: int = defining("model", "encoding", default=8)
    # Shape of the SD VAE built without weights (SD 2.1's; tests use a smaller one).
    block_out_channels: list[int] = defining("model", "encoding", default_factory=lambda: [128, 256, 512, 512])
    norm_num_groups: int = defining("model", "encoding", default=32)
    # A local weights path for the SD VAE (a diffusers folder or a single file); a path on one
    # machine: exports are not checked against it.
    weights: Optional[str] = defining("model", "encoding", default=None, run_only=True)
    # Latents are (raw - shift_factor) * scaling_factor, so that the diffusion model sees
    # about unit variance: the noise schedule's SNR assumes it (SD's VAE: 0.18215 from its
    # own config when this is null; the pixel stand-in: 1.0 when null, but raw pixels in
    # [-1, 1] have a std of about 0.35, which the tiny preset corrects).
    scaling_factor: Optional[float] = defining("model", "encoding", default=None)
    shift_factor: float = defining("model", "encoding", default=0.0)


@dataclass
class DiffusionConfig:
    """The noise schedule and the parameterisation the UNet predicts."""

    num_train_timesteps: int = defining("objective", default=1000)
    # linear_sd: SD's linear-in-sqrt betas (the paper); cosine: the released model's schedule.
    schedule: Literal["linear_sd", "linear", "cosine"] = defining("objective", default="linear_sd")
    beta_start: float = defining("objective", default=0.00085)
    beta_end: float = defining("objective", default=0.012)
    # Rescale the schedule so the last step has zero SNR (the released model does).
    zero_terminal_snr: bool = defining("objective", default=False)
    prediction: Literal["v", "epsilon", "sample"] = defining("objective", default="v")
    # Offset noise strength: one extra N(0,1) per (sample, channel, frame), times this. It shapes
    # the training noise and a generation's start noise only: a stage runs under any value.
    offset_noise: float = defining("objective", default=0.1, run_only=True)


@dataclass
class StageConfig:
    """What differs between the base and the refiner: frame size, timestep range, dropout."""

    # All of a stage's keys shape its training (a resume keeps them), none its weights: an
    # exported stage generates at other sizes and frame counts, so exports are not checked
    # against them. The size is also the crop that stored encodings were made at.
    width: int = defining("objective", "encoding", run_only=True)
    height: int = defining("objective", "encoding", run_only=True)
    frames: int = defining("objective", default=16, run_only=True)
    # The stage trains on timesteps in [0, max_timestep) (the refiner: 600).
    max_timestep: int = defining("objective", default=1000, run_only=True)
    # Probability of dropping the condition in training, for classifier-free guidance.
    condition_dropout: float = defining("objective", default=0.1, run_only=True)


@dataclass
class StagesConfig:
    """One section per stage, named as the stage: its marks define that stage only."""

    base: StageConfig = field(default_factory=lambda: StageConfig(width=448, height=256))
    refiner: StageConfig = field(
        default_factory=lambda: StageConfig(width=1280, height=720, max_timestep=600)
    )


@dataclass
class SamplingConfig:
    """Defaults of generation; every one can be overridden per request."""

    sampler: Literal["ddim", "dpm++"] = "ddim"
    steps: int = 50
    guidance: float = 9.0
    # The refiner re-noises the base video to this step and denoises from there.
    refine_from: int = 600
    fps: int = 8
    # Frames the VAE decodes at once (a 1280x720 decode is the memory peak of inference).
    decode_chunk: int = 4
    # Where the sampler's steps sit in [0, T): "trailing" starts at T - 1 (Lin et al. 2023);
    # "leading" is DDIM's original spacing (0, k, 2k, ... plus steps_offset), which the
    # released model samples with (981, 961, ..., 1 for 50 steps).
    spacing: Literal["trailing", "leading"] = "trailing"
    steps_offset: int = 0
    # The text of the unconditional branch of guidance, for text-conditioned stages.
    negative_prompt: str = ""


@dataclass
class DeploymentConfig:
    """One Ray Serve deployment of a stage: its replicas, resources and request batching."""

    # Fixed replicas when equal; otherwise Serve autoscales between them.
    min_replicas: int = 1
    max_replicas: int = 1
    num_cpus: float = 1.0
    # The base fits a smaller GPU than the refiner; fractions share one.
    num_gpus: float = 0.0
    # Requests run as one batch when their shapes agree (@serve.batch); 1 turns batching off.
    max_batch_size: int = 4
    batch_wait_timeout_s: float = 0.1
    # Requests a replica accepts at once (queued into its next batches).
    max_ongoing_requests: int = 8


@dataclass
class ServingConfig:
    """The HTTP endpoint: its deployments and the limits that keep a bad request harmless."""

    base: DeploymentConfig = field(default_factory=DeploymentConfig)
    refiner: DeploymentConfig = field(default_factory=lambda: DeploymentConfig(max_batch_size=2))
    # Who may call (inference/serving/access.py): a file of API keys, one per line (or
    # "sha256:<hex>" digests); keys also come from I2VGEN_API_KEYS. None at all: the endpoint
    # binds to 127.0.0.1 and answers loopback clients only.
    api_keys_file: str = ""
    # Per key: unfinished jobs, and job submissions per minute (429 with Retry-After beyond;
    # 0 is no limit). Reads (status, video) are not counted.
    max_pending_jobs_per_key: int = 8
    submissions_per_minute_per_key: int = 60
    # The ingress: requests queued at it before Serve answers 503; its CPU reservation (small,
    # so that a 2-core machine still fits both stages at 1 CPU each; raise it where CPUs
    # spare); the time a client has to send its whole body (408 past it); and every request's
    # limit (504 past it; POST /v1/generate has serving.sync_timeout_s inside it).
    max_queued_requests: int = 256
    ingress_num_cpus: float = 0.1
    body_timeout_s: float = 60.0
    request_timeout_s: float = 660.0
    # Upload and image limits, checked on the header before any pixel is decoded (413 beyond
    # them). Only PNG, JPEG and WebP are read.
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_image_side: int = 8192
    max_aspect_ratio: float = 8.0
    # Per-request parameter bounds (422 beyond them).
    max_frames: int = 32
    max_steps: int = 200
    max_guidance: float = 30.0
    max_prompt_chars: int = 500
    # Jobs admitted but unfinished, over both routes; one more gets 503 with Retry-After.
    max_pending_jobs: int = 32
    retry_after_s: int = 30
    # Finished jobs (and their mp4s) kept for GET, up to this many and this long after
    # finishing; the first to finish are forgotten first.
    keep_finished_jobs: int = 256
    keep_finished_s: float = 24 * 3600.0
    # Where requests, job records and mp4s are kept (a local folder, or s3://... that every
    # node reaches); a restarted application serves what it finds here.
    results_dir: str = "i2vgen-results"
    # Tries per job when its worker (a stage replica, a node) is lost; then it fails.
    job_attempts: int = 2
    # A running job whose stage reports no step for this long is failed.
    stalled_job_s: float = 600.0
    # POST /v1/generate answers 504 (and cancels the job) past this.
    sync_timeout_s: float = 600.0
    # Rate and quality of the served mp4.
    crf: int = 18


@dataclass
class ProbeConfig:
    """What a video must be to be worth analysing; everything else becomes a reject."""

    min_side: int = 64
    max_side: int = 8192
    min_frames: int = 8
    # Reject when frame intervals spread more than this fraction around their median.
    max_interval_spread: float = 0.5
    # Caps read off the header and the demuxed timestamps, before any frame is decoded: a
    # bigger input is a reject, and the probe holds at most max_frames timestamps. max_pixels
    # (width x height) applies to images too.
    max_frames: int = 360_000
    max_seconds: float = 3600.0
    max_pixels: int = 7680 * 4320


@dataclass
class ShotsConfig:
    """Shot detection with PySceneDetect on the low-resolution analysis frames."""

    detector: Literal["content", "adaptive"] = "adaptive"
    # ContentDetector's threshold on its frame score (PySceneDetect's default 27).
    threshold: float = 27.0
    # AdaptiveDetector's ratio threshold and minimum frame score (PySceneDetect: 3.0 and 15).
    adaptive_threshold: float = 3.0
    min_content_val: float = 15.0
    # Width of the analysis frames that motion and subject scoring read; shot and dissolve
    # detection read frames at half this width.
    analysis_width: int = 256
    # Frames per second the shot detector reads: every n-th frame, n = floor(fps /
    # detect_fps), at most curation.split.trim_frames (0: every frame). A cut is then found
    # up to n - 1 frames late, inside the frames trimmed at every cut, so no clip gains a
    # frame of the next shot (curation/analysis.py:detection_stride). The dissolve detector
    # reads every frame.
    detect_fps: float = 12.0


@dataclass
class SplitConfig:
    """From shots to clips."""

    min_seconds: float = 1.0
    # Longer shots are cut into windows of at most this length.
    max_seconds: float = 10.0
    # Frames dropped on each side of a cut (transitions bleed into neighbouring frames).
    trim_frames: int = 2
    # Split at dissolves too, dropping their cross-faded frames (curation/dissolves.py).
    dissolves: bool = True
    # Largest blend residual, as a share of the change across a quarter-second window, at
    # which a frame counts as halfway through a fade (lower finds fewer dissolves).
    dissolve_threshold: float = 0.3


@dataclass
class ScoringConfig:
    # Analysis frames per second that motion and subject scoring sample (2, as Data-Juicer
    # and video2dataset use for optical flow).
    sample_fps: float = 2.0
    # Which motion score decides: dense optical flow or the codec's own motion vectors.
    motion: Literal["farneback", "motion_vectors"] = "farneback"
    # LAION aesthetic head and CLIP ViT-L/14 weights (local files); without them a
    # weight-free image-quality score ranks the clips.
    aesthetic_head: Optional[str] = None
    aesthetic_clip: Optional[str] = None
    # Actors in the GPU model pool (the aesthetic scorer with GPUs, and the captioner when
    # it holds GPUs too), and the scorer's GPUs per actor (0 on CPU-only clusters: the scorer
    # then runs inside each file worker).
    aesthetic_actors: int = 1
    aesthetic_gpus: float = 0.0
    # Memory each GPU scorer actor declares to Ray, in MiB (CLIP ViT-L/14 and its batches;
    # an estimate, not measured).
    aesthetic_memory_mb: int = 4096
    # Text overlays (curation/scorers/text.py): frames per second read (text stays on screen
    # for seconds; 0 turns it off), their width in px (small text is lost at 256), and
    # EasyOCR's CRAFT weights (craft_mlt_25k.pth, the `ocr` extra) instead of the weight-free
    # stroke detector. CRAFT runs in the file workers on CPU: 1.6 s a 512 px frame.
    text_fps: float = 1.0
    text_width: int = 512
    text_weights: Optional[str] = None


# The classes curation/scorers/camera.py gives a clip's camera (filters name them).
CAMERA_CLASSES = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "rotate", "shaky")
# What the balancing weights can stratify on (curation.balance_on).
BALANCE_COLUMNS = ("aesthetic", "motion", "subject", "text_area", "camera_motion")


@dataclass
class CameraConfig:
    """Camera-motion classes (curation/scorers/camera.py): speeds at the picture's corner,
    in frame diagonals per second."""

    # Below this the camera is static (0.004: 2 px/s on a 448x256 frame).
    static_speed: float = 0.004
    # Shifts that scatter around the clip's median move by more than this (and by more than
    # that move) are shake.
    shaky_speed: float = 0.02


@dataclass
class NearDuplicatesConfig:
    """Clips that show the same footage (re-encoded, rescaled, slightly cropped, brightened or
    re-timed copies) found by comparing their fingerprints partition by partition (Lance's
    IVF k-means), and confirmed by their CLIP embeddings where both clips have one."""

    enabled: bool = True
    # Mean cosine similarity of the keyframes' fingerprints at which two clips are copies.
    # Measured frame by frame on a photograph and photo-like pictures: re-encoding 0.99-1.0,
    # a 4% crop 0.91-0.98, 6% 0.80-0.95, 10% 0.60-0.87; another picture at most 0.29, and
    # another shot of the same photograph (its left half) 0.41.
    min_similarity: float = 0.9
    # Cosine similarity of two clips' CLIP embeddings (clips table ``clip_embedding``, written
    # when curation.scoring has the CLIP weights) below which a fingerprint match is not a
    # copy. The fingerprint sees only the layout of light and dark, so two different shots
    # with the same composition (a horizon at the same height) can match; CLIP sees what is
    # in the frame. 0.9 because a re-encoded, rescaled or slightly cropped copy shows the same
    # content and should keep its embedding nearly unchanged, while different content that
    # merely shares a layout should fall below it: an estimate, not measured on real ViT-L/14
    # weights here. Where either clip has no embedding the fingerprint decides alone.
    min_clip_similarity: float = 0.9
    # A table of at least index_min_rows clips is split into sqrt(n) partitions (Lance's IVF
    # k-means), and each clip is compared with the clips of its partitions_probed nearest
    # partitions; a smaller table is compared exactly, every clip with every other, by one
    # blocked matrix product (curation/near_duplicates.py). The exact pass grows with the
    # square of the table: measured in benchmarks/curation.py (near_duplicates_at_scale).
    partitions_probed: int = 8
    index_min_rows: int = 20_000


@dataclass
class CaptioningConfig:
    """Captions for clips and images that came without one (curation/captioner.py): a
    vision-language model from a local transformers folder (BLIP, Qwen2-VL, Florence-2's
    converted layout), reading each row's middle keyframe. Without a folder, rows keep the
    captions their inputs gave."""

    model: Optional[str] = None
    # BLIP: the text the caption continues ("" for none); chat models: the user's message.
    prompt: str = "a picture of"
    max_new_tokens: int = 30
    batch_size: int = 16  # frames per generate call
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # half precision on GPUs only
    # GPUs per captioning actor: above 0 it runs in the GPU actor pool (with the aesthetic
    # scorer when that holds GPUs too), else inside each file worker.
    gpus: float = 0.0
    memory_mb: int = 4096  # declared to Ray by the GPU pool's actors (an estimate, not measured)
    # Caption every row, replacing the captions the inputs gave (i2vgen curate --recaption).
    recaption: bool = False


@dataclass
class FiltersConfig:
    """Thresholds; rows outside them stay in the table with keep=false and the reason."""

    min_aesthetic: float = 3.0
    # Motion in fractions of the frame diagonal per second.
    min_motion: float = 0.002
    max_motion: float = 1.0
    min_subject: float = 0.0
    max_subject: float = 1.0
    # Camera classes to drop (e.g. [shaky]), or the only ones to keep (empty: all of them).
    drop_camera: list[str] = field(default_factory=list)
    keep_camera: list[str] = field(default_factory=list)
    # Largest share of the frame covered by text (subtitles, watermarks); 1: no filter.
    max_text_area: float = 1.0


@dataclass
class MediaConfig:
    """How clips are stored: H.264 at most the refiner's size."""

    crf: int = 20
    preset: str = "veryfast"


@dataclass
class CurationConfig:
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    shots: ShotsConfig = field(default_factory=ShotsConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    near_duplicates: NearDuplicatesConfig = field(default_factory=NearDuplicatesConfig)
    captioning: CaptioningConfig = field(default_factory=CaptioningConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    # Quantile bins per score for the balancing weights.
    balance_bins: int = 3
    # What the balancing weights stratify on: scores (binned by quantiles) and, for clips,
    # camera_motion (one stratum per class). A column a table lacks is skipped for it.
    balance_on: list[str] = field(default_factory=lambda: ["aesthetic", "motion", "subject"])
    # Per-input limit, counted from the moment the file's work starts (never its wait in a
    # queue); a file whose work runs longer (a hung decoder) becomes a terminal reject.
    file_timeout_s: float = 300.0
    # Retries of a transient failure (an I/O error, a crashed or killed worker process), with
    # exponential backoff from retry_backoff_s; a file still failing then becomes a
    # retryable reject, which the next run tries again.
    max_retries: int = 3
    retry_backoff_s: float = 1.0
    # Images per unit of work (one decode-and-score loop, one result batch): small images
    # cost their decode, not a task each. 3000 160x120 JPEGs on 2 cores, after start-up:
    # 650 images/s at 64, 770 at 128, 880-900 at 256, 940 at 512 (2026-12-02).
    images_per_task: int = 256
    # Seconds between the driver's commits of the fragments its workers wrote: a killed run
    # loses at most this much work (0: commit every written fragment at once).
    commit_every_s: float = 15.0
    # Share of rows whose ``split`` column says "val": chosen from a hash of the row's id
    # alone, so a row stays on its side across re-runs, resumes and other thresholds.
    val_fraction: float = 0.05
    # Follow links to folders in folder scans and ``**`` globs (each real folder is listed
    # once: a loop, or a second link to a folder, is a reject naming it). --follow-symlinks.
    follow_symlinks: bool = False
    # URI prefixes a manifest row may name, besides the roots of the command-line inputs (a
    # remote input's bucket, a local input's folder); "/" admits every local path. A row
    # outside them, or any URI with a query string (?endpoint_override=..., credentials), is
    # a reject.
    allowed_roots: list[str] = field(default_factory=lambda: ["/"])
    # Memory each file worker declares to Ray (its process and its sandboxed child), in MiB:
    # Ray places no more workers on a node than its memory resource holds. Measured peak on
    # 320x180 inputs: 670 MB (worker 374 MB, child 336 MB); bigger sources need more.
    worker_memory_mb: int = 1536


@dataclass
class TrainConfig:
    """Ray Train + DeepSpeed settings shared by the base and refiner runs."""

    # AdamW at a fixed rate (the paper's 8e-5); SD 2.1's spatial layers at spatial_lr_scale x.
    lr: float = 8e-5
    spatial_lr_scale: float = 0.2
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    grad_clip: float = 1.0
    # Samples per worker per step; every micro-batch has one (frames, fps) shape.
    micro_batch: int = 2
    # Micro-batch size by frame count, so that a still image does not take a 32-frame
    # clip's slot: tokens_per_micro_batch > 0 fits each frame count's micro-batch into that
    # many latent positions (frames x h x w at the stage's size); micro_batch_sizes gives
    # one size per entry of frame_counts. With neither, every micro-batch has micro_batch.
    # Shapes are still drawn per micro-batch at frame_weights x fps_weights, and the loss
    # is the micro-batch's mean, so each shape's share of the objective is unchanged.
    tokens_per_micro_batch: int = 0
    micro_batch_sizes: list[int] = field(default_factory=list)
    zero_stage: int = 2
    # AdamW's fused kernel (one launch for every parameter, not one per tensor) on CUDA;
    # DeepSpeed's overlap of the gradient reduction with backward, and its bucket size in
    # elements (DeepSpeed's default, 5e8). Off until measured on a GPU
    # (benchmarks/model_step.py --paper times the engine with each).
    fused_adamw: bool = False
    overlap_comm: bool = False
    bucket_elements: int = 500_000_000
    # bf16 on GPUs; CPUs train in fp32.
    bf16: bool = True
    # The device's peak TFLOP/s for the logged MFU; 0 looks up a known GPU's bf16 peak
    # (training.mfu), and CPUs and unknown devices report no MFU.
    peak_tflops: float = 0.0
    # The EMA's decay after its warm-up: update n averages with min(ema_decay, (1+n)/(10+n)),
    # so early exports are not dominated by the initial weights.
    ema_decay: float = 0.9999
    max_steps: int = 1000
    checkpoint_every: int = 100
    log_every: int = 10
    # Every validate_every steps (0: never) the validation loss on held-out rows (the same
    # clips, noise and timesteps every time), the zero-prediction loss beside it, and sample
    # videos from validation_clips first frames.
    validate_every: int = 0
    validation_clips: int = 2
    # Sampler steps of the validation videos.
    validation_sampling_steps: int = 10
    workers: int = 2
    use_gpu: bool = False
    max_failures: int = 2
    seed: int = 0
    # Dynamic frames and FPS (the paper's 1:1:1:5 and 1:2:4:1).
    frame_counts: list[int] = field(default_factory=lambda: [1, 8, 16, 32])
    frame_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 5.0])
    fps_values: list[int] = field(default_factory=lambda: [1, 4, 8, 16])
    fps_weights: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 1.0])
    # CPUs reserved per training worker and per data-loading actor (0 lets loaders share
    # the trainers' cores, which a small machine needs).
    cpus_per_worker: float = 1.0
    loader_cpus: float = 1.0
    # Debugging: > 0 repeats the plan's first N micro-batches for the whole run (the same
    # rows and frames) with fresh noise, timesteps and dropout each step, so a healthy model
    # must memorise those clips as a denoiser does: from any noise (a fixed noise would let
    # it memorise one noise-to-clip map and hide directions it cannot see).
    overfit_batches: int = 0
    # A step whose loss is not finite, found at the next log step: stop the run, naming the
    # step (its last checkpoint stays the run's), or continue (the loss is left out of the
    # logged mean; DeepSpeed's ZeRO optimizers skip the update of a step whose gradients
    # are not finite, "OVERFLOW! Skipping step").
    nonfinite: Literal["stop", "continue"] = "stop"
    # Debugging: > 0 makes that step's loss NaN, to see the run stop on it.
    debug_nan_step: int = 0
    # Extra rows drawn per micro-batch to stand in for clips whose media fails to decode.
    spare_samples: int = 2
    # A SQL filter on the curated tables (e.g. "aesthetic > 6 AND motion > 0.2").
    where: Optional[str] = None
    # SQL choosing the validation rows, which training never draws. None means
    # "split = 'val'" when a table has a split column, else no rows are held out.
    val_where: Optional[str] = None
    # Latents and CLIP features from `i2vgen encode`: auto uses them when every drawn row has
    # them for this stage's current encoders (the trainers then build no VAE or CLIP),
    # require fails when they do not, never always decodes and encodes the media.
    encoded: Literal["auto", "require", "never"] = "auto"


@dataclass
class EncodeConfig:
    """``i2vgen encode``: the frozen encoders run once over the curated tables, not every step."""

    # Latents are stored for frames spaced 1/grid_fps s apart; each train.fps_values entry
    # must divide it, so every (frames, fps) draw is a strided slice of the grid.
    grid_fps: int = defining("encoding", default=16)
    dtype: Literal["float16", "float32"] = defining("encoding", default="float16")
    # Rows per Lance commit: a killed run redoes at most one chunk.
    chunk_rows: int = 32
    # Encoder actors (each holds the VAE and CLIP) and the GPUs each takes.
    actors: int = 1
    gpus_per_actor: float = 0.0
    # Frames per VAE / CLIP call (memory, not results).
    batch_frames: int = 8


@dataclass
class Config:
    """The root: one object describes the model, the diffusion process and both stages."""

    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    global_encoder: GlobalEncoderConfig = field(default_factory=GlobalEncoderConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
