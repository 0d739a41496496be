"""Batched, pure analyses of toymech models: one call where a notebook had a page of loops.

Model-independent:
  probes    ridge / OLS probes and fits (sklearn semantics), R², MSE, Pearson, polynomial features and fits
  linalg    SVD, PCA with explained variance, projections onto / out of directions, cosine similarity
  fourier   the real Fourier basis of Z_p, 1-D / 2-D transforms, key frequencies, neuron clusters,
            logit periodicity, rfft views with top-k reconstruction
  progress  progress measures over a stack of checkpoints (losses, weight norms, Gini, cosine
            coefficients, restricted / excluded loss)
  views     activations over input grids, attention statistics split by a mask

Model-dependent:
  attribution  residual-stream decompositions, LN scaling of stacks, direct logit attribution per
               component and per path (component -> head), logit differences
  circuits     FactoredMatrix (products, SVD, norms without the full matrix); QK / OV circuits
  stacked      TransformerLens's stacked weight views (W_Q [layer, head, d, e], ..., QK, OV) from params
  sweeps       ablation (zero / mean / resample) and activation-patching sweeps as one compiled call
  lens         the logit lens per layer and position, next-token losses with TransformerLens's
               return types, token_names (to_str_tokens for a task's vocabulary)
  edges        the graph of senders and receivers, the edge-level forward pass, exact edge patching,
               path patching
  discovery    attribution patching (nodes, EAP, EAP-IG), ACDC, top-k circuits, faithfulness curves,
               the Circuit result and its DAG figure
"""

from toymech.analysis import fourier, linalg, probes, progress, views
from toymech.analysis import attribution, circuits, lens, stacked, sweeps
from toymech.analysis import edges, discovery
