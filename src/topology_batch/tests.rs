use super::*;
use crate::topology_cost::batch_time_bounds;

fn options(batch_size: usize, num_groups: Option<usize>) -> BatchOptions {
    BatchOptions {
        batch_size,
        num_batches: 12,
        seed: 5,
        max_evaluations: 600,
        num_groups,
    }
}

/// 16 experts in 4 groups of 4 on 2 nodes of 2 GPUs with 5 slots: group g on node g / 2,
/// its experts spread over the node's GPUs, the node's two spare slots holding second
/// replicas of its first experts.
fn grouped_placement() -> Placement {
    let mut lists = vec![Vec::new(); 16];
    for node in 0..2 {
        let experts: Vec<usize> = (node * 8..node * 8 + 8).collect();
        for (i, &e) in experts.iter().enumerate() {
            lists[e].push(node * 2 + i % 2);
        }
        lists[experts[0]].push(node * 2 + 1);
        lists[experts[1]].push(node * 2);
    }
    Placement::from_lists(&lists, 4).unwrap()
}

fn small_topology() -> Topology {
    Topology {
        gpus_per_node: 2,
        ..Topology::h800_normal()
    }
}

#[test]
fn swapping_gpus_keeps_compute_and_moves_traffic() {
    let t = crate::optimize::skewed_table(3, 2000, 16, 4, 5, 58);
    let p = grouped_placement();
    let mut layout = Layout::from_placement(&p);
    swap_gpus(&mut layout, 1, 2);
    let q = layout.to_placement().unwrap();
    assert_eq!(q.slots_used(), p.slots_used());
    let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
    let ids: Vec<i64> = t.subsets()[..64 * 4].iter().map(|&e| e as i64).collect();
    let free = Topology::free(2);
    let before = batch_time_bounds(&ids, 4, &p, model, &free).unwrap();
    let after = batch_time_bounds(&ids, 4, &q, model, &free).unwrap();
    assert!((before.0 - after.0).abs() < 1e-9 && (before.1 - after.1).abs() < 1e-9);
    // Swapping back restores the placement.
    swap_gpus(&mut layout, 2, 1);
    assert_eq!(layout.to_placement().unwrap(), p);
}

#[test]
fn group_nodes_finds_each_groups_node_or_the_first_stray_replica() {
    let p = grouped_placement();
    assert_eq!(group_nodes(&p, 4, 2).unwrap(), vec![0, 0, 1, 1]);
    // One node of 4 GPUs holds everything.
    assert_eq!(group_nodes(&p, 4, 4).unwrap(), vec![0; 4]);
    let mut lists = p.to_lists();
    lists[5].retain(|&g| g != 1);
    lists[5].push(3);
    let stray = Placement::from_lists(&lists, 4).unwrap();
    let msg = group_nodes(&stray, 4, 2).unwrap_err().to_string();
    assert!(
        msg.contains("expert 5 (group 1)") && msg.contains("GPU 3"),
        "{msg}"
    );
    assert!(group_nodes(&p, 3, 2)
        .unwrap_err()
        .to_string()
        .contains("divide"));
}

#[test]
fn never_worse_than_the_best_start_and_keeps_the_slots() {
    let t = crate::optimize::skewed_table(7, 3000, 16, 4, 5, 58);
    let topo = small_topology();
    let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
    let a = crate::optimize::optimize(&t, 4, 5, "contiguous", 0).unwrap();
    let b = crate::optimize::optimize(&t, 4, 5, "round_robin", 0).unwrap();
    for batch in [1, 16, 64] {
        // Single tokens need more batches for the validation sample to see the gain.
        let o = BatchOptions {
            num_batches: if batch == 1 { 400 } else { 48 },
            max_evaluations: 250,
            ..options(batch, None)
        };
        let (p, mean) = improve_batch(&t, &[a.clone(), b.clone()], 5, model, &topo, o).unwrap();
        let start = |s: &Placement| sample_mean_time(&t, s, model, &topo, o, false).unwrap();
        let both =
            |s: &Placement| start(s) + sample_mean_time(&t, s, model, &topo, o, true).unwrap();
        assert!((start(&p) - mean).abs() < 1e-6 * mean);
        // Never worse than the start, the best of the two on both samples together.
        assert!(
            both(&p) <= both(&a).min(both(&b)) * (1.0 + 1e-12),
            "B={batch}"
        );
        // From the contiguous start alone (the hot experts share GPU 0) it gains.
        let (_, alone) = improve_batch(&t, std::slice::from_ref(&a), 5, model, &topo, o).unwrap();
        assert!(alone < start(&a), "B={batch}: {alone}");
        assert!(p.slots_used().iter().all(|&n| n <= 5));
    }
}

