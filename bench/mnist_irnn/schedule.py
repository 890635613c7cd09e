"""The learning rate at each step: an optional linear warm-up, then constant
or a cosine decay to zero at the last step of the run, all times the run's
rollback scale. A pure function of the step, so a resumed run continues the
schedule exactly."""
import math

SCHEDULES = ("constant", "cosine")


def learning_rate(config, step, total_steps, scale=1.0):
    """The lr of optimiser step `step` (0-based) of a run of `total_steps`
    steps, for config's lr, lr_schedule and warmup_steps."""
    lr = config["lr"] * scale
    warmup = config["warmup_steps"]
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if config["lr_schedule"] == "cosine":
        span = max(total_steps - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


def set_learning_rate(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
