//! The placements engines ship, to compare against (they ignore co-activation):
//! - contiguous: experts 0..E/G-1 on GPU 0 and so on (vLLM's and SGLang's default),
//!   extra slots holding replicas of the most loaded experts;
//! - round robin: expert e on GPU e mod G, extra slots likewise;
//! - EPLB (DeepSeek's global policy, `crate::search::eplb`): replicas to the expert of highest load
//!   per replica, then packed heaviest first onto the lightest GPU with a free slot.
//!
//! Loads are per-expert token counts (`SubsetTable::expert_load`). Every GPU ends with
//! exactly `slots` distinct experts.

use super::initial::balanced_counts;
use crate::model::layout::Layout;

pub fn contiguous(load: &[f64], num_gpus: usize, slots: usize) -> Layout {
    let mut layout = Layout::new(load.len(), num_gpus);
    let mut e = 0;
    for (g, count) in balanced_counts(load.len(), num_gpus)
        .into_iter()
        .enumerate()
    {
        for _ in 0..count {
            layout.add(e, g);
            e += 1;
        }
    }
    fill_with_loaded(&mut layout, load, slots);
    layout
}

pub fn round_robin(load: &[f64], num_gpus: usize, slots: usize) -> Layout {
    let mut layout = Layout::new(load.len(), num_gpus);
    for e in 0..load.len() {
        layout.add(e, e % num_gpus);
    }
    fill_with_loaded(&mut layout, load, slots);
    layout
}