#[test]
fn the_group_constraint_holds_through_the_search() {
    let t = crate::optimize::skewed_table(11, 3000, 16, 4, 5, 58);
    let topo = small_topology();
    let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
    let start = grouped_placement();
    let o = options(16, Some(4));
    let (p, mean) = improve_batch(&t, std::slice::from_ref(&start), 5, model, &topo, o).unwrap();
    assert_eq!(group_nodes(&p, 4, 2).unwrap(), vec![0, 0, 1, 1]);
    assert!(mean <= sample_mean_time(&t, &start, model, &topo, o, false).unwrap());
    // A start off the constraint is refused, naming it.
    let spread = crate::optimize::optimize(&t, 4, 5, "round_robin", 0).unwrap();
    let msg = improve_batch(&t, &[spread], 5, model, &topo, o)
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("starts[0]: expert"), "{msg}");
}

#[test]
fn rejects_bad_options() {
    let t = crate::optimize::skewed_table(3, 100, 8, 2, 3, 60);
    let p = crate::optimize::optimize(&t, 4, 2, "contiguous", 0).unwrap();
    let model = CostModel::new(1.0, 0.0, 1.0).unwrap();
    let topo = Topology::free(2);
    let err = |o: BatchOptions, s: &[Placement]| {
        improve_batch(&t, s, 2, model, &topo, o)
            .unwrap_err()
            .to_string()
    };
    assert!(err(options(0, None), std::slice::from_ref(&p)).contains("at least 1"));
    assert!(err(options(4, None), &[]).contains("at least one"));
    assert!(err(options(4, Some(3)), std::slice::from_ref(&p)).contains("divide"));
}

#[test]
fn without_limits_the_search_is_what_it_was() {
    // Results of `improve_batch` before re-planning existed (placement lists, mean bits).
    let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
    let topo = small_topology();
    let t = crate::optimize::skewed_table(7, 3000, 16, 4, 5, 58);
    let a = crate::optimize::optimize(&t, 4, 5, "contiguous", 0).unwrap();
    let b = crate::optimize::optimize(&t, 4, 5, "round_robin", 0).unwrap();
    let want: [(usize, &str, u64); 3] = [
        (
            1,
            "[[0, 1], [1, 2], [0, 2], [3], [0, 3], [1], [2], [3], [0], [1], [2], [3], [0], [1], [2], [3]]",
            0x405e6d1d322353fc,
        ),
        (
            16,
            "[[0], [0], [0, 1], [2], [2], [1], [2], [0], [3], [3], [1, 2], [0, 1], [3], [2, 3], [1], [3]]",
            0x406cd937b059d675,
        ),
        (
            64,
            "[[1], [2, 3], [0, 3], [3], [0], [2], [0], [3], [3], [2], [1, 2], [0], [0, 1], [1], [1], [2]]",
            0x406d9466caa1bee0,
        ),
    ];
    for (batch, lists, bits) in want {
        let o = BatchOptions {
            num_batches: 24,
            max_evaluations: 300,
            ..options(batch, None)
        };
        let (p, mean) = improve_batch(&t, &[a.clone(), b.clone()], 5, model, &topo, o).unwrap();
        assert_eq!(format!("{:?}", p.to_lists()), lists, "B={batch}");
        assert_eq!(mean.to_bits(), bits, "B={batch}");
    }
    let t = crate::optimize::skewed_table(11, 3000, 16, 4, 5, 58);
    let o = options(16, Some(4));
    let (p, mean) = improve_batch(&t, &[grouped_placement()], 5, model, &topo, o).unwrap();
    assert_eq!(
        format!("{:?}", p.to_lists()),
        "[[0], [0, 1], [0], [1], [0, 1], [0], [1], [1], [3], [2, 3], [2], [3], [2], [3], [2], [2, 3]]"
    );
    assert_eq!(mean.to_bits(), 0x406cda7ca1706934);
}

