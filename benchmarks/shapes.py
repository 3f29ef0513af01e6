"""The one definition of the benchmark shapes: the DETR-family shapes named in the op issues.

``PROFILE`` is "quick" (default: the CPU-sized subset, the whole suite under 10 minutes on 2 cores)
or "full" (every shape), chosen by the environment variable ``DETR_OPS_BENCH_PROFILE``; on a GPU
the quick profile already includes the GPU shapes, which are cheap there.
"""
import os

import torch

PROFILE = os.environ.get("DETR_OPS_BENCH_PROFILE", "quick")
if PROFILE not in ("quick", "full"):
    raise ValueError(f"DETR_OPS_BENCH_PROFILE must be 'quick' or 'full', got {PROFILE!r}")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"


def pick(quick, full=(), gpu=()):
    """Shapes for this run: ``quick`` always, ``full`` in the full profile, ``gpu`` on a GPU."""
    shapes = list(quick)
    if PROFILE == "full":
        shapes += [s for s in full if s not in shapes]
    if ON_GPU:
        shapes += [s for s in gpu if s not in shapes]
    return shapes


# ---- GIoU: pairwise (N, M) and elementwise pair counts ---------------------------------------------
# 7200x87 is DETR's matching cost at batch 8: 8 images x 900 queries against 87 targets.
GIOU_PAIRWISE = pick(quick=[(7200, 87), (1000, 1000), (4000, 4000)], gpu=[(20000, 20000)])
GIOU_LOSS_PAIRS = pick(quick=[1_000_000], gpu=[16_000_000])

# ---- assignment: single problems (rows, cols) and DETR batches (B, Q) ------------------------------
LSA_SINGLE = pick(
    quick=[(100, 7), (300, 20), (900, 20), (900, 100), (900, 300), (100, 100), (1000, 1000), (2000, 2000)],
)
LSA_DETR_BATCH = pick(quick=[(16, 100), (16, 300), (16, 900)])
# Batches of equal-size DETR problems (B, queries, targets), the input lapx's batch solvers take.
LSA_UNIFORM_BATCH = pick(quick=[(16, 100, 7), (16, 300, 20), (16, 900, 100)])
# H-DETR's one-to-many matching (B, queries, capacity k): ~7 targets per image, each repeated k times.
LSA_CAPACITY = pick(quick=[(16, 1500, 6)])
# torch-linear-assignment 0.1.0's published shapes: batch 208 of (rows, cols); GPU only.
LSA_TLA_BATCH = pick(quick=[], gpu=[(208, 300, 100), (208, 300, 300), (208, 300, 600)])
# COCO-like targets per image: mean ~7, some images empty, at most 100.
COCO_MAX_TARGETS = 100


def coco_like_target_counts(batch: int, generator: torch.Generator) -> list:
    """Targets per image drawn like COCO train2017: geometric-ish, mean about 7, some 0, max 100."""
    counts = torch.distributions.Geometric(probs=torch.tensor(1.0 / 8.0)).sample((batch,))
    counts = torch.where(torch.rand(batch, generator=generator) < 0.02, torch.zeros(batch), counts)
    counts[0] = min(COCO_MAX_TARGETS, max(int(counts[0]), 30))  # one busy image per batch
    return [int(min(c, COCO_MAX_TARGETS)) for c in counts.tolist()]


# ---- matcher: DETR batches (B, Q, num_classes) -------------------------------------------------------
MATCHER = pick(quick=[(16, 100, 92), (16, 300, 92), (16, 900, 92)])

# ---- matcher modes: one training step's matching (every layer, query group and branch), batch 16 ----
# COCO-like target counts, 91 classes (Deformable DETR's num_classes). The issue-17 shapes:
#   deformable-detr  300 queries x 6 decoder layers + the two-stage encoder's proposals (one per memory
#                    token: 22223 at Deformable DETR's full size, the cpu-encoder levels' 5440 on CPU)
#   rf-detr          13 groups x 300 queries, 4 prediction sets (3 decoder layers + encoder)
#   h-detr           300 one-to-one + 1500 one-to-many queries (k = 6), 6 decoder layers each
#   dino             900 queries, 6 layers + the encoder's interm outputs, and the denoising indices
#   d-fine           300 queries, 8 prediction sets (6 layers, pre_outputs, enc_aux), nan_to_num
#   deimv2           d-fine's 8 sets with DEIMv2's IoU-aware cost
#   deim-topk        DEIM's get_top_k_matches, k = 4 rounds, on the final layer's 300 queries
MATCHER_STEP_BATCH = 16
MATCHER_STEP_CLASSES = 91
MATCHER_STEPS = pick(quick=["deformable-detr", "rf-detr", "h-detr", "dino", "d-fine", "deimv2", "deim-topk"])
MATCHER_ENCODER_TOKENS = 22223 if ON_GPU else 5440

# ---- MSDA: (name, N, levels [(H, W)...], Lq, M, D, P) -------------------------------------------------
_ENC_LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21)]
_CPU_ENC_LEVELS = [(64, 64), (32, 32), (16, 16), (8, 8)]
_RTDETR_LEVELS = [(80, 80), (40, 40), (20, 20)]
MSDA = pick(
    quick=[
        ("cpu-encoder", 2, _CPU_ENC_LEVELS, 5440, 8, 32, 4),
        ("cpu-decoder", 2, _CPU_ENC_LEVELS, 300, 8, 32, 4),
    ],
    full=[("deformable-decoder", 2, _ENC_LEVELS, 300, 8, 32, 4)],
    gpu=[
        ("deformable-encoder", 2, _ENC_LEVELS, 22223, 8, 32, 4),
        ("deformable-decoder", 2, _ENC_LEVELS, 300, 8, 32, 4),
        ("deformable-decoder", 8, _ENC_LEVELS, 300, 8, 32, 4),
        ("dino-decoder", 2, _ENC_LEVELS, 900, 8, 32, 4),
        ("dino-decoder", 8, _ENC_LEVELS, 900, 8, 32, 4),
        ("rtdetr-decoder", 2, _RTDETR_LEVELS, 300, 8, 32, 4),
    ],
)
