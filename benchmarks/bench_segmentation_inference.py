"""The inference engine against MONAI's plain ``sliding_window_inference``: overhead, peak memory, calibration.

Network: a MONAI ``UNet`` of the shipped phantom model's shape (spatial_dims 3, 1 input
and 10 output channels, channels (16, 32, 64), strides (2, 2), 2 residual units), seeded
random weights, eval mode; ROI 96×96×64, overlap 0.25, Gaussian blending (sigma_scale
0.125), ``sw_batch_size`` 2; ``torch.inference_mode``; torch with ``--threads`` threads
(default 1: on this shared 2-core machine two threads spin against other processes and
run three times slower).

Sections (``--sections``, all by default):

``overhead``
    The small phantom (250×184×108 voxels of 0.9×0.9×1.25 mm, ``VirtualScanner(size=
    'small')``, 4 mGy FBP, int16 HU). Ours: :func:`segment_image` from the SimpleITK image
    to the uint8 label map on its grid (checks, reorientation, intensity window, memory
    plan, sliding window, decision, the way back). Plain: MONAI's
    ``sliding_window_inference`` alone on the same prepared tensor (prepared before its
    timer starts), and the same followed by ``argmax`` to uint8. Repeats alternate which
    goes first, so load from other processes falls on both; the medians' ratio is the
    overhead (target ≤ 1.10). The labels must be identical.
``memory``
    A 512×512×400 int16 CT-like volume (smooth random structures plus noise). Ours and
    plain MONAI (``sliding_window_inference`` over the whole volume, then ``argmax``) each
    run in their own spawned process; the peak is the process's high-water resident
    memory (VmHWM, everything included: interpreter, torch, the image). Target for ours:
    ≤ 8 GB. Our memory estimate is printed beside the measurement, and the two label
    maps are compared voxel by voxel.
``calibration``
    The activation term of the memory model: for several MONAI UNets, the resident peak
    of the first forward pass over a window batch in a fresh process (VmHWM after a reset,
    minus the resident memory before it) against the trace of
    :func:`traced_activation_bytes` and the charged ``ACTIVATION_FACTOR·traced +
    ACTIVATION_OVERHEAD_CPU_BYTES``; charged/measured must stay ≥ 1.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROI = (96, 96, 64)
OVERLAP = 0.25
SW_BATCH = 2
MEMORY_SHAPE_KJI = (400, 512, 512)
MEMORY_SPACING = (0.8, 0.8, 1.5)
GIB = 2**30


def entry(out_channels: int = 10, spacing=(0.9, 0.9, 1.25), network_args: dict | None = None):
    from ImagInfoExtension.segmentation.catalogue import entry_from_json

    args = network_args or {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": out_channels,
        "channels": [16, 32, 64],
        "strides": [2, 2],
        "num_res_units": 2,
    }
    return entry_from_json(
        {
            "id": "bench-unet",
            "version": "1.0.0",
            "title": "benchmark UNet (random weights)",
            "task": "segmentation",
            "modality": "CT",
            "input_channels": 1,
            "preprocessing": {
                "orientation": "RAS",
                "target_spacing_mm": list(spacing),
                "intensity": {"clip_min": -1000.0, "clip_max": 400.0, "normalisation": "range"},
            },
            "network": {"format": "monai", "class": "UNet", "args": args},
            "inference": {
                "roi_size": list(ROI),
                "overlap": OVERLAP,
                "blend_mode": "gaussian",
                "sigma_scale": 0.125,
                "sw_batch_size": SW_BATCH,
            },
            "postprocessing": {"activation": "softmax", "decision": "argmax"},
            "labels": [{"value": v, "name": f"class {v}", "color": "#aa0000"} for v in range(1, out_channels)],
            "license": "Apache-2.0",
            "weights": {"file": "model.pt", "format": "state_dict", "sha256": "0" * 64, "size_bytes": 1},
        }
    )


def network(threads: int):
    import torch
    from monai.networks.nets import UNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = UNet(3, 1, 10, (16, 32, 64), (2, 2), num_res_units=2)
    with torch.no_grad():  # wider weights than the default init, so the argmax varies across the volume
        for parameter in net.parameters():
            parameter.mul_(1.5)
    return net.eval()


def plain_labels(tensor, net):
    """MONAI alone: the blended logits of the whole volume, then their argmax as uint8 (model space)."""
    import torch
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        started = time.perf_counter()
        logits = sliding_window_inference(
            tensor, ROI, SW_BATCH, net, OVERLAP, mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0.0
        )
        window_s = time.perf_counter() - started
        labels = torch.argmax(logits[0], dim=0).to(torch.uint8).numpy()
        total_s = time.perf_counter() - started
    return labels, window_s, total_s


# ----------------------------------------------------------------------------- overhead


def overhead(repeats: int, threads: int) -> dict:
    import SimpleITK as sitk

    from ImagInfoExtension.geometry import ImageGrid
    from ImagInfoExtension.phantom.acquisition import AcquisitionSettings
    from ImagInfoExtension.phantom.scanner import VirtualScanner
    from ImagInfoExtension.segmentation import inference

    image = VirtualScanner(size="small").acquire(AcquisitionSettings(dose_mgy=4.0, recon="FBP"))
    model = entry()
    net = network(threads)
    geometry = inference.model_geometry(ImageGrid.from_sitk(image), model.preprocessing)
    tensor = inference.prepare_input(image, model, geometry)
    started = time.perf_counter()
    inference.activation_bytes(model)  # once per process: PyTorch's dispatch machinery warms up for the trace
    trace_s = time.perf_counter() - started
    import torch

    with torch.inference_mode():  # both pay the first window's one-time setup here, outside the timers
        net(tensor[..., : ROI[0], : ROI[1], : ROI[2]].repeat(SW_BATCH, 1, 1, 1, 1))
    ours_s, plain_window_s, plain_total_s, identical = [], [], [], []
    result = None
    for repeat in range(repeats):
        for method in ("ours", "plain") if repeat % 2 == 0 else ("plain", "ours"):
            if method == "ours":
                started = time.perf_counter()
                result = inference.segment_image(image, model, network=net, device="cpu")
                ours_s.append(time.perf_counter() - started)
                ours = sitk.GetArrayFromImage(result.labels)
            else:
                labels, window_s, total_s = plain_labels(tensor, net)
                plain_window_s.append(window_s)
                plain_total_s.append(total_s)
                plain = geometry.reorientation.to_input(labels)
        identical.append(bool(np.array_equal(ours, plain)))
    ours_median = statistics.median(ours_s)
    return {
        "image": {"size_ijk": list(image.GetSize()), "spacing_mm": list(image.GetSpacing()), "dose_mgy": 4.0},
        "windows": result.memory.windows,
        "threads": threads,
        "repeats": repeats,
        "ours_s": [round(t, 3) for t in ours_s],
        "plain_sliding_window_s": [round(t, 3) for t in plain_window_s],
        "plain_sliding_window_argmax_s": [round(t, 3) for t in plain_total_s],
        "ratio_vs_plain_sliding_window": round(ours_median / statistics.median(plain_window_s), 4),
        "ratio_vs_plain_sliding_window_argmax": round(ours_median / statistics.median(plain_total_s), 4),
        "per_repeat_ratio": [round(a / b, 4) for a, b in zip(ours_s, plain_window_s)],
        "target_ratio": 1.10,
        "labels_identical": all(identical),
        "labels_present": sorted(int(v) for v in np.unique(ours)),
        "first_trace_s_once_per_process": round(trace_s, 3),
        "ours_estimate": result.memory.describe(),
    }


# ----------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def large_image():
    """A 512×512×400 int16 CT-like volume: smooth random structures (-900..+300 HU) plus 40 HU noise."""
    import SimpleITK as sitk
    from scipy import ndimage

    rng = np.random.default_rng(7)
    coarse = rng.normal(0.0, 1.0, size=(25, 32, 32)).astype(np.float32)
    smooth = ndimage.zoom(coarse, [n / c for n, c in zip(MEMORY_SHAPE_KJI, coarse.shape)], order=1)
    array = np.clip(-300.0 + 450.0 * smooth, -1000, 1500)
    array += rng.normal(0.0, 40.0, size=MEMORY_SHAPE_KJI).astype(np.float32)
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing(MEMORY_SPACING)
    image.SetOrigin((-204.4, -204.4, -300.0))
    return image


def _memory_child(method: str, threads: int, out_path: str, queue) -> None:
    try:
        import SimpleITK as sitk

        from ImagInfoExtension.segmentation import inference

        image = large_image()
        model = entry(spacing=MEMORY_SPACING)
        net = network(threads)
        before = _rss_bytes()
        started = time.perf_counter()
        record = {"method": method}
        if method == "ours":
            result = inference.segment_image(image, model, network=net, device="cpu")
            labels = sitk.GetArrayFromImage(result.labels)
            record["estimate_cpu_mb"] = round(result.memory.cpu_mb, 1)
            record["estimate"] = result.memory.describe()
            record["slabs"] = result.memory.slab_count
        else:
            from ImagInfoExtension.geometry import ImageGrid

            geometry = inference.model_geometry(ImageGrid.from_sitk(image), model.preprocessing)
            tensor = inference.prepare_input(image, model, geometry)
            model_labels, window_s, _ = plain_labels(tensor, net)
            del tensor
            labels = geometry.reorientation.to_input(model_labels)
            record["window_s"] = round(window_s, 2)
        record["runtime_s"] = round(time.perf_counter() - started, 2)
        record["peak_mb"] = round(_hwm_bytes() / 2**20, 1)
        record["resident_before_run_mb"] = round(before / 2**20, 1)
        np.save(out_path, labels)
        queue.put(record)
    except BaseException as error:  # noqa: BLE001  (the parent reports what failed)
        queue.put({"method": method, "error": f"{type(error).__name__}: {error}"})


def memory(threads: int) -> dict:
    context = multiprocessing.get_context("spawn")
    records = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in ("ours", "plain"):
            queue = context.Queue()
            path = str(Path(folder) / f"{method}.npy")
            process = context.Process(target=_memory_child, args=(method, threads, path, queue))
            process.start()
            records[method] = queue.get()
            process.join()
        if "error" not in records["ours"] and "error" not in records["plain"]:
            ours, plain = np.load(Path(folder) / "ours.npy"), np.load(Path(folder) / "plain.npy")
            different = int(np.count_nonzero(ours != plain))
            records["labels_identical"] = different == 0
            records["labels_differing_voxels"] = different
            records["labels_present"] = sorted(int(v) for v in np.unique(ours))
    records["shape_kji"] = list(MEMORY_SHAPE_KJI)
    records["target_peak_mb"] = 8000
    if "peak_mb" in records.get("ours", {}) and "peak_mb" in records.get("plain", {}):
        records["peak_ratio_ours_vs_plain"] = round(records["ours"]["peak_mb"] / records["plain"]["peak_mb"], 3)
    return records


# ----------------------------------------------------------------------------- calibration

CALIBRATION = [  # (channels, strides, out_channels, batch, roi, num_res_units)
    ((16, 32, 64), (2, 2), 10, 2, (96, 96, 64), 2),
    ((16, 32, 64), (2, 2), 10, 1, (96, 96, 64), 2),
    ((16, 32, 64), (2, 2), 10, 1, (64, 64, 64), 2),
    ((32, 64, 128), (2, 2), 10, 1, (96, 96, 64), 2),
    ((16, 32, 64), (2, 2), 2, 1, (96, 96, 64), 2),
    ((16, 32, 64), (2, 2), 10, 1, (96, 96, 64), 0),
    ((8, 16), (2,), 10, 1, (96, 96, 64), 1),
    ((32, 64, 128, 256), (2, 2, 2), 4, 1, (96, 96, 64), 2),
]


def _calibration_child(config, threads: int, queue) -> None:
    try:
        import torch
        from monai.networks.nets import UNet

        from ImagInfoExtension.segmentation import inference

        channels, strides, out, batch, roi, units = config
        torch.set_num_threads(threads)
        net = UNet(3, 1, out, channels, strides, num_res_units=units).eval()
        x = torch.rand(batch, 1, *roi)
        traced = inference.traced_activation_bytes(net, x.shape)
        with torch.inference_mode():
            net(torch.rand(1, 1, 16, 16, 16))  # libraries loaded; this shape's first call still follows
            before = _rss_bytes()
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident memory
            output = net(x)
            del output
        measured = _hwm_bytes() - before
        charged = inference.ACTIVATION_FACTOR * traced + inference.ACTIVATION_OVERHEAD_CPU_BYTES
        queue.put(
            {
                "unet": f"channels {channels}, strides {strides}, out {out}, res units {units}",
                "window_batch": f"{batch}x{'x'.join(map(str, roi))}",
                "measured_mb": round(measured / 2**20, 1),
                "traced_mb": round(traced / 2**20, 1),
                "measured_over_traced": round(measured / traced, 3),
                "charged_mb": round(charged / 2**20, 1),
                "charged_over_measured": round(charged / measured, 3),
            }
        )
    except BaseException as error:  # noqa: BLE001
        queue.put({"config": repr(config), "error": f"{type(error).__name__}: {error}"})


def calibration(threads: int) -> dict:
    context = multiprocessing.get_context("spawn")
    rows = []
    for config in CALIBRATION:
        queue = context.Queue()
        process = context.Process(target=_calibration_child, args=(config, threads, queue))
        process.start()
        rows.append(queue.get())
        process.join()
    ok = [row for row in rows if "error" not in row]
    return {
        "rows": rows,
        "measured_over_traced_range": [
            min(r["measured_over_traced"] for r in ok),
            max(r["measured_over_traced"] for r in ok),
        ]
        if ok
        else None,
        "charged_covers_measured": all(r["charged_over_measured"] >= 1.0 for r in ok),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="overhead,memory,calibration")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import monai
    import torch

    report = {
        "torch": torch.__version__,
        "monai": monai.__version__,
        "network": "monai UNet(3, 1, 10, (16, 32, 64), (2, 2), num_res_units=2), random weights",
        "roi": list(ROI),
        "overlap": OVERLAP,
        "sw_batch_size": SW_BATCH,
        "device": "cpu",
        "gpu": "not run: no GPU on this machine",
    }
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if "calibration" in sections:
        report["calibration"] = calibration(args.threads)
    if "overhead" in sections:
        report["overhead"] = overhead(args.repeats, args.threads)
    if "memory" in sections:
        report["memory"] = memory(args.threads)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
