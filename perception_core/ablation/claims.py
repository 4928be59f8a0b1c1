"""The paper's claims, checked against our numbers (never hard-coded: every verdict is computed
from the results dict that `mobius ablate` writes).

Each check returns {"id", "claim", "paper", "verdict", "ours"}: verdict is "agrees", "disagrees",
"inconclusive" (every compared model is below MIN_SIGNAL_AP mask AP: they learned too little for an
AP comparison to mean anything) or "not evaluated" (a needed row was not run, or has no AP). AP values in the results are in
[0, 1]; tolerances here are in AP points (x100).
"""
from __future__ import annotations

from typing import Callable

AP_TOLERANCE = 1.0          # "within ~1 AP" / "small AP loss", in AP points
FLOPS_SHARE_MAX = 0.45      # bottleneck pixel decoder <= 45% of the MaskDINO-style one's FLOPs
STRIDE_SHARE_MAX = 0.55     # stride 16 at >= 45% fewer pixel-decoder FLOPs than stride 8 (paper: -55%)
PRUNED_SHARE_MAX = 0.5      # "halves decoder FLOPs"
MIN_SIGNAL_AP = 1.0         # below this mask AP (points) for all compared models: inconclusive

NOT_EVALUATED = "not evaluated"
INCONCLUSIVE = "inconclusive"


