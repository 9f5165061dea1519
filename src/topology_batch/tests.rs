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
