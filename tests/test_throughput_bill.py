"""The pure parts of issue 24: the instance throughput table, the policy's sizing from it, and the
whole bill's arithmetic (no servers)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facefleet.common import instances
from facefleet.common.instances import (
    DECODE_PER_VCPU,
    DEVICE_RATE,
    FORMATS,
    GPU_INSTANCES,
    INSTANCES,
    THROUGHPUT,
    Rate,
    images_per_s,
    parse_mix,
    throughput_table,
)
from facefleet.control.policy import (
    DETECTION,
    DispatchInputs,
    PolicyParams,
    QueueDepth,
    decide,
    job_images_per_s,
)
from facefleet.control.pricing import (
    BATCH,
    ECS,
    PRICES,
    BillParams,
    PricingError,
    bill,
    per_1000,
)


def test_every_launchable_type_has_a_row_and_a_device_rate() -> None:
    assert set(THROUGHPUT) == {f.instance_type for f in GPU_INSTANCES}
    for facts in GPU_INSTANCES:
        assert facts.gpu in DEVICE_RATE
        assert set(THROUGHPUT[facts.instance_type]) >= set(FORMATS)
    # Which figures are measured and which anchored is said, never implied.
    assert all(rate.measured for rate in DECODE_PER_VCPU.values())
    assert not any(rate.measured for rate in DEVICE_RATE.values())
    assert all(rate.source for rate in [*DECODE_PER_VCPU.values(), *DEVICE_RATE.values()])


def test_one_format_is_min_of_decode_on_the_vcpus_and_the_device() -> None:
    decode = {
        f: Rate(r, "test", True) for f, r in zip(FORMATS, (40.0, 2.0, 25.0, 50.0), strict=True)
    }
    device = {gpu: Rate(150.0, "test", False) for gpu in DEVICE_RATE}
    table = throughput_table(decode, device)
    assert table["g4dn.xlarge"]["heic"] == pytest.approx(8.0)  # 2/s x 4 vCPUs: the CPU bound
    assert table["g4dn.2xlarge"]["heic"] == pytest.approx(16.0)
    assert table["g4dn.xlarge"]["jpeg"] == pytest.approx(150.0)  # 160 decoded, the GPU caps it
    # A mix: mean CPU seconds an image against the GPU's, not a mean of the formats' rates.
    mix = {"heic": 0.5, "jpeg": 0.5}
    cpu_s = 0.5 / 8.0 + 0.5 / 160.0
    facts = INSTANCES["g4dn.xlarge"]
    assert images_per_s(facts, mix, decode, device) == pytest.approx(1.0 / cpu_s)


@settings(max_examples=60, deadline=None)
@given(
    shares=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4).filter(lambda s: sum(s) > 1e-3),
)
def test_a_mix_lies_between_its_slowest_and_fastest_format(shares: list[float]) -> None:
    mix = dict(zip(FORMATS, shares, strict=True))
    for facts in GPU_INSTANCES:
        rates = [THROUGHPUT[facts.instance_type][f] for f, s in mix.items() if s > 0]
        rate = images_per_s(facts, mix)
        assert min(rates) * (1 - 1e-9) <= rate <= max(rates) * (1 + 1e-9)


def test_mixes_parse_by_name_and_by_shares_and_refuse_nonsense() -> None:
    assert parse_mix("iphone") == instances.IPHONE_HEAVY
    assert parse_mix("heic=3,jpeg=1") == {"heic": 0.75, "jpeg": 0.25}
    with pytest.raises(ValueError, match="unknown format 'gif'"):
        parse_mix("gif=1")
    with pytest.raises(ValueError, match="not a number"):
        parse_mix("heic=lots")
    with pytest.raises(ValueError, match="positive sum"):
        parse_mix("heic=0")


def test_the_policy_sizes_jobs_and_arrays_from_the_table() -> None:
    iphone, android = PolicyParams.for_mix("iphone"), PolicyParams.for_mix("android")
    slowest = min(THROUGHPUT[t]["iphone mix"] for t in instances.SECONDARY_INSTANCE_TYPES)
    assert job_images_per_s("iphone") == pytest.approx(slowest)
    assert PolicyParams() == PolicyParams.for_mix(instances.DEFAULT_MIX)
    assert PolicyParams().job_capacity == int(60 * slowest * PolicyParams().job_minutes)
    assert iphone.job_capacity < android.job_capacity
    backlog = 40_000
    inputs = DispatchInputs(QueueDepth(backlog), QueueDepth(0))
    jobs = {
        name: sum(s.jobs for s in decide(inputs, params).submissions if s.kind == DETECTION)
        for name, params in (("iphone", iphone), ("android", android))
    }
    # The same backlog of HEICs needs more jobs than of JPEGs; each enough to cover it.
    assert jobs["iphone"] > jobs["android"] >= 1
    assert jobs["iphone"] == min(
        math.ceil(backlog / iphone.job_capacity), iphone.max_array_size, backlog // 1000
    )


def test_the_bill_adds_every_line_with_its_price() -> None:
    params = BillParams(mean_image_mib=2.0, network="nat")
    hours, images = 730.0, 1_000_000
    lines = bill(BATCH, images, hours, instance_cost=100.0, instance_hours=200.0, params=params)
    price = {k: v.usd for k, v in PRICES.items()}
    gb = images * 2.0 * 2**20 / 1e9
    assert lines["instances"] == 100.0
    assert lines["S3 GETs"] == pytest.approx(images * 0.0004 / 1000)
    assert lines["SQS requests"] == pytest.approx(images * 1.6 * 0.40 / 1e6)
    assert lines["network (nat)"] == pytest.approx(gb * 0.045 + hours * 0.045)
    assert lines["EBS root volumes"] == pytest.approx(200.0 * 100 * 0.08 / 730)
    assert lines["CloudWatch metrics"] == pytest.approx(12 * 0.30)  # one month
    # The Prefect worker and the dispatch services (0.5 vCPU, 1 GB each, always on) and seven
    # 1 vCPU / 2 GB flow runs an hour (cutover every 10 minutes, savings hourly), each billed a
    # minute; no task per dispatch tick.
    vcpu_h, gb_h = price["fargate_vcpu_hour"], price["fargate_gb_hour"]
    assert lines["flows runtime (Fargate)"] == pytest.approx(
        hours * (2 * (0.5 * vcpu_h + 1.0 * gb_h) + 7 / 60 * (1.0 * vcpu_h + 2.0 * gb_h))
    )
    assert lines["Lambda"] > 0 and lines["DynamoDB"] > 0
    # The ECS service has no flows, Lambda or lease table; the rest it pays alike.
    ecs = bill(ECS, images, hours, instance_cost=100.0, instance_hours=200.0, params=params)
    for line in ("flows runtime (Fargate)", "Lambda", "DynamoDB"):
        assert ecs[line] == 0.0
    assert ecs["S3 GETs"] == lines["S3 GETs"] and ecs["network (nat)"] == lines["network (nat)"]
    # Endpoints: no per-GB charge for S3 (the gateway endpoint), interface endpoints by the hour.
    endpoints = bill(BATCH, images, hours, 100.0, 200.0, BillParams(network="endpoints"))
    assert endpoints["network (endpoints)"] == pytest.approx(hours * 8 * 2 * 0.01)
    s3_endpoint = bill(BATCH, images, hours, 100.0, 200.0, BillParams(network="nat+s3"))
    assert s3_endpoint["network (nat+s3)"] == pytest.approx(hours * 0.045)  # no per-GB line
    per = per_1000(lines, images)
    assert sum(per.values()) == pytest.approx(sum(lines.values()) / 1000)
    assert all(math.isnan(v) for v in per_1000(lines, 0).values())
    assert all(p.source for p in PRICES.values())


def test_the_bill_refuses_bad_input_with_a_reason() -> None:
    with pytest.raises(PricingError, match="setup must be"):
        bill("lambda", 1, 1.0, 0.0, 0.0)
    with pytest.raises(PricingError, match="must not be negative"):
        bill(BATCH, -1, 1.0, 0.0, 0.0)
    with pytest.raises(PricingError, match="network must be"):
        BillParams(network="vpn")


def test_simulate_sizes_from_the_mix_and_prints_the_whole_bill(capsys) -> None:
    from facefleet.tools.cli import main

    assert main(["simulate", "--days", "0.2", "--seed", "5", "--mix", "android"]) == 0
    out = capsys.readouterr().out
    rate = job_images_per_s("android")
    assert f"{round(rate, 2):g} images/s per job" in out
    assert f"policy job capacity {PolicyParams.for_mix('android').job_capacity}" in out
    for line in ("whole bill per 1,000 images", "network (nat)", "flows runtime (Fargate)"):
        assert line in out
    assert "on the whole bill" in out
    # A mix nobody can parse is one clear line and exit code 2, not a traceback.
    assert main(["simulate", "--days", "0.2", "--mix", "gif=1"]) == 2
    assert "unknown format 'gif'" in capsys.readouterr().err