def _points(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _tab3(results: dict) -> dict[str, dict]:
    return {row["variant"]: row for row in results.get("tab3", [])}


def _mask_ap(row: dict | None) -> float | None:
    return None if row is None else _points(row["eval"]["mask_AP"])


def _verdict(ok: bool, *mask_aps: float | None) -> str:
    """agrees/disagrees, or inconclusive when every given mask AP (points) is below MIN_SIGNAL_AP."""
    present = [ap for ap in mask_aps if ap is not None]
    if present and max(present) < MIN_SIGNAL_AP:
        return INCONCLUSIVE
    return "agrees" if ok else "disagrees"


def _result(claim_id: str, claim: str, paper: str, verdict: str, ours: str) -> dict:
    return {"id": claim_id, "claim": claim, "paper": paper, "verdict": verdict, "ours": ours}


def bottleneck_vs_maskdino(results: dict) -> dict:
    rows = _tab3(results)
    claim = (f"the bottleneck pixel decoder (Ours 1/16 Single) is within ~{AP_TOLERANCE:g} AP of the MaskDINO-style "
             f"one (MaskDINO-Multi) at <= {FLOPS_SHARE_MAX:.0%} of its pixel-decoder FLOPs")
    paper = "Tab. 3 rows a vs i: 43.8 vs 42.2 mask AP, 222 vs 91 GFLOPs pixel decoder (41%); Sec. 4.2: -55.5%"
    ours_row, base = rows.get("ours_s16_single"), rows.get("maskdino_multi")
    ap_ours, ap_base = _mask_ap(ours_row), _mask_ap(base)
    if ap_ours is None or ap_base is None:
        return _result("bottleneck_vs_maskdino", claim, paper, NOT_EVALUATED, "a row was not run")
    share = ours_row["flops"]["pixel_decoder"] / base["flops"]["pixel_decoder"]
    gap = ap_ours - ap_base
    ok = gap >= -AP_TOLERANCE and share <= FLOPS_SHARE_MAX
    ours = (f"mask AP {ap_ours:.1f} vs {ap_base:.1f} ({gap:+.1f}), pixel decoder {ours_row['flops']['pixel_decoder']:.3f} "
            f"vs {base['flops']['pixel_decoder']:.3f} GFLOPs ({share:.0%}); AP part "
            f"{_verdict(gap >= -AP_TOLERANCE)}, FLOPs part {_verdict(share <= FLOPS_SHARE_MAX)}")
    return _result("bottleneck_vs_maskdino", claim, paper, _verdict(ok, ap_ours, ap_base), ours)


def stride16_vs_stride8(results: dict) -> dict:
    rows = _tab3(results)
    claim = (f"bottleneck stride 16 is competitive (within ~{AP_TOLERANCE:g} AP) with stride 8 at "
             f"<= {STRIDE_SHARE_MAX:.0%} of its pixel-decoder FLOPs")
    paper = "Tab. 3 rows h vs i: 42.3 vs 42.2 mask AP, 200 vs 91 GFLOPs pixel decoder"
    s16, s8 = rows.get("ours_s16_single"), rows.get("ours_s8_single")
    if _mask_ap(s16) is None or _mask_ap(s8) is None:
        return _result("stride16_vs_stride8", claim, paper, NOT_EVALUATED, "a row was not run")
    gap = _mask_ap(s16) - _mask_ap(s8)
    share = s16["flops"]["pixel_decoder"] / s8["flops"]["pixel_decoder"]
    ours = f"mask AP {_mask_ap(s16):.1f} vs {_mask_ap(s8):.1f} ({gap:+.1f}), pixel decoder FLOPs {share:.0%} of stride 8"
    ok = gap >= -AP_TOLERANCE and share <= STRIDE_SHARE_MAX
    return _result("stride16_vs_stride8", claim, paper, _verdict(ok, _mask_ap(s16), _mask_ap(s8)), ours)


def single_scale_decoding(results: dict) -> dict:
    rows = _tab3(results)
    claim = (f"for our bottleneck, single-scale decoding is within ~{AP_TOLERANCE:g} AP of multi-scale decoding "
             f"at lower decoder FLOPs, while the baselines lose more AP when decoding a single scale")
    paper = ("Tab. 3: Ours g -> i 42.5 -> 42.2 (-0.3); MaskDINO a -> b 43.8 -> 42.9 (-0.9); "
             "RT-DETR d -> e 42.1 -> 42.2 (+0.1)")
    pairs = {"Ours": ("ours_s16_multi", "ours_s16_single"), "MaskDINO": ("maskdino_multi", "maskdino_single"),
             "RT-DETR": ("rtdetr_multi", "rtdetr_single")}
    drops = {}
    for name, (multi, single) in pairs.items():
        if _mask_ap(rows.get(multi)) is not None and _mask_ap(rows.get(single)) is not None:
            drops[name] = _mask_ap(rows[single]) - _mask_ap(rows[multi])
    if "Ours" not in drops:
        return _result("single_scale_decoding", claim, paper, NOT_EVALUATED, "Ours multi/single rows were not run")
    cheaper = rows["ours_s16_single"]["flops"]["decoder"] < rows["ours_s16_multi"]["flops"]["decoder"]
    baselines = [drops[name] for name in ("MaskDINO", "RT-DETR") if name in drops]
    ok = drops["Ours"] >= -AP_TOLERANCE and cheaper and all(d < drops["Ours"] for d in baselines)
    ours = "; ".join(f"{name} multi -> single {drop:+.1f} AP" for name, drop in drops.items())
    ours += f"; our single-scale decoder {'cheaper' if cheaper else 'not cheaper'} than multi-scale"
    if not baselines:
        ours += " (no baseline pair run: the baseline part is untested)"
    aps = [_mask_ap(rows[name]) for pair in pairs.values() for name in pair if name in rows]
    return _result("single_scale_decoding", claim, paper, _verdict(ok, *aps), ours)


def calibration_under_pruning(results: dict) -> dict:
    claim = "the calibration loss raises AP under pruning (same pruning settings, focal loss as the alternative)"
    paper = "Tab. 14: sigmoid 0.05-0.2, min 100: 46.0 / 41.1 (calibration) vs 45.1 / 40.0 (focal) box / mask AP"
    rows = results.get("tab14", [])
    table = {(row["variant"], row["eval"]["setting"]): _points(row["eval"]["mask_AP"]) for row in rows}
    pruned = [row["eval"]["setting"] for row in rows if row["variant"] == "calibration" and row["eval"]["schedule"]]
    compared = [(s, table[("calibration", s)], table.get(("focal", s))) for s in pruned]
    compared = [(s, c, f) for s, c, f in compared if c is not None and f is not None]
    if not compared:
        return _result("calibration_under_pruning", claim, paper, NOT_EVALUATED, "Tab. 14 was not run")
    paper_setting = "sigmoid 0.05-0.2"
    primary = next((item for item in compared if item[0] == paper_setting), compared[0])
    wins = sum(c > f for _, c, f in compared)
    parts = [f"{s}: {c:.1f} vs {f:.1f}" for s, c, f in compared]
    drop = {v: (table.get((v, "none")), table.get((v, primary[0]))) for v in ("calibration", "focal")}
    drops = ", ".join(f"{v} {b - a:+.1f}" for v, (a, b) in drop.items() if a is not None and b is not None)
    ours = (f"mask AP calibration vs focal at {'; '.join(parts)} (calibration higher at {wins}/{len(compared)} "
            f"settings); AP change from pruning at {primary[0]}: {drops}")
    aps = [ap for _, c, f in compared for ap in (c, f)]
    return _result("calibration_under_pruning", claim, paper, _verdict(primary[1] > primary[2], *aps), ours)


def calibration_lowers_ece(results: dict) -> dict:
    claim = "the calibration loss aligns confidence with localization quality: lower ECE than the focal loss"
    paper = "Sec. 3.3 / Eq. 4 and Sec. 8.5 (the premise of calibrated pruning; no ECE is reported)"
    rows = {row["variant"]: row["eval"] for row in results.get("tab14", []) if row["eval"]["schedule"] is None}
    if "calibration" not in rows or "focal" not in rows or rows["calibration"]["ece_mask"] is None:
        return _result("calibration_lowers_ece", claim, paper, NOT_EVALUATED, "Tab. 14 was not run")
    calibrated, focal = rows["calibration"]["ece_mask"], rows["focal"]["ece_mask"]
    ours = f"ECE (confidence vs mask IoU, no pruning) {calibrated:.3f} with calibration vs {focal:.3f} with focal loss"
    aps = [_points(rows[name]["mask_AP"]) for name in ("calibration", "focal")]
    return _result("calibration_lowers_ece", claim, paper, _verdict(calibrated < focal, *aps), ours)


def _fig4(results: dict) -> tuple[dict | None, list[dict]]:
    rows = results.get("fig4", {}).get("rows", [])
    unpruned = next((row for row in rows if row["schedule"] is None), None)
    return unpruned, [row for row in rows if row["schedule"] is not None]


def pruning_halves_flops(results: dict) -> dict:
    claim = (f"query pruning halves decoder FLOPs (<= {PRUNED_SHARE_MAX:.0%} of unpruned) with a small AP loss "
             f"(<= {AP_TOLERANCE:g} mask AP)")
    paper = ("Sec. 4.4 / Fig. 4: -50% decoder FLOPs; but Tab. 15 sigmoid: 7.6 -> 4.6 GFLOPs (61%), mask AP 46.7 -> "
             "46.2")
    unpruned, pruned = _fig4(results)
    if unpruned is None or not pruned or unpruned["mask_AP"] is None:
        return _result("pruning_halves_flops", claim, paper, NOT_EVALUATED, "Fig. 4 was not run")
    base_ap, base_flops = _points(unpruned["mask_AP"]), unpruned["decoder_gflops"]
    halving = [row for row in pruned if row["decoder_gflops"] <= PRUNED_SHARE_MAX * base_flops]
    good = [row for row in halving if _points(row["mask_AP"]) >= base_ap - AP_TOLERANCE]
    cheapest = min(pruned, key=lambda row: row["decoder_gflops"])
    floor = (f"; the cheapest setting reaches {cheapest['decoder_gflops'] / base_flops:.0%} (queries entering the "
             f"layers: {', '.join(f'{k:.1f}' for k in cheapest['kept_per_layer_mean'])}; pruning.min_kept bounds it)")
    pick = min(good, key=lambda row: row["decoder_gflops"]) if good else (
        max(halving, key=lambda row: row["mask_AP"]) if halving else cheapest)
    ours = (f"unpruned {base_flops:.4f} GFLOPs, mask AP {base_ap:.1f}; {pick['setting']}: "
            f"{pick['decoder_gflops']:.4f} GFLOPs ({pick['decoder_gflops'] / base_flops:.0%}), mask AP "
            f"{_points(pick['mask_AP']):.1f} ({_points(pick['mask_AP']) - base_ap:+.1f}); "
            f"{len(halving)} of {len(pruned)} settings halve the FLOPs, {len(good)} of them within "
            f"{AP_TOLERANCE:g} AP{floor if not halving else ''}")
    aps = [base_ap] + [_points(row["mask_AP"]) for row in pruned]
    return _result("pruning_halves_flops", claim, paper, _verdict(bool(good), *aps), ours)


def sigmoid_schedule_best(results: dict) -> dict:
    claim = "the sigmoid schedule gives the best mask AP at each schedule's most FLOPs-efficient setting"
    paper = "Sec. 8.6 / Tab. 15: sigmoid 46.2 at 4.6 GFLOPs vs log 45.8 at 4.1, exp 45.9 at 4.2 (lower ends)"
    _, pruned = _fig4(results)
    efficient = {}
    for row in pruned:
        best = efficient.get(row["schedule"])
        if best is None or row["decoder_gflops"] < best["decoder_gflops"]:
            efficient[row["schedule"]] = row
    if "sigmoid" not in efficient or len(efficient) < 2 or any(r["mask_AP"] is None for r in efficient.values()):
        return _result("sigmoid_schedule_best", claim, paper, NOT_EVALUATED, "Fig. 4 was not run")
    ours = "; ".join(f"{name} {_points(row['mask_AP']):.1f} at {row['decoder_gflops']:.4f} GFLOPs"
                     for name, row in efficient.items())
    sigmoid_ap = efficient["sigmoid"]["mask_AP"]
    others = [row["mask_AP"] for name, row in efficient.items() if name != "sigmoid"]
    verdict = _verdict(all(sigmoid_ap > ap for ap in others), *[_points(r["mask_AP"]) for r in efficient.values()])
    if verdict != INCONCLUSIVE and any(ap == sigmoid_ap for ap in others):
        verdict = INCONCLUSIVE
        ours += " (a tie: the schedules keep the same queries there, so nothing separates them)"
    return _result("sigmoid_schedule_best", claim, paper, verdict, ours)


# The three expected claims first, then the further findings of Tab. 3 and Tab. 15.
CHECKS: tuple[Callable[[dict], dict], ...] = (
    bottleneck_vs_maskdino, calibration_under_pruning, pruning_halves_flops,
    stride16_vs_stride8, single_scale_decoding, calibration_lowers_ece, sigmoid_schedule_best,
)


def check_claims(results: dict) -> list[dict]:
    return [check(results) for check in CHECKS]
