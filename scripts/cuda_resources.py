"""The CUDA kernels' resources and the occupancy they imply, from the real build.

``scripts/check_cuda_build.sh`` builds the extension with ``NVCC_APPEND_FLAGS=-Xptxas=-v`` and keeps
the build log; this tool reads from it ptxas's report for every ``__global__`` kernel and template
instantiation (registers, stack frame, spill stores/loads, static shared memory), reads from the
``.cu`` sources the block size each launch uses (``kernel<...><<<grid, BLOCK, SMEM, stream>>>``,
evaluated with the file's ``constexpr`` integer constants) and its ``__launch_bounds__``, and
computes the resident blocks per SM on each architecture of the log (``scripts/occupancy.py``).

    python -m scripts.cuda_resources LOG [--sources csrc/ops/cuda] [--markdown OUT.md] [--compare OLD.md]

``--compare`` prints what changed against a previous table: the kernels and their flags (spills,
fewer than two blocks per SM) are compared, not the exact register counts, which move with every
nvcc version. It never fails on a difference; the tool exits 1 only when the log holds no ptxas
report for a kernel the sources launch (the report would be incomplete).
"""
import argparse
import ast
import operator
import pathlib
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from scripts import occupancy, ptxas_info

REPO = pathlib.Path(__file__).resolve().parents[1]
MIN_BLOCKS = 2  # fewer resident blocks per SM than this is flagged

_CONSTANT = re.compile(r"constexpr\s+(?:int|int64_t|unsigned|size_t|long|int32_t)\s+(\w+)\s*=\s*([^;]+);")
_LAUNCH = re.compile(r"\b(\w+)\s*(<(?:[^<>;]|<[^<>;]*>)*>)?\s*<<<(.*?)>>>", re.S)
_BOUNDS = re.compile(r"__global__\s+void\s+__launch_bounds__\s*\(([^)]*)\)\s*(\w+)\s*\(", re.S)
_NVCC_SOURCE = re.compile(r"nvcc\b.*?\s-c\s+(\S+\.cu)\b")


@dataclass
class LaunchSite:
    kernel: str
    block: str                 # the expression in the source
    threads: Optional[int]     # its value, when it evaluates from the file's constants
    smem: str                  # dynamic shared memory expression ("0" when none)
    smem_bytes: Optional[int]  # its value, or an upper bound (see dynamic_smem_bound), or None


def _split_top_level(text: str) -> List[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return parts


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Div: operator.floordiv, ast.Mod: operator.mod, ast.LShift: operator.lshift}


def evaluate(expr: str, constants: Dict[str, int]) -> Optional[int]:
    """Integer value of a C++ constant expression made of literals, the given constants and + - * / % <<;
    casts and namespace qualifiers (``cuda::kWarpSize``) are looked through. None when it depends on
    anything else."""
    text = re.sub(r"static_cast<[^>]*>", "", expr)
    text = re.sub(r"\b(?:\w+::)+(?=\w)", "", text)
    text = re.sub(r"\b(\d+)(?:[uUlL]+)\b", r"\1", text).replace("sizeof(double)", "8").replace("sizeof(float)", "4")
    text = text.replace("sizeof(int32_t)", "4").replace("sizeof(int64_t)", "8").replace("sizeof(int)", "4")
    try:
        tree = ast.parse(text.replace("/", "//").replace("////", "//"), mode="eval")
    except SyntaxError:
        return None

    def value(node):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(ast.dump(node))

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError):
        return None


def constants_of(source: str, known: Optional[Dict[str, int]] = None) -> Dict[str, int]:
    """The file's ``constexpr`` integer constants, each evaluated with the ones before it (and with
    ``known``, e.g. the constants of the headers next to it)."""
    constants: Dict[str, int] = dict(known or {})
    for name, expr in _CONSTANT.findall(source):
        v = evaluate(expr, constants)
        if v is not None:
            constants[name] = v
    return constants


def dynamic_smem_bound(constants: Dict[str, int]) -> Optional[int]:
    """An upper bound for a launch's runtime-sized dynamic shared memory: the file's largest constant
    named like a shared-memory limit (``*Shared*`` / ``*Smem*``), if it has one."""
    bounds = [v for k, v in constants.items() if re.search(r"shared|smem", k, re.I)]
    return max(bounds) if bounds else None


