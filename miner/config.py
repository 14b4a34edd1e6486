"""Defaults, in one place.

Each part of the product reads its options from one dataclass here; functions take such a config
object or explicit keyword arguments, and the CLI builds configs from flags. Nothing else holds a
default that a user may want to change.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def to_plain(value: Any) -> Any:
    """Tuples -> lists and mapping keys -> str, recursively: settings as checkpoints and graphs store them
    (JSON-like values)."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


#: default pixel limit of one image (`JobConfig.max_pixels`, `miner.data.load_image`): 2^28 = 16,384^2
MAX_PIXELS = 1 << 28


@dataclass
class JobConfig:
    """Options of the mining job (`miner mine`, `miner.job.run_job`).

    Output-affecting options (``shard_size``, ``classes``, ``prob_threshold``, ``backend``, ``max_pixels``) are
    recorded in the manifest, and a rerun on the same OUT with different values is refused unless it
    overwrites; the others (``batch_size``, workers and their resources) only change speed.

    Attributes:
        shard_size: images per shard, the unit of atomic output and of resume (shard k holds archive
            records ``[k * shard_size, (k + 1) * shard_size)``).
        batch_size: images per model call.
        backend: ``auto``, ``torch``, ``onnxruntime`` or ``tensorrt`` (see `miner.backends.open_backend`).
        classes: which findings get boxes for an image: ``labels`` (its archive labels), ``predicted``
            (probability >= ``prob_threshold``) or ``all``.
        prob_threshold: probability at which a finding counts as predicted.
        workers: model actors; None = one per GPU where the cluster has GPUs, else one per
            ``cpus_per_worker`` CPUs of the cluster.
        cpus_per_worker: CPUs each model actor reserves; also its torch/OpenMP thread count.
        gpus_per_worker: GPUs each model actor reserves; None = 1 where the cluster has GPUs, else 0.
        decode: where images are decoded: ``actor`` (each model actor decodes its own batches: no pixels travel
            through Ray's object store and no decode processes start; a CPU actor's cores decode and run the
            model in turn anyway), ``tasks`` (Ray tasks beside the actor that consumes them, ``prefetch`` batches
            ahead: decoding on the node's CPUs overlaps a GPU's work) or ``auto`` (``tasks`` for GPU actors,
            ``actor`` for CPU actors). The decoded pixels are the same either way.
        decode_cpus: (``tasks``) CPUs each decode task reserves; 0 = decode tasks are not counted against the
            cluster's CPUs and run beside the actor that consumes them (node affinity), at most
            ``prefetch`` batches ahead of each actor.
        prefetch: batches queued per actor (decoding ahead of the model); None = 2 for CPU actors, 8 for
            GPU actors (a GPU consumes a batch faster than one CPU decodes it).
        malloc: ``tuned`` (raise glibc's mmap/trim thresholds in the workers: no page-fault storm in torch
            inference on CPU) or ``default`` (leave glibc's defaults; for comparisons).
        start_timeout: seconds to wait for the first model actor to start before giving up.
        max_pixels: the most pixels (height x width x frames) an image may announce in its file header; a
            larger one becomes an error row of kind ``too_large`` without being decoded (a decompression
            bomb: a 1.5 MB PNG of 40,000 x 40,000 pixels decodes to 1.6 GB, and to 6.4 GB as float32). The
            default, 2^28 (16,384 x 16,384), is far above any radiograph. Output-affecting.
    """

    shard_size: int = 1024
    batch_size: int = 16
    backend: str = "auto"
    classes: str = "labels"
    prob_threshold: float = 0.5
    workers: int | None = None
    cpus_per_worker: int = 1
    gpus_per_worker: float | None = None
    decode: str = "auto"
    decode_cpus: float = 0.0
    prefetch: int | None = None
    malloc: str = "tuned"
    start_timeout: float = 600.0
    max_pixels: int = MAX_PIXELS


# --- archives (miner.data.read_archive; owner: data) -----------------------------------------------------


