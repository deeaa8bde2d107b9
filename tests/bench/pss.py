"""Host memory of a process in PSS, as the memory benches (memory.py, cri.py) read it.

- `pss_kib(pid)`: Rss and Pss of the whole process, from /proc/PID/smaps_rollup.
- `guest_ram(pid, memory_mib)`: the part of a hull-vmm that is guest RAM, from /proc/PID/smaps.
  Guest RAM is found as hull-vmm allocates it (vmm/src/vstate/vm.rs `create_guest_memory`):
  one mapping per range of `layout::ram_ranges(memory)`, exactly that size, anonymous (the
  default backing), on the memfd `hull-guest-ram`, or (a VM restored from a template,
  `vm::map_snapshot_memory`) a private mapping of the template's `snapshot/memory` file, whose
  pages the sandboxes restored from it share until they write them; the guest's size is the
  sandbox's state.json `memory_mib`. It fails (BenchError) unless exactly those mappings are
  found.
"""
from oci import BenchError

# vmm/src/arch/x86_64/layout.rs
MMIO_GAP_START = 0xC000_0000
MMIO_GAP_END = 0x1_0000_0000
MEMFD_NAME = "/memfd:hull-guest-ram"
SNAPSHOT_MEMORY = "/snapshot/memory"


def is_guest_ram_path(path):
    path = path.removesuffix(" (deleted)")
    return path in ("", MEMFD_NAME) or path.endswith(SNAPSHOT_MEMORY)


def pss_kib(pid):
    """(Rss, Pss) in KiB of process `pid` (/proc/PID/smaps_rollup)."""
    vals = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                vals[key] = int(rest.split()[0])
    return vals["Rss"], vals["Pss"]


def ram_ranges(size):
    """Sizes of guest RAM's mappings (`layout::ram_ranges`)."""
    if size <= MMIO_GAP_START:
        return [size]
    return [MMIO_GAP_START, size - MMIO_GAP_START]


def guest_ram(pid, memory_mib):
    """(Size, Rss, Pss) KiB summed over the guest RAM mappings of hull-vmm `pid`."""
    maps = []  # [path, size, rss, pss]
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                maps.append([" ".join(head[5:]), (hi - lo) >> 10, 0, 0])
            elif head and head[0] in ("Rss:", "Pss:") and maps:
                maps[-1][2 if head[0] == "Rss:" else 3] = int(head[1])
    want = sorted(s >> 10 for s in ram_ranges(memory_mib << 20))
    found = [m for m in maps if m[1] in want and is_guest_ram_path(m[0])]
    if sorted(m[1] for m in found) != want:
        raise BenchError(f"hull-vmm {pid}: guest RAM of {memory_mib} MiB should be mappings of {want} KiB, "
                         f"anonymous, {MEMFD_NAME} or a template's {SNAPSHOT_MEMORY}; found {[(m[0], m[1]) for m in found]}")
    return tuple(sum(m[i] for m in found) for i in (1, 2, 3))


def vmm_memory(pid, memory_mib):
    """hull-vmm `pid`'s host memory (KiB): total, guest RAM and the rest, PSS and RSS."""
    rss, pss = pss_kib(pid)
    _, ram_rss, ram_pss = guest_ram(pid, memory_mib)
    return {"vmm_pss": pss, "vmm_rss": rss, "ram_pss": ram_pss, "ram_rss": ram_rss,
            "own_pss": pss - ram_pss, "own_rss": rss - ram_rss}