def launch_sites(source: str, known: Optional[Dict[str, int]] = None) -> List[LaunchSite]:
    constants = constants_of(source, known)
    sites = []
    for name, _, config in _LAUNCH.findall(source):
        args = _split_top_level(config)
        block = args[1] if len(args) > 1 else "?"
        smem = args[2] if len(args) > 2 else "0"
        smem_value = evaluate(smem, constants)
        if smem_value is None:
            smem_value = dynamic_smem_bound(constants)
        sites.append(LaunchSite(name, block, evaluate(block, constants), smem, smem_value))
    return sites


def launch_bounds(source: str) -> Dict[str, str]:
    return {name: bounds.strip() for bounds, name in _BOUNDS.findall(source)}


def kernels_by_source(log: str) -> Dict[str, List[ptxas_info.KernelResources]]:
    """ptxas reports of a build log, grouped by the .cu file whose nvcc command printed them (ninja
    prints each command line, then its output)."""
    groups: Dict[str, List[str]] = {}
    current = None
    for line in log.splitlines():
        m = _NVCC_SOURCE.search(line)
        if m:
            current = pathlib.Path(m.group(1)).name
            groups.setdefault(current, [])
            continue
        if current is not None:
            groups[current].append(line)
    return {src: ptxas_info.parse("\n".join(lines)) for src, lines in groups.items()}


def _base_name(readable: str) -> Tuple[str, str]:
    """('pairwise_iou_kernel', 'float') from 'void ns::(anonymous namespace)::pairwise_iou_kernel<float>(...)'."""
    depth, end = 0, len(readable)
    for i, ch in enumerate(readable):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not readable.startswith("(anonymous namespace)", i):
            end = i
            break
    head = readable[:end]
    head = head[len("void "):] if head.startswith("void ") else head  # kernels return void
    depth, start = 0, 0
    for i, ch in enumerate(head):  # the last "::" outside template arguments starts the name
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif head.startswith("::", i) and depth == 0:
            start = i + 2
    name = head[start:]
    if "<" in name:
        base, args = name.split("<", 1)
        args = args[:-1]
    else:
        base, args = name, ""
    return base, args


@dataclass
class Row:
    source: str
    kernel: str
    instantiation: str
    arch: str
    threads: Optional[int]
    block_expr: str
    bounds: str
    registers: int
    stack: int
    spill_stores: int
    spill_loads: int
    smem_static: int
    smem_dynamic: str
    smem_dynamic_bytes: Optional[int]
    blocks: Optional[int]
    limiter: str

    @property
    def flags(self) -> List[str]:
        flags = []
        if self.spill_stores or self.spill_loads:
            flags.append("spills")
        if self.blocks is not None and self.blocks < MIN_BLOCKS:
            flags.append(f"<{MIN_BLOCKS} blocks/SM")
        return flags


def rows(log: str, sources_dir: pathlib.Path) -> Tuple[List[Row], List[str]]:
    """(table rows, kernels launched in the sources without a ptxas report in the log)."""
    reports = kernels_by_source(log)
    out, missing = [], []
    # Constants the .cu files share through the headers next to them (e.g. cuda::kWarpSize).
    shared: Dict[str, int] = {}
    for header in sorted(list(sources_dir.glob("*.cuh")) + list(sources_dir.glob("*.h"))):
        shared = constants_of(header.read_text(), shared)
    for path in sorted(sources_dir.glob("*.cu")):
        source = path.read_text()
        sites = launch_sites(source, shared)
        bounds = launch_bounds(source)
        kernels = reports.get(path.name, [])
        readable = ptxas_info.demangle([k.name for k in kernels])
        by_name: Dict[str, List[Tuple[str, ptxas_info.KernelResources]]] = {}
        for k in kernels:
            base, inst = _base_name(readable[k.name])
            by_name.setdefault(base, []).append((inst, k))
        for name in sorted({s.kernel for s in sites}):
            if name not in by_name:
                missing.append(f"{path.name}: {name}")
                continue
            site = next(s for s in sites if s.kernel == name)
            for inst, k in sorted(by_name[name], key=lambda x: (x[1].arch, x[0])):
                arch = int(re.sub(r"\D", "", k.arch)[:2])
                blocks, limiter = (None, "")
                if site.threads is not None and arch in occupancy.LIMITS:
                    blocks, limiter = occupancy.blocks_per_sm(arch, site.threads, k.registers,
                                                              k.smem + (site.smem_bytes or 0))
                out.append(Row(path.name, name, inst, k.arch, site.threads, site.block, bounds.get(name, ""),
                               k.registers, k.stack_frame, k.spill_stores, k.spill_loads, k.smem, site.smem,
                               site.smem_bytes, blocks, limiter))
    return out, missing


