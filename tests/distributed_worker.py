"""The data-parallel runs of tests/test_distributed.py, one process per rank.

Launched as ``python -m torch.distributed.run --standalone --nproc_per_node 2
tests/distributed_worker.py OUT``: every rank joins a gloo process group and runs
the three scenarios below, then writes ``OUT/rank<r>.json`` (what it saw) and
``OUT/train-rank<r>.npz`` (its trained weights). The scenario functions also run
in a single process (no process group), which is how the test makes its
references. Importing this module runs nothing.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # tests/models.py, however this file is run or imported
    sys.path.insert(0, str(TESTS))

from models import random_encodings, random_labels, tiny_bert

from freqlens.defenses import AlignedTrainerMixin, GAConfig, GradientAligner
from freqlens.recording import ProbeSet, Recorder
from freqlens.training import TrainConfig, train

RECORD_STEPS, SCHEDULE = 5, "every:2"  # snapshots at 0, 2, 4, 5


def probe_sets(kind: str) -> list[ProbeSet]:
    """``joint``: two sets of one width (17 rows, shares 9 and 8); ``separate``: widths 12 and 8
    (7 rows: rank 1 takes the end of one set and all of the other); ``tiny``: one row (rank 1 none)."""
    if kind == "joint":
        return [ProbeSet("clean", random_encodings(10, 12, seed=1, pad_from=4), random_labels(10, seed=1)),
                ProbeSet("backdoor", random_encodings(7, 12, seed=2, pad_from=6),
                         torch.ones(7, dtype=torch.long), poison=[True] * 7)]
    if kind == "separate":
        return [ProbeSet("long", random_encodings(5, 12, seed=3, pad_from=4), random_labels(5, seed=3)),
                ProbeSet("short", random_encodings(2, 8, seed=4, pad_from=3), random_labels(2, seed=4))]
    return [ProbeSet("one", random_encodings(1, 12, seed=5), random_labels(1, seed=5))]


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Seeded noise on every parameter: the same "training step" on every process."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


def record(directory: Path, kind: str) -> Recorder:
    """A recorder over a model changed by :func:`perturb` after each step."""
    model = tiny_bert(0, dropout=0.0)
    with Recorder(directory, probe_sets(kind), schedule=SCHEDULE, batch_size=4) as recorder:
        recorder.start(model, total_steps=RECORD_STEPS)
        for step in range(1, RECORD_STEPS + 1):
            perturb(model, seed=step)
            recorder.step(step, loss=float(step))
    return recorder


def fit(subspace: int = 1) -> tuple[torch.nn.Module, object, int]:
    """freqlens' loop with gradient alignment and selection by dev loss.

    21 examples, batches of 4, 2 accumulated per step (the last micro-batch has one row:
    rank 1 sits it out), 2 epochs (one pure, one mixed); reference batches of 7 in
    micro-batches of 3. Returns the model, the result and the rows this process ran
    forward with gradients (training and reference). ``subspace``: GA's reference groups.
    """
    model = tiny_bert(0, dropout=0.0)
    rows = [0]
    model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.__setitem__(0, rows[0] + len(kwargs["input_ids"]))
        if torch.is_grad_enabled() else None, with_kwargs=True)
    aligner = GradientAligner(model, random_encodings(10, 10, seed=6, pad_from=3), random_labels(10, seed=6),
                              GAConfig(loss_threshold=10.0, subspace=subspace), batch_size=7, micro_batch_size=3, seed=3)
    dev, dev_labels = random_encodings(9, 10, seed=7, pad_from=3), random_labels(9, seed=7)

    def negative_dev_loss(m):
        with torch.no_grad():
            return -float(m(**dev, labels=dev_labels).loss)

    config = TrainConfig(epochs=2, batch_size=4, accumulation_steps=2, lr=1e-3, seed=5)
    result = train(model, random_encodings(21, 10, seed=5, pad_from=4), random_labels(21, seed=5), config,
                   aligner=aligner, selector=negative_dev_loss, progress=False)
    return model, result, rows[0]


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int = 32):
        encodings, labels = random_encodings(n, 12, seed=8, pad_from=5), random_labels(n, seed=8)
        self.rows = [{**{k: v[i] for k, v in encodings.items()}, "labels": labels[i]} for i in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def trainer_run(out: Path) -> dict:
    """The Hugging Face Trainer (DDP over gloo) with the recorder's callback and gradient alignment."""
    from transformers import Trainer, TrainingArguments

    class AlignedTrainer(AlignedTrainerMixin, Trainer):
        pass

    model = tiny_bert(0, dropout=0.0)
    recorder = Recorder(out / "trainer-trajectory", probe_sets("joint"), schedule="every:3", batch_size=4)
    aligner = GradientAligner(model, random_encodings(10, 12, seed=9, pad_from=3), random_labels(10, seed=9),
                              GAConfig(), batch_size=6, seed=1)
    args = TrainingArguments(output_dir=str(out / "trainer"), per_device_train_batch_size=4, learning_rate=1e-3,
                             max_steps=4, use_cpu=True, ddp_backend="gloo", ddp_find_unused_parameters=False,
                             report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
                             dataloader_num_workers=0)
    trainer = AlignedTrainer(model=model, args=args, train_dataset=Rows(), aligner=aligner,
                             callbacks=[recorder.callback()])
    trainer.train()
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    everyone = [torch.empty_like(sums) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(everyone, sums)
    return {"wrapper": type(trainer.model_wrapped).__name__, "steps": trainer.state.global_step,
            "aligned": len(aligner.log.steps), "recorded_steps": recorder.recorded_steps,
            "closed": recorder.closed, "checksums": [s.tolist() for s in everyone]}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    # a timeout: a rank that is lost or skips a collective fails the run instead of hanging it
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = torch.distributed.get_rank()
    report = {"world": torch.distributed.get_world_size(), "recorders": {}}
    for kind in ("joint", "separate", "tiny"):
        recorder = record(out / f"{kind}-rank{rank}", kind)
        report["recorders"][kind] = {"steps": recorder.recorded_steps, "seconds": recorder.seconds}
    model, result, rows = fit()
    np.savez(out / f"train-rank{rank}.npz", **{n: p.detach().numpy() for n, p in model.named_parameters()})
    report["train"] = {"losses": result.losses, "alignment": result.alignment, "scores": result.epoch_scores,
                       "best_epoch": result.best_epoch, "rows": rows}
    span_model, span_result, _ = fit(subspace=3)
    np.savez(out / f"train-span-rank{rank}.npz", **{n: p.detach().numpy() for n, p in span_model.named_parameters()})
    report["train_span"] = {"losses": span_result.losses, "alignment": span_result.alignment}
    report["trainer"] = trainer_run(out)
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
