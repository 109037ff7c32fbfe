"""When a batch starts: the pure decision behind batching inside an instance (no clock, no I/O).

Two modes, chosen by the spec's ``batch``:

- fixed (no ``target_p99_ms``): a batch starts when it holds ``max_size`` items, or ``max_wait_ms``
  after its first item arrived, whichever comes first.
- adaptive (``target_p99_ms`` set): the instance keeps a moving estimate of how long a call of n
  items takes (``ServiceTimeModel``: an exponentially weighted least-squares fit ``t(n) = a + b*n``
  plus a margin of twice the recent absolute error) and waits for more items only while the oldest
  waiting request, were one more item to join, would still finish within the budget
  (``BUDGET_SHARE`` of the target; the rest is left for the gateway's own hops):

      start_by = oldest_arrival + budget - t_high(queued + 1)

  Worked number: target 50 ms (budget 40 ms), t(n) = 4 ms + 0.5 ms*n, 10 items queued, the oldest
  arrived 20 ms ago: t_high(11) = 9.5 ms (no error yet), so the batch may wait until 40 - 9.5 =
  30.5 ms after the oldest arrived: 10.5 ms more. A full batch, or a deadline already past, starts
  at once, and so does one that holds as many items as ``worth_waiting_for`` (a call of half the
  budget: requests arriving during a call wait for it, so a request spends about two calls' time).
  Before any call was measured the first batch starts at once: it is the first measurement.
  ``max_wait_ms`` is not used in adaptive mode; the target bounds every wait.
"""

from __future__ import annotations

from dataclasses import dataclass

BUDGET_SHARE = 0.8  # of target_p99_ms, for the wait plus the call; the rest covers transport and jitter
ERROR_MARGIN = 2.0  # the margin is this many times the recent mean absolute error of the fit
SMOOTHING = 0.2  # weight of the newest call in the moving estimate (about the last 5-10 calls count)


@dataclass(frozen=True)
class BatchSettings:
    """The spec's ``batch`` in seconds: ``BatchSettings(32, 0.010)`` is max 32 items, 10 ms wait."""

    max_size: int
    max_wait_s: float
    target_s: float | None = None

    @property
    def adaptive(self) -> bool:
        return self.target_s is not None


@dataclass(frozen=True)
class ServiceTimeModel:
    """A moving estimate of a batch call's duration as a function of its size; immutable.

    ``observe`` returns the updated model: exponentially weighted sums of n, t, n^2, n*t give a
    least-squares line that forgets old calls. While every call had about the same size the slope
    cannot be fitted, and the model is proportional (``t(n) = mean_t * n / mean_n``): cautious for
    bigger batches, which is the direction a wait grows them.

    >>> model = ServiceTimeModel()
    >>> for size in (1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8):
    ...     model = model.observe(size, 0.004 + 0.001 * size)
    >>> round(model.predict(16) * 1000, 1)
    20.0
    """

    weight: float = 0.0
    sum_n: float = 0.0
    sum_t: float = 0.0
    sum_nn: float = 0.0
    sum_nt: float = 0.0
    error: float = 0.0  # moving mean absolute error of the prediction made before each call

    @property
    def measured(self) -> bool:
        return self.weight > 0

    def observe(self, size: int, seconds: float) -> ServiceTimeModel:
        keep, new = 1 - SMOOTHING, SMOOTHING
        error = abs(seconds - self.predict(size)) if self.measured else 0.0
        return ServiceTimeModel(
            weight=self.weight * keep + new,
            sum_n=self.sum_n * keep + new * size,
            sum_t=self.sum_t * keep + new * seconds,
            sum_nn=self.sum_nn * keep + new * size * size,
            sum_nt=self.sum_nt * keep + new * size * seconds,
            error=self.error * keep + new * error if self.measured else 0.0,
        )

    def line(self) -> tuple[float, float]:
        """``(a, b)`` of ``t(n) = a + b*n`` in seconds, both at least 0."""
        if not self.measured:
            return 0.0, 0.0
        mean_n, mean_t = self.sum_n / self.weight, self.sum_t / self.weight
        variance = self.sum_nn / self.weight - mean_n * mean_n
        if variance < 0.25:  # all calls about one size: no slope to fit
            return 0.0, mean_t / max(mean_n, 1.0)
        slope = max(0.0, (self.sum_nt / self.weight - mean_n * mean_t) / variance)
        intercept = mean_t - slope * mean_n
        if intercept < 0:  # a line through the origin instead of a negative fixed cost
            return 0.0, mean_t / max(mean_n, 1.0)
        return intercept, slope

    def predict(self, size: int) -> float:
        intercept, slope = self.line()
        return intercept + slope * size

    def predict_high(self, size: int) -> float:
        """A cautious duration: the fit plus ``ERROR_MARGIN`` times its recent error."""
        return self.predict(size) + ERROR_MARGIN * self.error


def start_by(settings: BatchSettings, model: ServiceTimeModel, oldest_arrival: float, queued: int) -> float:
    """The time (same clock as ``oldest_arrival``) by which the gathered batch must start.

    A caller starts the batch when ``queued >= max_size`` or the time has come; it asks again
    whenever an item joins, since each new item moves the answer earlier.

    >>> start_by(BatchSettings(32, 0.010), ServiceTimeModel(), 100.0, 3)
    100.01
    """
    if queued >= settings.max_size:
        return oldest_arrival
    if settings.target_s is None:
        return oldest_arrival + settings.max_wait_s
    if not model.measured:
        return oldest_arrival  # nothing measured yet: start, and measure
    if queued >= worth_waiting_for(settings, model):
        return oldest_arrival
    budget = settings.target_s * BUDGET_SHARE
    return oldest_arrival + budget - model.predict_high(queued + 1)


def worth_waiting_for(settings: BatchSettings, model: ServiceTimeModel) -> int:
    """The largest batch worth waiting for in adaptive mode: one whose call takes at most half the budget.

    Requests that arrive while a batch runs wait for it, then run in the next: under steady load a
    request spends about two calls' time, so a call longer than half the budget would break the
    target for the requests behind it. (More items than this may still run together when they
    have already gathered: they are waiting anyway.) Budget 40 ms, t(n) = 4 ms + 0.5 ms*n: 32.
    """
    assert settings.target_s is not None
    half = settings.target_s * BUDGET_SHARE / 2
    intercept, slope = model.line()
    room = half - intercept - ERROR_MARGIN * model.error
    if slope <= 0:
        return settings.max_size if room >= 0 else 1
    return max(1, min(settings.max_size, int(room / slope)))


def wait_s(
    settings: BatchSettings, model: ServiceTimeModel, now: float, oldest_arrival: float, queued: int
) -> float:
    """How much longer to gather, from ``now``; 0 means start the batch now.

    >>> wait_s(BatchSettings(8, 0.010), ServiceTimeModel(), now=100.004, oldest_arrival=100.0, queued=2)
    0.006
    """
    return round(max(0.0, start_by(settings, model, oldest_arrival, queued) - now), 9)
