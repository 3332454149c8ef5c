"""open_clip's CoCa generation without transformers, and the stopping-criteria protocol it expects.

Versions handled: open_clip_torch 2.24.0 - 3.3.0 import transformers' sampling helpers *and*
BeamSearchScorer in one try-block of ``coca_model.py`` (module globals LogitsProcessorList,
TopPLogitsWarper, TopKLogitsWarper, RepetitionPenaltyLogitsProcessor, MinLengthLogitsProcessor,
MaxLengthCriteria, StoppingCriteriaList, GENERATION_TYPES, _has_transformers). Without transformers,
or with transformers >= 5 (no BeamSearchScorer), that import fails and every kind of generation is off,
although top_p / top_k sampling needs none of it. When (and only when) open_clip's own import failed, we
hand it the small equivalents in :mod:`.sampling`; beam search then fails with an error that
says what to do.

Stopping criteria: open_clip >= 2.29 reads the criteria's result per row (``all(verdicts)``), older
releases as one truth value (``if verdicts:``); ``Verdicts`` answers both.
"""

from __future__ import annotations

from ._common import already_wrapped, mark_wrapper


def enable_coca_sampling() -> bool:
    """Make CoCa.generate's top_p/top_k sampling work without transformers; True if it now works."""
    from open_clip import coca_model

    if coca_model._has_transformers:
        return True
    from . import sampling

    for name in sampling.__all__:
        setattr(coca_model, name, getattr(sampling, name))
    coca_model.GENERATION_TYPES.update(top_k=sampling.TopKLogitsWarper, top_p=sampling.TopPLogitsWarper)
    coca_model._has_transformers = True  # the flag guards sampling; beam search is guarded below
    original = coca_model.CoCa.generate
    if already_wrapped(original):
        return True
    import inspect

    signature = inspect.signature(original)

    def generate(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        if bound.arguments.get("generation_type") == "beam_search" and not hasattr(
            coca_model, "BeamSearchScorer"
        ):
            from ..errors import GenerationUnavailableError

            raise GenerationUnavailableError(
                "CoCa beam search needs transformers' BeamSearchScorer, which this environment lacks "
                "(transformers is not installed, or is >= 5 where it was removed). Pass "
                "generation_type='top_p' or 'top_k' (sampling works without transformers), or install "
                "transformers<5 for beam search."
            )
        return original(self, *args, **kwargs)

    coca_model.CoCa.generate = mark_wrapper(generate, original)
    return True