#: CheXpert's uncertain labels (`ArchiveConfig.uncertain`)
UNCERTAIN_POLICIES: tuple[str, ...] = ("ignore", "zeros", "ones")


@dataclass
class ArchiveConfig:
    """Choices that some archive kinds need when they are read (`miner.data.read_archive`).

    Attributes:
        uncertain: CheXpert's uncertain label (``-1``): ``ones`` (positive, U-Ones), ``zeros`` (negative, U-Zeros)
            or ``ignore`` (U-Ignore: the label is unknown: `Record.unknown`; such a finding gets no boxes under
            ``--classes labels`` and is left out of `miner eval`'s label scores). Blank means not mentioned:
            negative under every policy.
        allow_outside_archive: lift the archive-root rule (`miner.data.confine`): read image files that resolve
            outside the archive's root (``--allow-outside-archive``; e.g. a manifest of absolute paths into a
            mounted store). Off: such a file is never opened (an ``outside_archive`` error row).
    """

    uncertain: str = "ignore"
    allow_outside_archive: bool = False


# --- phantom archives (miner.phantoms, `miner phantoms`) -----------------------------


@dataclass
class PhantomConfig:
    """Defaults for `miner phantoms` / `miner.phantoms.make_phantoms` (docs/archives.md).

    Attributes:
        images: number of images.
        size: side of the square 8-bit PNGs, in pixels.
        seed: the archive is a pure function of (seed, options): same seed, same bytes.
        findings: findings drawn (a subset of the eight that the generator knows; see `miner.phantoms.lesions`).
        no_finding: fraction of images without any finding.
        extra_findings: probabilities of a second and a third finding on a positive image (multi-label).
        multi_lesion: per finding, probability of more than one separate lesion of it in one image
            (Nodule/Mass: 2 or 3 lesions; others: 2; Effusion: bilateral).
        test_fraction: fraction of patients in test_list.txt (the rest in train_val_list.txt).
        images_per_patient: mean number of images per patient (follow-ups).
        contrast: scale of every lesion's density (1 = default visibility; lower = harder).
        noise: standard deviation of the pixel noise (fraction of the full range).
        masks: also write ``masks/<image stem>_<Finding>.png`` (255 on the finding's lesions).
        real_background: use the pydicom-data radiograph (randomly cropped and warped) as the chest.
        workers: processes drawing images; 0 = one per CPU (at most 8) for 200 images or more, else 1.
    """

    images: int = 1000
    size: int = 512
    seed: int = 0
    findings: tuple[str, ...] = (
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    )
    no_finding: float = 0.35
    extra_findings: tuple[float, float] = (0.35, 0.1)
    multi_lesion: dict = field(default_factory=lambda: {
        "Nodule": 0.4, "Mass": 0.35, "Atelectasis": 0.2, "Infiltration": 0.2, "Pneumonia": 0.2, "Effusion": 0.25,
    })
    test_fraction: float = 0.25
    images_per_patient: float = 1.8
    contrast: float = 1.0
    noise: float = 0.018
    masks: bool = False
    real_background: bool = False
    workers: int = 0


# --- training (miner.train, `miner train`; owner: models & training) -----------------------------------


#: the recipe `miner train` uses and records unless told otherwise (`miner.recipes`; `SEED_RECIPE` is the seed's;
#: its inference settings: `RECIPE_SETTINGS`)
DEFAULT_RECIPE = "peaks"
#: Cai et al. 2018 as reproduced: `MiningConfig()` and `BoxConfig()` are its settings, and a model whose settings
#: record names no recipe (made before recipes) is mined with them (`miner.settings`)
SEED_RECIPE = "cai2018"


