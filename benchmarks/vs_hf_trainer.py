"""leankd vs a Hugging Face `transformers.Trainer` with KD in `compute_loss`, on SST-2, side by side in one run.

    python benchmarks/vs_hf_trainer.py --data-dir ../shared/data                  # 2,000 sentences, 1 epoch
    python benchmarks/vs_hf_trainer.py --data-dir ../shared/data --train-limit 0  # all 67,349
    (on the 2-core machines: taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_hf_trainer.py ...)
    needs `accelerate` beside transformers (pip install accelerate)

leankd fine-tunes the pretrained MiniLM-L6 teacher once (configs/demo/sst2-minilm6-to-3l.yaml's recipe) and
distils a 3-layer student built from teacher layers [1, 3, 5] twice: `kd_online` (teacher forward every step)
and `kd` at its default (teacher cache on). The peer is the usual recipe: a `Trainer` subclass whose
`compute_loss` runs the frozen teacher on the batch and adds T^2 KL(softmax(t/T) || softmax(s/T)) to the CE,
(1 - alpha) CE + alpha KL, distilling the same stored teacher into the same initial student (the same layer
copy). Same sentences (the first N of train.tsv), tokenizer and max_length, batch, AdamW (lr, weight decay on
weights, word embeddings frozen, no gradient clipping), warm-up + linear decay, epochs, precision and threads;
both pad per batch to the batch's longest (leankd: length buckets, `data.bucket`; Trainer: group_by_length).
Prints per toolkit: epoch seconds (training only: leankd's train_s, the Trainer's time between epoch begin
and end), the ratio to leankd online, dev accuracy and agreement with the teacher. One run, one machine:
compare the ratios.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from leankd.config import load_config
from leankd.data.glue import load_glue
from leankd.experiment import run_experiment
from leankd.log import setup_logging
from leankd.models.text import load_tokenizer, student_from_teacher
from leankd.results.store import ResultsStore

from peer_table import peer_table  # benchmarks/ is on sys.path when a benchmark is run as a script

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/demo/sst2-minilm6-to-3l.yaml"


class KDTrainer(Trainer):
    """The common Trainer KD recipe: the frozen teacher runs on every batch inside compute_loss."""

    def __init__(self, *a, teacher, temperature: float, alpha: float, **kw):
        super().__init__(*a, **kw)
        self.teacher, self.temperature, self.alpha = teacher.eval().requires_grad_(False), temperature, alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(**inputs)  # CE from the labels in `inputs`
        with torch.no_grad():
            t_logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        T = self.temperature
        kl = F.kl_div(F.log_softmax(out.logits / T, -1), F.softmax(t_logits / T, -1), reduction="batchmean")
        loss = (1 - self.alpha) * out.loss + self.alpha * T * T * kl
        return (loss, out) if return_outputs else loss


class EpochTimer(TrainerCallback):
    """Seconds from each epoch's begin to its end: the training loop only (no evaluation is scheduled)."""

    def __init__(self):
        self.epoch_s, self._start = [], 0.0

    def on_epoch_begin(self, *a, **kw):
        self._start = time.perf_counter()

    def on_epoch_end(self, *a, **kw):
        self.epoch_s.append(time.perf_counter() - self._start)


def leankd_rows(args):
    over = ["name=vs-hf-trainer", f"data.train_limit={args.train_limit or 'null'}", "data.test_limit=null",
            f"train.epochs={args.epochs}", f"precision={args.precision}", f"threads={args.threads}",
            f"seeds=[{args.seed}]", "cache.mode=on"]
    cfg = load_config(CONFIG, over)
    kd = cfg.arms["kd"]
    cfg.arms = {"kd_online": kd.model_copy(update={"cache": "off"}), "kd": kd.model_copy(update={"cache": "on"})}
    run_experiment(cfg, args.data_dir, args.out)  # a rerun resumes: rows already stored are not retrained
    rows = {r["arm"]: r for r in ResultsStore(Path(args.out) / "results.db").rows("vs-hf-trainer")}
    return rows, cfg