/// A served placement for one table (round-robin: hot experts not spread for batches),
/// re-planned for another (a skewed table of another seed).
fn shifted() -> (SubsetTable, Placement, Topology, CostModel) {
    let t = crate::optimize::skewed_table(13, 3000, 16, 4, 5, 58);
    let served = crate::optimize::optimize(&t, 4, 5, "contiguous", 0).unwrap();
    let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
    (t, served, small_topology(), model)
}

fn limits(max_moves: Option<usize>, copy_price: f64) -> MoveLimits<'static> {
    MoveLimits {
        max_moves,
        copy_price,
        target: None,
    }
}

#[test]
fn gpu_trades_count_the_copies_they_make() {
    let t = crate::optimize::skewed_table(3, 500, 16, 4, 5, 58);
    let current = crate::optimize::optimize(&t, 4, 5, "round_robin", 0).unwrap();
    let mut layout = Layout::from_placement(&current);
    let mut rng = SplitMix64::new(9);
    // Random moves away from `current`, then every GPU trade counted against brute force.
    for _ in 0..200 {
        let (a, b) = (rng.below(4), rng.below(4));
        if a == b {
            continue;
        }
        if rng.below(3) == 0 {
            let step = Step::Gpus(a, b);
            let before = copies(&current, &layout.to_placement().unwrap()) as isize;
            let c = step_copies(&current, &layout, step);
            apply(&mut layout, step);
            let after = copies(&current, &layout.to_placement().unwrap()) as isize;
            assert_eq!(after - before, c);
        } else {
            let first = layout.experts_on(a)[rng.below(5)];
            let second = layout.experts_on(b)[rng.below(5)];
            let mv = Move::Swap {
                first,
                from: a as u16,
                second,
                to: b as u16,
            };
            if layout.allows(mv, 5) {
                let before = copies(&current, &layout.to_placement().unwrap()) as isize;
                let c = step_copies(&current, &layout, Step::Expert(mv));
                layout.apply(mv);
                let after = copies(&current, &layout.to_placement().unwrap()) as isize;
                assert_eq!(after - before, c);
            }
        }
    }
}

#[test]
fn replanning_stays_within_the_budget_and_never_loses() {
    let (t, served, topo, model) = shifted();
    let o = options(16, None);
    let mean = |p: &Placement| sample_mean_time(&t, p, model, &topo, o, false).unwrap();
    let stale = mean(&served);
    let mut gained = false;
    for m in [0, 1, 3, 8] {
        let w = replan_batch(&t, &served, 5, model, &topo, o, limits(Some(m), 0.0)).unwrap();
        assert!(w.moved <= m, "{m}: {}", w.moved);
        assert_eq!(w.moved, copies(&served, &w.placement));
        assert!((mean(&w.placement) - w.mean).abs() < 1e-9 * w.mean);
        assert!(w.mean <= stale, "{m}: {} vs {stale}", w.mean);
        assert_eq!(w.path[0], (0, stale));
        for pair in w.path.windows(2) {
            assert!(pair[1].1 < pair[0].1 && pair[1].0 <= m, "{pair:?}");
        }
        // The kept layout is a point of the path.
        assert!(w.path.contains(&(w.moved, w.mean)), "{m}: {:?}", w.path);
        if m == 0 {
            assert_eq!(w.placement, served);
            assert_eq!(w.path.len(), 1);
        }
        gained |= w.mean < stale;
        assert!(w.placement.slots_used().iter().all(|&n| n <= 5));
    }
    assert!(gained);
}