@dataclass
class TrainConfig:
    """Defaults for `miner train` (docs/training.md). Stages follow Cai et al. Sec. 3.1-3.2."""

    arch: str = "resnet50_msa"
    #: named recipe (`miner.recipes`): its model options apply where the arch takes them (explicit
    #: `model_options` win), and the checkpoint records its mining and box settings
    recipe: str = DEFAULT_RECIPE
    #: constructor options of the model (width, upsample, head, ...)
    model_options: dict = field(default_factory=dict)
    input_size: int = 512
    #: class list to train (None: the archive's classes.txt, else the 14 ChestX-ray14 findings)
    classes: tuple[str, ...] | None = None
    #: local torchvision-layout weights (ImageNet) for the trunk; never downloaded
    init: str | None = None
    #: stages to run, in order; "all" = base, msa-init, end2end, am for *_msa models, else base, am
    stages: tuple[str, ...] = ("all",)
    base_epochs: int = 10
    msa_init_epochs: int = 3
    end2end_epochs: int = 5
    am_epochs: int = 3
    #: adamw (CheXNet's choice for chest X-rays: Adam, lr 1e-3) | sgd (momentum, nesterov; Cai et al. used lr 0.1
    #: for ResNet-50 from ImageNet)
    optimizer: str = "adamw"
    lr: float = 1e-3  # base and msa-init
    finetune_lr: float = 2e-4  # end2end and am
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine (per stage, per step) | constant
    batch_size: int = 32
    workers: int = 2
    #: decode every image once into memory (float16) before training; for small archives
    cache: bool = False
    augment: bool = False
    #: fraction of the train split held out (by patient) for per-epoch validation AUC
    val_fraction: float = 0.1
    class_weights: str = "none"  # none | balanced (Wang et al. W-CEL weights from the train split)
    amp: bool = False  # bf16 autocast on CPU, fp16 + GradScaler on CUDA
    seed: int = 0
    threads: int | None = None  # torch intra-op threads per process (None: cores / local processes)
    device: str = "auto"  # auto | cpu | cuda
    #: BatchNorm in eval mode (running statistics frozen) in every stage
    freeze_bn: bool = False
    # attention mining (AM) fine-tuning
    am_steps: int = 2  # erasure depths 1..am_steps, cycled batch by batch (T-1 for inference T=3)
    am_threshold: float = 0.5
    am_connectivity: int = 8
    am_fraction: float = 0.125  # n = max(1, floor(N * fraction)) images of a batch erased (KP-Vanilla / KP)
    #: BatchNorm in eval mode during AM. Off by default: a net trained with batch statistics has small,
    #: scale-free conv weights, and fine-tuning it with frozen statistics diverges easily
    am_freeze_bn: bool = False
    kp: str = "kp"  # none (erase all N) | vanilla (erase first n) | kp (vanilla + L_KP)
    kp_lambda: float = 0.5
    kp_layers: tuple[str, ...] = ("layer3", "layer4", "msa", "logits")
    kp_norm: str = "image"  # image: mean over images of ||g_A - g_B||_2 | batch: ||G_A - G_B||_F / (N-n)
    #: stop each epoch after this many steps (quick runs, tests); None = whole epoch
    max_steps: int | None = None
    progress: bool = True


# --- attention mining, boxes, evaluation (miner.mining, miner.boxes, miner.metrics; owner: maps) --------


@dataclass
class MiningConfig:
    """Attention mining at inference (Cai et al. Sec. 3.2, Eq. 7-8; `miner.mining.attention_mining`).

    Attributes:
        steps: T, the number of maps fused (1 = the plain class map; the seed found 3 best).
        threshold: binarisation level of each normalised step map H_t.
        connectivity: 8 (diagonal neighbours join a component) or 4.
        normalize: ``minmax`` (min-max over the positions still kept, erased positions 0) or ``relu-max``
            (ReLU, then divide by the maximum); both keep erased positions at exactly 0 (see `miner.mining`).
    """

    steps: int = 3
    threshold: float = 0.5
    connectivity: int = 8
    normalize: str = "minmax"


