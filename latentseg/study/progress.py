"""The launch's progress line: trials finished with the best value so far, and with adaptive
seeds the round, the comparisons still open and the seed runs spent against the budget."""

from __future__ import annotations

import sys
import threading

import optuna
from optuna.trial import TrialState

from latentseg.study import rounds
from latentseg.study.trials import FINISHED_STATES, latest_attempts


class Progress(threading.Thread):
    """Polls the storage: a bar over trials with the best value so far; with adaptive seeds,
    also the round, the comparisons still open and the seed runs spent against the budget."""

    def __init__(
        self, study: optuna.Study, total: int, direction: str | list[str], enabled: bool,
        loaded=None,
    ) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.study, self.total, self.enabled = study, total, enabled
        # several directions: a study of several objectives, whose bar counts its front
        self.directions = [direction] if isinstance(direction, str) else list(direction)
        self.loaded = loaded if loaded is not None and loaded.spec.adaptive else None
        self.open: int | None = None  # set by the launch after each round's look
        self.stop_event = threading.Event()

    def finish(self) -> None:
        """Stop polling (the bar shows its last state) and wait for the thread."""
        self.stop_event.set()
        self.join(timeout=10)

    def snapshot(self) -> tuple[int, str, str]:
        """Trials finished, the best so far (``0.7321``; ``front 3``, the trials no other
        beats in every objective, for a study of several; ``-`` before the first) and the
        round's status."""
        every = self.study.get_trials(deepcopy=False)
        attempts = latest_attempts(every)
        trials = [t for t in attempts if t.state in FINISHED_STATES]
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
        self.total = len(attempts)
        return len(trials), self.best(complete), self.round_status(every)

    def best(self, complete: list) -> str:
        if not complete:
            return "-"
        if len(self.directions) > 1:
            return f"front {len(front(complete, self.directions))}"
        values = [t.value for t in complete]
        return f"{(max if self.directions[0] == 'maximize' else min)(values):.4f}"

    def round_status(self, trials) -> str:
        """``round 2/3  open 3  seeds 24/60`` for adaptive seeds, else empty."""
        if self.loaded is None:
            return ""
        looks = len(self.loaded.spec.adaptive.looks())
        spent = rounds.seeds_spent(trials, self.loaded.seeds)
        return (
            f"round {rounds.current_round(trials)}/{looks}  "
            f"open {'-' if self.open is None else self.open}  "
            f"seeds {spent}/{rounds.budget(self.loaded)}"
        )

    def run(self) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        bar = tqdm(
            total=self.total, desc="trials", file=sys.stderr, dynamic_ncols=True, disable=not tty
        )
        last = (-1, "", "")
        while True:
            stopping = self.stop_event.wait(2.0)
            try:
                finished, best, status = self.snapshot()
            except Exception:
                continue
            if (finished, best, status) != last:
                bar.total, bar.n = self.total, finished
                bar.set_postfix_str(
                    f"best={best}" + (f"  {status}" if status else ""), refresh=True
                )
                if not tty:
                    print(
                        f"trials finished {finished}/{self.total}  best {best}"
                        + (f"  {status}" if status else ""),
                        file=sys.stderr,
                        flush=True,
                    )
                last = (finished, best, status)
            if stopping:
                bar.close()
                return


def front(trials: list, directions: list[str]) -> list:
    """The trials that no other trial is at least as good as in every objective and better in
    one (by their values: the seed means), in their order."""
    signs = [1 if direction == "maximize" else -1 for direction in directions]

    def dominates(a, b) -> bool:
        pairs = [(s * x, s * y) for s, x, y in zip(signs, a.values, b.values, strict=True)]
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    return [t for t in trials if not any(dominates(other, t) for other in trials)]
