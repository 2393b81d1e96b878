"""GPU instance facts, in one place: what each allowed instance type has and what ECS registers.

This table drives three things that must agree: the job definitions' resource requests (they
must fit the smallest allowed type), the secondary compute environment's diversified instance
list (AWS's Spot guidance: many pools, price-capacity-optimized allocation) and the simulator's
Spot prices (`facefleet.control.pricing` keys its tables by this list).

Memory. ECS never registers an instance's installed memory: the kernel, the ECS agent and the
Docker daemon take their share first (AWS Batch user guide, "Compute resource memory
management"), and a job asking for more than the registered figure stays RUNNABLE forever.
`registered_mib` is what the ECS agent reports for the type on the ECS GPU-optimized AMI
(`aws ecs describe-container-instances` -> registeredResources MEMORY), rounded down; the agent
then keeps `ECS_RESERVED_MEMORY_MIB` more (set in the launch template's user data), and the job
definitions leave `MEMORY_MARGIN_MIB` beyond that so an AMI release that registers a little less
still places the jobs. Only a real instance confirms the registered figure: `facefleet infra
doctor` prints the command that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceFacts:
    instance_type: str
    vcpus: int
    gpus: int
    gpu: str
    installed_mib: int
    registered_mib: int  # what ECS registers (see the module docstring)
    on_demand_per_h: float  # us-east-1 Linux list price, $/hour

    @property
    def schedulable_mib(self) -> int:
        """Memory a job may ask for on this type: registered, less the agent's reservation and
        the safety margin."""
        return self.registered_mib - ECS_RESERVED_MEMORY_MIB - MEMORY_MARGIN_MIB


# Memory the ECS agent keeps back from tasks (ECS_RESERVED_MEMORY in the instance's ecs.config).
ECS_RESERVED_MEMORY_MIB = 256
# Headroom below (registered - reserved) for AMI releases that register slightly less.
MEMORY_MARGIN_MIB = 512

# One GPU per job: a larger type with one GPU still runs one job, so only single-GPU types with
# at least the job's vCPUs are listed. Registered memory: installed less about 4 % (kernel and
# firmware reservations on the ECS GPU AMI), rounded down to 100 MiB.
GPU_INSTANCES: tuple[InstanceFacts, ...] = (
    InstanceFacts("g4dn.xlarge", 4, 1, "NVIDIA T4 16 GB", 16_384, 15_700, 0.526),
    InstanceFacts("g4dn.2xlarge", 8, 1, "NVIDIA T4 16 GB", 32_768, 31_600, 0.752),
    InstanceFacts("g5.xlarge", 4, 1, "NVIDIA A10G 24 GB", 16_384, 15_700, 1.006),
    InstanceFacts("g6.xlarge", 4, 1, "NVIDIA L4 24 GB", 16_384, 15_700, 0.8048),
)
INSTANCES: dict[str, InstanceFacts] = {facts.instance_type: facts for facts in GPU_INSTANCES}

# The primary environment stays on the one pool the service was sized on; the secondary spreads
# over every type in the table.
PRIMARY_INSTANCE_TYPES: tuple[str, ...] = ("g4dn.xlarge",)
SECONDARY_INSTANCE_TYPES: tuple[str, ...] = tuple(f.instance_type for f in GPU_INSTANCES)

# What a worker job asks for: the smallest allowed type's schedulable memory, rounded down to
# 256 MiB, so it fits every type above (the contract tests check each one).
JOB_VCPUS = 4
JOB_GPUS = 1
JOB_MEMORY_MIB = min(f.schedulable_mib for f in GPU_INSTANCES) // 256 * 256


def fits(facts: InstanceFacts, *, vcpus: int, memory_mib: int, gpus: int) -> list[str]:
    """Why a job of this size cannot be placed on `facts` (empty: it fits)."""
    problems = []
    if vcpus > facts.vcpus:
        problems.append(f"{vcpus} vCPU > {facts.vcpus} on {facts.instance_type}")
    if gpus > facts.gpus:
        problems.append(f"{gpus} GPU > {facts.gpus} on {facts.instance_type}")
    if memory_mib > facts.schedulable_mib:
        problems.append(
            f"{memory_mib} MiB > {facts.schedulable_mib} MiB schedulable on "
            f"{facts.instance_type} ({facts.registered_mib} registered by ECS, "
            f"{ECS_RESERVED_MEMORY_MIB} reserved, {MEMORY_MARGIN_MIB} margin)"
        )
    return problems


# -- Throughput per instance type ---------------------------------------------------------------
# A detection job's images/s is bounded twice: the vCPUs download and decode (the worker decodes
# one image per thread, so decode scales with vCPUs) while the GPU detects and embeds; the two
# overlap (detection/pipeline.py), so the slower side sets the rate. `make bench-phone` measures
# the CPU side; the device side is anchored from published figures until `benchmarks/gpu_check.sh`
# measures it on a GPU host.

FORMATS: tuple[str, ...] = ("jpeg", "heic", "png", "webp")


@dataclass(frozen=True)
class Rate:
    images_per_s: float
    source: str  # where the figure comes from
    measured: bool  # True: measured by this project; False: anchored from a published figure


# Decode images/s per vCPU, one thread each, at phone sizes: 12-MP JPEG (reduced DCT decode to
# 2016x1512), 12-MP HEIC (a grid of 512x512 tiles, libheif + libde265), PNG screenshots
# (1170x2532), WebP (1600x1200), 10 of each. Measured as CPU time per image, `make bench-phone`,
# 2026-12-06, on a 2-vCPU AMD EPYC host shared with other sessions (load average 7-12). CPU time
# is less sensitive to that than wall time, not immune: contention for caches and memory only
# slows a decode, so the best of three runs is taken (JPEG 19.3-31.9, HEIC 2.19-2.41, PNG
# 15.8-25.7, WebP 25.7-55.1 over the runs; HEIC, compute-bound, hardly moves). A g4dn's Cascade
# Lake vCPU is a hyperthread: assumed equal to one here, which flatters the g4dn side if anything.
_BENCH = "make bench-phone, 2-vCPU AMD EPYC host, 2026-12-06"
DECODE_PER_VCPU: dict[str, Rate] = {
    "jpeg": Rate(31.9, _BENCH, True),
    "heic": Rate(2.41, _BENCH, True),
    "png": Rate(25.7, _BENCH, True),
    "webp": Rate(55.1, _BENCH, True),
}

# Detection + embedding images/s on each GPU (SCRFD-10GF at 640, ArcFace R50, TensorRT FP16,
# about 1.5 faces an image). Anchored, not measured: InsightFace-REST reports scrfd_10g at 3.3 ms
# an image (batch 1) and w600k_r50 at about 1,900 faces/s (batch 64) on an RTX 2080 Super, i.e.
# 1 / (3.3 ms + 1.5 / 1900 s) = about 245 images/s (and 820 images/s end to end on an RTX 4090).
# The ratios to it are assumptions: a T4 (a 70 W card) at 0.6 of a 2080 Super, 150 images/s;
# an A10G and an L4 (a generation newer) at twice a T4. Whatever the exact figure, every device
# here outruns 4 vCPUs decoding HEICs by an order of magnitude, so the table's HEIC and mix
# columns do not depend on it.
_ANCHOR = "anchored: InsightFace-REST RTX 2080 Super figures, assumed ratio to this GPU"
DEVICE_RATE: dict[str, Rate] = {
    "NVIDIA T4 16 GB": Rate(150.0, _ANCHOR, False),
    "NVIDIA A10G 24 GB": Rate(300.0, _ANCHOR, False),
    "NVIDIA L4 24 GB": Rate(300.0, _ANCHOR, False),
}

# The share of each format in an upload stream. iPhone-heavy: HEIC is the iPhone camera's
# default, screenshots are PNG; Android-heavy: the camera writes JPEG, messaging apps WebP.
IPHONE_HEAVY: dict[str, float] = {"heic": 0.70, "jpeg": 0.15, "png": 0.10, "webp": 0.05}
ANDROID_HEAVY: dict[str, float] = {"jpeg": 0.80, "png": 0.10, "webp": 0.08, "heic": 0.02}
MIXES: dict[str, dict[str, float]] = {"iphone": IPHONE_HEAVY, "android": ANDROID_HEAVY}
# The mix the dispatch policy and the simulator assume: the slower of the two (sizing for it
# never starves a queue of jobs).
DEFAULT_MIX = "iphone"


def parse_mix(text: str) -> dict[str, float]:
    """A mix by name (`iphone`, `android`) or as `heic=0.5,jpeg=0.5`; shares normalised to 1."""
    if text in MIXES:
        return dict(MIXES[text])
    shares: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip().lower()
        if name not in FORMATS:
            raise ValueError(f"unknown format {name!r} in mix {text!r}; known: {FORMATS}")
        try:
            shares[name] = float(value)
        except ValueError:
            raise ValueError(f"share of {name} in mix {text!r} is not a number") from None
    return _normalised(shares, text)


def _normalised(mix: dict[str, float], label: str) -> dict[str, float]:
    total = sum(mix.values())
    if total <= 0 or any(share < 0 for share in mix.values()):
        raise ValueError(f"mix {label!r} needs non-negative shares with a positive sum")
    return {name: share / total for name, share in mix.items() if share > 0}


def images_per_s(
    facts: InstanceFacts,
    mix: dict[str, float],
    decode: dict[str, Rate] = DECODE_PER_VCPU,
    device: dict[str, Rate] = DEVICE_RATE,
) -> float:
    """A detection job's images/s on `facts` for a format mix: the CPU's mean seconds an image
    (decode on every vCPU) against the GPU's, the slower side sets the pace."""
    shares = _normalised(dict(mix), str(mix))
    cpu_s = sum(share / (decode[name].images_per_s * facts.vcpus) for name, share in shares.items())
    gpu_s = 1.0 / device[facts.gpu].images_per_s
    return 1.0 / max(cpu_s, gpu_s)


def throughput_table(
    decode: dict[str, Rate] = DECODE_PER_VCPU, device: dict[str, Rate] = DEVICE_RATE
) -> dict[str, dict[str, float]]:
    """images/s per instance type: each format alone, then each named mix."""
    table = {}
    for facts in GPU_INSTANCES:
        row = {name: images_per_s(facts, {name: 1.0}, decode, device) for name in FORMATS}
        for name, mix in MIXES.items():
            row[f"{name} mix"] = images_per_s(facts, mix, decode, device)
        table[facts.instance_type] = row
    return table


THROUGHPUT: dict[str, dict[str, float]] = throughput_table()