@dataclass
class BoxConfig:
    """Boxes from fused heatmaps (`miner.boxes.boxes_from_maps`).

    Attributes:
        rule: ``levels`` (Cai et al.: components of the fused map H_f at fixed levels, ranked by the mean H_f
            inside the box; `miner.boxes`) or ``steps`` (one box per attention-mining step: the region around the
            step's peak down to ``step_level`` of it, ranked by the mean H_1 inside the region;
            `miner.step_boxes`).
        thresholds: (``levels``) levels on the fused map min-max-normalised per map; each level's components give
            boxes. ``"wang"`` = (60/255, 180/255), Wang et al.'s levels on heatmaps scaled to [0, 255].
        step_level: (``steps``) a step's region is where its map is >= step_level x its peak.
        finding_levels: (``steps``) per-finding step levels (finding name -> level) that override
            ``step_level``, e.g. fixed on a validation split with boxes (`miner.calibrate`).
        finding_shapes: per-finding box shapes (finding name -> [sx, sy, dx, dy]) applied to every box of that
            finding (any rule): width x sx, height x sy, centre moved by dx x width and dy x height, clipped to
            the image (`miner.step_boxes.shape_boxes`). A class map's hot region has the map's shape, not the
            lesion's (a round blob for a flat band of atelectasis, a hump that runs below an effusion's meniscus);
            `miner calibrate` fixes these on a validation split with boxes. None: boxes as read from the map.
        max_boxes: boxes kept per image and finding.
        upsample: working resolution = map size x upsample (bilinear, align_corners=False) ...
        max_work_side: ... but no side above this unless the map itself is larger (then the map's own size).
        min_area: smallest component kept, in map cells (one cell = upsample^2 working pixels).
        dedup_iou: a box whose IoU with a better-ranked box of the same image and finding exceeds this is a
            duplicate (the same region found at another level) and dropped.
        dedup_iobb: (``steps``) a box lying inside an earlier step's box by more than this share of its own
            area is a duplicate too.
        drop_nested: (``steps``) 0 = off; else a box that holds an earlier step's kept box (their intersection
            over the earlier box's area above this) is dropped too: the ring a later step finds around an erased
            core boxes the same lesion again, larger, around the first box (``dedup_iobb`` only drops a box lying
            inside an earlier one). Off in both recipes, so their boxes stay as they were.
        regressors: (``steps``) per-finding box regressions (finding name -> record of
            `miner.box_regression.Regressor`), fitted on a validation split with boxes by `miner calibrate`: each
            mining step's box is regressed from its map's regions at several levels and scored by the IoU it is
            expected to reach; one box per lesion (`miner.box_regression`). They replace the shapes and cell
            alignment of the findings they name. None: the rule's boxes.
        connectivity: 8 or 4, for the components.
        align_cells: place map cells on their receptive-field centres when mapping boxes to pixels. A ResNet's
            stride-s cell i is centred on input pixel s * i, not s * i + (s - 1) / 2 as plain bilinear upsampling
            assumes: boxes move (s - 1) / 2 input pixels up and left (3.5 px at stride 8, 7.5 at stride 16) for
            models whose maps say so (``cell_origin == "corner"``). Off in the seed's recipe.
    """

    rule: str = "levels"
    thresholds: tuple[float, ...] | str = (0.3, 0.5, 0.7)
    step_level: float = 0.5
    finding_levels: dict | None = None
    finding_shapes: dict | None = None
    max_boxes: int = 3
    upsample: int = 4
    max_work_side: int = 256
    min_area: float = 1.0
    dedup_iou: float = 0.8
    dedup_iobb: float = 0.8
    connectivity: int = 8
    align_cells: bool = False
    drop_nested: float = 0.0
    regressors: dict | None = None


#: Each recipe's inference settings: the map method, attention mining and the box rule (`miner.settings.
#: InferenceSettings.for_recipe`; `miner.recipes.RECIPES` adds the model options each applies at training). With
#: `MiningConfig` and `BoxConfig` above, whose own defaults are the seed's recipe, and `DEFAULT_RECIPE`, these are
#: every default of how a model is mined: the seed's (``cai2018``) and the product's (``peaks``, docs/results/
#: box-quality.md: erase only each peak's core, one box per step at 0.85 of its peak, cells at their centres).
RECIPE_SETTINGS: dict[str, dict[str, Any]] = {
    SEED_RECIPE: {"method": "cam", "mining": MiningConfig(), "boxes": BoxConfig()},
    "peaks": {"method": "layercam", "mining": MiningConfig(steps=3, threshold=0.8),
              "boxes": BoxConfig(rule="steps", step_level=0.85, dedup_iou=0.5, dedup_iobb=0.8, align_cells=True)},
}


