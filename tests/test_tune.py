import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config, write_scene
from realfill.config import TuneConfig
from realfill.data.records import AdapterInfo, adapter_key
from realfill.data.scene import load_scene
from realfill.method.adapter import read_adapter_info, save_adapter
from realfill.method.tune import (
    add_lora,
    load_models,
    lora_parameters,
    make_batch,
    training_images,
    training_loss,
    tune,
    unknown_latent_weight,
)

CPU = torch.device("cpu")


def loss_and_grads(models, scene, config, seed=3):
    torch.manual_seed(seed)
    batch = make_batch(training_images(scene, config), config, np.random.default_rng(seed))
    for module in (models.unet, models.text_encoder):
        module.zero_grad(set_to_none=True)
    loss = training_loss(models, batch, CPU, torch.float32)
    loss.backward()
    grads = [p.grad.clone() for m in (models.unet, models.text_encoder) for p in lora_parameters(m)]
    return batch, loss.item(), grads


@pytest.fixture
def lora_models(tiny_model):
    models = load_models(tiny_model)
    add_lora(models, TuneConfig(lora_dropout=0.0))
    return models


def test_loss_ignores_the_target_hole(tmp_path, lora_models):
    config = TuneConfig(resolution=64, batch_size=6, prompt_dropout=0.0)
    scenes = [load_scene(str(write_scene(tmp_path / f"s{value}", refs=1, hole_value=value))) for value in (0, 255)]
    noisy = write_scene(tmp_path / "noise", refs=1)
    target = np.asarray(Image.open(noisy / "target" / "target.png")).copy()
    hole = np.asarray(Image.open(noisy / "target" / "mask.png")) > 0
    target[hole] = np.random.default_rng(5).integers(0, 256, (hole.sum(), 3))
    Image.fromarray(target).save(noisy / "target" / "target.png")
    scenes.append(load_scene(str(noisy)))

    results = [loss_and_grads(lora_models, scene, config) for scene in scenes]
    batch = results[0][0]
    assert batch.unknown.sum() > 0, "the batch must contain a draw of the target"
    for _, loss, grads in results[1:]:
        assert loss == results[0][1]
        for grad, reference in zip(grads, results[0][2]):
            assert torch.equal(grad, reference)

    # ... while the known pixels do matter: the test can fail
    known = write_scene(tmp_path / "known", refs=1)
    target = np.asarray(Image.open(known / "target" / "target.png")).copy()
    target[~hole] = 255 - target[~hole]
    Image.fromarray(target).save(known / "target" / "target.png")
    assert loss_and_grads(lora_models, load_scene(str(known)), config)[1] != results[0][1]


def test_unknown_latents_get_zero_weight():
    unknown = torch.zeros(1, 1, 64, 64)
    unknown[..., 16:24, 32:48] = 1
    weight = unknown_latent_weight(unknown, (8, 8), torch.zeros(1))
    assert weight[0, 0, 2, 4:6].eq(0).all()  # the hole's own latents
    assert weight[0, 0, 1:4, 3:7].eq(0).all()  # and a one-latent margin
    assert weight[0, 0, 6:, :].eq(1).all() and weight.sum() == 64 - 3 * 4
    viewed = unknown_latent_weight(unknown.repeat(2, 1, 1, 1), (8, 8), torch.tensor([0.0, 0.25]))
    assert viewed[0].equal(weight[0]), "the target's hole weighs 0, draw by draw"
    assert viewed[1, 0, 1:4, 3:7].eq(0.25).all() and viewed[1, 0, 6:, :].eq(1).all(), "a view's hole: its weight"


