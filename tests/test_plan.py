"""The plan of a run, without Ray: which stages each unit goes through, and which units share each call."""

from realfill.config import FillConfig, SampleConfig, TuneConfig
from realfill.plan import plan_run
from realfill.stages import RANK, SAMPLE, STAGES, STITCH, TUNE, Variant

SCENES = ["memory://root/a", "memory://root/b"]


def variant(name: str, **fields) -> Variant:
    return Variant(name, f"memory://out/{name}", FillConfig(base_model="tiny", **fields))


def test_every_method_goes_through_its_own_stages():
    units = {unit.variant.name: unit for unit in plan_run(SCENES[:1], [
        variant("realfill"), variant("stitch", method="stitch"), variant("sd", method="sd-inpaint"),
        variant("from-stitch", init="stitch")]).units}
    assert [stage for stage in STAGES if stage in units["realfill"].keys] == [TUNE, SAMPLE, RANK]
    assert [stage for stage in STAGES if stage in units["stitch"].keys] == [STITCH, RANK]
    assert [stage for stage in STAGES if stage in units["sd"].keys] == [SAMPLE, RANK]
    assert [stage for stage in STAGES if stage in units["from-stitch"].keys] == [STITCH, TUNE, SAMPLE, RANK]


def test_variants_share_the_calls_their_settings_agree_on():
    """Two variants that differ in ranking only share training and images; one with other sampling steps shares
    the adapter alone; one with another tune config shares nothing but its scene. Ranking is never shared."""
    variants = [variant("base"), variant("keep2", rank={"keep": 2}),
                variant("steps", sample=SampleConfig(steps=7)), variant("tuned", tune=TuneConfig(train_steps=9))]
    plan = plan_run(SCENES, variants)
    assert [len(group) for group in plan.groups] == [4, 4], "a scene's variants start together"
    assert plan.calls(TUNE) == 2 * 2 and plan.calls(SAMPLE) == 2 * 3 and plan.calls(RANK) == 2 * 4
    assert plan.calls(STITCH) == 0
    a = {unit.variant.name: unit for unit in plan.groups[0]}
    assert a["base"].keys[TUNE] == a["keep2"].keys[TUNE] == a["steps"].keys[TUNE] != a["tuned"].keys[TUNE]
    assert a["base"].keys[SAMPLE] == a["keep2"].keys[SAMPLE] != a["steps"].keys[SAMPLE]
    assert len({unit.keys[RANK] for unit in plan.units}) == len(plan.units)
    assert plan.feeds[(TUNE, a["base"].keys[TUNE])] == 3 and plan.feeds[(SAMPLE, a["base"].keys[SAMPLE])] == 2
    b = {unit.variant.name: unit for unit in plan.groups[1]}
    assert b["base"].keys[TUNE] != a["base"].keys[TUNE], "keys name the scene"
    assert plan.totals() == {STITCH: 0, TUNE: 8, SAMPLE: 8, RANK: 8}


def test_a_shared_sample_call_makes_the_most_seeds_any_of_its_units_asks_for():
    plan = plan_run(SCENES[:1], [variant("few", sample=SampleConfig(num_samples=3)),
                                 variant("many", sample=SampleConfig(num_samples=8, batch_size=4))])
    few, many = plan.units
    assert few.keys[SAMPLE] == many.keys[SAMPLE], "how many seeds, and their batch, change no image"
    assert few.seeds[SAMPLE] == many.seeds[SAMPLE] == 8
    assert SAMPLE.job(few, stores=None).config.sample.num_samples == 8


def test_units_already_complete_are_not_planned():
    variants = [variant("x"), variant("y")]
    plan = plan_run(SCENES, variants, done={("x", SCENES[0]), ("y", SCENES[0]), ("y", SCENES[1])})
    assert [[unit.label for unit in group] for group in plan.groups] == [["x/b"]]
    assert plan.feeds[(TUNE, plan.units[0].keys[TUNE])] == 1