def render(table: List[Row], header: str = "") -> str:
    lines = ["# CUDA kernels: registers, spills, shared memory and occupancy (generated)", "",
             "Generated by `make cuda-build-check` (`scripts/check_cuda_build.sh` builds with "
             "`NVCC_APPEND_FLAGS=-Xptxas=-v` and runs `python -m scripts.cuda_resources`); do not edit by hand. "
             "CI regenerates it and prints what changed.",
             "One row per `__global__` kernel, template instantiation and architecture of the build. `threads` is the "
             "block size of the kernel's launch in the source (the expression, evaluated with the file's constants); "
             "`dyn smem` the launch's dynamic shared memory (a runtime size is bounded by the file's shared-memory "
             "limit constant when it has one); `blocks/SM` the resident blocks that registers, shared memory and "
             "warps allow (`scripts/occupancy.py`, NVIDIA's documented limits); `occupancy` the share of the SM's "
             "64 warp slots they fill. Flags: `spills` (local-memory spill traffic), `<2 blocks/SM`."]
    if header:
        lines += ["", header]
    lines += ["", "| file | kernel | instantiation | arch | threads | launch bounds | regs | stack | spill st / ld | "
              "smem | dyn smem | blocks/SM | occupancy | flags |", "|---|---|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in table:
        threads = f"{r.threads} (`{r.block_expr}`)" if r.threads is not None else f"? (`{r.block_expr}`)"
        dyn = "0" if r.smem_dynamic == "0" else (f"`{r.smem_dynamic}` (<= {r.smem_dynamic_bytes})"
                                               if r.smem_dynamic_bytes is not None else f"`{r.smem_dynamic}` (?)")
        arch = int(re.sub(r"\D", "", r.arch)[:2])
        occ = f"{occupancy.occupancy(arch, r.threads, r.blocks):.0%}" if r.blocks is not None and r.threads else "?"
        blocks = f"{r.blocks} ({r.limiter})" if r.blocks is not None else "?"
        lines.append(f"| {r.source} | `{r.kernel}` | {r.instantiation} | {r.arch} | {threads} | {r.bounds or '—'} | "
                     f"{r.registers} | {r.stack} | {r.spill_stores} / {r.spill_loads} | {r.smem_static} | {dyn} | "
                     f"{blocks} | {occ} | {', '.join(r.flags) or '—'} |")
    return "\n".join(lines) + "\n"


def _table_keys(markdown: str) -> Dict[Tuple[str, str, str, str], str]:
    """{(file, kernel, instantiation, arch): flags} of a rendered table."""
    keys = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 14 and cells[0].endswith(".cu"):
            keys[(cells[0], cells[1].strip("`"), cells[2], cells[3])] = cells[13]
    return keys


def compare(old: str, new: str) -> List[str]:
    a, b = _table_keys(old), _table_keys(new)
    changes = [f"new: {' '.join(k)} [{b[k]}]" for k in sorted(b.keys() - a.keys())]
    changes += [f"gone: {' '.join(k)}" for k in sorted(a.keys() - b.keys())]
    changes += [f"flags changed: {' '.join(k)}: {a[k]} -> {b[k]}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    return changes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="build log with nvcc -Xptxas -v output")
    parser.add_argument("--sources", default=str(REPO / "csrc" / "ops" / "cuda"))
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--compare", help="a previous table to compare with (never fails on a difference)")
    parser.add_argument("--header", default="", help="a line to put above the table (e.g. the toolchain)")
    args = parser.parse_args(argv)

    table, missing = rows(pathlib.Path(args.log).read_text(errors="replace"), pathlib.Path(args.sources))
    text = render(table, args.header)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text)
    print(text)
    flagged = [r for r in table if r.flags]
    print(f"cuda_resources: {len(table)} kernel instantiations; {len(flagged)} flagged"
          + (":" if flagged else ""))
    for r in flagged:
        print(f"  {r.source} {r.kernel}<{r.instantiation}> {r.arch}: {', '.join(r.flags)} ({r.registers} regs, "
              f"{r.threads} threads, stack {r.stack} B, blocks/SM {r.blocks})")
    if args.compare and pathlib.Path(args.compare).exists():
        changes = compare(pathlib.Path(args.compare).read_text(), text)
        print(f"cuda_resources: against {args.compare}: " + ("no change in kernels or flags" if not changes else
                                                             f"{len(changes)} changes (regenerate the table):"))
        for c in changes:
            print("  " + c)
    for m in missing:
        print(f"MISSING: no ptxas report in the log for {m} (was the build run with NVCC_APPEND_FLAGS=-Xptxas=-v?)")
    return 1 if missing or not table else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
