"""open_clip's CoCa generation: top-p / top-k sampling without transformers, clear errors for the rest.

Versions handled:

* open_clip_torch 2.24.0 - 3.3.0: ``CoCa.generate`` runs its own loop with transformers' helpers, which
  ``coca_model.py`` imports in one try-block together with ``BeamSearchScorer`` (gone in transformers
  5): without transformers, or with transformers 5, every generation type fails.
* open_clip main (4.2.0.dev0): ``CoCa.generate`` (new ``generation_config`` parameter) hands every
  generation type to transformers' GenerationMixin through ``open_clip.generation``; without
  transformers it raises, and with transformers 5.25 top-p / top-k fail inside GenerationMixin.

One wrapper serves both: ``generate(generation_type='top_p' | 'top_k')`` without a ``generation_config``
runs :func:`.sampling.sample_coca`, the loop of 2.24-3.3 on the CoCa's public ``forward`` (the same tokens
as 3.3.0's own loop for the same seed, tests/test_coca.py). Beam search and an explicit
``generation_config`` stay upstream's; when upstream cannot run them (no transformers, or no
BeamSearchScorer), :class:`GenerationUnavailableError` says what to do instead of an assertion.

Stopping criteria: open_clip >= 2.29 read the criteria's result per row (``all(verdicts)``), older
releases as one truth value (``if verdicts:``); ``sampling.Verdicts`` answers both.
"""

from __future__ import annotations

import importlib
import inspect

from ._common import Internal, already_wrapped, mark_wrapper

FEATURE = "CoCa sampling"
GENERATION_TYPES = ("beam_search", "top_p", "top_k")  # what upstream's generate accepts (2.24 - main)
INTERNALS = (
    Internal(
        "open_clip.coca_model.CoCa.generate",
        "replaced method",
        FEATURE,
        "2.24.0 - main; generation_config from 4.x",
        "wrapped: top_p / top_k without transformers; its parameters are bound by name",
        hook=True,
    ),
    Internal(
        "open_clip.coca_model.CoCa.forward",
        "signature",
        FEATURE,
        "2.24.0 - main; output_labels up to 3.3.0",
        "the sampling loop's logits: forward(image, text, image_latent=, image_embs=)",
    ),
    Internal(
        "open_clip.coca_model.CoCa.pad_id",
        "attribute",
        FEATURE,
        "2.24.0 - main",
        "the default pad token of generate, as upstream's loop reads it",
    ),
    Internal(
        "open_clip.coca_model.BeamSearchScorer",
        "module global",
        FEATURE,
        "2.24.0 - 3.3.0 with transformers < 5; absent on 4.x",
        "whether 3.x can run beam search (else a clear error instead of an assertion)",
    ),
    Internal(
        "open_clip.generation",
        "module",
        FEATURE,
        "4.x only",
        "whether 4.x can run beam search / generation_config (it imports transformers)",
    ),
)


def _upstream_generation_available(coca_model, takes_generation_config: bool) -> bool:
    """Whether upstream's generate can run beam search / a generation_config here (see module doc)."""
    if not takes_generation_config:
        return hasattr(coca_model, "BeamSearchScorer")
    try:
        importlib.import_module("open_clip.generation")  # imports transformers
    except ImportError:
        return False
    return True


def enable_coca_sampling() -> bool:
    """Route CoCa.generate's top_p / top_k sampling to our loop; True once installed (idempotent)."""
    from open_clip import coca_model

    original = coca_model.CoCa.generate
    if already_wrapped(original):
        return True
    signature = inspect.signature(original)
    missing = {"image", "generation_type", "top_p", "top_k"} - set(signature.parameters)
    if missing:
        raise TypeError(f"CoCa.generate{signature} lacks the parameters {sorted(missing)}")
    takes_generation_config = "generation_config" in signature.parameters
    sampled = set(inspect.signature(_sample_coca()).parameters) - {"model"}
    if takes_generation_config:
        needs = (
            "open_clip >= 4 runs it through transformers' GenerationMixin, and transformers is not importable"
        )
        install = "pip install transformers"
    else:
        needs = (
            "open_clip <= 3.3 runs it with transformers' BeamSearchScorer, which this environment lacks "
            "(transformers is not installed, or is >= 5, which removed it)"
        )
        install = "pip install 'transformers<5'"

    def generate(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        options = {name: value for name, value in bound.arguments.items() if name != "self"}
        if options["generation_type"] not in GENERATION_TYPES:
            raise ValueError(
                f"generation_type must be one of {GENERATION_TYPES}, got {options['generation_type']!r}"
            )
        if options["generation_type"] in ("top_p", "top_k") and options.get("generation_config") is None:
            return _sample_coca()(self, **{name: options[name] for name in sampled if name in options})
        if not _upstream_generation_available(coca_model, takes_generation_config):
            from ..errors import GenerationUnavailableError

            raise GenerationUnavailableError(
                f"CoCa generation_type={options['generation_type']!r}"
                f"{' with a generation_config' if options.get('generation_config') is not None else ''}: "
                f"{needs}. Pass generation_type='top_p' or 'top_k' (sampling works without transformers), "
                f"or {install}."
            )
        return original(self, *args, **kwargs)

    coca_model.CoCa.generate = mark_wrapper(generate, original)
    return True


def _sample_coca():
    from .sampling import sample_coca

    return sample_coca
