"""The run directory at the start of training: created for a new run,
reopened (and repaired) for a resumed one, its name shared with every
rank."""
from . import reporting
from .checkpoints import completed_epochs
from .config import MAY_CHANGE
from .errors import RunError
from .files import create_run_dir, ensure_run_dir, remove_stale_temporaries


def open_run_dir(run, ckpt):
    """Rank 0 creates (or, resuming, reopens) the run directory and writes
    config.json and the metrics; every rank gets the directory, or the
    same error."""
    config, d = run.config, run.d
    outcome = None
    if d.main:
        try:
            if ckpt is None:
                config["out"] = create_run_dir(config["out"])
                reporting.write_config(config["out"], config, run.data, d)
            else:
                config["out"] = config["out"] or config["resume"]
                ensure_run_dir(config["out"])
                for path in remove_stale_temporaries(config["out"]):
                    print(f"seq_mnist: removed {path}, left by an "
                          f"interrupted save", flush=True)
                saved = ckpt["config"]
                reporting.record_resume(config["out"], saved, {
                    "from_epoch": completed_epochs(ckpt),
                    "from_step": ckpt["step"],
                    "changed": {k: config[k] for k in sorted(MAY_CHANGE)
                                if config[k] != saved.get(k)},
                    "max_steps": config["max_steps"],
                    "environment": reporting.environment(d)})
                # repairs a metrics file a crash may have cut short
                reporting.write_metrics(config["out"], run.rows)
            outcome = (None, config["out"])
        except RunError as exc:
            outcome = (type(exc), exc.message)
            d.from_main(outcome)
            raise
    error, value = d.from_main(outcome)
    if error is not None:
        raise error(value)
    config["out"] = value