@dataclass
class EvalConfig:
    """The ChestX-ray14 localisation protocol (`miner.metrics.localization`, `miner eval`).

    Attributes:
        iou_thresholds: T(IoU) levels (Cai et al. Table 2, Wang et al. Table 3).
        iobb_thresholds: T(IoBB) levels (intersection over the predicted box's area).
        afp_bounds: JSON or CSV file of AFP bounds per finding and level; None = the built-in bounds
            (`miner.metrics.bounds`: Wang et al.'s AFP for T(IoU) as Cai et al.'s Table 2 reports them; no
            bound, i.e. every box, for T(IoBB)).
        within_rank: order of the boxes of one rank in the list B: ``score`` (descending mean heat) or
            ``image`` (image order, the seed's literal listing).
        max_rank: boxes per image and finding that enter B (rank 1..max_rank).
        readers: ground truth of an archive with several readers' boxes (VinDr-CXR; `miner.metrics.readers`):
            ``fused`` (boxes of one image and finding that overlap at IoU >= ``fuse_iou`` across readers are one
            lesion, its box the mean of theirs), ``any`` (every reader's box is a ground-truth box), or one
            reader's id (``R8``: that reader's boxes only).
        fuse_iou: IoU at which two readers' boxes are the same lesion under ``fused``.
        min_readers: under ``fused``, keep lesions that at least this many distinct readers boxed.
        negatives: which images count for a finding f in the COCO metrics: ``auto`` (the archive's convention:
            ``all`` where readers saw every image for boxes (VinDr-CXR, RSNA, SIIM), else ``boxed``), ``all``
            (every mined image; a box of f on an image without a ground-truth box of f is a false positive) or
            ``boxed`` (only the images with a ground-truth box of f: ChestX-ray14's box list covers 880 of its
            images, so the others are not known negatives).
        coco_backend: ``faster-coco-eval`` (C++, the default) or ``pycocotools`` (the reference implementation).
    """

    iou_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    iobb_thresholds: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    afp_bounds: str | None = None
    within_rank: str = "score"
    max_rank: int = 3
    readers: str = "fused"
    fuse_iou: float = 0.4
    min_readers: int = 1
    negatives: str = "auto"
    coco_backend: str = "faster-coco-eval"


@dataclass
class LabelsConfig:
    """Pseudo-labels for detector training (`miner labels`, `miner.labels`).

    Attributes:
        min_score: keep boxes with ``score`` >= this (mean fused heatmap in the box, in [0, 1]).
        max_rank: keep boxes of rank <= this (1 = the best box of an image and finding).
        filtered: an image whose every box (of the exported findings) the score/rank filters removed:
            ``skip`` (left out of the export: it shows a finding that would otherwise be taught as background)
            or ``negative`` (written as an image without objects).
    """

    min_score: float = 0.0
    max_rank: int = 3
    filtered: str = "skip"


@dataclass
class DetectorTrainConfig:
    """One training of the detector (`miner detector train`, `miner.detector.train`); every field is part of what
    a resumed training must match.

    Attributes:
        epochs: passes over the label set.
        batch: images per SGD step.
        lr: peak learning rate (linear warm-up over 50 steps, then a cosine decay to 0).
        size: the detector's input side (images are resized to size x size).
        seed: the order of the images, the flips and the new layers' initial weights.
        flip: horizontal flips (p = 0.5).
        fpn_channels: channels of every feature-pyramid level.
        backbone: a classifier checkpoint whose ResNet stages start the trunk (its batch norms frozen),
            ``embedded`` (the product's own model) or ``none`` (from scratch, batch norms trained).
        split: the images trained on (``train``: data.yaml's train list; ``all``; or a split name).
    """

    epochs: int = 12
    batch: int = 4
    lr: float = 0.02
    size: int = 256
    seed: int = 0
    flip: bool = True
    fpn_channels: int = 64
    backbone: str = "embedded"
    split: str = "train"


