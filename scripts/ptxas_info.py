"""Parses the resource report of ``ptxas -v`` (also printed by ``nvcc -Xptxas -v``).

For every entry function (kernel) ptxas prints, in this order::

    ptxas info    : Compiling entry function '_Z...' for 'sm_90'
    ptxas info    : Function properties for _Z...
        24 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
    ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]

(fields that are zero may be left out of the last line, e.g. ``smem``). "Function properties"
blocks of non-inlined device functions appear too; they are attributed to the function they name,
and only entry functions are returned. Lines of other tools in the same log are ignored, so a whole
build log can be parsed.
"""
import re
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Optional

_ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPERTIES = re.compile(r"ptxas info\s*: Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"ptxas info\s*: Used (\d+) registers(.*)")
_SMEM = re.compile(r"(\d+) bytes smem")
_BARRIERS = re.compile(r"used (\d+) barriers")


@dataclass
class KernelResources:
    name: str              # mangled, as ptxas prints it
    arch: str              # e.g. "sm_90" (Triton's Hopper code is "sm_90a")
    registers: int = 0
    stack_frame: int = 0   # bytes per thread of local memory (spills and local arrays)
    spill_stores: int = 0  # bytes
    spill_loads: int = 0   # bytes
    smem: int = 0          # bytes of static shared memory
    barriers: int = 0

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


@dataclass
class _State:
    kernels: Dict[tuple, KernelResources] = field(default_factory=dict)
    frames: Dict[str, tuple] = field(default_factory=dict)
    entry: Optional[KernelResources] = None
    properties_of: Optional[str] = None


def parse(text: str) -> List[KernelResources]:
    """Every entry function of a ``ptxas -v`` report, in order of appearance (one per name and
    arch; a later report of the same kernel and arch replaces the earlier one)."""
    st = _State()
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            st.entry = KernelResources(m.group(1), m.group(2))
            st.kernels[(st.entry.name, st.entry.arch)] = st.entry
            st.properties_of = None
            continue
        m = _PROPERTIES.search(line)
        if m:
            st.properties_of = m.group(1)
            continue
        m = _FRAME.search(line)
        if m and st.properties_of is not None:
            frame = tuple(int(x) for x in m.groups())
            if st.entry is not None and st.properties_of == st.entry.name:
                st.entry.stack_frame, st.entry.spill_stores, st.entry.spill_loads = frame
            st.properties_of = None
            continue
        m = _USED.search(line)
        if m and st.entry is not None:
            st.entry.registers = int(m.group(1))
            rest = m.group(2)
            smem = _SMEM.search(rest)
            st.entry.smem = int(smem.group(1)) if smem else 0
            barriers = _BARRIERS.search(rest)
            st.entry.barriers = int(barriers.group(1)) if barriers else 0
            st.entry = None
    return list(st.kernels.values())


def demangle(names: List[str]) -> Dict[str, str]:
    """Mangled -> readable C++ names, through c++filt (CUDA kernels use the Itanium ABI); names it
    cannot demangle (or a missing c++filt) map to themselves."""
    if not names:
        return {}
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        readable = out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        readable = names
    if len(readable) != len(names):
        readable = names
    return dict(zip(names, readable))