/// An expert ranked by load per replica, heaviest first (ties: lower id first).
#[derive(Clone, Copy, Debug)]
struct Ranked {
    load: f64,
    replicas: usize,
    expert: usize,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let x = self.load * other.replicas as f64;
        let y = other.load * self.replicas as f64;
        // Load per replica compared as fractions, descending; then ascending id.
        y.partial_cmp(&x)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(self.expert.cmp(&other.expert))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked {}

/// Fills every free slot, GPU by GPU in turns, with the expert of highest load per
/// replica that the GPU does not hold yet (every expert holds a replica already, so
/// the ranking is a total order: a count of 0 would tie with every load). The experts are kept ranked, so a slot costs
/// the experts the GPU already holds at the top of the ranking plus a logarithm, not a
/// scan of all experts (a scan made filling E x G slots cost E^2 G: minutes for full
/// replication of 2,000 experts on 1,024 GPUs).
pub fn fill_with_loaded(layout: &mut Layout, load: &[f64], slots: usize) {
    if slots == load.len() {
        // Full replication: every GPU ends holding every expert, whatever the order.
        for g in 0..layout.num_gpus() {
            for e in 0..load.len() {
                if !layout.holds(e, g) {
                    layout.add(e, g);
                }
            }
        }
        return;
    }
    let mut ranking: std::collections::BTreeSet<Ranked> = (0..load.len())
        .map(|e| Ranked {
            load: load[e],
            replicas: layout.replicas(e),
            expert: e,
        })
        .collect();
    loop {
        let mut filled = false;
        for g in 0..layout.num_gpus() {
            if layout.used(g) >= slots {
                continue;
            }
            // slots <= E, so a GPU with a free slot lacks some expert.
            let Some(&best) = ranking.iter().find(|r| !layout.holds(r.expert, g)) else {
                continue;
            };
            ranking.remove(&best);
            layout.add(best.expert, g);
            ranking.insert(Ranked {
                replicas: layout.replicas(best.expert),
                ..best
            });
            filled = true;
        }
        if !filled {
            break;
        }
    }
}

/// DeepSeek's EPLB (global policy, `crate::search::eplb`) on `load`. The reference may put two
/// replicas of one expert on a GPU (all-zero loads, say): such a GPU keeps one and its free
/// slot takes the most useful missing expert, as in `fill_with_loaded`.
pub fn eplb(load: &[f64], num_gpus: usize, slots: usize) -> Layout {
    let weight = crate::search::eplb::f32_loads(load);
    let topology = crate::search::eplb::Topology {
        num_replicas: num_gpus * slots,
        num_groups: 1,
        num_nodes: 1,
        num_gpus,
    };
    let plan = crate::search::eplb::rebalance_experts(&weight, load.len(), topology)
        .expect("optimize checked the sizes and loads are finite");
    let mut layout = Layout::new(load.len(), num_gpus);
    for (p, &e) in plan.phy2log.iter().enumerate() {
        if !layout.holds(e, p / slots) {
            layout.add(e, p / slots);
        }
    }
    fill_with_loaded(&mut layout, load, slots);
    layout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_full(l: &Layout, slots: usize) {
        for g in 0..l.num_gpus() {
            assert_eq!(l.used(g), slots, "GPU {g}");
        }
        for e in 0..l.num_experts() {
            assert!(l.replicas(e) >= 1, "expert {e}");
        }
    }

    #[test]
    fn shapes() {
        let load: Vec<f64> = (0..10).map(|e| (10 - e) as f64).collect();
        let c = contiguous(&load, 4, 3);
        check_full(&c, 3);
        assert_eq!(c.experts_on(0)[..3], [0, 1, 2]);
        assert!(c.holds(3, 1) && c.holds(9, 3));
        let r = round_robin(&load, 4, 3);
        check_full(&r, 3);
        assert!(r.holds(5, 1) && r.holds(9, 1));
        // The two free slots go to the heaviest experts, on GPUs that lack them.
        assert_eq!(r.replicas(0), 2);
        assert_eq!(r.replicas(1), 2);
        let e = eplb(&load, 4, 3);
        check_full(&e, 3);
        assert_eq!(e.replicas(0), 2);
        assert_eq!(e.replicas(1), 2);
    }

    #[test]
    fn eplb_gives_replicas_by_load_per_replica() {
        let l = eplb(&[100.0, 10.0, 10.0, 10.0], 4, 2);
        check_full(&l, 2);
        assert_eq!(l.replicas(0), 4);
    }

    #[test]
    fn eplb_never_repeats_an_expert_on_a_gpu() {
        // All-zero loads: the reference gives every extra replica to expert 0 and may pack
        // two of them on one GPU.
        let l = eplb(&[0.0; 6], 4, 3);
        check_full(&l, 3);
    }

    #[test]
    fn eplb_packs_when_slots_equal_experts() {
        let load = [5.0, 1.0, 1.0];
        let l = eplb(&load, 3, 3);
        check_full(&l, 3);
        assert!((0..3).all(|e| l.replicas(e) == 3));
    }

    /// The plain fill: a scan of every expert per free slot.
    fn scan_fill(layout: &mut Layout, load: &[f64], slots: usize) {
        let heavier = |a: usize, ra: usize, b: usize, rb: usize| {
            let (x, y) = (load[a] * rb as f64, load[b] * ra as f64);
            x > y || (x == y && a < b)
        };
        loop {
            let mut filled = false;
            for g in 0..layout.num_gpus() {
                if layout.used(g) >= slots {
                    continue;
                }
                let mut best: Option<usize> = None;
                for e in 0..load.len() {
                    if !layout.holds(e, g)
                        && best
                            .is_none_or(|b| heavier(e, layout.replicas(e), b, layout.replicas(b)))
                    {
                        best = Some(e);
                    }
                }
                if let Some(e) = best {
                    layout.add(e, g);
                    filled = true;
                }
            }
            if !filled {
                break;
            }
        }
    }

    #[test]
    fn ranked_fill_equals_the_plain_scan() {
        let mut rng = crate::util::rng::SplitMix64::new(7);
        for case in 0..200 {
            let experts = 1 + case % 23;
            let gpus = 1 + (case * 7) % 11;
            let slots = if case % 10 == 3 {
                experts
            } else {
                1 + (case * 5) % experts
            };
            if gpus * slots < experts {
                continue;
            }
            // Integer loads with ties, and float loads.
            let load: Vec<f64> = (0..experts)
                .map(|_| {
                    let x = rng.unit() * 10.0;
                    if case % 2 == 0 {
                        x.floor()
                    } else {
                        x
                    }
                })
                .collect();
            // Every expert holds a replica before the fill, as in every caller.
            let mut base = Layout::new(experts, gpus);
            for e in 0..experts {
                base.add(e, e % gpus);
            }
            if (0..gpus).all(|g| base.used(g) <= slots) {
                let (mut fast, mut plain) = (base.clone(), base.clone());
                fill_with_loaded(&mut fast, &load, slots);
                scan_fill(&mut plain, &load, slots);
                assert_eq!(fast, plain, "case {case}");
            }
        }
    }
}
