"""The learning side of detection: a candidate scored by its moment's model, its outcome awaited.

:class:`Scorer` is what the detector hands a candidate to when learning is on. It
turns the customer's window into the model's features, scores the candidate with the
moment's model (or leaves the rule's score while the model warms up), assigns the
customer's micro-segment, and files a pending example that waits for the moment's
outcome, triggered or not, so that a model does not only ever learn from its own
choices. When outcomes become known (:mod:`app.learning.labels`), :meth:`Scorer.learnt`
learns from them in replay; a worker only reports them, for the learners.

Pure and synchronous, like the detector.

>>> from app.config import load_catalogue
>>> from app.moments.base import Candidate
>>> from app.window import CustomerState
>>> scorer = Scorer(load_catalogue())
>>> state = CustomerState(customer_id="c1", last_ts=1_000)
>>> candidate = Candidate(
...     moment="price_comparison", ts=1_000, anchor="e1", score=0.7, reasons=[], evidence=[], explanation=""
... )
>>> scorer.score(state, candidate, threshold=0.5)
(0.7, <Decider.RULES: 'rules'>)
>>> [example.moment for example in state.pending]
['price_comparison']
"""

from __future__ import annotations

from collections.abc import Iterable

from app.config import Catalogue
from app.detection import Decider
from app.learning.features import features, sparse
from app.learning.labels import LabelledExample, PendingExample, example_id
from app.learning.labels import add as add_pending
from app.learning.models import Models
from app.moments.base import Candidate
from app.privacy import pseudonym
from app.window import CustomerState


class Scorer:
    """Scores candidates with the moments' models and files their pending examples.

    Parameters
    ----------
    catalogue
        The learning configuration (models, horizons, pending limit) and the window's
        statistics span.
    models
        The models to score with; fresh ones if None.
    learn
        Whether :meth:`learnt` teaches the models (replay); a worker leaves that to the
        learners.
    pseudonym_key
        Keys the customer's pseudonym and example ids in examples.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        models: Models | None = None,
        learn: bool = True,
        pseudonym_key: bytes = b"",
    ) -> None:
        learning = catalogue.learning
        self.models = models or Models(learning)
        self._learn = learn
        self._horizons = learning.horizons()
        self._max_pending = learning.max_pending
        self._recent = catalogue.window.stats_window
        self._pseudonym_key = pseudonym_key

    def score(self, state: CustomerState, candidate: Candidate, *, threshold: float) -> tuple[float, Decider]:
        """Score ``candidate``, assign the customer's segment and file its pending example.

        Parameters
        ----------
        state
            The candidate's customer's state: its segment and pending examples are updated.
        candidate
            What a moment's rule found, with the rule's score.
        threshold
            The moment's threshold, recorded in the example (would it have triggered).

        Returns
        -------
        tuple
            The score and what decided it: the model's (``Decider.MODEL``), or the rule's
            while the model warms up (``Decider.RULES``).
        """
        x = features(state, candidate.ts, recent=self._recent)
        score, decided_by = candidate.score, Decider.RULES
        learnt = self.models.score(candidate.moment, x)
        if learnt is not None:
            score, decided_by = learnt, Decider.MODEL
        state.segment = self.models.segment(x)
        example = PendingExample(
            candidate.moment,
            candidate.ts,
            candidate.ts + self._horizons[candidate.moment],
            sparse(x),
            score,
            decided_by,
            score >= threshold,
            example_id(state.customer_id, candidate.moment, candidate.ts, salt=self._pseudonym_key),
            pseudonym(state.customer_id, self._pseudonym_key),
        )
        state.pending, _ = add_pending(state.pending, example, limit=self._max_pending)
        return score, decided_by

    def learnt(self, examples: Iterable[LabelledExample]) -> None:
        """Outcomes known: the models learn from them, if this scorer teaches them.

        Parameters
        ----------
        examples
            Examples whose outcome (label) is known, in the order they became known.
        """
        if self._learn:
            for example in examples:
                self.models.learn(example)
