"""The fastest numerically faithful inference model for MobileCLIP / MobileCLIP2, on CPU and CUDA.

``optimize(model)`` returns a copy of an open_clip CLIP model that computes the same embeddings
(within 1e-4 of the unfused fp32 model in fp32, checked in tests/test_optimize.py) faster, with
the same ``encode_image`` / ``encode_text`` / ``forward`` interface. The steps, each kept because
it makes inference faster (docs/benchmarks.md has the timings, and what was tried and dropped):

1. **Reparameterize** (:func:`mobileclip2.reparameterize`): the training-time multi-branch blocks
   become single convolutions.
2. **Fold inference-only affines** (:func:`fold_affines`): BatchNorms after convs and before an
   attention block's ``qkv``, and layer-scale vectors, go into the weights of the layer next to
   them. Exact in real arithmetic; in fp32 the outputs move by ~1e-7.
3. **End causal text at the end-of-text token** (:func:`truncate_causal_text`): in a causal text
   transformer pooled at the end-of-text token (open_clip's TextTransformer with its causal mask:
   MobileCLIP-B, MobileCLIP2-B), no
   position attends to later ones, so the tokens after the last end-of-text token of a batch
   cannot change the embedding; they are not computed. A typical caption is 10-20 of the 77
   tokens. Not applied to bidirectional towers (``no_causal_mask``: MobileCLIP2-S0/S2/S3/S4/L-14;
   MobileCLIP-S0's MCt).
4. **CPU, fp32: oneDNN with prepacked weights** (:func:`use_onednn`): convs and linears call the
   oneDNN ops inductor emits for CPU with weights reordered once into oneDNN's blocked layout
   (chosen for the shapes a batch-1 probe sees), GELU fused into the layer before it, residual
   adds fused into the output projections of the text transformer and the last 1x1 conv of each
   FastViT-MCi block's MLP, grouped convs with a channel multiplier run as depthwise convs
   (oneDNN runs depthwise convs in a dedicated kernel and grouped ones in a generic one that is
   several times slower), images taken channels-last,
   attention in SDPA.
5. **Other devices / dtypes** (``dtype=``, ``channels_last=``, ``compile=``): cast to bf16/fp16
   (open_clip's ``LayerNormFp32`` keeps fp32 weights, as it computes in fp32), channels-last
   image tower, and ``torch.compile`` of each tower (``compile="reduce-overhead"`` adds CUDA
   graphs, which pay off for small batches).

The result is an inference artifact: no gradients, not meant to be trained or saved (the oneDNN
weights are opaque tensors). Keep the original model for that, and use
:func:`mobileclip2.reparameterize` for a fused model with a normal ``state_dict``.
"""

from .optimizer import optimize

__all__ = ["optimize"]