# --- export and backends (miner.export, miner.backends, `miner export`; owner: export) ----------------


@dataclass
class ExportConfig:
    """Defaults for `miner export onnx` / `miner export trt` (docs/export.md).

    Attributes:
        method: class-map method baked into the graph (`miner.cam.list_methods()`); None = ``cam`` for
            GAP + linear heads, ``gradcam`` for other classifiers, ``seg-gradcam`` for segmentation nets,
            ``pyramid-gradcam`` for DC-FPN.
        layer: module the maps are taken at; None = the method's default (the model's feature layer).
        opset: ONNX opset of the graph.
        masks_input: give non-linear-head graphs a ``masks`` input for attention mining's erasure steps
            (None = wherever the method supports class-wise erasure).
        external_data: weights in a side file ``<name>.onnx.data``; None = only for graphs over ~1.8 GB
            (protobuf's 2 GB limit); below that one self-contained file.
        check: compare ONNX Runtime with eager PyTorch after export.
        atol: the check's tolerance (max abs difference of logits and maps).
        trace_batch: batch of the example inputs used for tracing (>= 2; the graph's batch is dynamic).
        min_batch, opt_batch, max_batch: TensorRT optimisation profile.
        workspace_gb: TensorRT workspace memory pool limit (GiB).
    """

    method: str | None = None
    layer: str | None = None
    opset: int = 18
    masks_input: bool | None = None
    external_data: bool | None = None
    check: bool = True
    atol: float = 1e-4
    trace_batch: int = 2
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_gb: float = 4.0


@dataclass
class BackendConfig:
    """Defaults for `miner.backends.open_backend`.

    Attributes:
        backend: ``auto`` (by file type: ``.pt`` -> torch, ``.onnx`` -> onnxruntime, ``.engine``/``.plan`` ->
            tensorrt; onnxruntime then takes the best provider that loads), or one of ``torch``,
            ``onnxruntime``, ``tensorrt``.
        provider: onnxruntime providers: ``auto`` (TensorRT EP, CUDA EP, CPU: first that loads), ``tensorrt``,
            ``cuda`` or ``cpu`` (a named provider that does not load is an error).
        device: ``cpu``, ``cuda``, ``cuda:N``; None = the backend's best.
        intra_op_threads: CPU threads for onnxruntime / torch; None = the cores of the affinity mask.
        spinning: let idle onnxruntime threads spin (lower latency; off when sharing cores).
        torch_compile: torch backend: run the traced map graph through `torch.compile`.
        method, layer: torch backend on a checkpoint: the map method and layer (as `ExportConfig`).
        plain_maps: torch backend on a checkpoint: ignore its calibrated stage weights (`miner.calibrate`).
    """

    backend: str = "auto"
    provider: str = "auto"
    device: str | None = None
    intra_op_threads: int | None = None
    spinning: bool = True
    torch_compile: bool = False
    method: str | None = None
    layer: str | None = None
    plain_maps: bool = False


# --- the demo and the paper benchmark (miner.demo, `miner demo`, `miner bench paper`; owner: demo) -------


@dataclass
class DemoConfig:
    """Defaults for `miner demo OUT` (README, "The main job").

    Attributes:
        images: phantom images generated into ``OUT/archive`` (plus one unsupported file with `bad_files`).
        size: their side in pixels; None = the model's input size.
        seed: phantom seed (the embedded model was trained on seed 0: the demo mines images it never saw).
        bad_files: break one image of each `miner.errors.ImageError` kind, so ``OUT/errors`` shows what the job
            does with them.
        overlays: images drawn to ``OUT/overlays`` (multi-lesion images first), plus one attention-mining figure.
        shard_size, batch_size, workers: of the Ray job (`miner.config.JobConfig`).
        steps: attention-mining steps T.
    """

    images: int = 200
    size: int | None = None
    seed: int = 2024
    bad_files: bool = True
    overlays: int = 4
    shard_size: int = 64
    batch_size: int = 16
    workers: int | None = None
    steps: int = 3


