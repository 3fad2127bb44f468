"""The per-stage split computes what ``generate`` computes, FLOPs add up, the loop interleaves."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from encslim.bench import stats
from encslim.bench.costs import count_flops, count_params
from encslim.bench.latency import LoadedModel, LoopSettings, ModelSpec, run_interleaved, run_iteration
from encslim.bench.timing import CpuTimer, make_timer
from encslim.errors import ConfigError
from encslim.models.registry import get_adapter
from encslim.models.families.native.tiny import build_tiny


def loaded(fusion="A1", encoders=("clip", "siglip", "sam"), masked=(), mask_mode="removal", name="m"):
    model, processor = build_tiny(fusion, encoders)
    spec = ModelSpec(name, f"/nowhere/{name}", tuple(masked), mask_mode)
    return LoadedModel(spec, model, processor, get_adapter("encslim"), torch.device("cpu"))


class _Null:
    def stage(self, name):
        import contextlib

        return contextlib.nullcontext()


@pytest.mark.parametrize("fusion, masked, mode", [("A1", (), "removal"), ("B", ("sam",), "removal"),
                                                  ("C", ("clip",), "zero"), ("A2", ("siglip",), "removal")])
def test_stage_tokens_equal_generate(fusion, masked, mode):
    m = loaded(fusion, masked=masked, mask_mode=mode)
    batch = m.batch(2)
    tokens = run_iteration(m, batch, _Null(), max_new_tokens=5, end_to_end=False)
    with torch.inference_mode():
        generated = m.model.generate(**batch, masked_slots=list(masked), mask_mode=mode, max_new_tokens=5,
                                     min_new_tokens=5, do_sample=False)
    assert tokens.shape == (2, 5)
    assert torch.equal(tokens, generated[:, batch["input_ids"].shape[1]:])


def test_encoders_run_and_image_tokens():
    full = loaded("B")
    zero = loaded("B", masked=("sam",), mask_mode="zero")
    skip = loaded("B", masked=("sam",), mask_mode="removal")
    config = full.model.config
    assert full.encoders_run == zero.encoders_run == ["clip", "siglip", "sam"]
    assert skip.encoders_run == ["clip", "siglip"]
    assert full.image_tokens() == zero.image_tokens() == config.num_image_tokens()
    assert skip.image_tokens() == config.num_image_tokens(["clip", "siglip"]) < full.image_tokens()
    assert "pixel_values_sam" not in skip.batch(1) and "pixel_values_sam" in zero.batch(1)


def test_bad_mask_slot_is_config_error():
    with pytest.raises(ConfigError, match=r"--mask dino .*unknown slot\(s\) dino; this model.s slots are clip, siglip, sam"):
        loaded(masked=("dino",))
    with pytest.raises(ConfigError, match="mask mode 'mean' unknown"):
        loaded(masked=("sam",), mask_mode="mean")


def test_flops_per_stage_add_up_to_generate():
    m = loaded("A1")
    flops = count_flops(m, max_new_tokens=4)
    # the stages together do exactly the FLOPs of the real generate() call
    assert flops["total"] == flops["end_to_end"] > 0
    pixels = m.batch(1)["pixel_values_sam"]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        m.model.vision_towers["sam"](pixels)
    assert flops["encoder:sam"] == counter.get_total_flops() > 0
    assert flops["vision"] == sum(flops[f"encoder:{s}"] for s in ("clip", "siglip", "sam"))
    assert flops["decode"] > 0 and flops["prefill"] > flops["decode"] / 3

    skip = loaded("A1", masked=("sam",))
    skipped = count_flops(skip, max_new_tokens=4)
    assert "encoder:sam" not in skipped
    assert skipped["vision"] == flops["vision"] - flops["encoder:sam"]
    assert skipped["prefill"] == flops["prefill"]  # A1: same image token count


def test_params_per_component():
    m = loaded("A1")
    params = count_params(m)
    model = m.model
    assert params["encoder:sam"] == sum(p.numel() for p in model.vision_towers["sam"].parameters())
    assert params["vision"] == sum(params[f"encoder:{s}"] for s in ("clip", "siglip", "sam"))
    assert params["total"] == params["vision"] + params["fusion"] + params["language_model"]


def test_cpu_timer_accumulates_and_resets():
    import time

    timer = make_timer("cpu")
    assert isinstance(timer, CpuTimer)
    with timer.stage("x"):
        time.sleep(0.01)
    with timer.stage("x"):
        time.sleep(0.01)
    first = timer.collect()
    assert set(first) == {"x"} and first["x"] >= 20.0
    assert timer.collect() == {}


def test_run_interleaved_order_counts_and_min_seconds():
    a, b = loaded(encoders=("clip", "siglip"), name="A"), loaded(encoders=("clip",), name="B")
    settings = LoopSettings(max_new_tokens=2, warmup=1, min_iters=3, min_seconds=0.0)
    measured = run_interleaved([a, b], 1, settings, make_timer("cpu"))
    assert measured.order == stats.interleaved_order(["A", "B"], 3) == ["A", "B", "A", "B", "A", "B"]
    assert [len(measured.iterations[n]) for n in "AB"] == [3, 3]
    assert set(measured.iterations["A"][0]) == {"encoder:clip", "encoder:siglip", "fusion", "prefill", "decode",
                                                "end_to_end"}
    assert set(measured.iterations["B"][0]) == {"encoder:clip", "fusion", "prefill", "decode", "end_to_end"}

    # a minimum duration adds rounds beyond min_iters until every model has spent it
    longer = run_interleaved([a, b], 1, LoopSettings(2, 0, 1, 0.15), make_timer("cpu"))
    rounds = len(longer.order) // 2
    assert longer.order == stats.interleaved_order(["A", "B"], rounds)
    assert min(longer.seconds.values()) >= 0.15 and rounds >= 1  # (how many rounds that takes depends on the machine)
    capped = run_interleaved([a, b], 1, LoopSettings(2, 0, 1, 100.0, max_iters=2), make_timer("cpu"))
    assert capped.order == ["A", "B", "A", "B"]