def test_a_stitch_view_is_one_more_draw_with_its_own_hole_weight(tmp_path, tiny_model):
    from realfill.method.tune import ExtraView

    scene = load_scene(str(write_scene(tmp_path / "one", refs=1)))
    config = TuneConfig(resolution=32, batch_size=32, prompt_dropout=0.0)
    view = ExtraView(scene.gt, 0.5, "stitch-settings")
    images = training_images(scene, config, view)
    assert [image.hole_weight for image in images] == [0.0, 0.0, 0.5]
    assert np.array_equal(images[2].unknown, images[1].unknown), "the view's hole is the target's"
    batch = make_batch(images, config, np.random.default_rng(0))
    assert set(batch.hole_weight.tolist()) == {0.0, 0.5}, "references, target and view are all drawn"
    assert (batch.mask >= batch.unknown).all(), "the view's hole is in the conditioning mask, as the target's"
    tiny = TuneConfig(resolution=32, batch_size=2, train_steps=1, checkpoint_every=0)
    plain = tune(scene, tiny_model, tiny, str(tmp_path / "plain"), key="plain", device="cpu", show_progress=False)
    viewed = tune(scene, tiny_model, tiny, str(tmp_path / "viewed"), key="viewed", device="cpu", show_progress=False,
                  view=view)
    assert plain.losses != viewed.losses, "the view is trained on"
    assert adapter_key(scene.fingerprint, tiny, 0, None) != adapter_key(scene.fingerprint, tiny, 0, None, view.key), \
        "what made the view is part of the adapter's identity"


def test_batch_has_n_independent_draws_with_one_reference(tmp_path):
    scene = load_scene(str(write_scene(tmp_path / "one", refs=1)))
    config = TuneConfig(resolution=32, batch_size=16)
    batch = make_batch(training_images(scene, config), config, np.random.default_rng(0))
    assert batch.pixels.shape == (16, 3, 32, 32) and batch.mask.shape == (16, 1, 32, 32)
    assert len(batch.prompts) == 16
    flat = batch.pixels.flatten(1)
    assert len({tuple(row.tolist()) for row in flat}) == 16, "every draw has its own crop"
    from_target = batch.unknown.flatten(1).amax(1) > 0
    assert 0 < from_target.sum() < 16, "both the reference and the target are drawn"
    assert (batch.mask >= batch.unknown).all(), "the target's hole is always in the conditioning mask"


def perturbed_adapter(tiny_model, uri: str, seed: int):
    """LoRA models whose every adapter weight has moved away from its init (a stand-in for training),
    saved as an adapter at uri. Default LoRA config: dropout 0.1, as real adapters have."""
    models = load_models(tiny_model)
    torch.manual_seed(seed)
    add_lora(models, TuneConfig())
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for module in (models.unet, models.text_encoder):
            for parameter in lora_parameters(module):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    info = AdapterInfo(scene_id="s", scene_fingerprint="f", base_model="tiny", seed=seed, key="k", config=TuneConfig(),
                       device="cpu", mixed_precision="no", gradient_checkpointing=False)
    save_adapter(uri, models.unet, models.text_encoder, info)
    models.unet.eval()
    models.text_encoder.eval()
    return models


