import fsspec
import pytest
from safetensors.torch import load_file

from realfill.data import storage
from realfill.data.hub import ModelError
from realfill.devices import mixed_precision, pick_device
from realfill.method.models import build_tiny_model, resolve_model


def test_tiny_model_is_deterministic_and_safetensors_only(tmp_path, tiny_model):
    again = build_tiny_model(tmp_path / "again")
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        first, second = load_file(tiny_model / part), load_file(again / part)
        assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)
    assert not list(tiny_model.rglob("*.bin")) and not list(tiny_model.rglob("*.pt"))


def test_resolve_local_folder_and_fsspec_uri(tiny_model):
    assert resolve_model(str(tiny_model)) == tiny_model
    assert resolve_model("tiny") == tiny_model
    memory = fsspec.filesystem("memory")
    for file in tiny_model.rglob("*"):
        if file.is_file():
            memory.pipe(f"/models/tiny/{file.relative_to(tiny_model).as_posix()}", file.read_bytes())
    copied = resolve_model("memory://models/tiny")
    assert (copied / "unet" / "config.json").read_bytes() == (tiny_model / "unet" / "config.json").read_bytes()
    assert sorted(str(file.relative_to(copied)) for file in copied.rglob("*.safetensors")) == sorted(
        str(file.relative_to(tiny_model)) for file in tiny_model.rglob("*.safetensors"))


@pytest.fixture(params=["memory", "s3"])
def model_store(request):
    """Where a model folder is put and its URI: memory://, or s3:// on a local endpoint (where a file replaced
    within the same second by one of the same size differs only by its ETag)."""
    if request.param == "memory":
        return fsspec.filesystem("memory"), "replaced/tiny", "memory://replaced/tiny"
    return request.getfixturevalue("s3"), "realfill-test/replaced/tiny", "s3://realfill-test/replaced/tiny"


def test_a_model_at_a_uri_is_copied_once_and_again_when_it_is_replaced(tiny_model, model_store, monkeypatch):
    """The copy is cached by what the files are, not by the URI: the same files are copied once, a replaced
    file (same size, same second) makes a new copy with its new contents, and pickles are never copied."""
    fs, path, uri = model_store
    for file in tiny_model.rglob("*"):
        if file.is_file():
            fs.pipe(f"{path}/{file.relative_to(tiny_model).as_posix()}", file.read_bytes())
    fs.pipe(f"{path}/unet/diffusion_pytorch_model.bin", b"a pickle")
    copies = []
    download = storage.download_files
    monkeypatch.setattr(storage, "download_files", lambda *args: copies.append(args[1]) or download(*args))

    first = resolve_model(uri)
    assert resolve_model(uri) == first and len(copies) == 1
    assert not (first / "unet" / "diffusion_pytorch_model.bin").exists()
    assert "unet/diffusion_pytorch_model.bin" not in copies[0]
    assert (first / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        tiny_model / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()

    original = (tiny_model / "unet" / "config.json").read_text()
    changed = original.replace('"sample_size": 8,', '"sample_size": 4,')
    assert changed != original and len(changed) == len(original)
    fs.pipe(f"{path}/unet/config.json", changed.encode())
    second = resolve_model(uri)
    assert second != first and len(copies) == 2
    assert (second / "unet" / "config.json").read_text() == changed
    assert (first / "unet" / "config.json").read_text() == original


def test_a_model_replaced_while_it_is_copied_is_refused_and_nothing_is_cached(tiny_model, model_cache, monkeypatch):
    memory = fsspec.filesystem("memory")
    for file in tiny_model.rglob("*"):
        if file.is_file():
            memory.pipe(f"/changing/tiny/{file.relative_to(tiny_model).as_posix()}", file.read_bytes())
    download = storage.download_files

    def download_while_replaced(*args):
        download(*args)
        memory.pipe("/changing/tiny/unet/config.json", b"{}")

    monkeypatch.setattr(storage, "download_files", download_while_replaced)
    models = model_cache / "models"
    before = sorted(models.iterdir())
    with pytest.raises(ModelError, match=r"^memory://changing/tiny: the model changed while it was being copied"):
        resolve_model("memory://changing/tiny")
    assert sorted(models.iterdir()) == before, "nothing published, no scratch folder left"


def test_missing_models_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="hf download.*--base_model stable-diffusion-2-inpainting"):
        resolve_model("stabilityai/stable-diffusion-2-inpainting")
    with pytest.raises(ModelError, match="--example_model Paint-by-Example.*`--example_model tiny`"):
        resolve_model("Fantasy-Studio/Paint-by-Example", example=True)
    with pytest.raises(ModelError, match="model_index.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="not a diffusers model folder"):
        resolve_model("memory://nothing/here")


def test_tiny_paint_by_example_loads_through_its_folder(model_cache):
    from realfill.method.sample import Sampler

    folder = resolve_model("tiny", example=True)
    assert folder != resolve_model("tiny") and (folder / "image_encoder" / "model.safetensors").is_file()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    sampler = Sampler(folder, device="cpu")
    assert sampler.by_example and type(sampler.pipeline).__name__ == "PaintByExamplePipeline"
    assert not Sampler(resolve_model("tiny"), device="cpu").by_example


def test_device_and_precision_follow_the_hardware():
    import torch

    device = pick_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert mixed_precision(torch.device("cpu")) == "no", "auto stays fp32 on a CPU"
    assert mixed_precision(torch.device("cpu"), "bf16") == "bf16", "an explicit bf16 is honoured: CPUs run it"
    with pytest.raises(ModelError, match="fp16 mixed precision needs a CUDA GPU"):
        mixed_precision(torch.device("cpu"), "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            pick_device("cuda")


def test_cuda_precision_choice(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert mixed_precision(torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert mixed_precision(torch.device("cuda")) == "fp16"
    assert mixed_precision(torch.device("cuda"), "no") == "no"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "Tesla V100")
    with pytest.raises(ModelError, match="Tesla V100 has no bf16: use fp16 or auto"):
        mixed_precision(torch.device("cuda"), "bf16")
