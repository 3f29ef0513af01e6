"""Every Triton kernel of detr_ops compiled ahead of time for real GPUs (sm_80, sm_90), no GPU needed.

The interpreter checks what a kernel computes, not that it compiles to PTX and SASS, nor what it
costs in registers. This tool:

1. **records** the launches: it calls every Triton launcher of ``detr_ops/triton/*.py`` with small
   CPU tensors over all the dtypes and options the launchers can pick (``PLAN``), while
   ``detr_ops.triton._launch.launch`` is replaced by a recorder that keeps the kernel, its
   arguments and its meta-parameters instead of running it (and checks the grid against CUDA's
   limits);
2. **specialises** each launch exactly as Triton's runtime would (Triton's own argument binder:
   dtypes, integer arguments equal to 1 or divisible by 16, pointer alignment), and keeps the
   distinct specialisations;
3. **compiles** each one with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``,
   through PTX to a cubin with the ptxas Triton bundles (the one that runs on a GPU), and records
   ptxas's resource report: registers, stack frame, spill stores/loads, and shared memory;
4. checks **coverage**: every kernel named in a ``launch(...)`` call of ``detr_ops/triton`` must have
   been recorded, so a new kernel or launcher without a case here fails loudly.

Results are cached per (Triton version, kernel source and its dependencies, specialisation, target,
options), so an unchanged kernel is not compiled again (``--no-cache`` to force it).

    python -m scripts.triton_aot [--targets 80,90] [--jobs N] [--json OUT.json] [--markdown OUT.md]
    python -m scripts.triton_aot --render docs/triton_resources.md A.json [B.json ...]

Exit status 1 when a kernel fails to compile (other than a ``KNOWN_FAILURES`` entry), spills
(other than an ``ACCEPTED_SPILLS`` entry), or is not covered. Must run without
``TRITON_INTERPRET=1`` (compiling needs the real ``@triton.jit``).
"""
import argparse
import ast
import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import os
import pathlib
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Tuple

REPO = pathlib.Path(__file__).resolve().parents[1]
TRITON_DIR = REPO / "detr_ops" / "triton"
DEFAULT_CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "detr_ops" / "triton-aot"
# CUDA's grid limits: x up to 2^31 - 1 blocks, y and z up to 65535.
GRID_LIMITS = (2**31 - 1, 65535, 65535)

# Compile failures that are known and reported to the kernels' owners: (kernel, tokens that the
# specialisation's variant contains, Triton version prefix) -> reason. They are compiled and reported
# like the others but do not fail the run; an entry whose specialisations all compile is reported
# as obsolete (then delete it, and the stage enforces them again).
KNOWN_FAILURES = {
}


# Spills that are accepted, each with its reason: (kernel, tokens that the specialisation's variant
# contains, Triton version prefix) -> why. Any other specialisation that spills fails the run: on a
# GPU a spill is local-memory traffic inside the kernel's loops, so a new one is a regression to fix
# (smaller tiles, more warps) or, once measured, to accept here with the reason.
ACCEPTED_SPILLS = {
}
# A spill of at most this many bytes (stores and loads each) by a specialisation that uses fewer
# than the 255 registers it may is not register pressure: ptxas could have used more registers and
# chose to keep a few values in local memory (L1-resident) instead. Accepted without an entry. (After
# the MSDA tiles were halved, 4-40 B of this kind remained at 64-168 registers.)
SMALL_SPILL_BYTES = 64
SMALL_SPILL_REASON = (f"at most {SMALL_SPILL_BYTES} B of spills by a specialisation below the 255-register limit: not "
                      "register pressure (ptxas could have used more registers), a few values in L1-resident local "
                      "memory")


def accepted_spill(kernel: str, variant: str, triton_version: str, result=None) -> str:
    """Why a spill of `result` (or of any specialisation of `kernel` with `variant`) is accepted, or ""."""
    if result is not None and result.registers < 255 and max(result.spill_stores, result.spill_loads) <= SMALL_SPILL_BYTES:
        return SMALL_SPILL_REASON
    tokens = set(variant.split())
    return next((why for (k, marker, version), why in ACCEPTED_SPILLS.items()
                 if k == kernel and set(marker) <= tokens and triton_version.startswith(version)), "")


