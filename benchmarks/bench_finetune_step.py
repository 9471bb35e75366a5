"""Fine-tuning step throughput: samples/s and share of the matmul peak, ViT-B, per input and Patchout.

    python benchmarks/bench_finetune_step.py                       # 80x208 and 128x992 with Patchout 200
    python benchmarks/bench_finetune_step.py --cases 128x992p16x16:200:4 --device cuda --modes bf16

Two steps per case, both forward + backward + fused AdamW with layer-wise lr decay:
- "model": the Classifier on a normalised (B, 1, F, T) batch, drop-path 0.1, Patchout;
- "recipe": `FoldTrainer.loss` as fine-tuning runs it, from cropped waveforms: random gain, mixup
  on the waveforms, the checkpoint's front-end (MSM-MAE's at 80 bins, MaskSpec's at 128),
  SpecAugment, then the same model step.
Model FLOPs are counted analytically (`common.encoder_flops` on the patches Patchout keeps, plus
[CLS]; backward = 2 x forward), so the recipe's front-end and augmentation count as overhead.
Each case runs in blocks: `--repeats` timed steps of each kind, then the matmul peak (best of 10
products), and a share of peak is the median of the per-block ratios. Prints a Markdown table;
results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import numpy as np
import torch

from common import encoder_flops, load_average, machine, matmul_peak, timeit
from specmae.audio import FrontendConfig
from specmae.audio.normalize import NormStats
from specmae.checkpoint.loader import Checkpoint
from specmae.config import FinetuneConfig, RunConfig
from specmae.evaluation.tasks import Task
from specmae.model.mae import build_mae
from specmae.model.presets import ModelConfig, model_config
from specmae.training.engine import Dist
from specmae.training.finetune import FoldTrainer


def fold_trainer(preset: str, size: str, patchout: int, batch: int, bf16: bool, device: torch.device,
                 run_dir: str) -> FoldTrainer:
    """A FoldTrainer on a random ViT and an in-memory task of 10-s noise clips."""
    cfg = model_config(preset, size, decoder="maskspec" if preset.startswith("128") else "msm-mae")
    frontend = FrontendConfig.maskspec() if cfg.encoder.n_mels == 128 else FrontendConfig()
    stats = NormStats((0.0,) * cfg.encoder.n_mels, (1.0,) * cfg.encoder.n_mels) if frontend.stats == "per-bin" \
        else NormStats((-7.0,), (4.0,))
    ck = Checkpoint("random", RunConfig(model=cfg, frontend=frontend), stats, model=build_mae(cfg))
    rng = np.random.default_rng(0)
    n = max(4 * batch, 40)
    waves = [0.1 * rng.standard_normal(10 * frontend.sample_rate).astype(np.float32) for _ in range(n)]
    labels = [str(i % 10) for i in range(n)]
    task = Task.from_arrays("noise", waves, labels, ["train"] * (n - 20) + ["valid"] * 10 + ["test"] * 10,
                            sample_rate=frontend.sample_rate)
    ft = FinetuneConfig.from_dict(dict(model=dict(patchout=patchout), probe="none",
                                       train=dict(batch_size=batch, workers=0, bf16=bf16, epochs=100)))
    ft.model.n_frames = cfg.encoder.n_frames
    ft = ft.for_task(task.kind)
    split = task.splits()[0]
    return FoldTrainer(ft, ck, task, split, lambda idx: [task.waves[i] for i in idx], run_dir,
                       Dist(device=device), progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cases", default="80x208p16x16:0:16,128x992p16x16:200:4",
                   help="comma-separated PRESET:PATCHOUT:BATCH")
    p.add_argument("--size", default="base")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per block and kind")
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", default="fp32")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {machine()}; load average before: {load_average():.2f}\n")
    print("| input | Patchout | tokens | batch | mode | GFLOP / sample | model samples/s | model share of peak "
          "| recipe samples/s | recipe share of peak | matmul peak TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        preset, patchout, batch = case.split(":")
        patchout, batch = int(patchout), int(batch)
        for mode in args.modes.split(","):
            bf16 = mode == "bf16"
            with tempfile.TemporaryDirectory() as run_dir:
                torch.manual_seed(0)
                ft = fold_trainer(preset, args.size, patchout, batch, bf16, device, run_dir)
                trainer, enc = ft.trainer, ft.model.encoder.cfg
                visible = enc.num_patches - patchout
                flops = 3 * encoder_flops(ModelConfig(encoder=enc), visible)
                x = torch.randn(batch, 1, enc.n_mels, enc.n_frames, device=device)
                y = torch.nn.functional.one_hot(torch.arange(batch) % 10, 10).float().to(device)

                def model_loss(net, b, step, micro_step):
                    return torch.nn.functional.cross_entropy(
                        net(b[0], generator=torch.Generator(device).manual_seed(step)).float(), b[1])

                data = ft.epoch_data(0)
                model_step = lambda: trainer.train_step(iter([(x, y)]), model_loss)
                recipe_step = lambda: trainer.train_step(iter([data[0]]), ft.loss)
                ft.model.train()
                model_rate, recipe_rate, peaks = [], [], []
                for block in range(args.blocks):
                    model_rate.append(batch / timeit(model_step, device, args.repeats, warmup=2 if block == 0 else 0))
                    recipe_rate.append(batch / timeit(recipe_step, device, args.repeats, warmup=1 if block == 0 else 0))
                    peaks.append(matmul_peak(torch.bfloat16 if bf16 else torch.float32, device, repeats=10))
                model_share = [100 * r * flops / p for r, p in zip(model_rate, peaks)]
                recipe_share = [100 * r * flops / p for r, p in zip(recipe_rate, peaks)]
                print(f"| {enc.n_mels}x{enc.n_frames} | {patchout} | {visible} + CLS | {batch} | {mode} | "
                      f"{flops / 1e9:.1f} | {statistics.median(model_rate):.2f} | "
                      f"{statistics.median(model_share):.0f} % ({min(model_share):.0f}-{max(model_share):.0f}) | "
                      f"{statistics.median(recipe_rate):.2f} | "
                      f"{statistics.median(recipe_share):.0f} % ({min(recipe_share):.0f}-{max(recipe_share):.0f}) | "
                      f"{statistics.median(peaks) / 1e12:.3f} |", flush=True)
    print(f"\nload average after: {load_average():.2f}")


if __name__ == "__main__":
    main()
