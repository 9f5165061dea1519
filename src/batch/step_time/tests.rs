//! The step-time solver against brute force over every split of every expert's tokens.

use super::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Optimum over every split of every expert's tokens over its replicas.
fn brute_force(experts: &[u32], counts: &[u32], p: &Placement, m: &CostModel) -> f64 {
    fn rec(
        i: usize,
        experts: &[u32],
        counts: &[u32],
        p: &Placement,
        m: &CostModel,
        load: &mut Vec<f64>,
    ) -> f64 {
        if i == experts.len() {
            return load.iter().cloned().fold(0.0, f64::max);
        }
        let gpus = p.gpus_of(experts[i] as usize);
        let mut best = f64::INFINITY;
        let mut split = vec![0u32; gpus.len()];
        // Enumerate compositions of counts[i] into gpus.len() parts.
        fn comp(r: usize, left: u32, split: &mut Vec<u32>, f: &mut dyn FnMut(&[u32])) {
            if r + 1 == split.len() {
                split[r] = left;
                f(split);
                return;
            }
            for x in 0..=left {
                split[r] = x;
                comp(r + 1, left - x, split, f);
            }
        }
        comp(0, counts[i], &mut split, &mut |s: &[u32]| {
            for (r, &g) in gpus.iter().enumerate() {
                load[g as usize] += m.expert_time(s[r]);
            }
            best = best.min(rec(i + 1, experts, counts, p, m, load));
            for (r, &g) in gpus.iter().enumerate() {
                load[g as usize] -= m.expert_time(s[r]);
            }
        });
        best
    }
    rec(0, experts, counts, p, m, &mut vec![0.0; p.num_gpus()])
}

/// Every expert on one GPU drawn at random, and on each other GPU with probability `p`.
fn random_placement(rng: &mut SmallRng, e: usize, g: usize, p: f64) -> Placement {
    let lists: Vec<Vec<usize>> = (0..e)
        .map(|_| {
            let extra = rng.random_range(0..g);
            (0..g)
                .filter(|&x| x == extra || rng.random_bool(p))
                .collect()
        })
        .collect();
    Placement::from_lists(&lists, g).unwrap()
}

fn random_case(rng: &mut SmallRng) -> (Placement, Vec<u32>, Vec<u32>) {
    let g = rng.random_range(1..=3);
    let e = rng.random_range(1..=4);
    let p = random_placement(rng, e, g, 0.5);
    let experts: Vec<u32> = (0..e as u32).collect();
    // B <= 4 tokens of k <= 2 distinct experts each, as the Python tests draw them.
    let mut counts = vec![0u32; e];
    let k = rng.random_range(1..=2.min(e));
    for _ in 0..rng.random_range(1..=4) {
        let first = rng.random_range(0..e);
        counts[first] += 1;
        if k == 2 {
            counts[(first + rng.random_range(1..e)) % e] += 1;
        }
    }
    (p, experts, counts)
}

#[test]
fn harder_mixed_cases_stay_close() {
    // Up to 5 experts with up to 8 tokens each on up to 4 GPUs: splits matter more.
    let mut rng = SmallRng::seed_from_u64(17);
    let (mut worst, mut over, mut total_ratio) = (1.0f64, 0, 0.0);
    let cases = 3000;
    for case in 0..cases {
        let g = rng.random_range(1..=4);
        let e = rng.random_range(1..=5);
        let p = random_placement(&mut rng, e, g, 0.4);
        let experts: Vec<u32> = (0..e as u32).collect();
        let counts: Vec<u32> = (0..e).map(|_| rng.random_range(0..=8)).collect();
        let shape = [1.0, 1.5, 2.0, f64::INFINITY][case % 4];
        let m = CostModel::new(rng.random_range(0.2..6.0), 1.0, shape).unwrap();
        let mut s = StepTimeSolver::new(&p, m);
        s.set_counts(&experts, &counts);
        let got = s.solve();
        let opt = brute_force(&experts, &counts, &p, &m);
        assert!(got >= opt - 1e-9);
        let r = if opt > 0.0 { got / opt } else { 1.0 };
        worst = worst.max(r);
        total_ratio += r;
        over += (r > 1.05) as usize;
    }
    eprintln!(
        "harder cases: worst {worst:.3}, {over} of {cases} above 5%, mean {:.4}",
        total_ratio / cases as f64
    );
    assert!(
        worst < 1.25 && over * 100 <= cases,
        "worst {worst}, {over} above 5%"
    );
}

#[test]
fn exact_when_alpha_or_beta_is_zero_and_close_otherwise() {
    let mut rng = SmallRng::seed_from_u64(5);
    let mut worst: f64 = 1.0;
    for case in 0..20000 {
        let (p, experts, counts) = random_case(&mut rng);
        let models = [
            CostModel::new(1.0, 0.0, 1.0).unwrap(),
            CostModel::new(0.0, 1.0, 2.0).unwrap(),
            CostModel::new(
                rng.random_range(0.1..5.0),
                1.0,
                [1.0, 1.5, 2.0, f64::INFINITY][case % 4],
            )
            .unwrap(),
        ];
        for (which, m) in models.iter().enumerate() {
            let mut s = StepTimeSolver::new(&p, *m);
            s.set_counts(&experts, &counts);
            let got = s.solve();
            let bound = s.lower_bound();
            let opt = brute_force(&experts, &counts, &p, m);
            assert!(got >= opt - 1e-9, "below the optimum: {got} < {opt}");
            assert!(bound <= opt + 1e-9, "bound {bound} above the optimum {opt}");
            // The reported time is the time of the reported assignment.
            let (off, parts) = s.assignment();
            let mut load = vec![0.0; p.num_gpus()];
            for (i, &e) in s.experts().iter().enumerate() {
                let gpus = p.gpus_of(e as usize);
                assert_eq!(
                    parts[off[i]..off[i] + gpus.len()].iter().sum::<u32>(),
                    s.counts()[i]
                );
                for (r, &g) in gpus.iter().enumerate() {
                    load[g as usize] += m.expert_time(parts[off[i] + r]);
                }
            }
            assert!((load.iter().cloned().fold(0.0, f64::max) - got).abs() < 1e-9);
            if which < 2 {
                assert!(
                    (got - opt).abs() < 1e-9,
                    "{which}: {got} vs {opt} {counts:?} {:?}",
                    p.to_lists()
                );
            } else {
                if got / opt > 1.05 {
                    eprintln!("{got} vs {opt} {m:?} {counts:?} {:?}", p.to_lists());
                }
                worst = worst.max(got / opt);
            }
        }
    }
    eprintln!("worst mixed ratio {worst}");
    assert!(worst <= 1.05, "worst mixed ratio {worst}");
}