def known_failure(kernel: str, variant: str, triton_version: str) -> str:
    tokens = set(variant.split())
    return next((why for (k, marker, version), why in KNOWN_FAILURES.items()
                 if k == kernel and set(marker) <= tokens and triton_version.startswith(version)), "")


# ---- 1. recording ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Launch:
    label: str       # the launcher call that made it
    module: str      # detr_ops.triton.<file>
    kernel: str      # the @triton.jit function's name
    args: tuple
    kwargs: dict
    grid: tuple


class Recorder:
    """Stands in for ``launch``: ``launch(kernel)[grid](*args, **kwargs)`` records instead of running."""

    def __init__(self):
        self.launches: List[Launch] = []
        self.label = ""

    def __call__(self, kernel):
        def with_grid(grid):
            def run(*args, **kwargs):
                g = tuple(grid(kwargs) if callable(grid) else grid)
                for axis, (n, limit) in enumerate(zip(g, GRID_LIMITS)):
                    if not 0 < n <= limit:
                        raise AssertionError(f"{self.label}: grid {g} of {kernel.fn.__name__} has {n} blocks on axis "
                                             f"{axis}; CUDA allows 1..{limit}")
                self.launches.append(Launch(self.label, kernel.fn.__module__, kernel.fn.__name__, args, kwargs, g))

            return run

        return _Subscriptable(with_grid)


class _Subscriptable:
    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        return self.fn(grid)


@contextlib.contextmanager
def recording():
    """Replaces ``launch`` wherever detr_ops.triton modules hold it; yields the Recorder."""
    from detr_ops.triton import _launch

    original = _launch.launch
    recorder = Recorder()
    # Import every module first: one imported while `launch` is patched would bind the recorder.
    modules = [importlib.import_module(f"detr_ops.triton.{path.stem}") for path in sorted(TRITON_DIR.glob("*.py"))]
    patched = [m for m in modules if getattr(m, "launch", None) is original]
    for module in patched:
        module.launch = recorder
    try:
        yield recorder
    finally:
        for module in patched:
            module.launch = original


# ---- the plan: every launcher over every dtype and option it can pick -------------------------------


