use super::*;
use crate::cost::subset_costs;
use crate::rng::SplitMix64;

/// A random placement of `e` experts on `g` GPUs: expert i on GPU i % g, plus `extra`
/// random replicas.
fn random_placement(rng: &mut SplitMix64, e: usize, g: usize, extra: usize) -> Placement {
    let mut lists: Vec<Vec<usize>> = (0..e).map(|i| vec![i % g]).collect();
    for _ in 0..extra {
        let i = rng.below(e);
        let gpu = rng.below(g);
        if !lists[i].contains(&gpu) {
            lists[i].push(gpu);
        }
    }
    Placement::from_lists(&lists, g).unwrap()
}

fn random_rows(rng: &mut SplitMix64, n: usize, e: usize, k: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let mut row: Vec<i64> = Vec::new();
        while row.len() < k {
            let x = rng.below(e) as i64;
            if !row.contains(&x) {
                row.push(x);
            }
        }
        ids.extend(row);
    }
    ids
}

/// Every choice of one replica per (token, expert): calls `visit` with the GPU of each.
fn each_choice(ids: &[i64], p: &Placement, visit: &mut impl FnMut(&[u16])) {
    fn go(
        i: usize,
        ids: &[i64],
        p: &Placement,
        cur: &mut Vec<u16>,
        visit: &mut impl FnMut(&[u16]),
    ) {
        if i == ids.len() {
            visit(cur);
            return;
        }
        for &g in p.gpus_of(ids[i] as usize) {
            cur.push(g);
            go(i + 1, ids, p, cur, visit);
            cur.pop();
        }
    }
    go(0, ids, p, &mut Vec::new(), visit);
}

/// Brute force: the best layer time over every replica choice of every token.
fn brute_batch(ids: &[i64], k: usize, p: &Placement, model: &CostModel, t: &Topology) -> f64 {
    let tokens = ids.len() / k;
    let mut best = f64::INFINITY;
    each_choice(ids, p, &mut |choice| {
        let nodes: usize = choice
            .chunks_exact(k)
            .map(|r| nodes_used(r, t.gpus_per_node))
            .sum();
        let time = compute_time(ids, choice, model, p.num_gpus())
            + t.batch_comm_us(tokens, k, nodes, p.num_gpus());
        best = best.min(time);
    });
    best
}

#[test]
fn without_communication_times_are_todays_costs() {
    let mut rng = SplitMix64::new(7);
    for case in 0..30 {
        let (e, g, k) = (6 + case % 7, [2, 4, 6, 8][case % 4], 1 + case % 4);
        let p = random_placement(&mut rng, e, g, case % 9);
        let ids = random_rows(&mut rng, 40, e, k);
        let table = SubsetTable::from_topk(&ids, k, e, None).unwrap();
        let free = Topology::free([1, 2][case % 2]);
        let times = subset_times(&table, &p, &free, 1.0).unwrap();
        let costs = subset_costs(&table, &p).unwrap();
        assert_eq!(times, costs.iter().map(|&c| c as f64).collect::<Vec<_>>());
    }
}

#[test]
fn one_token_is_exact_against_every_replica_choice() {
    let mut rng = SplitMix64::new(11);
    let topologies = [Topology::h800_normal(), Topology::h800_low_latency()];
    for case in 0..60 {
        // 72 GPUs take the general matching (no 64-bit GPU masks); nodes stay <= 64.
        let (e, g, k) = (8, [8, 72][case / 2 % 2], 1 + case % 5);
        let mut t = topologies[case % 2];
        t.gpus_per_node = if g == 8 {
            [1, 2, 4][case % 3]
        } else {
            [2, 4, 8][case % 3]
        };
        let p = random_placement(&mut rng, e, g, 4 + case % 12);
        // Round times from 0 (communication only) to far above the communication.
        let round_us = [0.0, 5.0, 47.0, 400.0][case % 4];
        let ids = random_rows(&mut rng, 1, e, k);
        let subset: Vec<u16> = ids.iter().map(|&x| x as u16).collect();
        let mut brute = f64::INFINITY;
        each_choice(&ids, &p, &mut |choice| {
            let mut load = [0u32; 72];
            for &c in choice {
                load[c as usize] += 1;
            }
            let rounds = *load.iter().max().unwrap() as f64;
            let m = nodes_used(choice, t.gpus_per_node);
            brute = brute.min(round_us * rounds + t.token_comm_us(k, m, g));
        });
        let got = token_time(&subset, &p, &t, round_us, &mut TokenScratch::new(g)).0;
        assert!((got - brute).abs() < 1e-9, "case {case}: {got} vs {brute}");
    }
}

#[test]
fn batch_bounds_hold_the_brute_force_optimum() {
    let mut rng = SplitMix64::new(5);
    let models = [
        CostModel::new(40.0, 0.5, 1.0).unwrap(),
        CostModel::new(47.0, 0.11, 1.5).unwrap(),
        CostModel::new(0.0, 1.0, 1.0).unwrap(),
    ];
    for case in 0..40 {
        let mut t = Topology::h800_normal();
        t.gpus_per_node = [2, 4][case % 2];
        let (e, g, k) = (6, 8, 2);
        let p = random_placement(&mut rng, e, g, 3 + case % 4);
        let ids = random_rows(&mut rng, 2 + case % 3, e, k);
        let model = models[case % 3];
        let (upper, lower) = batch_time_bounds(&ids, k, &p, model, &t).unwrap();
        let best = brute_batch(&ids, k, &p, &model, &t);
        assert!(
            lower <= best + 1e-9 && best <= upper + 1e-9,
            "case {case}: {lower} {best} {upper}"
        );
    }
}

#[test]
fn fewer_nodes_win_when_communication_dominates() {
    // Experts 0 and 1 each on GPU 0 (node 0) and on GPUs 8, 9 (node 1); expert 2 only on
    // node 0's GPU 1. Free compute: node 0 alone. Costly rounds: still one node (GPU 0
    // and GPU 1 both on node 0 give one round).
    let lists = vec![vec![0, 8], vec![0, 9], vec![1]];
    let p = Placement::from_lists(&lists, 16).unwrap();
    let t = Topology::h800_normal();
    let mut s = TokenScratch::new(16);
    let (_, rounds, nodes) = token_time(&[0, 1, 2], &p, &t, 0.0, &mut s);
    assert_eq!((rounds, nodes), (2, 1));
    let (_, rounds, nodes) = token_time(&[0, 1, 2], &p, &t, 100.0, &mut s);
    assert_eq!((rounds, nodes), (1, 2));
    assert_eq!(fewest_nodes(&[0, 1, 2], &p, 8, &mut s), 1);
    let bad = Topology::h800_normal();
    let p12 = Placement::from_lists(&[vec![0]], 12).unwrap();
    let table = SubsetTable::from_subsets(&[0], 1, 1, &[1.0]).unwrap();
    assert!(subset_times(&table, &p12, &bad, 1.0)
        .unwrap_err()
        .to_string()
        .contains("divide"));
}
