//! Optimizers: placements of expert replicas on GPUs that lower the expected decode
//! cost of a subset table (docs/cost-model.md#one-token), and the baselines engines ship.
//!
//! Results depend only on the inputs and the seed, never on the thread count: every
//! sum is over integer weights and every tie is broken by ids.
//!
//! Modules: `problem` (what is read from the table), `state` (a `crate::model::layout::Layout`
//! with its row costs and co-activation per GPU, kept current as moves are made), `gains`
//! (exact gain of every new replica), `initial` (balanced one-replica start), `swaps`,
//! `move_gains` (with `replica_moves` and `row_singles`) and `reassign` (local
//! searches), `kicks` (iterated local search), `anytime` (kicks for as long as a
//! caller's budget lasts), `budgets` (their work limits), `greedy` (the default method)
//! and `baselines` (contiguous, round robin, EPLB).

mod anytime;
mod baselines;
mod budgets;
mod greedy;
mod initial;
mod kicks;
mod move_gains;
mod reassign;
mod replica_moves;
mod row_singles;
mod swaps;

pub use crate::search::kernel::effort::SearchBudget;

use crate::model::placement::Placement;
use crate::model::table::SubsetTable;
use crate::util::error::{MoeError, Result};
use crate::util::limits::check_memory;

/// The methods `optimize` accepts.
pub const METHODS: [&str; 4] = ["greedy", "contiguous", "round_robin", "eplb"];

/// A placement of the table's experts on `num_gpus` GPUs with `slots_per_gpu` distinct
/// experts each (every slot used, every expert at least once).
///
/// `method`: "greedy" (co-activation aware, exact gains; the default), or a baseline:
/// "contiguous", "round_robin", "eplb". `seed` drives the greedy's random choices (its
/// start and its kicks); the baselines do not use it.
pub fn optimize(
    table: &SubsetTable,
    num_gpus: usize,
    slots_per_gpu: usize,
    method: &str,
    seed: u64,
) -> Result<Placement> {
    optimize_within(
        table,
        num_gpus,
        slots_per_gpu,
        method,
        seed,
        SearchBudget::default(),
    )
}

/// `optimize` with the greedy's searches bounded by `budget`: a work budget (rows read
/// by exact evaluations; the result is then still a function of the inputs and the seed)
/// and/or a time budget in seconds (anytime: the best placement found when the time is
/// up, which depends on the machine). A complete placement is always built; the
/// start's searches may use half of the budget. The greedy leaves the swaps of replicas
/// (`greedy::greedy_with`) and what it leaves of a budget to an iterated local search
/// from its placement (`anytime`), which keeps improving it until the budget is spent
/// (or it stops finding gains: `anytime::PATIENCE`). A budget too short for that search
/// may end above the unbudgeted greedy.
/// Baselines ignore the budget.
pub fn optimize_within(
    table: &SubsetTable,
    num_gpus: usize,
    slots_per_gpu: usize,
    method: &str,
    seed: u64,
    budget: SearchBudget,
) -> Result<Placement> {
    let start = std::time::Instant::now();
    if let Some(s) = budget.seconds {
        if !(s.is_finite() && s >= 0.0) {
            return Err(MoeError::value(format!(
                "time_budget must be a finite number of seconds >= 0, got {s}"
            )));
        }
    }
    if !METHODS.contains(&method) {
        return Err(MoeError::value(format!(
            "unknown method {method:?}: expected one of {}",
            METHODS.map(|m| format!("{m:?}")).join(", ")
        )));
    }
    check_memory(table.num_experts(), num_gpus, slots_per_gpu)?;
    let layout = match method {
        "greedy" => {
            let mut problem = crate::search::kernel::problem::Problem::new(table, num_gpus);
            problem.effort = crate::search::kernel::effort::Effort::new(budget, start);
            if budget == SearchBudget::default() {
                greedy::greedy(&problem, slots_per_gpu, seed)
            } else {
                // The kicks' swaps move replicas on their own, and from the greedy's
                // placement before its swaps of replicas they find more: on a V3 layer
                // (benches/bench_anytime.py) 1.1916 / 1.1903 in 10 / 60 s, against
                // 1.1960 / 1.1955 from its placement after them (docs/benchmarks.md).
                let layout = greedy::greedy_with(&problem, slots_per_gpu, seed, false);
                anytime::improve(&problem, layout, seed)
            }
        }
        // Loads counted exactly (`count_load`), so scaling every weight keeps every tie.
        "contiguous" => baselines::contiguous(
            &crate::search::eplb::count_load(table),
            num_gpus,
            slots_per_gpu,
        ),
        "round_robin" => baselines::round_robin(
            &crate::search::eplb::count_load(table),
            num_gpus,
            slots_per_gpu,
        ),
        _ => baselines::eplb(
            &crate::search::eplb::count_load(table),
            num_gpus,
            slots_per_gpu,
        ),
    };
    // The optimizers fill every slot by construction; a bug must not pass silently.
    if let Some(g) = (0..num_gpus).find(|&g| layout.used(g) != slots_per_gpu) {
        return Err(MoeError::internal(format!(
            "method {method:?} left GPU {g} with {} experts instead of {slots_per_gpu}",
            layout.used(g)
        )));
    }
    layout.to_placement()
}