def _plan() -> Iterator[Tuple[str, Callable[[], object]]]:
    """(label, thunk) for every launcher call to record. Sizes are DETR-like and deliberately not
    multiples of 16 (Triton specialises integers divisible by 16), plus one aligned case per kernel."""
    import torch

    from detr_ops.triton import box_iou, linear_sum_assignment, matching_cost, ms_deform_attn

    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    short = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64"}

    def boxes(*shape, dtype):
        xy = torch.rand(*shape, 2, dtype=torch.float64)
        return torch.cat([xy, xy + torch.rand(*shape, 2, dtype=torch.float64)], -1).to(dtype)

    # Boxes: pairwise (forward, both backward kernels) and the elementwise loss.
    for dtype in dtypes:
        for fmt in ("xyxy", "cxcywh"):
            for sizes in ((2, 100, 7), (2, 64, 32)) if dtype == torch.float32 else ((2, 100, 7),):
                B, N, M = sizes
                b1, b2 = boxes(B, N, dtype=dtype), boxes(B, M, dtype=dtype)
                for generalized in (False, True):
                    tag = f"{short[dtype]} {fmt} generalized={generalized} {B}x{N}x{M}"
                    yield f"pairwise_iou {tag}", lambda b1=b1, b2=b2, f=fmt, g=generalized: box_iou.pairwise_iou(b1, b2, f, g)
                    grad = torch.rand(B, N, M, dtype=dtype)
                    yield (f"pairwise_iou_backward {tag}",
                           lambda gr=grad, b1=b1, b2=b2, f=fmt, g=generalized: box_iou.pairwise_iou_backward(gr, b1, b2, f, g))
                K = B * N
                l1, l2 = boxes(K, dtype=dtype), boxes(K, dtype=dtype)
                yield f"giou_loss {short[dtype]} {fmt} K={K}", lambda l1=l1, l2=l2, f=fmt: box_iou.giou_loss(l1, l2, f, 1e-7)
                lg = torch.rand(K, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
                yield (f"giou_loss_backward {short[dtype]} {fmt} K={K}",
                       lambda lg=lg, l1=l1, l2=l2, f=fmt: box_iou.giou_loss_backward(lg, l1, l2, f, 1e-7))

    # Matching cost: the logits' dtype, the class cost (each is a constexpr branch: softmax, focal,
    # RF-DETR's focal_logsigmoid, DEIMv2's iou_aware; the latter two in float32 only), and the class
    # count, which sets the block over classes: 1 class, COCO (92), Objects365 (365), LVIS (1203),
    # and zero classes.
    for dtype in dtypes:
        for K in (0, 1, 92, 365, 1203):
            if K in (0, 1, 365) and dtype != torch.float32:
                continue
            kinds = matching_cost.CLASS_COSTS if dtype == torch.float32 else ("softmax", "focal")
            for kind in kinds:
                B, Q, T = 2, 100, 7
                logits = torch.randn(B, Q, K, dtype=dtype)
                pboxes, tboxes = boxes(B, Q, dtype=dtype), boxes(B, T, dtype=dtype)
                labels = torch.randint(0, max(K, 1), (B, T))
                num = torch.tensor([T, 3])
                yield (f"matching_cost {short[dtype]} K={K} class_cost={kind}",
                       lambda lo=logits, p=pboxes, la=labels, t=tboxes, n=num, c=kind:
                       matching_cost.matching_cost(lo, p, la, t, n, 1.0, 5.0, 2.0, c, 0.25, 2.0, 1.0))

    # Assignment: cost dtype, with or without num_rows / num_cols, maximize, and the transposed
    # (column-major) layout, which moves Triton's stride-1 specialisation to the other stride.
    for dtype in dtypes:
        for has_rows in (False, True):
            for has_cols in (False, True):
                for maximize in (False, True):
                    layouts = ("contiguous", "transposed") if dtype == torch.float32 else ("contiguous",)
                    for layout in layouts:
                        B, R, C = 3, 100, 7
                        cost = torch.rand(B, R, C, dtype=dtype)
                        if layout == "transposed":
                            cost = torch.rand(B, C, R, dtype=dtype).transpose(1, 2)
                        rows = torch.tensor([R, 50, 0]) if has_rows else None
                        cols = torch.tensor([C, 3, 0]) if has_cols else None
                        yield (f"batched_linear_sum_assignment {short[dtype]} num_rows={has_rows} num_cols={has_cols} "
                               f"maximize={maximize} {layout}",
                               lambda c=cost, r=rows, k=cols, m=maximize: linear_sum_assignment.batched_linear_sum_assignment(c, r, k, m))
    # Capacity (H-DETR's one-to-many matching): one capacity for the batch, and per-problem capacities.
    for dtype in (torch.float32, torch.float64):
        B, R, C = 3, 150, 7
        cost = torch.rand(B, R, C, dtype=dtype)
        yield (f"batched_linear_sum_assignment {short[dtype]} capacity=6",
               lambda c=cost: linear_sum_assignment.batched_linear_sum_assignment(c, None, None, False, 6))
        caps = torch.tensor([6, 1, 0])
        yield (f"batched_linear_sum_assignment {short[dtype]} capacities",
               lambda c=cost, k=caps: linear_sum_assignment.batched_linear_sum_assignment(c, None, None, False, 6, k))

    # MSDA: dtype, head dims that change BLOCK_D (and BLOCK_Q), a head dim that is not a multiple
    # of 16, and single-level / single-head / single-point models (Triton specialises a 1).
    def msda_inputs(dtype, N=2, Lq=30, M=8, D=32, levels=((13, 21), (7, 11)), P=4):
        shapes = torch.tensor(levels, dtype=torch.int64)
        areas = shapes[:, 0] * shapes[:, 1]
        starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
        S, L = int(areas.sum()), len(levels)
        value = torch.randn(N, S, M, D, dtype=dtype)
        loc = torch.rand(N, Lq, M, L, P, 2, dtype=dtype)
        attn = torch.rand(N, Lq, M, L, P, dtype=dtype)
        grad = torch.randn(N, Lq, M * D, dtype=dtype)
        return value, shapes, starts, loc, attn, grad

    cases = [dict(D=D) for D in (8, 16, 32, 64, 128, 256)]
    for dtype in dtypes:
        extra = [dict(D=24), dict(levels=((13, 21),)), dict(M=1), dict(P=1)] if dtype == torch.float32 else []
        for case in cases + extra:
            value, shapes, starts, loc, attn, grad = msda_inputs(dtype, **case)
            tag = f"{short[dtype]} " + " ".join(f"{k}={v}" for k, v in case.items())
            yield f"ms_deform_attn {tag}", lambda v=value, s=shapes, st=starts, lo=loc, a=attn: ms_deform_attn.ms_deform_attn(v, s, st, lo, a)
            for deterministic in (False, True):
                yield (f"ms_deform_attn_backward {tag} deterministic={deterministic}",
                       lambda g=grad, v=value, s=shapes, st=starts, lo=loc, a=attn, d=deterministic:
                       _deterministic(d, ms_deform_attn.ms_deform_attn_backward, g, v, s, st, lo, a))
    # Per-level point counts (D-FINE's [3, 6, 3]): another POINT_BEGIN, the same kernels.
    points = [3, 6, 3]
    value, shapes, starts, _, _, grad = msda_inputs(torch.float32, levels=((13, 21), (7, 11), (4, 6)))
    loc = torch.rand(2, 30, 8, sum(points), 2)
    attn = torch.rand(2, 30, 8, sum(points))
    yield ("ms_deform_attn_points fp32 num_points_list=[3, 6, 3]",
           lambda: ms_deform_attn.ms_deform_attn_points(value, shapes, starts, loc, attn, points))
    for deterministic in (False, True):
        yield (f"ms_deform_attn_points_backward fp32 num_points_list=[3, 6, 3] deterministic={deterministic}",
               lambda d=deterministic: _deterministic(d, ms_deform_attn.ms_deform_attn_points_backward, grad, value,
                                                      shapes, starts, loc, attn, points))


def without_extension():
    """Keeps ``detr_ops._C`` from loading: the tool needs only the Triton kernels, and the CUDA torch
    2.11 environment runs it too, where the tree's ``_C`` (built for another torch) must not be loaded."""
    import importlib.abc

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "detr_ops._C":
                raise ImportError("detr_ops._C is not needed to compile the Triton kernels")
            return None

    if "detr_ops" not in sys.modules:
        sys.meta_path.insert(0, _Block())


def _deterministic(enabled: bool, fn, *args):
    """Calls fn under torch.use_deterministic_algorithms(enabled): a launcher may pick another kernel."""
    import torch

    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        return fn(*args)
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def record() -> List[Launch]:
    with recording() as recorder:
        for label, thunk in _plan():
            recorder.label = label
            thunk()
    return recorder.launches


def launched_kernels() -> Dict[str, List[str]]:
    """{module: kernel names} of every ``launch(NAME)`` call in detr_ops/triton, read from the source."""
    found = {}
    for path in sorted(TRITON_DIR.glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "launch"
                    and node.args and isinstance(node.args[0], ast.Name)):
                names.add(node.args[0].id)
        if names:
            found[f"detr_ops.triton.{path.stem}"] = sorted(names)
    return found


def uncovered(launches: List[Launch]) -> List[str]:
    seen = {(x.module, x.kernel) for x in launches}
    return [f"{m}.{k}" for m, names in launched_kernels().items() for k in names if (m, k) not in seen]


# ---- 2. specialisation ----------------------------------------------------------------------------


@dataclasses.dataclass
class Spec:
    module: str
    kernel: str
    label: str
    signature: Dict[str, str]
    constexprs: Dict[str, object]   # parameter name -> value
    attrs: Dict[str, list]          # parameter name -> Triton attributes (e.g. divisibility)
    options: Dict[str, object]      # launch options (num_warps, ...) given by the launcher

    def key(self) -> str:
        return json.dumps([self.module, self.kernel, self.signature, _jsonable(self.constexprs), self.attrs,
                           _jsonable(self.options)], sort_keys=True)

    def variant(self) -> str:
        """Short description: pointer element types, constexprs, specialised integers."""
        pointers = []
        for ty in self.signature.values():
            if ty.startswith("*") and ty[1:] not in pointers:
                pointers.append(ty[1:])
        parts = ["/".join(pointers)]
        parts += [f"{k}={_short(v)}" for k, v in self.constexprs.items()]
        div16 = [k for k, a in self.attrs.items() if a and not self.signature[k].startswith("*")]
        if div16:
            parts.append("%16:" + ",".join(div16))
        if self.options:
            parts.append(" ".join(f"{k}={v}" for k, v in sorted(self.options.items())))
        return " ".join(parts)


def _short(v):
    return int(v) if isinstance(v, bool) else v


def _jsonable(d):
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)) for k, v in d.items()}


