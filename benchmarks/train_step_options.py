"""Time the demo's training step with one CPU option on and off, in alternating blocks of real steps.

The model, data and optimizer are the demo's (``DemoRecipe``: ResNet-18, 128 px, batch 4, AdamW), the batches
come from its training loader in order (decoding included in the step's data time, reported apart). Blocks of
``--block`` steps alternate between the option off and on (and which goes first), so a machine whose speed drifts
hits both alike. One model trains throughout: the option changes how the step runs, not what it computes.

    python benchmarks/train_step_options.py --option channels-last
    python benchmarks/train_step_options.py --option no-mkldnn --block 20 --rounds 4 --threads 2

Options: ``channels-last`` (model and images in NHWC), ``no-mkldnn`` (``torch.backends.mkldnn.enabled = False``:
PyTorch's own convolutions), ``flush-denormal`` (``torch.set_flush_denormal(True)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from retina_deploy.data.shapes import make_shapes
from retina_deploy.demo import DemoRecipe
from retina_deploy.demo_stages import train_config
from retina_deploy.training import distributed
from retina_deploy.training.loop import targets_to_device, train_step
from retina_deploy.training.run import _Run


def set_option(option: str, on: bool, model: torch.nn.Module) -> None:
    if option == "channels-last":
        model.to(memory_format=torch.channels_last if on else torch.contiguous_format)
    elif option == "no-mkldnn":
        torch.backends.mkldnn.enabled = not on
    elif option == "flush-denormal":
        torch.set_flush_denormal(on)
    else:
        raise SystemExit(f"unknown option {option!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--option", required=True, choices=("channels-last", "no-mkldnn", "flush-denormal"))
    p.add_argument("--block", type=int, default=20, help="steps per block (default: 20)")
    p.add_argument("--rounds", type=int, default=4, help="off/on block pairs (default: 4)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch threads (default: 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipe = DemoRecipe()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_shapes(data / "train", num_images=args.block * args.rounds * 2 * recipe.batch_size, size=recipe.size,
                    seed=0, object_extent=recipe.object_extent)  # fmt: skip
        cfg = dataclasses.replace(train_config(Path(tmp), recipe), val_images=None, val_annotations=None)
        run = _Run(cfg, distributed.DistInfo(), torch.device("cpu"))
        run._build()
        loader = iter(run._loader(0, 0))
        times: dict[bool, list[float]] = {False: [], True: []}
        for rnd in range(args.rounds):
            for on in (False, True) if rnd % 2 == 0 else (True, False):
                set_option(args.option, on, run.model)
                start, data_s = time.perf_counter(), 0.0
                for _ in range(args.block):
                    t = time.perf_counter()
                    images, targets = next(loader)
                    data_s += time.perf_counter() - t
                    if on and args.option == "channels-last":
                        images = images.contiguous(memory_format=torch.channels_last)
                    train_step(run.model, images, targets_to_device(targets, run.device), run.optimizer, run.step_opts)
                ms = (time.perf_counter() - start) / args.block * 1000
                times[on].append(ms)
                print(f"round {rnd} {args.option} {'on ' if on else 'off'}: {ms:.0f} ms/step"
                      f" (data {data_s / args.block * 1000:.0f} ms)", flush=True)  # fmt: skip
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"median ms/step: off {off:.0f}, on {on:.0f}; on/off {on / off:.3f}")


if __name__ == "__main__":
    main()
