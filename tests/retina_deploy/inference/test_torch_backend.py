"""TorchBackend: a checkpoint behind the runtime's Backend, with the --nms onnx file's outputs and Detector's checks."""

import numpy as np
import pytest
import torch
from testkit.detector_models import CLASS_NAMES, INPUT_SIZE, checkpoint, exported, images

from retina_deploy.core.errors import ModelOutputError
from retina_deploy.inference.torch_backend import TorchBackend, checkpoint_spec, pack_detections
from retina_deploy.model.checkpoint import load_checkpoint
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.image.preprocess import preprocess
from retina_deploy.runtime.post.detections import make_detections


@pytest.fixture(scope="module")
def torch_detector():
    backend, spec = TorchBackend.from_checkpoint(checkpoint())
    with Detector(backend, spec) as det:
        yield det


def _direct_model_call(batch_of_images):
    """The checkpoint's model called by hand: preprocess, forward in eval mode, back to original pixels."""
    model, info = load_checkpoint(checkpoint())
    inputs, scales = zip(*(preprocess(img, info.preprocess) for img in batch_of_images), strict=True)
    with torch.no_grad():
        outputs = model(torch.from_numpy(np.stack(inputs)))
    return [
        make_detections(
            o["boxes"].numpy(), o["scores"].numpy(), o["labels"].numpy(), info.class_names, scale=s, orig_hw=i.shape[:2]
        )
        for o, s, i in zip(outputs, scales, batch_of_images, strict=True)
    ]


def test_detector_on_a_checkpoint_equals_a_direct_model_call(torch_detector):
    imgs = images()
    got = torch_detector.detect(imgs)
    want = _direct_model_call(imgs)
    assert sum(len(d) for d in want) > 20  # real detections on every kind of image, not an empty comparison
    for g, w in zip(got, want, strict=True):
        # Same kernels on the same batch: equal up to float32 rounding of the padding copy (none expected).
        np.testing.assert_allclose(g.boxes, w.boxes, rtol=0, atol=1e-5)
        np.testing.assert_allclose(g.scores, w.scores, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(g.class_ids, w.class_ids)
        assert g.class_names == w.class_names


def test_outputs_are_those_of_the_nms_onnx_file(torch_detector):
    batch = np.stack([preprocess(img, torch_detector.preprocess_cfg)[0] for img in images()[:3]])
    ours = torch_detector.backend.run(batch)
    with Detector.load(exported("onnx"), backend="ort-cpu") as onnx_det:
        theirs = onnx_det.backend.run(batch)
    assert list(ours) == list(theirs) == ["num_dets", "boxes", "scores", "classes"]
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and ours[name].shape == theirs[name].shape, name
    k = torch_detector.spec.nms.max_dets
    for i, n in enumerate(ours["num_dets"][:, 0]):  # zero padding past num_dets
        assert 0 < n <= k
        assert not ours["scores"][i, n:].any() and not ours["boxes"][i, n:].any() and not ours["classes"][i, n:].any()


def test_spec_comes_from_the_checkpoint_config(torch_detector):
    _, info = load_checkpoint(checkpoint())
    spec = torch_detector.spec
    assert spec.class_names == CLASS_NAMES and spec.preprocess == info.preprocess
    nms = spec.nms
    assert (nms.mode, nms.max_dets, nms.topk_per_level) == ("onnx", 50, 200)
    assert (nms.score_thresh, nms.iou_thresh) == (info.model.score_thresh, info.model.nms_thresh)
    with Detector.load(exported("none"), backend="ort-cpu") as dense:  # the export's own count of anchors
        assert spec.anchors_per_level == dense.spec.anchors_per_level
    assert torch_detector.backend.name == "torch-eager" and torch_detector.max_batch == 2**31 - 1


def test_postprocess_is_run_prepareds_post_processing(torch_detector):
    prepared = [torch_detector.prepare(img) for img in images()[:2]]
    raw = torch_detector.backend.run(np.stack([p.chw for p in prepared]))
    for a, b in zip(torch_detector.postprocess(raw, prepared), torch_detector.run_prepared(prepared), strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_bad_model_outputs_are_refused_by_the_detectors_checks():
    class Ascending(torch.nn.Module):
        def forward(self, x):
            box = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2)
            return [{"boxes": box, "scores": torch.tensor([0.2, 0.9]), "labels": torch.tensor([0, 1])}] * len(x)

    info = load_checkpoint(checkpoint())[1]
    spec = checkpoint_spec(info.model, CLASS_NAMES, info.preprocess)
    det = Detector(TorchBackend(Ascending(), input_size=INPUT_SIZE, max_dets=5), spec, source="ascending")
    with pytest.raises(ModelOutputError, match="descending"):
        det.detect(images()[:1])


def test_pack_detections_pads_and_refuses_more_than_k():
    outs = [
        {"boxes": torch.ones(2, 4), "scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([2, 0])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    packed = pack_detections(outs, 3)
    assert packed["num_dets"].tolist() == [[2], [0]] and packed["num_dets"].dtype == torch.int32
    assert packed["classes"].tolist() == [[2, 0, 0], [0, 0, 0]] and packed["classes"].dtype == torch.int32
    np.testing.assert_allclose(packed["scores"].numpy(), [[0.9, 0.5, 0.0], [0.0, 0.0, 0.0]])
    assert packed["boxes"].shape == (2, 3, 4) and packed["boxes"][0, 2].abs().sum() == 0
    with pytest.raises(ModelOutputError, match="3 detections for image 0, more than max_dets 2"):
        pack_detections([{**outs[0], "scores": torch.tensor([0.9, 0.5, 0.1])}], 2)


def test_bench_hooks_on_the_cpu(torch_detector):
    backend = torch_detector.backend
    flops, source = backend.flops_per_image()
    assert flops > 1e9 and source == "torch FlopCounterMode (conv + matmul)"  # ResNet-18 FPN at 256 px: ~10 GFLOPs
    backend.enable_phase_timing()  # CUDA events only: on the CPU bench keeps its one "compute" phase
    backend.run(np.zeros((1, 3, *INPUT_SIZE), np.float32))
    assert backend.last_timings_s is None and backend.gpu_peak_mib() is None
    backend.reset_gpu_peak()


def test_an_in_memory_model_is_put_in_eval_mode_and_closed():
    model, info = load_checkpoint(checkpoint())
    model.train()
    backend = TorchBackend(model, input_size=INPUT_SIZE, max_dets=info.model.detections_per_img)
    assert not model.training
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.run(np.zeros((1, 3, *INPUT_SIZE), np.float32))