def specialise(launch: Launch) -> Spec:
    """The specialisation Triton's runtime would compile for this launch (its own binder)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    module = importlib.import_module(launch.module)
    kernel = getattr(module, launch.kernel)
    backend = make_backend(GPUTarget("cuda", 90, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    _, signature, constexprs, attrs = kernel._pack_args(backend, dict(launch.kwargs), bound, specialization, options)
    names = kernel.arg_names
    by_name = {names[path[0]]: value for path, value in constexprs.items()}
    # The binder turns an integer argument equal to 1 into a constexpr: marked apart from the
    # declared constexprs so the table shows it.
    declared = {p.name for p in kernel.params if p.is_constexpr}
    signature = {k: ("constexpr_one" if v == "constexpr" and k not in declared else v) for k, v in signature.items()}
    attr_by_name = {names[path[0]]: value for path, value in attrs.items() if value}
    user_options = {k: v for k, v in launch.kwargs.items() if k not in names}
    return Spec(launch.module, launch.kernel, launch.label, signature, by_name, attr_by_name, user_options)


def distinct_specs(launches: List[Launch]) -> List[Spec]:
    specs = {}
    for launch in launches:
        spec = specialise(launch)
        specs.setdefault(spec.key(), spec)
    return list(specs.values())


# ---- 3. compiling ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    module: str
    kernel: str
    label: str
    variant: str
    target: int
    ok: bool
    error: str = ""
    arch: str = ""
    ptx_version: str = ""
    num_warps: int = 0
    registers: int = 0
    stack_frame: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0                  # bytes: ptxas's static shared memory + Triton's dynamic allocation
    blocks_per_sm: int = 0
    limiter: str = ""
    seconds: float = 0.0
    known_failure: str = ""
    cached: bool = False

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


def _rebuild(spec: Spec):
    """ASTSource pieces (paths instead of names) for triton.compile."""
    module = importlib.import_module(spec.module)
    kernel = getattr(module, spec.kernel)
    names = kernel.arg_names
    signature = {k: ("constexpr" if v == "constexpr_one" else v) for k, v in spec.signature.items()}
    constexprs = {(names.index(k),): v for k, v in spec.constexprs.items()}
    attrs = {(names.index(k),): [list(a) for a in v] for k, v in spec.attrs.items()}
    for i, name in enumerate(names):
        attrs.setdefault((i,), [])
    return kernel, signature, constexprs, attrs


def compile_spec(spec: Spec, target: int) -> Result:
    """Compiles one specialisation for sm_<target>; never raises (errors go into the Result)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from scripts import occupancy, ptxas_info

    known = known_failure(spec.kernel, spec.variant(), triton.__version__)
    result = Result(spec.module, spec.kernel, spec.label, spec.variant(), target, ok=False, known_failure=known)
    start = time.monotonic()
    kernel, signature, constexprs, attrs = _rebuild(spec)
    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v's report of the cubin it builds,
    knobs.compilation.always_compile = True  # which it only builds when its own cache misses
    try:
        with contextlib.redirect_stdout(log), _native_stderr() as native:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", target, 32), options=dict(spec.options))
    except Exception as e:  # noqa: BLE001 - a compile failure is a result, reported by the caller
        # MLIR prints its diagnostics to the process's stderr, not into the exception
        diagnostics = "\n".join(line for line in native.text().splitlines() if "error" in line or "note" in line)
        result.error = (f"{type(e).__name__}: {e}" + ("\n" + diagnostics if diagnostics else ""))[-4000:]
        result.seconds = time.monotonic() - start
        return result
    result.seconds = time.monotonic() - start
    ptx = compiled.asm["ptx"]
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    for line in ptx.splitlines()[:40]:
        if line.startswith(".version"):
            result.ptx_version = line.split()[1]
        elif line.startswith(".target"):
            result.arch = line.split()[1].rstrip(",")
    kernels = ptxas_info.parse(log.getvalue().replace("ptxas-blackwell info", "ptxas info"))
    if not kernels:
        result.error = "compiled, but no ptxas resource report was captured:\n" + log.getvalue()[-2000:]
        return result
    res = kernels[0]
    result.ok = True
    result.num_warps = compiled.metadata.num_warps
    result.registers, result.stack_frame = res.registers, res.stack_frame
    result.spill_stores, result.spill_loads = res.spill_stores, res.spill_loads
    result.smem = res.smem + int(compiled.metadata.shared)
    result.blocks_per_sm, result.limiter = occupancy.blocks_per_sm(
        target, result.num_warps * 32, result.registers, result.smem)
    return result


