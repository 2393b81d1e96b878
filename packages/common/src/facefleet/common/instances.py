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