def encoded(tokenizer, data_dir: str, split: str, limit: int | None, max_length: int) -> list[dict]:
    data = load_glue(Path(data_dir), "sst2", split)
    n = min(limit or len(data), len(data))
    enc = tokenizer(data.texts_a[:n], truncation=True, max_length=max_length)
    return [{"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
             "attention_mask": enc["attention_mask"][i], "labels": int(data.labels[i])} for i in range(n)]


@torch.inference_mode()
def predict(model, examples: list[dict], collate, batch_size: int, precision: str) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(examples), batch_size):
        batch = {k: v for k, v in collate(examples[i:i + batch_size]).items() if k != "labels"}
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            out.append(model(**batch).logits.float().argmax(-1))
    return torch.cat(out).numpy()


def hf_run(cfg, teacher_dir: str, args) -> dict:
    """The usual Trainer KD recipe on the stored teacher; per-epoch seconds, dev accuracy and agreement."""
    transformers.logging.set_verbosity_error()
    tok = load_tokenizer(cfg.teacher.model)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, attn_implementation="sdpa")
    student = student_from_teacher(teacher, list(cfg.student.layers))  # the same copy leankd starts from
    t = cfg.train
    if t.freeze_embeddings:
        student.get_input_embeddings().requires_grad_(False)
    train = encoded(tok, args.data_dir, "train", args.train_limit, cfg.data.max_length)
    dev = encoded(tok, args.data_dir, "dev", None, cfg.data.max_length)
    targs = TrainingArguments(
        output_dir=str(Path(args.out) / "hf-trainer"), per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size, num_train_epochs=t.epochs, learning_rate=t.lr,
        weight_decay=t.weight_decay, warmup_steps=t.warmup_frac, lr_scheduler_type="linear", max_grad_norm=0.0,
        bf16=args.precision == "bf16", use_cpu=True, train_sampling_strategy="group_by_length",
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, seed=args.seed)
    timer = EpochTimer()
    trainer = KDTrainer(model=student, args=targs, train_dataset=train, data_collator=DataCollatorWithPadding(tok),
                        processing_class=tok, callbacks=[timer], teacher=teacher,
                        temperature=cfg.arms["kd"].temperature, alpha=cfg.arms["kd"].alpha)
    trainer.train()
    # dev predictions in dataset order (Trainer.predict would order them by length under group_by_length)
    s_pred, t_pred = (predict(m, dev, trainer.data_collator, t.batch_size, args.precision) for m in (student, teacher))
    labels = np.array([d["labels"] for d in dev])
    return {"epoch_s": timer.epoch_s, "accuracy": float((s_pred == labels).mean()),
            "agreement": float((s_pred == t_pred).mean()), "version": transformers.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("LEANKD_DATA_DIR"), help="data directory ($LEANKD_DATA_DIR)")
    p.add_argument("--out", default="runs/bench-vs-hf-trainer", help="leankd results folder")
    p.add_argument("--train-limit", type=int, default=2000, help="first N train sentences (0: all 67k; default 2000)")
    p.add_argument("--epochs", type=int, default=1, help="student epochs, both toolkits (default 1)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both toolkits (default fp32)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both toolkits (default 1)")
    p.add_argument("--seed", type=int, default=0, help="data-order seed")
    args = p.parse_args()
    if not args.data_dir:
        p.error("give --data-dir or set LEANKD_DATA_DIR")
    setup_logging(logging.WARNING)
    rows, cfg = leankd_rows(args)
    torch.set_num_threads(args.threads)
    hf = hf_run(cfg, rows["teacher"]["extra"]["checkpoint"], args)
    print(f"SST-2 {args.train_limit or 'all'} train sentences, dev {len(load_glue(Path(args.data_dir), 'sst2', 'dev'))}"
          f", MiniLM-L6 teacher ({100 * rows['teacher']['metrics']['accuracy']:.2f}%) -> 3 layers {cfg.student.layers}"
          f", KD T={cfg.arms['kd'].temperature} alpha={cfg.arms['kd'].alpha}, {args.epochs} epoch(s), batch "
          f"{cfg.train.batch_size}, max_length {cfg.data.max_length}, {args.precision}, {args.threads} thread(s)\n")
    print(peer_table(rows, f"transformers {hf['version']} Trainer + KD", hf))


if __name__ == "__main__":
    main()
