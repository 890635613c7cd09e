"""The training loop: one run from a fresh start or a checkpoint, epoch by
epoch, with a checkpoint and a metrics row at the end of each."""
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import reporting
from .checkpoints import (completed_epochs, restore, rng_states,
                          save_checkpoint)
from .config import PER_RUN
from .data import STEPS, Data, epoch_batches, epoch_order, to_pixels
from .errors import DivergedError
from .evaluation import evaluate
from .model import SeqMNISTModel, make_optimizer, mean_length
from .rollback import Rollback
from .run_dir import open_run_dir
from .schedule import learning_rate, set_learning_rate

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    tqdm = None


def nothing_left(config, ckpt):
    """Why a resumed run has no step left to take, or None."""
    done = completed_epochs(ckpt)
    if done >= config["epochs"]:
        return (f"already finished at epoch {done} (--epochs "
                f"{config['epochs']}); pass a larger --epochs to continue")
    if config["max_steps"] is not None and ckpt["step"] >= config["max_steps"]:
        return (f"already at step {ckpt['step']} (--max-steps "
                f"{config['max_steps']}); pass a larger --max-steps or none")
    return None


class Run:
    """The state of one training run and the files it writes."""

    def __init__(self, config, d, ckpt=None, ckpt_path=None):
        self.config, self.d = config, d
        torch.manual_seed(config["seed"])
        random.seed(config["seed"])
        self.model = SeqMNISTModel(config["hidden"], config["impl"],
                                   config["init"],
                                   config["variable_length"],
                          config["input_norm"]).to(d.device)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.rows, self.step, self.best_val = [], 0, -1.0
        self.start_epoch, self.start_batch, self.partial = 1, 0, None
        # what last.pt holds, for the message when a run stops
        self.saved = None
        if ckpt:
            restore(ckpt, ckpt_path, self.model, self.optimizer)
            self.rows = ckpt["metrics"]
            self.step, self.best_val = ckpt["step"], ckpt["best_val_acc"]
            self.start_epoch, self.start_batch = (ckpt["epoch"],
                                                  ckpt["batches_done"])
            self.partial = ckpt["epoch_totals"]
            if self.start_batch == 0:  # the saved epoch was complete
                self.start_epoch += 1
            self.saved = (ckpt["epoch"], ckpt["step"],
                          self.rows[-1]["test_loss"]
                          if self.rows and ckpt["batches_done"] == 0
                          else None)
        self.rollback = Rollback(config["max_rollbacks"],
                                 **(ckpt.get("rollback", {}) if ckpt else {}))
        self.rollback.remember(self.step, self.model, self.optimizer)
        self.total_steps = 1  # set by train() from the epochs and batches
        self.data = Data(config, d.device)
        self.ddp = self.model
        if d.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[d.device] if d.device.type == "cuda" else None)

    def save(self, names, epoch, batches_done, totals, test_loss):
        if self.d.main:
            state = {"config": {k: v for k, v in self.config.items()
                                if k not in PER_RUN},
                     "model": self.model.state_dict(),
                     "optimizer": self.optimizer.state_dict(),
                     "rng": rng_states(), "epoch": epoch,
                     "batches_done": batches_done, "epoch_totals": totals,
                     "step": self.step, "best_val_acc": self.best_val,
                     "rollback": self.rollback.state(), "metrics": self.rows}
            for name in names:
                save_checkpoint(state, os.path.join(self.config["out"], name))
        self.saved = (epoch, self.step, test_loss)

    def describe_saved(self):
        """What last.pt holds, in words that are true whatever it holds."""
        if self.saved is None:
            return "No checkpoint was written."
        epoch, step, test_loss = self.saved
        loss = f", test_loss {test_loss:.4f}" if test_loss is not None else ""
        return (f"{os.path.join(self.config['out'], 'last.pt')} holds the "
                f"state after step {step} (epoch {epoch}{loss}).")

    def train_epoch(self, epoch, batches, totals, first):
        """Trains the batches from `first` on; returns (batches done, status)."""
        config, d = self.config, self.d
        order = epoch_order(len(self.data.train[0]), config["seed"],
                            epoch).to(d.device)
        t0 = time.perf_counter() - totals[4]
        bar = None
        if d.main and config["progress"] and tqdm is not None:
            bar = tqdm(total=len(batches), initial=first,
                       desc=f"epoch {epoch}/{config['epochs']}",
                       unit="batch", leave=False, dynamic_ncols=True)
        done, status = first, "done"
        try:
            for start, stop in batches[first:]:
                if (config["max_steps"] is not None
                        and self.step >= config["max_steps"]):
                    status = "max_steps"
                    break
                trained = self.train_step(start, stop, order, totals)
                self.step += 1
                done += 1
                if trained and config["on_nonfinite"] == "rollback":
                    self.rollback.remember(self.step, self.model,
                                           self.optimizer)
                if not trained:
                    self.nonfinite(f"epoch {epoch}, step {self.step} (batch "
                                   f"{done} of {len(batches)})")
                    totals[3] += 1
                if bar:
                    seen = totals[2] + totals[3]
                    bar.set_postfix(
                        loss=f"{totals[0] / max(totals[2], 1):.4f}",
                        acc=f"{totals[1] / max(totals[2], 1):.4f}",
                        skipped=totals[3],
                        samples_s=f"{seen / (time.perf_counter() - t0):.0f}",
                        refresh=False)
                    bar.update(1)
        finally:
            if bar:
                bar.close()
        totals[4] = time.perf_counter() - t0
        return done, status

    def nonfinite(self, where):
        """A step's loss was not finite: stops, or rolls back, as
        --on-nonfinite says (skip needs nothing more)."""
        config, rollback = self.config, self.rollback
        mode = config["on_nonfinite"]
        if mode == "rollback" and not rollback.exhausted():
            back_to = rollback.restore(self.model, self.optimizer)
            if self.d.main:
                print(f"seq_mnist: non-finite loss at {where}: rolled back to "
                      f"the state after step {back_to}, lr now x"
                      f"{rollback.scale:g} (rollback {rollback.count} of "
                      f"{rollback.limit})", flush=True)
        elif mode != "skip":
            after = (f" after {rollback.count} rollbacks (--max-rollbacks "
                     f"{rollback.limit})" if mode == "rollback" else "")
            raise DivergedError(
                f"non-finite loss at {where}{after}; stopping. "
                f"{self.describe_saved()} Lower --lr, set --clip-norm, or "
                f"pass --on-nonfinite rollback or skip.")

    def train_step(self, start, stop, order, totals):
        """One optimiser step on global batch [start, stop); False if its
        loss was not finite on some rank (then no rank takes the step)."""
        d = self.d
        share = (stop - start) // d.world
        lo = start + d.rank * share
        idx = order[lo:lo + share]
        set_learning_rate(self.optimizer, learning_rate(
            self.config, self.step, self.total_steps, self.rollback.scale))
        x, y = to_pixels(self.data.train[0][idx]), self.data.train[1][idx]
        logits = self.ddp(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        stats = torch.stack([
            losses.detach().double().sum(),
            (logits.argmax(1) == y).sum().double(),
            torch.tensor(float(len(y)), dtype=torch.float64, device=x.device),
            (~torch.isfinite(losses.detach())).any().double()])
        loss_sum, correct, count, bad = d.all_sum(stats).tolist()
        if bad:
            return False
        # mean over the global batch: DDP averages over the ranks
        (losses.sum() * (d.world / (stop - start))).backward()
        if self.config["clip_norm"] is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(),
                                     self.config["clip_norm"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        totals[0] += loss_sum
        totals[1] += int(correct)
        totals[2] += int(count)
        return True


def train(config, d, ckpt=None, ckpt_path=None):
    """Trains from scratch, or from `ckpt` (loaded from `ckpt_path`) on
    --resume. Returns (the last epoch's row, the run directory); the row is
    None when a resumed run had nothing left to do."""
    if ckpt is not None:
        reason = nothing_left(config, ckpt)
        if reason:
            if d.main:
                print(f"seq_mnist: {ckpt_path}: {reason}", flush=True)
            return None, config["out"] or config["resume"]
    run = Run(config, d, ckpt, ckpt_path)
    open_run_dir(run, ckpt)
    data = run.data
    if d.main:
        print(f"seq_mnist: impl {config['impl']}, init {config['init']}, "
              f"hidden {config['hidden']}, {config['optimizer']} lr "
              f"{config['lr']:g}, batch {config['batch_size']}"
              f"{f' over {d.world} ranks' if d.enabled else ''}, "
              f"{len(data.train[0])} train / {len(data.test[0])} test images"
              f", device {d.device}, run dir {config['out']}", flush=True)
        if config["variable_length"]:
            mean = mean_length(data.train[0])
            print(f"seq_mnist: variable length: each image ends after its "
                  f"last non-zero row; mean sequence length {mean:.1f} of "
                  f"{STEPS} steps ({mean / STEPS:.1%}) on the training "
                  f"images", flush=True)
    batches = epoch_batches(len(data.train[0]), config["batch_size"], d.world)
    run.total_steps = config["epochs"] * len(batches)
    final = run.rows[-1] if run.rows else None
    for epoch in range(run.start_epoch, config["epochs"] + 1):
        if config["max_steps"] is not None and run.step >= config["max_steps"]:
            break
        first = run.start_batch if epoch == run.start_epoch else 0
        # loss_sum, correct, count, skipped, seconds (carried over a resume)
        totals = (list(run.partial) if (run.partial and first)
                  else [0.0, 0, 0, 0, 0.0])
        done, status = run.train_epoch(epoch, batches, totals, first)
        final = end_epoch(run, epoch, done, len(batches), totals)
        if status == "max_steps":
            break
    return final, config["out"]


def end_epoch(run, epoch, done, n_batches, totals):
    """Evaluates, checkpoints and reports an epoch of `done` steps; raises
    DivergedError (after saving) when all were skipped or a loss is not
    finite."""
    config, d, data = run.config, run.d, run.data
    seconds = totals[4]
    complete = done == n_batches
    row = {"epoch": epoch, "partial": not complete, "steps": run.step,
           "train_loss": totals[0] / totals[2] if totals[2] else math.nan,
           "train_acc": totals[1] / totals[2] if totals[2] else math.nan,
           "skipped_steps": totals[3]}
    if config["on_nonfinite"] == "rollback":
        row["rollbacks"] = run.rollback.count
        row["lr_scale"] = run.rollback.scale
    if len(data.val[0]):
        row["val_loss"], row["val_acc"] = evaluate(
            run.model, data.val, config["eval_batch_size"], d)
    row["test_loss"], row["test_acc"] = evaluate(
        run.model, data.test, config["eval_batch_size"], d)
    row["seconds"] = seconds
    row["samples_per_s"] = (totals[2] + totals[3]) / seconds if seconds else 0.0
    names = ["last.pt"]
    if complete:
        run.rows.append(row)
        if len(data.val[0]) and row["val_acc"] > run.best_val:
            run.best_val = row["val_acc"]
            names.append("best.pt")
    run.save(names, epoch, 0 if complete else done,
             None if complete else totals, row["test_loss"])
    if d.main:
        reporting.write_metrics(config["out"], run.rows if complete
                                else run.rows + [row])
        print(reporting.epoch_line(row, done), flush=True)
    if done and totals[3] == done:
        problem = (f"all {done} steps of epoch {epoch} were skipped "
                   f"(non-finite loss)")
    else:
        problem = next((f"the {split} loss is not finite after epoch {epoch}"
                        for split in ("val", "test")
                        if not math.isfinite(row.get(f"{split}_loss", 0.0))),
                       None)
    if problem:
        raise DivergedError(f"the run diverged: {problem}. "
                            f"{run.describe_saved()} Lower --lr or set "
                            f"--clip-norm.")
    return row