@dataclass
class PaperConfig:
    """Defaults for `miner bench paper` (the seed's Tables 2-3 and Fig. 2 on phantoms; docs/results/seed-tables.md).

    One base model (stages base, msa-init, end2end) is trained on a phantom archive, then three AM fine-tunings
    start from it (``--kp none``, ``vanilla``, ``kp``); every model mines a second, unseen phantom archive at
    T = 1, 2, 3 and is scored with `miner.metrics`. The embedded default model uses the same recipe
    (``scripts/train_default_model.sh``).

    Attributes:
        train_images, eval_images: phantom images to train on / to mine and score (different seeds).
        size: phantom side and model input, in pixels.
        seed: training archive seed and training seed; the evaluation archive uses ``eval_seed``.
        arch, width: the model (ResNet-18-MSA at a quarter of the width: 0.72 M parameters, 2.9 MB).
        epochs, msa_init_epochs, end2end_epochs, am_epochs: per stage.
        lr, finetune_lr, batch_size: optimisation (AdamW, cosine per stage).
        class_weights, augment: ``balanced`` class weights (Wang et al.'s W-CEL) and light affine + contrast
            augmentation. Both sharpen the maps a lot on phantoms: with neither, the CAM maximum fell inside a
            Nodule box on 17 % of images (52 % with both), Mass 31 % (69 %), Atelectasis 34 % (80 %).
        steps: the mining steps T compared (the seed's AM ablation: 1, 2, 3).
        iou_levels: T(IoU) of Table 2; table3_levels: those of Table 3.
    """

    train_images: int = 2000
    eval_images: int = 600
    size: int = 256
    seed: int = 0
    eval_seed: int = 1
    arch: str = "resnet18_msa"
    width: float = 0.25
    epochs: int = 8
    msa_init_epochs: int = 2
    end2end_epochs: int = 4
    am_epochs: int = 2
    lr: float = 2e-3
    finetune_lr: float = 5e-4
    batch_size: int = 32
    class_weights: str = "balanced"
    augment: bool = True
    steps: tuple[int, ...] = (1, 2, 3)
    iou_levels: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    table3_levels: tuple[float, ...] = (0.1, 0.3)


# --- the report (miner.report, `miner report`; owner: report) --------------------------------------------


@dataclass
class ReportConfig:
    """Defaults for `miner report OUT` (docs/reports.md).

    A report holds at most ``(top + sample)`` thumbnails per finding, each linking to one full-size picture,
    whatever the size of the job: with the defaults 16 of each per finding (224 for the 14 ChestX-ray14
    findings), plus one plot per finding and a few on the index page.

    Attributes:
        top: per finding, the top-scoring boxes shown: the best box of each image, best images first.
        sample: per finding, boxes drawn at random (uniformly, seeded) from the finding's other boxes.
        seed: seed of the random sample (the same job gives the same report).
        thumb_size: longer side of a thumbnail's panel in pixels (one panel; two with a model: H_f and CLEAR).
        picture_size: longer side of each panel of the full-size pictures.
        jpeg_quality: of thumbnails and pictures (JPEG).
        max_errors: error rows listed in the report's table; the counts by kind always cover every row.
        batch_size: images per model call when heatmaps are drawn (``--model``).
        plot_dpi: resolution of the plots (matplotlib, PNG).
    """

    top: int = 8
    sample: int = 8
    seed: int = 0
    thumb_size: int = 160
    picture_size: int = 512
    jpeg_quality: int = 85
    max_errors: int = 200
    batch_size: int = 16
    plot_dpi: int = 80
