"""--on-nonfinite rollback: the last good state kept in memory, restored with
the learning rate halved when a step's loss is not finite.

Every rank keeps the same snapshot (the ranks' models are identical under
DDP, and the decision to roll back is collective), so all ranks roll back
together."""
import copy

# Steps between snapshots: the state a rollback returns to is at most this
# many steps old. Copying a 100-unit model and its optimiser state costs
# well under a millisecond, against tens of milliseconds per step.
SNAPSHOT_EVERY = 50


class Rollback:
    """The snapshot, the number of rollbacks so far and the lr scale they
    left (halved by each)."""

    def __init__(self, limit, count=0, scale=1.0):
        self.limit, self.count, self.scale = limit, count, scale
        self.snapshot = None

    def remember(self, step, model, optimizer):
        """Keeps the state after `step` good steps, every SNAPSHOT_EVERY."""
        if self.snapshot is None or step % SNAPSHOT_EVERY == 0:
            self.snapshot = (step, copy.deepcopy(model.state_dict()),
                             copy.deepcopy(optimizer.state_dict()))

    def exhausted(self):
        """True when the limit of rollbacks has been used up."""
        return self.count >= self.limit

    def restore(self, model, optimizer):
        """Puts the snapshot back and halves the lr scale; returns the step
        the snapshot was taken at."""
        step, model_state, optimizer_state = self.snapshot
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        self.count += 1
        self.scale *= 0.5
        return step

    def state(self):
        """What a checkpoint keeps: the count and the scale."""
        return {"count": self.count, "scale": self.scale}
