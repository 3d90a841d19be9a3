"""The cost ledger of a row: every cost figure built here, in one place, each with where it came from.

    figures = job_costs(...)                       # in the job: what was measured there
    ledger = build_ledger(figures, 412.0, ranking=shared_cost(...), cache=shared_cost(...))   # in the parent
    ledger["total_s"], ledger["sources"]["peak_mem_mb"]

The store and the report only read these figures. Definitions (docs/results-schema.md):
  total_s = train_s + cache_share_s + ranking_share_s
  total_flops = train_flops + cache_share_flops + ranking_share_flops
  lost_s: training redone after a crash (resumed from a checkpoint); reported, not added to total_s.
  teacher_s: online, the part of train_s spent in teacher forwards (never added again); cached, the cache share.
  A shared cost (the teacher cache's build, the layer ranking) is divided by the rows of the experiment it was made
  for that read it (`recharge`, rerun by the store whenever a reader joins: the shares always sum to the cost);
  an experiment that reuses it from an earlier one is charged 0.
"""
from __future__ import annotations

FIGURES = ("train_s", "teacher_s", "cache_share_s", "ranking_share_s", "total_s", "lost_s", "train_flops",
           "cache_share_flops", "ranking_share_flops", "total_flops",
           "infer_batch_size", "infer_ms_p50", "infer_ms_p90", "infer_ms_p50_b1", "infer_ms_p90_b1",
           "peak_mem_mb", "peak_mem_source", "energy_j", "energy_source", "params", "size_mb")
PEAK_CUDA = "torch.cuda.max_memory_allocated"
PEAK_CHILD = "child peak RSS minus baseline"
PEAK_NONE = "unavailable (not run in its own process: metering.isolate_arms=false or user modules)"
PEAK_MEM_SOURCES = (PEAK_CUDA, PEAK_CHILD, PEAK_NONE)
ENERGY_SOURCES = ("nvml", "rapl", "unavailable")  # what leankd.metering.energy.EnergyMeter reports
TIMER = "wall clock, device synchronised at start and end of the step loop"


def job_costs(train: dict, flops: dict, latency: dict, energy: dict, model_facts: dict, memory: dict,
              world_size: int = 1) -> dict:
    """What a job measured, as plain numbers (sent from the child job to the parent). `world_size` > 1: data
    parallel, FLOPs and joules already summed over the ranks and train_s the slowest rank's."""
    return {"world_size": world_size, "train_s": train["train_s"], "teacher_s": train["teacher_s"],
            "lost_s": train["lost_s"],
            "resumed": train["resumed"], "train_flops": flops["train_flops"],
            "teacher_flops": flops["teacher_flops"], **latency, "energy_j": energy["joules"],
            "energy_source": energy["source"], **model_facts, **memory}


def shared_cost(what: str, cost: dict | None, experiment: str, users: int) -> tuple[float, int, str]:
    """(seconds, FLOPs, the rule) of a shared cost `cost` ({"seconds", "flops", "experiment" it was made for})
    charged to one of the `users` jobs of `experiment` that use it."""
    if cost is None:
        return 0.0, 0, f"no {what}"
    seconds, flops, made_for = cost["seconds"], cost.get("flops") or 0, cost.get("experiment")
    if made_for != experiment:
        return 0.0, 0, f"{what} reused from experiment '{made_for}' ({seconds:.1f} s charged there)"
    return seconds / users, flops // users, f"{what} {seconds:.1f} s / {users} job(s) of this experiment"



def peak_memory(costs: dict, child_peak_rss_mb: float | None) -> tuple[float | None, str]:
    """CUDA: the allocator's peak; CPU: the child process's peak RSS less its baseline after imports. Data parallel
    (`costs["rank_peaks_mb"]`, each rank's figure): the largest rank's, i.e. what one device needs."""
    ranks = costs.get("rank_peaks_mb")
    if ranks:
        known = [p for p in ranks if p is not None]
        source = peak_memory({**costs, "rank_peaks_mb": None}, child_peak_rss_mb)[1]
        return (max(known) if len(known) == len(ranks) else None,
                f"{source}; the largest of {len(ranks)} data parallel processes (each in extra.rank_peaks_mb)")
    if costs.get("cuda_peak_mb") is not None:
        return costs["cuda_peak_mb"], PEAK_CUDA
    if child_peak_rss_mb is None:
        return None, PEAK_NONE
    return max(0.0, child_peak_rss_mb - costs["baseline_rss_mb"]), PEAK_CHILD