/// `placement` with every free slot filled (up to `slots_per_gpu` experts per GPU) by
/// the expert of highest `load` per replica that the GPU lacks, GPU by GPU in turns:
/// the baselines' own filling, for placements made elsewhere (the MILP's). An extra
/// replica never raises a subset's cost.
pub fn fill_free_slots(
    placement: &Placement,
    slots_per_gpu: usize,
    load: &[f64],
) -> Result<Placement> {
    let (num_experts, num_gpus) = (placement.num_experts(), placement.num_gpus());
    check_memory(num_experts, num_gpus, slots_per_gpu)?;
    if load.len() != num_experts {
        return Err(MoeError::value(format!(
            "expert_load has {} entries but the placement has {num_experts} experts",
            load.len()
        )));
    }
    if let Some((e, x)) = load
        .iter()
        .enumerate()
        .find(|(_, x)| !(x.is_finite() && **x >= 0.0))
    {
        return Err(MoeError::value(format!(
            "expert_load[{e}] = {x}: loads must be finite and non-negative"
        )));
    }
    let used = placement.slots_used();
    if let Some((g, n)) = used.iter().enumerate().find(|(_, &n)| n > slots_per_gpu) {
        return Err(MoeError::value(format!(
            "the placement puts {n} experts on GPU {g}, more than slots_per_gpu = {slots_per_gpu}"
        )));
    }
    let mut layout = crate::model::layout::Layout::from_placement(placement);
    baselines::fill_with_loaded(&mut layout, load, slots_per_gpu);
    layout.to_placement()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::skewed_table;

    fn table() -> SubsetTable {
        SubsetTable::from_subsets(&[0, 1, 2, 3, 1, 2, 4, 5], 2, 6, &[5.0, 3.0, 2.0, 1.0]).unwrap()
    }

    #[test]
    fn every_method_fills_every_slot() {
        let t = table();
        for method in METHODS {
            for (g, s) in [(2, 3), (3, 2), (3, 4), (1, 6), (6, 6), (70, 1), (70, 3)] {
                let p = optimize(&t, g, s, method, 0).unwrap();
                assert_eq!(p.slots_used(), vec![s; g], "{method} G={g} s={s}");
                assert!((0..6).all(|e| !p.gpus_of(e).is_empty()));
            }
        }
    }

    #[test]
    fn same_result_for_any_thread_count() {
        // Enough rows for several parallel tasks.
        let t = skewed_table(12345, 20_000, 24, 4, 4, 60);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| optimize(&t, 4, 7, "greedy", 3).unwrap())
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }

    #[test]
    fn filling_free_slots_fills_every_gpu_with_distinct_experts() {
        let start = Placement::from_lists(&[vec![0], vec![1], vec![2], vec![0]], 3).unwrap();
        let load = [1.0, 8.0, 2.0, 4.0];
        let full = fill_free_slots(&start, 2, &load).unwrap();
        assert_eq!(full.slots_used(), vec![2, 2, 2]);
        for e in 0..4 {
            assert!(start.gpus_of(e).iter().all(|&g| full.holds(e, g as usize)));
        }
        // GPU 1 takes the heaviest expert it lacks (3), then GPU 2 (1).
        assert!(full.holds(3, 1) && full.holds(1, 2));
        let msg = |r: Result<Placement>| r.unwrap_err().to_string();
        assert!(msg(fill_free_slots(&start, 1, &load)).contains("cannot hold 4 experts"));
        let crowded = Placement::from_lists(&[vec![0], vec![0], vec![1], vec![2, 3]], 4).unwrap();
        assert!(msg(fill_free_slots(&crowded, 1, &load)).contains("more than slots_per_gpu"));
        assert!(msg(fill_free_slots(&start, 2, &load[..3])).contains("3 entries"));
        assert!(msg(fill_free_slots(&start, 2, &[1.0, f64::NAN, 0.0, 0.0])).contains("[1] = NaN"));
        assert!(msg(fill_free_slots(&start, 5, &load)).contains("more than the 4 experts"));
    }

    #[test]
    fn rejects_bad_sizes_and_methods() {
        let t = table();
        let msg = |r: Result<Placement>| r.unwrap_err().to_string();
        assert!(msg(optimize(&t, 2, 2, "greedy", 0)).contains("cannot hold 6 experts"));
        assert!(msg(optimize(&t, 2, 7, "greedy", 0)).contains("more than the 6 experts"));
        assert!(msg(optimize(&t, 0, 3, "greedy", 0)).contains("num_gpus"));
        assert!(msg(optimize(&t, 2, 0, "greedy", 0)).contains("at least 1"));
        assert!(msg(optimize(&t, 2, 3, "best", 0)).contains("unknown method \"best\""));
    }
}
