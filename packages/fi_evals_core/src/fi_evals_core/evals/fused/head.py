"""The fused NLI head: classifier logits to per-response scores in one kernel.

Inputs are the logits of a batch of (chunk, claim) pairs in any order (the scorer sorts pairs by
length), the claim each pair belongs to (`pair_claim`, segment ids) and the response each claim
belongs to (`claim_response`, non-decreasing: claims are numbered response by response). Outputs:

- `pair_support`, `pair_contradiction` [pairs] fp32: softmax probability of the support /
  contradiction label (contradiction 0 for 2-way checkpoints);
- `claim_support`, `claim_best` [claims] fp32, int32: maximum support over the claim's chunks and
  the pair that gives it (first on ties; 0.0 and -1 for a claim without chunks);
- `claim_contradiction`, `claim_worst` [claims]: the same for contradiction;
- `response_score` [responses] fp64: mean over the response's claims of `claim_support`, summed in
  claim order in fp64 (0.0 for a response without claims);
- `response_contradiction`, `response_worst` [responses] fp32, int32: maximum
  `claim_contradiction` over its claims and the first claim that has it (0.0 / -1 without claims).

This is exactly the evaluators' aggregation (`FactualConsistency`: mean of the best chunk's
support; a claim's contradiction: its strongest chunk; ties to the first). The Triton kernel runs one
program per response; the grouping of pairs by claim is a stable argsort done in PyTorch beforehand.
`nli_head_reference` computes the same in plain PyTorch with host loops: the tests' oracle.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

OUTPUTS = ("pair_support", "pair_contradiction", "claim_support", "claim_best", "claim_contradiction",
           "claim_worst", "response_score", "response_contradiction", "response_worst")


class HeadOutput(NamedTuple):
    pair_support: torch.Tensor
    pair_contradiction: torch.Tensor
    claim_support: torch.Tensor
    claim_best: torch.Tensor
    claim_contradiction: torch.Tensor
    claim_worst: torch.Tensor
    response_score: torch.Tensor
    response_contradiction: torch.Tensor
    response_worst: torch.Tensor


def empty_outputs(n_pairs: int, n_claims: int, n_responses: int, device: torch.device | str,
                  fill: float | None = None) -> dict[str, torch.Tensor]:
    """Output buffers (`fill` them, e.g. with NaN, to check that every element gets written)."""
    shapes = {"pair": n_pairs, "claim": n_claims, "response": n_responses}
    out = {}
    for name in OUTPUTS:
        dtype = (torch.int32 if name.endswith(("best", "worst")) else
                 torch.float64 if name == "response_score" else torch.float32)
        tensor = torch.empty(shapes[name.split("_")[0]], dtype=dtype, device=device)
        if fill is not None:
            tensor.fill_(fill if dtype.is_floating_point else -(2 ** 31))
        out[name] = tensor
    return out


def _segments(pair_claim: torch.Tensor, claim_response: torch.Tensor, n_claims: int | None,
              n_responses: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    device = pair_claim.device
    pair_claim = pair_claim.to(device=device, dtype=torch.int64)
    claim_response = claim_response.to(device=device, dtype=torch.int64)
    n_claims = claim_response.numel() if n_claims is None else n_claims
    if claim_response.numel() != n_claims:
        raise ValueError(f"claim_response has {claim_response.numel()} entries for {n_claims} claims")
    if n_responses is None:
        n_responses = int(claim_response.max().item()) + 1 if n_claims else 0
    if n_claims and bool((claim_response[1:] < claim_response[:-1]).any()):
        raise ValueError("claim_response must be non-decreasing (claims numbered response by response)")
    order = torch.sort(pair_claim, stable=True).indices.to(torch.int32)
    cu_pairs = torch.zeros(n_claims + 1, dtype=torch.int32, device=device)
    cu_pairs[1:] = torch.bincount(pair_claim, minlength=n_claims)[:n_claims].cumsum(0)
    cu_claims = torch.zeros(n_responses + 1, dtype=torch.int32, device=device)
    cu_claims[1:] = torch.bincount(claim_response, minlength=n_responses)[:n_responses].cumsum(0)
    return order, cu_pairs, cu_claims, n_claims, n_responses


def nli_head(logits: torch.Tensor, support_label: int, contradiction_label: int | None,
             pair_claim: torch.Tensor, claim_response: torch.Tensor, *, n_claims: int | None = None,
             n_responses: int | None = None, out: dict[str, torch.Tensor] | None = None) -> HeadOutput:
    """Softmax, per-pair probabilities, per-claim maxima and per-response aggregates, fused."""
    from . import kernels

    order, cu_pairs, cu_claims, n_claims, n_responses = _segments(pair_claim, claim_response, n_claims,
                                                                  n_responses)
    if out is None:
        out = empty_outputs(logits.shape[0], n_claims, n_responses, logits.device)
    kernels.nli_head_launch(logits, support_label, -1 if contradiction_label is None else contradiction_label,
                            order, cu_pairs, cu_claims, out)
    return HeadOutput(**{name: out[name] for name in OUTPUTS})


def nli_head_reference(logits: torch.Tensor, support_label: int, contradiction_label: int | None,
                       pair_claim: torch.Tensor, claim_response: torch.Tensor, *, n_claims: int | None = None,
                       n_responses: int | None = None) -> HeadOutput:
    """`nli_head` in plain PyTorch (the same definitions, ties and empty cases)."""
    order, cu_pairs, cu_claims, n_claims, n_responses = _segments(pair_claim, claim_response, n_claims,
                                                                  n_responses)
    probs = torch.softmax(logits.float(), dim=-1)
    sup = probs[:, support_label]
    con = probs[:, contradiction_label] if contradiction_label is not None else torch.zeros_like(sup)
    return aggregate(sup, con, order, cu_pairs, cu_claims)


def aggregate(sup: torch.Tensor, con: torch.Tensor, order: torch.Tensor, cu_pairs: torch.Tensor,
              cu_claims: torch.Tensor) -> HeadOutput:
    """Per-claim maxima and per-response aggregates of given pair probabilities (host loop)."""
    order, cu_pairs, cu_claims = order.cpu().long(), cu_pairs.cpu().tolist(), cu_claims.cpu().tolist()
    sup_c, con_c = sup.cpu(), con.cpu()
    n_claims, n_responses = len(cu_pairs) - 1, len(cu_claims) - 1
    c_sup = torch.zeros(n_claims)
    c_con = torch.zeros(n_claims)
    c_best = torch.full((n_claims,), -1, dtype=torch.int32)
    c_worst = torch.full((n_claims,), -1, dtype=torch.int32)
    for c in range(n_claims):
        pairs = order[cu_pairs[c]:cu_pairs[c + 1]]
        if pairs.numel():
            best = int(torch.argmax(sup_c[pairs]))  # first maximum
            worst = int(torch.argmax(con_c[pairs]))
            c_sup[c], c_best[c] = sup_c[pairs[best]], int(pairs[best])
            c_con[c], c_worst[c] = con_c[pairs[worst]], int(pairs[worst])
    r_score = torch.zeros(n_responses, dtype=torch.float64)
    r_con = torch.zeros(n_responses)
    r_worst = torch.full((n_responses,), -1, dtype=torch.int32)
    for r in range(n_responses):
        first, last = cu_claims[r], cu_claims[r + 1]
        if last > first:
            total = 0.0
            for c in range(first, last):  # claim order, in fp64, as the evaluators sum Python floats
                total += float(c_sup[c])
            r_score[r] = total / (last - first)
            worst = int(torch.argmax(c_con[first:last]))
            r_con[r], r_worst[r] = c_con[first + worst], first + worst
    device = sup.device
    return HeadOutput(sup, con, c_sup.to(device), c_best.to(device), c_con.to(device), c_worst.to(device),
                      r_score.to(device), r_con.to(device), r_worst.to(device))