class _Captured:
    def __init__(self, path):
        self.path = path
        self._text = ""

    def text(self) -> str:
        return self._text


@contextlib.contextmanager
def _native_stderr():
    """Captures what native code writes to file descriptor 2 (and echoes it afterwards)."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        captured = _Captured(tmp)
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured._text = tmp.read().decode(errors="replace")
            if captured._text:
                sys.stderr.write(captured._text)


def _cache_key(spec: Spec, target: int) -> str:
    import triton

    module = importlib.import_module(spec.module)
    kernel = getattr(module, spec.kernel)
    text = "\n".join([triton.__version__, kernel.cache_key, spec.key(), str(target), platform.machine()])
    return hashlib.sha256(text.encode()).hexdigest()


def _worker(payload):
    spec, target, cache_dir = payload
    os.environ.pop("TRITON_INTERPRET", None)
    path = None
    if cache_dir:
        path = pathlib.Path(cache_dir) / f"{_cache_key(spec, target)}.json"
        if path.exists():
            import triton

            cached = Result(**json.loads(path.read_text()))
            cached.cached, cached.label = True, spec.label
            cached.known_failure = known_failure(spec.kernel, spec.variant(), triton.__version__)
            return cached
    result = compile_spec(spec, target)
    if path is not None and result.ok:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(result)))
        tmp.replace(path)
    return result


def compile_all(specs: List[Spec], targets, jobs: int, cache_dir: Optional[str]) -> List[Result]:
    work = [(spec, target, cache_dir) for spec in specs for target in targets]
    if jobs <= 1:
        return [_worker(w) for w in work]
    import multiprocessing

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker) as pool:
        return list(pool.map(_worker, work, chunksize=1))


def _init_worker():
    sys.path.insert(0, str(REPO))
    without_extension()
    import warnings

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")


# ---- reporting ------------------------------------------------------------------------------------


def summarise(results: List[Result]) -> Tuple[List[Result], List[Result], List[str]]:
    """(unexpected failures, known failures, reasons of KNOWN_FAILURES entries whose specialisations
    all compiled in this run)."""
    failed = [r for r in results if not r.ok and not r.known_failure]
    known = [r for r in results if not r.ok and r.known_failure]
    matched = {r.known_failure for r in results if r.known_failure}
    obsolete = sorted(matched - {r.known_failure for r in known})
    return failed, known, obsolete


def render(runs: List[dict]) -> str:
    """Markdown: per Triton version, a per-kernel summary and the full table."""
    out = ["# Triton kernels compiled for sm_80 and sm_90 (generated)", "",
           "Generated by `make triton-aot` (`python -m scripts.triton_aot`, see its docstring); do not edit by hand.",
           "Every Triton kernel of `detr_ops/triton`, for every specialisation its launchers can pick, compiled "
           "ahead of time without a GPU (Triton's `triton.compile` with an explicit `GPUTarget`) and assembled by the "
           "ptxas that Triton bundles. Registers and local memory are per thread; `stack` is the stack frame "
           "(spills and local arrays), `spill st/ld` the bytes of spill stores and loads; `smem` the bytes of shared "
           "memory per block; `blocks/SM` what registers, shared memory and warps allow on that GPU "
           "(`scripts/occupancy.py`, from NVIDIA's documented limits), with `num_warps` x 32 threads per block.", ""]
    for run in runs:
        results = [Result(**r) for r in run["results"]]
        out += [f"## Triton {run['triton']} (torch {run['torch']})", "",
                f"{len({(r.module, r.kernel, r.variant) for r in results})} specialisations of "
                f"{len({(r.module, r.kernel) for r in results})} kernels, targets "
                f"{', '.join('sm_%d' % t for t in run['targets'])}; ptxas {run['ptxas']}.", ""]
        spilled = [r for r in results if r.ok and r.spills]
        if spilled:
            reasons = sorted({accepted_spill(r.kernel, r.variant, run["triton"], r) or "not accepted (the run failed)"
                              for r in spilled})
            out += [f"**{len({(r.kernel, r.variant) for r in spilled})} specialisations spill**, accepted by "
                    "`scripts/triton_aot.py` (`SMALL_SPILL_BYTES`, `ACCEPTED_SPILLS`) because:", ""]
            out += [f"- {why}" for why in reasons]
            out.append("")
        failed = [r for r in results if not r.ok]
        if failed:
            out += ["**Failed to compile:**", ""]
            out += [f"- `{r.kernel}` [{r.variant}] sm_{r.target}: {r.error.splitlines()[0][:200]}"
                    + (f" (known: {r.known_failure})" if r.known_failure else "") for r in failed]
            out.append("")
        out += ["### Per kernel (worst specialisation)", "",
                "| kernel | specialisations | sm_80 regs | sm_80 max stack / spill st / ld | sm_90 regs | "
                "sm_90 max stack / spill st / ld | max smem | min blocks/SM sm_90 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        kernels = {}
        for r in results:
            if r.ok:
                kernels.setdefault((r.module, r.kernel), []).append(r)
        for (module, kernel), rs in sorted(kernels.items()):
            row = [f"`{module.rsplit('.', 1)[1]}.{kernel}`", str(len({r.variant for r in rs}))]
            for t in (80, 90):
                tr = [r for r in rs if r.target == t]
                if not tr:
                    row += ["—", "—"]
                    continue
                row.append(str(max(r.registers for r in tr)))
                row.append(f"{max(r.stack_frame for r in tr)} / {max(r.spill_stores for r in tr)} / "
                           f"{max(r.spill_loads for r in tr)}")
            row.append(str(max(r.smem for r in rs)))
            t90 = [r.blocks_per_sm for r in rs if r.target == 90]
            row.append(str(min(t90)) if t90 else "—")
            out.append("| " + " | ".join(row) + " |")
        out += ["", "### Every specialisation", "",
                "| kernel | specialisation | warps | sm_80 regs | sm_80 stack / spill st / ld | sm_90 regs | "
                "sm_90 stack / spill st / ld | smem | blocks/SM sm_90 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        rows = {}
        for r in results:
            rows.setdefault((r.module, r.kernel, r.variant), {})[r.target] = r
        for (module, kernel, variant), by_target in sorted(rows.items()):
            row = [f"`{kernel}`", variant.replace("|", "/")]
            any_r = next(iter(by_target.values()))
            row.append(str(any_r.num_warps or "—"))
            for t in (80, 90):
                r = by_target.get(t)
                if r is None or not r.ok:
                    row += ["FAILED" if r is not None else "—", "—"]
                    continue
                row += [str(r.registers), f"{r.stack_frame} / {r.spill_stores} / {r.spill_loads}"]
            r90 = by_target.get(90)
            row.append(str(r90.smem) if r90 is not None and r90.ok else "—")
            row.append(f"{r90.blocks_per_sm} ({r90.limiter})" if r90 is not None and r90.ok else "—")
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def spilling(results: List[Result]) -> List[str]:
    lines = []
    for r in sorted(results, key=lambda r: (r.kernel, r.variant, r.target)):
        if r.ok and r.spills:
            lines.append(f"{r.kernel} [{r.variant}] sm_{r.target}: {r.registers} regs, stack {r.stack_frame} B, "
                         f"spill stores {r.spill_stores} B, loads {r.spill_loads} B")
    return lines


def _ptxas_version() -> str:
    import subprocess

    from triton.backends.nvidia.compiler import get_ptxas

    versions = []
    for arch in (80, 90):
        try:
            tool = get_ptxas(arch)
        except TypeError:  # older Triton: get_ptxas() takes no architecture
            tool = get_ptxas()
        out = subprocess.run([tool.path, "--version"], capture_output=True, text=True).stdout
        v = next((line.split("release")[1].split(",")[0].strip() for line in out.splitlines() if "release" in line), "?")
        if v not in versions:
            versions.append(v)
    return " / ".join(versions)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="80,90", help="compute capabilities (default 80,90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--markdown", help="write the markdown table here (this run only)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"result cache (default {DEFAULT_CACHE})")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("-k", dest="only", help="only kernels whose name contains this")
    parser.add_argument("--render", nargs="+", metavar=("OUT.md", "RUN.json"),
                        help="write OUT.md from the JSON of one or more runs (no compiling)")
    args = parser.parse_args(argv)

    if args.render:
        out, runs = args.render[0], [json.loads(pathlib.Path(p).read_text()) for p in args.render[1:]]
        pathlib.Path(out).write_text(render(runs))
        print(f"wrote {out}")
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: compiling needs the real @triton.jit functions")

    import warnings

    import torch
    import triton

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    without_extension()
    start = time.monotonic()
    launches = record()
    missing = uncovered(launches)
    specs = distinct_specs(launches)
    if args.only:
        specs = [s for s in specs if args.only in s.kernel]
    targets = [int(t) for t in args.targets.split(",")]
    print(f"triton_aot: Triton {triton.__version__}, torch {torch.__version__}: {len(launches)} launches recorded, "
          f"{len(specs)} distinct specialisations, targets {targets}, {args.jobs} jobs", flush=True)
    results = compile_all(specs, targets, args.jobs, None if args.no_cache else args.cache)
    failed, known, obsolete = summarise(results)
    run = dict(triton=triton.__version__, torch=torch.__version__, targets=targets, ptxas=_ptxas_version(),
               results=[dataclasses.asdict(r) for r in results])
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(run, indent=1))
    if args.markdown:
        pathlib.Path(args.markdown).write_text(render([run]))

    compiled = sum(r.ok and not r.cached for r in results)
    print(f"triton_aot: {sum(r.ok for r in results)}/{len(results)} compiled ({compiled} compiled now, "
          f"{sum(r.cached for r in results)} from the cache) in {time.monotonic() - start:.0f} s")
    spills = spilling(results)
    print(f"triton_aot: {len(spills)} spilling kernel specialisations" + (":" if spills else ""))
    for line in spills:
        print("  " + line)
    unaccepted = [r for r in results
                  if r.ok and r.spills and not accepted_spill(r.kernel, r.variant, triton.__version__, r)]
    for r in unaccepted:
        print(f"SPILLS (not in ACCEPTED_SPILLS): {r.kernel} [{r.variant}] sm_{r.target}: stack {r.stack_frame} B, "
              f"spill stores {r.spill_stores} B; fix the tiles or accept it with the reason")
    for reason in obsolete:
        print(f"OBSOLETE KNOWN_FAILURES entry (every specialisation it covers now compiles; delete it): {reason}")
    for r in failed:
        print(f"FAILED {r.kernel} [{r.variant}] sm_{r.target} ({r.label}):\n{r.error}")
    for r in known:
        print(f"KNOWN FAILURE (not fixed yet) {r.kernel} [{r.variant}] sm_{r.target}: {r.known_failure}\n  "
              + r.error.replace("\n", "\n  "))
    for name in missing:
        print(f"NOT COVERED: {name} is launched in detr_ops/triton but no PLAN case launched it; add one to "
              "scripts/triton_aot.py::_plan")
    return 1 if failed or missing or unaccepted else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