def model_outputs(tokenizer, unet, text_encoder):
    ids = tokenizer(["a photo of sks"], padding="max_length", return_tensors="pt").input_ids
    latents = torch.randn(1, 9, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = text_encoder(ids)[0]
        return hidden, unet(latents, 500, hidden).sample


def test_large_photos_are_downscaled_once_with_their_hole(tmp_path):
    scene = load_scene(str(write_scene(tmp_path / "big", size=(600, 400), ref_size=(900, 700), refs=1)))
    config = TuneConfig(resolution=64)
    images = training_images(scene, config)
    assert [min(item.image.shape[:2]) for item in images] == [72, 72]  # ceil(64 * 576 / 512)
    ref, target = images
    assert not ref.unknown.any() and target.unknown.shape == target.image.shape[:2]
    hole_fraction = scene.mask.mean()
    assert target.unknown.mean() >= hole_fraction, "a downscaled hole never shrinks"


def test_lora_save_load_round_trip_is_exact(tiny_model):
    from realfill.method.sample import Sampler

    trained = perturbed_adapter(tiny_model, "memory://adapters/round-trip", seed=0)
    sampler = Sampler(tiny_model, device="cpu")
    pipeline = sampler.pipeline
    base = model_outputs(pipeline.tokenizer, pipeline.unet, pipeline.text_encoder)
    sampler.use_adapter("memory://adapters/round-trip")
    loaded = model_outputs(pipeline.tokenizer, pipeline.unet, pipeline.text_encoder)
    expected = model_outputs(pipeline.tokenizer, trained.unet, trained.text_encoder)
    for got, want, base_value in zip(loaded, expected, base):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert (got - base_value).abs().max() > 1e-3, "the adapter changes outputs"
    again = model_outputs(pipeline.tokenizer, pipeline.unet, pipeline.text_encoder)
    assert all(torch.equal(a, b) for a, b in zip(loaded, again)), "LoRA dropout must be off when sampling"


def test_adapter_swap_in_place_equals_a_fresh_load(tiny_model):
    from realfill.method.sample import Sampler

    for seed in (1, 2):
        perturbed_adapter(tiny_model, f"memory://adapters/swap-{seed}", seed=seed)
    sampler = Sampler(tiny_model, device="cpu")
    pipeline = sampler.pipeline
    sampler.use_adapter("memory://adapters/swap-1")
    reloads = []
    original = pipeline.load_lora_weights
    pipeline.load_lora_weights = lambda *args, **kwargs: (reloads.append(args), original(*args, **kwargs))
    sampler.use_adapter("memory://adapters/swap-2")
    swapped = model_outputs(pipeline.tokenizer, pipeline.unet, pipeline.text_encoder)
    assert reloads == [], "same layout: weights copied in place, nothing reloaded"
    sampler.use_adapter(None)
    sampler.use_adapter("memory://adapters/swap-2")
    fresh = model_outputs(pipeline.tokenizer, pipeline.unet, pipeline.text_encoder)
    assert len(reloads) == 1
    assert all(torch.equal(a, b) for a, b in zip(swapped, fresh))


@pytest.mark.parametrize("precision,checkpointing", [("no", "off"), ("bf16", "on")])
def test_tune_writes_a_diffusers_adapter_and_resumes_exactly(tmp_path, tiny_model, precision, checkpointing):
    """In fp32, and in bf16 with gradient checkpointing (the GPU recipe, which CPUs run too): a run preempted
    after its first checkpoint resumes to the uninterrupted run's losses and adapter, bit for bit."""
    scene = load_scene(str(write_scene(tmp_path / "scene", refs=1)))
    config = tiny_config(train_steps=4, checkpoint_every=2, mixed_precision=precision,
                         gradient_checkpointing=checkpointing).tune

    straight = tune(scene, tiny_model, config, str(tmp_path / "straight"), key="k", seed=1, device="cpu",
                    show_progress=False)
    assert (tmp_path / "straight" / "pytorch_lora_weights.safetensors").exists()
    assert len(straight.losses) == 4 and all(np.isfinite(straight.losses))
    assert straight.mixed_precision == precision and straight.gradient_checkpointing == (checkpointing == "on")
    assert straight.weights.dtype == "float32", "the adapter is saved in the LoRA training precision"
    assert read_adapter_info(str(tmp_path / "straight")) == straight and straight.config == config

    class Preempted(Exception):
        pass

    def preempt(step, loss):
        if step == 3:
            raise Preempted

    with pytest.raises(Preempted):
        tune(scene, tiny_model, config, str(tmp_path / "resumed"), key="k", seed=1, device="cpu",
             show_progress=False, after_step=preempt)
    steps_seen = []
    resumed = tune(scene, tiny_model, config, str(tmp_path / "resumed"), key="k", seed=1, device="cpu",
                   show_progress=False, after_step=lambda step, loss: steps_seen.append(step))
    assert steps_seen == [3, 4], "resumed from the checkpoint at step 2"
    assert resumed.losses == straight.losses
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "resumed" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def recorded_training(monkeypatch, tiny_model, tmp_path, **tune_overrides):
    """Tune the tiny model one step on a small scene, recording what the training step saw: the precision of
    the frozen and the LoRA weights, autocast, and how often the UNet's transformer blocks and the text encoder
    layers' attention were entered (pre-hooks on the modules themselves; a recomputation in backward stops
    early, before a forward hook would run, and transformers' layers recompute `forward`, not `__call__`)."""
    import realfill.method.tune as tune_module

    seen = {"unet_calls": 0, "text_calls": 0}

    def load_and_hook(base_path):
        models = load_models(base_path)
        for module in models.unet.modules():
            if type(module).__name__ == "BasicTransformerBlock":  # the blocks that hold the LoRA layers
                module.register_forward_pre_hook(lambda *_: seen.__setitem__("unet_calls", seen["unet_calls"] + 1))
        for layer in models.text_encoder.encoder.layers:
            layer.self_attn.register_forward_pre_hook(lambda *_: seen.__setitem__("text_calls", seen["text_calls"] + 1))
        return models

    def loss_and_state(models, batch, device, dtype):
        frozen = models.unet.conv_in.weight
        seen.update(frozen=frozen.dtype, vae=next(models.vae.parameters()).dtype,
                    lora={p.dtype for m in (models.unet, models.text_encoder) for p in lora_parameters(m)},
                    autocast=torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return training_loss(models, batch, device, dtype)

    monkeypatch.setattr(tune_module, "load_models", load_and_hook)
    monkeypatch.setattr(tune_module, "training_loss", loss_and_state)
    scene = load_scene(str(write_scene(tmp_path / "scene", refs=1)))
    config = tiny_config(train_steps=1, **tune_overrides).tune
    info = tune(scene, tiny_model, config, str(tmp_path / "adapter"), key="k", device="cpu", show_progress=False)
    return info, seen


def test_bf16_on_a_cpu_runs_the_half_precision_path(tmp_path, tiny_model, monkeypatch):
    """An explicit bf16 is honoured on a CPU: frozen weights in bf16 under bf16 autocast, LoRA weights in
    fp32, and a different loss than fp32's; auto stays fp32 on a CPU."""
    bf16, seen = recorded_training(monkeypatch, tiny_model, tmp_path / "bf16", mixed_precision="bf16")
    assert bf16.mixed_precision == "bf16"
    assert seen["frozen"] == seen["vae"] == torch.bfloat16 and seen["lora"] == {torch.float32}
    assert seen["autocast"] == torch.bfloat16
    auto, seen = recorded_training(monkeypatch, tiny_model, tmp_path / "auto")
    assert auto.mixed_precision == "no" and seen["frozen"] == torch.float32 and seen["autocast"] is False
    assert bf16.losses != auto.losses


def test_fp16_on_a_cpu_is_refused_in_one_line(tmp_path, tiny_model):
    from realfill.data.hub import ModelError

    scene = load_scene(str(write_scene(tmp_path / "scene", refs=1)))
    with pytest.raises(ModelError, match=r"^fp16 mixed precision needs a CUDA GPU \(this runs on cpu\): use bf16"):
        tune(scene, tiny_model, TuneConfig(mixed_precision="fp16", train_steps=1), str(tmp_path / "adapter"), key="k",
             device="cpu", show_progress=False)
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU, and device is cpu"):
        tiny_config(mixed_precision="fp16")


def test_gradient_checkpointing_recomputes_the_blocks_in_backward(tmp_path, tiny_model, monkeypatch):
    """With checkpointing on, the UNet's transformer blocks and the text encoder's layers run twice per step (forward,
    then again in backward instead of keeping their activations); off, once."""
    on, with_checkpointing = recorded_training(monkeypatch, tiny_model, tmp_path / "on", gradient_checkpointing="on")
    off, without = recorded_training(monkeypatch, tiny_model, tmp_path / "off", gradient_checkpointing="off")
    assert on.gradient_checkpointing and not off.gradient_checkpointing
    assert without["unet_calls"] > 0 and with_checkpointing["unet_calls"] == 2 * without["unet_calls"]
    assert without["text_calls"] > 0 and with_checkpointing["text_calls"] == 2 * without["text_calls"]
    assert on.losses == off.losses, "checkpointing changes memory, not the result"


def adapter_content(uri: str) -> tuple:
    """An adapter's tensors and metadata (safetensors writes its header's keys in no fixed order)."""
    from safetensors import safe_open

    with safe_open(str(Path(uri) / "pytorch_lora_weights.safetensors"), "pt") as handle:
        return handle.metadata(), {key: handle.get_tensor(key).numpy().tobytes() for key in handle.keys()}


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler catches it."""


def test_a_kill_at_any_write_resumes_to_the_same_adapter(tmp_path, tiny_model, monkeypatch):
    """Every file realfill writes lands with one move (storage.write_bytes). A kill just before the n-th move,
    for every n of a training run (checkpoints, adapter weights, adapter record), then a plain re-run, gives
    the adapter of an uninterrupted run, bit for bit, and leaves no checkpoint behind."""
    import fsspec.implementations.local as local

    from realfill.method.tune import CHECKPOINT
    from realfill.stages import tune_scene

    scene = load_scene(str(write_scene(tmp_path / "scene", refs=1)))
    config = tiny_config(train_steps=3, checkpoint_every=1)
    straight, _ = tune_scene(scene, str(tmp_path / "straight"), config, show_progress=False)
    expected = adapter_content(straight)
    moves, kill = [], {"at": None}
    original = local.LocalFileSystem.mv

    def counting_mv(self, *args, **kwargs):
        moves.append(args)
        if len(moves) == kill["at"]:
            raise Killed
        return original(self, *args, **kwargs)

    monkeypatch.setattr(local.LocalFileSystem, "mv", counting_mv)
    tune_scene(scene, str(tmp_path / "count"), config, show_progress=False)
    total = len(moves)
    assert total == 5, "3 checkpoints, the weights, the record"
    for kill_at in range(1, total + 1):
        moves.clear()
        kill["at"] = kill_at
        store = str(tmp_path / f"killed-{kill_at}")
        with pytest.raises(Killed):
            tune_scene(scene, store, config, show_progress=False)
        kill["at"] = None
        resumed, _ = tune_scene(scene, store, config, show_progress=False)
        assert adapter_content(resumed) == expected, kill_at
        assert not (Path(resumed) / CHECKPOINT).exists()


def test_a_damaged_adapter_is_retrained_not_reused(tmp_path, tiny_model):
    from realfill.method.adapter import AdapterError, verified_adapter
    from realfill.stages import tune_scene

    scene = load_scene(str(write_scene(tmp_path / "scene", refs=1)))
    config = tiny_config(train_steps=1)
    uri, info = tune_scene(scene, str(tmp_path / "adapters"), config, show_progress=False)
    weights = Path(uri) / "pytorch_lora_weights.safetensors"
    good = weights.read_bytes()
    shutil.copytree(uri, tmp_path / "reference")
    assert info.weights.bytes == len(good) and info.weights.dtype == "float32"
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(AdapterError, match="truncated or replaced") as caught:
        verified_adapter(uri)
    assert str(caught.value).startswith(uri)
    with pytest.warns(UserWarning, match="retraining"):
        again, _ = tune_scene(scene, str(tmp_path / "adapters"), config, show_progress=False)
    assert again == uri and adapter_content(again) == adapter_content(str(tmp_path / "reference")), "retrained"


def test_pickled_adapter_weights_are_refused(tmp_path, tiny_model):
    from realfill.method.adapter import AdapterError
    from realfill.method.sample import Sampler

    uri = str(tmp_path / "adapter")
    perturbed_adapter(tiny_model, uri, seed=0)
    weights = Path(uri) / "pytorch_lora_weights.safetensors"
    torch.save({"unet.x": torch.zeros(1)}, Path(uri) / "pytorch_lora_weights.bin")
    weights.unlink()
    with pytest.raises(AdapterError, match=r"holds only pickle weights \(pytorch_lora_weights.bin\).*safetensors only"):
        Sampler(tiny_model, device="cpu").use_adapter(uri)