#[test]
fn a_copy_price_stops_steps_that_do_not_pay_for_their_copies() {
    let (t, served, topo, model) = shifted();
    let o = options(16, None);
    let free = replan_batch(&t, &served, 5, model, &topo, o, limits(None, 0.0)).unwrap();
    assert!(free.moved > 0);
    let price = 0.2;
    let priced = replan_batch(&t, &served, 5, model, &topo, o, limits(None, price)).unwrap();
    for pair in priced.path.windows(2) {
        let (c0, x0) = pair[0];
        let (c1, x1) = pair[1];
        assert!(x0 - x1 > price * (c1 as f64 - c0 as f64) - 1e-9, "{pair:?}");
    }
    let stopped = replan_batch(&t, &served, 5, model, &topo, o, limits(None, 1e9)).unwrap();
    assert_eq!(stopped.placement, served);
    assert_eq!(stopped.moved, 0);
}

#[test]
fn moves_toward_a_relabelled_target_within_the_budget() {
    let (t, served, topo, model) = shifted();
    let o = options(16, None);
    let (fresh, _) = improve_batch(
        &t,
        std::slice::from_ref(&served),
        5,
        model,
        &topo,
        BatchOptions { seed: 8, ..o },
    )
    .unwrap();
    let target = crate::replan::relabel(&served, &fresh, 2).unwrap();
    let l = MoveLimits {
        target: Some(&target),
        ..limits(Some(6), 0.0)
    };
    let w = replan_batch(&t, &served, 5, model, &topo, o, l).unwrap();
    assert!(w.moved <= 6 && w.moved == copies(&served, &w.placement));
    assert!(w.mean < sample_mean_time(&t, &served, model, &topo, o, false).unwrap());
}

#[test]
fn replanning_keeps_every_group_on_its_node() {
    let t = crate::optimize::skewed_table(11, 3000, 16, 4, 5, 58);
    let topo = small_topology();
    let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
    let served = grouped_placement();
    // A target with the groups on the other nodes: only moves that keep them are made.
    let mut lists = served.to_lists();
    for gpus in &mut lists {
        for g in gpus.iter_mut() {
            *g ^= 2;
        }
    }
    lists.swap(0, 5);
    let target = Placement::from_lists(&lists, 4).unwrap();
    for target in [None, Some(&target)] {
        let l = MoveLimits {
            target,
            ..limits(Some(5), 0.0)
        };
        let o = options(16, Some(4));
        let w = replan_batch(&t, &served, 5, model, &topo, o, l).unwrap();
        assert_eq!(group_nodes(&w.placement, 4, 2).unwrap(), vec![0, 0, 1, 1]);
        assert!(w.moved <= 5);
        assert!(w.mean <= sample_mean_time(&t, &served, model, &topo, o, false).unwrap());
    }
    let spread = crate::optimize::optimize(&t, 4, 5, "round_robin", 0).unwrap();
    let msg = replan_batch(
        &t,
        &spread,
        5,
        model,
        &topo,
        options(16, Some(4)),
        limits(None, 0.0),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.starts_with("current: expert"), "{msg}");
}

#[test]
fn replanning_rejects_bad_limits() {
    let (t, served, topo, model) = shifted();
    let o = options(16, None);
    let err = |l: MoveLimits<'_>| {
        replan_batch(&t, &served, 5, model, &topo, o, l)
            .unwrap_err()
            .to_string()
    };
    assert!(err(limits(None, -1.0)).contains("copy_price"));
    assert!(err(limits(None, f64::NAN)).contains("copy_price"));
    let small = crate::optimize::optimize(&t, 2, 8, "contiguous", 0).unwrap();
    let l = MoveLimits {
        target: Some(&small),
        ..limits(Some(3), 0.0)
    };
    assert!(err(l).contains("the target placement has 16 experts on 2 GPUs"));
    let msg = replan_batch(&t, &served, 4, model, &topo, o, limits(None, 0.0))
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("current puts 5 experts on GPU 0"), "{msg}");
}