def build_ledger(costs: dict, child_peak_rss_mb: float | None, ranking: tuple[float, int, str],
                 cache: tuple[float, int, str] = (0.0, 0, "no teacher cache")) -> dict:
    """Every cost column of a row, plus `sources` (figure -> where it came from). `ranking` and `cache` are
    `shared_cost` results (provisional: the store's `recharge` sets the final shares from the rows that read them)."""
    peak, peak_source = peak_memory(costs, child_peak_rss_mb)
    (ranking_s, ranking_flops, ranking_rule), (cache_s, cache_flops, cache_rule) = ranking, cache
    ledger = {"train_s": costs["train_s"], "teacher_s": costs["teacher_s"] + cache_s, "cache_share_s": cache_s,
              "ranking_share_s": ranking_s, "total_s": costs["train_s"] + cache_s + ranking_s,
              "lost_s": costs.get("lost_s", 0.0),
              "train_flops": costs["train_flops"], "cache_share_flops": cache_flops,
              "ranking_share_flops": ranking_flops,
              "total_flops": costs["train_flops"] + cache_flops + ranking_flops, "peak_mem_mb": peak,
              "peak_mem_source": peak_source,
              "energy_j": costs["energy_j"], "energy_source": costs["energy_source"]}
    ledger.update({k: costs[k] for k in ("infer_batch_size", "infer_ms_p50", "infer_ms_p90", "infer_ms_p50_b1",
                                         "infer_ms_p90_b1", "params", "size_mb")})
    ranks = costs.get("world_size", 1)
    on_ranks = f"; summed over {ranks} data parallel processes" if ranks > 1 else ""
    ledger["sources"] = {
        "train_s": TIMER + " (evaluation, FLOP counting and saving excluded)" + (
            "; summed over the runs that made this model (it resumed from a checkpoint)" if costs.get("resumed")
            else "") + (f"; the slowest of {ranks} data parallel processes" if ranks > 1 else ""),
        "lost_s": "training redone after a crash (progress reached minus the checkpoint resumed from); not in "
                  "total_s",
        "teacher_s": "teacher forwards inside train_s (device timer)" + (
            f"; the largest of {ranks} data parallel processes" if ranks > 1 else "") if costs["teacher_s"] else
        "the teacher cache's share" if cache_s else "no teacher forwards",
        "cache_share_s": cache_rule, "cache_share_flops": cache_rule, "ranking_share_s": ranking_rule,
        "ranking_share_flops": ranking_rule, "total_s": "train_s + cache_share_s + ranking_share_s",
        "total_flops": "train_flops + cache_share_flops + ranking_share_flops",
        "train_flops": "torch FlopCounterMode on one real step per input shape, scaled by samples" + on_ranks,
        "infer_ms": "p50/p90 of timed batches after warm-up, eval mode, device synchronised",
        "peak_mem_mb": peak_source, "energy_j": costs["energy_source"] + (on_ranks if costs["energy_j"] else ""),
        "size_mb": "parameter + buffer bytes at the saved dtypes"}
    return ledger


SHARED = {"cache": ("teacher cache build", "cache_share_s", "cache_share_flops"),
          "ranking": ("layer ranking", "ranking_share_s", "ranking_share_flops")}


def recharge(resource: dict, readers: list[dict]) -> dict[int, dict]:
    """The cost columns of every row that read a shared cost (`resource`: {"kind": "cache" | "ranking", "seconds",
    "flops", "experiment"}), its `readers` being the rows of that experiment that read it, by id: seconds / n each,
    FLOPs split exactly (the first flops % n rows get one more), totals and teacher_s redone. Returns
    {row id: column -> value}."""
    what, s_col, f_col = SHARED[resource["kind"]]
    n, seconds = len(readers), resource["seconds"] or 0.0
    base, rest = divmod(int(resource["flops"] or 0), max(n, 1))
    rule = (f"{what} {seconds:.1f} s, {resource['flops'] or 0} FLOP / {n} job(s) of this experiment that read it "
            f"('{resource['experiment']}'; recomputed as readers join)")
    out = {}
    for i, r in enumerate(readers):
        cols = {s_col: seconds / n, f_col: base + (i < rest)}
        cache_s = cols.get("cache_share_s", r.get("cache_share_s") or 0.0)
        ranking_s = cols.get("ranking_share_s", r.get("ranking_share_s") or 0.0)
        flops = cols.get("cache_share_flops", r.get("cache_share_flops") or 0) + \
            cols.get("ranking_share_flops", r.get("ranking_share_flops") or 0)
        train_flops = r.get("train_flops")
        cols.update(total_s=r["train_s"] + cache_s + ranking_s, total_flops=None if train_flops is None else
                    train_flops + flops,
                    sources={**(r.get("sources") or {}), s_col: rule, f_col: rule})
        if resource["kind"] == "cache":  # teacher_s of a cached row: its online part (none) + the cache share
            cols["teacher_s"] = (r.get("teacher_s") or 0.0) - (r.get("cache_share_s") or 0.0) + cache_s
        out[r["id"]] = cols
    return out
