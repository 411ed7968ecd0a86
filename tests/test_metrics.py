import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from realfill.config import EvalConfig
from realfill.evaluation.metrics import EmbeddingSimilarity, Evaluator, psnr_in_region, ssim_in_region


def images(seed=0, shape=(64, 80, 3)):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, shape, dtype=np.uint8)
    noisy = np.clip(gt.astype(int) + rng.integers(-40, 40, shape), 0, 255).astype(np.uint8)
    return gt, noisy


def test_psnr_and_ssim_agree_with_scikit_image():
    gt, pred = images()
    full = np.ones(gt.shape[:2], bool)
    assert abs(psnr_in_region(gt, pred, full) - peak_signal_noise_ratio(gt, pred, data_range=255)) < 1e-6
    assert abs(ssim_in_region(gt, pred, full) - structural_similarity(gt, pred, channel_axis=2, data_range=255)) < 1e-6


@pytest.mark.filterwarnings("ignore:divide by zero")
def test_region_metrics_only_see_the_region():
    gt, pred = images()
    region = np.zeros(gt.shape[:2], bool)
    region[10:40, 20:60] = True
    outside_changed = pred.copy()
    outside_changed[~region] = 0
    assert psnr_in_region(gt, pred, region) == psnr_in_region(gt, outside_changed, region)
    assert psnr_in_region(gt, gt, region) == float("inf")
    assert ssim_in_region(gt, gt, region) == pytest.approx(1.0)
    assert psnr_in_region(gt, pred, region) == pytest.approx(
        peak_signal_noise_ratio(gt[region], pred[region], data_range=255), abs=1e-6)


@pytest.mark.parametrize("kind", ["dino", "clip"])
def test_embedding_similarity_with_tiny_backbones(tiny_backbones, kind):
    import torch

    metric = EmbeddingSimilarity(kind, str(tiny_backbones / kind), torch.device("cpu"))
    gt, pred = images(shape=(48, 48, 3))
    other = images(seed=9, shape=(48, 48, 3))[0][::-1]
    same, different = metric(gt, [gt, other])
    assert same == pytest.approx(1.0, abs=1e-5) and different < same
    assert metric(gt, [other]) == pytest.approx([different], abs=1e-5), "a batch measures each image as alone"


def test_unavailable_metrics_say_why(tiny_backbones, tmp_path):
    evaluator = Evaluator(EvalConfig(dino_model=str(tiny_backbones / "dino"), clip_model=str(tmp_path / "none"),
                                     device="cpu"))
    gt, pred = images()
    mask = np.zeros(gt.shape[:2], bool)
    mask[8:40, 8:40] = True
    (values,) = evaluator(gt, [pred], mask)
    assert values.dino is not None and values.clip is None and values.dreamsim is None
    assert "clip" in evaluator.unavailable and "none" in evaluator.unavailable["clip"]
    assert "pickled weights" in evaluator.unavailable["dreamsim"]
    assert values.lpips is None and "lpips" in evaluator.unavailable, "no LPIPS weights were configured"


def test_lpips_with_random_weights(tmp_path):
    lpips = pytest.importorskip("lpips", reason="the lpips extra (lpips + torchvision) is not installed")
    from safetensors.torch import save_file

    model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, tmp_path / "lpips.safetensors")
    evaluator = Evaluator(EvalConfig(lpips_weights=str(tmp_path / "lpips.safetensors"), device="cpu",
                                     dino_model=str(tmp_path), clip_model=str(tmp_path)))
    gt, pred = images()
    mask = np.ones(gt.shape[:2], bool)
    same, different = evaluator.lpips(gt, [gt, pred], mask)
    assert same == pytest.approx(0.0, abs=1e-6) and different > 0
    assert evaluator.lpips(gt, [pred], mask) == pytest.approx([different], abs=1e-5), "a batch measures each alone"
